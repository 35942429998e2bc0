"""The relay's promises against faults injected at random: `make chaos SEEDS=200`.

One seed is one end-to-end run on the local stack (moto, the template's functions, the real
state machine definition) and the emulator, on a simulated clock that moves from one event to the
next: the schedule firing every minute (while it has work), a poller's Wait ending, a realtime
message's retry-after running out, the next round of requests. Pollers sleep their Wait states in
the relay's time, not in real time, and the realtime function's in-place waits move that clock,
so a check happens when the state machine says and a batch the emulator makes late stays in
progress for an hour of the relay's time while the run takes seconds.

The workload mixes requests without a deadline, requests whose deadline is too soon for any batch
(sent realtime at claim), requests a batch can make (batched, and taken out for realtime when their
batch is late), a tier with `deadline_seconds`, and one deadline already past; about three batches
in ten are late (`latency_mix`, and the first one by `make_late`); every third seed has a
`DailyBudgetUSD` of about half what the run would commit, so tiers wait and realtime fallbacks are
refused `budget_exceeded` once it is spent.

- storm: while rounds of requests (some sent twice, a few invalid) arrive and for 40 minutes after
  (past every deadline), every AWS call a function makes may be refused before it acts
  (`aws_refuse`, as throttling or a 500) and an invocation may die right after a call acted
  (`aws_kill`, at a random call); the realtime function may also die after any of its calls
  (`realtime_kill`) and the check function in the middle of a rescue (`rescue_kill`: at any call
  after it wrote the rescue's journal, so between moving requests and sending their messages too);
  the API refuses calls (429/529/5xx, realtime messages and token counts included), loses create and
  realtime answers after acting (a batch made, a message billed) and cuts result streams, and some
  realtime calls get a 429 with a retry-after of up to two minutes; a DynamoDB write may be applied
  twice (`twice`: it acted, its answer was lost, botocore sent it again); halfway, a parameter
  changes as a redeploy would (a tier dropped from the policy, a smaller batch, a slower assumed
  turnaround). A death is `FunctionKilled`, a `BaseException` no `except Exception` stops, and the
  invocation stays dead: the calls its `finally` clauses would make as the exception unwinds are
  killed before they act.
- calm: faults off, the request dead-letter queue redriven, the clock moving on until no request
  waits, no batch or realtime record is live, no poller runs and the realtime queue is empty.

Then the promises are checked: every accepted request has a completion and all of its completions
are the same; each completion's `route` says where it was answered (realtime: no batch id, nothing
saved, list price paid, the message id the Messages API gave for that request; batch: a batch the
API made holding it, and the message id of its line there); no request was in two batches the API
created; no request was sent to the Messages API more than once, unless an invocation answering it
died or failed after the API had answered it, or the API lost the answer of a call it billed and the
call was made again as a new attempt that the request's completion counts (the emulator is watched
to tell which request each call was for: the prompt names it); no request is left waiting or
claimed, no batch or realtime record left live; and every deadline that was still ahead when its
request was sent was met, unless a fault that could delay it (in a call or an invocation working on
that request, or in a submitter run) was injected from 15 minutes before it was sent to its
deadline. The report counts the faults injected, the completions repeated, the routes, the Messages
API calls, the deadlines met and missed (for each miss, where its request stood when its deadline
came, read from the table and the queue, and the fault most likely to have kept it there;
`--explain` prints what happened on the request's path) and any broken promise. A run without faults
must meet every such deadline."""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import boto3
from batch_relay.errors import FunctionKilled
from botocore.exceptions import ClientError

from relay_local.emulator import Emulator

MODEL = "claude-haiku-4-5"
CHAOS_TIERS = {
    "urgent": {"max_wait_seconds": 60, "min_requests": 1},
    "standard": {"max_wait_seconds": 600, "min_requests": 20},
    "timed": {"max_wait_seconds": 300, "min_requests": 5, "deadline_seconds": 1500},
}
# Batches are assumed to take 5 minutes until the relay has timed three of its own (so a batch
# needs 11 minutes from claim to completion, rescue margin included); a realtime rescue starts 5
# minutes before a deadline: time for a crashed rescue to be sent again (RESEND_SECONDS).
TURNAROUND_SECONDS = 300
MARGIN_SECONDS = 300
POLL_MIN_SECONDS = 30
# Deadlines, in seconds after sending: too soon for a batch, or one a batch can make.
SOON_SECONDS = (90, 500)
BATCHABLE_SECONDS = (1200, 2400)
# Seven batches in ten take 40 s; the others are late, by an hour.
LATENCY_MIX = [(0.7, 40.0), (0.3, 3600.0)]
SCHEDULE_SECONDS = 60
# Faults stay on this long after the last round of requests (past every deadline), so rescues
# happen while they fly.
STORM_TAIL_SECONDS = 2400
# While no request waits and every batch has its poller, the clock may jump this far at once; the
# schedule, in the calm phase, spaces out to this while its runs find nothing to do.
CALM_STRIDE_SECONDS = 2 * 3600
# A fault this long before a request is sent can still delay it (a dead run's lease, a stale claim).
FAULT_LOOKBACK_SECONDS = 900
# Writes a lost answer can make botocore apply twice (a transaction carries a request token that
# DynamoDB applies once, so it is not among them).
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"})
REFUSALS = (
    ("ProvisionedThroughputExceededException", 400),
    ("ThrottlingException", 400),
    ("InternalError", 500),
    ("ServiceUnavailable", 503),
)
# Real seconds a hidden realtime message stays out of the queue (it is put back when due): longer
# than any run, within SQS's 12 hours.
HIDDEN_SECONDS = 6 * 3600
# What made a deadline be missed, by the faults on the request's path, most telling first.
MISS_CAUSES = (
    ("realtime function failed", ("(RealtimeFunction)",)),
    ("realtime call refused by the API", ("API POST /v1/messages ",)),
    ("check killed during a rescue", ("in a rescue",)),
    ("poller faulted", ("(CheckBatchFunction)", "(CollectResultsFunction)", "API GET")),
    ("batch create refused or lost", ("API POST /v1/messages/batches",)),
    ("submitter kept out by the lease of a run that died or failed", ("[SubmitterFunction skipped",)),
    ("submitter faulted", ("(SubmitterFunction)",)),
)
TICKET = re.compile(r"ticket (\S+?):")
# How long a check's rescue holds a batch's collect lease (`poller.Poller._rescue`).
CHECK_RESCUE_LEASE_SECONDS = 300


def _clock_now() -> float:
    from batch_relay import clock

    return clock.now()


# who a call or an invocation works for


@dataclass
class FaultLog:
    """Every fault injected, with the relay's time and the requests it concerned (None: all)."""

    entries: list[tuple[float, str, frozenset[str] | None]] = field(default_factory=list)
    # Explain each missed deadline (the invocations' outcomes, "[Function outcome]", are logged
    # as well, and tell a submitter kept out by a lease).
    explain: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, ids: frozenset[str] | None) -> None:
        with self._lock:
            self.entries.append((_clock_now(), kind, ids))

    def about(self, rid: str) -> list[str]:
        """Every fault that concerned one request (or every request)."""
        with self._lock:
            return [k for _, k, ids in self.entries if ids is None or rid in ids]

    def touching(self, rid: str, start: float, end: float, outcomes: bool = False) -> list[str]:
        """The faults (and, with `outcomes`, the invocations) on a request's path in a span."""
        with self._lock:
            return [
                k
                for t, k, ids in self.entries
                if start <= t <= end and (ids is None or rid in ids) and (outcomes or not k.startswith("["))
            ]


