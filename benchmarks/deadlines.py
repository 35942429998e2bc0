"""Deadlines over a simulated day: how many requests are answered in time, and how much of the batch
discount the relay keeps doing it.

A seeded mixed workload (requests without a deadline, with one from 15 minutes to a day, and on
tiers whose `deadline_seconds` gives them one) arrives over a simulated day at the real stack: moto
built from template.yaml, the emulator over HTTP, the deployed poller state machine in moto's engine.
The emulator draws each batch's duration from `latency_mix` (most batches minutes, a few hours).

Time is simulated: the relay's clock and the emulator's move together (`stack.advance`, as in
tests/conftest.py), in whole periods of the submitter's schedule (a minute), straight from one
moment something happens to the next: an arrival, a poller's Wait ending (`Waits` holds each one
until the simulated clock reaches its end, so a poller checks its batch when it would in AWS,
however long the batch takes), a tier coming due (`Schedule`). At each such moment pollers due run
until they wait again, realtime messages are delivered, arrivals are buffered, the schedule fires
the submitter if it has work, and realtime messages are delivered again.

The same workload then runs again with every deadline left out (no `deadline` field, tiers without
`deadline_seconds`) and the same emulator seed and mix: what always sending by batch would have paid,
and how many deadlines it would have missed. Every figure comes from the completions (SNS to a
subscribed queue) and from the emulator's records (its batches and results over its API, and the
realtime calls it answered), never from the relay's own counters.

The two runs go side by side, each in a process of its own, and two of moto's costs that grow over
a day of traffic are taken out (`quicker_moto`), so that the day takes minutes on two cores.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any

from relay_ops import savings

DAY = 86400
MODELS = (("claude-haiku-4-5", 0.75), ("claude-sonnet-4-5", 0.25))
SUBJECTS = (
    "a refund for a late delivery",
    "a login loop on the mobile app",
    "an invoice with a duplicated line",
    "a question about data retention",
    "a feature request for CSV export",
    "a complaint about support wait times",
)


@dataclass(frozen=True)
class Scenario:
    """What arrives, when, with which deadline; the tiers; how long the emulator's batches take."""

    requests: int = 300
    seed: int = 11
    # Arrivals spread over this long (seconds of simulated time).
    arrival_seconds: float = DAY
    step_seconds: float = 60.0
    # Explicit deadlines, log-uniform between these (seconds after receipt).
    min_deadline: float = 15 * 60
    max_deadline: float = DAY
    # Shares of the workload: (tier, explicit deadline?) -> weight; the rest of a tier's options
    # (including its `deadline_seconds`) are in `tiers`.
    mix: tuple[tuple[str, bool, float], ...] = (
        ("standard", False, 0.35),
        ("standard", True, 0.35),
        ("interactive", False, 0.15),
        ("overnight", False, 0.15),
    )
    tiers: dict[str, dict[str, int]] = field(
        default_factory=lambda: {
            "interactive": {"max_wait_seconds": 120, "min_requests": 1, "deadline_seconds": 1800},
            "standard": {"max_wait_seconds": 1800, "min_requests": 200},
            "overnight": {"max_wait_seconds": 6 * 3600, "min_requests": 1000, "deadline_seconds": 8 * 3600},
        }
    )
    # (weight, seconds) of a batch's duration: most minutes, some an hour, a few six hours.
    latency_mix: tuple[tuple[float, float], ...] = (
        (0.70, 300.0),
        (0.20, 1200.0),
        (0.07, 3600.0),
        (0.03, 6 * 3600.0),
    )
    # Simulated time allowed after the last arrival for every request to be answered.
    drain_seconds: float = 36 * 3600
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the run starts
    request_id: str
    tier: str
    model: str
    prompt: str
    deadline_in: float | None  # an explicit deadline, this long after receipt


