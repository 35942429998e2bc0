"""The deadline features under chosen faults, deterministically: the realtime function killed on
either side of settling an answer, a realtime message delivered twice at once, a rescue whose
check dies half-way, a rescue that would race a collect, and transient failures that should cost
a request its retry, not its deadline.

`stack.before(function, operation)` runs before each AWS call a function makes (raising there
refuses the call, or kills the function before the call acts); `stack.after` runs once the call
has acted (raising `FunctionKilled` there is a function that died right after it).
"""

from __future__ import annotations

import json
import threading

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.helpers import by_id, request
from tests.integration.test_deadlines import at, items, once, wait_for

pytestmark = pytest.mark.integration

# The realtime function's timeout (template.yaml): how long a lease of a dead invocation lasts.
REALTIME_TIMEOUT_SECONDS = 900


def refused(operation: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "ThrottlingException", "Message": "injected"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        operation,
    )


class Once:
    """Fail one call, once: the first `operation` of `function` (after `after_op` acted in the same
    invocation, when given), refused or killed before it acts, or killed right after it acted.

    A killed invocation stays dead: the AWS calls its `finally` clauses would still make (Python
    runs them as `FunctionKilled` unwinds) are killed before they act, as nothing runs in a Lambda
    that died."""

    def __init__(self, function: str, operation: str, how: str, after_op: str | None = None, on_fire=None):
        self.function, self.operation, self.how, self.after_op = function, operation, how, after_op
        self.on_fire = on_fire
        self.fired = threading.Event()
        self._armed: set[int] = set()
        self._dead: set[int] = set()
        self._lock = threading.Lock()

    def _hit(self, function: str, operation: str) -> bool:
        from relay_local.stack import current_call

        invocation, _ = current_call()
        with self._lock:
            if self.fired.is_set() or function != self.function:
                return False
            if self.after_op is not None and invocation not in self._armed:
                return False
            if operation != self.operation:
                return False
            self.fired.set()
            if self.how != "refuse":
                self._dead.add(invocation)
        if self.on_fire is not None:
            self.on_fire()
        return True

    def _arm(self, function: str, operation: str) -> None:
        from relay_local.stack import current_call

        if function == self.function and operation == self.after_op:
            with self._lock:
                self._armed.add(current_call()[0])

    def before(self, function: str, operation: str) -> None:
        from batch_relay.errors import FunctionKilled
        from relay_local.stack import current_call

        if current_call()[0] in self._dead:
            raise FunctionKilled(f"{function} is dead")
        if self.how in ("refuse", "kill before") and self._hit(function, operation):
            if self.how == "refuse":
                raise refused(operation)
            raise FunctionKilled(f"{function} killed before {operation}")

    def after(self, function: str, operation: str) -> None:
        from batch_relay.errors import FunctionKilled

        if self.how == "kill after" and self._hit(function, operation):
            raise FunctionKilled(f"{function} killed right after {operation} acted")
        self._arm(function, operation)


def install(stack, hook: Once) -> None:
    stack.before, stack.after = hook.before, hook.after


def realtime_at_claim(stack, rid: str, seconds: float = 1800) -> None:
    """One request whose deadline no batch can make (the default turnaround is 2 hours), claimed
    and sent to the realtime queue."""
    stack.send([request(rid, deadline=at(seconds))])
    stack.deliver()
    stack.polls_realtime = False  # the test delivers the realtime queue itself
    stack.tick()


def answered(stack, inbox, rid):
    return by_id(stack.drain(inbox)).get(rid, [])


# the realtime function killed around an answer


