"""The submitter: flush pending requests of each tier into message batches, and see every batch
through to the end whatever crashed on the way.

A batch's life is recorded on its `batch#<ref>` item, each state written before the step that
depends on it, so whatever dies anywhere leaves enough behind for the next run (`reconcile`):

| state      | waits for                        | recovery (next run; lease held, so its run is dead) |
|------------|----------------------------------|-----------------------------------------------------|
| claiming   | its claim to finish              | release the journaled requests to their tier        |
| uploaded   | the create call                  | create it (no create was sent)                      |
| creating   | the create's answer              | after the window: adopt the one batch the API made  |
|            |                                  | in it, or create again once none can be ours        |
| created    | its poller to start              | start it                                            |
| polling    | the batch to end (check)         | if its execution is not running: restart            |
| collecting | its results (collect)            | if its execution is not running: restart            |
| failed     | a restart (poller gave up)       | restart with growing delays; once results expire,   |
|            |                                  | answer what is left and stop                        |
| closing    | its requests' answers to go out  | answer them again (skips the answered) and publish  |
| realtime   | its requests' realtime answers   | send again what it still holds; end it once none    |

Leaving the work list: collected, empty, split, refused, released, abandoned, foreign, expired,
answered (a realtime record), over_budget.

Deadlines (see `deadlines`): a request a batch made now could not answer by its deadline is sent
realtime instead, at claim, or straight from its tier when the tier cannot flush (held, over
budget, at the in-flight cap); a batch's deadline requests are written to `deadlines/<ref>.json`
so its poller can take them out in time. The daily budget (see `budget`) is committed per batch,
at its upper bound, before the create; a claim stops where the day's budget would run out.

A create is never sent twice blindly: the API has no idempotency key. Before the call the record
says `creating` with the window the call may take; a lost answer leaves it so. Only a batch created
inside that window, with the same request count, owned by no record of this stack, and the only
one that fits, is adopted; the `batchid#` item makes the claim on it atomic.

A run holds the `submitter` lease, so claims never race. The lease is short and renewed as the
run goes (`store.Lease`): before each write that needs it (a page claimed, a batch's state moved,
a record recovered), a run renews it when little is left, and stops (`LeaseLost`) if another run
has taken it meanwhile; a run that dies keeps the others out for `LEASE_SECONDS` at most. A page
of pending requests is read again consistently, its ids journaled in S3, then claimed with
batched writes (25 a call, not one conditional write each). The journal is how a batch's requests
are found again (to release them, or answer those the API never did) without an index entry each.
Claiming stops at a time budget, leaving the create its share of the invocation.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from botocore.exceptions import ClientError

from . import batches, clock, executions
from .budget import Budget, today
from .completions import Topic
from .deadlines import FLUSH_LEAD_SECONDS, Rescuer, Turnaround, flush_by, schedule_of
from .errors import (
    AccountError,
    ApiAccessError,
    BatchRefusedError,
    BatchTooLargeError,
    NotAcceptedError,
    OutcomeUnknownError,
)
from .handoff import Handoff
from .lifecycle import (
    ANSWER,
    BEGIN_CREATE,
    CLOSE,
    CLOSED,
    CREATED,
    EMPTY,
    IN_FLIGHT,
    RESTART,
    RETRY_CREATE,
    START,
    UPLOAD,
    Batch,
    Moved,
    Transition,
    claimed,
    held_by,
    move,
    new_record,
)
from .observability import MetricUnit, logger, metrics
from .payloads import Bodies, Payloads, RequestsBody
from .pricing import request_bound, unbounded_reason
from .results import Settler
from .settings import Settings, Tier
from .store import Lease, LeaseLost, Store, batch_key, request_key

# A batch left in one state longer than a submitter run may take was left by a crashed run.
STALE_SECONDS = 15 * 60
# Clocks of two invocations (and the API's) may disagree by this much; a lease outlives its run
# by as long, and a create's window is widened by it on both sides.
CLOCK_SKEW_SECONDS = 60
LEASE_MARGIN_SECONDS = CLOCK_SKEW_SECONDS
# The submitter lease lasts this long from its last renewal: a run that dies keeps the next
# runs out no longer. Renewed before a write that needs it once fewer than LEASE_AHEAD_SECONDS
# of it are left (less the skew): the longest a write that needs it takes (a page's claims).
LEASE_SECONDS = 120
LEASE_AHEAD_SECONDS = 30
# Room for the `{"requests":[...]}` envelope around the request lines.
ENVELOPE_BYTES = 1024
# Of a run's time, what claiming leaves for the create (and the writes after it).
CREATE_RESERVE_SECONDS = 120
CREATE_RESERVE_SHARE = 0.25
# A poller that failed is restarted after 1 minute, doubling up to 6 hours between tries.
RESTART_BASE_SECONDS = 60
RESTART_CAP_SECONDS = 6 * 3600
# The API keeps results this long after a batch is created; until then a batch is never given up.
RESULTS_KEPT_SECONDS = 29 * 86400
# A batch ends within 24 hours of its creation (its unprocessed requests expire).
BATCH_LIFETIME_SECONDS = 24 * 3600
# A realtime record still holding requests this long after its last send sends them again.
RESEND_SECONDS = 180
# Deadline requests of a tier looked at for a flush the learned turnaround brings forward.
URGENT_PAGE = 25
# A batch whose rescue is this overdue has a poller that is not doing it: the submitter does.
RESCUE_GRACE_SECONDS = 120


@dataclass
class Submitter:
    settings: Settings
    store: Store
    payloads: Payloads
    settler: Settler
    report: dict[str, Any] = field(default_factory=lambda: {"batches": [], "requests": 0, "reconciled": 0})
    bodies: Bodies = field(init=False)
    turnaround: Turnaround = field(init=False)
    handoff: Handoff = field(init=False)
    budget: Budget = field(init=False)
    # When this run must have finished claiming, and sending creates.
    claim_until: float = field(default=float("inf"), init=False)
    after_hold: bool = field(default=False, init=False)
    create_until: float = field(default=float("inf"), init=False)
    # Set by a claim that stopped where the day's budget ran out.
    over_budget: bool = field(default=False, init=False)
    # This run's hold on the `submitter` lease, written on the records it starts.
    holder: str = field(default_factory=lambda: uuid.uuid4().hex, init=False)
    lease: Lease = field(init=False)

    def __post_init__(self) -> None:
        self.bodies = Bodies(self.payloads)
        self.turnaround = Turnaround(self.store, self.settings)
        self.handoff = Handoff(self.settings, self.store, self.payloads)
        self.budget = Budget(self.settings, self.store)
        self.lease = self._lease(self.holder)

    def _lease(self, holder: str) -> Lease:
        return Lease(self.store, "submitter", holder, LEASE_SECONDS, CLOCK_SKEW_SECONDS, LEASE_AHEAD_SECONDS)

    @classmethod
    def from_settings(cls, settings: Settings) -> Submitter:
        store, payloads = Store(settings.table_name), Payloads(settings.bucket_name)
        return cls(settings, store, payloads, Settler(settings, store, payloads, Topic(settings.topic_arn)))

    def run(self, seconds_left: float = STALE_SECONDS) -> dict[str, Any]:
        """One scheduled run: finish what crashed runs left, then flush every tier that is due.

        Nothing is done unless this run holds the lease, which it renews as it goes; a run that
        dies keeps the others out for `LEASE_SECONDS` at most. `seconds_left` (from the Lambda
        context) bounds how long it claims and creates."""
        self.holder = holder = uuid.uuid4().hex
        self.lease = lease = self._lease(holder)
        now = clock.now()
        try:
            taken = lease.take(now)
        except Exception:
            # The write may have applied before its answer was lost: not left to keep runs out.
            with suppress(Exception):
                self.store.unlease("submitter", holder)
            raise
        if not taken:
            logger.info("another submitter run holds the lease; this one does nothing")
            metrics.add_metric(name="SubmitterOverlap", unit=MetricUnit.Count, value=1)
            self.report["skipped"] = True
            return self.report
        reserve = max(CREATE_RESERVE_SECONDS, seconds_left * CREATE_RESERVE_SHARE)
        self.claim_until = now + max(0.0, seconds_left - reserve)
        self.create_until = now + max(0.0, seconds_left - LEASE_MARGIN_SECONDS)
        try:
            self.reconcile()
            tiers = self.tiers()
            for name, tier in tiers.items():
                self.flush(name, tier)
            self.measure_waits(tiers)
        except (LeaseLost, Moved) as exc:
            # Its lease ran out (the run stalled) and another run holds it (and moved a record
            # this run wrote): that run goes on.
            logger.warning(
                "the submitter lease was taken by another run; this one stops", extra={"error": str(exc)}
            )
            metrics.add_metric(name="SubmitterLeaseLost", unit=MetricUnit.Count, value=1)
            self.report["lease_lost"] = True
        finally:
            lease.give_back()
        return self.report

    def tiers(self) -> dict[str, Tier]:
        """The tiers to flush: the policy's, and any a request was put in under an earlier policy
        (whose requests are answered all the same, under the default tier's timing)."""
        known = self.store.known_tiers()
        if not set(self.settings.tiers) <= known:
            self.store.note_tiers(self.settings.tiers)
        return self.settings.flushed(known)

    def measure_waits(self, tiers: dict[str, Tier]) -> None:
        """Age of each tier's oldest pending request, and the worst age over its tier's max wait;
        requests waiting in a tier the policy no longer names are counted apart."""
        worst = 0.0
        for name, tier in tiers.items():
            oldest = next(self.store.waiting(name, limit=1, span="plain"), None)
            age = clock.now() - clock.parse(oldest["pending_since"]) if oldest else 0.0
            metrics.add_metric(name=f"OldestPendingSeconds_{name}", unit=MetricUnit.Seconds, value=age)
            worst = max(worst, age / tier.max_wait_seconds)
        orphaned = sum(self.store.count(name, 10**9) for name in tiers if name not in self.settings.tiers)
        metrics.add_metric(name="OrphanedTierRequests", unit=MetricUnit.Count, value=orphaned)
        metrics.add_metric(name="OldestPendingRatio", unit=MetricUnit.NoUnit, value=worst)

    # flushing

    def in_flight(self) -> int:
        """Requests the API may still be processing: a batch counts until it is known to have ended
        (or must have: 24 hours after its creation), whatever its poller is doing."""
        total = 0
        for b in self.store.live_batches():
            since = clock.parse(b.get("submitted_at") or b["claimed_at"])
            ended = bool(b.get("ended_at")) or clock.now() - since >= BATCH_LIFETIME_SECONDS
            if b["status"] in IN_FLIGHT and not ended:
                total += int(b.get("request_count", 0))
        return total

    def due(self, name: str, tier: Tier) -> bool:
        """A tier flushes when its oldest request has waited its max wait, when a deadline request
        must go now for a batch to make it, or when enough requests wait."""
        oldest = next(self.store.waiting(name, limit=1, span="plain"), None)
        if oldest is not None and clock.now() - clock.parse(oldest["pending_since"]) >= tier.max_wait_seconds:
            return True
        urgent = list(self.store.waiting(name, limit=URGENT_PAGE, span="by"))
        now = clock.now()
        if urgent and now >= (flush_by(urgent[0]["pending_since"]) or 0.0):
            return True
        # The flush moments assume the default turnaround; batches learned to be slower bring
        # them forward (the most urgent requests are looked at, not every one).
        if any(self.turnaround.late(item, now + FLUSH_LEAD_SECONDS) for item in urgent):
            return True
        if oldest is None and not urgent:
            return False
        return self.store.count(name, tier.min_requests) >= tier.min_requests

    def flush(self, name: str, tier: Tier) -> None:
        cap = self.settings.max_batch_requests
        while self.due(name, tier):
            held = self.store.held_until(name)
            if held is not None and clock.now() < held:
                logger.warning("tier held after an account problem", extra={"tier": name, "until": held})
                metrics.add_metric(name="TierHeld", unit=MetricUnit.Count, value=1)
                return  # the realtime API refuses the same account: nothing to send it
            # A batch made after a hold ends it, if the API answers it (see `Poller._finish`).
            self.after_hold = held is not None
            if clock.now() >= self.claim_until:
                logger.warning("run out of time to claim; the next run goes on", extra={"tier": name})
                return
            room = self.settings.max_in_flight - self.in_flight()
            if room <= 0:
                logger.warning("in-flight cap reached; tier waits", extra={"tier": name})
                metrics.add_metric(name="InFlightCapReached", unit=MetricUnit.Count, value=1)
                self.route_late(name)
                return
            if self.budget.left() <= 0:
                self._budget_held(name)
                return
            self.lease.keep()
            record, refused = self.claim(name, min(room, cap))
            if record is None:
                if self.over_budget:
                    self._budget_held(name)
                    return
                if refused:
                    continue  # only requests no batch can take were found, and answered (or sent realtime)
                return
            if not self._commit(record):
                self._budget_held(name)
                return
            try:
                self.submit(record)
            except (BatchTooLargeError, BatchRefusedError):
                # Halve the batch until it fits, or until the request the API refuses stands alone.
                cap = max(1, int(record["request_count"]) // 2)
                metrics.add_metric(name="BatchSplit", unit=MetricUnit.Count, value=1)
            except (NotAcceptedError, OutcomeUnknownError, AccountError):
                return  # the API is busy, unreachable or refuses the account: the tier waits

    def _budget_held(self, name: str) -> None:
        logger.warning(
            "the day's budget is spent; the tier waits for the next UTC day",
            extra={"tier": name, "budget_usd": self.settings.daily_budget_usd},
        )
        metrics.add_metric(name="BudgetHeld", unit=MetricUnit.Count, value=1)
        self.route_late(name)

    def _commit(self, record: dict[str, Any]) -> bool:
        """Commit the batch's upper-bound cost to today's budget, or release it if it no longer fits
        (realtime answers committed meanwhile)."""
        if not self.budget.capped:
            return True
        usd, day = float(record["budget_usd"]), today()
        if self.budget.commit(usd, day, mark=batch_key(record["ref"])):
            record["budget_day"] = day
            return True
        self.settler.release(record, Batch.OVER_BUDGET)
        return False

    def route_late(self, name: str) -> int:
        """Send realtime the requests of a tier that cannot flush which a batch could no longer
        answer in time (only requests whose flush moment has come can be late)."""
        now = clock.now()
        late: list[dict[str, Any]] = []
        for page in self.store.pages(name, span="by", until=f"by:{clock.iso(now)}"):
            fresh = self.store.get_many(item["pk"] for item in page)
            for listed in page:
                item = fresh.get(listed["pk"])
                pending = (
                    item is not None and item.get("status") == "pending" and item.get("pending_tier") == name
                )
                if pending and item is not None and self.turnaround.late(item, now):
                    late.append(item)
            if clock.now() >= self.claim_until:
                break
        if not late:
            return 0
        self.lease.keep()
        return self.handoff.route(name, late, why="late", run=self.holder)

    def claim(self, tier: str, cap: int) -> tuple[dict[str, Any] | None, int]:
        """Claim the most urgent pending requests of a tier (deadline ones by when they must go,
        then the rest oldest first) into a new batch and write its JSONL to S3; also answers those
        too large for any batch and sends realtime those a batch could no longer answer in time.
        Returns the record (None if it is empty) and how many were answered or sent so."""
        record = self._new_record(tier)
        limit = self.settings.max_batch_bytes - ENVELOPE_BYTES
        writer = self.payloads.writer(record["input_key"])
        giants: list[dict[str, Any]] = []
        lost: list[dict[str, Any]] = []
        late: list[dict[str, Any]] = []
        dear: list[tuple[dict[str, Any], str]] = []
        schedule: list[tuple[float, str]] = []
        models: set[str] = set()
        # One create goes under one API version and one set of betas: the first request taken
        # sets them, and requests that need others wait for a batch of their own.
        needs: dict[str, Any] | None = None
        headers: dict[str, str] | None = None  # the headers `needs` makes, once
        allowance = self.budget.left()
        estimate = 0.0
        self.over_budget = False
        size_hint = min(cap, 1000)
        pages = chain(
            self.store.pages(tier, size_hint, span="by"), self.store.pages(tier, size_hint, span="plain")
        )
        try:
            for number, page in enumerate(pages):
                # The index lags the table: only what a consistent read says is pending is taken.
                fresh = self.store.get_many(item["pk"] for item in page)
                taken: list[dict[str, Any]] = []
                lines: list[bytes] = []
                size = writer.bytes
                full = False
                now = clock.now()
                for listed in page:
                    item = fresh.get(listed["pk"])
                    if item is None or item.get("status") != "pending" or item.get("pending_tier") != tier:
                        continue
                    if self.turnaround.late(item, now):
                        late.append(item)  # a batch could not make its deadline: realtime
                        continue
                    if headers is not None and batches.headers_for(item) != headers:
                        continue
                    line = self._line(item)
                    if line is None:
                        lost.append(item)  # its body is gone: answered, never a tier stuck on it
                        continue
                    if len(line) + 1 > limit:
                        giants.append(item)  # no batch of this deployment can ever hold it
                        continue
                    if writer.count + len(taken) >= cap or size + len(line) + 1 > limit:
                        full = True
                        break
                    cost = self._bound(item, line)
                    if cost > self.settings.daily_budget_usd > 0:
                        dear.append((item, _too_dear(cost, line)))  # no day's budget can ever hold it
                        continue
                    if estimate + cost > allowance:
                        full = self.over_budget = True  # the rest waits for the next UTC day
                        break
                    estimate += cost
                    if needs is None:
                        needs = {k: item[k] for k in ("api_version", "betas") if item.get(k)}
                        headers = batches.headers_for(needs)
                    taken.append(item)
                    lines.append(line)
                    size += len(line) + 1
                    models.add(str(item.get("model")))
                    if item.get("deadline"):
                        schedule.append((clock.parse(item["deadline"]), item["request_id"]))
                if taken:
                    self.lease.keep()
                    self.payloads.journal(record["ref"], number, (item["request_id"] for item in taken))
                    self.store.put_many(claimed(item, record["ref"], record["claimed_at"]) for item in taken)
                    for line in lines:
                        writer.write(line)
                if full or writer.count >= cap or clock.now() >= self.claim_until:
                    break
            writer.close()
        except BaseException:
            writer.abort()
            raise
        self.lease.keep()
        for item in giants:
            self.refuse_alone(
                tier, item, "request_too_large", "the request alone exceeds the batch size limit"
            )
        for item in lost:
            self.refuse_alone(tier, item, "request_unavailable", "the request's body could not be read back")
        for item, message in dear:
            self.refuse_alone(tier, item, "budget_exceeded", message)
        routed = self.handoff.route(tier, late, why="late", run=self.holder) if late else 0
        answered = len(giants) + len(lost) + len(dear) + routed
        if writer.count == 0:
            move(self.store, record, EMPTY)
            return None, answered
        fields: dict[str, Any] = {
            "request_count": writer.count,
            "bytes": writer.bytes,
            "models": sorted(models),
            "budget_usd": round(estimate, 8),
            **(needs or {}),
        }
        if schedule:
            # Its poller takes these out for realtime if the batch has not ended in time.
            self.payloads.put_lines(f"deadlines/{record['ref']}.json", [schedule_of(schedule).encode()])
            first = min(d for d, _ in schedule)
            fields["rescue_at"] = first - self.settings.deadline_margin_seconds
        self.lease.keep()
        move(self.store, record, UPLOAD, updated_at=clock.iso(), **fields)
        return record, answered

    def _bound(self, item: dict[str, Any], line: bytes) -> float:
        """The most this request can cost in a batch (0 when no budget is set)."""
        if not self.budget.capped:
            return 0.0
        usd = request_bound(json.loads(line)["params"], len(line), batch=True)
        return math.inf if usd is None else usd  # nothing bounds it: no day's budget can hold it

    def _new_record(self, tier: str, state: Batch = Batch.CLAIMING, **extra: Any) -> dict[str, Any]:
        ref = uuid.uuid4().hex
        record = new_record(
            tier,
            self.settings.retention_days,
            state,
            ref=ref,
            input_key=f"input/{ref}.jsonl",
            run=self.holder,
            **({"after_hold": True} if self.after_hold else {}),
            **extra,
        )
        self.store.add(record)
        return record

    def _line(self, item: dict[str, Any]) -> bytes | None:
        """A pending request's line, None if its body object is gone (no later read can help)."""
        try:
            return self.bodies.line(item["body_key"], int(item["body_at"]), int(item["body_len"]))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            logger.error(
                "a request's body is missing; it is answered", extra={"request_id": item["request_id"]}
            )
            return None

    def refuse_alone(self, tier: str, item: dict[str, Any], error: str, message: str) -> None:
        """Answer one request no batch can take, through a record of its own."""
        record = self._new_record(
            tier, Batch.CLOSING, close_error=error, close_message=message, close_status=Batch.REFUSED.value
        )
        self.payloads.journal(record["ref"], 0, [item["request_id"]])
        self.store.put_many([claimed(item, record["ref"], record["claimed_at"])])
        self.close(record)

    def close(self, record: dict[str, Any]) -> None:
        """Answer whatever a record still holds with its recorded error, publish, and end it."""
        self.settler.flush(record["ref"])
        self.settler.unresolved(record, record["close_error"], record["close_message"])
        move(self.store, record["ref"], CLOSED, Batch(record["close_status"]), updated_at=clock.iso())

    def submit(self, record: dict[str, Any]) -> None:
        """Create the batch from the uploaded JSONL and start its poller."""
        ref = record["ref"]
        self.lease.keep()
        started = clock.now()
        move(
            self.store,
            record,
            BEGIN_CREATE,
            create_started=clock.iso(started),
            create_until=clock.iso(self.create_until),
            updated_at=clock.iso(started),
        )
        try:
            body = RequestsBody(self.payloads, record["input_key"], self.payloads.size(record["input_key"]))
            headers = batches.headers_for(record)
            batch = batches.create_from(body, len(body), deadline=self.create_until, headers=headers)
        except (BatchTooLargeError, BatchRefusedError) as exc:
            if int(record["request_count"]) == 1:
                # One request the API will never take: answer it rather than retry it forever.
                error = (
                    "request_too_large" if isinstance(exc, BatchTooLargeError) else "invalid_request_error"
                )
                self._close_with(record, error, str(exc), Batch.REFUSED)
                return
            logger.warning("batch refused by the API; splitting", extra={"ref": ref, "error": str(exc)})
            self.settler.release(record, Batch.SPLIT)
            raise
        except (ApiAccessError, NotAcceptedError, AccountError) as exc:
            # The API answered no: nothing was created, so the requests go back to their tier.
            logger.error("batch refused; requests released", extra={"ref": ref, "error": str(exc)})
            metrics.add_metric(name="BatchCreateRefused", unit=MetricUnit.Count, value=1)
            self.settler.release(record, Batch.REFUSED)
            if isinstance(exc, AccountError):
                self.settler.hold(record["tier"])  # not the requests' fault: the tier pauses
            raise
        except OutcomeUnknownError:
            # The batch may or may not exist now: a later run adopts it or proves it absent.
            logger.warning("batch create unanswered; left for reconciling", extra={"ref": ref})
            metrics.add_metric(name="BatchCreateUnanswered", unit=MetricUnit.Count, value=1)
            raise
        self.created(record, batch)

    def _close_with(self, record: dict[str, Any], error: str, message: str, end: Batch) -> None:
        fields: dict[str, Any] = {"close_error": error, "close_message": message[:1000]}
        fields["close_status"] = end.value
        if not move(self.store, record["ref"], CLOSE, **fields):
            return  # moved on meanwhile (collected): whoever moved it answers its requests
        self.close(record | fields)
        if end is Batch.REFUSED:
            # Never created, so nothing of what it committed was spent.
            committed, day = Budget.terms(record)
            self.budget.settle(batch_key(record["ref"]), committed, day, 0.0)

    def created(self, record: dict[str, Any], batch: Any) -> None:
        ref = record["ref"]
        if not self.store.own(batch.id, ref, int(record["ttl"])):
            raise _Taken(batch.id)
        now = clock.iso()
        move(
            self.store,
            record,
            CREATED,
            batch_id=batch.id,
            submitted_at=now,
            updated_at=now,
            expires_at=_stamp(batch.expires_at),
            created_at=_stamp(batch.created_at),
        )
        metrics.add_metric(name="BatchesCreated", unit=MetricUnit.Count, value=1)
        fresh = self.store.get(batch_key(ref)) or record
        rescuer = Rescuer(self.settings, self.store, self.payloads)
        if rescuer.may_be_empty(fresh, 0) and not rescuer.holds_any(ref):
            # Adopted after every one of its requests went realtime: nothing in it is ours to wait for.
            batches.cancel(batch.id, deadline=self.create_until)
            metrics.add_metric(name="BatchesCanceled", unit=MetricUnit.Count, value=1)
        logger.info(
            "batch created",
            extra={
                "batch_id": batch.id,
                "ref": ref,
                "tier": record["tier"],
                "requests": record["request_count"],
            },
        )
        self.start(record)

    def start(self, record: dict[str, Any], restarts: int = 0, step: Transition = START) -> None:
        """Start (or restart) the batch's poller; its execution name is the batch id (-r<n>)."""
        assert self.settings.state_machine_arn, "STATE_MACHINE_ARN is required by the submitter"
        name = _execution_name(record["batch_id"], restarts)
        wait = float(self.settings.poll_min_seconds)
        if record.get("rescue_at") is not None:
            wait = min(wait, float(record["rescue_at"]) - clock.now())
        payload = {"batch_id": record["batch_id"], "ref": record["ref"], "wait_seconds": max(0, int(wait))}
        if not executions.start(self.settings.state_machine_arn, name, payload):
            # The name is taken: fine if by this batch's own earlier try, a wrong adoption if not.
            owner = executions.input_of(self.settings.state_machine_arn, name).get("ref")
            if owner != record["ref"]:
                self.disown(record, f"execution {name} belongs to batch record {owner}")
                return
        move(
            self.store,
            record["ref"],
            step,
            execution=name,
            restarts=restarts,
            updated_at=clock.iso(),
            remove=("restart_after",),
        )
        self.report["batches"].append(record["batch_id"])
        self.report["requests"] += int(record["request_count"])

    # recovery

    def disown(self, record: dict[str, Any], why: str) -> None:
        """A batch taken for ours that is not: our requests go back to their tier for a new batch."""
        n = self.settler.release(record, Batch.FOREIGN)
        logger.error(
            "a batch was wrongly adopted; requests released", extra={"ref": record["ref"], "why": why, "n": n}
        )
        metrics.add_metric(name="WrongAdoptions", unit=MetricUnit.Count, value=1)

    def reconcile(self) -> None:
        """See every live batch through: each record on its own, so one that fails stops no other."""
        stalled = 0
        for record in list(self.store.live_batches()):
            idle = clock.now() - clock.parse(record["updated_at"])
            stalled += idle >= self.settings.stalled_batch_seconds
            step = self._recovery(record["status"])
            if step is None:
                continue
            try:
                self.lease.keep()
                self._rescue_overdue(record)
                if step(record, idle):
                    self.report["reconciled"] += 1
            except LeaseLost:
                raise
            except _Taken:
                logger.warning("batch already owned by another record", extra={"ref": record["ref"]})
            except (
                BatchTooLargeError,
                BatchRefusedError,
                NotAcceptedError,
                OutcomeUnknownError,
                AccountError,
            ):
                pass  # `submit` has dealt with it (released, or left for the next run) and logged it
            except Exception as exc:
                logger.exception(
                    "could not recover a batch; going on with the others",
                    extra={"ref": record["ref"], "state": record["status"], "error": type(exc).__name__},
                )
                metrics.add_metric(name="ReconcileFailures", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="StalledBatches", unit=MetricUnit.Count, value=stalled)

    def _recovery(self, status: str) -> Callable[[dict[str, Any], float], bool] | None:
        steps: dict[str, Callable[[dict[str, Any], float], bool]] = {
            "claiming": self._recover_claiming,
            "uploaded": self._recover_uploaded,
            "creating": self._recover_creating,
            "created": self._recover_created,
            "polling": self._recover_polling,
            "collecting": self._recover_polling,
            "failed": self._recover_failed,
            "closing": self._recover_closing,
            "realtime": self._recover_realtime,
        }
        return steps.get(status)

    def _rescue_overdue(self, record: dict[str, Any]) -> None:
        """Rescue a batch's deadline requests when its poller has not (failed, restarting, or a
        batch whose create is still being reconciled): deadlines do not wait for recovery."""
        rescuer = Rescuer(self.settings, self.store, self.payloads)
        now = clock.now()
        if record["status"] not in IN_FLIGHT or not rescuer.due(record, now - RESCUE_GRACE_SECONDS):
            return
        holder = uuid.uuid4().hex
        # For as long as this run can last: a run that dies here keeps the batch's checks out no longer.
        until = self.create_until + 2 * LEASE_MARGIN_SECONDS
        if not self.store.lease(f"collect#{record['ref']}", holder, until, now):
            return  # its collector is at work: the batch has ended
        try:
            fresh = self.store.get(batch_key(record["ref"])) or record
            if fresh.get("status") in IN_FLIGHT and rescuer.due(fresh, now):
                rescuer.rescue(fresh, now, self.handoff, self.create_until)
        finally:
            self.store.unlease(f"collect#{record['ref']}", holder)

    def _recover_realtime(self, record: dict[str, Any], idle: float) -> bool:
        """A realtime record ends once none of its requests is still waiting for an answer and
        what they settled is published; those that wait get their message again (lost, or sent by
        a run that died)."""
        ref = record["ref"]
        ids = list(self.payloads.journaled(ref))
        items = self.store.get_many(request_key(rid) for rid in ids)
        waiting = [rid for rid in ids if held_by(items.get(request_key(rid)), ref)]
        now = clock.now()
        # One the API asked to pause (a retry-after) is not sent before the pause is over.
        ready = [rid for rid in waiting if float(items[request_key(rid)].get("rt_not_before", 0)) <= now]
        if not waiting:
            # An answer settled while SNS refused it is published only from its outbox: once the
            # record is closed, nothing else would (its message may be in the dead-letter queue).
            self.settler.flush(ref)
            move(self.store, ref, ANSWER, updated_at=clock.iso())
            return True
        # A record a failed run made whose sending never finished is sent at once, as a batch
        # record such a run left is recovered at once.
        unsent = record.get("run") not in (None, self.holder) and not int(record.get("request_count", 0))
        if (idle < RESEND_SECONDS and not unsent) or not ready:
            return False
        logger.warning("realtime requests sent again", extra={"ref": ref, "n": len(ready)})
        metrics.add_metric(name="RealtimeResent", unit=MetricUnit.Count, value=len(ready))
        self.handoff.dispatch(record, ready)
        return True

    def _left(self, record: dict[str, Any], idle: float) -> dict[str, Any] | None:
        """The record as it is, if the run that left it in its state is over; else None.

        This run holds the lease, so one that wrote the record under another hold has ended (it
        failed, or died and its lease ran out) or makes no more writes that need the lease (its
        lease ran out while it stalled: it renews before each, and stops once another run holds
        it); a record of unknown run is taken for over once it is stale. The work list is an
        index, which lags its table: a record listed in a state it has since left (its run went
        on, then ended) is acted on only as it is now."""
        if idle < STALE_SECONDS and record.get("run") in (None, self.holder):
            return None
        fresh = self.store.get(batch_key(record["ref"]))
        if fresh is None or fresh.get("status") != record["status"]:
            return None  # moved on: the next run sees it where it is
        return fresh

    def _recover_claiming(self, record: dict[str, Any], idle: float) -> bool:
        left = self._left(record, idle)
        if left is None:
            return False
        n = self.settler.release(left, Batch.RELEASED)
        logger.warning("released an abandoned claim", extra={"ref": record["ref"], "n": n})
        return True

    def _recover_uploaded(self, record: dict[str, Any], idle: float) -> bool:
        left = self._left(record, idle)
        if left is None:
            return False
        if self._rescued_from(left):
            return True
        # A run that ended before committing its cost to the budget leaves that to this one.
        uncommitted = "budget_usd" in left and not left.get("budget_day")
        if uncommitted and not self._commit(left):
            return True  # released: it no longer fits the day's budget
        self.submit(left)
        return True

    def _rescued_from(self, record: dict[str, Any]) -> bool:
        """A batch never created whose deadline requests went realtime meanwhile: its input still
        holds them, so it is not created from it. What it holds goes back to its tier instead, to be
        claimed afresh (with its own deadlines, now sooner)."""
        fresh = self.store.get(batch_key(record["ref"])) or record
        if not int(fresh.get("n_rescued", 0)):
            return False
        n = self.settler.release(fresh, Batch.RELEASED)
        logger.warning("a batch lost requests to realtime before its create; released", extra={"n": n})
        return True

    def _recover_creating(self, record: dict[str, Any], idle: float) -> bool:
        start = clock.parse(record["create_started"]) - CLOCK_SKEW_SECONDS
        end = clock.parse(record["create_until"]) + CLOCK_SKEW_SECONDS
        if clock.now() < end:
            return False  # the create may still be under way
        found = self._find_created(record, start, end)
        if found is _WAIT:
            return False
        if found is None:
            # No batch of the window can be this one: nothing was created, so create it now.
            if self._rescued_from(record):
                return True
            move(self.store, record, RETRY_CREATE, updated_at=clock.iso())
            self.submit(record)
            return True
        logger.warning("adopted a batch whose create answer was lost", extra={"batch_id": found.id})
        metrics.add_metric(name="BatchesAdopted", unit=MetricUnit.Count, value=1)
        self.created(record, found)
        return True

    def _find_created(self, record: dict[str, Any], start: float, end: float) -> Any:
        """The API's batch made by this record's create, None when there is none, or `_WAIT`.

        The API keeps no metadata of ours: a candidate was created inside the window, holds as
        many requests, and belongs to no other record of this stack. One candidate is adopted;
        of several (another deployment on the same key), only the one whose results carry
        exactly this batch's journaled ids, once they have all ended."""
        count = int(record["request_count"])
        fits = [b for b in batches.created_between(start, end, self.create_until) if _total(b) == count]
        owners = self.store.owners(b.id for b in fits)
        for b in fits:
            if owners.get(b.id) == record["ref"]:
                return b  # the record's own, claimed before a crash
        candidates = [b for b in fits if b.id not in owners]
        if not candidates:
            return None
        if len(candidates) == 1 and not self._rivals(record, start, end):
            return candidates[0]
        # Several could be ours, or another record of ours waits on the same window: only the
        # results can say whose a batch is.
        metrics.add_metric(name="AmbiguousAdoptions", unit=MetricUnit.Count, value=1)
        if any(b.processing_status != "ended" for b in candidates):
            logger.warning(
                "several batches could be this one; waiting for them to end", extra={"ref": record["ref"]}
            )
            return _WAIT
        ours = set(self.payloads.journaled(record["ref"]))
        matching = [b for b in candidates if set(batches.custom_ids(b.id, self.create_until)) == ours]
        return matching[0] if len(matching) == 1 else None

    def _rivals(self, record: dict[str, Any], start: float, end: float) -> bool:
        """Whether another record of this stack, as large, also has a create of unknown outcome
        in an overlapping window: a lone candidate could then be either's."""
        for other in self.store.live_batches():
            if other["ref"] == record["ref"] or other["status"] != "creating":
                continue
            if int(other["request_count"]) != int(record["request_count"]):
                continue
            o_start = clock.parse(other["create_started"]) - CLOCK_SKEW_SECONDS
            o_end = clock.parse(other["create_until"]) + CLOCK_SKEW_SECONDS
            if o_start <= end and start <= o_end:
                return True
        return False

    def _recover_created(self, record: dict[str, Any], idle: float) -> bool:
        left = self._left(record, idle)
        if left is None:
            return False
        self.start(left, int(left.get("restarts", 0)))
        return True

    def _recover_polling(self, record: dict[str, Any], idle: float) -> bool:
        """An execution can end without recording it (stopped, a runtime error, the record's own
        write failing): a batch unchanged for longer than a poll gets its execution looked at."""
        if idle < self.settings.poll_max_seconds + STALE_SECONDS:
            return False
        assert self.settings.state_machine_arn, "STATE_MACHINE_ARN is required by the submitter"
        name = record.get("execution") or record["batch_id"]
        status = executions.status(self.settings.state_machine_arn, name)
        if status == "RUNNING":
            return False
        logger.warning(
            "a poller ended without finishing its batch", extra={"ref": record["ref"], "execution": status}
        )
        return self._recover_failed(record | {"restart_after": None}, idle)

    def _recover_failed(self, record: dict[str, Any], idle: float) -> bool:
        created = clock.parse(record.get("created_at") or record.get("submitted_at") or record["claimed_at"])
        if clock.now() - created >= RESULTS_KEPT_SECONDS:
            # The API no longer has its results: answer what is left (tried again if attempts remain).
            self._close_with(
                record, "results_unavailable", "the batch's results are no longer available", Batch.ABANDONED
            )
            metrics.add_metric(name="BatchesAbandoned", unit=MetricUnit.Count, value=1)
            return True
        after = record.get("restart_after")
        if after and clock.now() < clock.parse(after):
            return False
        assert self.settings.state_machine_arn, "STATE_MACHINE_ARN is required by the submitter"
        # A poller may still run: one started by a run that died before recording it, or the one
        # a late, stale execution's failure record hid. Never start a second beside it.
        last = int(record.get("restarts", 0))
        for name in dict.fromkeys([record.get("execution"), _execution_name(record["batch_id"], last)]):
            if name and executions.status(self.settings.state_machine_arn, name) == "RUNNING":
                move(self.store, record["ref"], RESTART, execution=name, updated_at=clock.iso())
                return True
        restarts = last + 1
        delay = min(RESTART_CAP_SECONDS, RESTART_BASE_SECONDS * 2 ** (restarts - 1))
        self.store.update(
            batch_key(record["ref"]), restart_after=clock.iso(clock.now() + delay), restarts=restarts
        )
        self.start(record, restarts, RESTART)
        metrics.add_metric(name="PollerRestarts", unit=MetricUnit.Count, value=1)
        return True

    def _recover_closing(self, record: dict[str, Any], idle: float) -> bool:
        self.close(record)
        return True


class _Taken(Exception):
    """The batch is already owned by another record (an adoption raced, or a wrong one)."""


_WAIT = object()


def _execution_name(batch_id: str, restarts: int) -> str:
    return batch_id if restarts == 0 else f"{batch_id}-r{restarts}"


def _total(batch: Any) -> int:
    c = batch.request_counts
    return int(c.processing + c.succeeded + c.errored + c.canceled + c.expired)


def _stamp(value: Any) -> str | None:
    return clock.iso(value.timestamp()) if value is not None else None


def _too_dear(cost: float, line: bytes) -> str:
    """Why a request no daily budget can hold is refused."""
    if cost < math.inf:
        return f"the request may cost up to {cost:.4f} USD, more than the whole daily budget"
    return str(unbounded_reason(json.loads(line)["params"]))
