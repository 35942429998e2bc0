"""Defects the chaos run (`relay-local chaos`) pointed at, each pinned down by one deterministic
test that failed until its defect was fixed; each says in its docstring what the chaos run showed,
where in the code the cause was, and what the relay does now.

Faults are injected as in `test_deadline_faults`: `stack.before(function, operation)` runs before
each AWS call a function makes (raising there refuses the call), `stack.after` once it has acted
(raising `FunctionKilled` there is a function that died right after it).
"""

from __future__ import annotations

import threading
import traceback

import pytest

from tests.helpers import by_id, request
from tests.integration.test_deadline_faults import (
    Once,
    answered,
    install,
    refused,
)
from tests.integration.test_deadlines import at, items, wait_for

pytestmark = pytest.mark.integration


class RefuseInTurn:
    """Refuse, once each and in this order, the first call of each of `operations` that `function`
    makes (a later one only once the one before it was refused), optionally only from inside a
    frame named `within`."""

    def __init__(self, function: str, operations: list[str], within: str | None = None):
        self.function, self.operations, self.within = function, list(operations), within
        self.refused: list[str] = []
        self._lock = threading.Lock()

    def before(self, function: str, operation: str) -> None:
        if function != self.function:
            return
        if self.within is not None and not any(f.name == self.within for f in traceback.extract_stack()):
            return
        with self._lock:
            if not self.operations or operation != self.operations[0]:
                return
            self.refused.append(self.operations.pop(0))
        raise refused(operation)

    def after(self, function: str, operation: str) -> None:
        return None


def _batch_of(stack, batch_id: str) -> dict:
    [batch] = [b for b in items(stack, "batch#").values() if b.get("batch_id") == batch_id]
    return batch


def _rescued(stack, ref: str) -> list[str]:
    return [v["request_id"] for v in items(stack).values() if v.get("rescued_from") == ref]


# the poller's rescue


def test_a_check_killed_mid_rescue_keeps_the_rescue_out_no_longer_than_it_could_run(make_stack, emulator):
    """Defect, fixed (`poller.Poller._rescue`): a check takes the batch's collect lease for
    `LEASE_MARGIN_SECONDS * 5` (5 minutes) before it rescues, though the check function's timeout
    is 60 s and the rescue stops at the invocation's deadline (`until`). When the check dies in
    the rescue, no check can rescue the batch's other requests for 5 minutes. With
    DeadlineMarginSeconds 300 (the template allows 30 and up; the chaos run uses 300) the rescue
    resumes only when their deadlines have come, and each of them misses it: in the chaos run,
    three requests of one batch answered 2, 10 and 19 s late after a check died 300 s before
    their deadline. (`collect` takes the same lease until its own deadline plus a minute.)

    Here the check dies after moving the first of three requests; two minutes later, when the
    dead invocation is long over, a check should rescue the two others, due three minutes on."""
    stack = make_stack(DefaultTurnaroundSeconds="60", DeadlineMarginSeconds="300")
    from batch_relay import clock

    inbox = stack.subscribe()
    emulator.make_late(1, 7200)
    due = [f"kr{i}" for i in range(3)]
    stack.send([request(r, deadline=at(3600)) for r in due] + [request("kr-free")])
    stack.deliver()
    kill = Once("CheckBatchFunction", "UpdateItem", "kill after", after_op="PutObject")
    install(stack, kill)
    stack.tick()
    [batch_id] = emulator.batch_ids()
    ref = _batch_of(stack, batch_id)["ref"]
    stack.advance(3600 - 300 + 5)
    kill.fired.wait(30)
    assert kill.fired.is_set(), "no rescue was attempted"
    assert len(_rescued(stack, ref)) == 1, "the kill was not between two moves"
    # The dead check could run for 60 s; a minute more for clock skew, and a few seconds.
    stack.advance(125)
    now = clock.now()
    try:
        wait_for(lambda: len(_rescued(stack, ref)) == 3, seconds=20)
    except AssertionError:
        lease = items(stack, "lease#collect#").get(f"lease#collect#{ref}", {})
        held = float(lease.get("until", now)) - now
        raise AssertionError(
            f"no check rescued the other two requests: the dead check's collect lease is held "
            f"{held:.0f} s more, and their deadline is {3600 - 300 + 5 + 125:.0f} s after sending"
        ) from None
    wait_for(lambda: stack.deliver_realtime() and len(emulator.messages_created) >= 2)
    got = by_id(stack.drain(inbox))
    for rid in (r for r in due if r in got):
        [c] = got[rid]
        assert c["route"] == "realtime" and c["completed_at"] <= c["deadline"]