def workload(s: Scenario) -> list[Arrival]:
    rng = random.Random(s.seed)
    weights = [w for _, _, w in s.mix]
    out = []
    for n in range(s.requests):
        tier, explicit, _ = rng.choices(s.mix, weights)[0]
        model = rng.choices([m for m, _ in MODELS], [w for _, w in MODELS])[0]
        deadline_in = None
        if explicit:
            deadline_in = math.exp(rng.uniform(math.log(s.min_deadline), math.log(s.max_deadline)))
        subject = SUBJECTS[n % len(SUBJECTS)]
        prompt = f"Ticket {n}: the customer writes about {subject}. " * rng.randint(3, 12)
        out.append(
            Arrival(rng.uniform(0, s.arrival_seconds), f"dl-{n:05d}", tier, model, prompt, deadline_in)
        )
    return sorted(out, key=lambda a: a.at)


def message(a: Arrival, now: float, with_deadlines: bool) -> dict[str, Any]:
    from batch_relay import clock

    body: dict[str, Any] = {
        "request_id": a.request_id,
        "tier": a.tier,
        "params": {
            "model": a.model,
            "max_tokens": 300,
            "system": "Summarise the ticket in one sentence and give it a priority from P1 to P4.",
            "messages": [{"role": "user", "content": a.prompt}],
        },
    }
    if with_deadlines and a.deadline_in is not None:
        body["deadline"] = clock.iso(now + a.deadline_in).replace("Z", "+00:00")
    return body


class Waits:
    """The pollers' Wait states, each held until the simulated clock reaches its end.

    `on_wait` runs in an execution's own thread (moto's engine gives each one a thread); the
    simulation releases the waits that are due after moving the clock (`release`), and `quiet`
    returns once every running execution is waiting again, so a step ends with no poller at work.
    """

    def __init__(self, stack: Any, timeout: float = 600.0):
        self.stack = stack
        self.timeout = timeout
        self._lock = threading.Lock()
        self._held: list[tuple[float, threading.Event]] = []

    def __call__(self, seconds: float) -> None:
        from batch_relay import clock

        wake = clock.now() + seconds
        if seconds <= 0:
            return
        event = threading.Event()
        with self._lock:
            self._held.append((wake, event))
        if not event.wait(self.timeout):  # the run was abandoned: let the thread go on
            with self._lock:
                self._held = [h for h in self._held if h[1] is not event]

    def release(self) -> int:
        from batch_relay import clock

        now = clock.now()
        with self._lock:
            due = [h for h in self._held if h[0] <= now]
            self._held = [h for h in self._held if h[0] > now]
        for _, event in due:
            event.set()
        return len(due)

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def next_wake(self) -> float:
        with self._lock:
            return min((w for w, _ in self._held), default=math.inf)

    def running(self) -> int:
        """Executions running, read from moto's engine itself (its API call takes 15 ms here)."""
        from moto.stepfunctions.responses import get_backend
        from relay_local.stack import ACCOUNT, REGION

        backend = get_backend(ACCOUNT, REGION)
        return sum(
            1
            for machine in backend.state_machines
            for e in machine.executions
            if getattr(e.status, "value", e.status) == "RUNNING"
        )

    def close(self) -> None:
        """Stop the executions still running (a run that ran out of time), and let their threads
        go, so none of them acts on a stack that is gone."""
        import boto3

        sfn = boto3.client("stepfunctions")
        for e in self.stack.executions():
            if e["status"] == "RUNNING":
                with suppress(Exception):  # one moto has not set going yet refuses; it ends anyway
                    sfn.stop_execution(executionArn=e["executionArn"], error="Bench", cause="run over")
        with self._lock:
            held, self._held = self._held, []
        for _, event in held:
            event.set()

    def quiet(self) -> None:
        end = time.monotonic() + self.timeout
        while self.running() > self.held():
            if time.monotonic() > end:
                raise TimeoutError(f"{self.running() - self.held()} pollers still at work")
            time.sleep(0.003)


