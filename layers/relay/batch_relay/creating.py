"""Creating a batch from its uploaded input, and adopting the one a lost create answer left.

A create is never sent twice blindly: the API has no idempotency key. Before the call the record
says `creating` with the window the call may take; a lost answer leaves it so. Only a batch created
inside that window, with the same request count, owned by no record of this stack, and the only
one that fits, is adopted; the `batchid#` item makes the claim on it atomic. The daily budget is
committed per batch, at its upper bound, before the create."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any

from . import batches, clock
from .budget import today
from .closing import Closing
from .deadlines import Rescuer
from .errors import (
    AccountError,
    ApiAccessError,
    BatchRefusedError,
    BatchTooLargeError,
    NotAcceptedError,
    OutcomeUnknownError,
)
from .lifecycle import BEGIN_CREATE, CREATED, RETRY_CREATE, Batch, BatchRecord, held_by, move
from .observability import MetricUnit, logger, metrics
from .payloads import RequestsBody
from .runs import CLOCK_SKEW_SECONDS, Run
from .starts import Starts
from .store import batch_key, request_key


class Taken(Exception):
    """The batch is already owned by another record (an adoption raced, or a wrong one)."""


# The API's batches cannot tell yet which one is a record's: wait until they have ended.
WAIT = object()
# Requests read at a time to learn whether a record still holds all of its own.
HELD_CHUNK = 100


@dataclass
class Creating:
    run: Run
    closing: Closing
    starts: Starts

    def commit(self, record: BatchRecord) -> bool:
        """Commit the batch's upper-bound cost to today's budget, or release it if it no longer fits
        (realtime answers committed meanwhile)."""
        run = self.run
        if not run.budget.capped:
            return True
        usd, day = float(record.budget_usd or 0), today()
        if run.budget.commit(usd, day, mark=batch_key(record.ref)):
            record.budget_day = day
            return True
        run.settler.release(record, Batch.OVER_BUDGET)
        return False

    def submit(self, record: BatchRecord) -> None:
        """Create the batch from the uploaded JSONL and start its poller."""
        run, ref = self.run, record.ref
        assert record.input_key is not None
        run.lease.keep()
        started = clock.now()
        move(
            run.store,
            record,
            BEGIN_CREATE,
            create_started=clock.iso(started),
            create_until=clock.iso(run.create_until),
            updated_at=clock.iso(started),
        )
        try:
            body = RequestsBody(run.payloads, record.input_key, run.payloads.size(record.input_key))
            headers = batches.headers_for(record.model_dump())
            batch = batches.create_from(body, len(body), deadline=run.create_until, headers=headers)
        except (BatchTooLargeError, BatchRefusedError) as exc:
            if record.request_count == 1:
                # One request the API will never take: answer it rather than retry it forever.
                error = (
                    "request_too_large" if isinstance(exc, BatchTooLargeError) else "invalid_request_error"
                )
                self.closing.close_with(record, error, str(exc), Batch.REFUSED)
                return
            logger.warning("batch refused by the API; splitting", extra={"ref": ref, "error": str(exc)})
            run.settler.release(record, Batch.SPLIT)
            raise
        except (ApiAccessError, NotAcceptedError, AccountError) as exc:
            # The API answered no: nothing was created, so the requests go back to their tier.
            logger.error("batch refused; requests released", extra={"ref": ref, "error": str(exc)})
            metrics.add_metric(name="BatchCreateRefused", unit=MetricUnit.Count, value=1)
            run.settler.release(record, Batch.REFUSED)
            if isinstance(exc, AccountError):
                run.settler.hold(record.tier)  # not the requests' fault: the tier pauses
            raise
        except OutcomeUnknownError:
            # The batch may or may not exist now: a later run adopts it or proves it absent.
            logger.warning("batch create unanswered; left for reconciling", extra={"ref": ref})
            metrics.add_metric(name="BatchCreateUnanswered", unit=MetricUnit.Count, value=1)
            raise
        self.created(record, batch)

    def created(self, record: BatchRecord, batch: Any) -> None:
        run, ref = self.run, record.ref
        if not run.store.own(batch.id, ref, record.ttl):
            raise Taken(batch.id)
        now = clock.iso()
        move(
            run.store,
            record,
            CREATED,
            batch_id=batch.id,
            submitted_at=now,
            updated_at=now,
            expires_at=_stamp(batch.expires_at),
            created_at=_stamp(batch.created_at),
        )
        metrics.add_metric(name="BatchesCreated", unit=MetricUnit.Count, value=1)
        fresh = run.store.batch(ref) or record
        rescuer = Rescuer(run.settings, run.store, run.payloads)
        if rescuer.may_be_empty(fresh, 0) and not rescuer.holds_any(ref):
            # Adopted after every one of its requests went realtime: nothing in it is ours to wait for.
            batches.cancel(batch.id, deadline=run.create_until)
            metrics.add_metric(name="BatchesCanceled", unit=MetricUnit.Count, value=1)
        logger.info(
            "batch created",
            extra={
                "batch_id": batch.id,
                "ref": ref,
                "tier": record.tier,
                "requests": record.request_count,
            },
        )
        self.starts.start(record)

    # recovery

    def recover_uploaded(self, record: BatchRecord, idle: float) -> bool:
        left = self.run.left(record, idle)
        if left is None:
            return False
        if self.given_back(left) or self.rescued_from(left):
            return True
        # A run that ended before committing its cost to the budget leaves that to this one.
        uncommitted = left.budget_usd is not None and not left.budget_day
        if uncommitted and not self.commit(left):
            return True  # released: it no longer fits the day's budget
        self.submit(left)
        return True

    def rescued_from(self, record: BatchRecord) -> bool:
        """A batch never created whose deadline requests went realtime meanwhile: its input still
        holds them, so it is not created from it. What it holds goes back to its tier instead, to be
        claimed afresh (with its own deadlines, now sooner)."""
        fresh = self.run.store.batch(record.ref) or record
        if not fresh.n_rescued:
            return False
        n = self.run.settler.release(fresh, Batch.RELEASED)
        logger.warning("a batch lost requests to realtime before its create; released", extra={"n": n})
        return True

    def given_back(self, record: BatchRecord) -> bool:
        """A record whose release was cut short (its requests' items written back to their tier,
        its own end refused) is ended as that release would have ended it. Its input still names
        those requests, which may be in another batch by now: created from it, or adopting a
        batch by their ids, it would bill them twice. A request taken out for realtime is still
        the record's to account for (`rescued_from`)."""
        run, ref = self.run, record.ref
        ids = run.payloads.journaled(ref)
        while chunk := list(islice(ids, HELD_CHUNK)):
            items = run.store.get_many(request_key(rid) for rid in chunk)
            kept = (items.get(request_key(rid)) for rid in chunk)
            if all(held_by(item, ref) or (item or {}).get("rescued_from") == ref for item in kept):
                continue
            n = run.settler.release(record, Batch.RELEASED)
            logger.warning("a batch whose requests were given back is released", extra={"ref": ref, "n": n})
            return True
        return False

    def recover_creating(self, record: BatchRecord, idle: float) -> bool:
        start, end = _window(record)
        if clock.now() < end:
            return False  # the create may still be under way
        found = self.find_created(record, start, end)
        if found is WAIT:
            return False
        # (Asked only now, not on every run a wait takes: it reads every request's item.)
        if self.given_back(record):
            return True
        if found is None:
            # No batch of the window can be this one: nothing was created, so create it now.
            if self.rescued_from(record):
                return True
            move(self.run.store, record, RETRY_CREATE, updated_at=clock.iso())
            self.submit(record)
            return True
        logger.warning("adopted a batch whose create answer was lost", extra={"batch_id": found.id})
        metrics.add_metric(name="BatchesAdopted", unit=MetricUnit.Count, value=1)
        self.created(record, found)
        return True

    def find_created(self, record: BatchRecord, start: float, end: float) -> Any:
        """The API's batch made by this record's create, None when there is none, or `WAIT`.

        The API keeps no metadata of ours: a candidate was created inside the window, holds as
        many requests, and belongs to no other record of this stack. One candidate is adopted;
        of several (another deployment on the same key), only the one whose results carry
        exactly this batch's journaled ids, once they have all ended."""
        run = self.run
        count = record.request_count
        fits = [b for b in batches.created_between(start, end, run.create_until) if _total(b) == count]
        owners = run.store.owners(b.id for b in fits)
        for b in fits:
            if owners.get(b.id) == record.ref:
                return b  # the record's own, claimed before a crash
        candidates = [b for b in fits if b.id not in owners]
        if not candidates:
            return None
        if len(candidates) == 1 and not self.rivals(record, start, end):
            return candidates[0]
        # Several could be ours, or another record of ours waits on the same window: only the
        # results can say whose a batch is.
        metrics.add_metric(name="AmbiguousAdoptions", unit=MetricUnit.Count, value=1)
        if any(b.processing_status != "ended" for b in candidates):
            logger.warning(
                "several batches could be this one; waiting for them to end", extra={"ref": record.ref}
            )
            return WAIT
        ours = set(run.payloads.journaled(record.ref))
        matching = [b for b in candidates if set(batches.custom_ids(b.id, run.create_until)) == ours]
        return matching[0] if len(matching) == 1 else None

    def rivals(self, record: BatchRecord, start: float, end: float) -> bool:
        """Whether another record of this stack, as large, also has a create of unknown outcome
        in an overlapping window: a lone candidate could then be either's."""
        for other in self.run.store.live_batches():
            if other.ref == record.ref or other.status != Batch.CREATING:
                continue
            if other.request_count != record.request_count:
                continue
            o_start, o_end = _window(other)
            if o_start <= end and start <= o_end:
                return True
        return False


def _window(record: BatchRecord) -> tuple[float, float]:
    """When a create of unknown outcome may have made the record's batch, widened by the skew."""
    assert record.create_started is not None and record.create_until is not None
    start = clock.parse(record.create_started) - CLOCK_SKEW_SECONDS
    return start, clock.parse(record.create_until) + CLOCK_SKEW_SECONDS


def _total(batch: Any) -> int:
    c = batch.request_counts
    return int(c.processing + c.succeeded + c.errored + c.canceled + c.expired)


def _stamp(value: Any) -> str | None:
    return clock.iso(value.timestamp()) if value is not None else None