def test_a_check_that_finds_its_rescue_leased_elsewhere_does_not_poll_every_second(make_stack, emulator):
    """Defect, fixed (`poller.Poller.check`): when a batch's rescue is due, a check waits until the next
    rescue time, at least 1 s (`max(1, min(wait, int(at - now) + 1))`). When the rescue cannot
    run because another holder has the collect lease (a check that died mid-rescue: 5 minutes; a
    submitter's overdue rescue: up to 15), the rescue time stays in the past and every check
    comes back after 1 s: a Step Functions loop retrieving the batch from the API, and writing
    its record, every second for as long as the lease lasts. In the chaos run, one batch was
    checked about 300 times in the 300 s after a check died in its rescue (each check an API
    call, against the same rate limit as realtime calls)."""
    stack = make_stack(DefaultTurnaroundSeconds="60", DeadlineMarginSeconds="300")
    from batch_relay import clock
    from batch_relay.settings import settings
    from batch_relay.store import Store

    emulator.make_late(1, 7200)
    stack.send([request("bp1", deadline=at(3600))])
    stack.deliver()
    stack.tick()
    [batch_id] = emulator.batch_ids()
    batch = _batch_of(stack, batch_id)
    # Another holder (a rescue under way elsewhere, or one that died) has the collect lease.
    now = clock.now()
    assert Store(stack.physical["RequestTable"]).lease(
        f"collect#{batch['ref']}", "elsewhere", now + 3600, now
    )
    stack.advance(3600 - 300 + 5)
    out = stack.invoke("CheckBatchFunction", {"batch_id": batch_id, "ref": batch["ref"]})
    assert not out["ended"] and _rescued(stack, batch["ref"]) == []
    poll_min = settings().poll_min_seconds
    assert out["wait_seconds"] >= poll_min, (
        f"the check comes back after {out['wait_seconds']} s while the rescue it waits for is "
        f"leased elsewhere (poll_min_seconds is {poll_min})"
    )


def test_a_refused_release_of_a_checks_rescue_lease_is_tried_again(make_stack, emulator):
    """Defect, fixed (`poller.Poller._rescue`): a check gives the batch's collect lease back with one
    DeleteItem as its rescue ends. When the rescue fails (a refused call) and that release is
    refused too, the lease stays its whole 5 minutes, and no check can rescue meanwhile: in the
    chaos run a check's rescue failed with its release refused 272 s before two requests'
    deadlines. Here the rescue's journal write is refused, then the release; a check a few
    seconds later should rescue the request."""
    stack = make_stack(DefaultTurnaroundSeconds="60", DeadlineMarginSeconds="300")

    emulator.make_late(1, 7200)
    stack.send([request("rl1", deadline=at(3600))])
    stack.deliver()
    stack.tick()
    [batch_id] = emulator.batch_ids()
    ref = _batch_of(stack, batch_id)["ref"]
    hook = RefuseInTurn("CheckBatchFunction", ["PutObject", "DeleteItem"])
    stack.before, stack.after = hook.before, hook.after
    stack.advance(3600 - 300 + 5)
    wait_for(lambda: len(hook.refused) == 2, seconds=30)
    stack.advance(10)
    try:
        wait_for(lambda: _rescued(stack, ref) == ["rl1"], seconds=20)
    except AssertionError:
        raise AssertionError("not rescued: the failed rescue's collect lease was left in place") from None