class Witness(Emulator):
    """The emulator, noting for which request each realtime answer was given (the prompt names
    it) and which requests each refused or broken call concerned."""

    answered: dict[str, list[str]]
    # Realtime calls the API ran and billed whose answer it then lost, per request.
    lost: Counter[str]
    log: FaultLog

    def __init__(self, *args: Any, log: FaultLog, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.answered = defaultdict(list)
        self.lost = Counter()
        self.log = log

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes | Iterator[bytes]]:
        path = urlsplit(target).path.rstrip("/")
        billed = len(self.messages_created)
        try:
            status, out, payload = super().handle(method, target, headers, body)
        except Exception:  # an answer lost by a dropped connection, after the API acted
            self._billed_unanswered(path, body, billed)
            self.log.add(f"API {method} {path} lost", self._concerns(path, body))
            raise
        if status >= 400 and path != "/v1/messages/count_tokens":  # a count refused is estimated
            self._billed_unanswered(path, body, billed)
            self.log.add(f"API {method} {path} {status}", self._concerns(path, body))
        elif path == "/v1/messages" and isinstance(payload, bytes):
            rid = _rid_of(body)
            with self._lock:
                self.answered[rid or "?"].append(json.loads(payload)["id"])
        if isinstance(payload, Iterator):
            payload = self._watched(payload, path)
        return status, out, payload

    def _billed_unanswered(self, path: str, body: bytes, billed: int) -> None:
        """Note a realtime call the API billed (its answer then lost) for the request it was for."""
        if path == "/v1/messages" and len(self.messages_created) > billed:
            rid = _rid_of(body) or "?"
            with self._lock:
                self.answered[rid].append("(answer lost)")
                self.lost[rid] += 1

    def _watched(self, lines: Iterator[bytes], path: str) -> Iterator[bytes]:
        try:
            yield from lines
        except Exception:
            self.log.add("API results stream cut", self._concerns(path, b""))
            raise

    def _concerns(self, path: str, body: bytes) -> frozenset[str] | None:
        if path in ("/v1/messages", "/v1/messages/count_tokens"):
            rid = _rid_of(body)
            return frozenset([rid]) if rid else None
        if path == "/v1/messages/batches":
            with contextlib.suppress(Exception):
                return frozenset(r["custom_id"] for r in json.loads(body)["requests"])
            return None
        parts = path.split("/")
        if len(parts) >= 5 and parts[4] in self._batches:
            return frozenset(self.custom_ids(parts[4]))
        return None


def _rid_of(body: bytes) -> str | None:
    with contextlib.suppress(Exception):
        found = TICKET.search(json.dumps(json.loads(body).get("messages")))
        return found.group(1) if found else None
    return None


_WORK = threading.local()


def _concerned(logical_id: str, event: Any, witness: Witness) -> frozenset[str] | None:
    """The requests an invocation works on: those of its messages, or of its batch (a submitter
    run works for every request)."""
    with contextlib.suppress(Exception):
        if logical_id in ("BufferFunction", "RealtimeFunction"):
            ids = [json.loads(r["body"]).get("request_id") for r in event["Records"]]
            return frozenset(str(i) for i in ids if i)
        if logical_id in ("CheckBatchFunction", "CollectResultsFunction"):
            return frozenset(witness.custom_ids(event["batch_id"]))
    return None


def watch_invocations(stack: Any, witness: Witness) -> None:
    """Note, for the invocation a thread runs, the requests it works on and how many realtime
    answers each had had when it started (to tell an answer a fault then lost)."""
    original = stack.invoke

    def invoke(logical_id: str, event: Any) -> Any:
        outer = getattr(_WORK, "state", None)
        ids = _concerned(logical_id, event, witness)
        with witness._lock:
            start = {rid: len(witness.answered.get(rid, [])) for rid in ids or ()}
        _WORK.state = (logical_id, ids, start)
        outer_errors, _WORK.item_errors = getattr(_WORK, "item_errors", None), []
        outcome = "ok"
        try:
            answer = original(logical_id, event)
            if isinstance(answer, dict) and answer.get("batchItemFailures"):
                outcome = "item failed" + "".join(f": {e}" for e in _WORK.item_errors)
            elif logical_id == "SubmitterFunction" and isinstance(answer, dict) and answer.get("skipped"):
                outcome = "skipped (lease held)"
            return answer
        except BaseException as exc:
            outcome = type(exc).__name__ + _where(exc)
            raise
        finally:
            _WORK.state, _WORK.item_errors = outer, outer_errors
            witness.log.add(f"[{logical_id} {outcome}]", ids)

    stack.invoke = invoke


def _watch_items() -> Any:
    """Patch the realtime function's record handler to note why a record failed (the function
    answers a partial batch failure, which says nothing of it)."""
    from batch_relay.realtime import Realtime

    original = Realtime.handle

    def handle(self: Any, record: Any) -> str:
        try:
            return original(self, record)
        except Exception as exc:
            errors = getattr(_WORK, "item_errors", None)
            if errors is not None:
                errors.append(f"{type(exc).__name__}{_where(exc)} {str(exc)[:80]}")
            raise

    return mock.patch.object(Realtime, "handle", handle)