class Schedule:
    """When the submitter's schedule has something to do, read from moto's table itself.

    A tier is due, as `Submitter.due` decides, once its oldest request without a deadline has
    waited its max wait, once the flush moment of its most urgent deadline request has come
    (the `by:` sort key), or once it holds `min_requests` (`submitter.due_at`); a batch record in
    a state only the submitter moves on (`lifecycle.WAITS_ON_SUBMITTER`) needs a run too.
    Between such moments every run of the schedule would claim nothing, so the simulation skips
    them, running it at least every `SAFETY_SECONDS` all the same (those runs also close realtime
    records whose requests are answered, which changes no answer); a run that claims requests
    when this said none were due is counted (`unpredicted`): the reading here has gone wrong.
    """

    SAFETY_SECONDS = 1800.0

    def __init__(self, stack: Any):
        from batch_relay.settings import settings
        from moto.dynamodb.models import dynamodb_backends
        from relay_local.stack import ACCOUNT, REGION

        self.tiers = settings().tiers
        self.table = dynamodb_backends[ACCOUNT][REGION].get_table(stack.physical["RequestTable"])
        self.unpredicted = 0

    def look(self, now: float) -> tuple[float, int]:
        """(the next moment a run has work, now if it has some now; requests waiting in tiers)."""
        from batch_relay.lifecycle import WAITS_ON_SUBMITTER
        from batch_relay.store import LIVE
        from batch_relay.submitter import due_at
        from relay_local.stack import WRITES

        keys: dict[str, list[str]] = {name: [] for name in self.tiers}
        stuck = False
        with WRITES:  # the lock the stack's DynamoDB calls hold: no write changes items meanwhile
            for item in self.table.all_items():
                tier = item.attrs.get("pending_tier")
                if tier is None:
                    continue
                if tier.value in keys:
                    keys[tier.value].append(item.attrs["pending_since"].value)
                elif tier.value == LIVE:
                    status = item.attrs.get("status")
                    stuck |= status is not None and status.value in WAITS_ON_SUBMITTER
        moment = now if stuck else math.inf
        for name, tier in self.tiers.items():
            due = due_at(keys[name], tier, now)
            moment = min(moment, math.inf if due is None else due)
        return moment, sum(len(k) for k in keys.values())

    def tick(self, stack: Any, predicted: bool, now: float) -> None:
        if predicted:
            stack.tick()
            return
        before = self.look(now)[1]
        report = stack.tick()
        if report.get("batches") or self.look(now)[1] != before:
            self.unpredicted += 1


@contextmanager
def quicker_moto() -> Iterator[None]:
    """Two of moto's costs that grow with a day of traffic, taken out without changing what it
    answers:
    - its Step Functions engine makes a new boto3 client for every Lambda task it runs, and each
      new client loads the CA bundle (150 ms here); its clients are kept instead, one per region
      and service, as a long-lived engine would;
    - every DynamoDB query sorts all the table's items (not just the index partition asked for)
      comparing them as DynamoDB values, two conversions a comparison; they are sorted on the
      same values converted once each, in the same order."""
    from unittest import mock

    from moto.dynamodb.models.table import Table
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    made: dict[tuple[str, str], Any] = {}
    lock = threading.Lock()
    make = lambda_eval_utils.boto_client_for

    def client(region: str, service: str, state_credentials: Any = None) -> Any:
        with lock:
            if (region, service) not in made:
                made[(region, service)] = make(region, service, state_credentials)
            return made[(region, service)]

    def all_items(self: Any) -> list[Any]:
        items: list[Any] = []
        for hash_set in self.items.values():
            items.extend(hash_set.values() if self.range_key_attr else [hash_set])
        return sorted(
            items,
            key=lambda x: (
                (x.hash_key.cast_value, x.range_key.cast_value) if x.range_key else x.hash_key.cast_value
            ),
        )

    with (
        mock.patch.object(lambda_eval_utils, "boto_client_for", client),
        mock.patch.object(Table, "all_items", all_items),
    ):
        yield


