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

from tests.helpers import (
    Once,
    RefuseInTurn,
    answered,
    answered_in_time,
    at,
    by_id,
    install,
    items,
    once,
    records,
    request,
    wait_for,
)

pytestmark = pytest.mark.integration

# The realtime function's timeout (template.yaml): how long a lease of a dead invocation lasts.
REALTIME_TIMEOUT_SECONDS = 900


def realtime_at_claim(stack, rid: str, seconds: float = 1800) -> None:
    """One request whose deadline no batch can make (the default turnaround is 2 hours), claimed
    and sent to the realtime queue."""
    stack.send([request(rid, deadline=at(seconds))])
    stack.deliver()
    stack.polls_realtime = False  # the test delivers the realtime queue itself
    stack.tick()
    assert queued(stack) == 1, "the realtime message was not held back for the test to deliver"


# the realtime function killed around an answer


def realtime_ref(stack) -> str:
    """The ref of the one realtime record: the `batch#<ref>` standing for the request's batch."""
    [record] = [b for b in items(stack, "batch#").values() if b.get("route") == "realtime"]
    return record["ref"]


def stored(stack, prefix: str) -> dict[str, bytes]:
    """The payload bucket's objects under `prefix`, by key."""
    s3, bucket = boto3.client("s3"), stack.physical["PayloadBucket"]
    found = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in found}