@pytest.mark.xfail(
    reason="its fault hooks predate the kept answer and the conditional settle; to be redone", strict=False
)
def test_killed_after_the_api_answered_and_before_settling_the_request_is_answered_once(stack, emulator):
    """The answer the dead invocation got is lost with it. Its lease on the request keeps every
    delivery off (each is put back for a minute) until the invocation would have timed out: here
    the local stack's, which returns a failed message at once; in AWS the submitter's resends of
    a realtime record's waiting requests meet it the same way. Then the request is asked of the
    API again. One completion, but two calls billed: the one case where a realtime request is
    paid twice, had the first try not kept its answer before settling it: it did, so it is not."""
    from batch_relay import clock

    inbox = stack.subscribe()
    realtime_at_claim(stack, "k1")
    # Killed at its first AWS call after the Messages API call: reading the items to settle.
    kill = Once("RealtimeFunction", "BatchGetItem", "kill before")
    install(stack, kill)
    start = clock.now()
    stack.deliver_realtime()
    assert kill.fired.is_set()
    assert len(emulator.messages_created) == 1
    assert answered(stack, inbox, "k1") == []
    assert stack.hidden_for and set(stack.hidden_for) == {60}, "the redelivery was not put off by the lease"
    stack.advance(61)
    stack.deliver_realtime()
    assert len(emulator.messages_created) == 1, "called again while the lease held"
    assert answered(stack, inbox, "k1") == []
    # Once the dead invocation would have timed out, its lease is over.
    stack.advance(REALTIME_TIMEOUT_SECONDS)
    stack.deliver_realtime()
    [c] = answered(stack, inbox, "k1")
    assert c["route"] == "realtime" and c["status"] == "succeeded" and c["batch_id"] is None
    assert clock.parse(c["completed_at"]) - start >= REALTIME_TIMEOUT_SECONDS - 60
    # No second call: the first try kept its answer (answers/) before it died.
    assert len(emulator.messages_created) == 1
    stack.pump()
    assert answered(stack, inbox, "k1") == []


@pytest.mark.xfail(
    reason="its fault hooks predate the kept answer and the conditional settle; to be redone", strict=False
)
def test_killed_after_settling_and_before_publishing_the_redelivery_publishes_the_outbox(stack, emulator):
    """The answer is on the item and in the outbox: a redelivery (later) publishes exactly what
    was settled, without calling the API again or settling afresh."""
    from batch_relay import clock

    inbox = stack.subscribe()
    realtime_at_claim(stack, "k2")
    # Killed right after the items were written (the outbox named on them), before the publish;
    # the message comes back 30 s later.
    kill = Once("RealtimeFunction", "PutItem", "kill after", on_fire=lambda: stack.advance(30))
    install(stack, kill)
    stack.deliver_realtime()
    assert kill.fired.is_set()
    [c] = once(stack, inbox, ["k2"]).values()
    item = items(stack)["req#k2"]
    assert item["status"] == "succeeded" and item["outbox"].startswith("outbox/")
    assert c["completed_at"] == item["completed_at"], "settled afresh on redelivery"
    assert clock.parse(c["completed_at"]) < clock.now() - 29
    # Byte for byte what the outbox holds.
    bucket = stack.physical["PayloadBucket"]
    box = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=item["outbox"])["Body"].read())
    [entry] = [e for group in box for e in group if e["id"] == "k2"]
    c.pop("_attributes", None)
    assert json.loads(entry["body"]) == c
    assert len(emulator.messages_created) == 1
    stack.pump()
    assert answered(stack, inbox, "k2") == []


@pytest.mark.xfail(
    reason="its fault hooks predate the kept answer and the conditional settle; to be redone", strict=False
)
def test_a_realtime_message_delivered_twice_at_once_is_answered_once(stack, emulator):
    """Two deliveries of one request run together: the second finds the first's lease, goes back to
    the queue for a minute, and once back finds the request answered."""
    from batch_relay.handoff import Handoff
    from batch_relay.payloads import Payloads
    from batch_relay.settings import settings
    from batch_relay.store import Store
    from relay_local.stack import sqs_record

    inbox = stack.subscribe()
    realtime_at_claim(stack, "k3")
    [record] = [b for b in items(stack, "batch#").values() if b.get("status") == "realtime"]
    config = settings()
    Handoff(config, Store(config.table_name), Payloads(config.bucket_name)).dispatch(record, ["k3"])
    url, arn = stack.queue_url("RealtimeQueue"), stack.arns["RealtimeQueue"]
    got = stack.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
    assert len(got) == 2
    for m in got:
        stack._receipts[m["ReceiptHandle"]] = m["MessageId"]
    emulator.realtime_seconds = 1.0  # the first call is under way while the second delivery runs
    first = threading.Thread(
        target=stack.invoke, args=("RealtimeFunction", {"Records": [sqs_record(got[0], arn)]})
    )
    first.start()
    wait_for(lambda: emulator.calls[("POST", "message")] >= 1)
    second = stack.invoke("RealtimeFunction", {"Records": [sqs_record(got[1], arn)]})
    assert second == {"batchItemFailures": [{"itemIdentifier": got[1]["MessageId"]}]}
    first.join()
    emulator.realtime_seconds = 0.0
    assert stack.hidden_for == [60]
    stack.sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
    stack.sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=got[1]["ReceiptHandle"], VisibilityTimeout=0
    )
    stack.advance(61)
    stack.deliver_realtime()
    assert once(stack, inbox, ["k3"])["k3"]["route"] == "realtime"
    assert len(emulator.messages_created) == 1


