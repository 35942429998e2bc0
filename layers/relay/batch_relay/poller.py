"""The poller's two steps: `check` a batch until it ends, then `collect` its results.

Results are collected in chunks. Each chunk is written to S3, its completions published, and
then its requests' items written, in that order: a crash before the item write makes the retry
publish those completions once more (at most once more per crash), never lose them. A request
whose item no longer says it is claimed by this batch is skipped, which is what keeps retries and
duplicate pollers from answering twice.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from typing import Any

from . import batches, clock
from .completions import INLINE_BUDGET, Topic, encode
from .errors import TransientError
from .models import Completion, ErrorInfo
from .observability import MetricUnit, logger, metrics
from .payloads import Payloads
from .pricing import cost_of
from .settings import Settings
from .store import Store, batch_key, claimed_partition, dynamo, request_key

# Transient per-request errors are tried again in a later batch; anything else is final.
RETRYABLE_ERRORS = frozenset({"api_error", "overloaded_error"})
CHUNK = 100


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

    @classmethod
    def from_settings(cls, settings: Settings) -> Poller:
        return cls(
            settings, Store(settings.table_name), Payloads(settings.bucket_name), Topic(settings.topic_arn)
        )

    def check(self, event: dict[str, Any]) -> dict[str, Any]:
        batch = batches.retrieve(event["batch_id"])
        ended = batch.processing_status == "ended"
        out = {
            "batch_id": batch.id,
            "ref": event["ref"],
            "processing_status": batch.processing_status,
            "ended": ended,
            "cursor": int(event.get("cursor", 0)),
            "wait_seconds": next_wait(batch.created_at.timestamp(), self.settings),
        }
        if ended:
            counts = batch.request_counts
            self.store.update(
                batch_key(event["ref"]),
                status="collecting",
                ended_at=clock.iso(batch.ended_at.timestamp()) if batch.ended_at else clock.iso(),
                api_counts={
                    k: int(getattr(counts, k)) for k in ("succeeded", "errored", "canceled", "expired")
                },
                updated_at=clock.iso(),
            )
        return out

    def collect(self, event: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Collect results from `cursor` on until the stream ends or the time budget is spent."""
        batch_id, ref = event["batch_id"], event["ref"]
        record = self.store.get(batch_key(ref))
        if record is None:
            raise ValueError(f"no batch record for ref {ref}")
        cursor = int(event.get("cursor", 0))
        out = {**event, "cursor": cursor, "done": False}
        lines = batches.results(batch_id, skip=cursor)
        try:
            while clock.now() < deadline:
                chunk = list(islice(lines, CHUNK))
                if not chunk:
                    break
                self._settle(record, chunk, results_key=f"results/{batch_id}/{cursor:09d}.jsonl")
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
        self._orphans(record)
        self.store.update(
            batch_key(ref),
            status="collected",
            collected_at=clock.iso(),
            updated_at=clock.iso(),
            cursor=cursor,
            remove=("pending_tier", "pending_since"),
        )
        logger.info("batch collected", extra={"batch_id": batch_id, "results": cursor})
        out["done"] = True
        return out

    def _orphans(self, record: dict[str, Any]) -> None:
        """Requests of this batch that got no result line at all are answered as errored, never dropped."""
        left = [i["request_id"] for i in self.store.waiting(claimed_partition(record["ref"]))]
        for start in range(0, len(left), CHUNK):
            missing = [
                {
                    "custom_id": rid,
                    "result": {
                        "type": "errored",
                        "error": {
                            "type": "error",
                            "error": {"type": "api_error", "message": "no result returned"},
                        },
                    },
                }
                for rid in left[start : start + CHUNK]
            ]
            self._settle(record, missing, results_key=None)

    def _settle(self, record: dict[str, Any], chunk: list[dict[str, Any]], results_key: str | None) -> None:
        if results_key:
            self.payloads.put_lines(
                results_key, [json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in chunk]
            )
        items = self.store.get_many(request_key(r["custom_id"]) for r in chunk)
        done: list[Completion] = []
        writes: list[dict[str, Any]] = []
        tally: Counter[str] = Counter()
        totals = {"batch_usd": 0.0, "list_usd": 0.0, "saved_usd": 0.0}
        for result in chunk:
            item = items.get(request_key(result["custom_id"]))
            if item is None or item.get("status") != "claimed" or item.get("batch_ref") != record["ref"]:
                continue  # answered already, by an earlier try of this chunk or another poller
            completion, item = self._outcome(record, item, result["result"], results_key)
            writes.append(item)
            tally[completion.status if completion else "retried"] += 1
            if completion is not None:
                done.append(completion)
                if completion.cost:
                    for k in totals:
                        totals[k] += getattr(completion.cost, k)
        self.topic.publish(done)
        self.store.put_many(writes)
        if tally:
            self.store.update(
                batch_key(record["ref"]), add={**{f"n_{k}": v for k, v in tally.items()}, **totals}
            )
        for status, n in tally.items():
            metrics.add_metric(name=f"Results_{status}", unit=MetricUnit.Count, value=n)

    def _outcome(
        self, record: dict[str, Any], item: dict[str, Any], result: dict[str, Any], results_key: str | None
    ) -> tuple[Completion | None, dict[str, Any]]:
        """What one result means for its request: a completion, or another attempt."""
        kind = result.get("type")
        attempts = int(item.get("attempts", 1))
        error: ErrorInfo | None = None
        message = None
        if kind == "succeeded":
            message = result.get("message") or {}
        elif kind == "errored":
            inner = (result.get("error") or {}).get("error") or {}
            error = ErrorInfo(type=inner.get("type", "api_error"), message=inner.get("message", ""))
        elif kind == "expired":
            error = ErrorInfo(type="expired", message="the batch ended before this request was processed")
        else:
            kind = "canceled"
            error = ErrorInfo(
                type="canceled", message="the batch was canceled before this request was processed"
            )
        retry = (
            kind == "expired" or (error is not None and error.type in RETRYABLE_ERRORS)
        ) and kind != "canceled"
        base = {k: v for k, v in item.items() if k not in ("pending_tier", "pending_since", "batch_ref")}
        base["last_batch_id"] = record.get("batch_id")
        if retry and attempts < self.settings.max_attempts:
            base.update(status="pending", pending_tier=item["tier"], pending_since=item["received_at"])
            base["last_error"] = error.model_dump() if error else None
            return None, _dynamo_ready(base)
        usage = message.get("usage") if message else None
        cost = cost_of(item["model"], usage) if usage else None
        completion = Completion(
            request_id=item["request_id"],
            status=kind,
            batch_id=record.get("batch_id"),
            tier=item.get("tier"),
            model=item.get("model"),
            message=message,
            error=error,
            attempts=attempts,
            usage=usage,
            cost=cost,
            metadata=item.get("metadata") or {},
            received_at=item.get("received_at"),
            submitted_at=item.get("submitted_at"),
            completed_at=clock.iso(),
        )
        if message is not None and len(encode(completion).encode()) > INLINE_BUDGET:
            pointer = self.payloads.put_json(f"messages/{item['request_id']}/{attempts}.json", message)
            completion = completion.model_copy(update={"message": pointer})
        base.update(
            status=kind,
            batch_id=record.get("batch_id"),
            completed_at=completion.completed_at,
            notified=True,
            error=error.model_dump() if error else None,
            usage=usage,
            cost=cost.model_dump() if cost else None,
            results_key=results_key,
        )
        return completion, _dynamo_ready(base)


def _dynamo_ready(item: dict[str, Any]) -> dict[str, Any]:
    return dynamo({k: v for k, v in item.items() if v is not None})
