"""Review of deadlines, the realtime path and the daily budget, as an adversary: each test drives the
stack (moto + the emulator) into one way the promises of DESIGN.md "Guarantees" and "Deadlines and
budgets" can break, and fails while they do.

Faults are placed with the stack's hooks: `before(function, operation)` runs before an AWS call
of a function (raising refuses it; moving the relay's clock makes the call slow), and
`after(function, operation)` after it acted (raising `FunctionKilled` kills the function there).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import boto3
import pytest
from batch_relay.errors import FunctionKilled
from botocore.exceptions import ClientError

from tests.helpers import by_id, request
from tests.integration.test_deadlines import at, items, once, wait_for

pytestmark = pytest.mark.integration

MODEL = "claude-haiku-4-5"


def table(stack: Any) -> Any:
    return boto3.resource("dynamodb").Table(stack.physical["RequestTable"])


def to_morning(stack: Any) -> None:
    """Move the relay's clock (and the API's) to 06:00 UTC of the next day, so a test that reads a
    day's budget never straddles midnight."""
    from batch_relay import clock

    now = clock.now()
    stack.advance(86400 - now % 86400 + 6 * 3600)


def committed(stack: Any, day: str | None = None) -> float:
    from batch_relay.budget import today

    item = table(stack).get_item(Key={"pk": f"budget#{day or today()}"}, ConsistentRead=True).get("Item")
    return int(item["committed_micros"]) / 1e6 if item else 0.0


def kill_once(function: str, operation: str, nth: int = 1) -> Any:
    """An `after` hook that kills `function` right after its nth `operation` call acted."""
    seen: list[int] = []

    def after(fn: str, op: str) -> None:
        if fn == function and op == operation:
            seen.append(1)
            if len(seen) == nth:
                raise FunctionKilled(f"{function} killed after {operation} #{nth}")

    return after


def refuse_once(function: str, operation: str) -> Any:
    """A `before` hook that refuses `function`'s first `operation` call with a 500 from AWS."""
    done: list[bool] = []

    def before(fn: str, op: str) -> None:
        if fn == function and op == operation and not done:
            done.append(True)
            raise ClientError(
                {"Error": {"Code": "InternalError", "Message": "injected"}, "ResponseMetadata": {}}, op
            )

    return before


def realtime_item(stack: Any, rid: str) -> dict[str, Any]:
    return items(stack)[f"req#{rid}"]


# 1. Exactly one completion, never billed twice


def test_requests_rescued_while_a_create_is_unresolved_are_left_out_of_the_batch_made_after(
    make_stack, emulator
):
    """A create answered with a 500 has an unknown outcome and leaves its batch `creating`; when a
    deadline comes before the batch is settled, the submitter rescues the batch's deadline
    requests for realtime. The API made no batch, so the submitter then creates it from the
    claim-time input, rescued requests included: they are
    answered in realtime and also run (and billed) in a batch the relay made knowing they were
    gone. A batch made after the rescue must not hold them."""
    stack = make_stack(DefaultTurnaroundSeconds="60", DeadlineMarginSeconds="600")
    inbox = stack.subscribe()
    due = [f"cr-dl{i}" for i in range(3)]
    stack.send([request(r, deadline=at(1800)) for r in due] + [request("cr-plain")])
    stack.deliver()
    # The create fails before the API acts on it (a 500): its outcome is unknown to the relay.
    emulator.inject("POST", "/v1/messages/batches", 500, count=1, route="create")
    stack.tick()
    assert emulator.batch_ids() == []
    [record] = [b for b in items(stack, "batch#").values() if b["status"] == "creating"]
    # Past the create's window and past the rescue moment (+ the submitter's grace)
    stack.advance(1800 - 600 + 120 + 5)
    stack.tick()
    rescued = {k[4:] for k, i in items(stack).items() if i.get("rescued_from") == record["ref"]}
    assert rescued == set(due), "the submitter did not rescue the deadline requests"
    made = emulator.batch_ids()
    assert len(made) == 1, "the batch was not created once the window was past"
    assert set(emulator.custom_ids(made[0])) == {"cr-plain"}, (
        "requests already sent realtime were put in a batch created after their rescue"
    )
    stack.advance(3600)
    stack.pump()
    once(stack, inbox, [*due, "cr-plain"])


