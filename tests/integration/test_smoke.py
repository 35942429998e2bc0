"""`batch-relay smoke` against the local stack: the relay is driven in the foreground while the
command waits in a thread, as the deployed relay would run on its own schedule."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import boto3
import pytest
from relay_ops import cli as ops
from relay_ops import smoke

pytestmark = pytest.mark.integration


def _summary(out: str) -> dict[str, Any]:
    # Functions running in the background print their own log and metric lines.
    (line,) = [x for x in out.splitlines() if x.startswith('{"run"')]
    return json.loads(line)


def _left_over(stack: Any) -> tuple[list[str], list[str]]:
    """Queues and subscriptions beyond the stack's own."""
    queues = boto3.client("sqs").list_queues().get("QueueUrls", [])
    subscriptions = boto3.client("sns").list_subscriptions_by_topic(TopicArn=stack.arns["CompletionTopic"])
    return [q for q in queues if "smoke" in q], [s["Endpoint"] for s in subscriptions["Subscriptions"]]


def _outputs_stack(stack: Any) -> str:
    """A CloudFormation stack whose outputs name the local stack's queue and topic, for --stack."""
    template = {
        "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {
            "RequestQueueUrl": {"Value": stack.queue_url()},
            "CompletionTopicArn": {"Value": stack.arns["CompletionTopic"]},
        },
    }
    boto3.client("cloudformation").create_stack(
        StackName="relay-under-test", TemplateBody=json.dumps(template)
    )
    return "relay-under-test"


def test_smoke_sends_waits_reports_and_cleans_up(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a deployed relay (its outputs reached through --stack), running on its own
    name = _outputs_stack(stack)
    result: list[int] = []
    waiting = threading.Thread(
        target=lambda: result.append(ops.main(["--stack", name, "smoke", "--count", "4", "--timeout", "60"]))
    )
    # When the smoke command runs
    waiting.start()
    end = time.monotonic() + 60
    while waiting.is_alive() and time.monotonic() < end:
        stack.deliver()
        stack.tick()
        stack.settle()
        stack.advance(2)
        time.sleep(0.05)
    waiting.join(5)
    # Then its requests were answered, reported, and what it made is gone
    out = capsys.readouterr()
    assert result == [0], out.err
    summary = _summary(out.out)
    assert (summary["sent"], summary["answered"], summary["missing"]) == (4, 4, [])
    assert summary["statuses"] == {"succeeded": 4}
    assert summary["latency_seconds"]["p50"] is not None
    assert summary["cost_usd"]["batch_usd"] > 0 and summary["cost_usd"]["saved_usd"] > 0
    assert "answered 4/4" in out.err and "statuses: succeeded 4" in out.err
    assert _left_over(stack) == ([], [])


def test_smoke_removes_its_queue_when_interrupted(
    stack: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def interrupted(self: smoke.Smoke, wait: int) -> list[dict[str, Any]]:
        seen.append(self.inbox_url or "")
        raise KeyboardInterrupt

    monkeypatch.setattr(smoke.Smoke, "receive", interrupted)
    argv = ["--queue-url", stack.queue_url(), "--topic-arn", stack.arns["CompletionTopic"], "smoke"]
    assert ops.main(argv) == 130
    # It had subscribed and sent before the interrupt; both are undone.
    assert seen and "smoke" in seen[0]
    assert _left_over(stack) == ([], [])
    assert boto3.client("sqs").get_queue_attributes(
        QueueUrl=stack.queue_url(), AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"] == str(3)


def test_smoke_times_out_with_a_failure_and_cleans_up(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing runs the relay: no completion comes.
    argv = ["--queue-url", stack.queue_url(), "--topic-arn", stack.arns["CompletionTopic"]]
    assert ops.main([*argv, "smoke", "--count", "2", "--timeout", "1"]) == 1
    summary = _summary(capsys.readouterr().out)
    assert summary["answered"] == 0 and len(summary["missing"]) == 2
    assert _left_over(stack) == ([], [])


def test_smoke_needs_the_stack_or_its_resources(capsys: pytest.CaptureFixture[str]) -> None:
    assert ops.main(["smoke"]) == 2
    assert "give --stack or --queue-url" in capsys.readouterr().err