def _where(exc: BaseException) -> str:
    """Where in the relay an invocation failed: its last frames in batch_relay, and the cause."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        frames += traceback.extract_tb(cause.__traceback__)
    ours = [f"{f.filename.rsplit('/', 1)[-1]}:{f.name}" for f in frames if "batch_relay" in f.filename]
    return f" at {' > '.join(ours[-4:])} ({type(cause).__name__ if cause else ''})"


# faults in the relay's own functions


@dataclass
class Faults:
    """Decides, seeded, which AWS calls of the relay's functions fail and how."""

    rng: random.Random
    refuse: float
    kill: float
    log: FaultLog
    witness: Witness
    realtime_kill: float = 0.0
    rescue_kill: float = 0.0
    # Share of DynamoDB writes applied twice: acted on, their answer lost, sent again by botocore.
    twice: float = 0.0
    injected: Counter[str] = field(default_factory=Counter)
    # Realtime answers lost per request: the invocation that got them died before settling them.
    lost_answers: Counter[str] = field(default_factory=Counter)
    active: bool = True
    _plan: dict[int, int | None] = field(default_factory=dict)
    _rescuing: set[int] = field(default_factory=set)
    _dead: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def before(self, function: str, operation: str) -> None:
        from relay_local.stack import current_call

        if current_call()[0] in self._dead:
            # Python runs a killed function's `finally` clauses as the kill unwinds; a Lambda that
            # died runs nothing, so the calls they make never act.
            raise FunctionKilled(f"{function} is dead")
        with self._lock:
            if not self.active or self.rng.random() >= self.refuse:
                return
            code, status = REFUSALS[self.rng.randrange(len(REFUSALS))]
            self._note(f"AWS refused ({function})", f"AWS refused {operation} ({function})")
        raise ClientError(
            {"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": status}},
            operation,
        )

    def kill_at(self, invocation: int, number: int) -> None:
        """Have invocation <invocation> die right after its call number <number>."""
        with self._lock:
            self._plan[invocation] = number

    def after(self, function: str, operation: str) -> None:
        from relay_local.stack import current_call

        invocation, number = current_call()
        with self._lock:
            if not self.active:
                return
            if invocation not in self._plan:
                # This invocation dies at one of its first 40 calls, or not at all.
                dies = self.rng.random() < self.kill
                self._plan[invocation] = self.rng.randint(1, 40) if dies else None
            if function == "CheckBatchFunction" and operation == "PutObject":
                self._rescuing.add(invocation)  # a check writes to S3 only a rescue's journal
            if self._plan[invocation] == number:
                kind = f"killed after {operation} ({function})"
            elif function == "RealtimeFunction" and self.rng.random() < self.realtime_kill:
                kind = f"killed after {operation} (RealtimeFunction)"
            elif invocation in self._rescuing and self.rng.random() < self.rescue_kill:
                kind = f"killed in a rescue after {operation} (CheckBatchFunction)"
            else:
                return
            self._note(kind, published=_published() if operation == "PublishBatch" else frozenset())
            self._dead.add(invocation)
        raise FunctionKilled(f"{function} killed right after {operation} acted")

    def again(
        self, operation: Any, attempts: int, response: Any, caught_exception: Any, **_: Any
    ) -> int | None:
        """botocore's `needs-retry` hook: a write that succeeded is sent once more at once, as when
        its answer is lost on the way back (conditional ones then fail on their own condition)."""
        from relay_local.stack import current_call

        invocation = current_call()[0]
        applied = caught_exception is None and response is not None and response[0].status_code < 300
        relay = invocation != 0 and invocation not in self._dead  # not the harness's own writes
        if not applied or attempts != 1 or operation.name not in WRITES or not relay:
            return None
        with self._lock:
            if not self.active or self.rng.random() >= self.twice:
                return None
            self._note(f"write applied twice ({operation.name})")
        return 0

    def _note(self, kind: str, logged: str | None = None, published: frozenset[str] = frozenset()) -> None:
        """Count a fault and log whom it concerns (as `logged`, when it says more than the count's
        `kind`); a realtime answer it loses is allowed again. A death after a PublishBatch also
        concerns the requests whose completions that call published: a flush of an outbox sends
        those of other requests than the invocation's own (a realtime record's, in the realtime
        function)."""
        self.injected[kind] += 1
        function, ids, start = getattr(_WORK, "state", None) or ("?", None, {})
        self.log.add(logged or kind, None if ids is None else ids | published)
        if function == "RealtimeFunction":
            with self.witness._lock:
                for rid, before in start.items():
                    if len(self.witness.answered.get(rid, [])) > before:
                        self.lost_answers[rid] += 1


def _published() -> frozenset[str]:
    """The requests whose completions the PublishBatch call just made carried."""
    from relay_local.stack import current_params

    ids: set[str] = set()
    for e in (current_params() or {}).get("PublishBatchRequestEntries", []):
        with contextlib.suppress(Exception):
            ids.add(str(json.loads(e["Message"])["request_id"]))
    return frozenset(ids)


# the relay's time


class SimTime:
    """The relay's clock moved from event to event. A poller's Wait parks its thread until the
    relay's clock reaches its end; the run is quiet when every running poller is parked."""

    def __init__(self, stack: Any):
        self.stack = stack
        self.cond = threading.Condition()
        self.parked: dict[int, float] = {}
        self.closing = False
        self.timeouts = 0
        # In-place waits: (from, to, function, the requests it works on).
        self.slept: list[tuple[float, float, str, frozenset[str] | None]] = []
        # How many poller executions run (set by `Drive`, with its own client).
        self.running: Any = lambda: sum(e["status"] == "RUNNING" for e in stack.executions())

    def on_wait(self, seconds: float) -> None:
        me = threading.get_ident()
        with self.cond:
            wake = _clock_now() + seconds
            self.parked[me] = wake
            self.cond.notify_all()
            give_up = time.monotonic() + 600
            while not self.closing and _clock_now() < wake and time.monotonic() < give_up:
                self.cond.wait(0.5)
            del self.parked[me]
            self.cond.notify_all()

    def advance(self, seconds: float) -> None:
        with self.cond:
            self.stack.advance(max(0.0, seconds))
            self.cond.notify_all()

    def sleep(self, seconds: float) -> None:
        """A function's own sleep (a retry-after waited in place): the relay's time passes."""
        function, ids, _ = getattr(_WORK, "state", None) or ("?", None, {})
        now = _clock_now()
        self.slept.append((now, now + max(0.0, seconds), function, ids))
        self.advance(seconds)
        time.sleep(0.001)

    def next_wake(self) -> float | None:
        with self.cond:
            now = _clock_now()
            ahead = [w for w in self.parked.values() if w > now]
        return min(ahead) if ahead else None

    def quiet(self, timeout: float = 30.0) -> bool:
        """Wait until every running poller is parked in a Wait that ends after now."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            running = self.running()
            with self.cond:
                now = _clock_now()
                parked = sum(1 for w in self.parked.values() if w > now)
            if running <= parked:
                return True
            time.sleep(0.02)
        self.timeouts += 1
        return False

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()


# the outcome


@dataclass
class Outcome:
    seed: int
    accepted: int = 0
    completions: int = 0
    lost: list[str] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)
    billed_twice: list[str] = field(default_factory=list)
    repeated: int = 0
    # Requests whose completion went out again with no invocation killed between a publish call
    # and its marker: the one way the outbox allows a repeat.
    repeated_unexplained: list[str] = field(default_factory=list)
    live_batches: int = 0
    stuck: list[str] = field(default_factory=list)
    wrong_route: list[str] = field(default_factory=list)
    retired_tier: int = 0
    called_twice: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)
    deadlines: int = 0
    reachable: int = 0
    met: int = 0
    missed_excused: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    miss_causes: Counter[str] = field(default_factory=Counter)
    rescued: int = 0
    realtime_calls: int = 0
    extra_calls_excused: int = 0
    both_ways: int = 0
    budget: bool = False
    realtime_dead_letters: int = 0
    quiet_timeouts: int = 0
    rounds: int = 0
    ticks: int = 0
    # With `explain`: each missed deadline and the faults and invocations on its request's path.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.conflicting
            or self.billed_twice
            or self.repeated_unexplained
            or self.live_batches
            or self.stuck
            or self.wrong_route
            or self.called_twice
            or self.missed
        )

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "accepted": self.accepted,
            "completions": self.completions,
            "lost": len(self.lost),
            "conflicting": len(self.conflicting),
            "billed_twice": len(self.billed_twice),
            "repeated": self.repeated,
            "repeated_unexplained": len(self.repeated_unexplained),
            "live_batches": self.live_batches,
            "stuck": len(self.stuck),
            "wrong_route": len(self.wrong_route),
            "retired_tier": self.retired_tier,
            "called_twice": len(self.called_twice),
            "realtime": self.routes["realtime"],
            "batch": self.routes["batch"],
            "rescued": self.rescued,
            "deadlines": self.deadlines,
            "reachable": self.reachable,
            "met": self.met,
            "missed_excused": len(self.missed_excused),
            "missed": len(self.missed),
            "realtime_calls": self.realtime_calls,
            "extra_calls_excused": self.extra_calls_excused,
            "both_ways": self.both_ways,
            "budget": self.budget,
            "realtime_dead_letters": self.realtime_dead_letters,
            "quiet_timeouts": self.quiet_timeouts,
            "faults": sum(self.faults.values()),
        }


# the workload


def _request(rid: str, tier: str, deadline: str | None = None) -> dict[str, Any]:
    text = f"Summarise ticket {rid}: the export fails after the latest release."
    body: dict[str, Any] = {
        "request_id": rid,
        "tier": tier,
        "params": {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": text}]},
    }
    if deadline is not None:
        body["deadline"] = deadline
    return body


def _kind(rng: random.Random) -> str:
    """What a request asks: nothing of time, a deadline no batch can make, one a batch can, or
    the timed tier's default deadline."""
    return rng.choices(["plain", "soon", "batchable", "timed"], weights=[35, 20, 30, 15])[0]