def test_a_batch_adopted_after_all_its_requests_were_rescued_is_canceled(make_stack, emulator):
    """The create went through but its answer was lost; before the window to look for it is
    past, the deadlines come and the submitter rescues every request of the record, when no batch
    id is known to cancel. The batch is then adopted and polled to its end, running (and billing)
    every request the relay has already answered in realtime: a batch left with none of its
    requests is never canceled."""
    stack = make_stack(DefaultTurnaroundSeconds="60", DeadlineMarginSeconds="600")
    emulator.make_late(1, 7200)
    emulator.lose_create_answers(1)
    ids = [f"ad{i}" for i in range(3)]
    stack.send([request(r, deadline=at(1800)) for r in ids])
    stack.deliver()
    stack.tick()
    [batch_id] = emulator.batch_ids()
    assert [b["status"] for b in items(stack, "batch#").values()] == ["creating"]
    stack.advance(1800 - 600 + 120 + 5)
    stack.tick()  # rescues all three, then adopts the batch the lost answer made
    assert all(i.get("rescued_from") for i in items(stack).values())
    [record] = [b for b in items(stack, "batch#").values() if b.get("route") != "realtime"]
    assert record.get("batch_id") == batch_id, "the batch was not adopted"
    canceled = True
    try:
        wait_for(lambda: emulator.batch(batch_id)["cancel_initiated_at"] is not None, seconds=15)
    except AssertionError:
        canceled = False
    stack.advance(7200)
    stack.settle()
    assert canceled, "an adopted batch holding none of the relay's requests ran to its end"


def test_a_resend_of_a_realtime_request_waits_for_its_retry_after(make_stack, emulator):
    """A 429 hides the realtime message for the API's retry-after (here 10 minutes) and gives up
    the request's lease. The submitter sends a realtime record's held requests again after 3
    minutes; that new message finds the lease free and calls the API long before the retry-after
    it was told to wait."""
    stack = make_stack()
    inbox = stack.subscribe()
    emulator.inject("POST", "/v1/messages", 429, count=1, retry_after=600, route="message")
    stack.send([request("ra", deadline=at(3000))])
    stack.deliver()
    stack.tick()
    assert stack.hidden_for == [600]
    assert emulator.messages_created == []
    stack.advance(200)
    stack.tick()  # the submitter's run, then the realtime queue as Lambda polls it
    assert emulator.messages_created == [], "the API was called again 200 s into a 600 s retry-after"
    stack.advance(401)
    stack.tick()
    assert once(stack, inbox, ["ra"])["ra"]["route"] == "realtime"
    assert len(emulator.messages_created) == 1


def test_a_realtime_try_killed_after_writing_its_answer_does_not_call_the_api_again(make_stack, emulator):
    """The realtime function is killed right after it wrote the answer's outbox (the call was
    made and billed at list price; the item is not written yet). The next try, once the lease
    ends, calls the Messages API a second time instead of answering from what the first wrote."""
    stack = make_stack()
    inbox = stack.subscribe()
    stack.send([request("kr", deadline=at(3000))])
    stack.deliver()
    stack.after = kill_once("RealtimeFunction", "PutObject")
    stack.tick()
    stack.after = None
    assert len(emulator.messages_created) == 1
    got: dict[str, Any] = {}
    for _ in range(8):  # the lease of the killed try lasts as long as its invocation could (900 s)
        stack.advance(300)
        stack.deliver_realtime()
        got |= by_id(stack.drain(inbox))
        if got:
            break
    assert [c["route"] for c in got["kr"]] == ["realtime"]
    assert len(emulator.messages_created) == 1, "one realtime request was billed twice"


