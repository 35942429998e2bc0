"""Deadlines and budgets, end to end on moto and the emulator: batch price whenever a batch can make
a request's deadline, realtime before it is missed, exactly one completion either way, and a daily
spend cap that holds tiers and refuses realtime fallbacks past it."""

from __future__ import annotations

import json
import time

import boto3
import pytest

from tests.helpers import by_id, emitted, request

pytestmark = pytest.mark.integration


def at(seconds: float) -> str:
    """An RFC 3339 deadline this many seconds from now on the relay's clock."""
    from batch_relay import clock

    return clock.iso(clock.now() + seconds).replace("Z", "+00:00")


def items(stack, prefix="req#"):
    table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"])
    return {i["pk"]: i for i in table.scan()["Items"] if i["pk"].startswith(prefix)}


def once(stack, inbox, ids):
    per_id = by_id(stack.drain(inbox))
    assert set(per_id) == set(ids)
    assert {k: len(v) for k, v in per_id.items() if len(v) != 1} == {}, "a request was answered twice"
    return {k: v[0] for k, v in per_id.items()}


def learn(stack, emulator, batches=3):
    """Let the relay time a few of its own batches (the emulator's take 0.2 s)."""
    for n in range(batches):
        stack.send([request(f"warm-{n}")])
        stack.pump()


def wait_for(check, seconds=30.0):
    end = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_a_request_no_batch_can_answer_in_time_goes_realtime(stack, emulator):
    inbox = stack.subscribe()
    # Given one request due in 30 minutes (the default turnaround is 2 hours) and one due in 2 days
    stack.send([request("soon", deadline=at(1800)), request("later", deadline=at(2 * 86400))])
    stack.pump()
    got = once(stack, inbox, ["soon", "later"])
    # Then the first was answered by the Messages API at list price, the second by a batch
    soon, later = got["soon"], got["later"]
    assert soon["route"] == "realtime" and soon["batch_id"] is None
    assert soon["cost"]["saved_usd"] == 0 and soon["cost"]["batch_usd"] == soon["cost"]["list_usd"] > 0
    assert soon["deadline"] and soon["completed_at"] <= soon["deadline"]
    assert later["route"] == "batch" and later["batch_id"] and later["cost"]["saved_usd"] > 0
    assert [m.model for m in emulator.messages_created] == ["claude-haiku-4-5"]
    batched = {cid for b in emulator.batch_ids() for cid in emulator.custom_ids(b)}
    assert batched == {"later"}


def test_a_tier_default_deadline_applies_to_requests_that_name_none(make_stack, emulator):
    policy = {"urgent": {"max_wait_seconds": 1, "min_requests": 1, "deadline_seconds": 900}}
    stack = make_stack(TierPolicy=json.dumps(policy), DefaultTier="urgent")
    inbox = stack.subscribe()
    stack.send([request("t1")])
    stack.pump()
    got = once(stack, inbox, ["t1"])["t1"]
    assert got["route"] == "realtime"
    assert got["deadline"] and abs(_ts(got["deadline"]) - _ts(got["received_at"]) - 900) < 1


def test_learned_turnaround_keeps_the_discount_and_shows_what_it_learned(stack, emulator):
    inbox = stack.subscribe()
    learn(stack, emulator)
    stack.drain(inbox)
    # A deadline in 40 minutes: too soon for the 2-hour default, ample for batches that take 0.2 s
    stack.send([request("d40", deadline=at(2400))])
    stack.pump()
    assert once(stack, inbox, ["d40"])["d40"]["route"] == "batch"
    from batch_relay.deadlines import Turnaround
    from batch_relay.settings import settings
    from batch_relay.store import Store

    learned = Turnaround(Store(settings().table_name), settings())
    assert len(learned.samples("claude-haiku-4-5")) == 4
    assert learned.expected("claude-haiku-4-5") < 60
    assert learned.expected("claude-never-seen") == settings().default_turnaround_seconds


def test_a_deadline_flushes_its_tier_before_its_max_wait(stack, emulator):
    from batch_relay.deadlines import FLUSH_LEAD_SECONDS, batch_seconds
    from batch_relay.settings import settings

    inbox = stack.subscribe()
    # The standard tier waits an hour or for 5 requests; this one request is due in 3 hours
    stack.send([request("s1", tier="standard", deadline=at(3 * 3600))])
    stack.deliver()
    stack.tick()
    assert emulator.batch_ids() == [], "flushed before its tier or its deadline asked"
    flush_in = (
        3 * 3600 - batch_seconds(settings().default_turnaround_seconds, settings()) - FLUSH_LEAD_SECONDS
    )
    assert 0 < flush_in < 3600
    stack.advance(flush_in + 30)
    stack.tick()
    assert len(emulator.batch_ids()) == 1, "a deadline did not flush its tier in time"
    stack.settle()
    got = once(stack, inbox, ["s1"])["s1"]
    assert got["route"] == "batch" and got["completed_at"] <= got["deadline"]