def _deadline_for(kind: str, rng: random.Random) -> str | None:
    from batch_relay import clock

    seconds = {"soon": SOON_SECONDS, "batchable": BATCHABLE_SECONDS, "past": (-120, -30)}.get(kind)
    if seconds is None:
        return None
    return clock.iso(clock.now() + rng.uniform(*seconds)).replace("Z", "+00:00")


def _budget_for(requests: int) -> float:
    """About half of the run's batch-price upper bound: the day's budget runs out mid-run."""
    from batch_relay.pricing import bound, input_tokens_of

    line = len(json.dumps({"custom_id": "c1-00", "params": _request("c1-00", "urgent")["params"]}))
    return bound(MODEL, input_tokens_of(line), 100, batch=True) * requests * 0.5


def run(
    seed: int,
    requests: int = 40,
    aws_refuse: float = 0.04,
    aws_kill: float = 0.02,
    api_rate: float = 0.1,
    storm_rounds: int = 6,
    realtime_kill: float = 0.01,
    rescue_kill: float = 0.08,
    retry_after_share: float = 0.2,
    twice: float = 0.02,
    redeploy: bool = True,
    budget: bool | None = None,
    explain: bool = False,
) -> Outcome:
    from batch_relay import clock

    from relay_local.emulator import EmulatorServer
    from relay_local.stack import LocalStack

    rng = random.Random(seed)
    log = FaultLog(explain=explain)
    emu = Witness(latency_seconds=40.0, latency_mix=LATENCY_MIX, seed=seed, log=log)
    with_budget = seed % 3 == 0 if budget is None else budget
    params = {
        "TierPolicy": json.dumps(CHAOS_TIERS),
        "DefaultTier": "urgent",
        "MaxBatchRequests": "15",
        "PollMinSeconds": str(POLL_MIN_SECONDS),
        "DefaultTurnaroundSeconds": str(TURNAROUND_SECONDS),
        "DeadlineMarginSeconds": str(MARGIN_SECONDS),
    }
    if with_budget:
        params["DailyBudgetUSD"] = f"{_budget_for(requests):.8f}"
    outcome = Outcome(seed, budget=with_budget)
    with EmulatorServer(emu) as server:
        stack = LocalStack(parameters=params, env={"ANTHROPIC_BASE_URL": server.url}, wait_cap=0.0)
        sim = SimTime(stack)
        stack.on_wait = sim.on_wait
        try:
            with stack, mock.patch.object(clock, "sleep", sim.sleep), _watch_items():
                emu.clock = lambda: time.time() + stack.offset
                watch_invocations(stack, emu)
                inbox = stack.subscribe()
                faults = Faults(
                    random.Random(seed * 7919 + 1),
                    aws_refuse,
                    aws_kill,
                    log,
                    emu,
                    realtime_kill=realtime_kill,
                    rescue_kill=rescue_kill,
                    twice=twice,
                )
                stack.before, stack.after = faults.before, faults.after
                from batch_relay import aws

                aws.dynamodb().meta.client.meta.events.register("needs-retry.dynamodb", faults.again)
                emu.chaos(api_rate, seed)
                emu.make_late(1, LATENCY_MIX[-1][1])
                drive = Drive(stack, sim, emu, faults)
                drive.redeploys = redeploy
                kinds = drive.storm(rng, seed, requests, storm_rounds, retry_after_share)
                drive.calm()
                outcome.rounds, outcome.ticks = drive.rounds, drive.ticks
                outcome.faults = faults.injected + emu.faults_served
                outcome.quiet_timeouts = sim.timeouts
                _check(drive, log, inbox, kinds, outcome)
        finally:
            sim.close()
    return outcome


