"""State changes name the states they may leave: a late writer finds the record moved on and
leaves it as it is, instead of writing a state back over an ended batch."""

from __future__ import annotations

import json

import boto3
import pytest

from tests.helpers import by_id

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
