"""The submitter: flush pending requests of each tier into message batches, and see every batch
through to the end whatever crashed on the way.

A batch's life is recorded on its `batch#<ref>` item, each state written before the step that
depends on it, so whatever dies anywhere leaves enough behind for the next run. The states, what
each waits for and who moves it on are the table in `lifecycle` (`lifecycle.BATCH`); what a run
does for each live state it finds is `RECOVERY` below, each recovery beside its forward step in
the phase that owns the state:

- `claiming`: the claim of a tier's most urgent pending requests (recovery of `claiming`);
- `creating`: the budget's commitment, the create, and the adoption of a batch whose create
  answer was lost (recovery of `uploaded` and `creating`);
- `starts`: the poller's start and restarts (recovery of `created`, `polling`, `collecting`,
  `failed`);
- `closing`: records the relay answers itself (recovery of `closing`);
- `handoff`: realtime records (recovery of `realtime`).

This module decides what happens and in what order: a run finishes what crashed runs left, then
flushes each tier that is due (`due`, `flush_moment`), within the in-flight cap, the daily budget
and its time.

A run holds the `submitter` lease, so claims never race. The lease is short and renewed as the
run goes (`store.Lease`): before each write that needs it (a page claimed, a batch's state moved,
a record recovered), a run renews it when little is left, and stops (`LeaseLost`) if another run
has taken it meanwhile; a run that dies keeps the others out for `LEASE_SECONDS` at most.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from . import clock
from .claiming import Claiming
from .closing import Closing
from .completions import Topic
from .creating import Creating, Taken
from .deadlines import FLUSH_LEAD_SECONDS, Rescuer, flush_by
from .errors import (
    AccountError,
    BatchRefusedError,
    BatchTooLargeError,
    NotAcceptedError,
    OutcomeUnknownError,
)
from .handoff import RESEND_SECONDS as RESEND_SECONDS
from .lifecycle import IN_FLIGHT, Batch, BatchRecord, Moved
from .observability import MetricUnit, logger, metrics
from .payloads import Payloads
from .results import Settler
from .runs import LEASE_MARGIN_SECONDS, STALE_SECONDS, Run
from .settings import Settings, Tier
from .starts import Starts
from .store import LeaseLost, Store

# Of a run's time, what claiming leaves for the create (and the writes after it).
CREATE_RESERVE_SECONDS = 120
CREATE_RESERVE_SHARE = 0.25
# A batch ends within 24 hours of its creation (its unprocessed requests expire).
BATCH_LIFETIME_SECONDS = 24 * 3600
# Deadline requests of a tier looked at for a flush the learned turnaround brings forward.
URGENT_PAGE = 25
# A batch whose rescue is this overdue has a poller that is not doing it: the submitter does.
RESCUE_GRACE_SECONDS = 120
# What a run does about a record it finds in each live state (see `lifecycle.BATCH`): True when
# it acted. A test holds this to exactly the live states.
Recovery = Callable[["Submitter", BatchRecord, float], bool]
RECOVERY: dict[Batch, Recovery] = {
    Batch.CLAIMING: lambda s, record, idle: s.claiming.recover(record, idle),
    Batch.UPLOADED: lambda s, record, idle: s.creating.recover_uploaded(record, idle),
    Batch.CREATING: lambda s, record, idle: s.creating.recover_creating(record, idle),
    Batch.CREATED: lambda s, record, idle: s.starts.recover_created(record, idle),
    Batch.POLLING: lambda s, record, idle: s.starts.recover_polling(record, idle),
    Batch.COLLECTING: lambda s, record, idle: s.starts.recover_polling(record, idle),
    Batch.FAILED: lambda s, record, idle: s.starts.recover_failed(record, idle),
    Batch.CLOSING: lambda s, record, idle: s.closing.recover(record, idle),
    Batch.REALTIME: lambda s, record, idle: s.ctx.handoff.recover(record, idle, s.ctx.holder, s.ctx.settler),
}


def flush_moment(key: str, tier: Tier) -> float:
    """When a request waiting under sort key `key` makes its tier due: a deadline request at its
    flush moment (the `by:` key), any other once it has waited its tier's max wait."""
    by = flush_by(key)
    return by if by is not None else clock.parse(key) + tier.max_wait_seconds