class Drive:
    """Runs the pipeline on the simulated clock, as AWS would: the schedule every minute (skipped
    while it has nothing to do), the request queue and the realtime queue delivered as soon as
    they hold something, pollers woken when their Wait ends."""

    def __init__(self, stack: Any, sim: SimTime, emu: Witness, faults: Faults):
        from batch_relay.settings import settings
        from batch_relay.store import Store

        self.stack, self.sim, self.emu, self.faults = stack, sim, emu, faults
        # The harness's own clients, made once: making one costs more than most calls.
        self.sqs: Any = boto3.client("sqs")
        self.store = Store(stack.physical["RequestTable"])
        self.tiers = list(settings().tiers)
        self.sim.running = self.running
        self.next_tick = _clock_now()
        # The schedule's period; in the calm phase, runs that find nothing to do space out.
        self.tick_every = float(SCHEDULE_SECONDS)
        self.calming = False
        # Whether the submitter had nothing to do at the end of the last round.
        self.was_idle = False
        self.ticks = self.rounds = 0
        # Whether the storm redeploys halfway, and whether that dropped a tier (requests received
        # after it naming that tier are rejected).
        self.redeploys = True
        self.retired = False
        # When each request was sent (the relay's receipt can come later, after faults).
        self.sent_at: dict[str, float] = {}
        # Each deadline still ahead, and where its request stood when it came (see `observe`).
        self.due_at: dict[str, float] = {}
        self.at_due: dict[str, str] = {}
        self.realtime = RealtimeDelivery(stack, self.sqs)

    def storm(
        self, rng: random.Random, seed: int, requests: int, rounds: int, retry_after_share: float
    ) -> dict[str, str]:
        """Rounds of requests a few minutes apart; faults on until STORM_TAIL_SECONDS after the last."""
        ids = [f"c{seed}-{n:02d}" for n in range(requests)]
        kinds = {rid: _kind(rng) for rid in ids}
        kinds[f"c{seed}-past"] = "past"
        ids.append(f"c{seed}-past")
        tiers = {
            rid: "timed" if kind == "timed" else rng.choice(["urgent", "standard"])
            for rid, kind in kinds.items()
        }
        per_round = max(1, len(ids) // rounds)
        sends = [_clock_now()]
        for _ in range(rounds - 1):
            sends.append(sends[-1] + rng.choice([60, 120, 300]))
        storm_end = sends[-1] + STORM_TAIL_SECONDS
        r = 0
        while True:
            if r < rounds and _clock_now() >= sends[r]:
                sent = ids[r * per_round : (r + 1) * per_round] if r < rounds - 1 else ids[r * per_round :]
                bodies: list[Any] = [
                    _request(rid, tiers[rid], _deadline_for(kinds[rid], rng)) for rid in sent
                ]
                # Duplicates: the same request sent again.
                bodies += [json.loads(json.dumps(b)) for b in rng.sample(bodies, min(2, len(bodies)))]
                bodies.append({"request_id": f"bad{seed}-{r}", "params": {"model": MODEL}})
                rng.shuffle(bodies)
                self.stack.send(bodies)
                self.sent_at.update(dict.fromkeys(sent, _clock_now()))
                self.expect(bodies, kinds)
                r += 1
                if r == rounds // 2 and self.redeploys:
                    self.redeploy(rng, tiers, ids[r * per_round :])
            if rng.random() < retry_after_share / 10:
                wait = rng.choice([1, 15, 45, 120])
                self.emu.inject(
                    "POST", "/v1/messages", 429, count=rng.randint(1, 3), retry_after=wait, route="message"
                )
                self.faults.injected["429 with retry-after (message)"] += 1
            self.round()
            if r >= rounds and _clock_now() >= storm_end:
                return kinds
            self.move_to([storm_end] + ([sends[r]] if r < rounds else []))

    def redeploy(self, rng: random.Random, tiers: dict[str, str], unsent: list[str]) -> None:
        """A parameter changed between runs, as `sam deploy` does mid-storm: a tier dropped from the
        policy (requests already in it must still be answered), a smaller batch, a slower assumed
        turnaround. The data stays; every function starts cold."""
        change = rng.choice(["TierPolicy", "MaxBatchRequests", "DefaultTurnaroundSeconds"])
        if change == "TierPolicy":
            self.retired = True
            kept = {name: tier for name, tier in CHAOS_TIERS.items() if name != "standard"}
            self.stack.redeploy(TierPolicy=json.dumps(kept))
            for rid in unsent:  # producers follow the new policy; what is buffered stays in `standard`
                if tiers[rid] == "standard":
                    tiers[rid] = "urgent"
        elif change == "MaxBatchRequests":
            self.stack.redeploy(MaxBatchRequests="7")
        else:
            self.stack.redeploy(DefaultTurnaroundSeconds=str(2 * TURNAROUND_SECONDS))
        from batch_relay import aws

        # The functions' clients are new: the fault of writes applied twice goes on with them.
        aws.dynamodb().meta.client.meta.events.register("needs-retry.dynamodb", self.faults.again)
        self.faults.injected[f"parameter changed ({change})"] += 1

    def calm(self) -> None:
        """Faults off, the dead letters redriven, the clock moving on until nothing is left to do."""
        self.faults.active = False
        self.calming = True
        self.emu.clear_faults()
        self.redrive()
        for _ in range(3000):
            self.round()
            if not (self.waiting() or self.store.count("live", 1) or self.running() or self.realtime_held()):
                return
            self.move_to([])
        raise TimeoutError("the calm phase did not end")

    # where a request stood at its deadline

    def expect(self, bodies: list[Any], kinds: dict[str, str]) -> None:
        """Note when each request just sent is due: its deadline, or for the timed tier, its tier's
        deadline from now (made exact from its item once the relay has it)."""
        from batch_relay import clock

        for body in bodies:
            rid = body.get("request_id")
            if kinds.get(rid) in (None, "plain", "past") or rid in self.due_at:
                continue
            if body.get("deadline"):
                self.due_at[rid] = clock.parse(body["deadline"])
            else:
                self.due_at[rid] = _clock_now() + float(CHAOS_TIERS["timed"]["deadline_seconds"])

    def observe(self) -> None:
        """Where each request whose deadline has just come stands, as the relay left it before
        that moment: what it was waiting on when it could no longer be answered in time."""
        from batch_relay import clock
        from batch_relay.store import request_key

        now = _clock_now()
        ready = [rid for rid, t in self.due_at.items() if t <= now and rid not in self.at_due]
        if not ready:
            return
        found = self.store.get_many(request_key(rid) for rid in ready)
        for rid in ready:
            item = found.get(request_key(rid))
            due = clock.parse(item["deadline"]) if item and item.get("deadline") else None
            if due is not None and due > now:
                self.due_at[rid] = due  # received later than sent: its deadline is later too
                continue
            self.at_due[rid] = self.stage(rid, item, now)

    def stage(self, rid: str, item: dict[str, Any] | None, now: float) -> str:
        """What a request was waiting on: intake, the submitter, a batch's poller (a rescue), or
        the realtime path (a try's lease, the API's retry-after, its message's return)."""
        if item is None:
            return "not accepted"
        status = item.get("status")
        # No submitter run is under way between rounds: a lease still held is a past run's.
        lease = self.store.get("lease#submitter") or {}
        kept = " (the submitter's lease held)" if float(lease.get("until", 0)) > now else ""
        if status == "pending":
            return f"waiting in its tier{kept}"
        if status != "claimed":
            # Its deadline passed inside a round: in a wait in place (a retry-after slept out).
            due = self.due_at[rid]
            for start, end, function, ids in self.sim.slept:
                if start <= due <= end and ids is not None and rid in ids:
                    return f"realtime, a {function} waiting out a retry-after in place"
            return f"answered ({status}) as its deadline passed"
        record = self.store.batch(str(item.get("batch_ref")))
        state = record.status if record else None
        if record is not None and state in ("polling", "collecting"):
            collect = self.store.get(f"lease#collect#{record.ref}") or {}
            more = float(collect.get("until", 0)) - now
            held = f" (its collect lease held {more:.0f} s more)" if more > 0 else ""
            return f"in a running batch, not rescued{held}"
        if state != "realtime":
            return f"in a batch record {state}{kept}"
        if float(item.get("rt_until", 0)) > now:
            return "realtime, a try's lease held"
        if float(item.get("rt_not_before", 0)) > now:
            return "realtime, paused by a retry-after"
        back = self.realtime.back_of(rid)
        if back is not None:
            return f"realtime, its message back in {back - now:.0f} s"
        return "realtime, no message of it queued"

    # one moment

    def round(self) -> None:
        """Deliver what is queued, fire the schedule if it is due and has work, let the pollers
        that woke run, and answer what the realtime queue holds."""
        self.rounds += 1
        self.observe()
        delivered = bool(self.queued("RequestQueue"))
        if delivered:
            self.stack.deliver()
        if _clock_now() >= self.next_tick and (delivered or not self.was_idle):
            self.ticks += 1
            report = None
            with contextlib.suppress(Exception, FunctionKilled):
                report = self.stack.tick()  # a failed or killed run: the next tick finishes its work
            busy = not report or any(report.get(k) for k in ("batches", "requests", "reconciled", "skipped"))
            if self.calming and not busy and not self.realtime_held():
                self.tick_every = min(2 * self.tick_every, CALM_STRIDE_SECONDS)
            else:
                self.tick_every = SCHEDULE_SECONDS
            self.next_tick = _clock_now() + self.tick_every
        self.sim.quiet()
        for _ in range(10):
            if not self.realtime_due():
                break
            self.deliver_realtime()
            self.sim.quiet()
        self.was_idle = self.idle()

    def idle(self) -> bool:
        """Whether a submitter run would find nothing to do: no request waits in a tier, every
        live record is a batch whose poller follows it, and the realtime queue is empty."""
        if self.waiting():
            return False
        if self.realtime_held():
            return False
        live = list(self.store.live_batches())
        return all(b.status == "polling" for b in live) and self.running() >= len(live)

    def move_to(self, events: list[float]) -> None:
        """Advance the relay's clock to the next event: one given, the schedule (when it has work),
        a poller's wake, a hidden realtime message's return; at most CALM_STRIDE_SECONDS."""
        now = _clock_now()
        ahead = [t for t in events if t > now]
        if not self.was_idle:
            ahead.append(max(self.next_tick, now + 1))
        wake = self.sim.next_wake()
        if wake is not None:
            ahead.append(wake)
        ahead += self.realtime.returns(now)
        self.sim.advance(min([*ahead, now + CALM_STRIDE_SECONDS]) - now)

    # what is there

    def waiting(self) -> bool:
        return any(self.store.count(t, 1) for t in self.tiers)

    def running(self) -> int:
        """Poller executions running (read from moto's engine: asked this often, the API is slow)."""
        from moto.stepfunctions.responses import get_backend

        from relay_local.stack import ACCOUNT, REGION

        machine = get_backend(ACCOUNT, REGION).describe_state_machine(self.stack.arns["PollerStateMachine"])
        return sum(e.status == "RUNNING" for e in list(machine.executions))

    def count(self, queue: str, attribute: str) -> int:
        url = self.stack.queue_url(queue)
        return int(
            self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[attribute])["Attributes"][attribute]
        )

    def queued(self, queue: str) -> int:
        return self.count(queue, "ApproximateNumberOfMessages")

    def realtime_held(self) -> bool:
        return bool(
            self.queued("RealtimeQueue")
            + self.count("RealtimeQueue", "ApproximateNumberOfMessagesNotVisible")
        )

    def realtime_due(self) -> bool:
        return self.realtime.due(self.queued("RealtimeQueue"))

    def deliver_realtime(self) -> None:
        self.realtime.deliver()

    # queues

    def redrive(self) -> None:
        dlq = self.stack.queue_url("RequestDeadLetterQueue")
        while got := self.sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10).get("Messages", []):
            self.stack.send(m["Body"] for m in got)
            for m in got:
                self.sqs.delete_message(QueueUrl=dlq, ReceiptHandle=m["ReceiptHandle"])


