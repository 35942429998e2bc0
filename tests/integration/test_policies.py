"""Least privilege, checked against what the code does: every AWS call a function makes while the
relay runs (a normal flow plus the rare paths: rejections, offloaded bodies, a completion too large
for SNS, a claim that dies after its multipart upload began, a lone request too large for any
batch, a batch the API returns too few results for, a run killed between publishing and marking, an
account hold, a poller stopped by hand) must be allowed by that function's role in
template.yaml, and every grant of a role must be used by one of those calls.

The calls are recorded at boto3's `provide-client-params` event, inside the handlers, and mapped to
the IAM action and resource AWS checks for them (S3's multipart calls need s3:PutObject, HeadObject
needs s3:GetObject, PublishBatch needs sns:Publish).
"""

from __future__ import annotations

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

from tests.helpers import request, stop_execution

ACCOUNT, REGION = "123456789012", "us-east-1"
# Grants no call exercises, each with why it is still needed.
UNUSED_BUT_NEEDED = {
    (
        "BufferFunction",
        "s3:ListBucket",
    ): "turns a missing inbox object into NoSuchKey instead of AccessDenied",
}


@dataclass(frozen=True)
class Need:
    action: str
    resource: str
    leading_keys: tuple[str, ...] = ()
    prefix: str | None = None


def _pk(key: Any) -> str:
    pk = key["pk"]
    return pk["S"] if isinstance(pk, dict) else str(pk)


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
                ok = all(any(fnmatchcase(k, p) for p in patterns) for k in need.leading_keys)
            elif (operator, key) == ("StringLike", "s3:prefix"):
                ok = need.prefix is not None and any(fnmatchcase(need.prefix, p) for p in patterns)
            else:
                raise AssertionError(f"condition {operator} {key} not evaluated here")
            if not ok:
                return False
    return True


def statements(stack: Any, function: str) -> list[dict[str, Any]]:
    out = []
    for policy in stack.template["Resources"][function]["Properties"]["Policies"]:
        # Explicit statements only: SAM's policy templates grant more than the code uses.
        assert set(policy) == {"Statement"}, f"{function}: {policy}"
        out += stack.resolve(policy["Statement"])
    return out


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
def recorded(stack: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
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
    s3.put_object(Bucket=inbox, Key="p/offloaded-1.json", Body=__import__("json").dumps(offloaded))
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


def test_every_call_is_allowed_and_every_grant_is_used(recorded: Any) -> None:
    stack, emulator, recorder, monkeypatch = recorded
    run_every_path(stack, emulator, monkeypatch)

    functions = sorted(stack.functions)
    assert {c[0] for c in recorder.calls} == set(functions)
    denied: list[str] = []
    used: set[tuple[str, int, str, str]] = set()
    for function, service, operation, params in recorder.calls:
        granted = statements(stack, function)
        for need in needs(service, operation, params):
            matching = [i for i, s in enumerate(granted) if allows(s, need)]
            if not matching:
                denied.append(f"{function}: {need}")
            for i in matching:
                actions = [a for a in _listed(granted[i]["Action"]) if fnmatchcase(need.action, a)]
                resources = [r for r in _listed(granted[i]["Resource"]) if fnmatchcase(need.resource, r)]
                used |= {(function, i, a, r) for a in actions for r in resources}
    assert denied == []

    unused = []
    for function in functions:
        for i, statement in enumerate(statements(stack, function)):
            for action in _listed(statement["Action"]):
                for resource in _listed(statement["Resource"]):
                    if (function, i, action, resource) not in used and (
                        function,
                        action,
                    ) not in UNUSED_BUT_NEEDED:
                        unused.append(f"{function}: {action} on {resource}")
    assert unused == []


def test_the_check_catches_a_missing_grant(stack: Any) -> None:
    """The mapping and evaluation above fail when a grant is missing or too narrow."""
    table = stack.arns["RequestTable"]
    granted = statements(stack, "CheckBatchFunction")
    assert any(allows(s, Need("dynamodb:UpdateItem", table, ("batch#1",))) for s in granted)
    # The check step may not touch request items, nor read anything.
    assert not any(allows(s, Need("dynamodb:UpdateItem", table, ("req#1",))) for s in granted)
    assert not any(allows(s, Need("dynamodb:GetItem", table, ("batch#1",))) for s in granted)
    data = f"arn:aws:s3:::{stack.physical['PayloadBucket']}"
    buffer = statements(stack, "BufferFunction")
    assert not any(allows(s, Need("s3:GetObject", f"{data}/input/x.jsonl")) for s in buffer)
    assert any(
        allows(s, Need("s3:GetObject", f"arn:aws:s3:::{stack.physical['InboxBucket']}/p/x.json"))
        for s in buffer
    )
    collect = statements(stack, "CollectResultsFunction")
    assert not any(allows(s, Need("s3:ListBucket", data, prefix="input/")) for s in collect)