def test_a_refused_release_of_the_submitters_overdue_rescue_lease_is_tried_again(make_stack, emulator):
    """Defect, fixed (`submitter.Submitter._rescue_overdue`): the submitter rescues a batch whose poller
    has not, under the batch's collect lease taken for STALE_SECONDS (15 minutes), and gives it
    back with one DeleteItem. When that release is refused, `reconcile` logs the failure and goes
    on (the run ends well), and the lease stays 15 minutes: no check can rescue the batch's later
    deadline requests, nor a collector collect it, meanwhile. In the chaos run, three requests of
    one batch waited behind such a lease, answered some 25 minutes late.

    Here the poller is stuck while the first request's rescue falls due; the submitter rescues
    it and its release is refused; the poller then comes back, and the second request's rescue,
    due 6 minutes later, should be made."""
    stack = make_stack(DefaultTurnaroundSeconds="60", DeadlineMarginSeconds="300")
    from batch_relay.submitter import RESCUE_GRACE_SECONDS

    emulator.make_late(1, 7200)
    stack.send([request("or1", deadline=at(1800)), request("or2", deadline=at(2400))])
    stack.deliver()
    checks = threading.Event()
    refuse = RefuseInTurn("SubmitterFunction", ["DeleteItem"])
    sent = threading.Event()

    def before(function: str, operation: str) -> None:
        if function == "CheckBatchFunction":
            checks.wait(120)  # the batch's poller is stuck
        if function == "SubmitterFunction" and operation == "SendMessageBatch":
            sent.set()
        if sent.is_set():
            refuse.before(function, operation)  # the first DeleteItem after the rescue's send

    stack.before = before
    stack.tick()
    [batch_id] = emulator.batch_ids()
    ref = _batch_of(stack, batch_id)["ref"]
    stack.advance(1800 - 300 + RESCUE_GRACE_SECONDS + 5)
    assert not stack.tick().get("skipped")
    assert _rescued(stack, ref) == ["or1"], "the submitter's overdue rescue did not take the first request"
    assert refuse.refused == ["DeleteItem"], "the overdue rescue's release was not refused"
    checks.set()
    stack.advance(600)
    try:
        wait_for(lambda: sorted(_rescued(stack, ref)) == ["or1", "or2"], seconds=20)
    except AssertionError:
        lease = items(stack, "lease#collect#").get(f"lease#collect#{ref}")
        raise AssertionError(f"the second request was not rescued; the collect lease is {lease}") from None


# the realtime function's lease on a request


def test_a_refused_release_of_a_realtime_try_is_tried_again(stack, emulator):
    """Defect, fixed (`realtime.Realtime.answer` / `_unlease`): a realtime try that fails gives its lease
    on the request back with one UpdateItem. When that call is refused (a throttle the SDK's
    retries did not absorb), the lease stays until the try could have ended (`rt_until`: the
    function's 15-minute timeout), and every delivery meanwhile finds it held and puts the
    message off a minute at a time ("another invocation is answering this request"). A request
    due in 10 minutes misses its deadline for two refused calls. This is the realtime side of the
    submitter lease release that `insist` now retries (`Submitter.run`).

    Here the try's read of the request body is refused (the try fails after taking the lease),
    and then its release of the lease."""
    from batch_relay import clock

    inbox = stack.subscribe()
    hook = RefuseInTurn("RealtimeFunction", ["GetObject", "UpdateItem"])
    stack.before, stack.after = hook.before, hook.after
    stack.send([request("rr1", deadline=at(600))])
    stack.deliver()
    deadline = clock.now() + 600
    stack.tick()  # sends it realtime at once (no batch can make it) and delivers the realtime queue
    assert hook.refused == ["GetObject", "UpdateItem"], hook.refused
    lease = float(items(stack)["req#rr1"].get("rt_until", clock.now())) - clock.now()
    got = answered(stack, inbox, "rr1")
    while not got and clock.now() + 30 < deadline:
        stack.advance(30)
        stack.deliver_realtime()
        got = answered(stack, inbox, "rr1")
    assert got, f"not answered by its deadline: the failed try's lease was left for {lease:.0f} s"
    [c] = got
    assert c["route"] == "realtime" and c["completed_at"] <= c["deadline"]


