"""The submitter: flush pending requests of each tier into message batches.

A batch goes through states recorded on its `batch#<ref>` item, each written before the step
that depends on it, so a run that crashes anywhere leaves enough behind for the next run to
finish the job (`reconcile`):

  claiming ─▶ uploaded ─▶ created ─▶ polling ─▶ (collector) collected
     │            │           │
     │            │           └─ crash: start the poller again (its name is the batch id)
     │            └─ crash: adopt the batch the API has for it, or create it
     └─ crash: release the claimed requests to their tier

A run holds the `submitter` lease for as long as its invocation can last, so claims never race:
a page of pending requests is read again consistently, its ids journaled in S3, then claimed with
batched writes (25 a call, not one conditional write each). The journal is how a batch's requests
are found again (to release them, or answer those the API never did) without an index entry each.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from . import batches, clock, executions
from .completions import Topic
from .errors import ApiAccessError, BatchTooLargeError, TransientError
from .observability import MetricUnit, logger, metrics
from .payloads import Bodies, Payloads, RequestsBody
from .results import Settler
from .settings import Settings, Tier
from .store import LIVE, Store, batch_key, claimed, held_by, released, request_key

# A batch left in one state longer than a submitter run may take was left by a crashed run.
STALE_SECONDS = 15 * 60
# Clocks of two invocations may disagree by this much; a lease outlives its run by as long.
LEASE_MARGIN_SECONDS = 30
# Room for the `{"requests":[...]}` envelope around the request lines.
ENVELOPE_BYTES = 1024
MAX_RESTARTS = 3


@dataclass
class Submitter:
    settings: Settings
    store: Store
    payloads: Payloads
    settler: Settler
    report: dict[str, Any] = field(default_factory=lambda: {"batches": [], "requests": 0, "reconciled": 0})
    bodies: Bodies = field(init=False)

    def __post_init__(self) -> None:
        self.bodies = Bodies(self.payloads)

    @classmethod
    def from_settings(cls, settings: Settings) -> Submitter:
        store, payloads = Store(settings.table_name), Payloads(settings.bucket_name)
        return cls(settings, store, payloads, Settler(settings, store, payloads, Topic(settings.topic_arn)))

    def run(self, seconds_left: float = STALE_SECONDS) -> dict[str, Any]:
        """One scheduled run: finish what crashed runs left, then flush every tier that is due.

        Nothing is done unless this run holds the lease; it lasts until this invocation must have
        ended (`seconds_left`, from the Lambda context), so a run that dies keeps no one out longer."""
        holder, now = uuid.uuid4().hex, clock.now()
        if not self.store.lease("submitter", holder, now + seconds_left + LEASE_MARGIN_SECONDS, now):
            logger.info("another submitter run holds the lease; this one does nothing")
            metrics.add_metric(name="SubmitterOverlap", unit=MetricUnit.Count, value=1)
            self.report["skipped"] = True
            return self.report
        try:
            self.reconcile()
            for name, tier in self.settings.tiers.items():
                self.flush(name, tier)
            self.measure_waits()
        finally:
            self.store.unlease("submitter", holder)
        return self.report

    def measure_waits(self) -> None:
        """Age of each tier's oldest pending request, and the worst age over its tier's max wait."""
        worst = 0.0
        for name, tier in self.settings.tiers.items():
            oldest = next(self.store.waiting(name, limit=1), None)
            age = clock.now() - clock.parse(oldest["pending_since"]) if oldest else 0.0
            metrics.add_metric(name=f"OldestPendingSeconds_{name}", unit=MetricUnit.Seconds, value=age)
            worst = max(worst, age / tier.max_wait_seconds)
        metrics.add_metric(name="OldestPendingRatio", unit=MetricUnit.NoUnit, value=worst)

    # flushing

    def in_flight(self) -> int:
        return sum(int(b.get("request_count", 0)) for b in self.store.live_batches())

    def due(self, name: str, tier: Tier) -> bool:
        oldest = next(self.store.waiting(name, limit=1), None)
        if oldest is None:
            return False
        waited = clock.now() - clock.parse(oldest["pending_since"])
        if waited >= tier.max_wait_seconds:
            return True
        return self.store.count(name, tier.min_requests) >= tier.min_requests

    def flush(self, name: str, tier: Tier) -> None:
        cap = self.settings.max_batch_requests
        while self.due(name, tier):
            room = self.settings.max_in_flight - self.in_flight()
            if room <= 0:
                logger.warning("in-flight cap reached; tier waits", extra={"tier": name})
                metrics.add_metric(name="InFlightCapReached", unit=MetricUnit.Count, value=1)
                return
            record = self.claim(name, min(room, cap))
            if record is None:
                return
            try:
                self.submit(record)
            except BatchTooLargeError:
                # The API measures size its own way: halve the batch until it fits.
                cap = max(1, int(record["request_count"]) // 2)
                metrics.add_metric(name="BatchSplit", unit=MetricUnit.Count, value=1)

    def claim(self, tier: str, cap: int) -> dict[str, Any] | None:
        """Claim the oldest pending requests of a tier into a new batch and write its JSONL to S3."""
        ref = uuid.uuid4().hex
        now = clock.iso()
        record: dict[str, Any] = {
            "pk": batch_key(ref),
            "kind": "batch",
            "ref": ref,
            "tier": tier,
            "status": "claiming",
            "pending_tier": LIVE,
            "pending_since": now,
            "claimed_at": now,
            "updated_at": now,
            "input_key": f"input/{ref}.jsonl",
            "request_count": 0,
            "ttl": int(clock.now()) + self.settings.retention_days * 86400,
        }
        self.store.add(record)
        limit = self.settings.max_batch_bytes - ENVELOPE_BYTES
        writer = self.payloads.writer(record["input_key"])
        try:
            for number, page in enumerate(self.store.pages(tier, size=min(cap, 1000))):
                # The index lags the table: only what a consistent read says is pending is taken.
                fresh = self.store.get_many(item["pk"] for item in page)
                taken: list[dict[str, Any]] = []
                lines: list[bytes] = []
                size = writer.bytes
                full = False
                for listed in page:
                    item = fresh.get(listed["pk"])
                    if item is None or item.get("status") != "pending" or item.get("pending_tier") != tier:
                        continue
                    line = self.bodies.line(item["body_key"], int(item["body_at"]), int(item["body_len"]))
                    if writer.count + len(taken) >= cap or size + len(line) + 1 > limit:
                        full = True
                        break
                    taken.append(item)
                    lines.append(line)
                    size += len(line) + 1
                if taken:
                    self.payloads.journal(ref, number, (item["request_id"] for item in taken))
                    self.store.put_many(claimed(item, ref, now) for item in taken)
                    for line in lines:
                        writer.write(line)
                if full or writer.count >= cap:
                    break
            writer.close()
        except BaseException:
            writer.abort()
            raise
        if writer.count == 0:
            self.store.update(batch_key(ref), status="empty", remove=("pending_tier", "pending_since"))
            return None
        record.update(request_count=writer.count, bytes=writer.bytes, status="uploaded")
        self.store.update(
            batch_key(ref),
            status="uploaded",
            request_count=writer.count,
            bytes=writer.bytes,
            updated_at=clock.iso(),
        )
        return record

    def submit(self, record: dict[str, Any]) -> None:
        """Create the batch from the uploaded JSONL and start its poller."""
        ref = record["ref"]
        try:
            body = RequestsBody(self.payloads, record["input_key"], self.payloads.size(record["input_key"]))
            batch = batches.create_from(body, len(body))
        except BatchTooLargeError:
            if int(record["request_count"]) == 1:
                # One request the API will never take: answer it rather than retry it forever.
                self.settler.unresolved(
                    record, "request_too_large", "the request alone exceeds the batch size limit"
                )
                self.store.update(batch_key(ref), status="refused", remove=("pending_tier", "pending_since"))
                return
            logger.warning("batch too large for the API; splitting", extra={"ref": ref})
            self.release(record, status="split")
            raise
        except ApiAccessError as exc:
            # The API answered no: nothing was created, so the requests go back to their tier.
            logger.error("batch refused; requests released", extra={"ref": ref, "error": str(exc)})
            metrics.add_metric(name="BatchCreateRefused", unit=MetricUnit.Count, value=1)
            self.release(record, status="refused")
            raise
        except TransientError:
            # The batch may or may not exist now: the next run adopts it or creates it.
            logger.warning("batch create unanswered; left for the next run", extra={"ref": ref})
            raise
        self.created(record, batch)

    def created(self, record: dict[str, Any], batch: Any) -> None:
        ref = record["ref"]
        now = clock.iso()
        self.store.update(
            batch_key(ref),
            status="created",
            batch_id=batch.id,
            submitted_at=now,
            updated_at=now,
            expires_at=_stamp(batch.expires_at),
        )
        record.update(status="created", batch_id=batch.id)
        metrics.add_metric(name="BatchesCreated", unit=MetricUnit.Count, value=1)
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

    def start(self, record: dict[str, Any], name: str | None = None) -> None:
        assert self.settings.state_machine_arn, "STATE_MACHINE_ARN is required by the submitter"
        executions.start(
            self.settings.state_machine_arn,
            name or record["batch_id"],
            {
                "batch_id": record["batch_id"],
                "ref": record["ref"],
                "wait_seconds": self.settings.poll_min_seconds,
            },
        )
        self.store.update(batch_key(record["ref"]), status="polling", updated_at=clock.iso())
        self.report["batches"].append(record["batch_id"])
        self.report["requests"] += int(record["request_count"])

    # recovery

    def release(self, record: dict[str, Any], status: str) -> int:
        """Put the requests batch <ref> still holds back in their tier (the batch was never created)."""
        ref = record["ref"]
        items = self.store.get_many(request_key(rid) for rid in self.payloads.journaled(ref))
        back = [released(item) for item in items.values() if held_by(item, ref)]
        self.store.put_many(back)
        self.store.update(
            batch_key(ref), status=status, updated_at=clock.iso(), remove=("pending_tier", "pending_since")
        )
        return len(back)

    def reconcile(self) -> None:
        """Finish batches a crashed run left half-made."""
        for record in list(self.store.live_batches()):
            stale = clock.now() - clock.parse(record["updated_at"]) >= STALE_SECONDS
            status = record["status"]
            if status == "claiming" and stale:
                n = self.release(record, status="abandoned")
                logger.warning("released an abandoned claim", extra={"ref": record["ref"], "n": n})
            elif status == "uploaded" and stale:
                adopted = self._find_created(record)
                if adopted is not None:
                    logger.warning(
                        "adopted a batch whose create answer was lost", extra={"batch_id": adopted.id}
                    )
                    self.created(record, adopted)
                else:
                    self.submit(record)
            elif status == "created" and stale:
                self.start(record)
            elif status == "failed" and int(record.get("restarts", 0)) < MAX_RESTARTS:
                # The poller gave up (its failure is recorded and alarmed); its requests are still
                # claimed, so a fresh poller finishes them. Names stay unique per restart.
                restarts = int(record.get("restarts", 0)) + 1
                self.store.update(batch_key(record["ref"]), restarts=restarts)
                self.start(record, name=f"{record['batch_id']}-r{restarts}")
            else:
                continue
            self.report["reconciled"] += 1

    def _find_created(self, record: dict[str, Any]) -> Any:
        """The API's batch made from this record, if its create went through: the API keeps no
        metadata of ours, so match on creation time and request count, skipping batches we know."""
        known = {b.get("batch_id") for b in self.store.live_batches()}
        since = clock.parse(record["claimed_at"])
        for batch in batches.recent():
            created = batch.created_at.timestamp()
            if created < since:
                break
            counts = batch.request_counts
            total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
            if batch.id not in known and total == int(record["request_count"]):
                return batch
        return None


def _stamp(value: Any) -> str | None:
    return clock.iso(value.timestamp()) if value is not None else None
