"""The submitter's lease, and what a run that holds it may recover at once from a run that failed:
each test drives the stack (moto + the emulator) into one way the promises of DESIGN.md ("Never
billed twice", the daily budget, deadlines) can break around the `submitter` lease, and fails while
they do.

Faults are placed with the stack's hooks: `before(function, operation)` runs before an AWS call of a
function (raising refuses it), `after(function, operation)` once it acted (raising there is an
answer that never came back). moto reads a global secondary index as consistently as the table;
DynamoDB does not (the relay says so itself: `Store.pages` is eventually consistent, and a claim
reads every listed request again before it takes it). `lagging_index` serves the `pending` index
as it was a moment earlier, the way DynamoDB may.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from batch_relay.errors import FunctionKilled
from relay_local.stack import as_harness

from tests.helpers import (
    Once,
    answered_in_time,
    committed,
    install,
    once,
    request,
    table,
    throttled,
    to_morning,
)

pytestmark = pytest.mark.integration

MODEL = "claude-haiku-4-5"


def records(stack: Any) -> dict[str, dict[str, Any]]:
    return {
        i["pk"]: i for i in table(stack).scan(ConsistentRead=True)["Items"] if i["pk"].startswith("batch#")
    }


def holding(emulator: Any, rid: str) -> list[str]:
    """The API's batches that hold request <rid>: each one bills it."""
    return [b for b in emulator.batch_ids() if rid in emulator.custom_ids(b)]


def index_view() -> list[Any]:
    """The batch records the `pending` index lists as live, as the submitter reads them."""
    from batch_relay.settings import settings
    from batch_relay.store import Store

    with as_harness():
        return list(Store(settings().table_name).live_batches())


def lagging_index(monkeypatch: pytest.MonkeyPatch, view: list[Any]) -> list[int]:
    """The next submitter run's first read of the live batches gets `view`, the index as it was a
    moment earlier (the table itself, read consistently, is up to date). Returns a list that gets
    an entry once the view has been served."""
    from batch_relay.store import Store
    from relay_local.stack import current_function

    real = Store.live_batches
    served: list[int] = []

    def live_batches(self: Any) -> Iterator[Any]:
        if not served and current_function() == "SubmitterFunction":
            served.append(1)
            return iter([record.model_copy() for record in view])
        return real(self)

    monkeypatch.setattr(Store, "live_batches", live_batches)
    return served


def snapshot_when(status: str, operation: str) -> tuple[Any, dict[str, Any]]:
    """An `after` hook that keeps the index's view of the live batches right after the submitter's
    first `operation` that leaves one of them in `status`."""
    kept: dict[str, Any] = {}

    def after(function: str, op: str) -> None:
        if function != "SubmitterFunction" or op != operation or "view" in kept:
            return
        view = index_view()
        if any(b.status == status for b in view):
            kept["view"] = view

    return after, kept


# a run that holds the lease recovers another run's record at once, from the index's view of it


@pytest.mark.parametrize(
    ("status", "operation"), [("uploaded", "UpdateItem"), ("claiming", "BatchWriteItem")]
)
def test_a_record_the_index_still_lists_in_a_state_it_left_is_not_recovered_from_it(
    stack, emulator, monkeypatch, status, operation
):
    """A run claims a request, writes its record `claiming` then `uploaded`, creates the batch,
    starts its poller and gives the lease back. The next run, a minute later, lists the live
    batches from the `pending` index, which may not show the last writes yet: the record still
    reads `uploaded` (or `claiming`). That run holds the lease and the record names another run,
    so it takes that run for over and recovers the record at once: were it to act on the listing,
    it would create the batch again (`uploaded`), or release the request to its tier and claim it
    into a new batch (`claiming`, the first batch's answer then dropped): a request in two
    batches the API created, billed twice. (Before, a record had to be idle 15 minutes first, far
    longer than the index lags.)"""
    stack.send([request("u1")])
    stack.deliver()
    after, kept = snapshot_when(status, operation)
    stack.after = after
    stack.tick()
    stack.after = None
    assert [b.status for b in kept["view"]] == [status]
    [record] = records(stack).values()
    assert record["status"] == "polling" and len(holding(emulator, "u1")) == 1
    stack.advance(60)  # the schedule's next run
    served = lagging_index(monkeypatch, kept["view"])
    stack.tick()
    assert served
    stack.settle()
    made = holding(emulator, "u1")
    assert len(made) == 1, f"request u1 is in {len(made)} batches the API created: {made}"


# the daily budget on the recovery path


