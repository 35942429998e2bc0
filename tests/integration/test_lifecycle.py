"""State changes name the states they may leave: a late writer finds the record moved on and
leaves it as it is, instead of writing a state back over an ended batch."""

from __future__ import annotations

import json

import boto3
import pytest

from tests.helpers import STALE, assert_once, by_id, items, table

pytestmark = pytest.mark.integration


def record_of(stack, ref):
    table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"])
    return table.get_item(Key={"pk": f"batch#{ref}"})["Item"]


def test_a_late_execution_failing_on_a_collected_batch_leaves_it_collected(loaded, emulator):
    # Given a batch collected and answered
    stack, inbox, ids = loaded
    stack.pump()
    assert set(by_id(stack.drain(inbox))) == set(ids)
    [run] = stack.executions()
    sfn = boto3.client("stepfunctions")
    first = json.loads(sfn.describe_execution(executionArn=run["executionArn"])["input"])
    assert record_of(stack, first["ref"])["status"] == "collected"
    # When a late execution of it (a restart the record no longer needed) fails its check
    emulator.inject("GET", "/v1/messages/batches/msgbatch_", 401, count=10**6, route="retrieve")
    sfn.start_execution(
        stateMachineArn=stack.arns["PollerStateMachine"],
        name=f"{first['batch_id']}-late",
        input=json.dumps(first | {"wait_seconds": 0}),
    )
    stack.settle()
    # Then its failure is not written over the ended batch, and the execution ends quietly
    record = record_of(stack, first["ref"])
    assert record["status"] == "collected", "a late poller's failure moved an ended batch back to failed"
    assert "failure_error" not in record
    late = [e for e in stack.executions() if e["name"].endswith("-late")]
    assert [e["status"] for e in late] == ["SUCCEEDED"]


@pytest.mark.parametrize(
    "odd", [{"status": "canceling"}, {"status": "polling", "ttl": None}], ids=["newer-state", "no-ttl"]
)
def test_one_live_record_this_version_cannot_read_stops_no_other(loaded, emulator, monkeypatch, odd):
    """A live record with a state this version does not know (written by a newer one, then rolled
    back) or without a field it needs sits beside a record whose poller never started. Reading
    the work list stopped at the first: no run recovered the other, nor flushed a tier."""
    from batch_relay import executions

    stack, inbox, ids = loaded
    real, calls = executions.start, {"n": 0}

    def broken(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("crash before StartExecution")
        return real(*a, **k)

    monkeypatch.setattr(executions, "start", broken)
    with pytest.raises(RuntimeError):
        stack.tick()
    [healthy] = items(stack, "batch#").values()
    other = dict(healthy) | {"pk": "batch#odd", "ref": "odd", "batch_id": "msgbatch_odd"} | odd
    table(stack).put_item(Item={k: v for k, v in other.items() if v is not None})
    stack.advance(STALE)
    failures = []
    for _ in range(3):
        try:
            stack.tick()
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        stack.settle()
        stack.advance(120)
    status = items(stack, "batch#")[healthy["pk"]]["status"]
    assert status == "collected" and not failures, (status, failures)
    assert_once(stack, inbox, ids, emulator)
    # The unreadable record is left as it was, for an operator (or the version that wrote it).
    assert items(stack, "batch#")["batch#odd"]["status"] == odd["status"]
