"""Claiming: the most urgent pending requests of a tier taken into a new batch, its JSONL written
to S3. The recovery of `claiming` (a run that died mid-claim) gives the requests back.

A page of pending requests is read again consistently, its ids journaled in S3, then claimed with
batched writes (25 a call, not one conditional write each): the submitter lease keeps claims from
racing. The journal is how a batch's requests are found again (to release them, or answer those
the API never did) without an index entry each. Claiming stops at a time budget, leaving the
create its share of the invocation, and where the day's budget would run out. A request a batch
made now could not answer by its deadline is sent realtime instead (see `deadlines`); a batch's
deadline requests are written to `deadlines/<ref>.json` so its poller can take them out in time.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from botocore.exceptions import ClientError

from . import batches, clock
from .closing import Closing
from .deadlines import schedule_of
from .lifecycle import EMPTY, UPLOAD, Batch, BatchRecord, Request, claimed, move, new_record
from .observability import logger
from .payloads import JsonlWriter
from .pricing import request_bound, unbounded_reason
from .runs import Run

# Room for the `{"requests":[...]}` envelope around the request lines.
ENVELOPE_BYTES = 1024


def pending_in(item: dict[str, Any] | None, tier: str) -> bool:
    """Whether a consistently read item is still pending in this tier (the index lags the table)."""
    return item is not None and item.get("status") == Request.PENDING and item.get("pending_tier") == tier


@dataclass
class Taking:
    """What one claim has taken so far, and what it set aside."""

    writer: JsonlWriter
    cap: int
    limit: int
    allowance: float
    giants: list[dict[str, Any]] = field(default_factory=list)
    lost: list[dict[str, Any]] = field(default_factory=list)
    late: list[dict[str, Any]] = field(default_factory=list)
    dear: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    schedule: list[tuple[float, str]] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    # One create goes under one API version and one set of betas: the first request taken
    # sets them, and requests that need others wait for a batch of their own.
    needs: dict[str, Any] | None = None
    headers: dict[str, str] | None = None  # the headers `needs` makes, once
    estimate: float = 0.0
    over_budget: bool = False

    def fields(self) -> dict[str, Any]:
        return {
            "request_count": self.writer.count,
            "bytes": self.writer.bytes,
            "models": sorted(self.models),
            "budget_usd": round(self.estimate, 8),
            **(self.needs or {}),
        }


@dataclass
class Claiming:
    run: Run
    closing: Closing

    def claim(self, tier: str, cap: int) -> tuple[BatchRecord | None, int]:
        """Claim the most urgent pending requests of a tier (deadline ones by when they must go,
        then the rest oldest first) into a new batch and write its JSONL to S3; also answers those
        too large for any batch and sends realtime those a batch could no longer answer in time.
        Returns the record (None if it is empty) and how many were answered or sent so."""
        run = self.run
        record = self.new_record(tier)
        limit = run.settings.max_batch_bytes - ENVELOPE_BYTES
        assert record.input_key is not None
        taking = Taking(run.payloads.writer(record.input_key), cap, limit, run.budget.left())
        run.over_budget = False
        size_hint = min(cap, 1000)
        pages = chain(
            run.store.pages(tier, size_hint, span="by"), run.store.pages(tier, size_hint, span="plain")
        )
        try:
            for number, page in enumerate(pages):
                full = self._take_page(record, tier, number, page, taking)
                if full or taking.writer.count >= cap or clock.now() >= run.claim_until:
                    break
            taking.writer.close()
        except BaseException:
            taking.writer.abort()
            raise
        run.over_budget = taking.over_budget
        answered = self._set_aside(tier, taking)
        if taking.writer.count == 0:
            move(run.store, record, EMPTY)
            return None, answered
        fields = taking.fields()
        if taking.schedule:
            # Its poller takes these out for realtime if the batch has not ended in time.
            run.payloads.put_lines(f"deadlines/{record.ref}.json", [schedule_of(taking.schedule).encode()])
            first = min(d for d, _ in taking.schedule)
            fields["rescue_at"] = first - run.settings.deadline_margin_seconds
        run.lease.keep()
        move(run.store, record, UPLOAD, updated_at=clock.iso(), **fields)
        return record, answered

    def _take_page(
        self, record: BatchRecord, tier: str, number: int, page: list[dict[str, Any]], taking: Taking
    ) -> bool:
        """Take what a page holds into the batch; True once the batch is full."""
        run = self.run
        # The index lags the table: only what a consistent read says is pending is taken.
        fresh = run.store.get_many(item["pk"] for item in page)
        taken: list[dict[str, Any]] = []
        lines: list[bytes] = []
        size = taking.writer.bytes
        full = False
        now = clock.now()
        for listed in page:
            item = fresh.get(listed["pk"])
            if item is None or not pending_in(item, tier):
                continue
            line = self._fits(item, now, taking)
            if line is None:
                continue
            if taking.writer.count + len(taken) >= taking.cap or size + len(line) + 1 > taking.limit:
                full = True
                break
            if not self._affords(item, line, taking):
                full = taking.over_budget
                if full:
                    break
                continue
            if taking.needs is None:
                taking.needs = {k: item[k] for k in ("api_version", "betas") if item.get(k)}
                taking.headers = batches.headers_for(taking.needs)
            taken.append(item)
            lines.append(line)
            size += len(line) + 1
            taking.models.add(str(item.get("model")))
            if item.get("deadline"):
                taking.schedule.append((clock.parse(item["deadline"]), item["request_id"]))
        if taken:
            run.lease.keep()
            run.payloads.journal(record.ref, number, (item["request_id"] for item in taken))
            run.store.put_many(claimed(item, record.ref, record.claimed_at) for item in taken)
            for line in lines:
                taking.writer.write(line)
        return full

    def _fits(self, item: dict[str, Any], now: float, taking: Taking) -> bytes | None:
        """A pending request's line when a batch of this claim can take it; None (and the request
        set aside where it belongs) when it cannot."""
        if self.run.turnaround.late(item, now):
            taking.late.append(item)  # a batch could not make its deadline: realtime
            return None
        if taking.headers is not None and batches.headers_for(item) != taking.headers:
            return None
        line = self.line(item)
        if line is None:
            taking.lost.append(item)  # its body is gone: answered, never a tier stuck on it
            return None
        if len(line) + 1 > taking.limit:
            taking.giants.append(item)  # no batch of this deployment can ever hold it
            return None
        return line

    def _affords(self, item: dict[str, Any], line: bytes, taking: Taking) -> bool:
        """Whether the day's budget holds the request too; counts it in when it does."""
        cost = self.bound(line)
        if cost > self.run.settings.daily_budget_usd > 0:
            taking.dear.append((item, _too_dear(cost, line)))  # no day's budget can ever hold it
            return False
        if taking.estimate + cost > taking.allowance:
            taking.over_budget = True  # the rest waits for the next UTC day
            return False
        taking.estimate += cost
        return True

    def _set_aside(self, tier: str, taking: Taking) -> int:
        """Answer the requests no batch can take, send realtime the late ones; how many."""
        run = self.run
        run.lease.keep()
        for item in taking.giants:
            self.refuse_alone(
                tier, item, "request_too_large", "the request alone exceeds the batch size limit"
            )
        for item in taking.lost:
            self.refuse_alone(tier, item, "request_unavailable", "the request's body could not be read back")
        for item, message in taking.dear:
            self.refuse_alone(tier, item, "budget_exceeded", message)
        late = taking.late
        routed = run.handoff.route(tier, late, why="late", run=run.holder) if late else 0
        return len(taking.giants) + len(taking.lost) + len(taking.dear) + routed

    def bound(self, line: bytes) -> float:
        """The most this request can cost in a batch (0 when no budget is set)."""
        if not self.run.budget.capped:
            return 0.0
        usd = request_bound(json.loads(line)["params"], len(line), batch=True)
        return math.inf if usd is None else usd  # nothing bounds it: no day's budget can hold it

    def new_record(self, tier: str, state: Batch = Batch.CLAIMING, **extra: Any) -> BatchRecord:
        run = self.run
        ref = uuid.uuid4().hex
        record = new_record(
            tier,
            run.settings.retention_days,
            state,
            ref=ref,
            input_key=f"input/{ref}.jsonl",
            run=run.holder,
            **({"after_hold": True} if run.after_hold else {}),
            **extra,
        )
        run.store.add(record)
        return record

    def line(self, item: dict[str, Any]) -> bytes | None:
        """A pending request's line, None if its body object is gone (no later read can help)."""
        try:
            return self.run.bodies.line(item["body_key"], int(item["body_at"]), int(item["body_len"]))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            logger.error(
                "a request's body is missing; it is answered", extra={"request_id": item["request_id"]}
            )
            return None

    def refuse_alone(self, tier: str, item: dict[str, Any], error: str, message: str) -> None:
        """Answer one request no batch can take, through a record of its own."""
        record = self.new_record(
            tier, Batch.CLOSING, close_error=error, close_message=message, close_status=Batch.REFUSED.value
        )
        self.run.payloads.journal(record.ref, 0, [item["request_id"]])
        self.run.store.put_many([claimed(item, record.ref, record.claimed_at)])
        self.closing.close(record)

    def route_late(self, name: str) -> int:
        """Send realtime the requests of a tier that cannot flush which a batch could no longer
        answer in time (only requests whose flush moment has come can be late)."""
        run = self.run
        now = clock.now()
        late: list[dict[str, Any]] = []
        for page in run.store.pages(name, span="by", until=f"by:{clock.iso(now)}"):
            fresh = run.store.get_many(item["pk"] for item in page)
            for listed in page:
                item = fresh.get(listed["pk"])
                if item is not None and pending_in(item, name) and run.turnaround.late(item, now):
                    late.append(item)
            if clock.now() >= run.claim_until:
                break
        if not late:
            return 0
        run.lease.keep()
        return run.handoff.route(name, late, why="late", run=run.holder)

    def recover(self, record: BatchRecord, idle: float) -> bool:
        """A claim its run never finished: its requests go back to their tier."""
        left = self.run.left(record, idle)
        if left is None:
            return False
        n = self.run.settler.release(left, Batch.RELEASED)
        logger.warning("released an abandoned claim", extra={"ref": record.ref, "n": n})
        return True


def _too_dear(cost: float, line: bytes) -> str:
    """Why a request no daily budget can hold is refused."""
    if cost < math.inf:
        return f"the request may cost up to {cost:.4f} USD, more than the whole daily budget"
    return str(unbounded_reason(json.loads(line)["params"]))