class RealtimeDelivery:
    """The realtime queue delivered to its function as Lambda's event source does, on the relay's
    clock: one message an invocation; a message whose invocation failed back once the queue's
    visibility timeout has passed (16 minutes, longer than the function's timeout), or, when the
    function hid it for a retry-after, once that has. A hidden message is kept out of the queue
    until then, so it is not received, nor counted towards the dead-letter queue, meanwhile.

    (`stack.deliver_realtime` returns a failed message at once, receives hidden messages on every
    delivery, and ends with ReceiptHandleIsInvalid when one moves to the dead-letter queue: see
    `test_deadline_faults.test_bug_stack_...`.)"""

    def __init__(self, stack: Any, sqs: Any = None):
        self.stack = stack
        self.sqs = sqs or boto3.client("sqs")
        self.url, self.arn = stack.queue_url("RealtimeQueue"), stack.arns["RealtimeQueue"]
        attrs = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["VisibilityTimeout"])
        self.visibility = int(attrs["Attributes"]["VisibilityTimeout"])
        self.hidden: dict[str, str] = {}  # message id -> receipt handle, while out of the queue
        self.whose: dict[str, str] = {}  # message id -> the request it names

    def back_of(self, rid: str) -> float | None:
        """When a hidden message of this request comes back, if one is out of the queue."""
        times = [self.stack.hidden_until.get(m, 0.0) for m in self.hidden if self.whose.get(m) == rid]
        return min(times) if times else None

    def returns(self, now: float) -> list[float]:
        """When hidden messages come back, of those still to come."""
        return [t for m in self.hidden if (t := self.stack.hidden_until.get(m, 0.0)) > now]

    def due(self, visible: int) -> bool:
        now = _clock_now()
        return bool(visible) or any(self.stack.hidden_until.get(m, 0.0) <= now for m in self.hidden)

    def deliver(self) -> int:
        """Deliver what is due; returns how many messages were answered (deleted)."""
        from relay_local.stack import sqs_record

        stack, sqs = self.stack, self.sqs
        now = _clock_now()
        for mid, handle in list(self.hidden.items()):
            if stack.hidden_until.get(mid, 0.0) <= now:
                del self.hidden[mid]
                with contextlib.suppress(ClientError):  # gone to the dead-letter queue
                    sqs.change_message_visibility(
                        QueueUrl=self.url, ReceiptHandle=handle, VisibilityTimeout=0
                    )
        done = 0
        for _ in range(1000):
            got = sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=10,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not got:
                break
            for m in got:
                mid, handle = m["MessageId"], m["ReceiptHandle"]
                with contextlib.suppress(Exception):
                    self.whose[mid] = str(json.loads(m["Body"])["request_id"])
                if stack.hidden_until.get(mid, 0.0) > _clock_now():  # not due yet: out again
                    self.hidden[mid] = handle
                    sqs.change_message_visibility(
                        QueueUrl=self.url, ReceiptHandle=handle, VisibilityTimeout=HIDDEN_SECONDS
                    )
                    continue
                stack.receipts[handle] = mid
                try:
                    answer = stack.invoke("RealtimeFunction", {"Records": [sqs_record(m, self.arn)]})
                    ok = not answer.get("batchItemFailures")
                except (Exception, FunctionKilled):
                    ok = False
                if ok:
                    sqs.delete_message(QueueUrl=self.url, ReceiptHandle=handle)
                    done += 1
                    continue
                if stack.hidden_until.get(mid, 0.0) <= _clock_now():
                    # Not hidden by the function: back after the queue's visibility timeout.
                    stack.hidden_until[mid] = _clock_now() + self.visibility
                self.hidden[mid] = handle
                sqs.change_message_visibility(
                    QueueUrl=self.url, ReceiptHandle=handle, VisibilityTimeout=HIDDEN_SECONDS
                )
        return done


# the promises


