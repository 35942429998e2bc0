"""Bad input never blocks good input: a corpus of malformed messages and generated ones, each between
valid neighbours, through the real queue and the buffer on moto. Four things hold for every hostile
message: it is answered (a `rejected` completion, or a logged rejection and a metric) on its first
receive; the dead-letter queue stays empty; every valid neighbour is stored exactly once; and what
is published is something real SNS accepts."""

from __future__ import annotations

import itertools
import json
import weakref
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import sns_refuses, stored_line
from tests.malformed import CASES, INBOX, LEGACY, POINTER, SQS_ID, SQS_LIMIT, Case, ok

pytestmark = pytest.mark.integration

REJECTED_WITHOUT_ID = "request rejected without a usable id"


def inbox_bucket() -> str:
    from batch_relay.settings import settings

    return settings().inbox


def _fill(value: Any, bucket: str) -> Any:
    if value == INBOX:
        return bucket
    if isinstance(value, list):
        return [_fill(v, bucket) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, bucket) for k, v in value.items()}
    return value


def wire(case: Case, n: int) -> str:
    """The SQS body a producer would send for this case: inline, or behind a pointer."""
    bucket = inbox_bucket()
    body = _fill(case.body, bucket)
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    via = case.via
    if via == "sqs" and len(data.encode() if isinstance(data, str) else data) > SQS_LIMIT:
        via = "s3"
    if via == "sqs":
        return data  # type: ignore[return-value]
    key = f"producer/{n:04d}-{case.name.replace(' ', '-')}.json"
    boto3.client("s3").put_object(
        Bucket=bucket, Key=key, Body=data if isinstance(data, bytes) else data.encode()
    )
    return json.dumps([LEGACY if via == "legacy" else POINTER, {"s3BucketName": bucket, "s3Key": key}])


def send(stack, bodies: list[str]) -> list[str]:
    """Send bodies to the request queue in order, ten a call; their SQS message ids."""
    ids: list[str] = []
    for start in range(0, len(bodies), 10):
        chunk = bodies[start : start + 10]
        answer = stack.sqs.send_message_batch(
            QueueUrl=stack.queue_url(),
            Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(chunk)],
        )
        assert not answer.get("Failed"), answer["Failed"]
        by_entry = {int(e["Id"]): e["MessageId"] for e in answer["Successful"]}
        ids += [by_entry[i] for i in range(len(chunk))]
    return ids


def items(stack) -> dict[str, dict[str, Any]]:
    pages = boto3.client("dynamodb").get_paginator("scan").paginate(TableName=stack.physical["RequestTable"])
    # Request items only: the table also holds the relay's own (the tiers it has known, leases).
    return {i["request_id"]["S"]: _plain(i) for page in pages for i in page["Items"] if "request_id" in i}


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    from boto3.dynamodb.types import TypeDeserializer

    d = TypeDeserializer()
    return {k: d.deserialize(v) for k, v in item.items()}


# What stored_lines has read of each stack: the body objects, and the lines they hold by id.
SEEN: weakref.WeakKeyDictionary[Any, tuple[set[str], dict[str, int]]] = weakref.WeakKeyDictionary()


def stored_lines(stack) -> dict[str, int]:
    """How many request lines the buffer wrote for each id, over every body object (each object is
    read once per stack and its count kept)."""
    s3 = boto3.client("s3")
    bucket = stack.physical["PayloadBucket"]
    seen, counts = SEEN.setdefault(stack, (set(), {}))
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="bodies/"):
        for obj in page.get("Contents", []):
            if obj["Key"] in seen:
                continue
            seen.add(obj["Key"])
            for line in s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().splitlines():
                rid = json.loads(line)["custom_id"]
                counts[rid] = counts.get(rid, 0) + 1
    return counts