def due_at(keys: Iterable[str], tier: Tier, now: float) -> float | None:
    """When a tier whose pending requests sort under `keys` is due by its timing and size (None
    when none waits): its earliest flush moment, or now once `min_requests` wait. A learned
    turnaround slower than the default can bring a deadline request's moment forward (`due`)."""
    moments = [flush_moment(k, tier) for k in keys]
    if moments and len(moments) >= tier.min_requests:
        moments.append(now)
    return min(moments, default=None)


@dataclass
class Submitter:
    settings: Settings
    store: Store
    payloads: Payloads
    settler: Settler
    ctx: Run = field(init=False)
    closing: Closing = field(init=False)
    claiming: Claiming = field(init=False)
    starts: Starts = field(init=False)
    creating: Creating = field(init=False)

    def __post_init__(self) -> None:
        self.ctx = ctx = Run(self.settings, self.store, self.payloads, self.settler)
        self.closing = Closing(ctx)
        self.claiming = Claiming(ctx, self.closing)
        self.starts = Starts(ctx, self.closing)
        self.creating = Creating(ctx, self.closing, self.starts)

    @classmethod
    def from_settings(cls, settings: Settings) -> Submitter:
        store, payloads = Store(settings.table_name), Payloads(settings.bucket_name)
        return cls(settings, store, payloads, Settler(settings, store, payloads, Topic(settings.topic_arn)))

    @property
    def report(self) -> dict[str, Any]:
        return self.ctx.report

    def run(self, seconds_left: float = STALE_SECONDS) -> dict[str, Any]:
        """One scheduled run: finish what crashed runs left, then flush every tier that is due.

        Nothing is done unless this run holds the lease, which it renews as it goes; a run that
        dies keeps the others out for `LEASE_SECONDS` at most. `seconds_left` (from the Lambda
        context) bounds how long it claims and creates."""
        ctx = self.ctx
        holder = uuid.uuid4().hex
        lease = ctx.new_lease(holder)
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
            ctx.report["skipped"] = True
            return ctx.report
        reserve = max(CREATE_RESERVE_SECONDS, seconds_left * CREATE_RESERVE_SHARE)
        ctx.claim_until = now + max(0.0, seconds_left - reserve)
        ctx.create_until = now + max(0.0, seconds_left - LEASE_MARGIN_SECONDS)
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
            ctx.report["lease_lost"] = True
        finally:
            lease.give_back()
        return ctx.report

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
            since = clock.parse(b.submitted_at or b.claimed_at)
            ended = bool(b.ended_at) or clock.now() - since >= BATCH_LIFETIME_SECONDS
            if b.status in IN_FLIGHT and not ended:
                total += b.request_count
        return total

    def due(self, name: str, tier: Tier) -> bool:
        """A tier flushes when its oldest request has waited its max wait, when a deadline request
        must go now for a batch to make it, or when enough requests wait (see `due_at`)."""
        oldest = next(self.store.waiting(name, limit=1, span="plain"), None)
        if oldest is not None and clock.now() >= flush_moment(oldest["pending_since"], tier):
            return True
        urgent = list(self.store.waiting(name, limit=URGENT_PAGE, span="by"))
        now = clock.now()
        if urgent and now >= flush_moment(urgent[0]["pending_since"], tier):
            return True
        # The flush moments assume the default turnaround; batches learned to be slower bring
        # them forward (the most urgent requests are looked at, not every one).
        if any(self.ctx.turnaround.late(item, now + FLUSH_LEAD_SECONDS) for item in urgent):
            return True
        if oldest is None and not urgent:
            return False
        return self.store.count(name, tier.min_requests) >= tier.min_requests

    def flush(self, name: str, tier: Tier) -> None:
        ctx, cap = self.ctx, self.settings.max_batch_requests
        while self.due(name, tier):
            held = self.store.held_until(name)
            if held is not None and clock.now() < held:
                logger.warning("tier held after an account problem", extra={"tier": name, "until": held})
                metrics.add_metric(name="TierHeld", unit=MetricUnit.Count, value=1)
                return  # the realtime API refuses the same account: nothing to send it
            # A batch made after a hold ends it, if the API answers it (see `Poller._finish`).
            ctx.after_hold = held is not None
            if clock.now() >= ctx.claim_until:
                logger.warning("run out of time to claim; the next run goes on", extra={"tier": name})
                return
            room = self.settings.max_in_flight - self.in_flight()
            if room <= 0:
                logger.warning("in-flight cap reached; tier waits", extra={"tier": name})
                metrics.add_metric(name="InFlightCapReached", unit=MetricUnit.Count, value=1)
                self.claiming.route_late(name)
                return
            if ctx.budget.left() <= 0:
                self._budget_held(name)
                return
            ctx.lease.keep()
            record, refused = self.claiming.claim(name, min(room, cap))
            if record is None:
                if ctx.over_budget:
                    self._budget_held(name)
                    return
                if refused:
                    continue  # only requests no batch can take were found, and answered (or sent realtime)
                return
            if not self.creating.commit(record):
                self._budget_held(name)
                return
            try:
                self.creating.submit(record)
            except (BatchTooLargeError, BatchRefusedError):
                # Halve the batch until it fits, or until the request the API refuses stands alone.
                cap = max(1, record.request_count // 2)
                metrics.add_metric(name="BatchSplit", unit=MetricUnit.Count, value=1)
            except (NotAcceptedError, OutcomeUnknownError, AccountError):
                return  # the API is busy, unreachable or refuses the account: the tier waits

    def _budget_held(self, name: str) -> None:
        logger.warning(
            "the day's budget is spent; the tier waits for the next UTC day",
            extra={"tier": name, "budget_usd": self.settings.daily_budget_usd},
        )
        metrics.add_metric(name="BudgetHeld", unit=MetricUnit.Count, value=1)
        self.claiming.route_late(name)

    # recovery

    def reconcile(self) -> None:
        """See every live batch through: each record on its own, so one that fails stops no other."""
        stalled = 0
        for record in list(self.store.live_batches()):
            idle = clock.now() - clock.parse(record.updated_at)
            stalled += idle >= self.settings.stalled_batch_seconds
            step = RECOVERY.get(record.status)
            if step is None:
                continue
            try:
                self.ctx.lease.keep()
                self._rescue_overdue(record)
                if step(self, record, idle):
                    self.ctx.report["reconciled"] += 1
            except LeaseLost:
                raise
            except Taken:
                logger.warning("batch already owned by another record", extra={"ref": record.ref})
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
                    extra={"ref": record.ref, "state": record.status, "error": type(exc).__name__},
                )
                metrics.add_metric(name="ReconcileFailures", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="StalledBatches", unit=MetricUnit.Count, value=stalled)

    def _rescue_overdue(self, record: BatchRecord) -> None:
        """Rescue a batch's deadline requests when its poller has not (failed, restarting, or a
        batch whose create is still being reconciled): deadlines do not wait for recovery."""
        ctx = self.ctx
        rescuer = Rescuer(self.settings, self.store, self.payloads)
        now = clock.now()
        if record.status not in IN_FLIGHT or not rescuer.due(record, now - RESCUE_GRACE_SECONDS):
            return
        holder = uuid.uuid4().hex
        # For as long as this run can last: a run that dies here keeps the batch's checks out no longer.
        until = ctx.create_until + 2 * LEASE_MARGIN_SECONDS
        if not self.store.lease(f"collect#{record.ref}", holder, until, now):
            return  # its collector is at work: the batch has ended
        try:
            fresh = self.store.batch(record.ref) or record
            if fresh.status in IN_FLIGHT and rescuer.due(fresh, now):
                rescuer.rescue(fresh, now, ctx.handoff, ctx.create_until)
        finally:
            self.store.unlease(f"collect#{record.ref}", holder)