# a rescue whose check dies half-way, and one that would race a collect


def test_a_check_killed_mid_rescue_leaves_its_requests_to_the_realtime_records_recovery(make_stack, emulator):
    """The check dies after moving one of three requests to a realtime record and before sending
    any message. The moved request is sent again by the submitter once its record has waited
    RESEND_SECONDS; the others are rescued once the dead check's collect lease runs out; every
    deadline is met, each request answered once."""
    # A realtime call starts 10 minutes before a deadline; batches are assumed to take a minute.
    stack = make_stack(DefaultTurnaroundSeconds="60", DeadlineMarginSeconds="600")
    from batch_relay import clock
    from batch_relay.poller import LEASE_MARGIN_SECONDS
    from batch_relay.submitter import RESEND_SECONDS

    inbox = stack.subscribe()
    emulator.make_late(1, 7200)
    due = [f"mr{i}" for i in range(3)]
    stack.send([request(r, deadline=at(3600)) for r in due] + [request("mr-free")])
    stack.deliver()
    kill = Once("CheckBatchFunction", "UpdateItem", "kill after", after_op="PutObject")
    install(stack, kill)
    stack.tick()
    [batch_id] = emulator.batch_ids()
    [batch] = [b for b in items(stack, "batch#").values() if b.get("batch_id") == batch_id]
    stack.advance(3600 - 600 + 5)
    killed_at = clock.now()
    kill.fired.wait(30)
    assert kill.fired.is_set(), "no rescue was attempted"
    held = {k: v for k, v in items(stack).items() if v.get("rescued_from") == batch["ref"]}
    assert len(held) == 1, "the kill was not between two moves"
    [moved] = [v["request_id"] for v in held.values()]
    stack.deliver_realtime()
    assert emulator.messages_created == [], "a message was sent before the rescue finished"
    # The submitter sends the moved request once its realtime record has waited RESEND_SECONDS.
    stack.advance(RESEND_SECONDS + 1)
    stack.tick()
    stack.deliver_realtime()
    assert len(emulator.messages_created) == 1, "the realtime record's recovery did not send it"
    first = once(stack, inbox, [moved])[moved]
    assert first["route"] == "realtime" and first["completed_at"] <= first["deadline"]
    # The dead check's collect lease runs out; a check rescues the other two.
    stack.advance(max(0.0, killed_at + 5 * LEASE_MARGIN_SECONDS - clock.now()) + 5)
    wait_for(lambda: stack.deliver_realtime() and len(emulator.messages_created) == 3)
    rest = once(stack, inbox, [r for r in due if r != moved])
    for c in rest.values():
        assert c["route"] == "realtime" and c["batch_id"] is None and c["completed_at"] <= c["deadline"]
    # The late batch ends: only the request it still holds is answered from it.
    stack.advance(7200)
    stack.pump()
    assert once(stack, inbox, ["mr-free"])["mr-free"]["route"] == "batch"
    assert len(emulator.messages_created) == 3
    assert stack.open_work() == {"pending": 0, "live_batches": 0, "running": 0}


