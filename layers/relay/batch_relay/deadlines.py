"""Deadlines: when a batch can still answer a request in time, and what happens when it cannot.

A batch's only promise is 24 hours; most end far sooner. The relay learns how long its own
batches take (`Turnaround`: the p95 of ended - created per model over the last week, or a
conservative default until it has seen a few) and, for a request with a deadline:
- flushes its tier no later than the moment a batch could still make that deadline (`sort_key`),
  using the conservative default, so learning a shorter turnaround only ever batches it sooner;
- at claim, sends it to the Messages API instead when the expected batch time no longer fits
  (`late`);
- while its batch runs, takes it out of the batch for a realtime answer `DEADLINE_MARGIN_SECONDS`
  before its deadline (`Rescuer`): the request's item moves to a realtime record with a
  conditional write, so the batch's results, when they come, find it no longer theirs and never
  answer it again. A batch left with no request of its own (as its requests' items say, not a
  tally of rescues, which a retried write can add to twice) is canceled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from . import clock
from .lifecycle import BatchRecord, held_by, holds
from .observability import MetricUnit, logger, metrics
from .payloads import Payloads
from .settings import Settings, Tier
from .store import BY, Store, request_key

# Samples older than this are forgotten; fewer than MIN_SAMPLES and the default is used.
WINDOW_SECONDS = 7 * 86400
WINDOW_SAMPLES = 50
MIN_SAMPLES = 3
PERCENTILE = 0.95
# A poll trails a batch's end by up to a tenth of its age (see `poller.next_wait`).
POLL_SHARE = 0.1
# Rescues due within this long of one another are done together, in one check.
RESCUE_GROUP_SECONDS = 60
# Requests moved, then sent, at a time: a check that runs out of time has sent what it moved.
RESCUE_CHUNK = 100
# Requests read at a time to learn whether a batch still holds any (one BatchGetItem).
CHECK_CHUNK = 100
# A tier is flushed this long before a batch would be too late: submitter runs come a minute
# apart and a claim of 100,000 requests takes minutes.
FLUSH_LEAD_SECONDS = 600


def deadline_of(item: dict[str, Any]) -> float | None:
    stamp = item.get("deadline")
    return clock.parse(stamp) if stamp else None


def batch_seconds(turnaround: float, settings: Settings) -> float:
    """From a claim to a published completion, for a batch expected to take `turnaround`: the
    batch, the poll that sees it ended, collection, and the margin kept for a realtime rescue."""
    return turnaround * (1 + POLL_SHARE) + settings.poll_min_seconds + settings.deadline_margin_seconds


def sort_key(received_at: str, deadline: str | None, tier: Tier, settings: Settings) -> str:
    """Where a pending request sorts in its tier: by receipt, or with a deadline, by the moment
    its tier must be flushed for a batch to make it (at most its tier's max wait after receipt)."""
    if deadline is None:
        return received_at
    latest = (
        clock.parse(deadline)
        - batch_seconds(settings.default_turnaround_seconds, settings)
        - FLUSH_LEAD_SECONDS
    )
    return BY + clock.iso(min(clock.parse(received_at) + tier.max_wait_seconds, latest))


def flush_by(key: str) -> float | None:
    """The flush moment a deadline request's sort key holds (None for one without a deadline)."""
    return clock.parse(key[len(BY) :]) if key.startswith(BY) else None


def telling(batch: Any) -> bool:
    """Whether an ended batch says how long batches take. Not one we canceled (it ended early by
    our hand), nor one whose requests expired: it ended at the API's 24-hour limit, not when its
    work was done, and as the slowest of a few samples it would be the expected turnaround for
    a week, sending realtime, at list price, every deadline request a batch could have answered.
    (Requests still in a batch near their deadline are taken out for realtime anyway.)"""
    return batch.cancel_initiated_at is None and not int(batch.request_counts.expired)


@dataclass
class Turnaround:
    """How long the relay's batches take, per model, learned from its own recent batches."""

    store: Store
    settings: Settings
    _known: dict[str, float] = field(default_factory=dict)

    def record(self, models: list[str], batch_id: str, created: float, ended: float) -> None:
        for model in models:
            self.store.add(
                {
                    "pk": f"turn#{model}#{batch_id}",
                    "kind": "turnaround",
                    "model": model,
                    "batch_id": batch_id,
                    "seconds": round(ended - created, 3),
                    "pending_tier": f"turn#{model}",
                    "pending_since": clock.iso(ended),
                    "ttl": int(ended) + WINDOW_SECONDS,
                }
            )

    def samples(self, model: str) -> list[float]:
        since = clock.iso(clock.now() - WINDOW_SECONDS)
        return [float(s["seconds"]) for s in self.store.recent(f"turn#{model}", since, WINDOW_SAMPLES)]

    def expected(self, model: str) -> float:
        """The p95 turnaround of the model's recent batches, or the default while too few are known."""
        if model not in self._known:
            seen = sorted(self.samples(model))
            if len(seen) < MIN_SAMPLES:
                self._known[model] = float(self.settings.default_turnaround_seconds)
            else:
                self._known[model] = seen[math.ceil(PERCENTILE * len(seen)) - 1]
        return self._known[model]

    def late_after(self, item: dict[str, Any]) -> float | None:
        """The moment after which a batch made could no longer answer this request by its
        deadline (None without a deadline)."""
        deadline = deadline_of(item)
        if deadline is None:
            return None
        return deadline - batch_seconds(self.expected(str(item.get("model"))), self.settings)

    def late(self, item: dict[str, Any], now: float) -> bool:
        """Whether a batch made now could no longer answer this request by its deadline."""
        after = self.late_after(item)
        return after is not None and now > after


@dataclass
class Rescuer:
    """Takes requests with an approaching deadline out of a batch that has not ended, for realtime."""

    settings: Settings
    store: Store
    payloads: Payloads

    def due(self, record: BatchRecord, now: float) -> bool:
        return record.rescue_at is not None and now >= record.rescue_at

    def rescue(self, record: BatchRecord, now: float, send: Any, until: float = float("inf")) -> int:
        """Move the batch's requests whose deadline is near to a realtime record and hand them to
        `send` (a `handoff.Handoff`), a chunk at a time; returns how many moved. The caller holds
        the batch's collect lease. The record keeps how far down the schedule it got, so what
        `until` leaves no time for is taken up by the next check, not done again."""
        ref = record.ref
        margin = self.settings.deadline_margin_seconds
        stored = self.payloads.read_json(f"deadlines/{ref}.json")
        start = record.rescue_from
        schedule = [(float(d) - margin, rid) for d, rid in stored[start:]]
        cut = now + RESCUE_GROUP_SECONDS
        due = [rid for at, rid in schedule if at <= cut]
        moved = done = 0
        emptied = False
        target: BatchRecord | None = None
        while done < len(due) and clock.now() < until:
            chunk = due[done : done + RESCUE_CHUNK]
            if target is None:
                target = send.record(record.tier, rescued_from=ref)
            self.payloads.journal(target.ref, done // RESCUE_CHUNK, chunk)
            taken = []
            for rid in chunk:
                if clock.now() >= until:
                    break
                done += 1
                if self._take(rid, ref, target.ref):
                    taken.append(rid)
            moved += len(taken)
            left = [at for at, _ in schedule[done:]]
            fields: dict[str, Any] = {"updated_at": clock.iso(), "rescue_from": start + done}
            if left:
                fields["rescue_at"] = min(left)
            if taken and not emptied and self.may_be_empty(record, moved):
                emptied = not self.holds_any(ref)
            if emptied:
                fields["cancel_wanted"] = True
            self.store.update_batch(
                ref,
                remove=() if left else ("rescue_at",),
                add={"n_rescued": len(taken)} if taken else None,
                **fields,
            )
            target.request_count = moved
            send.dispatch(target, taken)
        if moved:
            logger.warning(
                "requests taken out of a batch that has not ended, to meet their deadline",
                extra={"ref": ref, "batch_id": record.batch_id, "n": moved},
            )
            metrics.add_metric(name="DeadlineRescues", unit=MetricUnit.Count, value=moved)
        if emptied and record.batch_id:
            # Nothing of this batch is still ours to answer: stop paying for what it has not run.
            # (A cancel that fails is sent again by the next check: `cancel_wanted`.)
            from . import batches  # the SDK, loaded only where the API is called (not the buffer)

            batches.cancel(record.batch_id, deadline=clock.now() + batches.CALL_SECONDS)
            logger.info("every request of a batch went realtime; batch canceled", extra={"ref": ref})
            metrics.add_metric(name="BatchesCanceled", unit=MetricUnit.Count, value=1)
        return moved

    @staticmethod
    def may_be_empty(record: BatchRecord, moved: int) -> bool:
        """Whether the batch's tally of rescues says it may hold none of its requests now. A
        tally only ever says too many (a write the SDK sent again after it applied adds twice),
        so it only says when to look; `holds_any` decides."""
        return moved + record.n_rescued >= record.request_count

    def holds_any(self, ref: str) -> bool:
        """Whether batch <ref> still holds one of its requests, as the requests' items say."""
        ids = self.payloads.journaled(ref)
        while chunk := list(islice(ids, CHECK_CHUNK)):
            items = self.store.get_many(request_key(rid) for rid in chunk)
            if any(held_by(items.get(request_key(rid)), ref) for rid in chunk):
                return True
        return False

    def _take(self, rid: str, ref: str, target: str) -> bool:
        """Move one request from batch <ref> to realtime record <target>, if the batch still holds it."""
        key = request_key(rid)
        fields: dict[str, Any] = {
            "batch_ref": target,
            "rescued_from": ref,
            "route": "realtime",
            "rt_since": clock.iso(),
        }
        if self.store.update_if(key, holds(ref), **fields):
            return True
        # A write retried behind our back after it applied reads as refused: it is ours then.
        return (self.store.get(key) or {}).get("batch_ref") == target


def schedule_of(taken: list[tuple[float, str]]) -> str:
    """The rescue schedule of a batch's deadline requests, earliest first, as stored in S3."""
    return json.dumps(sorted(taken), separators=(",", ":"))