def queue_depth(stack, logical_id: str) -> int:
    attrs = stack.sqs.get_queue_attributes(
        QueueUrl=stack.queue_url(logical_id),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def metric_total(out: str, name: str) -> float:
    """The sum of one metric over every EMF blob the handlers printed."""
    total = 0.0
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            value = json.loads(line).get(name)
            if value is not None:
                total += sum(value) if isinstance(value, list) else value
    return total


def run(stack, hostile: list[Case], tag: str) -> dict[str, Any]:
    """Each hostile message between two valid ones, through the queue and the buffer."""
    ids: list[str] = []
    valid: list[str] = []
    delivered = {"delivered": 0, "failed": 0}
    # A few SQS batches at a time: moto's queue looks at every message it holds on each receive.
    for start in range(0, len(hostile), 40):
        bodies: list[str] = []
        for n, case in enumerate(hostile[start : start + 40], start):
            before, after = ok(f"{tag}-{n}-a"), ok(f"{tag}-{n}-b")
            valid += [before["request_id"], after["request_id"]]
            bodies += [json.dumps(before), wire(case, n), json.dumps(after)]
        ids += send(stack, bodies)
        for k, v in stack.deliver().items():
            delivered[k] += v
    return {"ids": ids[1::3], "valid": valid, "delivered": delivered, "sent": len(ids)}


def check_the_four_things(stack, sent: dict[str, Any], completions: list[dict[str, Any]]) -> None:
    # 1. Answered on the first receive: no record failed, so none was received twice.
    assert sent["delivered"] == {"delivered": sent["sent"], "failed": 0}
    assert queue_depth(stack, "RequestQueue") == 0
    # 2. The dead-letter queue stays empty.
    assert queue_depth(stack, "RequestDeadLetterQueue") == 0
    # 3. Every valid neighbour stored exactly once.
    stored, lines = items(stack), stored_lines(stack)
    for rid in sent["valid"]:
        assert stored[rid]["status"] == "pending", rid
        assert lines.get(rid) == 1, (rid, lines.get(rid))
    # 4. Every completion is one SNS accepts, its reason short.
    for c in completions:
        assert all(sns_refuses(k, {"StringValue": v}) is None for k, v in c["_attributes"].items())
        assert c["status"] == "rejected"
        assert 0 < len(c["error"]["message"].encode()) <= 1024


def test_the_corpus_is_answered_on_first_receive_and_valid_neighbours_go_through(aws_stack, caplog, capsys):
    assert len(CASES) >= 120
    sent = run(aws_stack, CASES, "good")
    completions = aws_stack.drain(aws_stack.inbox)
    check_the_four_things(aws_stack, sent, completions)

    by_id = {c["request_id"]: c for c in completions}
    assert len(by_id) == len(completions), "a request was answered twice"
    stored, lines = items(aws_stack), stored_lines(aws_stack)
    expected_ids = set()
    for case, message_id in zip(CASES, sent["ids"], strict=True):
        rid = message_id if case.rid == SQS_ID else case.rid
        if case.expect == "stored":
            assert stored[rid]["status"] == "pending" and lines.get(rid) == 1, case.name
            continue
        if case.expect == "logged":
            continue
        expected_ids.add(rid)
        got = by_id.get(rid)
        assert got is not None, case.name
        assert case.reason.lower() in got["error"]["message"].lower(), (case.name, got["error"]["message"])
        assert stored[rid]["status"] == "rejected" and stored[rid]["notified"], case.name
    assert set(by_id) == expected_ids
    logged = sum(1 for c in CASES if c.expect == "logged")
    assert caplog.text.count(REJECTED_WITHOUT_ID) == logged
    assert metric_total(capsys.readouterr().out, "RejectedWithoutId") == logged
    # Nothing but the valid requests, the odd-but-valid ones and the rejections was stored.
    odd = {c.rid for c in CASES if c.expect == "stored"}
    assert set(stored) == set(sent["valid"]) | expected_ids | odd
    # No log line carries more than a short excerpt of what the caller sent.
    assert max(len(r.getMessage()) for r in caplog.records) < 4096


def test_reasons_quote_at_most_a_short_excerpt(aws_stack):
    long_cases = [c for c in CASES if "300k" in c.name and c.expect == "rejected"]
    assert len(long_cases) >= 5
    run(aws_stack, long_cases, "excerpt")
    completions = aws_stack.drain(aws_stack.inbox)
    assert {c["request_id"] for c in completions} == {c.rid for c in long_cases}
    for c in completions:
        reason = c["error"]["message"]
        assert len(reason.encode()) <= 1024 and "x" * 100 not in reason and "k" * 100 not in reason
        assert c.get("tier") in (None, "urgent"), "an invalid tier is never echoed"


def test_a_pointer_to_another_bucket_is_refused_without_calling_s3(aws_stack):
    calls: list[str] = []
    aws_stack.handler("BufferFunction")
    intake = aws_stack.modules["buffer_app"].intake
    intake.payloads.s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    boto3.client("s3").create_bucket(Bucket="someone-elses-bucket")
    boto3.client("s3").put_object(
        Bucket="someone-elses-bucket", Key="k.json", Body=json.dumps(ok("elsewhere-1")).encode()
    )
    for cls in (POINTER, LEGACY):
        body = [cls, {"s3BucketName": "someone-elses-bucket", "s3Key": "k.json"}]
        [message_id] = send(aws_stack, [json.dumps(body)])
        assert aws_stack.deliver() == {"delivered": 1, "failed": 0}
        [c] = aws_stack.drain(aws_stack.inbox)
        assert c["request_id"] == message_id and c["status"] == "rejected"
        assert "someone-elses-bucket" in c["error"]["message"] and "inbox" in c["error"]["message"]
    assert "GetObject" not in calls and "HeadObject" not in calls


def test_oversize_body_behind_a_pointer_is_rejected_without_being_read(aws_stack):
    bucket = inbox_bucket()
    boto3.client("s3").put_object(Bucket=bucket, Key="huge.json", Body=b" " * (32 * 1024 * 1024 + 1))
    [message_id] = send(aws_stack, [json.dumps([POINTER, {"s3BucketName": bucket, "s3Key": "huge.json"}])])
    assert aws_stack.deliver() == {"delivered": 1, "failed": 0}
    [c] = aws_stack.drain(aws_stack.inbox)
    assert c["request_id"] == message_id and "too large" in c["error"]["message"]


def test_the_same_id_with_other_params_keeps_the_first_and_reports_a_conflict(aws_stack, caplog, capsys):
    first = ok("conflict-1")
    same = ok("conflict-1")
    other = ok("conflict-1", max_tokens=99)
    reordered = {
        "request_id": "conflict-1",
        "tier": "urgent",
        "params": dict(reversed(first["params"].items())),
    }
    send(aws_stack, [json.dumps(first), json.dumps(same), json.dumps(reordered)])
    aws_stack.deliver()
    assert metric_total(capsys.readouterr().out, "IdempotencyConflict") == 0

    send(aws_stack, [json.dumps(other)])
    assert aws_stack.deliver() == {"delivered": 1, "failed": 0}
    item = items(aws_stack)["conflict-1"]
    assert stored_line(aws_stack.physical["PayloadBucket"], item)["params"]["max_tokens"] == 50
    assert len(json.dumps(item, default=str)) < 1024
    assert metric_total(capsys.readouterr().out, "IdempotencyConflict") == 1
    [record] = [r for r in caplog.records if "conflict" in r.getMessage()]
    digests = {record.__dict__.get("stored_digest"), record.__dict__.get("received_digest")}
    assert item["params_digest"] in digests and len(digests) == 2 and None not in digests
    # No second completion: nothing at all is published for a duplicate.
    assert aws_stack.drain(aws_stack.inbox) == []


def test_an_unexpected_failure_is_logged_with_its_type_and_message_id(aws_stack, monkeypatch, caplog):
    from batch_relay.store import Store

    real_add = Store.add

    def broken(self, item):
        if item.get("request_id") == "unlucky-1":
            raise KeyError("not a reason a caller could give")
        return real_add(self, item)

    monkeypatch.setattr(Store, "add", broken)
    secret = ok("unlucky-1", system="a prompt that must never be logged")
    ids = send(aws_stack, [json.dumps(ok("lucky-1")), json.dumps(secret)])
    aws_stack.deliver(rounds=1)
    [record] = [r for r in caplog.records if r.__dict__.get("sqs_message_id") == ids[1]]
    assert record.__dict__["error_type"] == "KeyError"
    assert "must never be logged" not in caplog.text
    assert items(aws_stack)["lucky-1"]["status"] == "pending"


# Generated messages: valid JSON of every shape, and adversarial JSON text.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
UNIQUE = itertools.count()
FIELDS = [
    "request_id",
    "tier",
    "metadata",
    "params",
    "params.model",
    "params.max_tokens",
    "params.messages",
    "params.stream",
    "params.system",
    "params.temperature",
    "extra",
]
# JSON text no json.dumps writes: what a careless or hostile producer sends.
hostile_scalars = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1" + "0" * 5000, "9" * 400]),
    st.integers(min_value=2**53, max_value=2**200).map(str),
    st.sampled_from(['"\\ud800"', '"\\udfff"', '"a\\ud83d"', '"\\ude00\\ud83d"']),
    st.text(st.characters(max_codepoint=0x1F), min_size=1, max_size=5).map(
        lambda s: '"' + "".join(f"\\u{ord(c):04x}" for c in s) + '"'
    ),
    st.text(st.characters(max_codepoint=0x1F, exclude_characters="\r\n"), min_size=1, max_size=3).map(
        lambda s: '"' + s + '"'  # raw control characters: not JSON
    ),
    st.integers(min_value=1, max_value=3).map(lambda n: '"' + "k" * (100_000 * n) + '"'),
)


