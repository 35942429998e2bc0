"""Least privilege, checked against what the code does: every AWS call a function makes while the
relay runs must be allowed by that function's role in template.yaml, and every grant of a role must
be used by one of those calls, down to each key pattern or prefix a grant's condition allows.

The relay runs the normal flow plus the rare paths: rejections, offloaded bodies, a completion too
large for SNS, a claim that dies after its multipart upload began, a lone request too large for any
batch, a batch the API returns too few results for, a run killed between publishing and marking, an
account hold, a poller stopped by hand; then deadlines and the daily budget: requests sent realtime
at claim and answered by the realtime function (lease, budget, outbox, publish; a try killed before
it published; an answer too large for SNS), a 429 whose retry-after hides the message, a realtime
message lost and sent again, requests rescued from a late batch by its poller and by the submitter
when the poller is gone, a batch canceled once all its requests went realtime, turnaround samples,
a realtime fallback past the day's budget, and one the API refuses for the account.

The calls are recorded at boto3's `provide-client-params` event, inside the handlers, and mapped to
the IAM action and resource AWS checks for them (S3's multipart calls need s3:PutObject, HeadObject
needs s3:GetObject, PublishBatch needs sns:Publish, SendMessageBatch needs sqs:SendMessage, each
action of a TransactWriteItems needs its own: an Update dynamodb:UpdateItem).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from batch_relay.errors import FunctionKilled
from botocore.exceptions import ClientError
from botocore.handlers import BUILTIN_HANDLERS

from tests.helpers import at, by_id, request, stop_execution, wait_for

ACCOUNT, REGION = "123456789012", "us-east-1"
# Grants no call exercises, each with why it is still needed.
UNUSED_BUT_NEEDED = {
    (
        "BufferFunction",
        "s3:ListBucket",
    ): "turns a missing inbox object into NoSuchKey instead of AccessDenied",
}
# What SAM's SQS event source adds to a function's role (the managed
# AWSLambdaSQSQueueExecutionRole, on every queue): Lambda's poller receives and deletes the
# messages, outside the handler. Hiding a message for a retry-after is not among them.
EVENT_SOURCE_GRANT = {
    "Effect": "Allow",
    "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
    "Resource": "*",
}
# Deadlines and the budget: batches assumed to take a minute, a realtime margin of a minute, and a
# daily budget that the scenarios never reach unless they spend it on purpose.
STACK_PARAMETERS = {"DefaultTurnaroundSeconds": "60", "DeadlineMarginSeconds": "60", "DailyBudgetUSD": "5"}
# Deadline requests that go into batches use a model of their own, so the turnaround the relay
# learns from the other batches (haiku) never decides whether they are batched.
RESCUED_MODEL = "claude-sonnet-4-5"


@dataclass(frozen=True)
class Need:
    action: str
    resource: str
    leading_keys: tuple[str, ...] = ()
    prefix: str | None = None


def _pk(key: Any) -> str:
    pk = key["pk"]
    return pk["S"] if isinstance(pk, dict) else str(pk)


def queue_arn(url: str) -> str:
    """The ARN of a queue, from its URL (https://sqs.<region>.amazonaws.com/<account>/<name>)."""
    account, name = url.rstrip("/").split("/")[-2:]
    return f"arn:aws:sqs:{REGION}:{account}:{name}"


SQS_ACTIONS = {
    "SendMessage": "sqs:SendMessage",
    "SendMessageBatch": "sqs:SendMessage",
    "ChangeMessageVisibility": "sqs:ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "ReceiveMessage": "sqs:ReceiveMessage",
    "DeleteMessage": "sqs:DeleteMessage",
    "DeleteMessageBatch": "sqs:DeleteMessage",
    "GetQueueAttributes": "sqs:GetQueueAttributes",
}


def needs(service: str, operation: str, params: dict[str, Any]) -> list[Need]:
    """What IAM checks for one call."""
    if service == "dynamodb":
        table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/"
        if operation == "BatchGetItem":
            return [
                Need("dynamodb:BatchGetItem", table + name, tuple(_pk(k) for k in spec["Keys"]))
                for name, spec in params["RequestItems"].items()
            ]
        if operation == "BatchWriteItem":
            return [
                Need(
                    "dynamodb:BatchWriteItem",
                    table + name,
                    tuple(
                        _pk(w["PutRequest"]["Item"] if "PutRequest" in w else w["DeleteRequest"]["Key"])
                        for w in writes
                    ),
                )
                for name, writes in params["RequestItems"].items()
            ]
        if operation == "TransactWriteItems":
            # Checked action by action, as the calls they stand for (there is no action of its own).
            return [
                Need(f"dynamodb:{kind}Item", table + spec["TableName"], (_pk(spec["Key"]),))
                for entry in params["TransactItems"]
                for kind, spec in entry.items()
            ]
        resource = table + params["TableName"]
        if "IndexName" in params:
            resource += f"/index/{params['IndexName']}"
        keys = params.get("Key") or params.get("Item")
        return [Need(f"dynamodb:{operation}", resource, (_pk(keys),) if keys else ())]
    if service == "s3":
        bucket = f"arn:aws:s3:::{params['Bucket']}"
        if operation == "ListObjectsV2":
            return [Need("s3:ListBucket", bucket, prefix=params.get("Prefix", ""))]
        action = {
            "PutObject": "s3:PutObject",
            "CreateMultipartUpload": "s3:PutObject",
            "UploadPart": "s3:PutObject",
            "CompleteMultipartUpload": "s3:PutObject",
            "AbortMultipartUpload": "s3:AbortMultipartUpload",
            "GetObject": "s3:GetObject",
            "HeadObject": "s3:GetObject",
        }[operation]
        return [Need(action, f"{bucket}/{params['Key']}")]
    if service == "sqs" and operation in SQS_ACTIONS:
        return [Need(SQS_ACTIONS[operation], queue_arn(params["QueueUrl"]))]
    if service == "sns" and operation in ("Publish", "PublishBatch"):
        return [Need("sns:Publish", params["TopicArn"])]
    if service == "secretsmanager" and operation == "GetSecretValue":
        return [Need("secretsmanager:GetSecretValue", params["SecretId"])]
    if service == "stepfunctions" and operation == "StartExecution":
        return [Need("states:StartExecution", params["stateMachineArn"])]
    if service == "stepfunctions" and operation == "DescribeExecution":
        return [Need("states:DescribeExecution", params["executionArn"])]
    raise AssertionError(f"no IAM mapping for {service}.{operation}: add one to this test")


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _condition_matches(operator: str, key: str, patterns: list[str], need: Need) -> list[str]:
    """The condition's patterns this call's keys or prefix match."""
    if (operator, key) == ("ForAllValues:StringLike", "dynamodb:LeadingKeys"):
        return [p for p in patterns if any(fnmatchcase(k, p) for k in need.leading_keys)]
    if (operator, key) == ("StringLike", "s3:prefix"):
        return [p for p in patterns if need.prefix is not None and fnmatchcase(need.prefix, p)]
    raise AssertionError(f"condition {operator} {key} not evaluated here")


def allows(statement: dict[str, Any], need: Need) -> bool:
    if statement["Effect"] != "Allow":
        return False
    if not any(fnmatchcase(need.action, a) for a in _listed(statement["Action"])):
        return False
    if not any(fnmatchcase(need.resource, r) for r in _listed(statement["Resource"])):
        return False
    for operator, values in statement.get("Condition", {}).items():
        for key, patterns in values.items():
            patterns = _listed(patterns)
            if (operator, key) == ("ForAllValues:StringLike", "dynamodb:LeadingKeys"):
                # Every key the call touches must match one of the patterns.
                ok = all(any(fnmatchcase(k, p) for p in patterns) for k in need.leading_keys)
            else:
                ok = bool(_condition_matches(operator, key, patterns, need))
            if not ok:
                return False
    return True


def condition_values(statement: dict[str, Any]) -> list[str | None]:
    """The key patterns or prefixes a statement's condition allows (None for no condition): each
    is a grant of its own, which some call must use."""
    values: list[str | None] = []
    for _operator, spec in statement.get("Condition", {}).items():
        for _key, patterns in spec.items():
            values += _listed(patterns)
    return values or [None]


def used_values(statement: dict[str, Any], need: Need) -> list[str | None]:
    """The condition patterns of a statement that allows `need` which the call made use of."""
    out: list[str | None] = []
    for operator, spec in statement.get("Condition", {}).items():
        for key, patterns in spec.items():
            out += _condition_matches(operator, key, _listed(patterns), need)
    return out or [None]


def statements(stack: Any, function: str) -> list[dict[str, Any]]:
    out = []
    for policy in stack.template["Resources"][function]["Properties"]["Policies"]:
        # Explicit statements only (SAM's policy templates grant more than the code uses), under
        # the policy language version that resolves variables.
        assert set(policy) == {"Version", "Statement"} and policy["Version"] == "2012-10-17", function
        out += stack.resolve(policy["Statement"])
    return out


def event_source_grants(stack: Any, function: str) -> list[dict[str, Any]]:
    events = stack.template["Resources"][function]["Properties"].get("Events", {})
    return [EVENT_SOURCE_GRANT for e in events.values() if e["Type"] == "SQS"]


def granted(stack: Any, function: str) -> list[dict[str, Any]]:
    """Everything the function's role allows: its statements, then what its event source adds."""
    return statements(stack, function) + event_source_grants(stack, function)


class Recorder:
    """Which function made which call: the handler's thread says whose call it is."""

    def __init__(self, stack: Any):
        self.stack, self.local = stack, threading.local()
        self.calls: list[tuple[str, str, str, dict[str, Any]]] = []
        self._invoke = stack.invoke

    def invoke(self, logical_id: str, event: Any) -> Any:
        # Each function runs in processes of its own: nothing one cached (the secret) spares another a call.
        parameters.clear_caches()
        self.local.function = logical_id
        try:
            return self._invoke(logical_id, event)
        finally:
            self.local.function = None

    def record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        function = getattr(self.local, "function", None)
        if function:
            service = model.service_model.service_name
            self.calls.append((function, service, model.name, dict(params)))

    def needs(self, function: str | None = None) -> list[tuple[str, Need]]:
        return [
            (fn, need)
            for fn, service, operation, params in self.calls
            if function in (None, fn)
            for need in needs(service, operation, params)
        ]

    def made(self, function: str, action: str, key: str = "", resource: str = "") -> bool:
        """Whether `function` made a call needing `action`, on an item whose key starts with `key`
        (or a listing whose prefix does), on a resource whose ARN holds `resource`."""
        return any(
            need.action == action
            and resource in need.resource
            and (
                not key
                or any(k.startswith(key) for k in need.leading_keys)
                or (need.prefix or "").startswith(key)
            )
            for _, need in self.needs(function)
        )

    def __enter__(self) -> Recorder:
        # The relay's clients come from boto3's default session; Powertools makes sessions of its
        # own (the secret), which take their handlers from botocore's built-in list when made.
        events = boto3._get_default_session()._session.get_component("event_emitter")
        events.register("provide-client-params.*.*", self.record, unique_id="policy-recorder")
        BUILTIN_HANDLERS.append(("provide-client-params.*.*", self.record))
        self.stack.invoke = self.invoke
        return self

    def __exit__(self, *exc: object) -> None:
        events = boto3._get_default_session()._session.get_component("event_emitter")
        events.unregister("provide-client-params.*.*", unique_id="policy-recorder")
        BUILTIN_HANDLERS.remove(("provide-client-params.*.*", self.record))
        self.stack.invoke = self._invoke


@pytest.fixture
def recorded(make_stack: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    stack = make_stack(**STACK_PARAMETERS)
    with Recorder(stack) as recorder:
        yield stack, emulator, recorder, monkeypatch


def _fail_once(operation: str) -> Any:
    failed: list[bool] = []

    def hook(**_: Any) -> None:
        if not failed:
            failed.append(True)
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, operation)

    return hook


def _kill_once(function: str, operation: str) -> Any:
    """A stack hook that kills `function` right after its first `operation` call acted."""
    done: list[bool] = []

    def after(fn: str, op: str) -> None:
        if fn == function and op == operation and not done:
            done.append(True)
            raise FunctionKilled(f"{function} killed after {operation}")

    return after


def _one_round(stack: Any) -> None:
    stack.deliver()
    stack.advance(3600)
    stack.tick()
    stack.settle()


def run_every_path(stack: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from batch_relay import aws, payloads

    s3 = boto3.client("s3")
    inbox = stack.physical["InboxBucket"]
    offloaded = request("offloaded-1", text="from the inbox")
    s3.put_object(Bucket=inbox, Key="p/offloaded-1.json", Body=json.dumps(offloaded))
    long = request("long-1", text="write at length [[emulate:long]]")
    long["params"]["max_tokens"] = 60_000
    bad = {"request_id": "bad-1", "params": {"model": "claude-haiku-4-5", "stream": True}}
    stack.send(
        [
            request("plain-1"),
            long,
            bad,
            bad,  # the same id again: its item is read back
            [
                "software.amazon.payloadoffloading.PayloadS3Pointer",
                {"s3BucketName": inbox, "s3Key": "p/offloaded-1.json"},
            ],
        ]
    )
    stack.deliver()

    # A claim that dies after its multipart upload began: the upload is aborted, and a later run
    # releases the claim from its journal.
    monkeypatch.setattr(payloads, "PART_BYTES", 64)
    events = aws.client("s3").meta.events
    events.register(
        "before-call.s3.CompleteMultipartUpload",
        _fail_once("CompleteMultipartUpload"),
        unique_id="fail-complete",
    )
    try:
        with pytest.raises(ClientError):
            stack.advance(3600)
            stack.tick()
    finally:
        events.unregister("before-call.s3.CompleteMultipartUpload", unique_id="fail-complete")
        monkeypatch.setattr(payloads, "PART_BYTES", 16 * 1024 * 1024)
    stack.advance(16 * 60)
    stack.pump()

    # A lone request too large for any batch the API takes is answered by the submitter; the run
    # dies right after publishing, so the next one reads the outbox to finish.
    emulator.max_bytes = 2000
    stack.send([request("giant-1", text="y" * 4000)])
    stack.after = _kill_once("SubmitterFunction", "PublishBatch")
    with pytest.raises(FunctionKilled):
        stack.pump()
    stack.after = None
    stack.pump()
    emulator.max_bytes = 256 * 1024 * 1024

    # No credit: the requests are held and their tier paused (hold#), until a batch succeeds. The
    # collector dies after writing the items: its retry publishes from the outbox.
    emulator.credit = False
    stack.send([request("held-1")])
    _one_round(stack)
    emulator.credit = True
    stack.advance(3600)
    stack.after = _kill_once("CollectResultsFunction", "BatchWriteItem")
    stack.pump()
    stack.after = None

    # An execution stopped by hand: the submitter looks at it once its batch stops moving.
    emulator.latency_seconds = 3600
    stack.send([request("stopped-1")])
    stack.deliver()
    stack.advance(3600)
    stack.tick()
    running = [e for e in stack.executions() if e["status"] == "RUNNING"]
    stop_execution(running[0]["executionArn"])
    stack.settle()
    stack.advance(3 * 3600)
    emulator.latency_seconds = 0.2
    stack.pump()

    # The API returns fewer results than the batch holds: the collector answers the rest.
    ids = stack.seed_batch("msgbatch_short", "0123456789abcdef0123456789abcdef", None, count=2)
    emulator.preload(
        "msgbatch_short",
        [
            {
                "custom_id": ids[0],
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": "x"}],
                },
            }
        ],
    )
    event = {"batch_id": "msgbatch_short", "ref": "0123456789abcdef0123456789abcdef", "cursor": 0}
    assert stack.invoke("CollectResultsFunction", event)["done"] is True


def _items(stack: Any, prefix: str) -> dict[str, dict[str, Any]]:
    table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"])
    found: dict[str, dict[str, Any]] = {}
    args: dict[str, Any] = {}
    while True:
        page = table.scan(**args)
        found |= {i["pk"]: i for i in page["Items"] if i["pk"].startswith(prefix)}
        if "LastEvaluatedKey" not in page:
            return found
        args["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _realtime_records(stack: Any) -> dict[str, dict[str, Any]]:
    return {k: b for k, b in _items(stack, "batch#").items() if b.get("route") == "realtime"}


def _new_batch(emulator: Any, before: list[str]) -> str:
    [batch_id] = [b for b in emulator.batch_ids() if b not in before]
    return str(batch_id)


def _record_of(stack: Any, batch_id: str) -> dict[str, Any]:
    [record] = [b for b in _items(stack, "batch#").values() if b.get("batch_id") == batch_id]
    return record


def _answered(stack: Any, ids: list[str]) -> bool:
    found = _items(stack, "req#")
    return all(found.get(f"req#{rid}", {}).get("status") == "succeeded" for rid in ids)


def _spend_elsewhere(stack: Any, usd: float) -> None:
    """Add to (or, negative, take from) what today has committed, as another spender would."""
    from batch_relay.budget import today
    from batch_relay.store import MICROS

    boto3.client("dynamodb").update_item(
        TableName=stack.physical["RequestTable"],
        Key={"pk": {"S": f"budget#{today()}"}},
        UpdateExpression="ADD committed_micros :n",
        ExpressionAttributeValues={":n": {"N": str(round(usd * MICROS))}},
    )


def run_deadline_paths(stack: Any, emulator: Any) -> dict[str, list[dict[str, Any]]]:
    """Deadlines, realtime answers and the daily budget; returns the completions by request id."""
    from batch_relay.submitter import RESCUE_GRACE_SECONDS, RESEND_SECONDS

    inbox = stack.subscribe()
    completions: list[dict[str, Any]] = []

    # Due before any batch could answer: sent realtime at claim (a realtime record, its journal,
    # the items, one message each). The realtime function leases the item, commits the budget,
    # calls, settles through the outbox, publishes and gives back what it did not spend. Its first
    # try dies after writing the items: the next delivery publishes from the outbox. One answer is
    # too large for SNS. The next submitter run ends the realtime record.
    long = request("rt-long", text="write at length [[emulate:long]]", deadline=at(100))
    long["params"]["max_tokens"] = 60_000
    stack.send([request("rt-claim", deadline=at(100)), long])
    stack.deliver()
    stack.after = _kill_once("RealtimeFunction", "PutItem")
    stack.tick()  # sends them realtime, and Lambda delivers them
    stack.after = None
    [record] = [r for r in _realtime_records(stack).values() if r["status"] == "realtime"]
    stack.deliver_realtime()
    stack.tick()
    assert _items(stack, record["pk"])[record["pk"]]["status"] == "answered"
    completions += stack.drain(inbox)

    # A try that dies right after keeping its answer: the next one finds it (listing answers/) and
    # settles from it, never calling the API again.
    stack.send([request("rt-kept", deadline=at(100))])
    stack.deliver()
    calls = len(emulator.messages_created)
    stack.after = _kill_once("RealtimeFunction", "PutObject")
    stack.tick()
    stack.after = None
    stack.deliver_realtime()
    assert len(emulator.messages_created) == calls + 1, "a kept answer was paid for twice"

    # A 429 with a retry-after longer than the function waits in place: the message is hidden.
    emulator.inject("POST", "/v1/messages", 429, count=1, retry_after=120, route="message")
    stack.send([request("rt-429", deadline=at(100))])
    stack.deliver()
    stack.tick()
    stack.deliver_realtime()
    assert stack.hidden_for[-1:] == [120], "the retry-after did not hide the message"
    stack.advance(121)
    stack.deliver_realtime()

    # A realtime message lost on the way: the submitter sends it again from the record's journal.
    stack.send([request("rt-lost", deadline=at(100))])
    stack.deliver()
    stack.tick()
    stack.sqs.purge_queue(QueueUrl=stack.queue_url("RealtimeQueue"))
    stack.advance(RESEND_SECONDS + 1)
    stack.tick()
    stack.deliver_realtime()
    stack.tick()
    assert _answered(stack, ["rt-429", "rt-lost"])
    completions += stack.drain(inbox)

    # A late batch: its poller takes the deadline requests out (the schedule in S3, the collect
    # lease, a realtime record and journal, the items moved, the messages), the rest is answered
    # by the batch once it ends, which also gives the relay a turnaround sample.
    emulator.make_late(1, 7200)
    before = emulator.batch_ids()
    due = ["dl0", "dl1"]
    stack.send([request(r, model=RESCUED_MODEL, deadline=at(1800)) for r in due])
    stack.send([request("nd0", model=RESCUED_MODEL)])
    stack.deliver()
    stack.tick()
    late = _new_batch(emulator, before)
    assert set(emulator.custom_ids(late)) == {*due, "nd0"}
    ref = _record_of(stack, late)["ref"]
    stack.advance(1800 - 60 + 5)
    wait_for(lambda: any(r.get("rescued_from") == ref for r in _realtime_records(stack).values()))
    wait_for(lambda: bool(stack.deliver_realtime()) and _answered(stack, due))
    stack.advance(7200)
    stack.pump()
    assert _record_of(stack, late)["status"] == "collected"
    assert f"turn#{RESCUED_MODEL}#{late}" in _items(stack, "turn#")

    # A late batch whose requests all went realtime is canceled.
    emulator.make_late(1, 7200)
    before = emulator.batch_ids()
    stack.send([request(r, model=RESCUED_MODEL, deadline=at(1800)) for r in ("all0", "all1")])
    stack.deliver()
    stack.tick()
    canceled = _new_batch(emulator, before)
    stack.advance(1800 - 60 + 5)
    wait_for(lambda: emulator.batch(canceled)["cancel_initiated_at"] is not None)
    stack.pump()
    completions += stack.drain(inbox)

    # A late batch whose poller is gone: the submitter rescues its deadline request once overdue.
    emulator.make_late(1, 7200)
    before = emulator.batch_ids()
    stack.send([request("od0", model=RESCUED_MODEL, deadline=at(1800)), request("od1", model=RESCUED_MODEL)])
    stack.deliver()
    stack.tick()
    overdue = _new_batch(emulator, before)
    for execution in stack.executions():
        if execution["status"] == "RUNNING":
            stop_execution(execution["executionArn"])
    stack.settle()
    ref = _record_of(stack, overdue)["ref"]
    stack.advance(1800 - 60 + RESCUE_GRACE_SECONDS + 5)
    stack.tick()
    assert any(r.get("rescued_from") == ref for r in _realtime_records(stack).values()), "not rescued"
    stack.deliver_realtime()
    assert _answered(stack, ["od0"])
    stack.pump()
    completions += stack.drain(inbox)

    # The day's budget is spent elsewhere: the tier waits, its late request goes realtime and the
    # realtime function refuses it (budget_exceeded) rather than pass the budget.
    _spend_elsewhere(stack, 5)
    stack.send([request("over", deadline=at(100))])
    stack.deliver()
    stack.tick()
    stack.deliver_realtime()
    _spend_elsewhere(stack, -5)
    stack.tick()
    completions += stack.drain(inbox)

    # The API refuses the account to a realtime call: the request goes back to its tier, which is
    # held (hold#<tier>), and is answered once the account works again.
    emulator.credit = False
    stack.send([request("rt-broke", deadline=at(100))])
    stack.deliver()
    stack.tick()
    stack.deliver_realtime()
    emulator.credit = True
    stack.pump()
    completions += stack.drain(inbox)
    return by_id(completions)


# Calls that show each scenario took the path it is there for: (function, action, key or prefix
# the call starts with, part of the resource's ARN).
WITNESSES = [
    # realtime at claim, the realtime function's lease, budget, outbox, a large answer, its retry
    ("SubmitterFunction", "sqs:SendMessage", "", "RealtimeQueue"),
    ("SubmitterFunction", "dynamodb:PutItem", "batch#", ""),
    ("RealtimeFunction", "dynamodb:GetItem", "req#", ""),
    ("RealtimeFunction", "dynamodb:UpdateItem", "req#rt-claim", ""),
    ("RealtimeFunction", "dynamodb:UpdateItem", "budget#", ""),
    ("RealtimeFunction", "s3:GetObject", "", "/bodies/"),
    ("RealtimeFunction", "s3:PutObject", "", "/outbox/"),
    ("RealtimeFunction", "s3:GetObject", "", "/outbox/"),
    ("RealtimeFunction", "s3:GetObject", "", "/answers/"),
    ("RealtimeFunction", "s3:ListBucket", "answers/", ""),
    ("RealtimeFunction", "s3:PutObject", "", "/messages/rt-long/"),
    ("RealtimeFunction", "s3:ListBucket", "outbox/", ""),
    ("RealtimeFunction", "sns:Publish", "", "CompletionTopic"),
    ("RealtimeFunction", "sqs:ChangeMessageVisibility", "", "RealtimeQueue"),
    # the account refused to a realtime call holds the tier
    ("RealtimeFunction", "dynamodb:UpdateItem", "hold#", ""),
    # a realtime record recovered, its lost message sent again
    ("SubmitterFunction", "s3:ListBucket", "claims/", ""),
    # deadline schedules, rescues by the poller and by the submitter, turnaround samples
    ("SubmitterFunction", "s3:PutObject", "", "/deadlines/"),
    ("SubmitterFunction", "s3:GetObject", "", "/deadlines/"),
    ("SubmitterFunction", "dynamodb:PutItem", "lease#collect#", ""),
    ("CheckBatchFunction", "dynamodb:GetItem", "batch#", ""),
    ("CheckBatchFunction", "dynamodb:PutItem", "lease#collect#", ""),
    ("CheckBatchFunction", "dynamodb:DeleteItem", "lease#collect#", ""),
    ("CheckBatchFunction", "dynamodb:PutItem", "batch#", ""),
    ("CheckBatchFunction", "dynamodb:UpdateItem", "req#dl", ""),
    ("CheckBatchFunction", "dynamodb:PutItem", "turn#", ""),
    ("CheckBatchFunction", "s3:GetObject", "", "/deadlines/"),
    ("CheckBatchFunction", "s3:PutObject", "", "/claims/"),
    ("CheckBatchFunction", "sqs:SendMessage", "", "RealtimeQueue"),
    # the budget: batches commit it and collectors give the rest back
    ("SubmitterFunction", "dynamodb:UpdateItem", "budget#", ""),
    ("SubmitterFunction", "dynamodb:GetItem", "budget#", ""),
    ("CollectResultsFunction", "dynamodb:UpdateItem", "budget#", ""),
]


def test_every_call_is_allowed_and_every_grant_is_used(recorded: Any) -> None:
    stack, emulator, recorder, monkeypatch = recorded
    # Deadlines first: the seeded batch of the other paths leaves a request with no body behind.
    got = run_deadline_paths(stack, emulator)
    run_every_path(stack, emulator, monkeypatch)

    # The scenarios did what they are there for.
    assert {k: len(v) for k, v in got.items() if len(v) != 1} == {}, "a request was answered twice"
    realtime = [
        "rt-claim",
        "rt-long",
        "rt-kept",
        "rt-429",
        "rt-lost",
        "dl0",
        "dl1",
        "all0",
        "all1",
        "od0",
        "rt-broke",
    ]
    for rid in realtime:
        [c] = got[rid]
        assert (rid, c["route"], c["status"], c["batch_id"]) == (rid, "realtime", "succeeded", None)
    assert [(c["route"], c["status"]) for c in got["nd0"] + got["od1"]] == [("batch", "succeeded")] * 2
    assert got["rt-long"][0]["message"]["type"] == "s3_pointer"
    [over] = got["over"]
    assert (over["status"], over["error"]["type"], over["route"]) == (
        "errored",
        "budget_exceeded",
        "realtime",
    )
    missing = [w for w in WITNESSES if not recorder.made(w[0], w[1], key=w[2], resource=w[3])]
    assert missing == [], "a scenario no longer makes the calls it is there for"

    functions = sorted(stack.functions)
    assert {c[0] for c in recorder.calls} == set(functions)
    denied: list[str] = []
    used: set[tuple[str, int, str, str, str | None]] = set()
    for function, need in recorder.needs():
        grants = granted(stack, function)
        matching = [i for i, s in enumerate(grants) if allows(s, need)]
        if not matching:
            denied.append(f"{function}: {need}")
        for i in matching:
            actions = [a for a in _listed(grants[i]["Action"]) if fnmatchcase(need.action, a)]
            resources = [r for r in _listed(grants[i]["Resource"]) if fnmatchcase(need.resource, r)]
            values = used_values(grants[i], need)
            used |= {(function, i, a, r, v) for a in actions for r in resources for v in values}
    assert sorted(set(denied)) == []

    unused = []
    for function in functions:
        for i, statement in enumerate(statements(stack, function)):
            for action in _listed(statement["Action"]):
                for resource in _listed(statement["Resource"]):
                    for value in condition_values(statement):
                        if (function, i, action, resource, value) not in used and (
                            function,
                            action,
                        ) not in UNUSED_BUT_NEEDED:
                            unused.append(
                                f"{function}: {action} on {resource}" + (f" ({value})" if value else "")
                            )
    assert unused == []


def test_the_check_catches_a_missing_grant(stack: Any) -> None:
    """The mapping and evaluation above fail when a grant is missing or too narrow."""
    table = stack.arns["RequestTable"]
    check = statements(stack, "CheckBatchFunction")
    assert any(allows(s, Need("dynamodb:UpdateItem", table, ("batch#1",))) for s in check)
    assert any(allows(s, Need("dynamodb:UpdateItem", table, ("req#1",))) for s in check)
    # The check step only moves request items to a realtime record: it never reads, writes or
    # deletes them otherwise, nor writes the budget or a tier's hold.
    for action in ("GetItem", "PutItem", "DeleteItem", "BatchWriteItem"):
        assert not any(allows(s, Need(f"dynamodb:{action}", table, ("req#1",))) for s in check), action
    assert not any(allows(s, Need("dynamodb:UpdateItem", table, ("budget#2025-01-01",))) for s in check)
    assert not any(allows(s, Need("dynamodb:DeleteItem", table, ("batch#1",))) for s in check)
    # One key the grant does not name makes a batched call fail as a whole.
    realtime = statements(stack, "RealtimeFunction")
    assert any(allows(s, Need("dynamodb:BatchGetItem", table, ("req#1", "req#2"))) for s in realtime)
    assert not any(allows(s, Need("dynamodb:BatchGetItem", table, ("req#1", "lease#x"))) for s in realtime)
    data = f"arn:aws:s3:::{stack.physical['PayloadBucket']}"
    buffer = statements(stack, "BufferFunction")
    assert not any(allows(s, Need("s3:GetObject", f"{data}/input/x.jsonl")) for s in buffer)
    assert any(
        allows(s, Need("s3:GetObject", f"arn:aws:s3:::{stack.physical['InboxBucket']}/p/x.json"))
        for s in buffer
    )
    collect = statements(stack, "CollectResultsFunction")
    assert not any(allows(s, Need("s3:ListBucket", data, prefix="input/")) for s in collect)
    assert not any(allows(s, Need("s3:ListBucket", data, prefix="claims/")) for s in realtime)
    # Only the submitter and the check step send realtime; only the realtime function hides a
    # message, which its event source's own grants do not cover.
    queue = stack.arns["RealtimeQueue"]
    assert queue_arn(stack.queue_url("RealtimeQueue")) == queue
    send = Need("sqs:SendMessage", queue)
    senders = {f for f in stack.functions if any(allows(s, send) for s in granted(stack, f))}
    assert senders == {"SubmitterFunction", "CheckBatchFunction"}
    hide = Need("sqs:ChangeMessageVisibility", queue)
    assert not any(allows(s, hide) for s in event_source_grants(stack, "RealtimeFunction"))
    assert any(allows(s, hide) for s in realtime)
    assert not any(
        allows(s, Need("sqs:ChangeMessageVisibility", stack.arns["RequestQueue"])) for s in realtime
    )


def test_only_the_roles_that_publish_may_publish(stack: Any) -> None:
    """The completion topic's policy names exactly the roles granted sns:Publish on it: a role
    left out (the realtime function's) would have every publish denied by its Deny statement."""
    topic = stack.arns["CompletionTopic"]
    publishers = {
        f"{f}Role"
        for f in stack.functions
        if any(allows(s, Need("sns:Publish", topic)) for s in statements(stack, f))
    }
    assert "RealtimeFunctionRole" in publishers
    policy = stack.template["Resources"]["CompletionTopicPolicy"]["Properties"]["PolicyDocument"]
    by_sid = {s["Sid"]: s for s in policy["Statement"] if isinstance(s, dict) and "Sid" in s}
    named = {r["Fn::GetAtt"][0] for r in by_sid["RelayPublishes"]["Principal"]["AWS"]}
    excepted = {
        r["Fn::GetAtt"][0]
        for r in by_sid["OnlyTheRelayPublishes"]["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]
    }
    assert named == excepted == publishers


def _refused_for_the_account(stack: Any, emulator: Any, rid: str) -> None:
    """A request sent realtime which the API refuses for the account: back in its tier, held."""
    emulator.credit = False
    stack.send([request(rid, deadline=at(100))])
    stack.deliver()
    stack.tick()
    stack.deliver_realtime()
    assert emulator.messages_created == []
    emulator.credit = True


def test_a_request_sent_realtime_again_after_an_account_hold_is_held_to_the_budget(
    make_stack: Any, emulator: Any
) -> None:
    """A realtime request the API refused for the account went back to its tier, its commitment
    given back: when it is sent realtime again (its tier's hold over), the budget is checked and
    committed afresh, never skipped because the first try's commitment is still named on it."""
    from batch_relay.results import HOLD_BASE_SECONDS

    stack = make_stack(DailyBudgetUSD="5")
    inbox = stack.subscribe()
    _refused_for_the_account(stack, emulator, "again")
    _spend_elsewhere(stack, 5)  # the rest of the day's budget is spent
    stack.advance(HOLD_BASE_SECONDS + 1)
    stack.tick()  # the hold is over: the late request is sent realtime again
    stack.deliver_realtime()
    [c] = by_id(stack.drain(inbox))["again"]
    assert emulator.messages_created == [], "sent realtime past a spent daily budget"
    assert (c["status"], c["error"]["type"]) == ("errored", "budget_exceeded")


def test_a_request_sent_realtime_again_after_an_account_hold_is_not_kept_waiting(
    stack: Any, emulator: Any
) -> None:
    """The refused try's lease on the item ends with its outcome: the next try, once the tier's
    hold is over, is not kept waiting for it (it would outlive the deadline margin)."""
    from batch_relay.results import HOLD_BASE_SECONDS

    inbox = stack.subscribe()
    _refused_for_the_account(stack, emulator, "again")
    stack.advance(HOLD_BASE_SECONDS + 1)
    stack.tick()
    stack.deliver_realtime()
    assert stack.hidden_for == [], "the request's own earlier, finished try still holds its lease"
    [c] = by_id(stack.drain(inbox))["again"]
    assert (c["status"], c["route"]) == ("succeeded", "realtime")


# the realtime and check functions' roles, against what they do


def _aws_needs(stack: Any, service: str, operation: str, params: dict[str, Any]) -> list[Any]:

    if service == "sqs":
        arn = next(stack.arns[n] for n, url in stack.physical.items() if url == params["QueueUrl"])
        action = {"SendMessageBatch": "sqs:SendMessage"}.get(operation, f"sqs:{operation}")
        return [Need(action, arn)]
    return needs(service, operation, params)


def test_the_realtime_function_may_do_what_its_account_problem_path_does(stack, emulator):
    """A realtime answer that shows an account problem holds its tier (`hold#<tier>`), as a batch's
    does; the realtime role's table grant names only req#, batch# and budget# items, so in AWS the
    hold is refused and the invocation fails after writing the request back."""

    with Recorder(stack) as recorder:
        emulator.credit = False
        stack.send([request("np", deadline=at(600))])
        stack.deliver()
        stack.tick()
        emulator.credit = True
    calls = [c for c in recorder.calls if c[0] == "RealtimeFunction"]
    assert calls, "the realtime function made no AWS call"
    granted = statements(stack, "RealtimeFunction")
    denied = [
        f"{need.action} {need.leading_keys or need.resource}"
        for _, service, operation, params in calls
        for need in _aws_needs(stack, service, operation, params)
        if not any(allows(s, need) for s in granted)
    ]
    assert denied == []


def test_the_check_step_can_neither_replace_nor_delete_request_items(stack):
    """The check step moves a request to realtime with one conditional UpdateItem; its role lists
    Get/Put/Update/DeleteItem against every key prefix it touches, so it may also read, overwrite
    and delete any request item (and delete batch records and turnaround samples)."""

    table_arn = stack.arns["RequestTable"]
    granted = statements(stack, "CheckBatchFunction")
    assert any(allows(s, Need("dynamodb:UpdateItem", table_arn, ("req#1",))) for s in granted)
    never_used = [
        ("dynamodb:GetItem", "req#1"),
        ("dynamodb:PutItem", "req#1"),
        ("dynamodb:DeleteItem", "req#1"),
        ("dynamodb:DeleteItem", "batch#1"),
        ("dynamodb:GetItem", "turn#m#b"),
        ("dynamodb:DeleteItem", "turn#m#b"),
    ]
    excess = [
        f"{action} {key}"
        for action, key in never_used
        if any(allows(s, Need(action, table_arn, (key,))) for s in granted)
    ]
    assert excess == []
