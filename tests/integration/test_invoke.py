"""`make invoke` with each sample event: the poller steps' events name a batch, which the local
stack seeds (its requests in the table, the batch at the emulated API) before the call."""

from __future__ import annotations

import json
from typing import Any

import pytest
from relay_local import cli

from tests.conftest import EVENTS, load_event


def documents(out: str) -> list[Any]:
    """The JSON documents `invoke` printed: the function's return value, then each completion."""
    decoder, found, at = json.JSONDecoder(), [], out.index("{\n")
    while at < len(out):
        doc, at = decoder.raw_decode(out, at)
        found.append(doc)
        while at < len(out) and out[at].isspace():
            at += 1
    return found


@pytest.mark.parametrize(
    ("function", "event", "expected", "published"),
    [
        ("CheckBatchFunction", "check.json", {"ended": True, "processing_status": "ended", "cursor": 0}, 0),
        ("CollectResultsFunction", "collect.json", {"done": True, "cursor": 3}, 3),
    ],
)
def test_invoke_runs_the_poller_steps_on_their_sample_events(
    function: str,
    event: str,
    expected: dict[str, Any],
    published: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    status = cli.main(["invoke", function, str(EVENTS / event)])
    printed = capsys.readouterr()
    assert status == 0, printed.out
    result, *completions = documents(printed.out)
    sample = load_event(event)
    assert (result["batch_id"], result["ref"]) == (sample["batch_id"], sample["ref"])
    assert expected.items() <= result.items()
    # And the completions the step published are shown, as a subscriber would get them
    assert f"published on the completion topic: {published}" in printed.err
    assert len(completions) == published
    assert {(c["status"], c["batch_id"]) for c in completions} <= {("succeeded", sample["batch_id"])}


def test_a_seeded_batch_is_collected_like_a_submitted_one(stack, emulator) -> None:
    # Given the batch the collect event names, seeded in the table and at the API
    event = load_event("collect.json")
    queue = stack.subscribe()
    ids = stack.seed_batch(event["batch_id"], event["ref"], emulator, count=4)
    # When collect runs on the event
    result = stack.invoke("CollectResultsFunction", event)
    # Then each seeded request is answered once, from that batch
    assert result["done"] is True and result["cursor"] == 4
    completions = stack.drain(queue)
    assert sorted(c["request_id"] for c in completions) == sorted(ids)
    assert {(c["status"], c["batch_id"]) for c in completions} == {("succeeded", event["batch_id"])}


def test_invoke_answers_the_realtime_sample_event(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    status = cli.main(["invoke", "RealtimeFunction", str(EVENTS / "realtime.json")])
    out = capsys.readouterr().out
    assert status == 0, out
    result, *completions = documents(out)
    assert result == {"batchItemFailures": []}
    # Its one completion went to the topic (shown here as a subscriber gets it), never to the log
    [completion] = completions
    assert (completion["route"], completion["status"]) == ("realtime", "succeeded")
    assert '"route":"realtime"' not in out


def test_a_seeded_realtime_request_is_answered_once_at_list_price(stack, emulator) -> None:
    event = load_event("realtime.json")
    body = json.loads(event["Records"][0]["body"])
    queue = stack.subscribe()
    stack.seed_realtime(body["request_id"], body["ref"])
    # Delivered twice, as SQS may: one call to the Messages API, one completion
    assert stack.invoke("RealtimeFunction", event) == {"batchItemFailures": []}
    assert stack.invoke("RealtimeFunction", event) == {"batchItemFailures": []}
    [completion] = stack.drain(queue)
    assert completion["request_id"] == body["request_id"]
    assert (completion["status"], completion["route"], completion["batch_id"]) == (
        "succeeded",
        "realtime",
        None,
    )
    assert completion["cost"]["saved_usd"] == 0
    assert len(emulator.messages_created) == 1
