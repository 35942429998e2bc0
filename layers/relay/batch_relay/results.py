"""Settling results: what each result line means for its request, and the completions it yields.

A chunk of results is settled in a fixed order: its completions are published, then its requests'
items are written. A crash between the two makes a retry publish those completions once more (at
most once more per crash), never lose them. A request whose item no longer says it is claimed by
this batch is skipped, which keeps retries and duplicate pollers from answering twice.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from typing import Any

from . import clock
from .completions import INLINE_BUDGET, Topic, encode
from .models import Completion, ErrorInfo
from .observability import MetricUnit, metrics
from .payloads import Payloads
from .pricing import cost_of
from .settings import Settings
from .store import Store, batch_key, dynamo, held_by, request_key

# Transient per-request errors are tried again in a later batch; anything else is final.
RETRYABLE_ERRORS = frozenset({"api_error", "overloaded_error"})
CHUNK = 100
TOKEN_METRICS = {
    "input_tokens": "InputTokens",
    "output_tokens": "OutputTokens",
    "cache_creation_input_tokens": "CacheWriteTokens",
    "cache_read_input_tokens": "CacheReadTokens",
}
COST_METRICS = {"batch_usd": "BatchCostUSD", "list_usd": "ListCostUSD", "saved_usd": "SavedUSD"}


def errored(custom_id: str, error_type: str, message: str) -> dict[str, Any]:
    """A result line in the API's own errored shape, for requests the relay answers itself."""
    return {
        "custom_id": custom_id,
        "result": {
            "type": "errored",
            "error": {"type": "error", "error": {"type": error_type, "message": message}},
        },
    }


@dataclass
class Settler:
    settings: Settings
    store: Store
    payloads: Payloads
    topic: Topic

    def unresolved(self, record: dict[str, Any], error_type: str, message: str) -> None:
        """Answer every request still claimed by this batch as errored, so none is left behind.
        `settle` skips those already answered, so the journal's ids can be offered as they are."""
        ids = self.payloads.journaled(record["ref"])
        while chunk := [errored(rid, error_type, message) for rid in islice(ids, CHUNK)]:
            self.settle(record, chunk, None)

    def settle(self, record: dict[str, Any], chunk: list[dict[str, Any]], results_key: str | None) -> None:
        if results_key:
            self.payloads.put_lines(
                results_key, [json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in chunk]
            )
        items = self.store.get_many(request_key(r["custom_id"]) for r in chunk)
        done: list[Completion] = []
        writes: list[dict[str, Any]] = []
        tally: Counter[str] = Counter()
        tokens: Counter[str] = Counter()
        totals = {"batch_usd": 0.0, "list_usd": 0.0, "saved_usd": 0.0}
        for result in chunk:
            item = items.get(request_key(result["custom_id"]))
            if item is None or not held_by(item, record["ref"]):
                continue  # answered already, by an earlier try of this chunk or another poller
            completion, item = self._outcome(record, item, result["result"], results_key)
            writes.append(item)
            tally[completion.status if completion else "retried"] += 1
            if completion is not None:
                done.append(completion)
                for k in TOKEN_METRICS:
                    tokens[k] += (completion.usage or {}).get(k) or 0
                if completion.cost:
                    for k in totals:
                        totals[k] += getattr(completion.cost, k)
        self.topic.publish(done)
        self.store.put_many(writes)
        if tally:
            self.store.update(
                batch_key(record["ref"]), add={**{f"n_{k}": v for k, v in tally.items()}, **totals}
            )
        self._metrics(done, tally, tokens, totals)

    @staticmethod
    def _metrics(
        done: list[Completion], tally: Counter[str], tokens: Counter[str], totals: dict[str, float]
    ) -> None:
        for status, n in tally.items():
            metrics.add_metric(name=f"Results_{status}", unit=MetricUnit.Count, value=n)
        for key, name in TOKEN_METRICS.items():
            if tokens[key]:
                metrics.add_metric(name=name, unit=MetricUnit.Count, value=tokens[key])
        for key, name in COST_METRICS.items():
            if totals[key]:
                metrics.add_metric(name=name, unit=MetricUnit.NoUnit, value=totals[key])
        for c in done:
            if c.received_at:
                waited = clock.parse(c.completed_at) - clock.parse(c.received_at)
                metrics.add_metric(name="ReceiptToCompletion", unit=MetricUnit.Seconds, value=waited)

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
        retry = kind == "expired" or (
            kind == "errored" and error is not None and error.type in RETRYABLE_ERRORS
        )
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