def run(s: Scenario, with_deadlines: bool) -> dict[str, Any]:
    """One pass of the workload through the stack: completions, deadlines, the emulator's records."""
    import anthropic
    from batch_relay import clock
    from relay_local.emulator import Emulator, EmulatorServer
    from relay_local.stack import LocalStack

    tiers = s.tiers
    if not with_deadlines:
        tiers = {name: {k: v for k, v in t.items() if k != "deadline_seconds"} for name, t in tiers.items()}
    params = {
        "TierPolicy": json.dumps(tiers),
        "DefaultTier": "standard",
        "LogLevel": "ERROR",
        **s.parameters,
    }
    arrivals = workload(s)
    emulator = Emulator(latency_seconds=300.0, latency_mix=list(s.latency_mix), seed=s.seed)
    completions: list[dict[str, Any]] = []
    deadline_at: dict[str, float] = {}
    counts: Counter[str] = Counter()
    started = time.perf_counter()
    period = s.step_seconds
    with EmulatorServer(emulator) as server:
        env = {"ANTHROPIC_BASE_URL": server.url, "POWERTOOLS_METRICS_DISABLED": "true"}
        with LocalStack(parameters=params, env=env, wait_cap=0.0) as stack, quicker_moto():
            emulator.clock = lambda: time.time() + stack.offset
            waits = Waits(stack)
            stack.on_wait = waits
            schedule = Schedule(stack)
            inbox = stack.subscribe()
            t0 = clock.now()
            end = t0 + s.arrival_seconds + s.drain_seconds
            pending = list(arrivals)
            last_tick = t0
            next_due = math.inf

            while True:
                now = clock.now()
                if now >= end:
                    break
                if not pending and not waits.running() and next_due == math.inf:
                    completions.extend(stack.drain(inbox))
                    if len({c["request_id"] for c in completions}) >= len(arrivals):
                        break
                # The next moment anything happens, in whole periods of the schedule: an arrival,
                # a poller's wake-up, a tier coming due, the schedule's own regular run.
                moment = min(
                    t0 + pending[0].at if pending else math.inf,
                    waits.next_wake(),
                    next_due,
                    last_tick + Schedule.SAFETY_SECONDS,
                )
                stack.advance(max(1, math.ceil((moment - now) / period)) * period)
                counts["steps"] += 1
                if waits.release():
                    waits.quiet()
                    stack.deliver_realtime()  # what the pollers took out of their batches
                now = clock.now()
                due = []
                while pending and t0 + pending[0].at <= now:
                    a = pending.pop(0)
                    due.append(message(a, now, with_deadlines))
                    within = a.deadline_in or s.tiers[a.tier].get("deadline_seconds")
                    if within:
                        deadline_at[a.request_id] = now + within
                if due:
                    stack.send(due)
                    stack.deliver()
                next_due, _ = schedule.look(now)
                if next_due <= now or now - last_tick >= Schedule.SAFETY_SECONDS:
                    schedule.tick(stack, next_due <= now, now)
                    last_tick = now
                    counts["ticks"] += 1
                    stack.deliver_realtime()
                    waits.quiet()
                    next_due, _ = schedule.look(clock.now())
                if counts["steps"] % 100 == 0:
                    completions.extend(stack.drain(inbox))
            completions.extend(stack.drain(inbox))
            sim_seconds = clock.now() - t0
            invocations = dict(stack.invocations)
            left = waits.running()
            if left:
                waits.close()
        wall = time.perf_counter() - started
        client = anthropic.Anthropic(base_url=server.url, api_key="bench", max_retries=2)
        batches = [_batch(client, b) for b in emulator.batch_ids()]
        realtime = [tuple(m) for m in emulator.messages_created]
    return {
        "with_deadlines": with_deadlines,
        "arrivals": arrivals,
        "completions": completions,
        "deadline_at": deadline_at,
        "batches": batches,
        "realtime_calls": realtime,
        "wall_seconds": wall,
        "sim_seconds": sim_seconds,
        "steps": counts["steps"],
        "ticks": counts["ticks"],
        "unpredicted_ticks": schedule.unpredicted,
        "invocations": invocations,
        "pollers_left": left,
    }