def test_a_cancel_that_fails_once_is_tried_again(make_stack, emulator):
    """Every request of a late batch went realtime; the cancel call meets one 500. The check is
    retried, but the rescue schedule is already spent, so the cancel is never sent again and the
    batch runs (and bills) every request the relay already answered in realtime."""
    stack = make_stack(DefaultTurnaroundSeconds="60", DeadlineMarginSeconds="60")
    emulator.make_late(1, 7200)
    ids = [f"cx{i}" for i in range(3)]
    stack.send([request(r, deadline=at(1800)) for r in ids])
    stack.deliver()
    stack.tick()
    [batch_id] = emulator.batch_ids()
    emulator.inject("POST", f"/v1/messages/batches/{batch_id}/cancel", 500, count=1)
    stack.advance(1800 - 60 + 5)
    wait_for(lambda: all(i.get("rescued_from") for i in items(stack).values()))
    canceled = True
    try:
        wait_for(lambda: emulator.batch(batch_id)["cancel_initiated_at"] is not None, seconds=15)
    except AssertionError:
        canceled = False
    stack.advance(7200)
    stack.settle()
    assert canceled, "a batch left with none of its requests was never canceled"


# 2. Deadlines met when they can be


def test_a_rescue_too_large_for_one_check_goes_on_where_it_stopped(make_stack, emulator):
    """Forty deadline requests come due together in a late batch, and moving each takes the check
    a while (every write 5 s on the relay's clock, so one check moves about ten). Each later check
    starts the schedule from the top again, spends its time on the requests already moved, and
    moves none of the rest: they miss their deadline inside the batch."""
    stack = make_stack(DefaultTurnaroundSeconds="60", DeadlineMarginSeconds="600", MaxBatchRequests="100")
    emulator.make_late(1, 7200)
    from batch_relay import clock

    ids = [f"slow{i:02d}" for i in range(40)]
    deadline = clock.now() + 1800
    stack.send([request(r, deadline=clock.iso(deadline)) for r in ids])
    stack.deliver()
    stack.tick()
    [batch_id] = emulator.batch_ids()
    [record] = [b for b in items(stack, "batch#").values() if b.get("batch_id") == batch_id]

    def slow(fn: str, op: str) -> None:
        if fn == "CheckBatchFunction" and op == "UpdateItem":
            stack.advance(5)

    checks = stack.invocations.get("CheckBatchFunction", 0)
    stack.before = slow
    stack.advance(1800 - 600 + 5)

    # Six checks move the clock about 6 x 65 s: still well before the deadline, and enough to
    # move all forty ten at a time.
    def rescued() -> set[str]:
        return {k for k, i in items(stack).items() if i.get("rescued_from") == record["ref"]}

    # (Once all forty are out, the batch is canceled and its poller ends.)
    wait_for(
        lambda: len(rescued()) == len(ids) or stack.invocations.get("CheckBatchFunction", 0) >= checks + 7
    )
    moved = rescued()
    before_deadline = clock.now() < deadline
    stack.before = None
    stack.advance(7200)
    stack.settle()
    assert before_deadline
    assert len(moved) == len(ids), f"only {len(moved)} of {len(ids)} deadline requests were rescued"


def test_a_realtime_try_that_fails_does_not_lock_its_request_past_its_deadline(make_stack, emulator):
    """A realtime try takes a lease on its request for as long as its invocation could last (900 s)
    and only gives it up on a retry-after. Any other failure (here S3 refusing once to read the
    request's line) keeps the lease: every redelivery is hidden again for a minute until the lease
    runs out, 15 minutes on, past a deadline the margin (10 minutes) was meant to protect."""
    stack = make_stack()
    inbox = stack.subscribe()

    stack.send([request("lk", deadline=at(700))])
    stack.deliver()
    stack.before = refuse_once("RealtimeFunction", "GetObject")
    stack.tick()
    stack.before = None
    got: dict[str, Any] = by_id(stack.drain(inbox))
    for _ in range(5):
        if got:
            break
        stack.advance(200)
        stack.deliver_realtime()
        got |= by_id(stack.drain(inbox))
    [completion] = got["lk"]
    assert completion["status"] == "succeeded"
    assert completion["deadline"] and completion["completed_at"] <= completion["deadline"], (
        "one refused S3 read made the request miss its deadline"
    )


