"""Review of promises a user sees break: requests of a tier a redeploy dropped, a rescue counted
twice, a killed submitter run keeping every other out, and what a batch that expired teaches the
relay about turnaround. Each test drives the stack (moto + the emulator) and fails while the
promise does not hold.

Faults are placed with the stack's hooks: `before(function, operation)` runs before an AWS call of a
function, `after(function, operation)` once it acted.
"""

from __future__ import annotations

import json
import threading

import pytest
from batch_relay.errors import FunctionKilled

from tests.conftest import TEST_PARAMETERS
from tests.helpers import emitted, request
from tests.integration.test_deadline_faults import Once, answered_in_time, install
from tests.integration.test_deadlines import at, items, learn, once, wait_for
from tests.integration.test_review_leases import as_harness, table

pytestmark = pytest.mark.integration


# a tier the policy no longer names


def test_requests_of_a_tier_a_redeploy_dropped_are_answered(stack, emulator, capsys):
    """Requests wait in the `bulk` tier (6 hours, or 1,000 requests); a redeploy drops `bulk` from
    `TierPolicy`. The submitter used to flush and measure only the tiers the policy names: the
    requests were never answered, and no wait metric (so no alarm) saw them. They are flushed
    under the default tier's timing, counted (`OrphanedTierRequests`) and measured."""
    inbox = stack.subscribe()
    ids = [f"orphan{i}" for i in range(3)]
    stack.send([request(rid, tier="bulk") for rid in ids])
    stack.deliver()
    # When the stack is deployed again with a policy that no longer names `bulk`
    policy = {k: v for k, v in json.loads(TEST_PARAMETERS["TierPolicy"]).items() if k != "bulk"}
    stack.redeploy(TierPolicy=json.dumps(policy))
    capsys.readouterr()
    stack.tick()
    seen = emitted(capsys)
    assert seen["OrphanedTierRequests"] == 3, "requests of a dropped tier are not counted"
    assert "OldestPendingSeconds_bulk" in seen, "requests of a dropped tier are not measured"
    # Then, the default tier's max wait passed, each is answered once, by a batch
    stack.pump()
    got = once(stack, inbox, ids)
    assert {c["status"] for c in got.values()} == {"succeeded"}
    assert {c["route"] for c in got.values()} == {"batch"}


# a rescue counted twice


class AddedTwice:
    """The first write of <function> that adds to the batch record's `n_rescued` is applied
    twice, as when its answer is lost and the SDK sends it again (a throttle, a reset)."""

    def __init__(self, stack, function: str):
        self.stack, self.function = stack, function
        self.fired = threading.Event()
        self._before = threading.local()

    def n_rescued(self) -> int:
        with as_harness():
            found = [b for b in items(self.stack, "batch#").values() if b.get("batch_id")]
        return sum(int(b.get("n_rescued", 0)) for b in found)

    def before(self, function: str, operation: str) -> None:
        if function == self.function and operation == "UpdateItem" and not self.fired.is_set():
            self._before.n = self.n_rescued()

    def after(self, function: str, operation: str) -> None:
        if function != self.function or operation != "UpdateItem" or self.fired.is_set():
            return
        added = self.n_rescued() - self._before.n
        if added:
            self.fired.set()
            with as_harness():
                [ref] = [b["ref"] for b in items(self.stack, "batch#").values() if b.get("batch_id")]
                table(self.stack).update_item(
                    Key={"pk": f"batch#{ref}"},
                    UpdateExpression="ADD n_rescued :n",
                    ExpressionAttributeValues={":n": added},
                )


def test_a_rescue_counted_twice_cancels_no_batch_that_still_holds_a_request(make_stack, emulator):
    """A late batch holds three requests: two with deadlines half an hour apart, one without. The
    check that takes the first out for realtime adds 1 to the batch's `n_rescued`, and that write
    is applied twice. When the second is taken out, the tally read 3 of 3: the batch was canceled
    though it still held the third request, which got a `canceled` completion. Whether a batch
    holds none of its requests is read from the requests: no cancel is sent, and the third is
    answered by its batch."""
    from batch_relay import clock

    stack = make_stack(DefaultTurnaroundSeconds="60", DeadlineMarginSeconds="60")
    inbox = stack.subscribe()
    emulator.make_late(1, 7200)
    start = clock.now()
    stack.send([request("first", deadline=at(1800)), request("second", deadline=at(3600)), request("third")])
    stack.deliver()
    stack.tick()
    [batch_id] = emulator.batch_ids()
    twice = AddedTwice(stack, "CheckBatchFunction")
    stack.before, stack.after = twice.before, twice.after
    # When the first deadline comes within the margin, its rescue is counted twice
    stack.advance(start + 1800 - 60 + 5 - clock.now())
    wait_for(twice.fired.is_set)
    stack.before = stack.after = None
    wait_for(lambda: stack.deliver_realtime() and len(emulator.messages_created) == 1)
    # And the second is taken out too
    stack.advance(start + 3600 - 60 + 5 - clock.now())
    wait_for(lambda: stack.deliver_realtime() and len(emulator.messages_created) == 2)
    # Then the batch, which still holds the third request, is not canceled
    assert emulator.batch(batch_id)["cancel_initiated_at"] is None, "a batch that holds a request was canceled"
    stack.advance(7200)
    stack.pump()
    got = once(stack, inbox, ["first", "second", "third"])
    assert {rid: c["route"] for rid, c in got.items()} == {
        "first": "realtime",
        "second": "realtime",
        "third": "batch",
    }
    assert got["third"]["status"] == "succeeded", got["third"].get("error")


