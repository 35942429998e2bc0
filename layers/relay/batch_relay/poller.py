"""The poller's two steps: `check` a batch until it ends, then `collect` its results.

Every check of a batch that has not ended also takes out, for realtime, the requests whose
deadline it would otherwise miss (see `deadlines.Rescuer`), and waits no longer than until the next
such deadline; a batch that ends feeds the turnaround the relay learns.

Results are streamed in chunks from the cursor the state machine passes in; each chunk is kept in
S3 as the API sent it and settled (see `results`). When the time budget is spent, the cursor goes
back to the state machine, which calls `collect` again: no invocation holds a whole batch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from . import batches, clock
from .budget import Budget
from .completions import Topic
from .deadlines import Rescuer, Turnaround, telling
from .errors import TransientError
from .handoff import Handoff
from .lifecycle import COLLECT, ENDED_AT_API, Batch, BatchRecord, move
from .observability import MetricUnit, logger, metrics
from .payloads import Payloads
from .results import CHUNK, Settler
from .settings import Settings
from .store import Store

# A collect invocation's lease outlives its budget by its function's safety margin.
LEASE_MARGIN_SECONDS = 60
# Every way a settled request is counted on its batch's record (see `Settler.settle`).
OUTCOME_TALLIES = ("succeeded", "errored", "expired", "canceled", "retried", "held", "rescued")


def next_wait(created_at: float, settings: Settings) -> int:
    """Poll less often as a batch ages, so a result waits at most ~10% of the batch's age."""
    age = max(0.0, clock.now() - created_at)
    return int(min(settings.poll_max_seconds, max(settings.poll_min_seconds, age * 0.1)))


