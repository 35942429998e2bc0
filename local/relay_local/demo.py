"""`make demo`: the relay doing its job on this machine, from queue to completions.

AWS is emulated by moto (resources built from template.yaml) and the Anthropic batch API by the
project's emulator, or the real API when ANTHROPIC_API_KEY is set. A realistic workload (support
tickets to summarise, posts to moderate, company records to enrich, with duplicates and invalid
messages among them) goes through the real handlers and the real state machine definition; the
schedule fires once a simulated minute. At the end every request is accounted for against the
table and the topic, and the exit status says whether anything was lost.

Deadlines and the daily budget are part of the run. Tickets must be summarised within 20 minutes
(the urgent tier's `deadline_seconds`), a few within 8 (no batch can make that: they go realtime at
claim), some posts and records name their own deadline, and `DailyBudgetUSD` is set to about what
the tickets and posts may cost at their upper bound. With the emulator (and the demo's own tiers)
the simulated evening starts at 22:00 UTC and two batches are made late: one holding only tickets
that arrive five minutes in (all taken out for realtime before their deadline, so the batch is
canceled) and the first bulk batch (its deadline records taken out, the rest answered when it
ends). That batch's commitment spends the day's budget: bulk waits for the next UTC day, and a
record due before midnight is answered `budget_exceeded`. The poller's waits then follow the
relay's clock, which the demo moves from one thing to do to the next, so hours pass in seconds.

The terminal shows a live view of each tier (buffered, submitted, sent realtime, polled,
completed) and the simulated clock, then the summary. What the functions print (their logs and
metrics) goes to a log file, and the savings page to an HTML file, both named at the end. Piped,
the view is plain lines instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import threading
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from batch_relay import clock
from batch_relay.lifecycle import AT_API
from batch_relay.records import BatchRecord
from relay_ops import savings, term
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text


class Task(NamedTuple):
    tier: str
    max_tokens: int
    instruction: str


TASKS = {
    "tickets": Task(
        "urgent", 128, "Summarise the support ticket in two sentences, then give its priority (P1-P4)."
    ),
    "posts": Task(
        "standard", 64, "Classify the post as ok, spam, scam or abuse. Answer with the label and one reason."
    ),
    "records": Task(
        "bulk", 300, "Enrich the company record: industry, size band, region and one sales angle, as JSON."
    ),
}
DEMO_TIERS = {
    "urgent": {"max_wait_seconds": 120, "min_requests": 1, "deadline_seconds": 1200},
    "standard": {"max_wait_seconds": 600, "min_requests": 100},
    "bulk": {"max_wait_seconds": 1800, "min_requests": 1000},
}
SCHEDULE_SECONDS = 60
REAL_API_CAP = 20
# With the real API the poller's waits are real, at most this long each.
REAL_API_WAIT_CAP = 30.0
DATA = Path(__file__).parent / "data" / "workload.json"
MAX_ROUNDS = 2000
# A run whose work is not done after this long on the relay's clock stops: what is left is lost.
MAX_SIMULATED_SECONDS = 3 * 86400

# Deadlines and budgets. Until it has timed three of its own batches the relay assumes one takes
# DefaultTurnaroundSeconds (the template's default is two hours; the emulator answers at once).
TURNAROUND_SECONDS = 600
MARGIN_SECONDS = 120
# Every tenth ticket: a customer waiting on the line.
ON_THE_LINE_SECONDS = 480
# Every tenth post: before the next newsletter.
POST_DEADLINE_SECONDS = 3600
# Every tenth record, in turn: wanted tonight, or just after midnight (from a 22:00 start).
RECORD_DEADLINES = (3600, 8400)
# The last tenth of the tickets arrive this long after the rest, each due 20 minutes later.
WAVE_AFTER_SECONDS = 300
WAVE_DEADLINE_SECONDS = 1200
# With the emulator: the simulated evening starts at this hour (UTC), and how long the batches the
# demo makes late take: the tickets' batch (canceled long before), the first bulk batch.
START_HOUR_UTC = 22
LATE_SECONDS = {"tickets": 3600.0, "records": 9000.0}
EPS = 1e-3


@dataclass
class Options:
    size: int = 300
    duplicates: int = 6
    invalid: int = 6
    errored_share: float = 0.03
    expired_share: float = 0.02
    latency: float = 1.0
    model: str = "claude-haiku-4-5"
    max_batch: int = 100
    tiers: dict[str, Any] = field(default_factory=lambda: dict(DEMO_TIERS))
    quiet: bool = False
    # Where the functions' log and the savings page are written.
    out: Path = Path("demo-output")
    real_api: bool = field(default_factory=lambda: bool(os.environ.get("ANTHROPIC_API_KEY")))
    # Requests carry deadlines (some their own, the urgent tier's by default).
    deadlines: bool = True
    # With the emulator and the demo's tiers: the late ticket wave and the late bulk batch.
    late: bool = True
    # DailyBudgetUSD: None for the demo's own (with its tiers), 0 for no cap.
    budget_usd: float | None = None

    @property
    def scripted(self) -> bool:
        """The deadlines-and-budget story needs the tiers it was written for."""
        return self.deadlines and self.tiers == DEMO_TIERS


@dataclass
class Plan:
    """What the demo sends: (message, seconds from sending to its deadline or None)."""

    first: list[tuple[Any, float | None]]
    # Sent WAVE_AFTER_SECONDS after the rest (empty unless batches are made late).
    wave: list[tuple[Any, float | None]]
    expected: set[str]


def workload(opts: Options, wave: bool = False) -> Plan:
    """The messages to send, and the ids that must each get one completion."""
    data = json.loads(DATA.read_text())
    kinds = list(TASKS)
    # Each kind of work goes to the tier of the same name, or else to the policy's tiers in turn.
    names = list(opts.tiers)
    tier_of = {
        k: (TASKS[k].tier if TASKS[k].tier in opts.tiers else names[n % len(names)])
        for n, k in enumerate(kinds)
    }
    tickets = len(range(0, opts.size, len(kinds)))
    late_tickets = max(1, tickets // 10) if wave and tickets > 1 else 0
    first: list[tuple[Any, float | None]] = []
    later: list[tuple[Any, float | None]] = []
    for i in range(opts.size):
        kind, j = kinds[i % len(kinds)], i // len(kinds)
        task = TASKS[kind]
        item = data[kind][j % len(data[kind])]
        text = json.dumps(item, ensure_ascii=False) if isinstance(item, dict) else item
        message = {
            "request_id": f"{kind[:-1]}-{i:05d}",
            "tier": tier_of[kind],
            "params": {
                "model": opts.model,
                "max_tokens": task.max_tokens,
                "system": task.instruction,
                "messages": [{"role": "user", "content": f"{text}\n\n(reference {i:05d})"}],
            },
            "metadata": {"source": kind, "team": "support" if kind == "tickets" else "growth"},
        }
        in_wave = kind == "tickets" and j >= tickets - late_tickets
        deadline = _deadline_in(kind, j, in_wave) if opts.deadlines else None
        (later if in_wave else first).append((message, deadline))
    expected = {m["request_id"] for m, _ in first + later}
    first += [first[(i * 7) % len(first)] for i in range(min(opts.duplicates, len(first)))]
    params = first[0][0]["params"]
    invalid: list[Any] = [
        {"request_id": "invalid-stream", "params": {**params, "stream": True}},
        {"request_id": "invalid-tier", "tier": "platinum", "params": params},
        {"request_id": "invalid-no-params"},
        {"request_id": "invalid-max-tokens", "params": {**params, "max_tokens": 0}},
        "{'this': is not JSON}",
        {"request_id": "not a valid id!", "params": params},
    ][: opts.invalid]
    expected |= {
        m["request_id"] for m in invalid if isinstance(m, dict) and m["request_id"].startswith("invalid-")
    }
    return Plan(first + [(m, None) for m in invalid], later, expected)


def _deadline_in(kind: str, j: int, in_wave: bool) -> float | None:
    """Which requests name a deadline of their own (the urgent tier gives the other tickets one)."""
    if kind == "tickets":
        return WAVE_DEADLINE_SECONDS if in_wave else ON_THE_LINE_SECONDS if j % 10 == 4 else None
    if kind == "posts":
        return POST_DEADLINE_SECONDS if j % 10 == 5 else None
    return RECORD_DEADLINES[(j // 10) % 2] if j % 10 == 0 else None


def message_counts(
    entries: list[tuple[Any, float | None]], expected: set[str], later: int = 0
) -> dict[str, int]:
    """How messages sent become requests: a duplicate is answered once, a message with no usable id
    cannot be answered (the buffer logs it and counts it in a metric), and the rest are requests,
    each answered once (an invalid one, rejected)."""
    ids = [m.get("request_id") if isinstance(m, dict) else None for m, _ in entries]
    usable = [i for i in ids if i in expected]
    invalid = [i for i in set(usable) if str(i).startswith("invalid-")]
    return {
        "sent": len(ids),
        "requests": len(set(usable)),
        "duplicates": len(usable) - len(set(usable)),
        "without_id": len(ids) - len(usable),
        "invalid": len(invalid),
        # Sent WAVE_AFTER_SECONDS after the rest.
        "later": later,
    }


def demo_budget(plan: Plan) -> float:
    """The demo's DailyBudgetUSD: what the tickets and posts may cost at most at batch price (the
    relay's own upper bound), rounded up. Once their real, smaller cost is known the difference
    comes back, and bulk gets what is left: most of it, not all."""
    from batch_relay.payloads import request_line
    from batch_relay.pricing import bound, input_tokens_of

    total = 0.0
    for message, _ in plan.first + plan.wave:
        source = (message.get("metadata") or {}).get("source") if isinstance(message, dict) else None
        if source in ("tickets", "posts"):
            p = message["params"]
            line = request_line(message["request_id"], p)
            total += bound(p["model"], input_tokens_of(len(line)), p["max_tokens"], batch=True)
    return math.ceil(total * 1e4) / 1e4


def run(opts: Options, inspect: Any = None) -> dict[str, Any]:
    """Run the demo; returns its summary. `inspect(stack, summary)` is called before teardown."""
    from relay_local.api import emulated
    from relay_local.stack import LocalStack

    if opts.real_api:
        opts.size = min(opts.size, REAL_API_CAP)
    late = opts.scripted and opts.late and not opts.real_api
    plan = workload(opts, wave=late)
    budget = opts.budget_usd if opts.budget_usd is not None else demo_budget(plan) if opts.scripted else 0.0
    params = {
        "TierPolicy": json.dumps(opts.tiers),
        "DefaultTier": next(iter(opts.tiers)),
        "MaxBatchRequests": str(opts.max_batch),
        "LogLevel": "INFO",
        "DefaultTurnaroundSeconds": str(TURNAROUND_SECONDS),
        "DeadlineMarginSeconds": str(MARGIN_SECONDS),
        "DailyBudgetUSD": f"{budget:.4f}",
    }
    # The emulator keeps the relay's (simulated) time, so batch timestamps and turnarounds agree.
    emulator_options = {
        "errored_share": opts.errored_share,
        "expired_share": opts.expired_share,
        "seed": 42,
        "clock": lambda: clock.now(),
    }
    started = time.monotonic()
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    opts.out.mkdir(parents=True, exist_ok=True)
    log_path = opts.out / "functions.log"
    view = LiveView(opts, len(plan.expected))
    with functions_output(log_path), view:
        if opts.real_api:
            view.note(
                f"Using the real Anthropic API (ANTHROPIC_API_KEY is set): {opts.size} requests, {opts.model}"
            )
            if opts.scripted and opts.late:
                view.note(
                    "No batch is made late: the real API's batch durations cannot be forced, so the "
                    "rescue of deadline requests from a late batch is not shown"
                )
        view.note("Starting AWS (moto, from template.yaml) and the Anthropic batch API emulator")
        with (
            emulated(opts.latency, **emulator_options) as (env, emulator),
            LocalStack(parameters=params, env=env, wait_cap=0.0 if emulator else REAL_API_WAIT_CAP) as stack,
        ):
            demo = Run(opts, stack, emulator, view, plan, budget, late and emulator is not None)
            return demo.go(started, inspect)


class Hold(NamedTuple):
    """A tier found due and still waiting after a schedule tick: the day's budget held it."""

    at: float
    left: float