def queued(stack, queue: str = "RealtimeQueue") -> int:
    """Messages on a queue, visible or not."""
    attrs = stack.sqs.get_queue_attributes(
        QueueUrl=stack.queue_url(queue),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


# Where the first try dies once the Messages API has answered it, in the order it gets there:
# (the operation, killed before or after it acts, whether the answer was kept by then).
AFTER_THE_ANSWER = {
    # Before the answer is kept (its PutObject of answers/<ref>/<rid>.json).
    "before keeping it": ("PutObject", "kill before", False),
    # The answer kept, not yet named on the item (`rt_answer`): the next try lists answers/.
    "once kept": ("PutObject", "kill after", True),
    # Kept and named, before the settle's first call (its read of the items, BatchGetItem).
    "once named on the item": ("BatchGetItem", "kill before", True),
}


@pytest.mark.parametrize("where", list(AFTER_THE_ANSWER))
def test_killed_after_the_api_answered_and_before_settling_the_request_is_answered_once(
    stack, emulator, where
):
    """The first try dies after the Messages API answered it, before it settled the answer. A
    dead invocation runs nothing more: it neither hides its message for FAILED_AGAIN_SECONDS nor
    gives its lease back, which lasts until the invocation would have timed out (`rt_until`, the
    function's 15 minutes). In AWS its message comes back after the queue's visibility timeout
    (16 minutes), past the lease; the local stack returns it at its next delivery, as a resend by
    the submitter would come. Each delivery meets the lease and is put off for a minute (60 s,
    another invocation holding the request), without calling the API, until the lease has run
    out. Then the next try settles it: from the answer the dead try kept (answers/<ref>/<rid>.json),
    without a second call, once it was kept. If the try died before keeping it, the call's outcome
    is unknown to the next try (the item says a call was sent, `rt_called`): it is settled
    `api_error`, and the request is sent again only as a new attempt, which its completion counts.
    One completion either way."""
    from batch_relay import clock

    operation, how, kept = AFTER_THE_ANSWER[where]
    inbox = stack.subscribe()
    realtime_at_claim(stack, "k1")
    ref = realtime_ref(stack)
    answer_key = f"answers/{ref}/k1.json"
    kill = Once("RealtimeFunction", operation, how)
    install(stack, kill)
    start = clock.now()
    assert stack.deliver_realtime() == {"delivered": 0, "failed": 1, "waiting": 0}
    assert kill.fired.is_set()
    assert len(emulator.messages_created) == 1
    item = items(stack)["req#k1"]
    assert item["status"] == "claimed" and item["batch_ref"] == ref and item.get("rt_holder")
    assert "outbox" not in item and stored(stack, f"outbox/{ref}/") == {}, "settled before the kill"
    # The answer kept (and named) exactly as far as the try got before it died.
    kept_answers = stored(stack, answer_key)
    assert set(kept_answers) == ({answer_key} if kept else set())
    assert item.get("rt_answer") == (answer_key if operation == "BatchGetItem" else None)
    lease_end = float(item["rt_until"])
    assert abs(lease_end - (start + REALTIME_TIMEOUT_SECONDS)) < 30
    assert answered(stack, inbox, "k1") == []

    # Back at the next delivery, the lease held: put off for a minute, the API not called.
    assert stack.deliver_realtime() == {"delivered": 0, "failed": 1, "waiting": 1}
    assert stack.hidden_for == [60], "the redelivery was not put off by the lease"
    stack.advance(61)
    stack.deliver_realtime()
    assert stack.hidden_for == [60, 60]
    # Still held five seconds before it ends.
    stack.advance(lease_end - 5 - clock.now())
    stack.deliver_realtime()
    assert stack.hidden_for == [60, 60, 60]
    assert len(emulator.messages_created) == 1, "called again while the lease held"
    assert answered(stack, inbox, "k1") == []

    # A minute on, the lease is over: the next try answers it.
    stack.advance(61)
    assert stack.deliver_realtime() == {"delivered": 1, "failed": 0, "waiting": 0}
    if not kept:
        # The dead try's call may have run (it did, and was billed): not sent again within this
        # attempt. The request goes back to its tier and a new attempt, which its completion
        # counts, answers it.
        assert answered(stack, inbox, "k1") == [] and len(emulator.messages_created) == 1
        assert items(stack)["req#k1"]["status"] == "pending"
        stack.tick()
        assert stack.deliver_realtime() == {"delivered": 1, "failed": 0, "waiting": 0}
    [c] = answered(stack, inbox, "k1")
    assert c["route"] == "realtime" and c["status"] == "succeeded" and c["batch_id"] is None
    assert clock.parse(c["completed_at"]) >= lease_end
    if kept:
        # No second call: settled from the answer the dead try kept.
        assert len(emulator.messages_created) == 1, "a kept answer was paid for twice"
        assert c["message"] == json.loads(kept_answers[answer_key])["message"]
        assert c["attempts"] == 1
    else:
        assert len(emulator.messages_created) == 2 and c["attempts"] == 2, "a call billed uncounted"
    assert queued(stack) == 0
    stack.pump()
    assert answered(stack, inbox, "k1") == []
    assert stack.open_work() == {"pending": 0, "live_batches": 0, "running": 0}


def test_killed_after_settling_and_before_publishing_the_redelivery_publishes_the_outbox(stack, emulator):
    """The first try dies right after the settle's conditional put of the request's item (a
    PutItem: the answer on it, the outbox named, its lease gone with it), before the publish. The
    redelivery (here the local stack's next delivery, 30 s later; in AWS after the queue's
    visibility timeout) finds the request no longer held by its realtime record and publishes what
    the outbox holds, byte for byte: not put off (there is no lease to wait for), no second call to
    the API, not settled afresh."""
    from batch_relay import clock

    inbox = stack.subscribe()
    realtime_at_claim(stack, "k2")
    ref = realtime_ref(stack)
    kill = Once("RealtimeFunction", "PutItem", "kill after")
    install(stack, kill)
    assert stack.deliver_realtime() == {"delivered": 0, "failed": 1, "waiting": 0}
    assert kill.fired.is_set()
    item = items(stack)["req#k2"]
    assert item["status"] == "succeeded" and item["outbox"].startswith(f"outbox/{ref}/")
    assert "batch_ref" not in item and "rt_holder" not in item and "rt_until" not in item
    assert set(stored(stack, f"outbox/{ref}/")) == {item["outbox"]}, "published before the kill"
    assert stack.drain(inbox) == []

    stack.advance(30)
    assert stack.deliver_realtime() == {"delivered": 1, "failed": 0, "waiting": 0}
    assert stack.hidden_for == [], "the redelivery was put off"
    got = stack.sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
    published_now = got.get("Messages", [])
    assert len(published_now) == 1, f"the redelivery published {len(published_now)} completions"
    [published] = published_now
    [[entry]] = json.loads(stored(stack, item["outbox"])[item["outbox"]])
    assert entry["id"] == "k2"
    # Byte for byte what the outbox holds, its attributes too.
    assert published["Body"] == entry["body"]
    assert {k: v["StringValue"] for k, v in published["MessageAttributes"].items()} == {
        k: v["StringValue"] for k, v in entry["attributes"].items()
    }
    c = json.loads(published["Body"])
    assert c["completed_at"] == item["completed_at"], "settled afresh on redelivery"
    assert clock.parse(c["completed_at"]) < clock.now() - 29
    assert f"{item['outbox']}.sent.0" in stored(stack, f"outbox/{ref}/"), "the publish was not marked"
    assert items(stack)["req#k2"] == item
    assert len(emulator.messages_created) == 1
    stack.sqs.delete_message(QueueUrl=inbox, ReceiptHandle=published["ReceiptHandle"])
    assert queued(stack) == 0
    stack.pump()
    assert answered(stack, inbox, "k2") == []
    assert stack.open_work() == {"pending": 0, "live_batches": 0, "running": 0}


def test_a_realtime_message_delivered_twice_at_once_is_answered_once(stack, emulator):
    """Two messages of one request (the submitter's resend beside the first) delivered together:
    the first takes the request's lease and is held there, about to read the request and call
    the API. The second finds the lease taken, leaves it as it is and goes back to the queue for a
    minute (60 s). The first answers; the second, back a minute later, finds the request answered
    and only acks. One API call, one completion."""
    from batch_relay.errors import FunctionKilled
    from batch_relay.handoff import Handoff
    from batch_relay.payloads import Payloads
    from batch_relay.settings import settings
    from batch_relay.store import Store
    from relay_local.stack import current_call, sqs_record

    inbox = stack.subscribe()
    realtime_at_claim(stack, "k3")
    [record] = [b for b in records(stack) if b.status == "realtime"]
    config = settings()
    Handoff(config, Store(config.table_name), Payloads(config.bucket_name)).dispatch(record, ["k3"])
    url, arn = stack.queue_url("RealtimeQueue"), stack.arns["RealtimeQueue"]
    got = stack.sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], VisibilityTimeout=43_200
    )["Messages"]
    assert len(got) == 2
    for m in got:
        stack.receipts[m["ReceiptHandle"]] = m["MessageId"]  # its hides on the relay's clock

    # Each invocation that gets as far as reading the request's body (after the lease, before the
    # call); the first is held there until the second has run.
    reading: list[int] = []
    held, go = threading.Event(), threading.Event()

    def before(function: str, operation: str) -> None:
        if function == "RealtimeFunction" and operation == "GetObject":
            reading.append(current_call()[0])
            if len(reading) == 1:
                held.set()
                if not go.wait(60):
                    raise FunctionKilled("never let go")

    stack.before = before
    answers: list = []
    first = threading.Thread(
        target=lambda: answers.append(
            stack.invoke("RealtimeFunction", {"Records": [sqs_record(got[0], arn)]})
        )
    )
    first.start()
    assert held.wait(30), "the first delivery did not get to its call"
    lease = items(stack)["req#k3"]
    assert lease.get("rt_holder") and int(lease["rt_tries"]) == 1
    second = stack.invoke("RealtimeFunction", {"Records": [sqs_record(got[1], arn)]})
    assert second == {"batchItemFailures": [{"itemIdentifier": got[1]["MessageId"]}]}
    assert stack.hidden_for == [60]
    assert len(reading) == 1, "the second delivery went on past the first's lease"
    after = items(stack)["req#k3"]
    assert (after["rt_holder"], after["rt_until"], after["rt_tries"]) == (
        lease["rt_holder"],
        lease["rt_until"],
        lease["rt_tries"],
    ), "the second delivery changed the first's lease"
    go.set()
    first.join(30)
    # (It returned; what it returned is not looked at: both invocations ran in one process here,
    # sharing the handler's batch processor, so its failures list has the second's too.)
    assert len(answers) == 1
    # As Lambda does: the first's message deleted, the second's back when its minute is over.
    stack.sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
    stack.parked[got[1]["MessageId"]] = got[1]["ReceiptHandle"]
    first_answer = once(stack, inbox, ["k3"])["k3"]
    assert first_answer["route"] == "realtime" and first_answer["status"] == "succeeded"
    assert stack.deliver_realtime() == {"delivered": 0, "failed": 0, "waiting": 1}
    stack.advance(61)
    assert stack.deliver_realtime() == {"delivered": 1, "failed": 0, "waiting": 0}
    assert answered(stack, inbox, "k3") == []
    assert len(emulator.messages_created) == 1
    assert emulator.calls[("POST", "message")] == 1
    assert len(reading) == 1
    assert queued(stack) == 0


