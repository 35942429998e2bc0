"""Bad input never blocks good input: a corpus of malformed messages and generated ones, mixed with
valid messages in the same SQS batches, through the real buffer handler on moto."""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import stored_line
from tests.malformed import CASES, SQS_ID, ok

pytestmark = pytest.mark.integration

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
    "extra",
]


@pytest.fixture
def aws_stack():
    from relay_local.stack import LocalStack

    from tests.conftest import TEST_PARAMETERS

    with LocalStack(parameters=dict(TEST_PARAMETERS)) as s:
        s.inbox = s.subscribe()
        yield s


def record(body: Any) -> dict[str, Any]:
    return {
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "h",
        "body": body if isinstance(body, str) else json.dumps(body),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:requests",
        "awsRegion": "us-east-1",
    }


def items(stack) -> dict[str, dict[str, Any]]:
    table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"])
    return {i["request_id"]: i for i in table.scan()["Items"]}


def test_the_corpus_is_rejected_case_by_case_and_valid_neighbours_go_through(aws_stack, caplog):
    assert len(CASES) >= 40
    records, valid = [], []
    for n, case in enumerate(CASES):
        good = ok(f"good-{n}")
        valid.append(good["request_id"])
        records += [record(good), record(case.body)]
    answers = [
        aws_stack.invoke("BufferFunction", {"Records": records[i : i + 10]})
        for i in range(0, len(records), 10)
    ]
    assert all(a == {"batchItemFailures": []} for a in answers)

    stored = items(aws_stack)
    assert {rid for rid in valid if stored[rid]["status"] == "pending"} == set(valid)
    completions = {c["request_id"]: c for c in aws_stack.drain(aws_stack.inbox)}
    expected_ids = set()
    for n, case in enumerate(CASES):
        if case.expect == "logged":
            continue
        rid = records[2 * n + 1]["messageId"] if case.rid == SQS_ID else case.rid
        expected_ids.add(rid)
        got = completions.get(rid)
        assert got is not None, case.name
        assert got["status"] == "rejected", case.name
        assert case.reason.lower() in got["error"]["message"].lower(), (case.name, got["error"]["message"])
        assert stored[rid]["status"] == "rejected"
    assert set(completions) == expected_ids
    logged = sum(1 for c in CASES if c.expect == "logged")
    assert caplog.text.count("request rejected without a usable id") == logged
    # Nothing but the valid requests and the rejections was stored.
    assert set(stored) == set(valid) | expected_ids


def test_oversize_body_behind_a_pointer_is_rejected_without_being_read(aws_stack):
    bucket = aws_stack.physical["InboxBucket"]
    boto3.client("s3").put_object(Bucket=bucket, Key="huge.json", Body=b" " * (32 * 1024 * 1024 + 1))
    pointer = [
        "software.amazon.payloadoffloading.PayloadS3Pointer",
        {"s3BucketName": bucket, "s3Key": "huge.json"},
    ]
    rec = record(pointer)
    assert aws_stack.invoke("BufferFunction", {"Records": [rec]}) == {"batchItemFailures": []}
    [c] = aws_stack.drain(aws_stack.inbox)
    assert c["request_id"] == rec["messageId"] and "too large" in c["error"]["message"]


def mutate(path: str, value: Any, n: int) -> dict[str, Any]:
    body = ok(f"gen-{n}")
    if path == "extra":
        body["unexpected"] = value
    elif path.startswith("params."):
        body["params"][path.split(".", 1)[1]] = value
    else:
        body[path] = value
    return body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    generated=st.one_of(
        json_values,
        st.tuples(st.sampled_from(FIELDS), json_values),
        st.text(max_size=40),
    ),
)
def test_generated_messages_never_crash_the_batch_or_block_valid_ones(aws_stack, generated):
    from batch_relay.models import RequestMessage

    n = next(UNIQUE)  # examples share one stack: ids must not repeat across them
    if isinstance(generated, tuple):
        body: Any = mutate(generated[0], generated[1], n)
    elif isinstance(generated, str):
        body = generated  # sent raw: usually not JSON at all
    else:
        body = generated
    before, after = ok(f"v{n}-a"), ok(f"v{n}-b")
    recs = [record(before), record(body), record(after)]
    answer = aws_stack.invoke("BufferFunction", {"Records": recs})
    assert answer == {"batchItemFailures": []}

    stored = items(aws_stack)
    for good in (before, after):
        item = stored[good["request_id"]]
        line = stored_line(aws_stack.physical["PayloadBucket"], item)
        assert item["status"] == "pending" and line["params"] == good["params"]
    completions = aws_stack.drain(aws_stack.inbox)
    assert all(c["status"] == "rejected" and c["error"]["message"] for c in completions)
    assert len(completions) <= 1
    if completions:
        assert stored[completions[0]["request_id"]]["status"] == "rejected"
    elif isinstance(body, dict) and isinstance(body.get("request_id"), str):
        # Not rejected: it was valid and stored, or its id was unusable (logged).
        rid = body["request_id"]
        if rid in stored:
            RequestMessage.model_validate(body)