def rescue_stack(make_stack):
    # Batches assumed to take a minute and a realtime margin of a minute: a 30-minute deadline
    # goes into a batch, which the test then makes late.
    return make_stack(DefaultTurnaroundSeconds="60", DeadlineMarginSeconds="60")


def test_a_late_batch_gives_up_its_deadline_requests_to_realtime_exactly_once(make_stack, emulator, capsys):
    stack = rescue_stack(make_stack)
    inbox = stack.subscribe()
    emulator.make_late(1, 7200)
    due = [f"dl{i}" for i in range(4)]
    free = [f"nd{i}" for i in range(4)]
    stack.send([request(r, deadline=at(1800)) for r in due] + [request(r) for r in free])
    stack.deliver()
    stack.tick()
    [batch_id] = emulator.batch_ids()
    assert set(emulator.custom_ids(batch_id)) == set(due + free)
    # When the deadline comes within the margin and the batch has not ended
    stack.advance(1800 - 60 + 5)
    wait_for(lambda: _rescued(stack))
    wait_for(lambda: stack.deliver_realtime() and len(emulator.messages_created) == len(due))
    # Then the deadline requests were answered in realtime, before their deadline
    realtime = by_id(stack.drain(inbox))
    assert set(realtime) == set(due)
    for rid in due:
        [c] = realtime[rid]
        assert c["route"] == "realtime" and c["batch_id"] is None and c["completed_at"] <= c["deadline"]
        assert c["cost"]["both_ways_usd"] > 0, "the batch copy's cost is not counted"
    # And when the late batch ends, only the others are answered from it
    stack.advance(7200)
    stack.pump()
    rest = once(stack, inbox, free)
    assert {c["route"] for c in rest.values()} == {"batch"}
    assert len(emulator.messages_created) == len(due)
    seen = emitted(capsys)
    assert seen["DeadlineRescues"] == len(due)
    # Realtime time counts from the rescue, not from the batch's submission half an hour before.
    assert 0 < seen["RealtimeSeconds"] < len(due) * 300
    record = next(b for b in items(stack, "batch#").values() if b.get("batch_id") == batch_id)
    assert int(record["n_rescued"]) == len(due) and record["status"] == "collected"


def test_a_batch_whose_requests_all_went_realtime_is_canceled(make_stack, emulator, capsys):
    stack = rescue_stack(make_stack)
    inbox = stack.subscribe()
    emulator.make_late(1, 7200)
    ids = [f"all{i}" for i in range(3)]
    stack.send([request(r, deadline=at(1800)) for r in ids])
    stack.deliver()
    stack.tick()
    [batch_id] = emulator.batch_ids()
    stack.advance(1800 - 60 + 5)
    wait_for(lambda: emulator.batch(batch_id)["cancel_initiated_at"] is not None)
    stack.pump()
    got = once(stack, inbox, ids)
    assert {c["route"] for c in got.values()} == {"realtime"}
    view = emulator.batch(batch_id)
    assert view["processing_status"] == "ended" and view["cancel_initiated_at"]
    record = next(b for b in items(stack, "batch#").values() if b.get("batch_id") == batch_id)
    assert record["status"] == "collected"
    # What the canceled batch still ran is counted once, on the batch and on the request
    ran = view["request_counts"]["succeeded"]
    both = [i for i in items(stack).values() if "both_ways_usd" in i]
    assert len(both) == ran
    assert float(record.get("both_ways_usd", 0)) == pytest.approx(
        sum(float(i["both_ways_usd"]) for i in both)
    )


def test_realtime_honours_retry_after_and_answers_once(make_stack, emulator):
    stack = make_stack()
    inbox = stack.subscribe()
    emulator.inject("POST", "/v1/messages", 429, count=1, retry_after=120, route="message")
    stack.send([request("r1", deadline=at(1200))])
    stack.deliver()
    stack.tick()
    stack.deliver_realtime()
    assert stack.drain(inbox) == []
    assert stack.hidden_for == [120], "the API's retry-after was not honoured"
    stack.deliver_realtime()
    assert emulator.messages_created == [], "called again before the retry-after passed"
    stack.advance(121)
    stack.deliver_realtime()
    assert once(stack, inbox, ["r1"])["r1"]["route"] == "realtime"
    assert len(emulator.messages_created) == 1


def test_a_short_retry_after_is_waited_in_place(stack, emulator):
    inbox = stack.subscribe()
    emulator.inject("POST", "/v1/messages", 529, count=2, retry_after=0.2, route="message")
    stack.send([request("r2", deadline=at(600))])
    stack.pump()
    assert once(stack, inbox, ["r2"])["r2"]["status"] == "succeeded"
    assert stack.hidden_for == []
    assert len(emulator.messages_created) == 1


