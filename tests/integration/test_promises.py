"""Each promise against the fault that broke it: lost create answers, wrong adoptions, pollers that
stop, refusals, giants, slow checks, AWS throttling, repeated completions, time-boxed claims and
account problems. Every test drives the real SDK against the emulator and the template's stack."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import anthropic
import boto3
import pytest
from batch_relay import errors
from botocore.exceptions import ClientError
from relay_local.stack import as_harness

from tests.conftest import TEST_PARAMETERS, load_event
from tests.helpers import (
    STALE,
    assert_once,
    at,
    by_id,
    emitted,
    ids_in_batches,
    items,
    learn,
    once,
    request,
    stop_execution,
    table,
    wait_for,
)

pytestmark = pytest.mark.integration

# Past a create's window: the submitter's invocation (900 s) plus the clock-skew allowance.
PAST_WINDOW = 900 + 120


def records(stack):
    table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"])
    return [i for i in table.scan()["Items"] if i["pk"].startswith("batch#")]


def throttled(operation):
    return ClientError(
        {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}, operation
    )


# 1. A lost create answer bills nothing twice.


@pytest.mark.parametrize("how", ["503", "reset"])
def test_a_lost_create_answer_makes_one_batch_and_it_is_adopted(loaded, emulator, how):
    stack, inbox, ids = loaded
    emulator.lose_create_answers(1, how=how)
    stack.tick()
    assert len(emulator.batch_ids()) == 1, "the create was sent again after its answer was lost"
    assert [r["status"] for r in records(stack)] == ["creating"]
    stack.advance(PAST_WINDOW)
    stack.pump()
    assert len(emulator.batch_ids()) == 1
    per_id = assert_once(stack, inbox, ids, emulator)
    assert {c[0]["batch_id"] for c in per_id.values()} == set(emulator.batch_ids())


def test_a_create_refused_with_529_is_sent_again_and_bills_once(loaded, emulator):
    stack, inbox, ids = loaded
    emulator.inject("POST", "/v1/messages/batches", 529, count=2, retry_after=0.001)
    stack.pump()
    assert len(emulator.batch_ids()) == 1
    assert emulator.calls[("POST", "create")] == 3
    assert_once(stack, inbox, ids, emulator)


def test_a_create_that_never_went_through_is_created_once_its_window_has_passed(loaded, emulator):
    stack, inbox, ids = loaded
    emulator.inject("POST", "/v1/messages/batches", 500, count=1)  # refused before acting
    stack.tick()
    assert emulator.batch_ids() == []
    stack.advance(60)
    stack.tick()
    assert emulator.batch_ids() == [], "created again while the first create could still be under way"
    stack.advance(PAST_WINDOW)
    stack.pump()
    assert len(emulator.batch_ids()) == 1
    assert_once(stack, inbox, ids, emulator)


# 2. Adoption takes only our own batch.


def test_a_stale_record_never_adopts_a_batch_the_stack_already_collected(stack, emulator):
    inbox = stack.subscribe()
    stack.send([request("a")])
    stack.deliver()
    emulator.inject("POST", "/v1/messages/batches", 500, count=1)  # a's create fails outright
    stack.tick()
    stack.send([request("b")])
    stack.advance(2)
    stack.deliver()
    stack.tick()  # b's one-request batch, created inside a's window
    stack.settle()
    assert [c["request_id"] for c in stack.drain(inbox)] == ["b"]
    stack.advance(PAST_WINDOW)
    stack.pump()
    per_id = by_id(stack.drain(inbox))
    assert set(per_id) == {"a"} and len(per_id["a"]) == 1
    assert len(emulator.batch_ids()) == 2
    assert max(ids_in_batches(emulator).values()) == 1


def _foreign_batch(emulator, custom_id="not-ours"):
    client = anthropic.Anthropic(base_url=emulator.url, api_key="another-deployment")
    params = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    return client.messages.batches.create(requests=[{"custom_id": custom_id, "params": params}]).id


def test_a_batch_of_another_deployment_taken_for_ours_is_refused_at_collect(stack, emulator, capsys):
    inbox = stack.subscribe()
    stack.send([request("a")])
    stack.deliver()
    emulator.inject("POST", "/v1/messages/batches", 500, count=1)  # nothing created for a
    stack.tick()
    foreign = _foreign_batch(emulator)  # the same key, inside a's window: the only candidate
    stack.advance(PAST_WINDOW)
    stack.pump()
    per_id = by_id(stack.drain(inbox))
    assert set(per_id) == {"a"}, "another deployment's results were published as ours"
    assert len(per_id["a"]) == 1 and per_id["a"][0]["batch_id"] != foreign
    assert per_id["a"][0]["status"] == "succeeded" and per_id["a"][0]["attempts"] == 1
    assert "foreign" in {r["status"] for r in records(stack)}
    assert emitted(capsys)["WrongAdoptions"] == 1


def test_of_several_candidates_only_the_one_holding_our_requests_is_adopted(stack, emulator):
    inbox = stack.subscribe()
    stack.send([request("a")])
    stack.deliver()
    emulator.lose_create_answers(1)
    stack.tick()
    ours = emulator.batch_ids()[0]
    _foreign_batch(emulator)  # a second one-request batch in the window
    stack.advance(PAST_WINDOW)
    time.sleep(0.3)  # both end at the emulator
    stack.pump()
    per_id = assert_once(stack, inbox, ["a"])
    assert per_id["a"][0]["batch_id"] == ours
    assert len(emulator.batch_ids()) == 2, "a batch was created again although ours existed"


def test_an_execution_name_taken_by_another_record_is_not_silently_skipped(loaded, emulator, monkeypatch):
    from batch_relay import executions

    stack, inbox, ids = loaded
    real = executions.start
    squats = []

    def squatted(arn, name, payload):
        if not squats:  # another record's poller already runs under this batch's name
            squats.append(name)
            real(arn, name, payload | {"ref": "someone-else"})
        return real(arn, name, payload)

    monkeypatch.setattr(executions, "start", squatted)
    stack.tick()
    monkeypatch.setattr(executions, "start", real)
    assert "foreign" in {r["status"] for r in records(stack)}
    stack.pump()
    per_id = assert_once(stack, inbox, ids)
    assert squats[0] not in {c[0]["batch_id"] for c in per_id.values()}


# 3 and 4. Pollers never give up while results can be fetched.


def test_a_poller_failing_through_a_key_rotation_is_restarted_until_it_succeeds(loaded, emulator):
    stack, inbox, ids = loaded
    emulator.inject("GET", "/v1/messages/batches/msgbatch_", 401, count=5, route="retrieve")
    for _ in range(8):
        stack.tick()
        stack.settle()
        stack.advance(6 * 3600)
    assert sum(e["status"] == "FAILED" for e in stack.executions()) == 5
    stack.pump()
    assert_once(stack, inbox, ids, emulator)


def test_a_failed_batch_does_not_hold_the_in_flight_cap_once_it_has_ended(make_stack, emulator):
    stack = make_stack(MaxInFlight="12")
    inbox = stack.subscribe()
    stack.send([request(f"x{i}") for i in range(12)])
    stack.deliver()
    emulator.inject("GET", "/v1/messages/batches/", 401, count=1, route="results")
    stack.tick()
    stack.settle()
    assert [r["status"] for r in records(stack)] == ["failed"]
    stack.send([request(f"y{i}") for i in range(3)])
    stack.deliver()
    stack.advance(2)
    stack.tick()  # the failed batch ended at the API: three more may go while it is restarted
    assert len(emulator.batch_ids()) == 2
    stack.pump()
    assert_once(stack, inbox, [f"x{i}" for i in range(12)] + [f"y{i}" for i in range(3)], emulator)


def test_a_batch_whose_results_expired_is_answered_and_leaves_the_work_list(loaded, emulator):
    stack, inbox, ids = loaded
    emulator.inject("GET", "/v1/messages/batches/", 401, count=10**6, route="retrieve")
    stack.tick()
    stack.settle()
    stack.advance(29 * 86400 + 60)
    stack.tick()
    per_id = by_id(stack.drain(inbox))
    assert per_id == {}, "answered as final although attempts remain"
    emulator.clear_faults()
    stack.pump()
    per_id = assert_once(stack, inbox, ids)
    assert {c[0]["attempts"] for c in per_id.values()} == {2}


def test_an_execution_stopped_without_recording_it_is_noticed_and_restarted(loaded, emulator):
    stack, inbox, ids = loaded
    emulator.latency_seconds = 3
    stack.tick()
    [run] = stack.executions()
    stop_execution(run["executionArn"])
    stack.settle()
    assert [r["status"] for r in records(stack)] in (["polling"], ["collecting"])
    stack.advance(7200 + STALE + 1)
    time.sleep(3)
    stack.pump()
    assert_once(stack, inbox, ids, emulator)
    assert len(stack.executions()) == 2


# 5. One bad batch never stops the relay.


def test_a_request_the_api_refuses_is_answered_and_the_rest_of_its_batch_goes_on(loaded, emulator):
    stack, inbox, ids = loaded
    emulator.refused_ids = {"q5"}
    stack.pump()
    per_id = assert_once(stack, inbox, ids)
    assert per_id["q5"][0]["status"] == "errored"
    assert per_id["q5"][0]["error"]["type"] == "invalid_request_error"
    assert "cannot be processed" in per_id["q5"][0]["error"]["message"]
    assert {per_id[i][0]["status"] for i in ids if i != "q5"} == {"succeeded"}
    assert max(ids_in_batches(emulator).values()) == 1


def test_a_record_that_cannot_be_recovered_does_not_stop_the_others(
    make_stack, emulator, monkeypatch, caplog, capsys
):
    from batch_relay import executions

    stack = make_stack(MaxBatchRequests="6")
    inbox = stack.subscribe()
    ids = [f"r{i}" for i in range(12)]
    stack.send([request(i) for i in ids])
    stack.deliver()
    real = executions.start
    monkeypatch.setattr(executions, "start", lambda *a: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        stack.tick()
    with pytest.raises(RuntimeError):
        stack.tick()
    assert sorted(r["status"] for r in records(stack)) == ["created", "created"]
    broken = {"n": 0}

    def first_fails(arn, name, payload):
        broken["n"] += 1
        if broken["n"] == 1:
            raise RuntimeError("this record's recovery fails")
        return real(arn, name, payload)

    monkeypatch.setattr(executions, "start", first_fails)
    # (The second run already tried to start the first run's batch, the run that left it being
    # over: only this run's failures count.)
    caplog.clear()
    capsys.readouterr()
    stack.advance(STALE)
    stack.tick()
    assert "could not recover a batch" in caplog.text
    assert emitted(capsys)["ReconcileFailures"] == 1
    assert sorted(r["status"] for r in records(stack)) == ["created", "polling"]
    monkeypatch.setattr(executions, "start", real)
    stack.pump()
    assert_once(stack, inbox, ids, emulator)


# 6. A request larger than any batch is answered, never stuck.


def test_a_request_larger_than_any_batch_is_answered_and_its_tier_moves_on(make_stack, emulator):
    stack = make_stack(MaxBatchBytes="4096", MaxBatchRequests="1000")
    inbox = stack.subscribe()
    ids = [f"g{i}" for i in range(6)]
    stack.send([request("giant", text="z" * 6000)] + [request(i) for i in ids])
    stack.pump(rounds=5)
    per_id = assert_once(stack, inbox, ["giant", *ids], emulator)
    assert per_id["giant"][0]["status"] == "errored"
    assert per_id["giant"][0]["error"]["type"] == "request_too_large"
    assert "giant" not in ids_in_batches(emulator)


# 7. The check function never outruns its timeout.


def test_check_gives_up_inside_its_timeout_when_the_api_asks_for_long_waits(loaded, emulator):
    stack, _inbox, _ids = loaded
    emulator.latency_seconds = 60
    stack.tick()
    [batch_id] = emulator.batch_ids()
    [record] = records(stack)
    emulator.inject("GET", f"/v1/messages/batches/{batch_id}", 429, count=3, retry_after=25, route="retrieve")
    event = load_event("check.json") | {"batch_id": batch_id, "ref": record["ref"]}
    started = time.monotonic()
    with pytest.raises(errors.TransientError):
        stack.invoke("CheckBatchFunction", event)
    assert time.monotonic() - started < stack.functions["CheckBatchFunction"].timeout


# 8. AWS faults inside the poller are retried by the state machine.


@pytest.mark.parametrize("function", ["CheckBatchFunction", "CollectResultsFunction"])
def test_aws_throttling_inside_the_poller_is_retried_not_failed(loaded, emulator, function):
    stack, inbox, ids = loaded
    hits = Counter()

    def throttle_once(fn, operation):
        if fn == function and not hits[fn]:
            hits[fn] += 1
            raise throttled(operation)

    stack.before = throttle_once
    stack.pump()
    assert hits[function] == 1
    assert [e["status"] for e in stack.executions()] == ["SUCCEEDED"]
    assert_once(stack, inbox, ids, emulator)


def test_aws_throttling_in_the_submitter_leaves_as_a_transient_error(loaded, emulator):
    stack, _, _ = loaded
    stack.before = lambda fn, op: (_ for _ in ()).throw(throttled(op)) if op == "PutItem" else None
    with pytest.raises(errors.TransientError):
        stack.tick()


# 9. Settling is an outbox: a crash repeats at most one publish call.


def test_a_crash_after_the_items_are_written_still_publishes_every_completion_once(make_stack, emulator):
    stack = make_stack(MaxBatchRequests="500")
    inbox = stack.subscribe()
    ids = [f"p{i}" for i in range(250)]
    stack.send([request(i) for i in ids])
    done = {"n": 0}

    def die_after_second_write(fn, operation):
        if fn == "CollectResultsFunction" and operation == "BatchWriteItem":
            done["n"] += 1
            if done["n"] == 2:
                raise errors.FunctionKilled("killed after the items were written, before publishing")

    stack.after = die_after_second_write
    stack.pump()
    counts = Counter(c["request_id"] for c in stack.drain(inbox))
    assert set(counts) == set(ids)
    assert set(counts.values()) == {1}


def test_a_crash_between_a_publish_and_its_marker_repeats_only_that_call(make_stack, emulator):
    stack = make_stack(MaxBatchRequests="500")
    inbox = stack.subscribe()
    ids = [f"m{i}" for i in range(250)]
    stack.send([request(i) for i in ids])
    done = {"n": 0}

    def die_after_a_publish(fn, operation):
        if fn == "CollectResultsFunction" and operation == "PublishBatch":
            done["n"] += 1
            if done["n"] == 13:
                raise errors.FunctionKilled("killed after publishing, before the marker")

    stack.after = die_after_a_publish
    stack.pump()
    completions = stack.drain(inbox)
    counts = Counter(c["request_id"] for c in completions)
    assert set(counts) == set(ids)
    assert sorted(Counter(counts.values()).items()) == [(1, 240), (2, 10)]
    for rid, n in counts.items():
        if n == 2:
            first, second = (c for c in completions if c["request_id"] == rid)
            assert first == second, "a repeated completion differs from the first"


def test_a_half_failed_publish_call_sends_only_its_failed_entry_again(loaded, emulator, monkeypatch):
    from batch_relay.completions import Topic

    stack, inbox, ids = loaded
    real_init = Topic.__init__
    refused = {"n": 0}

    def init(self, arn):
        real_init(self, arn)
        real = self.sns.publish_batch

        def publish_batch(TopicArn, PublishBatchRequestEntries):
            entries = PublishBatchRequestEntries
            if refused["n"] == 0 and len(entries) > 1:
                refused["n"] += 1  # SNS takes all but the last entry of this call
                answer = real(TopicArn=TopicArn, PublishBatchRequestEntries=entries[:-1])
                answer["Failed"] = [{"Id": entries[-1]["Id"], "Code": "InternalError", "SenderFault": False}]
                return answer
            return real(TopicArn=TopicArn, PublishBatchRequestEntries=entries)

        self.sns = type("Sns", (), {"publish_batch": staticmethod(publish_batch)})()

    monkeypatch.setattr(Topic, "__init__", init)
    stack.pump()
    assert refused["n"] == 1
    assert_once(stack, inbox, ids, emulator)


# 10. A claim ends inside its run's time.


def test_a_claim_stops_at_its_time_budget_and_submits_what_it_has(loaded, emulator, monkeypatch):
    from batch_relay.payloads import Payloads
    from batch_relay.store import Store

    stack, inbox, ids = loaded
    real_pages, real_journal = Store.pages, Payloads.journal
    monkeypatch.setattr(Store, "pages", lambda self, part, size=1000, **kw: real_pages(self, part, 5, **kw))

    def slow_page(self, ref, number, ids):
        stack.advance(400)  # each page "takes" 400 s of a 900 s invocation
        return real_journal(self, ref, number, ids)

    monkeypatch.setattr(Payloads, "journal", slow_page)
    stack.tick()
    assert [len(emulator.custom_ids(b)) for b in emulator.batch_ids()] == [10]
    monkeypatch.setattr(Payloads, "journal", real_journal)
    stack.pump()
    assert_once(stack, inbox, ids, emulator)


# 11. An account problem holds requests; it does not answer them.


def test_no_credit_holds_the_requests_and_the_tier_until_a_top_up(loaded, emulator, capsys):
    stack, inbox, ids = loaded
    emulator.credit = False
    stack.tick()
    stack.settle()
    assert stack.drain(inbox) == [], "an account problem was answered as the requests' fault"
    assert stack.open_work()["pending"] == len(ids)
    assert emitted(capsys)["AccountHolds"] >= 1
    stack.advance(60)
    stack.tick()
    assert len(emulator.batch_ids()) == 1, "a held tier was flushed before its pause ended"
    assert emitted(capsys)["TierHeld"] == 1
    emulator.credit = True
    stack.advance(600)
    stack.pump()
    per_id = assert_once(stack, inbox, ids)
    assert {c[0]["status"] for c in per_id.values()} == {"succeeded"}
    assert {c[0]["attempts"] for c in per_id.values()} == {1}, "a held request spent an attempt"


def test_a_hold_longer_than_its_maximum_answers_the_requests(make_stack, emulator):
    stack = make_stack(MaxHoldSeconds="3600")
    inbox = stack.subscribe()
    ids = [f"h{i}" for i in range(3)]
    stack.send([request(i) for i in ids])
    emulator.credit = False
    stack.pump(rounds=20)
    per_id = assert_once(stack, inbox, ids)
    assert {c[0]["error"]["type"] for c in per_id.values()} == {"invalid_request_error"}
    assert all("credit balance" in c[0]["error"]["message"] for c in per_id.values())


# Found by review: each failed before the change that follows it.


def test_a_lone_candidate_another_record_may_own_is_verified_not_adopted(stack, emulator):
    inbox = stack.subscribe()
    stack.send([request("a")])
    stack.deliver()
    emulator.inject("POST", "/v1/messages/batches", 500, count=1)  # a: nothing made
    stack.tick()
    stack.advance(60)
    stack.send([request("b")])
    stack.deliver()
    emulator.lose_create_answers(1)  # b: made, its answer lost, inside a's window
    stack.tick()
    assert len(emulator.batch_ids()) == 1
    stack.advance(PAST_WINDOW)
    stack.pump()
    assert_once(stack, inbox, ["a", "b"], emulator)
    assert len(emulator.batch_ids()) == 2


def test_a_run_killed_after_restarting_a_poller_never_starts_a_second_beside_it(
    loaded, emulator, monkeypatch
):
    import threading

    from batch_relay.poller import Poller

    stack, inbox, ids = loaded
    emulator.inject("GET", "/v1/messages/batches/msgbatch_", 500, count=60, retry_after=0.001)
    stack.tick()
    [run] = stack.settle()
    assert run["status"] == "FAILED"
    emulator.clear_faults()
    gate = threading.Event()
    real_check = Poller.check

    def held_check(self, *args, **kwargs):
        gate.wait(30)  # the restarted poller is still running when the next run looks
        return real_check(self, *args, **kwargs)

    monkeypatch.setattr(Poller, "check", held_check)
    killed = []

    def after(function, operation):
        if function == "SubmitterFunction" and operation == "StartExecution" and not killed:
            killed.append(operation)
            raise errors.FunctionKilled("killed right after StartExecution acted")

    stack.after = after
    with pytest.raises(errors.FunctionKilled):
        stack.tick()  # restarts the poller, dies before recording it
    stack.after = None
    stack.advance(1000)  # past the dead run's lease and the restart delay
    stack.tick()
    running = [e["name"] for e in stack.executions() if e["status"] == "RUNNING"]
    gate.set()
    assert len(running) == 1, "two pollers run the same batch"
    stack.settle()
    assert_once(stack, inbox, ids, emulator)


NO_CREDIT_AT_CREATE = "Your credit balance is too low to access the Anthropic API."
SPEND_LIMIT = "You have reached your specified API usage limits. You will regain access on 2026-12-01."


@pytest.mark.parametrize("message", [NO_CREDIT_AT_CREATE, SPEND_LIMIT])
def test_an_account_refusal_at_create_holds_the_tier_and_answers_nothing(loaded, emulator, message):
    stack, inbox, ids = loaded
    emulator.inject("POST", "/v1/messages/batches", 400, count=40, message=message)
    stack.tick()
    assert emulator.batch_ids() == [], "a batch was created while its tier was held"
    assert emulator.calls[("POST", "create")] == 1, "creates went on although the tier was held"
    assert stack.drain(inbox) == [], "an account problem was answered as the requests' fault"
    assert stack.open_work()["pending"] == len(ids)
    emulator.clear_faults()
    stack.pump()
    per_id = assert_once(stack, inbox, ids, emulator)
    assert {c[0]["status"] for c in per_id.values()} == {"succeeded"}
    assert {c[0]["attempts"] for c in per_id.values()} == {1}


def test_collect_never_sleeps_past_its_timeout_whatever_the_api_asks(loaded, emulator, monkeypatch):
    import anthropic._base_client as base

    stack, inbox, ids = loaded
    asked: list[float] = []
    monkeypatch.setattr(base.time, "sleep", asked.append)
    emulator.inject("GET", "/v1/messages/batches/msgbatch_", 429, count=1, retry_after=3600, route="results")
    stack.pump()
    assert all(s < 60 for s in asked), f"the SDK slept {max(asked)} s inside a function"
    assert_once(stack, inbox, ids, emulator)


def test_a_request_whose_body_is_gone_is_answered_and_its_tier_moves_on(stack, emulator):
    inbox = stack.subscribe()
    stack.send([request("gone-1")])
    stack.deliver()  # gone-1's line sits in an object of its own
    stack.send([request(f"k{i}") for i in range(5)])
    stack.deliver()
    table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"])
    key = table.get_item(Key={"pk": "req#gone-1"})["Item"]["body_key"]
    boto3.client("s3").delete_object(Bucket=stack.physical["PayloadBucket"], Key=key)
    stack.pump(rounds=5)
    per_id = assert_once(stack, inbox, ["gone-1", *(f"k{i}" for i in range(5))], emulator)
    assert per_id["gone-1"][0]["status"] == "errored"
    assert per_id["gone-1"][0]["error"]["type"] == "request_unavailable"
    assert "could not be read back" in per_id["gone-1"][0]["error"]["message"]
    assert per_id["gone-1"][0]["attempts"] == 1
    assert {per_id[f"k{i}"][0]["status"] for i in range(5)} == {"succeeded"}


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


def test_a_rescue_counted_twice_cancels_no_batch_that_still_holds_a_request(late_batch, emulator):
    """A late batch holds three requests: two with deadlines half an hour apart, one without. The
    check that takes the first out for realtime adds 1 to the batch's `n_rescued`, and that write
    is applied twice. When the second is taken out, the tally read 3 of 3: the batch was canceled
    though it still held the third request, which got a `canceled` completion. Whether a batch
    holds none of its requests is read from the requests: no cancel is sent, and the third is
    answered by its batch."""
    from batch_relay import clock

    start = clock.now()
    late = late_batch({"first": 1800, "second": 3600}, ["third"])
    stack, inbox, batch_id = late.stack, late.inbox, late.batch_id
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
    assert emulator.batch(batch_id)["cancel_initiated_at"] is None, (
        "a batch that holds a request was canceled"
    )
    stack.advance(7200)
    stack.pump()
    got = once(stack, inbox, ["first", "second", "third"])
    assert {rid: c["route"] for rid, c in got.items()} == {
        "first": "realtime",
        "second": "realtime",
        "third": "batch",
    }
    assert got["third"]["status"] == "succeeded", got["third"].get("error")


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