# What a poll of a batch that has not ended does: nothing else needs a look at the table.
ROUTINE = frozenset({("CheckBatchFunction", "GetItem"), ("CheckBatchFunction", "UpdateItem")})


class Watch:
    """What the functions did since the demo last looked: which AWS calls each made (through the
    stack's `after` hook), and how many invocations are running right now."""

    def __init__(self, stack: Any):
        self.lock = threading.Lock()
        self.seen: set[tuple[str, str]] = set()
        self.active = 0
        stack.after = self.after
        invoke = stack.invoke

        def counted(logical_id: str, event: Any) -> Any:
            with self.lock:
                self.active += 1
            try:
                return invoke(logical_id, event)
            finally:
                with self.lock:
                    self.active -= 1

        stack.invoke = counted

    def after(self, function: str, operation: str) -> None:
        with self.lock:
            self.seen.add((function, operation))

    def take(self) -> set[tuple[str, str]]:
        with self.lock:
            seen, self.seen = self.seen, set()
        return seen


class Timeline:
    """The relay's clock, moved from one thing to do to the next (with the emulator).

    The poller's Wait states wait for the relay's clock rather than for real time (`on_wait`), so
    a batch made to take hours is polled as often as it would be in AWS, and nothing is slept
    through: once every poller waits for a moment still to come (`quiet`), the demo moves the
    clock to the next wake-up, schedule tick or arrival (`advance`).
    """

    def __init__(self, stack: Any, watch: Watch):
        self.stack, self.watch = stack, watch
        self.cond = threading.Condition()
        self.wakes: dict[int, float] = {}
        self.closed = False
        stack.on_wait = self.on_wait

    def on_wait(self, seconds: float) -> None:
        key = threading.get_ident()
        with self.cond:
            self.wakes[key] = clock.now() + seconds
            while not self.closed and clock.now() < self.wakes[key]:
                self.cond.wait(timeout=0.5)
            del self.wakes[key]

    def advance(self, seconds: float) -> None:
        with self.cond:
            self.stack.advance(seconds)
            self.cond.notify_all()

    def next_wake(self) -> float | None:
        with self.cond:
            return min(self.wakes.values(), default=None)

    def quiet(self, timeout: float = 3600.0) -> None:
        """Wait until every running poller waits for a moment still to come."""
        import boto3

        sfn = boto3.client("stepfunctions")
        machine = self.stack.arns["PollerStateMachine"]
        end = time.monotonic() + timeout
        while True:
            with self.cond:
                now = clock.now()
                waiting = len(self.wakes)
                idle = not self.watch.active and all(w > now for w in self.wakes.values())
            if idle:
                pages = sfn.get_paginator("list_executions").paginate(
                    stateMachineArn=machine, statusFilter="RUNNING"
                )
                if sum(len(p["executions"]) for p in pages) <= waiting:
                    return
            if time.monotonic() > end:
                raise TimeoutError("poller executions still busy")
            time.sleep(0.002)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def _next_day(ts: float) -> float:
    return (math.floor(ts / 86400) + 1) * 86400.0


