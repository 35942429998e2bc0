"""`batch-relay`: drive a deployed relay from an operator's machine.

    batch-relay --stack batch-relay send requests.jsonl
    batch-relay --stack batch-relay status ticket-4711
    batch-relay --stack batch-relay batches
    batch-relay --stack batch-relay report --by day,tier,model --format table|csv|json
    batch-relay --stack batch-relay report --html report.html   # the savings page, with charts
    batch-relay --stack batch-relay cancel msgbatch_...
    batch-relay --stack batch-relay redrive
    batch-relay tail --from https://sqs...   # a queue subscribed to the completion topic
    batch-relay --stack batch-relay smoke --count 5  # after sam deploy: end to end, then clean up

The stack's resources come from its CloudFormation outputs (`--stack`), or each one can be named
(`--queue-url`, `--table`, ...), which is also how the local stack is reached. A user mistake ends
in one line on stderr and a non-zero exit, never a traceback. Tables and progress are drawn with
Rich on a terminal and come out as plain columns when piped; `--format csv|json` is for scripts.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from batch_relay.clock import parse
from batch_relay.models import RequestMessage
from batch_relay.store import Store, batch_key, request_key
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

from relay_local import savings, smoke, term

OUTPUTS = {
    "queue_url": "RequestQueueUrl",
    "dlq_url": "DeadLetterQueueUrl",
    "table": "RequestTableName",
    "topic_arn": "CompletionTopicArn",
}


class UserError(Exception):
    """A mistake the operator can fix: shown as one line, exit status 2."""


@dataclass
class Stack:
    queue_url: str | None = None
    dlq_url: str | None = None
    table: str | None = None
    topic_arn: str | None = None
    # The deployment's TierPolicy parameter (JSON), when read from the stack.
    tier_policy: str | None = None

    @classmethod
    def resolve(cls, args: argparse.Namespace) -> Stack:
        given = {k: getattr(args, k, None) for k in OUTPUTS}
        if args.stack:
            try:
                answer = boto3.client("cloudformation").describe_stacks(StackName=args.stack)
            except ClientError as exc:
                raise UserError(f"stack {args.stack!r}: {exc.response['Error']['Message']}") from None
            outputs = {o["OutputKey"]: o["OutputValue"] for o in answer["Stacks"][0].get("Outputs", [])}
            for key, output in OUTPUTS.items():
                given[key] = given[key] or outputs.get(output)
            parameters = {
                p["ParameterKey"]: p.get("ParameterValue") for p in answer["Stacks"][0].get("Parameters", [])
            }
            given["tier_policy"] = parameters.get("TierPolicy")
        return cls(**given)

    def need(self, name: str) -> str:
        value = getattr(self, name)
        if not value:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"no {name.replace('_', ' ')}: give --stack or {flag}")
        return str(value)


def show(rows: list[dict[str, Any]], columns: list[str], title: str, numeric: list[str]) -> None:
    out = term.console()
    term.show(out, term.table(rows, columns, plain=not out.is_terminal, title=title, numeric=numeric))


# commands


def send(stack: Stack, args: argparse.Namespace) -> int:
    """Validate each line locally, then send the valid ones ten a call."""
    try:
        text = open(args.file, encoding="utf-8").read()  # noqa: SIM115 - read whole, small files
    except OSError as exc:
        raise UserError(f"cannot read {args.file}: {exc.strerror}") from None
    valid: list[str] = []
    rejected: list[tuple[int, str]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            RequestMessage.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            rejected.append((n, f"{where}: {first['msg']}"))
            continue
        valid.append(line)
    url = stack.need("queue_url")
    sqs = boto3.client("sqs")
    sent = 0
    err = term.console(sys.stderr)
    # A live bar on a terminal only: piped, the summary line below says it all.
    with Progress(
        TextColumn("sending"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        disable=args.quiet or not err.is_terminal,
        transient=True,
    ) as bar:
        task = bar.add_task("send", total=len(valid))
        for start in range(0, len(valid), 10):
            chunk = valid[start : start + 10]
            answer = sqs.send_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)]
            )
            sent += len(answer.get("Successful", []))
            for failed in answer.get("Failed", []):
                rejected.append(
                    (start + int(failed["Id"]) + 1, f"SQS: {failed.get('Message', failed['Code'])}")
                )
            bar.advance(task, len(chunk))
    for n, reason in rejected:
        print(f"line {n}: {reason}", file=sys.stderr)
    print(json.dumps({"sent": sent, "rejected": len(rejected)}))
    return 1 if rejected else 0


def status(stack: Stack, args: argparse.Namespace) -> int:
    store = Store(stack.need("table"))
    item = store.get(request_key(args.request_id))
    if item is None:
        raise UserError(f"no request {args.request_id!r}")
    batch_id = item.get("batch_id") or item.get("last_batch_id")
    if not batch_id and item.get("batch_ref"):
        batch_id = (store.get(batch_key(item["batch_ref"])) or {}).get("batch_id")
    keys = (
        "request_id",
        "status",
        "tier",
        "model",
        "attempts",
        "received_at",
        "submitted_at",
        "completed_at",
    )
    out = {k: item.get(k) for k in keys} | {
        "batch_id": batch_id,
        "error": item.get("error"),
        "cost": item.get("cost"),
    }
    print(json.dumps({k: v for k, v in out.items() if v is not None}, indent=2))
    return 0


def list_batches(stack: Stack, args: argparse.Namespace) -> int:
    now = time.time()
    rows = []
    for b in sorted(
        Store(stack.need("table")).scan("batch"), key=lambda b: b.get("claimed_at", ""), reverse=True
    ):
        if not b.get("batch_id") and not args.all:
            continue
        rows.append(
            {
                "batch_id": b.get("batch_id", "-"),
                "tier": b.get("tier"),
                "status": b.get("status"),
                "requests": b.get("request_count", 0),
                "succeeded": b.get("n_succeeded", 0),
                "errored": b.get("n_errored", 0),
                "retried": b.get("n_retried", 0),
                "age_min": round((now - parse(b["claimed_at"])) / 60, 1),
                "batch_usd": round(float(b.get("batch_usd", 0)), 4),
                "saved_usd": round(float(b.get("saved_usd", 0)), 4),
            }
        )
    columns = [
        "batch_id",
        "tier",
        "status",
        "requests",
        "succeeded",
        "errored",
        "retried",
        "age_min",
        "batch_usd",
        "saved_usd",
    ]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        numeric = [c for c in columns if c not in ("batch_id", "tier", "status")]
        show(rows, columns, "Batches, newest first", numeric)
    return 0


def report(stack: Stack, args: argparse.Namespace) -> int:
    """Tokens, cost and savings of completed requests, grouped as asked; or the savings page."""
    by = [b.strip() for b in args.by.split(",") if b.strip()]
    unknown = set(by) - set(savings.GROUPS)
    if unknown:
        raise UserError(f"--by accepts {', '.join(savings.GROUPS)}; not {', '.join(sorted(unknown))}")
    items = list(Store(stack.need("table")).scan())
    if args.html:
        return write_page(items, args.html, max_waits(args.tier_policy or stack.tier_policy))
    rows = savings.group(savings.completed(items), by)
    columns = [*by, "requests", "input_tokens", "output_tokens", "batch_usd", "list_usd", "saved_usd"]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    elif args.format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        print(buffer.getvalue(), end="")
    else:
        show(rows, columns, f"Completed requests by {', '.join(by)}", columns[len(by) :])
    return 0


def max_waits(policy: str | None) -> dict[str, float]:
    """Each tier's max_wait_seconds from a TierPolicy JSON (the stack's parameter, or --tier-policy)."""
    if not policy:
        return {}
    try:
        tiers = json.loads(policy)
        return {name: float(tier["max_wait_seconds"]) for name, tier in tiers.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise UserError('--tier-policy: expected JSON like {"urgent": {"max_wait_seconds": 300}}') from None


def write_page(items: list[dict[str, Any]], path: str, waits: dict[str, float]) -> int:
    target = Path(path)
    try:
        target.write_text(savings.page(savings.gather(items, waits)), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    print(json.dumps({"report": str(target.resolve())}))
    return 0


def cancel(stack: Stack, args: argparse.Namespace) -> int:
    import anthropic

    try:
        batch = anthropic.Anthropic(max_retries=2).messages.batches.cancel(args.batch_id)
    except TypeError:
        raise UserError("no Anthropic key: set ANTHROPIC_API_KEY") from None
    except anthropic.APIStatusError as exc:
        raise UserError(f"cancel {args.batch_id}: {exc.status_code} {exc.message}") from None
    print(json.dumps({"batch_id": batch.id, "processing_status": batch.processing_status}))
    return 0


def redrive(stack: Stack, args: argparse.Namespace) -> int:
    """Move the dead-letter queue's messages back to the request queue (after fixing the cause)."""
    sqs = boto3.client("sqs")
    source, target = stack.need("dlq_url"), stack.need("queue_url")
    moved = 0
    while True:
        got = sqs.receive_message(QueueUrl=source, MaxNumberOfMessages=10, MessageAttributeNames=["All"]).get(
            "Messages", []
        )
        if not got:
            break
        sqs.send_message_batch(
            QueueUrl=target,
            Entries=[
                {
                    "Id": str(i),
                    "MessageBody": m["Body"],
                    **({"MessageAttributes": m["MessageAttributes"]} if m.get("MessageAttributes") else {}),
                }
                for i, m in enumerate(got)
            ],
        )
        sqs.delete_message_batch(
            QueueUrl=source,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)],
        )
        moved += len(got)
    print(json.dumps({"moved": moved}))
    return 0