def test_a_request_back_from_a_realtime_try_is_not_locked_by_that_try(make_stack, emulator):
    """A realtime try that ends with the request back in its tier (an account problem: no credit)
    writes the item back with the try's lease still on it. The next realtime try, routed at the
    next run once the account works again, finds the old lease and waits it out, 15 minutes, past
    the deadline."""
    stack = make_stack()
    inbox = stack.subscribe()

    emulator.credit = False
    stack.send([request("bk", deadline=at(700))])
    stack.deliver()
    stack.tick()
    item = realtime_item(stack, "bk")
    assert item["status"] == "pending", "the account problem did not put the request back"
    emulator.credit = True
    got: dict[str, Any] = {}
    for _ in range(10):
        stack.advance(120)
        stack.tick()
        got |= by_id(stack.drain(inbox))
        if got:
            break
    [completion] = got["bk"]
    assert completion["status"] == "succeeded"
    assert completion["deadline"] and completion["completed_at"] <= completion["deadline"], (
        "the old try's lease held the request past its deadline"
    )


# 3. The daily budget is never passed by what the relay commits


def test_a_collector_killed_before_its_tallies_gives_back_nothing_the_batch_spent(make_stack, emulator):
    """The collector writes a chunk's items, then adds the chunk's cost to the batch's tallies. Killed
    in between, its retry finds the items answered and adds nothing; at the end the batch gives back
    to the day everything it committed minus the tallied cost, i.e. all of it: what the batch spent
    is no longer counted against the cap."""
    stack = make_stack(DailyBudgetUSD="1")
    to_morning(stack)
    inbox = stack.subscribe()
    ids = [f"tk{i}" for i in range(3)]
    stack.send([request(r) for r in ids])
    stack.deliver()
    stack.after = kill_once("CollectResultsFunction", "BatchWriteItem")
    stack.tick()
    stack.settle()
    stack.after = None
    stack.pump()
    got = once(stack, inbox, ids)
    spent = sum(c["cost"]["batch_usd"] for c in got.values())
    assert spent > 0
    assert committed(stack) >= spent - 1e-9, (
        f"the day counts {committed(stack):.8f} USD committed while its batch spent {spent:.8f}"
    )


def test_a_second_realtime_try_is_committed_to_the_budget(make_stack, emulator):
    """A realtime try commits its upper bound, marks the item with the day, and gives the
    commitment back when the request goes back to its tier (no credit). The item keeps the day, so
    the next realtime try believes it is committed already: it calls the API with nothing committed,
    even when the day's budget is spent."""
    stack = make_stack(DailyBudgetUSD="1")
    to_morning(stack)
    inbox = stack.subscribe()
    emulator.credit = False
    stack.send([request("bb", deadline=at(5000))])
    stack.deliver()
    stack.tick()
    assert realtime_item(stack, "bb")["status"] == "pending"
    assert committed(stack) == pytest.approx(0.0, abs=2e-6)  # whole micro-dollars, rounded against the cap
    # The rest of the day's budget is committed meanwhile (batches of other tiers, say).
    from batch_relay.budget import today

    table(stack).update_item(
        Key={"pk": f"budget#{today()}"},
        UpdateExpression="SET committed_micros = :c",
        ExpressionAttributeValues={":c": Decimal("1000000")},
    )
    emulator.credit = True
    got: dict[str, Any] = {}
    for _ in range(10):
        stack.advance(120)
        stack.tick()
        got |= by_id(stack.drain(inbox))
        if got:
            break
    [completion] = got["bb"]
    assert emulator.messages_created == [], "a realtime call was made past the day's budget"
    assert completion["status"] == "errored" and completion["error"]["type"] == "budget_exceeded"