class Run:
    """One demo run: sends the workload, fires the schedule, moves the clock, observes.

    What the submitter reads of the table is read again (`look`) only after a tick, or when a
    function did more than poll a batch that has not ended: the tiers' due moments, the holds, the
    view and the end of the run are all worked out from it."""

    def __init__(
        self,
        opts: Options,
        stack: Any,
        emulator: Any,
        view: LiveView,
        plan: Plan,
        budget: float,
        late: bool,
    ):
        from batch_relay.settings import settings
        from batch_relay.store import Store

        self.opts, self.stack, self.emulator, self.view, self.plan = opts, stack, emulator, view, plan
        self.budget = budget
        self.config = settings()
        self.store = Store(self.config.table_name)
        self.watch = Watch(stack)
        self.timeline = Timeline(stack, self.watch) if emulator is not None else None
        # Which late batches are still to be made: before the tick that flushes them.
        self.triggers = ["tickets", "records"] if late else []
        self.asked_late: list[str] = []
        self.late: list[tuple[str, str]] = []
        self.known: list[str] = []
        self.held: dict[str, Hold] = {}
        self.held_ids: dict[str, set[str]] = defaultdict(set)
        self.held_since: dict[str, float] = {}
        self.completions: list[dict[str, Any]] = []
        self.items: list[dict[str, Any]] = []
        self.rounds = self.ticks = 0
        self.t0 = self.last_tick = self.base = 0.0
        # Requests per tier sent so far (valid ones), for the view.
        self.arrived: Counter[str] = Counter()
        self.tick_at: float | None = None
        self.wave_sent = not plan.wave
        self.sent: set[str] = set()

    # driving

    def go(self, started: float, inspect: Any) -> dict[str, Any]:
        stack, view = self.stack, self.view
        if self.timeline is not None and self.opts.scripted:
            # The evening: the budget's UTC day ends while the run goes on.
            now = clock.now()
            start = math.floor(now / 86400) * 86400 + START_HOUR_UTC * 3600
            self.timeline.advance((start if start >= now else start + 86400) - now)
        self.t0 = self.last_tick = clock.now()
        self.base = stack.offset
        self.tick_at = self.grid(self.t0)
        inbox = stack.subscribe()
        self.send(self.plan.first)
        n = message_counts(self.plan.first, self.plan.expected)
        view.note(
            f"Sent {n['sent']} messages: {n['requests']} requests ({n['invalid']} of them invalid, to be "
            f"rejected), {n['duplicates']} duplicates of them (answered once) and {n['without_id']} with "
            "no usable id (logged, nothing to answer)"
            + (
                f"; {len(self.plan.wave)} more tickets come {WAVE_AFTER_SECONDS // 60} minutes in, for "
                f"{len(self.plan.expected)} requests in all"
                if self.plan.wave
                else ""
            )
        )
        if self.budget:
            view.note(f"DailyBudgetUSD {self.budget:.4f}: what the relay may commit per UTC day")
        try:
            self.loop(inbox)
        finally:
            if self.timeline is not None:
                self.timeline.close()
        self.completions += stack.drain(inbox)
        items = _items(stack)
        report = savings.gather(items, {t: v["max_wait_seconds"] for t, v in self.opts.tiers.items()})
        log_path, page_path = self.opts.out / "functions.log", self.opts.out / "report.html"
        seconds = time.monotonic() - started
        summary = summarise(items, self.completions, self.plan.expected, self.rounds, seconds)
        summary["ticks"] = self.ticks
        summary["messages"] = message_counts(
            self.plan.first + self.plan.wave, self.plan.expected, len(self.plan.wave)
        )
        summary |= self.story(items)
        summary |= {"waits": report.waits, "report": str(page_path), "log": str(log_path)}
        notes = [*late_lines(summary), *held_lines(summary)]
        page_path.write_text(
            savings.page(report, "Batch relay demo: savings report", notes), encoding="utf-8"
        )
        if inspect is not None:
            inspect(stack, summary)
        return summary

    def loop(self, inbox: str) -> None:
        stack = self.stack
        arrived = True
        for self.rounds in range(1, MAX_ROUNDS + 1):
            if not self.wave_sent and clock.now() >= self.t0 + WAVE_AFTER_SECONDS - EPS:
                self.send(self.plan.wave)
                self.wave_sent = arrived = True
                n = len(self.plan.wave)
                self.view.note(
                    f"{_hhmm(clock.now())} {n} more ticket{'s arrive' if n > 1 else ' arrives'}, each due in "
                    f"{WAVE_DEADLINE_SECONDS // 60} minutes"
                )
            # A few Lambda-sized batches at a time, so the view follows the buffer as it fills.
            while arrived and sum(stack.deliver(rounds=5).values()):
                self.look()
            arrived = False
            ticked = self.tick_at is not None and clock.now() >= self.tick_at - EPS
            done = self.tick() if ticked else set()
            seen = self.settle(done)
            if any(op.startswith("Publish") for _, op in done | seen):
                self.completions += stack.drain(inbox)
            if seen - ROUTINE:
                self.look()
            if ticked or seen - ROUTINE:
                if self.wave_sent and not self.pending() and not self.live():
                    return
                self.tick_at = self.next_tick()
            wake = self.timeline.next_wake() if self.timeline is not None else None
            arrive = None if self.wave_sent else self.t0 + WAVE_AFTER_SECONDS
            moments = [m for m in (self.tick_at, wake, arrive) if m is not None]
            if not moments:
                # Work is left that nothing scheduled will move: let the schedule run on.
                self.tick_at = self.grid(clock.now())
                moments = [self.tick_at]
            if min(moments) - self.t0 > MAX_SIMULATED_SECONDS:
                self.view.note(f"Work left after {MAX_SIMULATED_SECONDS // 86400} simulated days: stopped")
                return
            self.advance(min(moments) - clock.now())

    def look(self) -> None:
        """Read what the submitter reads: each tier's pending requests, the live batches and the
        day's budget (index queries and a get, not a scan: the table only grows). The view is
        drawn from it and from the completions."""
        from batch_relay.store import LIVE

        self.items = [i for name in [*self.config.tiers, LIVE] for i in self.store.waiting(name)]
        budget = self.store.get(f"budget#{clock.iso(clock.now())[:10]}")
        self.items += [budget] if budget else []
        if not self.opts.quiet:
            self.view.update(self.snapshot())

    def advance(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        if self.timeline is not None:
            self.timeline.advance(seconds)
        else:
            self.stack.advance(seconds)

    def grid(self, moment: float) -> float:
        """The first schedule tick at or after `moment` and after the last one."""
        moment = max(moment, self.last_tick + EPS)
        return self.t0 + SCHEDULE_SECONDS * max(1, math.ceil((moment - self.t0) / SCHEDULE_SECONDS - EPS))

    def tick(self) -> set[tuple[str, str]]:
        """Fire the submitter as its schedule would (making a batch late first if one is due),
        then see which tiers it left waiting; returns what the functions did meanwhile."""
        for why in list(self.triggers):
            if self.late_due(why):
                self.emulator.make_late(1, LATE_SECONDS[why])
                self.asked_late.append(why)
                self.triggers.remove(why)
                what = "the tickets that just arrived" if why == "tickets" else "bulk's first"
                self.view.note(
                    f"{_hhmm(clock.now())} the API will take {LATE_SECONDS[why] / 3600:g} h over its "
                    f"next batch: {what}"
                )
        self.stack.tick()
        self.ticks += 1
        self.last_tick = clock.now()
        if self.emulator is not None:
            made = self.emulator.batch_ids()
            for batch_id in made[len(self.known) :]:
                if self.asked_late:
                    self.late.append((batch_id, self.asked_late.pop(0)))
            self.known = made
        done = self.watch.take()
        self.look()
        self.observe_holds()
        return done

    def late_due(self, why: str) -> bool:
        if why == "tickets":
            return self.wave_sent
        name = self.tier_of("records")
        at = self.tier_due(name)
        return at is not None and at <= clock.now() + EPS

    def tier_of(self, kind: str) -> str:
        names = list(self.opts.tiers)
        task = TASKS[kind].tier
        return task if task in names else names[list(TASKS).index(kind) % len(names)]

    def settle(self, done: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Let everything that can run now run (pollers, the realtime function, which the tick's
        realtime sends in `done` call for); returns what the functions did."""
        if self.timeline is None:
            self.stack.deliver_realtime()
            self.stack.settle(timeout=3600)
            self.stack.deliver_realtime()
            return self.watch.take() | {("", "Publish")}
        self.timeline.quiet()
        seen = self.watch.take()
        sent = done | seen
        while any(op.startswith("SendMessage") for _, op in sent):
            self.stack.deliver_realtime()
            self.timeline.quiet()
            sent = self.watch.take()
            seen |= sent
        return seen

    # what the table says (from the last look)

    def pending(self, name: str | None = None) -> list[dict[str, Any]]:
        return [
            i
            for i in self.items
            if i.get("kind") == "request"
            and i.get("status") == "pending"
            and (i.get("pending_tier") == name if name else i.get("pending_tier"))
        ]

    def live(self) -> list[BatchRecord]:
        from batch_relay.store import LIVE

        listed = (i for i in self.items if i.get("kind") == "batch" and i.get("pending_tier") == LIVE)
        return [BatchRecord.model_validate(i) for i in listed]

    def left(self) -> float:
        day = clock.iso(clock.now())[:10]
        spent = next(
            (int(i.get("committed_micros", 0)) / 1e6 for i in self.items if i.get("pk") == f"budget#{day}"),
            0.0,
        )
        return self.budget - spent if self.budget else math.inf

    def tier_due(self, name: str) -> float | None:
        """When the submitter finds this tier due: its oldest request's max wait, the flush moment
        of its most urgent deadline request, or now when enough requests wait."""
        from batch_relay.submitter import due_at

        keys = [str(i["pending_since"]) for i in self.pending(name)]
        return due_at(keys, self.config.tiers[name], clock.now())

    def next_tick(self) -> float | None:
        """The next schedule tick that finds work (the others are skipped)."""
        from batch_relay.lifecycle import BATCH, WAITS_ON_SUBMITTER, Mover

        now = clock.now()
        # A realtime record is closed by whichever run comes next, once its requests are answered.
        live = [b.status for b in self.live() if BATCH[b.status].mover is not Mover.POLLER]
        moments = [now for status in live if status in WAITS_ON_SUBMITTER]
        for name in self.config.tiers:
            at = self.tier_due(name)
            if at is None:
                continue
            hold = self.held.get(name)
            if hold is not None:
                # Held: until the next UTC day, budget given back, or a deadline that cannot wait.
                freed = [now] if self.left() > hold.left + 1e-9 else []
                at = min([_next_day(hold.at), *self.late_moments(name), *freed])
            moments.append(at)
        if not moments and live and (self.timeline is None or self.timeline.next_wake() is None):
            moments.append(now)
        return self.grid(min(moments)) if moments else None

    def late_moments(self, name: str) -> list[float]:
        """When each deadline request waiting in a tier is sent realtime if its tier cannot flush."""
        from batch_relay.deadlines import Turnaround, flush_by

        turnaround = Turnaround(self.store, self.config)
        out = []
        for item in self.pending(name):
            after = turnaround.late_after(item)
            if after is not None:
                out.append(max(flush_by(item["pending_since"]) or 0.0, after + 1))
        return out

    def observe_holds(self) -> None:
        """After a tick: a tier due but still waiting was held by the day's budget."""
        if not self.budget:
            return
        holds = {name for name in self.config.tiers if (self.store.held_until(name) or 0.0) > clock.now()}
        for name in self.config.tiers:
            at = self.tier_due(name)
            if at is None or at > clock.now() + EPS or name in holds:
                self.held.pop(name, None)
                continue
            self.held[name] = Hold(clock.now(), self.left())
            self.held_since.setdefault(name, clock.now())
            self.held_ids[name].update(i["request_id"] for i in self.pending(name))

    # observing

    def send(self, entries: list[tuple[Any, float | None]]) -> None:
        """Send messages to the request queue, each deadline so many seconds from now."""
        now = clock.now()
        bodies = []
        for message, deadline in entries:
            rid = message.get("request_id") if isinstance(message, dict) else None
            if rid in self.plan.expected and rid not in self.sent and message.get("tier") in self.opts.tiers:
                self.arrived[message["tier"]] += 1
                self.sent.add(rid)
            stamp = clock.iso(now + deadline).replace("Z", "+00:00") if deadline is not None else None
            bodies.append({**message, "deadline": stamp} if stamp else message)
        self.stack.send(bodies)

    def snapshot(self) -> dict[str, Any]:
        """Per tier, from the last look and the completions so far: requests waiting in the
        buffer, inside a batch at the API, answered by the Messages API, batches being polled, and
        requests completed."""
        columns = ("requests", "buffered", "submitted", "realtime", "polling", "completed")
        rows = {t: dict.fromkeys(columns, 0) | {"requests": self.arrived[t]} for t in self.opts.tiers}
        for i in self.pending():
            if i["pending_tier"] in rows:
                rows[i["pending_tier"]]["buffered"] += 1
        for b in self.live():
            if b.tier in rows and b.batch_id and b.status in AT_API:
                rows[b.tier]["polling"] += 1
        rejected = 0
        for c in self.completions:
            row = rows.get(c.get("tier") or "")
            if c["status"] == "rejected" or row is None:
                rejected += c["status"] == "rejected"
                continue
            row["completed"] += 1
            row["realtime"] += c.get("route") == "realtime"
        for row in rows.values():
            row["submitted"] = max(0, row["requests"] - row["buffered"] - row["completed"])
        total = {k: sum(r[k] for r in rows.values()) for k in columns}
        # Rejected messages are answered too: they count toward the demo's total of completions.
        total["completed"] += rejected
        batches = {c.get("batch_id") for c in self.completions} | {b.batch_id for b in self.live()}
        now = clock.now()
        return {
            "tiers": rows,
            "all": total,
            "rejected": rejected,
            "batches": len(self.emulator.batch_ids()) if self.emulator else len(batches - {None}),
            "polls": self.stack.invocations.get("CheckBatchFunction", 0),
            "ticks": self.ticks,
            "now": now,
            "offset": self.stack.offset - self.base,
            "held": set(self.held),
            "budget": {"day": clock.iso(now)[:10], "committed": self.budget - self.left(), "cap": self.budget}
            if self.budget
            else None,
        }

    def story(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Routes, deadlines, late batches, requests run both ways, and the budget, from the
        completions and the table."""
        requests = {i["request_id"]: i for i in items if i.get("kind") == "request" and i.get("request_id")}
        answered = [c for c in self.completions if c["status"] != "rejected"]
        routes = Counter(c.get("route") or "batch" for c in answered)
        realtime = [c for c in answered if c.get("route") == "realtime"]
        rescued = [c for c in realtime if requests.get(c["request_id"], {}).get("rescued_from")]
        exceeded = [c for c in answered if (c.get("error") or {}).get("type") == "budget_exceeded"]
        with_deadline = [c for c in answered if c.get("deadline")]
        # Met: answered (succeeded) by the deadline; missed: answered after it; failed: answered in
        # time with an error (budget_exceeded, or a batch error with no attempt left).
        kinds = ("met", "missed", "failed")
        deadlines: dict[str, Any] = {
            "requests": len(with_deadline),
            **dict.fromkeys(kinds, 0),
            "by_route": {},
        }
        for c in with_deadline:
            in_time = clock.parse(c["completed_at"]) <= clock.parse(c["deadline"])
            key = "missed" if not in_time else "met" if c["status"] == "succeeded" else "failed"
            deadlines[key] += 1
            row = deadlines["by_route"].setdefault(c.get("route") or "batch", dict.fromkeys(kinds, 0))
            row[key] += 1
        records = {
            r.batch_id: r
            for r in (BatchRecord.model_validate(i) for i in items if i.get("kind") == "batch")
            if r.batch_id
        }
        made_late = dict(self.late)
        late = []
        for batch_id, record in records.items():
            if batch_id not in made_late and not record.n_rescued:
                continue
            count, moved = record.request_count, record.n_rescued
            created, ended = record.created_at or record.submitted_at, record.ended_at
            late.append(
                {
                    "batch_id": batch_id,
                    "why": made_late.get(batch_id),
                    "tier": record.tier,
                    "created_at": created,
                    "ran_seconds": round(clock.parse(ended) - clock.parse(created), 1)
                    if created and ended
                    else None,
                    "requests": count,
                    "rescued": moved,
                    "answered_by_batch": count - moved,
                    "canceled": bool(moved) and moved >= count,
                }
            )
        both = [i for i in requests.values() if i.get("both_ways_usd") is not None]
        days = {
            i["pk"].split("#", 1)[1]: round(int(i.get("committed_micros", 0)) / 1e6, 6)
            for i in items
            if str(i.get("pk", "")).startswith("budget#")
        }
        held = []
        for name, ids in self.held_ids.items():
            went = [
                clock.parse(requests[r]["submitted_at"])
                for r in ids
                if r in requests
                and requests[r].get("route", "batch") == "batch"
                and requests[r].get("submitted_at")
                and clock.parse(requests[r]["submitted_at"]) > self.held_since[name]
            ]
            held.append(
                {
                    "tier": name,
                    "requests": len(ids),
                    "since": clock.iso(self.held_since[name]),
                    "went_on_at": clock.iso(min(went)) if went else None,
                    "went_on": len(went),
                }
            )
        return {
            "routes": dict(routes),
            "deadlines": deadlines,
            "realtime": {
                "answered": len(realtime),
                "routed": len(realtime) - len(rescued),
                "rescued": len(rescued),
                "budget_exceeded": len(exceeded),
                "paid_usd": round(sum((c.get("cost") or {}).get("list_usd") or 0.0 for c in realtime), 6),
            },
            "late_batches": sorted(late, key=lambda b: b["created_at"] or ""),
            "both_ways": {
                "requests": len(both),
                "answered_realtime": sum(1 for i in both if i.get("status") == "succeeded"),
                "batch_usd": round(sum(float(i["both_ways_usd"]) for i in both), 6),
                "realtime_usd": round(
                    sum(float((i.get("cost") or {}).get("list_usd") or 0) for i in both), 6
                ),
            },
            "budget": {
                "daily_usd": self.budget,
                "committed": days,
                "held": held,
                "exceeded": len(exceeded),
            },
            "started_at": clock.iso(self.t0),
        }


def _hhmm(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%H:%M")


@contextlib.contextmanager
def functions_output(path: Path) -> Iterator[TextIO]:
    """What the functions print (Powertools logs, EMF metrics, warnings) goes to `path`.

    In Lambda that output is CloudWatch's; here it would bury the view. stdout and stderr point at
    the file while the stack runs, and so do the log handlers that write to a stream (Powertools
    binds its handler to the stdout of the moment it was made). The view keeps the terminal: its
    console holds the streams from before.
    """
    with path.open("w", encoding="utf-8") as log:
        moved = [(h, _point(h, log)) for h in _stream_handlers()]
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield log
        finally:
            for handler, stream in moved:
                _point(handler, stream)
            # Handlers made while the file was stdout must not write to it once it is closed.
            for handler in _stream_handlers():
                if handler.stream is log:
                    _point(handler, sys.__stdout__)


def _point(handler: logging.StreamHandler[Any], stream: Any) -> Any:
    """Swap a handler's stream; unlike setStream, never flushes the old one (it may be closed)."""
    with handler.lock or contextlib.nullcontext():
        old, handler.stream = handler.stream, stream
    return old


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [
        h
        for lg in loggers
        if isinstance(lg, logging.Logger)
        for h in lg.handlers
        # Exactly StreamHandler: files and test-capture handlers (subclasses) keep their streams.
        if type(h) is logging.StreamHandler
    ]


FINAL = savings.FINAL
FINAL = savings.FINAL


class LiveView:
    """The demo as it runs: per tier, what is buffered, submitted, sent realtime, polled and completed.

    On a terminal, a Rich Live table redrawn in place (stderr, so `--json` keeps stdout clean);
    piped, one plain line per round in which something moved.
    """

    def __init__(self, opts: Options, total: int):
        self.opts, self.total = opts, total
        self.console = term.console(sys.stderr)
        self.live = self.console.is_terminal and not opts.quiet
        self.state: dict[str, Any] = {}
        self.notes: list[str] = []
        self.started = time.monotonic()
        self._live = Live(
            self,
            console=self.console,
            refresh_per_second=4,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._last = ""

    def __enter__(self) -> LiveView:
        if self.live:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self._live.stop()

    def note(self, text: str) -> None:
        self.notes.append(text)
        if not self.live and not self.opts.quiet:
            self.console.print(text)

    def update(self, state: dict[str, Any]) -> None:
        if self.opts.quiet:
            return
        self.state = state
        held = state["held"]
        if not self.live:
            s = self.state
            text = (
                f"{_clock_text(s)}  completed {s['all']['completed']}/{self.total}  "
                f"buffered {s['all']['buffered']}  submitted {s['all']['submitted']}  "
                f"realtime {s['all']['realtime']}  batches polling {s['all']['polling']}  polls {s['polls']}"
                + (f"  held by the budget: {', '.join(sorted(held))}" if held else "")
            )
            body = text.split("  ", 1)[1]
            if body != self._last:
                self.console.print(text)
                self._last = body

    def __rich__(self) -> RenderableType:
        s = self.state
        heading = Text.assemble(
            ("batch relay demo", "bold"),
            "  ",
            (_clock_text(s) if s else "starting", "cyan"),
            "  ",
            (f"wall {time.monotonic() - self.started:.0f} s", "dim"),
        )
        if not s:
            return Group(heading, *[Text(n, style="dim") for n in self.notes])
        grid = Table(box=None, pad_edge=False, header_style="bold")
        grid.add_column("tier")
        grid.add_column("flush wait", justify="right")
        for c in ("buffered", "submitted", "realtime", "polling", "completed"):
            grid.add_column(c, justify="right")
        grid.add_column("", width=24)
        for name, row in s["tiers"].items():
            wait = self.opts.tiers[name]["max_wait_seconds"]
            grid.add_row(
                Text.assemble(name, (" held" if name in s["held"] else "", "yellow")),
                f"{wait / 60:g} min",
                str(row["buffered"]),
                str(row["submitted"]),
                str(row["realtime"]),
                str(row["polling"]),
                f"{row['completed']}/{row['requests']}",
                ProgressBar(total=max(row["requests"], 1), completed=row["completed"], width=24),
            )
        a = s["all"]
        grid.add_row(
            Text("all", style="bold"),
            "",
            str(a["buffered"]),
            str(a["submitted"]),
            str(a["realtime"]),
            str(a["polling"]),
            f"{a['completed']}/{self.total}",
            ProgressBar(total=max(self.total, 1), completed=a["completed"], width=24),
        )
        budget = s.get("budget")
        footer = Text(
            "buffered: waiting in its tier · submitted: in a batch at the API · realtime: sent to the "
            "Messages API (no batch could make its deadline) · polling: batches the poller is watching"
            " · held: its next batch, at its upper bound, would pass the day's budget"
            f"\n{s['rejected']} rejected at intake (answered at once) · "
            f"{s['batches']} batches created · {s['polls']} polls · schedule ticks {s['ticks']}"
            + (
                f"\nbudget {budget['day']}: {budget['committed']:.4f} of {budget['cap']:.4f} USD committed"
                if budget
                else ""
            ),
            style="dim",
        )
        return Group(heading, *[Text(n, style="dim") for n in self.notes[-12:]], "", grid, "", footer)


def _clock_text(s: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(s["now"], tz=UTC).strftime("%Y-%m-%d %H:%M")
    ahead = int(s["offset"])
    return f"simulated clock {when} UTC (+{ahead // 3600}:{ahead % 3600 // 60:02d} h)"


def _items(stack: Any) -> list[dict[str, Any]]:
    from batch_relay.store import Store

    return list(Store(stack.physical["RequestTable"]).scan())


def summarise(
    items: list[dict[str, Any]],
    completions: list[dict[str, Any]],
    expected: set[str],
    rounds: int,
    seconds: float,
) -> dict[str, Any]:
    per_id = Counter(c["request_id"] for c in completions)
    statuses = Counter(c["status"] for c in completions)
    retried = sum(1 for c in completions if c.get("attempts", 0) > 1)
    lost = sorted(expected - set(per_id))
    twice = sorted(k for k, n in per_id.items() if n > 1)
    latencies = [clock.parse(c["completed_at"]) - clock.parse(c["received_at"]) for c in completions]
    usage = Counter[str]()
    cost: defaultdict[str, float] = defaultdict(float)
    for c in completions:
        for k in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            usage[k] += (c.get("usage") or {}).get(k) or 0
        # What was paid, by route (a realtime answer's batch_usd was never paid).
        cost["realtime_usd" if c.get("route") == "realtime" else "batch_usd"] += savings.paid(c)
        for k in ("list_usd", "saved_usd"):
            cost[k] += (c.get("cost") or {}).get(k) or 0.0
    # Batch copies of requests answered in realtime, as the table knows them at the end.
    cost["both_ways_usd"] = sum(float(i["both_ways_usd"] or 0.0) for i in savings.completed(items))
    cost["paid_usd"] = cost["batch_usd"] + cost["realtime_usd"] + cost["both_ways_usd"]
    cost["net_saved_usd"] = cost["list_usd"] - cost["paid_usd"]
    return {
        "requests": len(expected),
        "completions": len(completions),
        "statuses": dict(statuses),
        "retried": retried,
        "lost": lost,
        "duplicated": twice,
        "batches": len([i for i in items if i.get("kind") == "batch" and i.get("batch_id")]),
        "rounds": rounds,
        "wall_seconds": round(seconds, 1),
        "latency_seconds": {
            "p50": round(statistics.median(latencies), 1) if latencies else None,
            "p95": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
            "max": round(max(latencies), 1) if latencies else None,
        },
        "tokens": dict(usage),
        "cost_usd": {k: round(v, 6) for k, v in cost.items()},
        "samples": _samples(completions),
    }


def _samples(completions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A few completions of each kind: by batch, by realtime, and not succeeded (one per error)."""
    ok = [c for c in completions if c["status"] == "succeeded"]
    batch = [c for c in ok if c.get("route") != "realtime"][:2]
    realtime = [c for c in ok if c.get("route") == "realtime"][:1]
    failed: dict[str, dict[str, Any]] = {}
    for c in completions:
        if c["status"] != "succeeded":
            failed.setdefault(f"{c['status']}:{(c.get('error') or {}).get('type')}", c)
    picked = batch + realtime
    picked += ok[len(batch) : len(batch) + 3 - len(picked)] if len(picked) < 3 else []
    return picked + list(failed.values())[:3]


def summary_view(summary: dict[str, Any], plain: bool) -> list[RenderableType]:
    """The final summary: samples, outcomes, waits per tier, cost, deadlines and budget, and whether
    all is accounted for."""
    samples = []
    for c in summary["samples"]:
        if c["status"] == "succeeded":
            text = c["message"]["content"][0]["text"] if isinstance(c.get("message"), dict) else "(in S3)"
        else:
            text = f"{c['error']['type']}: {c['error']['message']}"
        samples.append(
            {
                **c,
                "tier": c.get("tier") or "-",
                "route": "-" if c["status"] == "rejected" else c.get("route") or "batch",
                # Answers are data, not markup: the emulator's start with "[emulated]".
                "detail": escape(text.replace("\n", " ")[:80]),
            }
        )
    outcomes = [{"status": k, "requests": n} for k, n in sorted(summary["statuses"].items())]
    outcomes.append({"status": "total", "requests": summary["completions"]})
    late_in = Counter[str]()
    for b in summary.get("late_batches", []):
        if b.get("why"):
            late_in[b["tier"]] += b["requests"]
    queued = [
        {
            "tier": w["tier"],
            "batched": w["queued"],
            "flush wait": _minutes(w["max_wait_seconds"]),
            "median": _minutes(w["queued_p50"]),
            "slowest": _minutes(w["queued_max"]),
            "over": w["over_max_wait"],
        }
        for w in summary.get("waits", [])
    ]
    done = [
        {
            "tier": w["tier"],
            "requests": w["requests"],
            "median": _minutes(w["p50"]),
            "p95": _minutes(w["p95"]),
            "slowest": _minutes(w["max"]),
            "in late batch": late_in[w["tier"]],
            "with deadline": w["with_deadline"],
            "missed": w["missed"],
            "least spare": _minutes(w["least_spare"]),
        }
        for w in summary.get("waits", [])
    ]
    t, c = summary["tokens"], summary["cost_usd"]
    cached = t.get("cache_creation_input_tokens", 0) + t.get("cache_read_input_tokens", 0)
    net_pct = 100 * c.get("net_saved_usd", 0) / c["list_usd"] if c.get("list_usd") else 0.0
    cost = [
        {"": "input tokens", "amount": f"{t.get('input_tokens', 0):,}"},
        {"": "output tokens", "amount": f"{t.get('output_tokens', 0):,}"},
        {"": "cache tokens", "amount": f"{cached:,}"},
        {"": "paid at batch price", "amount": f"{c.get('batch_usd', 0):.4f} USD"},
        {"": "paid at list price (realtime)", "amount": f"{c.get('realtime_usd', 0):.4f} USD"},
        {"": "batch copies of rescued requests", "amount": f"{c.get('both_ways_usd', 0):.4f} USD"},
        {"": "paid in all", "amount": f"{c.get('paid_usd', 0):.4f} USD"},
        {"": "list price of the same answers", "amount": f"{c.get('list_usd', 0):.4f} USD"},
        {"": f"saved, net ({net_pct:.0f}% of list price)", "amount": f"{c.get('net_saved_usd', 0):.4f} USD"},
    ]
    if summary["lost"] or summary["duplicated"]:
        verdict = Text(f"LOST: {summary['lost']}  DUPLICATED: {summary['duplicated']}", style="bold red")
    else:
        verdict = Text(
            f"Every request accounted for: {summary['requests']} in, "
            f"{summary['completions']} completions out.",
            style="bold green",
        )
    q_cols = ["tier", "batched", "flush wait", "median", "slowest", "over"]
    d_cols = ["tier", "requests", "median", "p95", "slowest", "in late batch", "with deadline", "missed"]
    d_cols.append("least spare")
    out: list[RenderableType] = [
        _titled("Sample completions (emulated answers name the request they answer)", plain),
        term.table(samples, ["request_id", "status", "tier", "route", "detail"], plain=plain),
        _titled("Messages and outcomes", plain),
        *messages_lines(summary),
        term.table(outcomes, ["status", "requests"], plain=plain, numeric=["requests"]),
        f"({summary['retried']} needed more than one batch: transient errors and expiries are retried)",
        _titled("Time in the tier before its batch, against the tier's flush wait (minutes)", plain),
        term.table(queued, q_cols, plain=plain, numeric=q_cols[1:]),
        "The flush wait (max_wait_seconds) bounds how long a request waits in its tier, not its "
        "completion; batched: first tries a batch took; over: waited past it by more than a schedule tick "
        "(a tier the day's budget held).",
        _titled("Receipt to completion, against each request's deadline (minutes)", plain),
        term.table(done, d_cols, plain=plain, numeric=d_cols[1:]),
        "Receipt to completion is the time in the tier plus the batch's turnaround; least spare: the "
        "least time left before a deadline when its answer came (below 0: missed).",
        *late_lines(summary),
        f"Batches created: {summary['batches']}, schedule ticks: {summary.get('ticks', summary['rounds'])}, "
        f"wall time: {summary['wall_seconds']} s",
        _titled("Cost", plain),
        term.table(cost, ["", "amount"], plain=plain, numeric=["amount"]),
    ]
    if "routes" in summary:
        out += deadline_view(summary, plain)
    out += ["", verdict]
    if summary.get("report"):
        out.append(Text.assemble("Savings report: ", (str(summary["report"]), "bold")))
    if summary.get("log"):
        out.append(Text.assemble("Functions' log and metrics: ", (str(summary["log"]), "bold")))
    return out


def deadline_view(summary: dict[str, Any], plain: bool) -> list[RenderableType]:
    """Routes, deadlines met and missed, late batches, requests run both ways, and the budget."""
    d, rt, both, budget = summary["deadlines"], summary["realtime"], summary["both_ways"], summary["budget"]
    kinds = ("met", "missed", "failed")
    rows = []
    for route in ("batch", "realtime"):
        row = d["by_route"].get(route, {})
        rows.append(
            {"route": route, "requests": summary["routes"].get(route, 0)}
            | {"with deadline": sum(row.get(k, 0) for k in kinds)}
            | {k: row.get(k, 0) for k in kinds}
        )
    numbers = ["requests", "with deadline", *kinds]
    out: list[RenderableType] = [
        _titled("Routes and deadlines", plain),
        term.table(rows, ["route", *numbers], plain=plain, numeric=numbers),
        f"{d['met']} of {d['requests']} deadlines met, {d['missed']} missed, {d['failed']} answered in time "
        f"with an error. Realtime: {rt['routed']} sent because no batch could answer by the deadline, "
        f"{rt['rescued']} taken out of a batch that had not ended; {rt['budget_exceeded']} of them answered "
        "errored budget_exceeded (the day's budget was spent).",
    ]
    if both["requests"]:
        out.append(
            f"Ran both ways: {both['requests']} requests taken out of a batch were also run by it "
            f"({both['batch_usd']:.4f} USD at batch price); {both['answered_realtime']} of them were "
            f"answered in realtime ({both['realtime_usd']:.4f} USD)."
        )
    if budget["daily_usd"]:
        days = ", ".join(f"{day} {usd:.4f}" for day, usd in sorted(budget["committed"].items()))
        out.append(f"Daily budget {budget['daily_usd']:.4f} USD; committed (USD) per UTC day: {days or '-'}.")
        out += held_lines(summary)
    return out


def messages_lines(summary: dict[str, Any]) -> list[str]:
    """Messages sent, reconciled with requests and completions."""
    n = summary.get("messages")
    if not n:
        return []
    return [
        f"{n['sent']} messages sent"
        + (
            f" ({n['later']} of them tickets sent {WAVE_AFTER_SECONDS // 60} minutes in)"
            if n["later"]
            else ""
        )
        + f" = {n['requests']} requests + {n['duplicates']} duplicates (answered once) + {n['without_id']} "
        "with no usable id (logged and counted, nothing to answer).",
        f"{n['requests']} requests ({n['invalid']} invalid, rejected at intake) -> "
        f"{summary['completions']} completions:",
    ]


def late_lines(summary: dict[str, Any]) -> list[str]:
    """The batches made late on purpose (and any other a request was taken out of), by name."""
    out = []
    for b in summary.get("late_batches", []):
        ran = f"{_minutes(b['ran_seconds'])} min" if b["ran_seconds"] is not None else "?"
        why = "made late on purpose" if b.get("why") else "late"
        what = (
            "every request went realtime, so it was canceled"
            if b["canceled"]
            else f"the other {b['answered_by_batch']} were answered by the batch when it ended"
        )
        out.append(
            f"Late batch {b['batch_id']} ({b['tier']}, {why}, ran {ran}): {b['rescued']} of its "
            f"{b['requests']} requests taken out for realtime before their deadline; {what}."
        )
    return out


def held_lines(summary: dict[str, Any]) -> list[str]:
    out = []
    for h in (summary.get("budget") or {}).get("held", []):
        went = f"went on at {_when(h['went_on_at'])} UTC" if h["went_on_at"] else "did not go on by batch"
        out.append(
            f"Held by the budget: {h['tier']}, {h['requests']} requests waiting from {_when(h['since'])} "
            "UTC (its next batch, at its upper bound, would pass the day's budget); "
            f"{h['went_on']} of them {went}."
        )
    return out


def _when(stamp: str) -> str:
    return stamp[:16].replace("T", " ")


def _titled(text: str, plain: bool) -> Text:
    return Text("\n" + text, style="" if plain else "bold underline")


def _minutes(seconds: float | None) -> str:
    """Durations of a view in one unit: minutes."""
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def report(summary: dict[str, Any]) -> str:
    """The summary as plain text."""
    out = Console(file=None, width=term.PLAIN_WIDTH, no_color=True, highlight=False, record=True)
    with out.capture() as captured:
        out.print(*summary_view(summary, plain=True), sep="\n")
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay-local demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=300, help="valid requests to send (default 300)")
    parser.add_argument("--duplicates", type=int, default=6, help="requests sent twice (default 6)")
    parser.add_argument("--invalid", type=int, default=6, choices=range(7), help="invalid messages (0-6)")
    parser.add_argument(
        "--errored-share", type=float, default=0.03, help="emulated errored share (default 0.03)"
    )
    parser.add_argument(
        "--expired-share", type=float, default=0.02, help="emulated expired share (default 0.02)"
    )
    parser.add_argument("--latency", type=float, default=1.0, help="seconds the emulator takes per batch")
    parser.add_argument("--max-batch", type=int, default=100, help="requests per batch (default 100)")
    parser.add_argument("--model", default="claude-haiku-4-5", help="model of every request")
    parser.add_argument(
        "--tiers",
        type=json.loads,
        default=DEMO_TIERS,
        help='tier policy as JSON, e.g. \'{"urgent": {"max_wait_seconds": 60}}\' (default: '
        + json.dumps(DEMO_TIERS)
        + "); with a policy of your own, no batch is made late and no budget is set unless --budget says so",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="DailyBudgetUSD (default: what the tickets and posts may cost at most; 0 for no cap)",
    )
    parser.add_argument(
        "--no-deadlines",
        action="store_true",
        help="no request names a deadline of its own (a tier's deadline_seconds still applies), "
        "no batch is made late and no budget is set unless --budget says so",
    )
    parser.add_argument("--no-late", action="store_true", help="make no batch late")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        help="folder for the savings page and the functions' log (default demo-output)",
    )
    args = parser.parse_args(argv)
    opts = Options(
        size=args.size,
        duplicates=args.duplicates,
        invalid=args.invalid,
        errored_share=args.errored_share,
        expired_share=args.expired_share,
        latency=args.latency,
        model=args.model,
        max_batch=args.max_batch,
        tiers=args.tiers,
        out=args.out,
        deadlines=not args.no_deadlines,
        late=not args.no_late,
        budget_usd=args.budget,
    )
    summary = run(opts)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        out = term.console()
        term.show(out, *summary_view(summary, plain=not out.is_terminal))
    return 1 if summary["lost"] or summary["duplicated"] else 0