@st.composite
def adversarial(draw: Any) -> str:
    depth = draw(st.sampled_from([0, 0, 5, 120, 300, 2000]))
    leaf = draw(hostile_scalars | json_values.map(json.dumps))
    value = "[" * depth + leaf + "]" * depth if draw(st.booleans()) else '{"a": ' * depth + leaf + "}" * depth
    key = draw(st.sampled_from(['"x"', '"' + "k" * 200_000 + '"', '"\\ud800"', '"\\u0000"', '"status\\n"']))
    where = draw(st.sampled_from(["params", "metadata", "top", "tier", "request_id", "body"]))
    n = next(UNIQUE)
    params = '"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]'
    if where == "params":
        return f'{{"request_id": "adv-{n}", "params": {{{params}, {key}: {value}}}}}'
    if where == "metadata":
        return f'{{"request_id": "adv-{n}", "params": {{{params}}}, "metadata": {{{key}: {value}}}}}'
    if where == "top":
        return f'{{"request_id": "adv-{n}", "params": {{{params}}}, {key}: {value}}}'
    if where in ("tier", "request_id"):
        return f'{{"request_id": "adv-{n}", "params": {{{params}}}, "{where}": {value}}}'
    return value


def mutate(path: str, value: Any, n: int) -> dict[str, Any]:
    body = ok(f"gen-{n}")
    if path == "extra":
        body["unexpected"] = value
    elif path.startswith("params."):
        body["params"][path.split(".", 1)[1]] = value
    else:
        body[path] = value
    return body


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    generated=st.one_of(
        json_values,
        st.tuples(st.sampled_from(FIELDS), json_values),
        st.text(max_size=40),
        adversarial(),
        adversarial().map(lambda text: ("via-s3", text)),
    ),
)
def test_generated_messages_are_answered_at_once_and_never_block_valid_ones(aws_stack, generated):
    from batch_relay.models import RequestMessage

    n = next(UNIQUE)  # examples share one stack: ids must not repeat across them
    via = "sqs"
    if isinstance(generated, tuple) and generated[0] == "via-s3":
        body: Any = generated[1]
        via = "s3"
    elif isinstance(generated, tuple):
        body = mutate(generated[0], generated[1], n)
    else:
        body = generated  # a str is sent raw: usually not JSON at all
    case = Case("generated", body, "", None, "", via)
    before, after = ok(f"v{n}-a"), ok(f"v{n}-b")
    [_, message_id, _] = send(aws_stack, [json.dumps(before), wire(case, n), json.dumps(after)])
    delivered = aws_stack.deliver()
    completions = aws_stack.drain(aws_stack.inbox)
    check_the_four_things(
        aws_stack,
        {"delivered": delivered, "sent": 3, "valid": [before["request_id"], after["request_id"]]},
        completions,
    )
    stored = items(aws_stack)
    for good in (before, after):
        line = stored_line(aws_stack.physical["PayloadBucket"], stored[good["request_id"]])
        assert line["params"] == good["params"]
    assert len(completions) <= 1
    if completions:
        assert completions[0]["request_id"] != before["request_id"]
        assert stored[completions[0]["request_id"]]["status"] == "rejected"
    elif isinstance(body, dict) and isinstance(body.get("request_id"), str):
        # Not rejected: it was valid and stored, or its id was unusable (logged).
        rid = body["request_id"]
        if rid in stored:
            RequestMessage.model_validate(body)
    del message_id