def test_a_realtime_request_that_writes_the_cache_stays_within_its_commitment(make_stack, emulator):
    """The upper bound of a request is its input tokens at the input price plus max_tokens at the
    output price; tokens written to the prompt cache cost 1.25x the input price. A realtime request
    whose prompt is a cached prefix (its tokens counted exactly by the API) commits less than it
    costs, and its cost alone passes the day's cap."""
    from batch_relay.pricing import bound

    system = [
        {
            "type": "text",
            "text": "Policy: " + "refund rules apply. " * 2000,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    cached = len(system[0]["text"]) // 4  # the emulator's 4 characters a token
    cap = bound(MODEL, cached + 20, 16, batch=False) * 1.05
    stack = make_stack(DailyBudgetUSD=f"{cap:.8f}")
    to_morning(stack)
    inbox = stack.subscribe()
    body = request("cw", text="Which rule applies to a late return?", deadline=at(600))
    body["params"].update(system=system, max_tokens=16)
    stack.send([body])
    stack.pump()
    got = once(stack, inbox, ["cw"])["cw"]
    # Answered within the cap, or refused (budget_exceeded) without a call: either keeps the cap.
    spent = got["cost"]["list_usd"] if got["status"] == "succeeded" else 0.0
    if got["status"] == "succeeded":
        assert got["usage"]["cache_creation_input_tokens"] > 0
    else:
        assert got["error"]["type"] == "budget_exceeded" and emulator.messages_created == []
    assert spent <= cap, f"one request cost {spent:.6f} USD against a daily cap of {cap:.6f}"
    assert committed(stack) >= spent - 1e-9


def test_a_realtime_commitment_is_given_back_to_the_day_it_was_made_on(make_stack, emulator):
    """The realtime function commits to today(), then reads today() again to note the day on the
    item. When midnight falls between the two, the unspent part is given back to the next day,
    which then starts below zero (more than its cap to spend) while the day of the commitment keeps
    it all."""
    from batch_relay.budget import today

    stack = make_stack(DailyBudgetUSD="1")
    to_morning(stack)
    stack.advance(18 * 3600 - 30)  # 23:59:30 UTC
    inbox = stack.subscribe()
    day = today()
    stack.send([request("mn", deadline=at(600))])
    stack.deliver()
    updates: list[str] = []

    def midnight(fn: str, op: str) -> None:
        if fn == "RealtimeFunction" and op == "UpdateItem":
            updates.append(op)
            if len(updates) == 2:  # the lease, then the commitment
                stack.advance(60)

    stack.after = midnight
    stack.tick()
    stack.after = None
    got = once(stack, inbox, ["mn"])["mn"]
    assert today() != day
    assert committed(stack) >= 0, f"the next day starts at {committed(stack):.8f} USD committed"
    assert committed(stack, day) == pytest.approx(got["cost"]["list_usd"], abs=2e-6), (
        "the day of the commitment did not get back what the call did not spend"
    )


# 4. Deadlines met when a batch could make them


def test_a_learned_turnaround_longer_than_the_default_still_batches_in_time(make_stack, emulator):
    """A tier is flushed for a deadline at the moment a batch of the DEFAULT turnaround could still
    make it. When the relay has learned that its batches take longer (4 hours against a 1-hour
    default), that moment is too late: at claim the request is found late and sent realtime at list
    price, although a batch made any time in its first 85 minutes would have made its deadline."""
    stack = make_stack(DefaultTurnaroundSeconds="3600")
    inbox = stack.subscribe()
    emulator.make_late(3, 4 * 3600)
    for n in range(3):
        stack.send([request(f"warm{n}")])
        stack.deliver()
        stack.advance(2)
        stack.tick()
    assert len(emulator.batch_ids()) == 3
    stack.advance(4 * 3600 + 60)
    stack.settle()
    stack.drain(inbox)
    # A bulk request (its tier waits 6 hours) due in 6 hours: batches take 4 h x 1.1 + margins.
    stack.send([request("lt", tier="bulk", deadline=at(6 * 3600))])
    stack.deliver()
    stack.tick()
    stack.advance(4700)  # still 5 minutes before a 4-hour batch could no longer make it
    stack.tick()
    stack.settle()
    stack.pump()
    got = once(stack, inbox, ["lt"])["lt"]
    assert got["route"] == "batch", "a request a batch could have made in time was sent realtime"


# 5. Hostile input


@pytest.mark.parametrize("deadline", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00"])
def test_a_deadline_at_the_edge_of_the_calendar_is_answered(stack, emulator, deadline):
    """Both are RFC 3339 with an offset. The first's flush moment falls before year 1 and the
    second is in year 10000 once in UTC: the buffer fails on them, again at every receive, and the
    message ends in the dead-letter queue without a completion."""
    inbox = stack.subscribe()
    stack.send([request("edge", deadline=deadline), request("fine")])
    stack.pump()
    once(stack, inbox, ["edge", "fine"])
    dlq = stack.physical["RequestDeadLetterQueue"]
    assert stack.sqs.receive_message(QueueUrl=dlq).get("Messages", []) == []


def test_a_deadline_before_year_1000_does_not_stop_the_submitter(stack, emulator):
    """A deadline in the year 1000 gives a flush moment in the year 999, which `clock.iso` writes
    as `999-...` where strftime does not pad years to four digits (glibc under Python 3.11, this
    project's floor). The sort key cannot be parsed back: while that request is the first deadline
    request of its tier, every submitter run fails there and no tier after it is flushed."""
    inbox = stack.subscribe()
    stack.send([request("y1000", deadline="1000-01-01T00:00:00Z"), request("other", tier="standard")])
    stack.pump()
    got = once(stack, inbox, ["y1000", "other"])
    assert got["other"]["status"] == "succeeded"


# 6. Least privilege


def _aws_needs(stack: Any, service: str, operation: str, params: dict[str, Any]) -> list[Any]:
    from tests.integration.test_policies import Need, needs

    if service == "sqs":
        arn = next(stack.arns[n] for n, url in stack.physical.items() if url == params["QueueUrl"])
        action = {"SendMessageBatch": "sqs:SendMessage"}.get(operation, f"sqs:{operation}")
        return [Need(action, arn)]
    return needs(service, operation, params)


def test_the_realtime_function_may_do_what_its_account_problem_path_does(stack, emulator):
    """A realtime answer that shows an account problem holds its tier (`hold#<tier>`), as a batch's
    does; the realtime role's table grant names only req#, batch# and budget# items, so in AWS the
    hold is refused and the invocation fails after writing the request back."""
    from tests.integration.test_policies import Recorder, allows, statements

    with Recorder(stack) as recorder:
        emulator.credit = False
        stack.send([request("np", deadline=at(600))])
        stack.deliver()
        stack.tick()
        emulator.credit = True
    calls = [c for c in recorder.calls if c[0] == "RealtimeFunction"]
    assert calls, "the realtime function made no AWS call"
    granted = statements(stack, "RealtimeFunction")
    denied = [
        f"{need.action} {need.leading_keys or need.resource}"
        for _, service, operation, params in calls
        for need in _aws_needs(stack, service, operation, params)
        if not any(allows(s, need) for s in granted)
    ]
    assert denied == []


def test_the_check_step_can_neither_replace_nor_delete_request_items(stack):
    """The check step moves a request to realtime with one conditional UpdateItem; its role lists
    Get/Put/Update/DeleteItem against every key prefix it touches, so it may also read, overwrite
    and delete any request item (and delete batch records and turnaround samples)."""
    from tests.integration.test_policies import Need, allows, statements

    table_arn = stack.arns["RequestTable"]
    granted = statements(stack, "CheckBatchFunction")
    assert any(allows(s, Need("dynamodb:UpdateItem", table_arn, ("req#1",))) for s in granted)
    never_used = [
        ("dynamodb:GetItem", "req#1"),
        ("dynamodb:PutItem", "req#1"),
        ("dynamodb:DeleteItem", "req#1"),
        ("dynamodb:DeleteItem", "batch#1"),
        ("dynamodb:GetItem", "turn#m#b"),
        ("dynamodb:DeleteItem", "turn#m#b"),
    ]
    excess = [
        f"{action} {key}"
        for action, key in never_used
        if any(allows(s, Need(action, table_arn, (key,))) for s in granted)
    ]
    assert excess == []