# a rescue whose check dies half-way, and one that would race a collect


def test_a_check_killed_mid_rescue_leaves_its_requests_to_the_realtime_records_recovery(late_batch, emulator):
    """The check dies after moving one of three requests to a realtime record and before sending
    any message. The moved request is sent again by the submitter once its record has waited
    RESEND_SECONDS; the others are rescued by a later check, the dead check's collect lease having
    lasted no longer than it could have run; every deadline is met, each request answered once."""
    from batch_relay import clock
    from batch_relay.submitter import RESEND_SECONDS

    due = [f"mr{i}" for i in range(3)]
    kill = Once("CheckBatchFunction", "UpdateItem", "kill after", after_op="PutObject")
    # A realtime call starts 10 minutes before a deadline.
    late = late_batch(due, ["mr-free"], deadline=3600, margin=600, before_tick=lambda s: install(s, kill))
    stack, inbox, batch = late.stack, late.inbox, late.record
    stack.advance(3600 - 600 + 5)
    kill.fired.wait(30)
    assert kill.fired.is_set(), "no rescue was attempted"
    held = {k: v for k, v in items(stack).items() if v.get("rescued_from") == batch["ref"]}
    assert len(held) == 1, "the kill was not between two moves"
    [moved] = [v["request_id"] for v in held.values()]
    stack.deliver_realtime()
    assert emulator.messages_created == [], "a message was sent before the rescue finished"
    # The submitter sends the moved request once its realtime record has waited RESEND_SECONDS;
    # by then a check has rescued the other two.
    stack.advance(RESEND_SECONDS + 1)
    stack.tick()
    wait_for(lambda: stack.deliver_realtime() and len(emulator.messages_created) == 3)
    got = once(stack, inbox, due)
    for c in got.values():
        assert c["route"] == "realtime" and c["batch_id"] is None and c["completed_at"] <= c["deadline"]
    rescued = {v["request_id"] for v in items(stack).values() if v.get("rescued_from") == batch["ref"]}
    assert rescued == set(due)
    assert clock.now() < clock.parse(got[moved]["deadline"])
    # The late batch ends: only the request it still holds is answered from it.
    stack.advance(7200)
    stack.pump()
    assert once(stack, inbox, ["mr-free"])["mr-free"]["route"] == "batch"
    assert len(emulator.messages_created) == 3
    assert stack.open_work() == {"pending": 0, "live_batches": 0, "running": 0}


