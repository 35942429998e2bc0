"""The randomized fault test: a few seeds in every run of the suite (`make chaos SEEDS=200` for more).

Each seed storms the whole pipeline, deadlines and realtime answers included, with AWS refusals,
functions killed right after a call acted (the realtime function after any call, the check in the
middle of a rescue), API refusals and 429s with a retry-after, lost create and realtime answers,
cut result streams, DynamoDB writes applied twice and a parameter changed by a redeploy halfway,
then heals and checks the promises. A seed without faults checks that every deadline a
request could make was met."""

from __future__ import annotations

import json
from collections import Counter

import pytest

pytestmark = pytest.mark.integration


def assert_promises_hold(out) -> None:
    assert out.lost == [], "accepted requests without a completion"
    assert out.conflicting == [], "one request answered two ways"
    assert out.billed_twice == [], "a request in two batches the API created"
    assert out.live_batches == 0, "a batch or realtime record left live"
    assert out.stuck == [], "requests left waiting or claimed"
    assert out.wrong_route == [], "a completion's route says another place than where it was answered"
    assert out.called_twice == [], "a request sent to the Messages API again with no invocation lost"
    assert out.repeated_unexplained == [], "a completion repeated with no death between publish and marker"
    assert out.completions >= out.accepted
    assert out.deadlines > 0 and out.routes["realtime"] > 0, "the deadline paths were not exercised"


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_no_promise_breaks_under_random_faults(seed, monkeypatch):
    from relay_local import chaos

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    out = chaos.run(seed, requests=30, aws_refuse=0.06, aws_kill=0.05, api_rate=0.25)
    assert sum(out.faults.values()) > 0, "the storm injected no fault"
    assert_promises_hold(out)
    # A deadline is missed only where a fault hit the request's path.
    assert out.missed == [], "deadlines missed with no fault on their requests' path"
    assert out.met + len(out.missed_excused) == out.reachable


def test_without_faults_every_reachable_deadline_is_met(monkeypatch):
    from relay_local import chaos

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    out = chaos.run(
        14,
        requests=30,
        aws_refuse=0,
        aws_kill=0,
        api_rate=0,
        realtime_kill=0,
        rescue_kill=0,
        retry_after_share=0,
        twice=0,
        redeploy=False,
    )
    assert sum(out.faults.values()) == 0
    assert_promises_hold(out)
    assert out.reachable > 0 and out.met == out.reachable, "a deadline missed with nothing failing"
    assert out.rescued > 0, "no request was taken out of a late batch"
    assert out.realtime_calls == out.routes["realtime"], "a realtime request not called exactly once"
    assert out.extra_calls_excused == 0 and out.realtime_dead_letters == 0


def test_a_repeat_with_no_death_between_publish_and_marker_is_caught(monkeypatch):
    """The check that allows repeats only after a kill can fail: markers that cannot be written
    (and no kill anywhere) make the next try publish what went out already."""
    from batch_relay.payloads import Payloads
    from relay_local import chaos

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)

    mark = Payloads.sent
    tries: Counter[tuple[str, int]] = Counter()

    def refused(self, key, group, ids, whole):
        # Each marker is refused through every try of the invocation that published its call.
        tries[key, group] += 1
        if tries[key, group] <= 4:
            raise ConnectionError("the marker's write is refused")
        return mark(self, key, group, ids, whole)

    monkeypatch.setattr(Payloads, "sent", refused)
    quiet = dict(aws_refuse=0, aws_kill=0, api_rate=0, realtime_kill=0, rescue_kill=0, twice=0)
    out = chaos.run(15, requests=12, retry_after_share=0, redeploy=False, **quiet)
    assert out.repeated > 0 and out.repeated_unexplained, out.summary()
    assert not out.ok


def test_a_kill_after_publishing_another_requests_completion_explains_its_repeat(stack, emulator):
    """A realtime message of a request already answered flushes its record's outbox, which may
    publish the completions of other requests of that record (their tries died between settling
    and publishing). When that invocation dies after its PublishBatch, the repeat that follows is
    of a request the invocation was not working on: the kill must be counted against the
    requests whose completions the call published, or the repeat reads as unexplained."""
    import random

    from batch_relay.errors import FunctionKilled
    from batch_relay.handoff import Handoff
    from batch_relay.payloads import Payloads
    from batch_relay.settings import settings
    from batch_relay.store import Store
    from relay_local import chaos
    from relay_local.stack import current_call, sqs_record

    from tests.helpers import Once, at, by_id, install, records, request

    inbox = stack.subscribe()
    # Two requests no batch can make in time: claimed together by one realtime record.
    stack.send([request("rx", deadline=at(1800)), request("ry", deadline=at(1800))])
    stack.deliver()
    stack.polls_realtime = False
    stack.tick()
    [record] = [b for b in records(stack) if b.status == "realtime"]
    url, arn = stack.queue_url("RealtimeQueue"), stack.arns["RealtimeQueue"]

    def receive() -> dict[str, dict]:
        got = stack.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=43_200)
        return {json.loads(m["Body"])["request_id"]: m for m in got.get("Messages", [])}

    def invoke(message: dict) -> None:
        stack.invoke("RealtimeFunction", {"Records": [sqs_record(message, arn)]})

    messages = receive()
    assert set(messages) == {"rx", "ry"}

    # ry's try dies right after settling (its item answered, its outbox named), before publishing.
    install(stack, Once("RealtimeFunction", "PutItem", "kill after"))
    with pytest.raises(FunctionKilled):
        invoke(messages["ry"])

    # From here the chaos harness's own accounting watches: rx answered and published.
    log = chaos.FaultLog()
    witness = chaos.Witness(log=log)
    faults = chaos.Faults(random.Random(0), refuse=0.0, kill=0.0, log=log, witness=witness)
    chaos.watch_invocations(stack, witness)
    kill_at_publish = {"armed": False}

    def before(function: str, operation: str) -> None:
        if kill_at_publish["armed"] and function == "RealtimeFunction" and operation == "PublishBatch":
            kill_at_publish["armed"] = False
            invocation, number = current_call()
            faults.kill_at(invocation, number)  # this invocation dies right after this call
        faults.before(function, operation)

    stack.before, stack.after = before, faults.after
    invoke(messages["rx"])
    # A second message of rx (a resend) finds it answered and flushes the record's outbox: ry's
    # completion goes out, and the invocation dies before its marker.
    config = settings()
    Handoff(config, Store(config.table_name), Payloads(config.bucket_name)).dispatch(record, ["rx"])
    [again] = receive().values()
    kill_at_publish["armed"] = True
    with pytest.raises(FunctionKilled):
        invoke(again)
    assert not kill_at_publish["armed"], "the resend published nothing"
    # ry's message back: its call has no marker, so it is published again.
    invoke(messages["ry"])

    seen = by_id(stack.drain(inbox))
    assert len(seen["rx"]) == 1 and len(seen["ry"]) == 2
    kills = [k for k in log.about("ry") if "after PublishBatch" in k]
    assert kills, f"the kill that repeated ry is not counted against it: {log.entries}"