def _check(drive: Drive, log: FaultLog, inbox: str, kinds: dict[str, str], outcome: Outcome) -> None:
    from batch_relay import clock

    stack, emu, faults = drive.stack, drive.emu, drive.faults

    ids = list(kinds)
    completions = stack.drain(inbox)
    outcome.completions = len(completions)
    seen: dict[str, list[dict[str, Any]]] = {}
    for c in completions:
        c.pop("_attributes", None)
        seen.setdefault(c["request_id"], []).append(c)
    outcome.accepted = len(ids)
    outcome.lost = [rid for rid in ids if rid not in seen]
    outcome.conflicting = [rid for rid, cs in seen.items() if any(c != cs[0] for c in cs)]
    outcome.repeated = sum(len(cs) - 1 for cs in seen.values())
    published_then_killed = "after PublishBatch"
    outcome.repeated_unexplained = [
        rid
        for rid, cs in seen.items()
        if len(cs) > 1 and not any(published_then_killed in k for k in log.about(rid))
    ]
    billed = Counter(cid for b in emu.batch_ids() for cid in emu.custom_ids(b))
    outcome.billed_twice = [cid for cid, n in billed.items() if n > 1]
    outcome.live_batches = len(list(drive.store.live_batches()))
    table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"])
    items = {i["request_id"]: i for i in _scan(table) if i.get("kind") == "request"}
    outcome.stuck = [rid for rid in ids if items.get(rid, {}).get("status") in ("pending", "claimed")]
    outcome.realtime_dead_letters = drive.queued("RealtimeDeadLetterQueue")
    # Where each request was answered, and what the Messages API was asked for it.
    outcome.realtime_calls = len(emu.messages_created)
    told = sum(len(v) for k, v in emu.answered.items() if k in kinds)
    if told != outcome.realtime_calls:
        raise RuntimeError(f"{outcome.realtime_calls} realtime calls, {told} of them told apart by request")
    for rid in ids:
        calls = len(emu.answered.get(rid, []))
        # A call whose answer an invocation died holding may be made again; one whose answer the
        # API lost only as a new attempt, which the request's completion then counts.
        allowed = 1 + faults.lost_answers[rid] + emu.lost[rid]
        attempts = max((int(c.get("attempts") or 0) for c in seen.get(rid, [])), default=0)
        if calls > allowed or (emu.lost[rid] and calls - faults.lost_answers[rid] > attempts):
            outcome.called_twice.append(rid)
        elif calls > 1:
            outcome.extra_calls_excused += calls - 1
    for rid, cs in seen.items():
        if rid not in kinds:
            continue  # an invalid request, answered rejected
        c = cs[0]
        if c["status"] == "rejected" and drive.retired and "unknown tier" in c["error"]["message"]:
            # Sent to a tier a redeploy then dropped, and received after it: answered at once.
            outcome.retired_tier += 1
            continue
        outcome.routes[c.get("route") or "none"] += 1
        if not _route_holds(c, emu):
            outcome.wrong_route.append(rid)
        if (c.get("cost") or {}).get("both_ways_usd"):
            outcome.both_ways += 1
        if items.get(rid, {}).get("rescued_from"):
            outcome.rescued += 1
    # Deadlines: met unless a fault that could delay the request came while it was due.
    for rid in ids:
        if rid not in seen or not seen[rid][0].get("deadline"):
            continue
        c = seen[rid][0]
        outcome.deadlines += 1
        sent, due = drive.sent_at[rid], clock.parse(c["deadline"])
        received = min(sent, clock.parse(c["received_at"]))
        if due <= sent or kinds[rid] == "past":
            continue  # nothing could make it
        outcome.reachable += 1
        if clock.parse(c["completed_at"]) <= due:
            outcome.met += 1
        elif log.touching(rid, received - FAULT_LOOKBACK_SECONDS, due):
            outcome.missed_excused.append(rid)
            # An intake fault only delays a request when the relay accepted it late.
            accepted_late = clock.parse(c["received_at"]) - sent > SCHEDULE_SECONDS
            path = log.touching(rid, received - FAULT_LOOKBACK_SECONDS, due, outcomes=True)
            waited = log.touching(rid, received - SCHEDULE_SECONDS, due, outcomes=True)
            cause = _cause(path, accepted_late, stage := drive.at_due.get(rid, ""), waited)
            outcome.miss_causes[cause] += 1
            if log.explain:
                outcome.notes += _explain(rid, kinds[rid], received, c, items.get(rid, {}), log, stage, cause)
        else:
            outcome.missed.append(rid)
            if log.explain:
                stage = drive.at_due.get(rid, "")
                item = items.get(rid, {})
                outcome.notes += _explain(rid, kinds[rid], received, c, item, log, stage, "none")


def _cause(kinds: list[str], accepted_late: bool, stage: str = "", waited: list[str] | None = None) -> str:
    """The fault most likely to have made a request miss its deadline: the one that kept it where
    it stood when its deadline came (`stage`, see `Drive.stage`), of those on its path (`kinds`;
    `waited`: the invocations while it waited, from its receipt to its deadline)."""

    def seen(*marks: str) -> bool:
        return any(mark in kind for kind in kinds for mark in marks)

    def seen_all(*marks: str) -> bool:
        return any(all(mark in kind for mark in marks) for kind in kinds)

    if stage == "not accepted" or (accepted_late and seen("(BufferFunction)")):
        return "intake faulted (the request accepted late)"
    if stage.startswith("realtime"):
        if "lease held" in stage:
            if seen("[RealtimeFunction FunctionKilled"):
                return "a realtime try died holding the request (its lease lasts the function's timeout)"
            return "a realtime try failed and kept its lease on the request"
        if "retry-after" in stage:
            return "realtime call refused by the API (its retry-after)"
        if "no message" not in stage and "back in" not in stage:
            return "realtime call under way as its deadline passed"
        if "back in" in stage:
            if seen("API POST /v1/messages "):
                return "realtime call refused by the API (its retry-after)"
            back = float(stage.split("back in ", 1)[1].split(" s", 1)[0])
            if back > 300:
                return "realtime function failed (its message back after the queue's visibility timeout)"
            return "realtime function failed (its message back soon)"
        if seen("in a rescue"):
            return "check killed during a rescue (a moved request waits for the submitter's resend)"
        return "realtime message not sent (its sender failed; the submitter sends it again)"
    if stage.startswith("in a running batch"):
        held = re.search(r"collect lease held (\d+) s more", stage)
        if held and float(held[1]) > CHECK_RESCUE_LEASE_SECONDS:
            # Longer than a check's rescue leases it: a submitter's overdue rescue (15 minutes).
            if seen("[SubmitterFunction FunctionKilled"):
                return "submitter killed during an overdue rescue (its collect lease kept the rescue out)"
            return "a submitter's overdue rescue left its collect lease (its release refused)"
        if held and seen_all("[CheckBatchFunction TransientError", "_rescue > store.py:unlease"):
            return "a check's rescue left its collect lease (its release refused)"
        if held and seen("in a rescue"):
            return "check killed during a rescue (its collect lease kept the rescue out)"
        if seen("(CheckBatchFunction)", "(CollectResultsFunction)", "API GET"):
            return "poller faulted"
    if stage.startswith(("waiting in its tier", "in a batch record")):
        # Kept out by a lease: still held, or more of the runs while it waited found it held than failed.
        runs = [k for k in waited or () if k.startswith("[SubmitterFunction ")]
        skipped = sum(k.startswith("[SubmitterFunction skipped") for k in runs)
        failed = sum(not k.startswith(("[SubmitterFunction ok", "[SubmitterFunction skipped")) for k in runs)
        if "lease held" in stage or (skipped and skipped >= failed):
            if seen_all("[SubmitterFunction TransientError", "store.py:unlease"):
                return "submitter kept out by the lease of a run whose release was refused"
            if seen("[SubmitterFunction FunctionKilled"):
                return "submitter kept out by the lease of a run that died"
        if stage.startswith("in a batch record creating"):
            return "batch create failed, its outcome taken for unknown (left until its window ends)"
        if seen("(SubmitterFunction)", "[SubmitterFunction"):
            return "submitter runs failed"
    for cause, marks in MISS_CAUSES:
        if seen(*marks):
            return cause
    return "other"