def test_a_rescue_due_while_the_batch_is_being_collected_waits_for_the_collect(late_batch, emulator):
    """A batch has ended at the API but its record still says polling (its check is stuck) and its
    rescue is overdue, while a collector (a restarted poller's) settles its results. The
    submitter's overdue rescue finds the collect lease taken and leaves the batch alone: every
    request is answered once, by the batch, and nothing goes realtime."""
    ids = [f"cl{i}" for i in range(3)]
    checks, collecting, go = threading.Event(), threading.Event(), threading.Event()

    def before(function: str, operation: str) -> None:
        if function == "CheckBatchFunction":
            checks.wait(120)  # the batch's own poller is stuck
        if function == "CollectResultsFunction" and operation == "BatchWriteItem":
            collecting.set()
            go.wait(120)

    def stuck(stack):
        stack.before = before

    late = late_batch(ids, late=600, before_tick=stuck)
    stack, inbox, batch_id, batch = late.stack, late.inbox, late.batch_id, late.record
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


def test_stack_realtime_delivery_receives_a_message_once_a_delivery_and_never_while_hidden(stack, emulator):
    """The local stack's `deliver_realtime` (not the relay) receives a message at most once a
    delivery, and not at all while the function has it hidden for a retry-after, so the queue's
    receive count (maxReceiveCount 20, then the dead-letter queue) counts the function's own tries
    only. It used to put a failed message back at once and receive it again in the same delivery:
    a function dying on each try sent the message to the dead-letter queue within one delivery.
    Here a 429 hides the message for two minutes through more deliveries than maxReceiveCount;
    then the function dies on its next three tries, one a delivery; the fifth try answers it."""
    from batch_relay import clock
    from batch_relay.errors import FunctionKilled

    inbox = stack.subscribe()
    realtime_at_claim(stack, "dl1", seconds=3600)
    receives: list[str] = []  # the ApproximateReceiveCount of each delivery to the function
    invoke = stack.invoke

    def counted(function: str, event):
        if function == "RealtimeFunction":
            receives.append(event["Records"][0]["attributes"]["ApproximateReceiveCount"])
        return invoke(function, event)

    stack.invoke = counted
    emulator.inject("POST", "/v1/messages", 429, count=1, retry_after=120, route="message")
    assert stack.deliver_realtime() == {"delivered": 0, "failed": 1, "waiting": 1}
    hidden_at = clock.now()
    assert stack.hidden_for == [120]
    for _ in range(25):
        assert stack.deliver_realtime() == {"delivered": 0, "failed": 0, "waiting": 1}
    assert receives == ["1"], "a hidden message was received"

    deaths: list[int] = []

    def dies(function: str, operation: str) -> None:
        if function == "RealtimeFunction" and operation == "GetItem" and len(deaths) < 3:
            deaths.append(1)
            raise FunctionKilled("killed before its first call")

    stack.before = dies
    stack.advance(121)
    for n in range(3):
        assert stack.deliver_realtime() == {"delivered": 0, "failed": 1, "waiting": 0}
        assert len(deaths) == n + 1
    assert receives == ["1", "2", "3", "4"], "received more than once a delivery"
    assert stack.deliver_realtime() == {"delivered": 1, "failed": 0, "waiting": 0}
    assert receives == ["1", "2", "3", "4", "5"]
    assert queued(stack, "RealtimeDeadLetterQueue") == 0
    assert queued(stack) == 0
    [c] = answered(stack, inbox, "dl1")
    assert c["route"] == "realtime" and c["status"] == "succeeded"
    assert clock.parse(c["completed_at"]) >= hidden_at + 120, "answered before the retry-after"
    assert len(emulator.messages_created) == 1