def test_a_realtime_message_the_claiming_run_could_not_send_is_sent_by_the_next_run(stack, emulator):
    """Defect, fixed (`submitter.Submitter._recover_realtime`, `handoff.Handoff.route`): a request no
    batch can answer in time is claimed by a realtime record and then queued. When the run's
    SendMessageBatch is refused, the run fails with the request claimed and no message sent; a
    later run sends it only once the record has been idle RESEND_SECONDS (3 minutes). The record
    is not covered by the recovery main now gives batch records a failed run left (`run`, see
    `_over`): the run holding the lease knows the run that made the record is over, and a record
    whose `request_count` is still 0 never finished its dispatch. A request due in 150 s misses
    its deadline; in the chaos run 11 requests (deadlines of 90 to 500 s) missed theirs so."""
    from batch_relay import clock
    from batch_relay.submitter import RESEND_SECONDS

    inbox = stack.subscribe()
    stack.send([request("ns1", deadline=at(150))])
    stack.deliver()
    install(stack, Once("SubmitterFunction", "SendMessageBatch", "refuse"))
    with pytest.raises(Exception, match=r"SendMessageBatch|Throttling|injected"):
        stack.tick()
    assert items(stack)["req#ns1"]["status"] == "claimed"
    deadline = clock.now() + 150
    got: list = []
    while not got and clock.now() + 60 <= deadline:
        stack.advance(60)
        stack.tick()  # recovers what failed runs left, and delivers the realtime queue
        got = answered(stack, inbox, "ns1")
    assert got, f"not answered by its deadline: the record waits {RESEND_SECONDS} s to be sent again"
    [c] = got
    assert c["route"] == "realtime" and c["completed_at"] <= c["deadline"]


# the batch create


def test_a_create_whose_body_could_not_be_read_is_made_by_the_next_run(stack, emulator):
    """Defect, fixed (`submitter.Submitter.submit`, `batches.create_from`): a create streams its body from
    S3 while it sends it (`payloads.RequestsBody`). When a read of the body is refused, the SDK
    reports a broken connection and the relay takes the create's outcome for unknown
    (`OutcomeUnknownError`): the record stays `creating` until its create window has passed
    (`create_until`: the run's remaining time less a minute, so nearly 15 minutes, plus a minute
    of clock skew), and only then does a run look for the batch and, finding none, create it. A
    body cut short cannot have made a batch (the emulator answers it 400, invalid JSON), so the
    next run could create it at once. Meanwhile a request with no deadline waits some 16 minutes
    for one throttled read; deadline requests wait for the submitter's overdue rescue and are
    answered in realtime at list price. In the chaos run each seed had several such creates."""
    from batch_relay import clock

    inbox = stack.subscribe()
    stack.send([request("cb1")])
    stack.deliver()
    hook = RefuseInTurn("SubmitterFunction", ["GetObject"], within="__iter__")
    stack.before, stack.after = hook.before, hook.after
    stack.tick()
    assert hook.refused == ["GetObject"], "the create's body read was not refused"
    assert emulator.batch_ids() == []
    start = clock.now()
    for _ in range(3):
        stack.advance(61)
        stack.tick()
        if emulator.batch_ids():
            break
    record = next(iter(items(stack, "batch#").values()), {})
    assert emulator.batch_ids(), (
        f"no batch {clock.now() - start:.0f} s after the refused read; the record is "
        f"{record.get('status')!r} until {record.get('create_until')}"
    )
    stack.pump()
    [c] = answered(stack, inbox, "cb1")
    assert c["status"] == "succeeded" and c["route"] == "batch"