def test_a_rescue_due_while_the_batch_is_being_collected_waits_for_the_collect(make_stack, emulator):
    """A batch has ended at the API but its record still says polling (its check is stuck) and its
    rescue is overdue, while a collector (a restarted poller's) settles its results. The
    submitter's overdue rescue finds the collect lease taken and leaves the batch alone: every
    request is answered once, by the batch, and nothing goes realtime."""
    stack = make_stack(DefaultTurnaroundSeconds="60", DeadlineMarginSeconds="60")
    inbox = stack.subscribe()
    emulator.make_late(1, 600)
    ids = [f"cl{i}" for i in range(3)]
    stack.send([request(r, deadline=at(1800)) for r in ids])
    stack.deliver()
    checks, collecting, go = threading.Event(), threading.Event(), threading.Event()

    def before(function: str, operation: str) -> None:
        if function == "CheckBatchFunction":
            checks.wait(120)  # the batch's own poller is stuck
        if function == "CollectResultsFunction" and operation == "BatchWriteItem":
            collecting.set()
            go.wait(120)

    stack.before = before
    stack.tick()
    [batch_id] = emulator.batch_ids()
    [batch] = [b for b in items(stack, "batch#").values() if b.get("batch_id") == batch_id]
    assert batch["status"] == "polling" and float(batch["rescue_at"]) > 0
    # The batch has ended at the API; the rescue is overdue, past the submitter's grace.
    stack.advance(1800 - 60 + 125)
    collector = threading.Thread(
        target=stack.invoke,
        args=("CollectResultsFunction", {"batch_id": batch_id, "ref": batch["ref"], "cursor": 0}),
    )
    collector.start()
    assert collecting.wait(30), "the collector did not get to settling"
    stack.tick()
    assert not [b for b in items(stack, "batch#").values() if b.get("status") == "realtime"]
    assert all(items(stack)[f"req#{r}"].get("batch_ref") == batch["ref"] for r in ids)
    go.set()
    collector.join(30)
    checks.set()
    stack.settle()
    stack.tick()
    stack.deliver_realtime()
    got = once(stack, inbox, ids)
    assert {c["route"] for c in got.values()} == {"batch"}
    assert {c["batch_id"] for c in got.values()} == {batch_id}
    assert emulator.messages_created == []
    assert stack.open_work() == {"pending": 0, "live_batches": 0, "running": 0}


# transient failures that cost a request its deadline (bugs: these fail)


def test_bug_a_refused_read_in_the_realtime_function_puts_its_request_off_for_fifteen_minutes(
    stack, emulator
):
    """BUG: one refused AWS call in the realtime function after it took the request's lease (here
    the read of the request's body, before any API call) fails the invocation as it is: the
    message comes back only after the queue's 16-minute visibility timeout, and the lease, never
    given back, would put off any delivery before it runs out with the function's timeout
    (15 minutes). A request due in 10 minutes misses its deadline for one throttled read, where a
    429 from the API is retried after its retry-after. (Delivered here as Lambda does, on the
    relay's clock: `chaos.RealtimeDelivery`.)"""
    from batch_relay import clock
    from relay_local.chaos import RealtimeDelivery

    inbox = stack.subscribe()
    realtime_at_claim(stack, "tb1", seconds=600)
    install(stack, Once("RealtimeFunction", "GetObject", "refuse"))
    queue = RealtimeDelivery(stack)
    deadline = clock.now() + 600
    queue.deliver()
    failed_at = clock.now()
    back = min(queue.returns(failed_at), default=failed_at) - failed_at
    lease = float(items(stack)["req#tb1"].get("rt_until", failed_at)) - failed_at
    got = answered(stack, inbox, "tb1")
    while not got and clock.now() + 30 < deadline:
        stack.advance(30)
        queue.deliver()
        got = answered(stack, inbox, "tb1")
    assert got, (
        f"not answered by its deadline: the failed message comes back in {back:.0f} s "
        f"and the failed invocation's lease is held for {lease:.0f} s"
    )
    [c] = got
    assert c["route"] == "realtime" and c["completed_at"] <= c["deadline"]


def test_a_claim_that_failed_gives_its_requests_back_to_the_next_run(make_stack, emulator):
    """A submitter run that fails (an exception, not a death) after claiming requests, before its
    record says `uploaded`, leaves them claimed by a `claiming` record. The next run holds the
    lease, which proves that run is over: it releases them at once, rather than after the 15
    minutes a record of unknown run is given, in which no rescue could take them (the record has
    no `rescue_at` yet). A request due in 15 minutes, which a batch can answer in 2, makes it."""
    stack = make_stack(DefaultTurnaroundSeconds="60", DeadlineMarginSeconds="60")
    from batch_relay import clock

    inbox = stack.subscribe()
    stack.send([request("cf1", deadline=at(900))])
    stack.deliver()
    # The claim's input upload is refused, after the request was claimed.
    install(stack, Once("SubmitterFunction", "PutObject", "refuse", after_op="BatchWriteItem"))
    with pytest.raises(Exception, match=r"PutObject|Throttling|injected"):
        stack.tick()
    assert items(stack)["req#cf1"]["status"] == "claimed"
    deadline = clock.now() + 900
    got: list = []
    while not got and clock.now() < deadline + 900:
        stack.advance(60)
        stack.tick()
        stack.settle()
        stack.deliver_realtime()
        got = answered(stack, inbox, "cf1")
    [c] = got
    assert c["completed_at"] <= c["deadline"], (
        f"answered {clock.parse(c['completed_at']) - deadline:.0f} s after its deadline "
        f"({c['route']}); held by a dead claim"
    )