def test_stack_passes_the_hide_the_realtime_function_asks_for_to_the_queue(stack, emulator):
    """The local stack keeps a message the realtime function hides (for a retry-after, or
    FAILED_AGAIN_SECONDS after a failed try) out of delivery until the relay's clock passes it, and
    asks SQS to hide it meanwhile for a time within SQS's 12-hour limit: the function's own
    ChangeMessageVisibility acts, so `Realtime.handle` ends with its TransientError."""
    realtime_at_claim(stack, "hv1", seconds=3600)
    acted: list[str] = []
    stack.after = lambda function, operation: acted.append(operation)
    emulator.inject("POST", "/v1/messages", 429, count=1, retry_after=120, route="message")
    assert stack.deliver_realtime() == {"delivered": 0, "failed": 1, "waiting": 1}
    assert stack.hidden_for == [120]
    assert "ChangeMessageVisibility" in acted, "the function's hide was refused"


def test_a_refused_release_of_the_submitter_lease_is_tried_again(stack, emulator):
    """A submitter run gives its lease back as it ends; were one refused call (a throttle the SDK's
    retries did not absorb) to leave it, the lease would stay until the run could have ended (its
    15-minute timeout, plus a minute), and every run meanwhile would do nothing. The release is
    tried again: a request due in 10 minutes is sent realtime by the next run. (A killed run keeps
    the lease so, as it must.)"""

    inbox = stack.subscribe()
    release = Once("SubmitterFunction", "DeleteItem", "refuse")
    install(stack, release)
    assert not stack.tick().get("skipped")  # nothing to do; its lease's release is refused once
    assert release.fired.is_set()
    answered_in_time(stack, inbox, "ul1")


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


# Found by the chaos run (`relay-local chaos`): each test failed until its defect was fixed, and
# says in its docstring what the chaos run showed, where in the code the cause was, and what the
# relay does now.


def _batch_of(stack, batch_id: str) -> dict:
    [batch] = [b for b in items(stack, "batch#").values() if b.get("batch_id") == batch_id]
    return batch


def rescued_from(stack, ref: str) -> list[str]:
    return [v["request_id"] for v in items(stack).values() if v.get("rescued_from") == ref]


# the poller's rescue


def test_a_check_killed_mid_rescue_keeps_the_rescue_out_no_longer_than_it_could_run(late_batch, emulator):
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
    from batch_relay import clock

    due = [f"kr{i}" for i in range(3)]
    kill = Once("CheckBatchFunction", "UpdateItem", "kill after", after_op="PutObject")
    late = late_batch(due, ["kr-free"], deadline=3600, margin=300, before_tick=lambda s: install(s, kill))
    stack, inbox, ref = late.stack, late.inbox, late.record["ref"]
    stack.advance(3600 - 300 + 5)
    kill.fired.wait(30)
    assert kill.fired.is_set(), "no rescue was attempted"
    assert len(rescued_from(stack, ref)) == 1, "the kill was not between two moves"
    # The dead check could run for 60 s; a minute more for clock skew, and a few seconds.
    stack.advance(125)
    now = clock.now()
    try:
        wait_for(lambda: len(rescued_from(stack, ref)) == 3, seconds=20)
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