def test_a_batch_recovered_from_uploaded_is_committed_to_the_budget(make_stack, emulator):
    """A run claims a request (its record `uploaded`, its upper bound on it as `budget_usd`) and
    fails as it commits that bound to the day's budget (the commitment is refused). The
    next run, holding the lease, recovers the record at once (since this change; before, after 15
    minutes) through `_recover_uploaded` -> `submit`, which creates the batch without committing
    it: the day's committed total stays 0 with a batch out, so the next request is committed and
    created in full too. Two batches whose bounds add up to more than DailyBudgetUSD, which
    should cap what the relay commits per day. (The first batch is kept running: once it ends,
    what it did not spend is given back and the second fits, rightly.)"""
    from batch_relay import clock
    from batch_relay.pricing import bound, input_tokens_of

    line = len(json.dumps({"custom_id": "b0", "params": request("b0")["params"]}))
    one = bound(MODEL, input_tokens_of(line), 200, batch=True)
    cap = one * 1.5
    stack = make_stack(DailyBudgetUSD=f"{cap:.8f}")
    to_morning(stack)
    stack.send([request("b1")])
    stack.deliver()
    # The commitment (with the record's note of it, one transaction) is refused.
    state = {"refused": 0}

    def before(function: str, operation: str) -> None:
        if function == "SubmitterFunction" and operation == "TransactWriteItems" and not state["refused"]:
            state["refused"] += 1
            raise throttled(operation)

    stack.before = before
    with pytest.raises(Exception, match=r"TransactWriteItems|Throttling|injected"):
        stack.tick()
    stack.before = None
    [record] = records(stack).values()
    assert record["status"] == "uploaded" and committed(stack) == 0
    stack.send([request("b2")])
    stack.deliver()
    # The first batch stays out the whole time: its commitment is not given back meanwhile.
    emulator.make_late(1, 3600)
    start = clock.now()
    out: dict[int, float] = {}  # batches out -> what the day's commitments said then
    while clock.now() < start + 17 * 60:  # past the 15 minutes a record of unknown run is given
        stack.advance(60)
        stack.tick()
        out.setdefault(len(emulator.batch_ids()), committed(stack))
    made = emulator.batch_ids()
    assert len(made) == 1, (
        f"{len(made)} batches created, each with an upper bound of {one:.6f} USD, against a daily "
        f"budget of {cap:.6f} USD; with them out, the day's commitments said {out[len(made)]:.6f} USD"
    )


# the lease itself


@pytest.mark.parametrize("lost", ["retry refused by its condition", "retries throttled"])
def test_a_lease_whose_answer_was_lost_does_not_keep_every_run_out(stack, emulator, lost):
    """A run's lease write applies, and its answer is lost: the SDK sends it again, and the retry is
    refused by the write's own condition (the lease is there, held, by this very run), or the
    retries are throttled until they give up. Either way `Store.lease` says no (or raises) and the
    run ends without the lease it holds, so nothing gives it back: every run for its 15 minutes
    and a minute does nothing, and a request due in 10 minutes, which the first of them would
    send realtime, misses its deadline. The change gives a lease back through throttles for the
    same reason; the realtime path reads its own lease back after a refused take (`Realtime.answer`),
    the submitter does not."""
    from batch_relay import aws
    from batch_relay.settings import settings

    client = aws.table(settings().table_name).meta.client
    fired: list[int] = []

    def after(function: str, operation: str) -> None:
        if function == "SubmitterFunction" and operation == "PutItem" and not fired:
            fired.append(1)  # the run's first write: its lease
            if lost == "retries throttled":
                raise throttled(operation)
            raise client.exceptions.ConditionalCheckFailedException(
                {
                    "Error": {
                        "Code": "ConditionalCheckFailedException",
                        "Message": "The conditional request failed",
                    }
                },
                operation,
            )

    inbox = stack.subscribe()
    stack.after = after
    try:
        stack.tick()
    except Exception:
        assert lost == "retries throttled"
    stack.after = None
    assert fired
    answered_in_time(stack, inbox, "ls1")


# a submitter run killed or stalled while it holds the lease


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


# a commitment whose answer was lost


def test_a_commitment_whose_answer_was_lost_is_not_made_twice(make_stack, emulator):
    """A run claims a request, uploads it (record `uploaded`, its upper bound as `budget_usd`) and
    commits that bound to the day's budget; the commitment applies, and its answer is lost (the
    run fails). The next run recovers the record at once (`_recover_uploaded`) and commits what
    its record does not say is committed. Were the budget item's update and the record's
    `budget_day` two writes, a run failing between them would leave a commitment no record names,
    made again by the recovery and never given back (the batch's settlement gives back one): the
    cap would hold the relay's tiers back with less than the cap spent or out. They are one
    transaction (`Store.commit`), so the record names the commitment whenever it applied."""
    stack = make_stack(DailyBudgetUSD="1")  # far above one request's bound
    to_morning(stack)
    stack.send([request("c1")])
    stack.deliver()
    lost: list[str] = []

    def after(function: str, operation: str) -> None:
        if function == "SubmitterFunction" and operation == "TransactWriteItems" and not lost:
            lost.append(operation)
            raise throttled(operation)  # applied; its answer never came back

    stack.after = after
    with pytest.raises(Exception, match=r"TransactWriteItems|Throttling|injected"):
        stack.tick()
    stack.after = None
    assert lost == ["TransactWriteItems"]
    [record] = records(stack).values()
    assert record["status"] == "uploaded" and record["budget_day"]
    one = float(record["budget_usd"])
    assert committed(stack) == pytest.approx(one, abs=2e-6)
    stack.tick()  # the next run: recovers the record and creates its batch
    assert len(emulator.batch_ids()) == 1
    twice = committed(stack)
    stack.settle()  # the batch ends: what it did not spend of its commitment is given back
    assert committed(stack) <= one + 2e-6, (
        f"the day's commitments said {twice:.6f} USD for one batch whose upper bound is {one:.6f} "
        f"USD; with the batch ended they say {committed(stack):.6f} USD, more than that bound: "
        "the second commitment is never given back"
    )
