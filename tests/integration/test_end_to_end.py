"""The whole path on moto and the emulator: queue → buffer → table → submitter → batches →
poller state machine → topic, checked from a queue subscribed to the topic."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest
from moto.sqs.models import DEFAULT_SENDER_ID
from relay_local.stack import sqs_record

from tests.helpers import by_id, request

pytestmark = pytest.mark.integration


def test_every_request_gets_exactly_one_completion(stack, emulator):
    # Given: valid requests across tiers, duplicates, forced per-request outcomes and invalid messages
    inbox = stack.subscribe()
    valid = [request(f"ticket-{i}", tier=("urgent", "standard", "bulk")[i % 3]) for i in range(40)]
    duplicates = [request("ticket-1"), request("ticket-2", text="a different body, same id")]
    forced = [
        request("overloaded-1", text="x [[emulate:errored:overloaded_error]]"),
        request("invalid-1", text="x [[emulate:errored:invalid_request_error]]"),
        request("expired-1", text="x [[emulate:expired]]"),
    ]
    invalid = [
        request("streaming-1", stream=True),
        {**request("bad-tier-1"), "tier": "nope"},
        {"request_id": "no-params-1"},
        "{not json",
        json.dumps(request("bad id with spaces")),
    ]
    invalid[0]["params"]["stream"] = True
    del invalid[0]["stream"]
    stack.send(valid + duplicates + forced + invalid)

    # When: the pipeline runs until nothing is pending or in flight
    stack.pump()

    # Then: one completion per request id, no more
    got = stack.drain(inbox)
    per_id = by_id(got)
    assert all(len(v) == 1 for v in per_id.values()), {k: len(v) for k, v in per_id.items() if len(v) > 1}
    expected = {f"ticket-{i}" for i in range(40)} | {"overloaded-1", "invalid-1", "expired-1"}
    expected |= {"streaming-1", "bad-tier-1", "no-params-1"}
    assert set(per_id) == expected

    status = {rid: v[0]["status"] for rid, v in per_id.items()}
    assert {status[f"ticket-{i}"] for i in range(40)} == {"succeeded"}
    assert status["overloaded-1"] == "errored" and per_id["overloaded-1"][0]["attempts"] == 3
    assert status["expired-1"] == "expired" and per_id["expired-1"][0]["attempts"] == 3
    assert status["invalid-1"] == "errored" and per_id["invalid-1"][0]["attempts"] == 1
    assert per_id["invalid-1"][0]["error"]["type"] == "invalid_request_error"
    for rid in ("streaming-1", "bad-tier-1", "no-params-1"):
        assert status[rid] == "rejected"
        assert per_id[rid][0]["error"]["message"]
    assert "stream" in per_id["streaming-1"][0]["error"]["message"]
    assert "nope" in per_id["bad-tier-1"][0]["error"]["message"]


def test_completion_content_cost_and_attributes(stack, emulator):
    inbox = stack.subscribe()
    stack.send([request("enrich-7", model="claude-sonnet-4-5", metadata={"team": "crm", "record": "7"})])
    stack.pump()

    [done] = stack.drain(inbox)
    assert done["status"] == "succeeded"
    assert done["message"]["type"] == "message" and done["message"]["content"][0]["text"]
    usage = done["usage"]
    list_usd = usage["input_tokens"] * 3e-6 + usage["output_tokens"] * 15e-6
    assert done["cost"]["list_usd"] == pytest.approx(list_usd, rel=1e-6)
    assert done["cost"]["batch_usd"] == pytest.approx(list_usd / 2, rel=1e-6)
    assert done["cost"]["saved_usd"] == pytest.approx(list_usd / 2, rel=1e-6)
    assert done["batch_id"].startswith("msgbatch_")
    assert done["metadata"] == {"team": "crm", "record": "7"}
    assert done["received_at"] <= done["submitted_at"] <= done["completed_at"]
    assert done["_attributes"] == {
        "status": "succeeded",
        "tier": "urgent",
        "model": "claude-sonnet-4-5",
        "producer": DEFAULT_SENDER_ID,  # the SenderId moto gives every message
        "team": "crm",
        "record": "7",
    }
    # The producer is an attribute only: the body is the completion's contract, unchanged.
    assert "producer" not in done


def test_filter_policy_on_metadata_reaches_only_matching_subscribers(stack, emulator):
    crm = stack.subscribe({"team": ["crm"]})
    failures = stack.subscribe({"status": [{"anything-but": ["succeeded"]}]})
    stack.send(
        [
            request("a", metadata={"team": "crm"}),
            request("b", metadata={"team": "ops"}),
            request("c", text="x [[emulate:errored:invalid_request_error]]", metadata={"team": "ops"}),
        ]
    )
    stack.pump()
    assert [c["request_id"] for c in stack.drain(crm)] == ["a"]
    assert [c["request_id"] for c in stack.drain(failures)] == ["c"]


def test_a_subscriber_filters_on_the_producer_that_sent_the_request(stack, emulator):
    """Each completion carries its request's SQS SenderId as the `producer` attribute, rejections
    too, so one producer's subscriber can take only that producer's completions."""
    alpha, beta = "AROAALPHAPRODUCER000:ingest", "AIDABETAPRODUCER0000"
    alphas = stack.subscribe({"producer": [alpha]})
    every = stack.subscribe()

    def message(sender: str, body: dict | str) -> dict:
        text = body if isinstance(body, str) else json.dumps(body)
        return {
            "MessageId": str(uuid.uuid4()),
            "ReceiptHandle": "-",
            "Body": text,
            "Attributes": {"SenderId": sender},
        }

    # Given: requests from two producers, one of them invalid, delivered as Lambda delivers them
    records = [
        message(alpha, request("from-alpha")),
        message(beta, request("from-beta")),
        message(alpha, {"request_id": "alpha-bad", "params": {"model": "x"}}),
    ]
    answer = stack.invoke(
        "BufferFunction", {"Records": [sqs_record(m, stack.arns["RequestQueue"]) for m in records]}
    )
    assert answer["batchItemFailures"] == []
    stack.pump()
    # Then: the filtered subscriber gets alpha's only, the other all three, each naming its producer
    assert sorted(c["request_id"] for c in stack.drain(alphas)) == ["alpha-bad", "from-alpha"]
    got = {c["request_id"]: c for c in stack.drain(every)}
    assert {rid: c["_attributes"]["producer"] for rid, c in got.items()} == {
        "from-alpha": alpha,
        "from-beta": beta,
        "alpha-bad": alpha,
    }
    assert got["alpha-bad"]["status"] == "rejected"
    assert not any("producer" in c for c in got.values())


def test_batches_respect_the_request_limit_and_items_record_them(stack, emulator):
    # MaxBatchRequests is 25 in the test deployment: 60 urgent requests need three batches
    stack.send([request(f"r{i}") for i in range(60)])
    stack.pump()
    sizes = sorted(len(emulator.custom_ids(b)) for b in emulator.batch_ids())
    assert sizes == [10, 25, 25]
    table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"])
    item = table.get_item(Key={"pk": "req#r0"})["Item"]
    assert item["status"] == "succeeded" and item["batch_id"] in emulator.batch_ids()
    assert "pending_tier" not in item
    runs = stack.executions()
    assert len(runs) == 3 and {r["status"] for r in runs} == {"SUCCEEDED"}
    assert {r["name"] for r in runs} == set(emulator.batch_ids())


def test_a_late_duplicate_after_completion_is_not_answered_again(stack, emulator):
    inbox = stack.subscribe()
    stack.send([request("late-1")])
    stack.pump()
    assert [c["status"] for c in stack.drain(inbox)] == ["succeeded"]
    stack.send([request("late-1", text="resent a day later")])
    stack.pump()
    assert stack.drain(inbox) == []
    assert len(emulator.batch_ids()) == 1


def test_completion_too_large_for_sns_travels_as_an_s3_pointer(stack, emulator):
    inbox = stack.subscribe()
    body = request("long-1", text="write at length [[emulate:long]]")
    body["params"]["max_tokens"] = 60_000
    stack.send([body])
    stack.pump()
    [done] = stack.drain(inbox)
    pointer = done["message"]
    assert pointer["type"] == "s3_pointer" and pointer["bucket"] == stack.physical["PayloadBucket"]
    message = json.loads(
        boto3.client("s3").get_object(Bucket=pointer["bucket"], Key=pointer["key"])["Body"].read()
    )
    assert message["type"] == "message" and len(message["content"][0]["text"]) > 256 * 1024
    assert done["usage"]["output_tokens"] == message["usage"]["output_tokens"]


def test_state_machine_payloads_carry_ids_not_results(make_stack, emulator):
    stack = make_stack(MaxBatchRequests="500")
    stack.send([request(f"s{i}") for i in range(150)])
    stack.pump()
    sfn = boto3.client("stepfunctions")
    for run in stack.executions():
        described = sfn.describe_execution(executionArn=run["executionArn"])
        assert len(described["input"]) < 512 and len(described.get("output", "")) < 512


def test_prompts_and_completions_never_reach_the_logs(stack, emulator, capsys):
    import io
    import logging

    from batch_relay.observability import logger

    # Every record as the functions write it (JSON with its extra keys), whatever stream it goes to.
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    inbox = stack.subscribe()
    secret = "Patient Jane Roe, DOB 1970-01-01, reports chest pain"
    stack.send(
        [
            request("private-1", text=secret),
            {**request("private-2", text=secret), "params": {**request("x")["params"], "stream": True}},
            request("private-3", text=f"{secret} [[emulate:errored:overloaded_error]]"),
        ]
    )
    try:
        stack.pump()
    finally:
        logger.removeHandler(handler)
    answers = [c["message"]["content"][0]["text"] for c in stack.drain(inbox) if c["status"] == "succeeded"]
    logs = captured.getvalue() + capsys.readouterr().out
    assert "private-2" in logs  # the logs do speak of requests, by id
    assert secret not in logs and "Jane Roe" not in logs
    assert answers and all(a not in logs for a in answers)