def test_a_check_that_finds_its_rescue_leased_elsewhere_does_not_poll_every_second(late_batch, emulator):
    """Defect, fixed (`poller.Poller.check`): when a batch's rescue is due, a check waits until the next
    rescue time, at least 1 s (`max(1, min(wait, int(at - now) + 1))`). When the rescue cannot
    run because another holder has the collect lease (a check that died mid-rescue: 5 minutes; a
    submitter's overdue rescue: up to 15), the rescue time stays in the past and every check
    comes back after 1 s: a Step Functions loop retrieving the batch from the API, and writing
    its record, every second for as long as the lease lasts. In the chaos run, one batch was
    checked about 300 times in the 300 s after a check died in its rescue (each check an API
    call, against the same rate limit as realtime calls)."""
    from batch_relay import clock
    from batch_relay.settings import settings
    from batch_relay.store import Store

    late = late_batch(["bp1"], deadline=3600, margin=300)
    stack, batch_id, batch = late.stack, late.batch_id, late.record
    # Another holder (a rescue under way elsewhere, or one that died) has the collect lease.
    now = clock.now()
    assert Store(stack.physical["RequestTable"]).lease(
        f"collect#{batch['ref']}", "elsewhere", now + 3600, now
    )
    stack.advance(3600 - 300 + 5)
    out = stack.invoke("CheckBatchFunction", {"batch_id": batch_id, "ref": batch["ref"]})
    assert not out["ended"] and rescued_from(stack, batch["ref"]) == []
    poll_min = settings().poll_min_seconds
    assert out["wait_seconds"] >= poll_min, (
        f"the check comes back after {out['wait_seconds']} s while the rescue it waits for is "
        f"leased elsewhere (poll_min_seconds is {poll_min})"
    )


def test_a_refused_release_of_a_checks_rescue_lease_is_tried_again(late_batch, emulator):
    """Defect, fixed (`poller.Poller._rescue`): a check gives the batch's collect lease back with one
    DeleteItem as its rescue ends. When the rescue fails (a refused call) and that release is
    refused too, the lease stays its whole 5 minutes, and no check can rescue meanwhile: in the
    chaos run a check's rescue failed with its release refused 272 s before two requests'
    deadlines. Here the rescue's journal write is refused, then the release; a check a few
    seconds later should rescue the request."""
    late = late_batch(["rl1"], deadline=3600, margin=300)
    stack, ref = late.stack, late.record["ref"]
    hook = RefuseInTurn("CheckBatchFunction", ["PutObject", "DeleteItem"])
    stack.before, stack.after = hook.before, hook.after
    stack.advance(3600 - 300 + 5)
    wait_for(lambda: len(hook.refused) == 2, seconds=30)
    stack.advance(10)
    try:
        wait_for(lambda: rescued_from(stack, ref) == ["rl1"], seconds=20)
    except AssertionError:
        raise AssertionError("not rescued: the failed rescue's collect lease was left in place") from None


def test_a_refused_release_of_the_submitters_overdue_rescue_lease_is_tried_again(late_batch, emulator):
    """Defect, fixed (`submitter.Submitter._rescue_overdue`): the submitter rescues a batch whose poller
    has not, under the batch's collect lease taken for STALE_SECONDS (15 minutes), and gives it
    back with one DeleteItem. When that release is refused, `reconcile` logs the failure and goes
    on (the run ends well), and the lease stays 15 minutes: no check can rescue the batch's later
    deadline requests, nor a collector collect it, meanwhile. In the chaos run, three requests of
    one batch waited behind such a lease, answered some 25 minutes late.

    Here the poller is stuck while the first request's rescue falls due; the submitter rescues
    it and its release is refused; the poller then comes back, and the second request's rescue,
    due 6 minutes later, should be made."""
    from batch_relay.submitter import RESCUE_GRACE_SECONDS

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

    def stuck(stack):
        stack.before = before

    late = late_batch({"or1": 1800, "or2": 2400}, margin=300, before_tick=stuck)
    stack, ref = late.stack, late.record["ref"]
    stack.advance(1800 - 300 + RESCUE_GRACE_SECONDS + 5)
    assert not stack.tick().get("skipped")
    assert rescued_from(stack, ref) == ["or1"], (
        "the submitter's overdue rescue did not take the first request"
    )
    assert refuse.refused == ["DeleteItem"], "the overdue rescue's release was not refused"
    checks.set()
    stack.advance(600)
    try:
        wait_for(lambda: sorted(rescued_from(stack, ref)) == ["or1", "or2"], seconds=20)
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