@dataclass
class Poller:
    settings: Settings
    store: Store
    payloads: Payloads
    topic: Topic
    settler: Settler = field(init=False)
    _journals: dict[str, frozenset[str]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.settler = Settler(self.settings, self.store, self.payloads, self.topic)

    @classmethod
    def from_settings(cls, settings: Settings) -> Poller:
        return cls(
            settings, Store(settings.table_name), Payloads(settings.bucket_name), Topic(settings.topic_arn)
        )

    def check(self, event: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        batch = batches.retrieve(event["batch_id"], deadline=deadline)
        ended = batch.processing_status == "ended"
        wait = next_wait(batch.created_at.timestamp(), self.settings)
        record = self.store.batch(event["ref"])
        if not ended and record is not None:
            record = self._rescue(record, deadline)
            if record.cancel_wanted and batch.cancel_initiated_at is None:
                # Every request went realtime but the cancel did not go through: again.
                batches.cancel(batch.id, deadline=deadline)
            at = record.rescue_at
            if at is not None and at <= clock.now():
                # Due and not done: its lease is held elsewhere (or its time ran out): in a poll,
                # not in a loop of checks a second apart.
                wait = min(wait, self.settings.poll_min_seconds)
            elif at is not None:
                wait = max(1, min(wait, int(at - clock.now()) + 1))
        out = {
            "batch_id": batch.id,
            "ref": event["ref"],
            "processing_status": batch.processing_status,
            "ended": ended,
            "cursor": int(event.get("cursor", 0)),
            "wait_seconds": wait,
        }
        # Every check is progress: the submitter looks at a batch's execution only once its
        # record has not changed for longer than a poll.
        fields: dict[str, Any] = {"updated_at": clock.iso(), "checked_at": clock.iso()}
        if ended:
            counts = batch.request_counts
            ended_at = batch.ended_at.timestamp() if batch.ended_at else clock.now()
            fields.update(
                ended_at=clock.iso(ended_at),
                api_counts={
                    k: int(getattr(counts, k)) for k in ("succeeded", "errored", "canceled", "expired")
                },
            )
            if telling(batch) and record is not None and record.models:
                turnaround = Turnaround(self.store, self.settings)
                turnaround.record(record.models, batch.id, batch.created_at.timestamp(), ended_at)
        if ended:
            move(self.store, event["ref"], ENDED_AT_API, **fields)
        else:
            self.store.update_batch(event["ref"], **fields)
        return out

    def _rescue(self, record: BatchRecord, deadline: float | None) -> BatchRecord:
        """Take out for realtime the requests whose deadline is near; returns the record as it is now."""
        rescuer = Rescuer(self.settings, self.store, self.payloads)
        now = clock.now()
        if not rescuer.due(record, now):
            return record
        ref = record.ref
        holder = uuid.uuid4().hex
        until = (deadline or now + LEASE_MARGIN_SECONDS) - 5
        # The collect lease: a collector settling a request must never race its rescue. Held for
        # as long as this check can last: one that dies here keeps the next no longer.
        if not self.store.lease(f"collect#{ref}", holder, until + LEASE_MARGIN_SECONDS, now):
            return record
        try:
            rescuer.rescue(record, now, Handoff(self.settings, self.store, self.payloads), until)
        finally:
            self.store.unlease(f"collect#{ref}", holder)
        return self.store.batch(ref) or record

    def collect(self, event: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Collect results from `cursor` on until the stream ends or the time budget is spent."""
        ref = event["ref"]
        record = self.store.batch(ref)
        if record is None:
            raise ValueError(f"no batch record for ref {ref}")
        out = {**event, "done": False}
        if record.status in (Batch.COLLECTED, Batch.FOREIGN):
            return out | {"done": True}  # a duplicate or late poller: nothing left to do
        # One collector at a time per batch: two (a restarted poller beside a late one) would both
        # read a request as still claimed and both answer it.
        holder, now = uuid.uuid4().hex, clock.now()
        if not self.store.lease(f"collect#{ref}", holder, deadline + LEASE_MARGIN_SECONDS, now):
            raise TransientError("another poller is collecting this batch")
        try:
            return self._collect(event, record, out, deadline)
        finally:
            self.store.unlease(f"collect#{ref}", holder)

    def _collect(
        self, event: dict[str, Any], record: BatchRecord, out: dict[str, Any], deadline: float
    ) -> dict[str, Any]:
        batch_id, ref = event["batch_id"], event["ref"]
        if _answered(record):
            # An earlier try settled chunks: what it wrote but did not publish goes out first.
            self.settler.flush(ref)
        cursor = int(event.get("cursor", 0))
        out["cursor"] = cursor
        ours = self._journal(ref)
        lines = batches.results(batch_id, skip=cursor, deadline=deadline)
        try:
            while clock.now() < deadline:
                chunk = list(islice(lines, CHUNK))
                if not chunk:
                    break
                strangers = [r["custom_id"] for r in chunk if r.get("custom_id") not in ours]
                if strangers:
                    return self._foreign(record, out, strangers)
                self.settler.settle(record, chunk, results_key=f"results/{batch_id}/{cursor:09d}.jsonl")
                cursor += len(chunk)
                out["cursor"] = cursor
            else:
                return out  # budget spent: the state machine calls again from the cursor
        except TransientError as exc:
            if cursor == int(event.get("cursor", 0)):
                raise
            logger.warning(
                "results stream broke; resuming from cursor",
                extra={"batch_id": batch_id, "cursor": cursor, "error": str(exc)},
            )
            return out
        self._finish(ref, cursor)
        logger.info("batch collected", extra={"batch_id": batch_id, "results": cursor})
        out["done"] = True
        return out

    def _finish(self, ref: str, cursor: int) -> None:
        """Mark the batch collected once every journaled request has been answered: when the API
        returned fewer lines than the journal names, the journal is swept and those it returned no
        line for are answered. Decided from the requests and the lines, not from the tallies alone:
        a tally's write that botocore sent again after it applied counts a chunk twice."""
        record = self.store.batch(ref)
        if record is None:
            raise ValueError(f"no batch record for ref {ref}")
        short = _answered(record) < record.request_count
        # A try that died between writing items and publishing them left calls unsent, which
        # tallies counted twice elsewhere may hide: they go out first, whatever the tallies say.
        self.settler.flush(ref)
        if short or cursor < len(self._journal(ref)):
            # The API left some out, or a try died between writing items and counting them.
            self.settler.unresolved(record, "api_error", "no result returned for this request")
        if record.after_hold and record.n_succeeded and not record.n_held:
            self.store.unhold(record.tier)  # the account works again: the tier's pauses end
        # What the batch committed of its day's budget and did not spend goes back to that day;
        # tallies short of the batch (a try died between its items and its tallies) may have
        # missed spending, so nothing is given back then.
        if not short:
            record = self.store.batch(ref) or record
            spent = record.batch_usd + record.both_ways_usd
            committed, day = Budget.terms(record)
            Budget(self.settings, self.store).settle(record.pk, committed, day, spent)
        move(self.store, ref, COLLECT, collected_at=clock.iso(), updated_at=clock.iso(), cursor=cursor)

    def _journal(self, ref: str) -> frozenset[str]:
        if ref not in self._journals:
            self._journals = {ref: frozenset(self.payloads.journaled(ref))}  # one batch at a time
        return self._journals[ref]

    def _foreign(self, record: BatchRecord, out: dict[str, Any], strangers: list[str]) -> dict[str, Any]:
        """Result lines for requests this batch never held: the batch is not ours (a wrong
        adoption). Its lines are not used; our requests go back to their tier for a new batch."""
        ref = record.ref
        back = self.settler.release(record, Batch.FOREIGN)
        # The batch may be another record's of this stack, whose create answer was lost too.
        self.store.disown(str(record.batch_id), ref)
        logger.error(
            "results hold requests this batch never claimed; its requests are released",
            extra={
                "batch_id": record.batch_id,
                "ref": ref,
                "strangers": len(strangers),
                "released": back,
            },
        )
        metrics.add_metric(name="WrongAdoptions", unit=MetricUnit.Count, value=1)
        return out | {"done": True}


def _answered(record: BatchRecord) -> int:
    """Requests of a batch settled so far, by the tallies on its record."""
    return sum(getattr(record, f"n_{k}") for k in OUTCOME_TALLIES)