def tail(stack: Stack, args: argparse.Namespace) -> int:
    """Follow completions from a queue subscribed to the topic: one line each, or the raw JSON."""
    sqs = boto3.client("sqs")
    url = args.queue_url_tail
    out = term.console()
    while True:
        got = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0 if args.once else 20
        ).get("Messages", [])
        for m in got:
            body = json.loads(m["Body"])
            if "Type" in body and "Message" in body:  # not raw delivery: unwrap the SNS envelope
                body = json.loads(body["Message"])
            if args.json:
                print(json.dumps(body), flush=True)
            else:
                # On a terminal the answer's words stop at its edge; piped, lines are whole.
                out.print(line(body), no_wrap=True, overflow="ellipsis", crop=True, highlight=False)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        if args.once and not got:
            return 0


STATUS_STYLE = {"succeeded": "green", "errored": "red", "expired": "yellow", "canceled": "yellow"}


def line(c: dict[str, Any], words: int = 12) -> Text:
    """One completion as a line: time, id, status, tier, route, cost and the answer's first words."""
    route = c.get("route") or "batch"
    cost = c.get("cost") or {}
    # A realtime answer is paid at list price; a batch one at the batch price.
    paid = cost.get("list_usd" if route == "realtime" else "batch_usd")
    status = str(c.get("status", "?"))
    return Text.assemble(
        (str(c.get("completed_at") or "-")[:19].replace("T", " "), "dim"),
        "  ",
        f"{c.get('request_id', '?'):<24}",
        "  ",
        (f"{status:<9}", STATUS_STYLE.get(status, "magenta")),
        "  ",
        f"{c.get('tier') or '-':<9}",
        "  ",
        f"{route:<8}",
        "  ",
        f"{'$' + format(paid, '.6f') if paid is not None else '-':>10}",
        "  ",
        _gist(c, words),
    )


