"""`batch-relay teardown`: remove a deployed relay, the data its stack keeps on purpose included.

    batch-relay teardown --stack batch-relay --dry-run   # what would go, and nothing else
    batch-relay teardown --stack batch-relay             # asks for the stack's name to be typed
    batch-relay teardown --stack batch-relay --yes       # for scripts: no question

`sam delete` (CloudFormation's delete) leaves what the template marks `DeletionPolicy: Retain`, the
request table and the payload bucket, so that deleting the stack by mistake never deletes requests,
prompts or completions; and it fails on a bucket that is not empty (the inbox, where producers
offload large bodies). This command does the whole job, in this order: empty every bucket of the
stack (every object version and delete marker), delete the stack and wait for it to be gone (if a
bucket written to meanwhile made that fail, empty again and retry once), then delete the buckets
and tables the stack kept. After a `sam delete` it still finds what was kept: CloudFormation
remembers a deleted stack's resources for 90 days.

Batches still running at the API are not canceled: see `batch-relay batches` and `cancel` first.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

import boto3
from botocore.exceptions import ClientError, WaiterError

from relay_ops import term

WHAT = "delete the stack and the data it keeps on purpose (table, buckets), after a typed confirmation"
BUCKET = "AWS::S3::Bucket"
TABLE = "AWS::DynamoDB::Table"
# CloudFormation leaves these in place when it deletes the stack.
KEEPS = ("Retain", "RetainExceptOnCreate", "Snapshot")
# The dry run counts objects up to this many; a bucket holding more shows "1000+".
COUNT_UP_TO = 1000
# CloudFormation takes minutes to delete a stack; Lambda's network interfaces can take longer.
DELAY, ATTEMPTS = 10, 360


class Resources(Protocol):
    name: str | None


class Refused(Exception):
    """Not confirmed, or something the operator must see to; shown as one line, nothing more done."""


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", action="store_true", help="do not ask for the stack's name to be typed")
    parser.add_argument(
        "--dry-run", dest="dry_run", action="store_true", help="list what would go; delete nothing"
    )


@dataclass(frozen=True)
class Part:
    """A bucket or table of the stack."""

    logical: str
    type: str
    physical: str
    # CloudFormation keeps it when the stack goes (its DeletionPolicy); this command deletes it after.
    kept: bool


@dataclass
class Plan:
    name: str
    stack_id: str
    # False after a `sam delete`: only what it kept is left.
    live: bool
    parts: list[Part]

    @classmethod
    def of(cls, name: str) -> Plan:
        cfn = boto3.client("cloudformation")
        stack_id, live = _find(cfn, name)
        kept = _kept(cfn, stack_id) if live else None
        parts = []
        for page in cfn.get_paginator("list_stack_resources").paginate(StackName=stack_id):
            for r in page["StackResourceSummaries"]:
                if r["ResourceType"] not in (BUCKET, TABLE) or not r.get("PhysicalResourceId"):
                    continue
                part = Part(
                    r["LogicalResourceId"],
                    r["ResourceType"],
                    r["PhysicalResourceId"],
                    # A deleted stack's survivors are the ones it skipped.
                    r["LogicalResourceId"] in kept
                    if kept is not None
                    else r["ResourceStatus"] == "DELETE_SKIPPED",
                )
                if live or _exists(part):
                    parts.append(part)
        return cls(name, stack_id, live, parts)

    def rows(self) -> list[dict[str, Any]]:
        shown = []
        if self.live:
            shown.append(
                {
                    "resource": "stack",
                    "type": "AWS::CloudFormation::Stack",
                    "id": self.name,
                    "holds": "-",
                    "what happens": "deleted, with every resource it does not keep",
                }
            )
        for p in self.parts:
            if p.type == BUCKET:
                then = "emptied, then deleted" + (" after the stack" if p.kept else " with the stack")
            else:
                then = "deleted" + (" after the stack" if p.kept else " with the stack")
            if p.kept:
                then += " (kept by the stack on purpose)"
            shown.append(
                {
                    "resource": p.logical,
                    "type": p.type,
                    "id": p.physical,
                    "holds": _holds(p),
                    "what happens": then,
                }
            )
        return shown


def _find(cfn: Any, name: str) -> tuple[str, bool]:
    """The stack's id, and whether it still exists; a deleted stack is found by its name among the
    stacks CloudFormation remembers (the newest one of that name)."""
    try:
        [stack] = cfn.describe_stacks(StackName=name)["Stacks"]
        if stack["StackStatus"] != "DELETE_COMPLETE":
            return stack["StackId"], True
    except ClientError as exc:
        if "does not exist" not in exc.response["Error"]["Message"]:
            raise
    gone = [
        s
        for page in cfn.get_paginator("list_stacks").paginate(StackStatusFilter=["DELETE_COMPLETE"])
        for s in page["StackSummaries"]
        if s["StackName"] == name
    ]
    if not gone:
        raise Refused(f"no stack {name!r} in this account and region, now or deleted in the last 90 days")
    newest = max(gone, key=lambda s: s.get("DeletionTime") or s["CreationTime"])
    return newest["StackId"], False


def _kept(cfn: Any, stack_id: str) -> set[str]:
    """The logical ids the deployed template keeps on delete (SAM's expanded template, as JSON)."""
    body = cfn.get_template(StackName=stack_id, TemplateStage="Processed")["TemplateBody"]
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            # YAML, with CloudFormation's tags: nothing known kept; what the stack leaves is deleted after.
            return set()
    return {k for k, r in body.get("Resources", {}).items() if r.get("DeletionPolicy") in KEEPS}


def _exists(p: Part) -> bool:
    try:
        if p.type == BUCKET:
            boto3.client("s3").head_bucket(Bucket=p.physical)
        else:
            boto3.client("dynamodb").describe_table(TableName=p.physical)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchBucket", "ResourceNotFoundException"):
            return False
        raise
    return True


def _holds(p: Part) -> str:
    if not _exists(p):
        return "gone"
    if p.type == BUCKET:
        n = sum(1 for _ in islice(boto3.resource("s3").Bucket(p.physical).object_versions.all(), COUNT_UP_TO))
        return f"{n}+ objects" if n >= COUNT_UP_TO else f"{n} objects"
    # DynamoDB updates ItemCount about every six hours.
    items = boto3.client("dynamodb").describe_table(TableName=p.physical)["Table"].get("ItemCount", 0)
    return f"~{items} items"


def empty(bucket: str) -> int:
    """Delete every object version and delete marker of a bucket (a plain bucket's objects are its
    "null" versions); returns how many were deleted."""
    deleted = 0
    try:
        for answer in boto3.resource("s3").Bucket(bucket).object_versions.delete():
            deleted += len(answer.get("Deleted", []))
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise Refused(
                    f"bucket {bucket}: {len(answer['Errors'])} objects not deleted "
                    f"({first.get('Code')}: {first.get('Message')}, e.g. {first.get('Key')})"
                )
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "NoSuchBucket":
            raise
    return deleted


def remove(p: Part) -> None:
    """Delete a bucket (emptied first) or a table that the stack no longer owns."""
    if not _exists(p):
        return
    if p.type == BUCKET:
        empty(p.physical)
        boto3.client("s3").delete_bucket(Bucket=p.physical)
        boto3.client("s3").get_waiter("bucket_not_exists").wait(Bucket=p.physical)
    else:
        dynamodb = boto3.client("dynamodb")
        # The template protects the table from deletion: the typed confirmation stands for that.
        dynamodb.update_table(TableName=p.physical, DeletionProtectionEnabled=False)
        dynamodb.delete_table(TableName=p.physical)
        dynamodb.get_waiter("table_not_exists").wait(
            TableName=p.physical, WaiterConfig={"Delay": DELAY, "MaxAttempts": ATTEMPTS}
        )


def delete_stack(plan: Plan) -> None:
    """Empty the stack's buckets, delete it and wait; once more if a bucket filled up meanwhile."""
    cfn = boto3.client("cloudformation")
    for attempt in (1, 2):
        for p in plan.parts:
            if p.type == BUCKET:
                empty(p.physical)
        cfn.delete_stack(StackName=plan.stack_id)
        try:
            cfn.get_waiter("stack_delete_complete").wait(
                StackName=plan.stack_id, WaiterConfig={"Delay": DELAY, "MaxAttempts": ATTEMPTS}
            )
            return
        except WaiterError:
            if attempt == 2:
                [stack] = cfn.describe_stacks(StackName=plan.stack_id)["Stacks"]
                why = stack.get("StackStatusReason") or stack["StackStatus"]
                raise Refused(f"stack {plan.name} not deleted: {why}") from None


def run(plan: Plan) -> list[str]:
    """Delete what the plan lists; returns the ids of what went."""
    gone = []
    if plan.live:
        delete_stack(plan)
        gone.append(plan.name)
    for p in plan.parts:
        remove(p)
        gone.append(p.physical)
    return gone


def confirmed(name: str) -> bool:
    """The stack's name typed back, as the consoles ask before deleting data."""
    print(f"Type the stack's name ({name}) to delete all of the above: ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip() == name


def command(stack: Resources, args: argparse.Namespace) -> int:
    if not stack.name:
        raise Refused("teardown needs --stack NAME")
    plan = Plan.of(stack.name)
    columns = ["resource", "type", "id", "holds", "what happens"]
    out = term.console(sys.stdout if args.dry_run else sys.stderr)
    title = f"Stack {plan.name}" + ("" if plan.live else " (deleted; what it kept is left)")
    term.show(out, term.table(plan.rows(), columns, plain=not out.is_terminal, title=title))
    if args.dry_run:
        return 0
    if not plan.live and not plan.parts:
        print(json.dumps({"stack": plan.name, "deleted": []}))
        return 0
    if not args.yes and not confirmed(plan.name):
        print("not confirmed: nothing deleted", file=sys.stderr)
        return 1
    print(json.dumps({"stack": plan.name, "deleted": run(plan)}))
    return 0