def test_a_realtime_message_delivered_twice_is_answered_once(stack, emulator):
    from batch_relay.handoff import Handoff
    from batch_relay.payloads import Payloads
    from batch_relay.settings import settings
    from batch_relay.store import Store

    inbox = stack.subscribe()
    stack.send([request("dup", deadline=at(600))])
    stack.deliver()
    stack.tick()
    [record] = [b for b in items(stack, "batch#").values() if b.get("status") == "realtime"]
    config = settings()
    Handoff(config, Store(config.table_name), Payloads(config.bucket_name)).dispatch(record, ["dup", "dup"])
    stack.deliver_realtime()
    stack.pump()
    assert once(stack, inbox, ["dup"])["dup"]["route"] == "realtime"
    assert len(emulator.messages_created) == 1


def test_a_deadline_already_past_is_answered_at_once_and_counted_as_missed(stack, emulator, capsys):
    inbox = stack.subscribe()
    stack.send([request("past", deadline=at(-60))])
    stack.pump()
    got = once(stack, inbox, ["past"])["past"]
    assert got["route"] == "realtime" and got["status"] == "succeeded"
    assert emitted(capsys)["DeadlineMisses"] == 1


@pytest.mark.parametrize("deadline", ["tomorrow", "2026-11-25T10:00:00", 1764000000, "2026-13-01T00:00:00Z"])
def test_a_deadline_that_is_not_rfc3339_with_an_offset_is_rejected(stack, emulator, deadline):
    inbox = stack.subscribe()
    stack.send([request("bad-deadline", deadline=deadline), request("fine")])
    stack.pump()
    got = once(stack, inbox, ["bad-deadline", "fine"])
    assert (
        got["bad-deadline"]["status"] == "rejected" and "deadline" in got["bad-deadline"]["error"]["message"]
    )
    assert got["fine"]["status"] == "succeeded"


def test_the_budget_holds_a_tier_until_the_next_utc_day(make_stack, emulator, capsys):
    from batch_relay.payloads import request_text
    from batch_relay.pricing import request_bound

    # A budget that fits about one request's upper bound at batch price
    params = request("b0")["params"]
    one = request_bound(params, len(request_text("b0", params).encode()), batch=True)
    stack = make_stack(DailyBudgetUSD=f"{one * 1.5:.8f}")
    inbox = stack.subscribe()
    ids = [f"b{i}" for i in range(3)]
    stack.send([request(r) for r in ids])
    stack.deliver()
    stack.tick()
    assert [len(emulator.custom_ids(b)) for b in emulator.batch_ids()] == [1]
    assert stack.open_work()["pending"] == 2
    metrics = emitted(capsys)
    assert metrics["BudgetHeld"] >= 1
    assert 0 < metrics["BudgetCommittedUSD"] <= one * 1.5
    # The requests wait; the next UTC day (the relay's clock) lets them go
    stack.pump()
    once(stack, inbox, ids)
    assert len(emulator.batch_ids()) >= 2


def test_a_realtime_fallback_past_the_budget_is_errored_budget_exceeded(make_stack, emulator, capsys):
    stack = make_stack(DailyBudgetUSD="0.00001")
    inbox = stack.subscribe()
    stack.send([request("over", deadline=at(600))])
    stack.pump()
    got = once(stack, inbox, ["over"])["over"]
    assert got["status"] == "errored" and got["error"]["type"] == "budget_exceeded"
    assert got["route"] == "realtime"
    assert emulator.messages_created == [], "sent past the budget"
    assert emitted(capsys)["BudgetExceeded"] == 1


def _ts(stamp: str) -> float:
    from batch_relay import clock

    return clock.parse(stamp)


def _rescued(stack) -> bool:
    return any(b.get("status") == "realtime" for b in items(stack, "batch#").values())


def test_a_request_dearer_than_the_whole_budget_is_answered_not_left_blocking(make_stack, emulator):
    stack = make_stack(DailyBudgetUSD="0.01")
    inbox = stack.subscribe()
    dear = request("dear", model="claude-opus-4-1")
    dear["params"]["max_tokens"] = 100_000  # up to 3.75 USD at batch price
    stack.send([dear, request("cheap")])
    stack.pump()
    got = once(stack, inbox, ["dear", "cheap"])
    assert got["dear"]["status"] == "errored" and got["dear"]["error"]["type"] == "budget_exceeded"
    assert got["cheap"]["status"] == "succeeded"


@pytest.mark.parametrize("how", ["503", "reset"])
def test_a_realtime_call_whose_answer_was_lost_is_sent_again_only_as_a_new_attempt(stack, emulator, how):
    # Given: the API runs a realtime call, then its answer is lost (a 5xx from a gateway, a reset)
    inbox = stack.subscribe()
    emulator.lose_answers("message", 1, how=how)

    # When: a request no batch can make in time is answered
    stack.send([request("lost-rt", deadline=at(1800))])
    stack.pump()

    # Then: it succeeds once, and every call billed for it is an attempt its completion counts
    done = once(stack, inbox, ["lost-rt"])["lost-rt"]
    assert (done["status"], done["route"]) == ("succeeded", "realtime")
    billed = len(emulator.messages_created)
    assert billed == 2 and done["attempts"] == billed, (billed, done["attempts"])