# a submitter run killed while it holds the lease


def test_a_submitter_run_killed_holding_its_lease_keeps_the_next_runs_out_briefly(stack, emulator):
    """A submitter run is killed right after it takes its lease. The lease used to last as long
    as the run's invocation could (15 minutes and a minute): every run meanwhile did nothing,
    and a request due in 10 minutes, which the first of them would send realtime, missed its
    deadline. The lease is short and renewed as a run goes, so the next runs take it within
    minutes and the request is answered in time."""
    inbox = stack.subscribe()
    killed = Once("SubmitterFunction", "PutItem", "kill after")
    install(stack, killed)
    with pytest.raises(FunctionKilled):
        stack.tick()
    assert killed.fired.is_set()
    stack.before = stack.after = None
    answered_in_time(stack, inbox, "killed1")


def test_a_run_whose_lease_was_taken_stops_before_its_next_claim(stack, emulator):
    """A run that stalls past its lease (here: its clock jumps on while it claims) finds, at its
    next write that needs the lease, that another run has taken it, and stops: it claims and
    creates nothing more, so two runs never claim at once."""
    from batch_relay import clock
    from batch_relay.settings import settings
    from batch_relay.store import Store

    inbox = stack.subscribe()
    stack.send([request(f"lt{i}") for i in range(3)])
    stack.deliver()
    other: list[bool] = []

    def before(function: str, operation: str) -> None:
        if function == "SubmitterFunction" and operation == "BatchWriteItem" and not other:
            # The run stalls past its lease (however long), and another run takes it meanwhile.
            stack.advance(20 * 60)
            with as_harness():
                now = clock.now()
                other.append(Store(settings().table_name).lease("submitter", "another-run", now + 600, now))

    stack.before = before
    report = stack.tick()
    stack.before = None
    assert other == [True]
    assert report.get("lease_lost") and not report["batches"]
    assert emulator.batch_ids() == [], "a run whose lease was taken created a batch"
    with as_harness():
        Store(settings().table_name).unlease("submitter", "another-run")
    stack.pump()
    assert set(once(stack, inbox, [f"lt{i}" for i in range(3)])) == {"lt0", "lt1", "lt2"}


# what an expired batch teaches


def test_a_batch_that_expired_does_not_send_deadline_requests_realtime_for_a_week(stack, emulator):
    """The relay has timed three batches of a fraction of a second; then one runs to the API's
    24-hour limit and its request expires (and is tried again). That batch used to be recorded as
    a 24-hour sample: the p95 of four samples is the slowest, so for a week every request due
    within about a day went realtime at list price. A batch whose requests expired says when the
    API gave up, not how long batches take: it is not a sample, and a request due in 40 minutes
    keeps its batch price."""
    inbox = stack.subscribe()
    learn(stack, emulator)
    # Far past the 24-hour limit: the emulator expires the share of a batch not yet processed by
    # then (here one in a million), so the request expires whatever its place in the batch.
    emulator.make_late(1, 1e6 * 86400)
    stack.send([request("slow")])
    stack.deliver()
    stack.advance(5)
    stack.tick()
    assert len(emulator.batch_ids()) == 4
    stack.advance(86400 + 60)
    stack.pump()
    slow = once(stack, inbox, ["slow", *(f"warm-{n}" for n in range(3))])["slow"]
    assert slow["status"] == "succeeded" and slow["attempts"] == 2, "the first batch did not expire"
    stack.send([request("d40", deadline=at(2400))])
    stack.pump()
    got = once(stack, inbox, ["d40"])["d40"]
    assert got["route"] == "batch" and got["cost"]["saved_usd"] > 0
    assert emulator.messages_created == []
