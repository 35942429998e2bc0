"""Handing requests to the realtime path: the only module that sends to SQS.

Requests go realtime under a record of their own (`batch#<ref>`, status `realtime`, on the work
list like a batch) whose claim journal names them, in this order: the record, the journal, the
requests' items claimed by it, then one message per request on the realtime queue. A crash
anywhere leaves the record on the work list; the submitter sends again what it still holds (the
realtime function answers a request once, whatever number of messages name it) and closes the
record once nothing is left (`recover`, the recovery of a record's `realtime` state).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import aws, clock
from .lifecycle import ANSWER, Batch, BatchRecord, claimed, held_by, move, new_record
from .observability import MetricUnit, logger, metrics
from .payloads import Payloads
from .settings import Settings
from .store import Store, request_key

if TYPE_CHECKING:
    from .results import Settler

SEND_BATCH = 10
# SQS hides a message for at most 12 hours.
MAX_HIDDEN_SECONDS = 43_200
# A realtime record still holding requests this long after its last send sends them again.
RESEND_SECONDS = 180


@dataclass
class Handoff:
    settings: Settings
    store: Store
    payloads: Payloads

    def record(self, tier: str, **extra: Any) -> BatchRecord:
        record = new_record(tier, self.settings.retention_days, Batch.REALTIME, route="realtime", **extra)
        self.store.add(record)
        return record

    def route(self, tier: str, items: list[dict[str, Any]], why: str, **extra: Any) -> int:
        """Send pending requests to the Messages API: claimed by a realtime record, then queued."""
        if not items:
            return 0
        record = self.record(tier, why=why, **extra)
        ids = [item["request_id"] for item in items]
        self.payloads.journal(record.ref, 0, ids)
        self.store.put_many(
            claimed(item, record.ref, record.claimed_at) | {"route": "realtime"} for item in items
        )
        self.dispatch(record, ids)
        metrics.add_metric(name=f"RoutedRealtime_{why}", unit=MetricUnit.Count, value=len(ids))
        logger.info("requests sent realtime", extra={"ref": record.ref, "n": len(ids), "why": why})
        return len(ids)

    def dispatch(self, record: BatchRecord, ids: Iterable[str]) -> None:
        """One message per request on the realtime queue, ten a call."""
        assert self.settings.realtime_queue_url, "REALTIME_QUEUE_URL is required to send realtime"
        ids = list(ids)
        sqs = aws.client("sqs")
        for start in range(0, len(ids), SEND_BATCH):
            chunk = ids[start : start + SEND_BATCH]
            entries = [
                {"Id": str(n), "MessageBody": json.dumps({"request_id": rid, "ref": record.ref})}
                for n, rid in enumerate(chunk)
            ]
            for _ in range(3):
                answer = sqs.send_message_batch(QueueUrl=self.settings.realtime_queue_url, Entries=entries)
                failed = {f["Id"] for f in answer.get("Failed") or []}
                entries = [e for e in entries if e["Id"] in failed]
                if not entries:
                    break
            if entries:
                # Left for the submitter: it sends again what the record still holds.
                logger.warning("realtime messages not sent", extra={"ref": record.ref, "n": len(entries)})
        self.store.update_batch(
            record.ref, request_count=max(len(ids), record.request_count), updated_at=clock.iso()
        )

    def later(self, receipt_handle: str, seconds: float) -> None:
        """Hide a realtime message for `seconds` (a retry-after), rather than the queue's default."""
        assert self.settings.realtime_queue_url, "REALTIME_QUEUE_URL is required"
        aws.client("sqs").change_message_visibility(
            QueueUrl=self.settings.realtime_queue_url,
            ReceiptHandle=receipt_handle,
            VisibilityTimeout=max(0, min(MAX_HIDDEN_SECONDS, math.ceil(seconds))),
        )

    def recover(self, record: BatchRecord, idle: float, run: str, settler: Settler) -> bool:
        """A realtime record ends once none of its requests is still waiting for an answer and
        what they settled is published; those that wait get their message again (lost, or sent by
        a run that died). `run` is the submitter run's hold on its lease."""
        ref = record.ref
        ids = list(self.payloads.journaled(ref))
        items = self.store.get_many(request_key(rid) for rid in ids)
        waiting = [rid for rid in ids if held_by(items.get(request_key(rid)), ref)]
        now = clock.now()
        # One the API asked to pause (a retry-after) is not sent before the pause is over.
        ready = [rid for rid in waiting if float(items[request_key(rid)].get("rt_not_before", 0)) <= now]
        if not waiting:
            # An answer settled while SNS refused it is published only from its outbox: once the
            # record is closed, nothing else would (its message may be in the dead-letter queue).
            settler.flush(ref)
            move(self.store, ref, ANSWER, updated_at=clock.iso())
            return True
        # A record a failed run made whose sending never finished is sent at once, as a batch
        # record such a run left is recovered at once.
        unsent = record.run not in (None, run) and not record.request_count
        if (idle < RESEND_SECONDS and not unsent) or not ready:
            return False
        logger.warning("realtime requests sent again", extra={"ref": ref, "n": len(ready)})
        metrics.add_metric(name="RealtimeResent", unit=MetricUnit.Count, value=len(ready))
        self.dispatch(record, ready)
        return True