@pytest.mark.xfail(reason="known, open: see this test's docstring", strict=False)
def test_bug_stack_realtime_delivery_survives_a_message_moving_to_the_dead_letter_queue(stack, emulator):
    """BUG (local stack, not the relay): `deliver_realtime` keeps the receipt handle of a message
    the function hid for a retry-after and, as the function's hide is made immediate, receives it
    again in the same delivery; on its 20th receive SQS moves it to the dead-letter queue, and the
    delivery ends with ReceiptHandleIsInvalid when it puts the kept handle back, leaving any other
    waiting message hidden for the queue's real 16 minutes. It also receives (and so counts
    towards the dead-letter queue) a hidden message on every delivery, which SQS would not."""
    inbox = stack.subscribe()
    realtime_at_claim(stack, "dl1", seconds=3600)
    # A 429 hides the message for two minutes: this delivery receives it twice (it is invoked,
    # then found hidden), the next seventeen once each. Its twentieth receive is then the one
    # right after the next invocation, in the same delivery, and SQS moves it to the dead letters.
    emulator.inject("POST", "/v1/messages", 429, count=2, retry_after=120, route="message")
    stack.deliver_realtime()
    for _ in range(17):
        stack.deliver_realtime()
    stack.advance(121)
    stack.deliver_realtime()
    dead = stack.sqs.get_queue_attributes(
        QueueUrl=stack.queue_url("RealtimeDeadLetterQueue"), AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"]
    assert dead == "1"
    assert answered(stack, inbox, "dl1") == []


def test_a_refused_release_of_the_submitter_lease_is_tried_again(stack, emulator):
    """A submitter run gives its lease back as it ends; were one refused call (a throttle the SDK's
    retries did not absorb) to leave it, the lease would stay until the run could have ended (its
    15-minute timeout, plus a minute), and every run meanwhile would do nothing. The release is
    tried again: a request due in 10 minutes is sent realtime by the next run. (A killed run keeps
    the lease so, as it must.)"""
    from batch_relay import clock

    inbox = stack.subscribe()
    release = Once("SubmitterFunction", "DeleteItem", "refuse")
    install(stack, release)
    assert not stack.tick().get("skipped")  # nothing to do; its lease's release is refused once
    assert release.fired.is_set()
    stack.send([request("ul1", deadline=at(600))])
    stack.deliver()
    deadline = clock.now() + 600
    got: list = []
    skipped = 0
    while not got and clock.now() + 60 < deadline:
        stack.advance(60)
        skipped += bool(stack.tick().get("skipped"))
        stack.deliver_realtime()
        got = answered(stack, inbox, "ul1")
    assert got, f"not answered by its deadline: {skipped} submitter runs found the lease held"
    [c] = got
    assert c["route"] == "realtime" and c["completed_at"] <= c["deadline"]


def test_a_request_back_in_its_tier_gets_its_realtime_tries_afresh(stack, emulator):
    """A realtime request the API kept answering 529 is errored after its eighth try, and, that
    being retryable, goes back to its tier with attempts left; its deadline still near, the next
    run sends it realtime again, under a new record. That record's tries count from one: had the
    first record's count stayed on the item, each later record would get a single call before
    erroring, and the request would be answered `errored` after ten calls, attempts spent, though
    the API answers the eleventh."""
    from batch_relay import clock
    from batch_relay.realtime import MAX_TRIES

    inbox = stack.subscribe()
    emulator.inject("POST", "/v1/messages", 529, count=MAX_TRIES + 2, retry_after=30, route="message")
    stack.send([request("rt1", deadline=at(3600))])
    stack.deliver()
    deadline = clock.now() + 3600
    got: list = []
    while not got and clock.now() < deadline:
        stack.tick()  # sends it realtime when it is in its tier, and delivers the realtime queue
        stack.advance(31)
        got = answered(stack, inbox, "rt1")
    [c] = got
    calls = emulator.calls[("POST", "message")]
    assert calls == MAX_TRIES + 3, f"{calls} calls"
    assert c["status"] == "succeeded", c.get("error")
    assert c["route"] == "realtime" and c["attempts"] == 2 and c["completed_at"] <= c["deadline"]
