"""The request and completion models, settings validation and pricing."""

from __future__ import annotations

import json

import pytest
from batch_relay.models import Completion, RequestMessage
from batch_relay.pricing import cost_of
from batch_relay.settings import Settings
from pydantic import ValidationError

from tests.helpers import request

ENV = {
    "TABLE_NAME": "relay-table",
    "BUCKET_NAME": "relay-bucket",
    "TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:relay",
}


def test_a_minimal_request_is_valid_and_params_pass_through():
    body = request("a-1")
    body["params"]["temperature"] = 0.2
    body["params"]["tools"] = [{"name": "lookup", "input_schema": {"type": "object"}}]
    msg = RequestMessage.model_validate(body)
    assert msg.params.payload()["temperature"] == 0.2
    assert msg.params.payload()["tools"][0]["name"] == "lookup"
    assert "stream" not in msg.params.payload()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b["params"].update(stream=True), "stream"),
        (lambda b: b["params"].update(max_tokens=0), "max_tokens"),
        (lambda b: b["params"].pop("messages"), "messages"),
        (lambda b: b["params"].update(messages=[]), "messages"),
        (lambda b: b["params"].update(messages=[{"role": "robot", "content": "x"}]), "role"),
        (lambda b: b.update(request_id="has space"), "request_id"),
        (lambda b: b.update(request_id="x" * 65), "request_id"),
        (lambda b: b.update(metadata={"status": "x"}), "reserved"),
        (lambda b: b.update(metadata={"AWS.x": "y"}), "reserved"),
        (lambda b: b.update(metadata={f"k{i}": "v" for i in range(7)}), "at most"),
        # A producer's identity comes from SQS, never from what it writes.
        (lambda b: b.update(metadata={"producer": "someone-else"}), "reserved"),
        (lambda b: b.update(metadata={"n": 1}), "metadata"),
        (lambda b: b.update(unexpected=True), "unexpected"),
    ],
)
def test_invalid_requests_name_the_problem(change, field):
    body = request("r-1")
    change(body)
    with pytest.raises(ValidationError) as err:
        RequestMessage.model_validate(body)
    assert field in str(err.value)


def test_shipped_schemas_match_the_models():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "schemas"
    assert json.loads((root / "request.schema.json").read_text()) == RequestMessage.model_json_schema()
    assert json.loads((root / "completion.schema.json").read_text()) == Completion.model_json_schema()


def test_settings_fail_loudly_on_a_bad_deployment():
    assert Settings.from_env(ENV).default_tier == "standard"
    with pytest.raises(ValidationError, match="TABLE_NAME"):
        Settings.from_env({k: v for k, v in ENV.items() if k != "TABLE_NAME"})
    with pytest.raises(ValidationError, match="DEFAULT_TIER"):
        Settings.from_env(ENV | {"DEFAULT_TIER": "gold"})
    with pytest.raises(ValidationError):
        Settings.from_env(ENV | {"MAX_BATCH_REQUESTS": "100001"})
    with pytest.raises(ValidationError):
        Settings.from_env(
            ENV | {"TIER_POLICY": '{"urgent": {"max_wait_seconds": 0}}', "DEFAULT_TIER": "urgent"}
        )
    tiers = Settings.from_env(
        ENV | {"TIER_POLICY": '{"only": {"max_wait_seconds": 60}}', "DEFAULT_TIER": "only"}
    )
    assert tiers.tiers["only"].min_requests == 1
    # "live" is the work list's partition of live batch records: a tier of that name would mix
    # its pending requests into it.
    with pytest.raises(ValidationError, match="reserved"):
        Settings.from_env(ENV | {"TIER_POLICY": '{"live": {"max_wait_seconds": 60}}', "DEFAULT_TIER": "live"})


def test_cost_is_half_of_list_price_with_cache_tokens_priced():
    usage = {
        "input_tokens": 1000,
        "output_tokens": 500,
        "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 10_000,
    }
    cost = cost_of("claude-sonnet-4-5-20250929", usage)
    assert cost is not None
    expected_list = (1000 * 3 + 2000 * 3 * 1.25 + 10_000 * 3 * 0.1 + 500 * 15) / 1e6
    assert cost.list_usd == pytest.approx(expected_list)
    assert cost.batch_usd == pytest.approx(expected_list / 2)
    assert cost.saved_usd == pytest.approx(expected_list / 2)
    assert cost_of("claude-opus-4-1", {"input_tokens": 1_000_000, "output_tokens": 0}).list_usd == 15.0
    assert cost_of("claude-opus-4-5", {"input_tokens": 1_000_000, "output_tokens": 0}).list_usd == 5.0
    assert cost_of("some-other-model", usage) is None


def test_a_completion_that_did_not_succeed_must_say_why():
    with pytest.raises(ValidationError, match="error"):
        Completion(request_id="x", status="errored", completed_at="2026-01-01T00:00:00.000Z")