def _explain(
    rid: str,
    kind: str,
    received: float,
    c: dict[str, Any],
    item: dict[str, Any],
    log: FaultLog,
    stage: str = "",
    cause: str = "",
) -> list[str]:
    """A missed deadline, where its request stood then and the cause blamed, and what happened on
    the request's path (seconds from when it was sent; a line repeated at once is counted, not
    printed again)."""
    from batch_relay import clock

    due = clock.parse(c["deadline"])
    done = clock.parse(c["completed_at"])
    fields = {k: item.get(k) for k in ("rescued_from", "attempts")}
    when = f"due at {due - received:.0f} s, answered at {done - received:.0f} s"
    lines = [
        f"{rid} ({kind}, {c['route']}): {when} {fields}",
        f"  at its deadline: {stage or '?'}; blamed: {cause}",
    ]
    last, repeats, until = "", 0, 0.0
    for t, k, ids in log.entries:
        if k in ("[SubmitterFunction ok]", "[BufferFunction ok]"):
            continue
        if not (received - FAULT_LOOKBACK_SECONDS <= t <= done and (ids is None or rid in ids)):
            continue
        line = f"{k}{' (all)' if ids is None else ''}"
        if line == last:
            repeats, until = repeats + 1, t
            continue
        if repeats:
            lines[-1] += f"  (x{repeats + 1}, the last at {until - received:.0f})"
        lines.append(f"  {t - received:7.0f}  {line}")
        last, repeats = line, 0
    if repeats:
        lines[-1] += f"  (x{repeats + 1}, the last at {until - received:.0f})"
    return lines


def _route_holds(c: dict[str, Any], emu: Witness) -> bool:
    """Whether a completion's route matches where it was answered."""
    rid, message, cost = c["request_id"], c.get("message") or {}, c.get("cost")
    if c.get("route") == "realtime":
        if c.get("batch_id") is not None:
            return False
        # Paid at list price, nothing saved; batch_usd only says what a batch would have charged.
        if cost and (cost["saved_usd"] != 0 or cost.get("paid_usd") != cost["list_usd"]):
            return False
        if c["status"] == "succeeded":
            return message.get("id") in emu.answered.get(rid, [])
        return True
    if c.get("route") == "batch":
        batch_id = c.get("batch_id")
        if batch_id not in emu.batch_ids() or rid not in emu.custom_ids(batch_id):
            return False
        if c["status"] == "succeeded":
            return bool(message.get("id") == emu.message_id(batch_id, rid))
        return True
    return False


def _scan(table: Any) -> Iterator[dict[str, Any]]:
    args: dict[str, Any] = {}
    while True:
        page = table.scan(**args)
        yield from page["Items"]
        if "LastEvaluatedKey" not in page:
            return
        args["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay-local chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="how many seeded runs")
    parser.add_argument("--first", type=int, default=1, help="first seed")
    parser.add_argument("--requests", type=int, default=40, help="requests per run")
    parser.add_argument("--aws-refuse", type=float, default=0.04, help="share of AWS calls refused")
    parser.add_argument(
        "--aws-kill", type=float, default=0.02, help="share of invocations killed after a call"
    )
    parser.add_argument("--api-rate", type=float, default=0.1, help="share of API calls failed")
    parser.add_argument(
        "--realtime-kill", type=float, default=0.01, help="share of realtime calls after which it dies"
    )
    parser.add_argument(
        "--rescue-kill", type=float, default=0.08, help="share of a rescue's calls after which the check dies"
    )
    parser.add_argument(
        "--retry-after", type=float, default=0.2, help="share of rounds that give realtime calls a 429"
    )
    parser.add_argument(
        "--twice", type=float, default=0.02, help="share of DynamoDB writes applied twice (answer lost)"
    )
    parser.add_argument(
        "--no-redeploy", action="store_true", help="no parameter change halfway through the storm"
    )
    parser.add_argument(
        "--explain", action="store_true", help="print each missed deadline with what happened on its path"
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per seed, then the totals")
    args = parser.parse_args(argv)
    total = Counter[str]()
    faults = Counter[str]()
    causes = Counter[str]()
    broken = []
    for seed in range(args.first, args.first + args.seeds):
        out = run(
            seed,
            args.requests,
            args.aws_refuse,
            args.aws_kill,
            args.api_rate,
            realtime_kill=args.realtime_kill,
            rescue_kill=args.rescue_kill,
            retry_after_share=args.retry_after,
            twice=args.twice,
            redeploy=not args.no_redeploy,
            explain=args.explain,
        )
        total.update({k: v for k, v in out.summary().items() if k != "seed"})
        faults.update(out.faults)
        causes.update(out.miss_causes)
        if not out.ok:
            broken.append(seed)
        line = out.summary()
        print(
            json.dumps(line)
            if args.json
            else "seed {seed}: {accepted} accepted, {completions} completions, "
            "{lost} lost, {conflicting} conflicting, {billed_twice} billed twice, {repeated} repeated "
            "({repeated_unexplained} unexplained), "
            "{live_batches} live, {stuck} stuck, {wrong_route} wrong route, {called_twice} called twice; "
            "{realtime} realtime ({rescued} rescued), {batch} batch; deadlines {met}/{reachable} met, "
            "{missed_excused} missed under faults, {missed} missed; {faults} faults".format(**line),
            flush=True,
        )
        for note in out.notes:
            print(f"    {note}")
    share = 100 * total["repeated"] / max(1, total["accepted"])
    print(
        f"\n{args.seeds} seeds, {total['accepted']} requests, {sum(faults.values())} faults injected: "
        f"{total['lost']} lost, {total['conflicting']} conflicting, {total['billed_twice']} billed twice, "
        f"{total['live_batches']} batches left live, {total['stuck']} requests stuck, "
        f"{total['wrong_route']} answered on another route than they say, "
        f"{total['retired_tier']} rejected for a tier a redeploy dropped before they were received, "
        f"{total['repeated']} repeated completions ({share:.2f}%), "
        f"{total['repeated_unexplained']} of them for requests no kill between a publish and its "
        "marker touched"
    )
    missed = total["missed_excused"] + total["missed"]
    print(
        f"routes: {total['realtime']} realtime ({total['rescued']} rescued from a late batch, "
        f"{total['both_ways']} also run by it), {total['batch']} batch; "
        f"{total['realtime_calls']} Messages API calls, {total['extra_calls_excused']} of them repeated "
        f"after an invocation died holding the answer, {total['called_twice']} requests called again "
        f"without such a death; {total['realtime_dead_letters']} realtime dead letters"
    )
    print(
        f"deadlines: {total['deadlines']} asked, {total['reachable']} reachable on receipt, "
        f"{total['met']} met, {missed} missed ({100 * missed / max(1, total['reachable']):.1f}%): "
        f"{total['missed_excused']} where a fault hit the request's path, {total['missed']} without one"
    )
    for cause, n in causes.most_common():
        print(f"  {n:6d}  missed: {cause}")
    print("faults injected:")
    for kind, n in faults.most_common():
        print(f"  {n:6d}  {kind}")
    if broken:
        print(f"promises broken in seeds {broken}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
