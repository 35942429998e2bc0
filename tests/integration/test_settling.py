"""Promises under faults an outside review found them broken by: an SNS outage outlasting a realtime
message's receives, a publish call that half-succeeds and whose retry is refused, a rescued request
the budget refuses in realtime, and a tally applied twice beside a result line the API left out.
Each test asserts what a user sees: completions on a subscribed queue, calls billed at the
emulator, the items and records in the table.

Faults are placed with the stack's hooks (`before(function, operation)` runs before an AWS call of
a function: raising refuses it), with moto's own services, and with botocore's retry of a call
whose answer was lost after it acted.
"""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.helpers import at, by_id, emitted, request, to_morning

pytestmark = pytest.mark.integration


def refused(operation: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": "InternalError", "Message": "injected"}, "ResponseMetadata": {}}, operation
    )


def table_items(stack: Any, prefix: str) -> dict[str, dict[str, Any]]:
    from batch_relay.store import plain

    table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"])
    found, args = [], {}
    while True:
        page = table.scan(**args)
        found += page["Items"]
        if "LastEvaluatedKey" not in page:
            break
        args["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return {i["pk"]: plain(i) for i in found if i["pk"].startswith(prefix)}


def queued(stack: Any, queue: str) -> int:
    """Messages on a queue, visible or not."""
    attrs = stack.sqs.get_queue_attributes(
        QueueUrl=stack.queue_url(queue),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


# 1. Whoever closes a realtime record publishes what its requests settled first.


def test_a_realtime_answer_settled_during_an_sns_outage_is_published_once_it_ends(make_stack, emulator):
    """The realtime function answers a request and settles it (outbox, item) while SNS refuses every
    publish. Its message fails each delivery, 15 s apart, until after 20 receives it sits in the
    realtime dead-letter queue, which nothing redrives. Meanwhile the submitter finds the request no
    longer waiting and would close its realtime record. Once SNS is back, the completion must go out,
    once, with no second call to the API."""
    stack = make_stack()
    from batch_relay.realtime import FAILED_AGAIN_SECONDS  # (once the stack has set the environment)

    inbox = stack.subscribe()
    stack.send([request("out1", deadline=at(1800))])  # no batch can make it: realtime at claim
    stack.deliver()
    stack.polls_realtime = False  # the test delivers the realtime queue itself

    def sns_down(function: str, operation: str) -> None:
        if operation == "PublishBatch":
            raise refused(operation)

    stack.before = sns_down
    stack.tick()
    assert queued(stack, "RealtimeQueue") == 1
    for _ in range(25):
        stack.deliver_realtime()
        stack.advance(FAILED_AGAIN_SECONDS + 1)
        stack.tick()  # the schedule goes on through the outage
    assert len(emulator.messages_created) == 1
    assert queued(stack, "RealtimeQueue") == 0 and queued(stack, "RealtimeDeadLetterQueue") == 1
    assert table_items(stack, "req#")["req#out1"]["status"] == "succeeded"
    assert stack.drain(inbox) == []

    # When SNS is back and the schedule runs
    stack.before = None
    stack.pump()
    # Then the answer is published, once, and the API was called once
    got = by_id(stack.drain(inbox))
    assert {k: len(v) for k, v in got.items()} == {"out1": 1}, "the realtime answer was never published"
    [completion] = got["out1"]
    assert completion["status"] == "succeeded" and completion["route"] == "realtime"
    assert len(emulator.messages_created) == 1
    assert stack.open_work() == {"pending": 0, "live_batches": 0, "running": 0}


# 9. A call that half-succeeded, its retry refused: what went out is recorded.


def test_a_half_failed_publish_whose_retry_is_refused_repeats_no_completion(loaded, emulator, monkeypatch):
    """SNS takes nine entries of a PublishBatch call and fails one (a per-entry failure, answered
    `Failed`); the relay's retry of that entry is refused outright. No function dies, so no
    completion may be repeated: the nine that went out are not published again."""
    from moto.sns.exceptions import InvalidParameterValue
    from moto.sns.models import SNSBackend

    stack, inbox, ids = loaded
    real_publish = SNSBackend.publish
    state = {"failed": None, "refused": False}

    def publish(self: Any, message: str, *args: Any, **kwargs: Any) -> Any:
        rid = json.loads(message)["request_id"]
        if state["failed"] is None:
            state["failed"] = rid  # the first entry of the first call fails, the rest go out
            raise InvalidParameterValue("injected: this entry was not published")
        return real_publish(self, message, *args, **kwargs)

    def refuse_the_retry(function: str, operation: str) -> None:
        if operation == "PublishBatch" and state["failed"] and not state["refused"]:
            state["refused"] = True
            raise refused(operation)

    monkeypatch.setattr(SNSBackend, "publish", publish)
    stack.before = refuse_the_retry
    stack.pump()
    assert state["failed"] and state["refused"], "the fault was not injected"
    got = by_id(stack.drain(inbox))
    assert set(got) == set(ids)
    assert {k: len(v) for k, v in got.items() if len(v) != 1} == {}, "completions repeated without a crash"


# 10. A rescued request refused for budget was paid one way only.


@pytest.mark.parametrize("first", ["realtime", "batch"])
def test_a_rescued_request_refused_for_budget_is_not_reported_as_paid_both_ways(
    late_batch, emulator, capsys, first
):
    """A deadline request goes into a batch that turns out late; before its deadline it is taken
    out for realtime, where the day's budget refuses the call (`budget_exceeded`). The batch, when
    it ends, ran it: its batch price was paid once, and nothing in realtime. The completion, the
    request's item, the batch's record and the `BothWaysUSD` metric must not say it was paid twice;
    what the batch spent on it still counts against the day. Whichever is settled first: the
    realtime refusal (`first` realtime), or the batch's results (the realtime message held back
    until the batch is collected)."""

    # Batches assumed to take a minute, a realtime margin of a minute; a budget the batch of two
    # fits (its bound: about 0.00122 USD committed) but a realtime call on top (about 0.00122 more)
    # does not, even once the batch has given back what it did not spend (all but about 0.00026).
    # (In the morning: the day does not change mid-test.)
    late = late_batch(["bw-due"], ["bw-free"], before_send=to_morning, DailyBudgetUSD="0.0013")
    stack, inbox, batch_id = late.stack, late.inbox, late.batch_id
    assert set(emulator.custom_ids(batch_id)) == {"bw-due", "bw-free"}
    # When the deadline nears (the batch still running), the request is rescued and refused
    stack.polls_realtime = False
    stack.advance(1800 - 60 + 5)
    if first == "batch":
        for _ in range(200):
            if table_items(stack, "req#")["req#bw-due"].get("rescued_from"):
                break
            time.sleep(0.05)
        stack.advance(7200)
        stack.settle()
        [record] = [r for r in table_items(stack, "batch#").values() if r.get("batch_id") == batch_id]
        assert record["status"] == "collected" and record.get("both_ways_usd"), "not collected first"
    published: list[dict[str, Any]] = []
    for _ in range(200):
        stack.deliver_realtime()
        published += stack.drain(inbox)
        if "bw-due" in by_id(published):
            break
        stack.advance(5)
    else:
        raise AssertionError("the rescued request was never answered")
    [completion] = by_id(published)["bw-due"]
    assert completion["status"] == "errored" and completion["error"]["type"] == "budget_exceeded"
    assert (completion.get("cost") or {}).get("both_ways_usd") is None
    assert emulator.messages_created == [], "the realtime call was made"
    # And the late batch ends and is collected
    stack.advance(7200)
    stack.pump()
    published += stack.drain(inbox)
    assert {k: len(v) for k, v in by_id(published).items()} == {"bw-due": 1, "bw-free": 1}
    item = table_items(stack, "req#")["req#bw-due"]
    assert item["status"] == "errored" and item["error"]["type"] == "budget_exceeded"
    assert (item.get("cost") or {}).get("both_ways_usd") is None
    assert item.get("both_ways_usd") is None, "the item says it was paid both ways"
    [record] = [r for r in table_items(stack, "batch#").values() if r.get("batch_id") == batch_id]
    assert record["status"] == "collected"
    assert not record.get("both_ways_usd"), "the batch record says a request was paid both ways"
    seen = emitted(capsys)
    assert seen["BothWaysUSD"] == 0, "the BothWaysUSD metric counts a request paid one way"
    assert seen["BudgetExceeded"] == 1
    # What the batch ran is still spent: the day keeps it committed.
    from batch_relay.budget import today
    from batch_relay.pricing import cost_of

    day = table_items(stack, f"budget#{today()}")[f"budget#{today()}"]
    ran = sum(
        cost_of("claude-haiku-4-5", line["result"]["message"]["usage"]).batch_usd
        for line in emulator.results(batch_id)
        if line["result"]["type"] == "succeeded"
    )
    assert ran > 0
    assert int(day["committed_micros"]) / 1e6 >= ran - 1e-6, "what the batch spent was given back"


# 2. A batch is collected only once every journaled request is answered, whatever the tallies say.


def test_a_tally_applied_twice_and_a_missing_result_line_leave_no_request_unanswered(loaded, emulator):
    """The API leaves one request's result line out. The collector's tally of the batch (an `ADD`)
    is applied twice: its answer was lost after it acted, and botocore sent it again. Counting by
    the tallies, every request is answered; the request with no line must still get its completion
    (tried again in a new batch), and nothing may be left claimed."""
    from batch_relay import aws

    stack, inbox, ids = loaded
    emulator.left_out.add("q5")
    client = aws.dynamodb().meta.client
    retried: list[bool] = []

    def lose_the_tallys_answer(request_dict: dict[str, Any], attempts: int, **_: Any) -> int | None:
        # The first tally of the batch's outcomes: sent again as if its answer had been lost.
        if not retried and attempts == 1 and b"n_succeeded" in request_dict["body"]:
            retried.append(True)
            return 0
        return None

    client.meta.events.register("needs-retry.dynamodb.UpdateItem", lose_the_tallys_answer)
    stack.pump()
    assert retried, "the tally was not applied twice"
    got = by_id(stack.drain(inbox))
    assert set(got) == set(ids), f"never answered: {sorted(set(ids) - set(got))}"
    assert {k: len(v) for k, v in got.items() if len(v) != 1} == {}
    assert got["q5"][0]["status"] == "succeeded" and got["q5"][0]["attempts"] == 2
    left = {k: v["status"] for k, v in table_items(stack, "req#").items() if v["status"] == "claimed"}
    assert left == {}
    assert stack.open_work() == {"pending": 0, "live_batches": 0, "running": 0}