def _gist(c: dict[str, Any], words: int) -> str:
    message = c.get("message")
    if c.get("status") == "succeeded" and isinstance(message, dict):
        if message.get("type") == "s3_pointer":
            return f"(answer in s3://{message.get('bucket')}/{message.get('key')})"
        text = " ".join(
            b.get("text", "")
            for b in message.get("content") or []
            if isinstance(b, dict) and b.get("type") == "text"
        )
        first = text.split()
        return " ".join(first[:words]) + (" ..." if len(first) > words else "")
    error = c.get("error") or {}
    return f"{error.get('type', '')}: {error.get('message', '')}".strip(": ")


COMMANDS = {
    "send": send,
    "status": status,
    "batches": list_batches,
    "report": report,
    "cancel": cancel,
    "redrive": redrive,
    "tail": tail,
    "smoke": smoke.command,
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="batch-relay", description=__doc__.split("\n\n")[0])
    top.add_argument("--stack", help="CloudFormation stack name (resources from its outputs)")
    top.add_argument("--queue-url", dest="queue_url")
    top.add_argument("--dlq-url", dest="dlq_url")
    top.add_argument("--table")
    top.add_argument("--topic-arn", dest="topic_arn")
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("send", help="validate a JSONL file of requests and send it to the queue")
    p.add_argument("file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("status", help="where one request is")
    p.add_argument("request_id")
    p = sub.add_parser("batches", help="the batches the relay made, newest first")
    p.add_argument("--all", action="store_true", help="also claims that never became a batch")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p = sub.add_parser("report", help="tokens, cost and savings of completed requests")
    p.add_argument(
        "--by", default="day,tier,model", help="grouping: day, tier, model, status, route (comma-separated)"
    )
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--html", metavar="PATH", help="write the savings page (charts, one self-contained file)")
    p.add_argument(
        "--tier-policy",
        dest="tier_policy",
        help="the TierPolicy JSON, for each tier's max wait on the page (read from --stack otherwise)",
    )
    p = sub.add_parser("cancel", help="cancel a message batch at the API (its requests end canceled)")
    p.add_argument("batch_id")
    sub.add_parser("redrive", help="move the dead-letter queue's messages back to the request queue")
    p = sub.add_parser("tail", help="follow completions from a queue subscribed to the topic")
    p.add_argument("--from", dest="queue_url_tail", required=True, help="the subscribed queue's URL")
    p.add_argument("--once", action="store_true", help="stop when the queue is empty")
    p.add_argument(
        "--json", action="store_true", help="print each completion message as it came, one JSON a line"
    )
    p = sub.add_parser("smoke", help="after sam deploy: N urgent requests end to end, then clean up")
    smoke.arguments(p)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](Stack.resolve(args), args)
    except UserError as exc:
        print(f"batch-relay: {exc}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError) as exc:
        print(f"batch-relay: AWS: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