def _batch(client: Any, batch_id: str) -> dict[str, Any]:
    """A batch as the API reports it, and the outcome and usage of each of its lines."""
    batch = client.messages.batches.retrieve(batch_id)
    lines: dict[str, dict[str, Any]] = {}
    if batch.processing_status == "ended":
        for line in client.messages.batches.results(batch_id):
            usage = line.result.message.usage.model_dump() if line.result.type == "succeeded" else None
            lines[line.custom_id] = {"type": line.result.type, "usage": usage}
    created = batch.created_at.timestamp()
    ended = batch.ended_at.timestamp() if batch.ended_at else None
    return {
        "id": batch_id,
        "status": batch.processing_status,
        "created": created,
        "seconds": (ended - created) if ended else None,
        "canceled": batch.cancel_initiated_at is not None,
        "lines": lines,
    }


def tally(result: dict[str, Any], s: Scenario) -> dict[str, Any]:
    """The figures of one run, from its completions and the emulator's records."""
    from batch_relay import clock
    from batch_relay.pricing import cost_of

    per_id: dict[str, list[dict[str, Any]]] = {}
    for c in result["completions"]:
        per_id.setdefault(c["request_id"], []).append(c)
    ids = [a.request_id for a in result["arrivals"]]
    answered = {rid: per_id[rid][0] for rid in ids if rid in per_id}
    models = {a.request_id: a.model for a in result["arrivals"]}

    # Every request's deadline as the workload gives it (explicit, or its tier's from receipt),
    # whether or not this run told the relay about it; the relay's echo of it on the completion.
    deadlines: dict[str, float] = result["deadline_at"]
    echo_mismatches = 0
    if result["with_deadlines"]:
        for rid, c in answered.items():
            echoed = c.get("deadline")
            if (echoed is None) != (rid not in deadlines) or (
                echoed and abs(clock.parse(echoed) - deadlines[rid]) > 1.0
            ):
                echo_mismatches += 1

    routes: Counter[str] = Counter()
    late: Counter[str] = Counter()
    due_by_route: Counter[str] = Counter()
    lateness: list[float] = []
    statuses: Counter[str] = Counter()
    tiers = {a.request_id: a.tier for a in result["arrivals"]}
    by_tier: dict[str, Counter[str]] = {name: Counter() for name in s.tiers}
    took = {b["id"]: b["seconds"] for b in result["batches"]}
    late_in: Counter[str] = Counter()  # late batch answers, by how long their batch took
    for rid, c in answered.items():
        route = c.get("route") or "batch"
        routes[route] += 1
        by_tier[tiers[rid]][route] += 1
        statuses[c["status"]] += 1
        if rid in deadlines:
            due_by_route[route] += 1
            over = clock.parse(c["completed_at"]) - deadlines[rid]
            if over > 0:
                late[route] += 1
                lateness.append(over)
                if route == "batch":
                    seconds = took.get(c.get("batch_id"))
                    late_in[duration(seconds) if seconds is not None else "unknown"] += 1
    # A request with a deadline never answered is late too.
    late["unanswered"] = sum(1 for rid in deadlines if rid not in answered)

    def usd(key: str) -> float:
        return sum(float((c.get("cost") or {}).get(key) or 0.0) for c in answered.values())

    # The both-ways cost each completion states (absent when it states none).
    both_of = {
        rid: float(c["cost"]["both_ways_usd"])
        for rid, c in answered.items()
        if (c.get("cost") or {}).get("both_ways_usd") is not None
    }
    both = list(both_of.values())
    # Every request at list price (always realtime) and at batch price (always batch), on the
    # usage each one's answer reported.
    list_usd = usd("list_usd")
    batch_price_usd = sum(
        (cost_of(models[rid], c.get("usage")) or _zero()).batch_usd for rid, c in answered.items()
    )

    # What the API billed: each succeeded batch line at batch price, each realtime call at list price.
    billed_batch = billed_realtime = 0.0
    in_batches: dict[str, str] = {}
    for b in result["batches"]:
        for cid, line in b["lines"].items():
            in_batches.setdefault(cid, b["id"])
            if line["type"] == "succeeded":
                billed_batch += (cost_of(models.get(cid, ""), line["usage"]) or _zero()).batch_usd
    for model, tokens_in, tokens_out in result["realtime_calls"]:
        billed_realtime += (
            cost_of(model, {"input_tokens": tokens_in, "output_tokens": tokens_out}) or _zero()
        ).list_usd
    realtime_ids = {rid for rid, c in answered.items() if c.get("route") == "realtime"}
    rescued = {rid for rid in realtime_ids if rid in in_batches}
    ran_twice = [
        rid
        for rid in rescued
        if any(b["lines"].get(rid, {}).get("type") == "succeeded" for b in result["batches"])
    ]
    twice_usd = sum(
        (cost_of(models[rid], b["lines"][rid]["usage"]) or _zero()).batch_usd
        for rid in ran_twice
        for b in result["batches"]
        if b["lines"].get(rid, {}).get("type") == "succeeded"
    )
    # What the completions say of the batch copies, request by request: a rescued request whose
    # batch ran it states that copy's batch price; one whose batch ended and was collected without
    # running it states none (so its batch had ended by the time it was answered); one answered
    # while its batch still ran states the estimate from its realtime answer, whether or not the
    # batch goes on to run it. Only rescued requests state one.
    ended_at = {b["id"]: b["created"] + b["seconds"] for b in result["batches"] if b["seconds"] is not None}
    left_out = rescued - set(both_of)
    left_out_early = [
        rid
        for rid in left_out
        if any(
            rid in b["lines"] and ended_at[b["id"]] > clock.parse(answered[rid]["completed_at"]) + 1.0
            for b in result["batches"]
        )
    ]
    both_ran = [rid for rid in ran_twice if rid in both_of]
    durations = sorted(
        b["seconds"] for b in result["batches"] if b["seconds"] is not None and not b["canceled"]
    )
    with_deadline = len(deadlines)
    on_time = with_deadline - sum(late.values())
    return {
        "requests": len(ids),
        "answered": len(answered),
        "answered_twice": sum(1 for v in per_id.values() if len(v) > 1),
        "unanswered": len(ids) - len(answered),
        "statuses": dict(statuses),
        "with_deadline": with_deadline,
        "on_time": on_time,
        "on_time_share": round(on_time / with_deadline, 4) if with_deadline else 1.0,
        "late": sum(late.values()),
        "late_by_route": {r: late[r] for r in ("batch", "realtime", "unanswered")},
        "with_deadline_by_route": {r: due_by_route[r] for r in ("batch", "realtime")},
        "worst_late_seconds": round(max(lateness, default=0.0), 1),
        "by_route": {r: routes[r] for r in ("batch", "realtime")},
        "by_tier": {name: {r: n[r] for r in ("batch", "realtime")} for name, n in by_tier.items()},
        "late_batch_took": dict(late_in),
        "realtime_at_claim": len(realtime_ids - rescued),
        "rescued": len(rescued),
        "batches": len(result["batches"]),
        "batches_canceled": sum(1 for b in result["batches"] if b["canceled"]),
        "batch_seconds_p50": durations[len(durations) // 2] if durations else None,
        "batch_seconds_max": durations[-1] if durations else None,
        "realtime_calls": len(result["realtime_calls"]),
        "list_usd": round(list_usd, 8),
        "batch_price_usd": round(batch_price_usd, 8),
        "paid_usd": round(sum(savings.paid(c) for c in answered.values()) + sum(both), 8),
        "billed_usd": round(billed_batch + billed_realtime, 8),
        "billed_batch_usd": round(billed_batch, 8),
        "billed_realtime_usd": round(billed_realtime, 8),
        "both_ways_count": len(both),
        "both_ways_usd": round(sum(both), 8),
        "ran_twice_count": len(ran_twice),
        "ran_twice_usd": round(twice_usd, 8),
        "both_ways_ran_count": len(both_ran),
        "both_ways_ran_usd": round(sum(both_of[rid] for rid in both_ran), 8),
        "both_ways_missing": len(set(ran_twice) - set(both_of)),
        "both_ways_not_rescued": len(set(both_of) - rescued),
        "both_ways_estimated_unran": len(set(both_of) - set(ran_twice)),
        "both_ways_left_out": len(left_out),
        "both_ways_left_out_early": len(left_out_early),
        "deadline_echo_mismatches": echo_mismatches,
        "wall_seconds": round(result["wall_seconds"], 1),
        "sim_hours": round(result["sim_seconds"] / 3600, 1),
        "steps": result["steps"],
        "submitter_runs": result["ticks"],
        "unpredicted_runs": result["unpredicted_ticks"],
        "invocations": result["invocations"],
        "pollers_left": result["pollers_left"],
    }


def duration(seconds: float) -> str:
    """5 min, 1 h, 6 h 30 min: a duration as the tables print it."""
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min" if minutes else f"{seconds:.0f} s"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"


def _zero() -> Any:
    from batch_relay.models import Cost

    return Cost(batch_usd=0.0, list_usd=0.0, saved_usd=0.0)


def tallied(s: Scenario, with_deadlines: bool) -> dict[str, Any]:
    return tally(run(s, with_deadlines), s)


def measure(s: Scenario | None = None, parallel: bool = True) -> dict[str, Any]:
    """Both runs (side by side in two processes, each with its own moto and emulator, unless
    `parallel` is False) and the figures that compare them."""
    s = s or Scenario()
    if parallel:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            later = pool.submit(tallied, s, False)
            relay = tallied(s, True)
            batch = later.result()
    else:
        relay, batch = tallied(s, True), tallied(s, False)
    # The discount: list price less batch price. Kept: what the relay paid under list price, as a
    # share of what always-batch paid under it (the API's bill, both-ways copies included).
    discount = relay["list_usd"] - batch["billed_usd"]
    kept = (relay["list_usd"] - relay["billed_usd"]) / discount if discount > 0 else 0.0
    return {
        "scenario": {
            "requests": s.requests,
            "seed": s.seed,
            "arrival_hours": round(s.arrival_seconds / 3600, 2),
            "schedule_seconds": s.step_seconds,
            "latency_mix": [list(x) for x in s.latency_mix],
            "tiers": s.tiers,
        },
        "relay": relay,
        "always_batch": batch,
        "always_realtime_usd": relay["list_usd"],
        "discount_kept_share": round(kept, 4),
    }


def small() -> Scenario:
    """A few dozen requests over an hour and a half, for the test suite's guard: batches of five
    minutes or two hours, so that some deadlines need a rescue."""
    return replace(
        Scenario(),
        requests=30,
        arrival_seconds=1.5 * 3600,
        max_deadline=4 * 3600,
        tiers={
            "interactive": {"max_wait_seconds": 120, "min_requests": 1, "deadline_seconds": 1800},
            "standard": {"max_wait_seconds": 1800, "min_requests": 20},
            "overnight": {"max_wait_seconds": 2 * 3600, "min_requests": 1000, "deadline_seconds": 3 * 3600},
        },
        latency_mix=((0.65, 300.0), (0.35, 2 * 3600.0)),
        drain_seconds=12 * 3600,
    )


if __name__ == "__main__":
    import sys
    import warnings

    warnings.filterwarnings("ignore")
    scenario = (
        small()
        if "--small" in sys.argv
        else replace(Scenario(), requests=int(os.environ.get("BENCH_DEADLINE_REQUESTS", "300")))
    )
    print(json.dumps(measure(scenario), indent=2))
