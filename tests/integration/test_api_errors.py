"""What a user sees when the API answers with the errors of its current version: account and
workspace codes (`error.details.error_code`) and spend caps hold the tier and answer nothing,
request-level refusals answer the request, transient result lines are tried again. Every test
drives the real SDK against the emulator, which sends these errors as the API does."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from tests.helpers import at, by_id, request

pytestmark = pytest.mark.integration

CREATE = ("POST", "/v1/messages/batches")


def held(stack: Any, tier: str = "urgent") -> bool:
    """Whether the tier carries a hold (the item the submitter reads before it flushes)."""
    table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"])
    return "Item" in table.get_item(Key={"pk": f"hold#{tier}"})


def metric(capsys: Any, name: str) -> int:
    """How often the functions' EMF output named a metric so far."""
    return sum(
        f'"{name}"' in line for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')
    )


@pytest.mark.parametrize(
    "code", ["organization_on_hold", "cmek_key_disabled", "workspace_human_review_disabled"]
)
def test_an_account_code_at_create_holds_the_tier_and_answers_nothing(loaded, emulator, capsys, code):
    stack, inbox, ids = loaded
    # Given: the API refuses creates with a 400 whose code names the organization or workspace
    emulator.inject(*CREATE, 400, count=40, message="refused", error_code=code)
    # When: the submitter runs
    stack.tick()
    # Then: no batch was split down to its requests, none is answered, the tier is held
    assert emulator.calls[("POST", "create")] == 1, "the batch was split as if a request were at fault"
    assert stack.drain(inbox) == [], "an account problem was answered as the requests' fault"
    assert stack.open_work()["pending"] == len(ids)
    assert held(stack) and metric(capsys, "AccountHolds") >= 1
    # and once the account works again, every request is answered, no attempt spent
    emulator.clear_faults()
    answered_once_the_hold_lifts(stack, inbox, ids)


@pytest.mark.parametrize("code", ["enforced_spend_limit_reached", "contract_spend_limit_reached"])
def test_a_spend_cap_at_create_holds_the_tier_rather_than_retrying_it_as_a_rate_limit(
    loaded, emulator, capsys, code
):
    stack, inbox, ids = loaded
    emulator.inject(*CREATE, 429, count=40, message="cap", error_code=code, should_retry=False)
    stack.tick()
    assert emulator.calls[("POST", "create")] == 1, "a spend cap was retried like a rate limit"
    assert held(stack) and metric(capsys, "AccountHolds") >= 1
    stack.advance(60)
    stack.tick()
    assert emulator.calls[("POST", "create")] == 1, "a held tier was flushed before its pause ended"
    assert stack.drain(inbox) == []
    emulator.clear_faults()
    stack.advance(600)
    stack.pump()
    got = by_id(stack.drain(inbox))
    assert {c[0]["status"] for c in got.values()} == {"succeeded"} and sorted(got) == sorted(ids)


def test_errored_lines_with_an_account_code_hold_the_tier_and_are_answered_after_it_lifts(
    loaded, emulator, capsys
):
    stack, inbox, ids = loaded
    # Given: the organization is on hold; batches are accepted, every line errors with the code
    emulator.account_error = "organization_on_hold"
    stack.tick()
    stack.settle()
    # Then: no request is answered errored for good; they wait in their tier, which is held
    assert stack.drain(inbox) == [], "an account code in the results was answered as the request's fault"
    assert stack.open_work()["pending"] == len(ids)
    assert held(stack) and metric(capsys, "AccountHolds") >= 1
    # When the hold lifts, they are answered, the held try not counted as an attempt
    emulator.account_error = None
    answered_once_the_hold_lifts(stack, inbox, ids)


@pytest.mark.parametrize("kind", ["rate_limit_error", "timeout_error"])
def test_a_transient_result_error_is_tried_again_up_to_the_max_attempts(stack, emulator, kind):
    inbox = stack.subscribe()
    stack.send([request("t1", text=f"Summarise [[emulate:errored:{kind}]]")])
    stack.pump()
    [c] = by_id(stack.drain(inbox))["t1"]
    assert (c["status"], c["error"]["type"]) == ("errored", kind)
    assert c["attempts"] == 3, "a transient result error was answered on its first attempt"
    assert len(emulator.batch_ids()) == 3


def test_an_account_code_on_a_result_line_from_a_directive_holds_the_request(stack, emulator):
    inbox = stack.subscribe()
    text = "Summarise [[emulate:errored:invalid_request_error:cmek_key_disabled]]"
    stack.send([request("k1", text=text)])
    stack.deliver()
    stack.tick()
    stack.settle()
    assert stack.drain(inbox) == []
    assert held(stack) and stack.open_work()["pending"] == 1


def test_a_request_level_403_at_create_answers_the_request_without_alarming_about_the_key(
    stack, emulator, capsys
):
    inbox = stack.subscribe()
    stack.send([request("p1")])
    stack.deliver()
    emulator.inject(*CREATE, 403, count=5, message="not billable", error_code="user_profile_not_billable")
    stack.tick()
    stack.settle()
    [c] = by_id(stack.drain(inbox))["p1"]
    assert c["status"] == "errored" and "user_profile_not_billable" in c["error"]["message"]
    assert metric(capsys, "ApiAuthFailures") == 0, "a request's refusal was reported as a refused key"
    assert not held(stack)


def test_a_spend_cap_on_the_realtime_path_holds_instead_of_erroring(stack, emulator, capsys):
    inbox = stack.subscribe()
    # Given: a request whose deadline only realtime can meet, and a spend cap on realtime calls
    emulator.inject(
        "POST",
        "/v1/messages",
        429,
        count=100,
        route="message",
        message="cap",
        error_code="enforced_spend_limit_reached",
        should_retry=False,
    )
    stack.send([request("rt-cap", deadline=at(100))])
    stack.deliver()
    stack.tick()
    stack.deliver_realtime()
    # Then: tried once, not answered, back in its tier, which is held
    assert emulator.calls[("POST", "message")] == 1, "a spend cap was retried like a rate limit"
    assert stack.drain(inbox) == [], "a spend cap was answered as the request's fault"
    assert held(stack) and metric(capsys, "AccountHolds") >= 1
    assert stack.open_work()["pending"] == 1
    # and once the cap lifts it is answered
    emulator.clear_faults()
    stack.advance(600)
    stack.pump()
    [c] = by_id(stack.drain(inbox))["rt-cap"]
    assert c["status"] == "succeeded"


def test_a_request_level_403_on_the_realtime_path_is_answered_errored(stack, emulator):
    inbox = stack.subscribe()
    emulator.inject(
        "POST", "/v1/messages", 403, count=5, route="message", error_code="user_profile_not_billable"
    )
    stack.send([request("rt-403", deadline=at(100))])
    stack.deliver()
    stack.tick()
    stack.deliver_realtime()
    [c] = by_id(stack.drain(inbox))["rt-403"]
    assert (c["status"], c["error"]["type"]) == ("errored", "permission_error")


def answered_once_the_hold_lifts(stack, inbox, ids):
    """Past the hold, every request succeeds, the held try not counted as an attempt."""
    stack.advance(600)
    stack.pump()
    got = by_id(stack.drain(inbox))
    assert sorted(got) == sorted(ids)
    assert {c[0]["status"] for c in got.values()} == {"succeeded"}
    assert {c[0]["attempts"] for c in got.values()} == {1}
