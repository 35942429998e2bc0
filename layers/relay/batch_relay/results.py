"""Settling results: what each result line means for its request, and the completions it yields.

A chunk of results is settled as an outbox, in this order:
1. the chunk's completions are written to S3 (`outbox/<ref>/...`), cut into their publish calls;
2. each request's item is written with its outcome (answered, the outbox named on it);
3. each publish call goes out, and a marker beside the outbox says it did.
A crash before 2 leaves the requests claimed: a retry settles them afresh. A crash after 2 leaves
calls without a marker: `flush` publishes exactly those, from the outbox, byte for byte as the
first try would have. Only a crash between a call and its marker repeats a completion (at most the
ten of one call). A request whose item no longer says it is claimed by this batch is skipped, which
keeps retries and duplicate pollers from answering twice.

A realtime answer is settled the same way, its realtime record standing for the batch (`route`
`realtime`: list price, no batch id). A request taken out of a batch for realtime is no longer
that batch's; when the batch's line for it shows it was run there too, its batch price is counted
as spent both ways, once, on the item and the batch. If its realtime answer made no billed call
(refused for the budget, or by the API), it was paid once, by its batch: that price is the
batch's spend (`copy_usd` on the item), whichever of the two is settled first.

What an errored line means is read by `errors.of_line`, the table every API error goes through,
from the line's error type and `error.details.error_code`. An account problem (billing, a spend cap,
an organization on hold, a workspace's settings or key, a key refused inside results, "credit
balance is too low") is not the request's fault: its request goes back to its tier without spending
an attempt and the tier is held with growing pauses, until `max_hold_seconds` have passed since it
was first held. A transient error (`api_error`, `overloaded_error`, `rate_limit_error`,
`timeout_error`) sends the request to a later batch while attempts remain; any other is final.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from typing import Any

from boto3.dynamodb.conditions import Attr

from . import clock, errors
from .budget import Budget
from .completions import INLINE_BUDGET, Topic, encode, entry, groups
from .deadlines import sort_key
from .errors import AccountError, ApiAccessError, TransientError, insist
from .lifecycle import (
    AWAITING_RESULTS,
    REALTIME_TRY,
    RELEASE,
    Batch,
    BatchRecord,
    answered,
    held_by,
    move,
    released,
    requeued,
)
from .models import Completion, ErrorInfo
from .observability import MetricUnit, logger, metrics
from .payloads import Payloads
from .pricing import BATCH_DISCOUNT, cost_of, paid, realtime_cost_of
from .settings import Settings
from .store import Store, batch_key, dynamo, request_key

CHUNK = 100
TOKEN_METRICS = {
    "input_tokens": "InputTokens",
    "output_tokens": "OutputTokens",
    "cache_creation_input_tokens": "CacheWriteTokens",
    "cache_read_input_tokens": "CacheReadTokens",
}
HOLD_BASE_SECONDS = 300
HOLD_CAP_SECONDS = 3600
COST_METRICS = {
    "batch_usd": "BatchCostUSD",
    "list_usd": "ListCostUSD",
    "saved_usd": "SavedUSD",
    "both_ways_usd": "BothWaysUSD",
}


def errored(custom_id: str, error_type: str, message: str, code: str | None = None) -> dict[str, Any]:
    """A result line in the API's own errored shape, for requests the relay answers itself."""
    inner: dict[str, Any] = {"type": error_type, "message": message}
    if code:
        inner["details"] = {"error_code": code}
    return {"custom_id": custom_id, "result": {"type": "errored", "error": {"type": "error", "error": inner}}}


def verdict(error: ErrorInfo, code: str | None) -> str:
    """What an errored line's error makes of its request: `held`, `retried` or `final`."""
    kind = errors.of_line(error.type, code, error.message)
    if issubclass(kind, AccountError | ApiAccessError):
        return "held"
    return "retried" if issubclass(kind, TransientError) else "final"


def read(result: dict[str, Any]) -> tuple[str, dict[str, Any] | None, ErrorInfo | None, str]:
    """A result line's outcome, message, error, and what its error makes of the request."""
    kind = str(result.get("type"))
    if kind == "succeeded":
        return kind, result.get("message") or {}, None, "final"
    if kind == "errored":
        inner = (result.get("error") or {}).get("error") or {}
        error = ErrorInfo(type=inner.get("type", "api_error"), message=inner.get("message", ""))
        details = inner.get("details")
        return (
            kind,
            None,
            error,
            verdict(error, details.get("error_code") if isinstance(details, dict) else None),
        )
    if kind == "expired":
        return (
            kind,
            None,
            ErrorInfo(type="expired", message="the batch ended before this request was processed"),
            "final",
        )
    canceled = ErrorInfo(type="canceled", message="the batch was canceled before this request was processed")
    return "canceled", None, canceled, "final"


@dataclass
class Settler:
    settings: Settings
    store: Store
    payloads: Payloads
    topic: Topic

    def unresolved(self, record: BatchRecord, error_type: str, message: str) -> None:
        """Answer every request still claimed by this batch as errored, so none is left behind.
        `settle` skips those already answered, so the journal's ids can be offered as they are."""
        ids = self.payloads.journaled(record.ref)
        while chunk := [errored(rid, error_type, message) for rid in islice(ids, CHUNK)]:
            self.settle(record, chunk, None)

    def release(self, record: BatchRecord, to: Batch) -> int:
        """Put the requests batch <ref> still holds back in their tier (the batch was never
        created, or is not ours), the attempt given back, and end the batch in state `to`."""
        ref = record.ref
        items = self.store.get_many(request_key(rid) for rid in self.payloads.journaled(ref))
        back = [released(item) for item in items.values() if held_by(item, ref)]
        self.store.put_many(back)
        move(self.store, ref, RELEASE, to, updated_at=clock.iso())
        committed, day = Budget.terms(record)
        Budget(self.settings, self.store).settle(batch_key(ref), committed, day, 0.0)
        return len(back)

    def settle(self, record: BatchRecord, chunk: list[dict[str, Any]], results_key: str | None) -> None:
        if results_key:
            self.payloads.put_lines(
                results_key, [json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in chunk]
            )
        items = self.store.get_many(request_key(r["custom_id"]) for r in chunk)
        outcomes = [
            self._outcome(record, item, result["result"], results_key)
            for result in chunk
            if held_by(item := items.get(request_key(result["custom_id"])), record.ref) and item is not None
        ]
        both_ways, copies = self._both_ways(record, chunk, items)
        if not outcomes:
            spent = {k: v for k, v in (("both_ways_usd", both_ways), ("batch_usd", copies)) if v}
            if spent:
                self.store.update_batch(record.ref, add=spent)
                self._metrics([], Counter(), Counter(), spent)
            return  # answered already, by an earlier try of this chunk or another poller
        done = [c for c, _, _ in outcomes if c is not None]
        calls = groups([entry(c) for c in done])
        box = self.payloads.outbox(record.ref, uuid.uuid4().hex, calls) if calls else None
        written = [item | {"outbox": box} if c is not None else item for c, item, _ in outcomes]
        if record.route == "realtime":
            self._write_realtime(record, outcomes, written)
        else:
            self.store.put_many(written)
        tally = Counter(kind for _, _, kind in outcomes)
        tokens: Counter[str] = Counter()
        # A batch record's batch_usd (and the BatchCostUSD metric) is what was spent, realtime
        # answers' list price included: what the budget settles and the dashboard sums.
        totals = {"batch_usd": copies, "list_usd": 0.0, "saved_usd": 0.0}
        for c in done:
            for k in TOKEN_METRICS:
                tokens[k] += (c.usage or {}).get(k) or 0
            if c.cost:
                totals["batch_usd"] += paid(c.cost)
                totals["list_usd"] += c.cost.list_usd
                totals["saved_usd"] += c.cost.saved_usd
        if both_ways:
            totals["both_ways_usd"] = both_ways
        self.store.update_batch(record.ref, add={**{f"n_{k}": v for k, v in tally.items()}, **totals})
        if tally["held"]:
            self.hold(record.tier)
        if box:
            for n, call in enumerate(calls):
                self._send(box, n, call)
        self._metrics(done, tally, tokens, totals)

    def _write_realtime(
        self,
        record: BatchRecord,
        outcomes: list[tuple[Completion | None, dict[str, Any], str]],
        written: list[dict[str, Any]],
    ) -> None:
        # One request, whose batch's collector may record a both-ways cost on it meanwhile:
        # written only if that has not changed since it was read.
        [(_, read, _)] = outcomes
        both = read.get("both_ways_usd")
        same = Attr("both_ways_usd").not_exists() if both is None else Attr("both_ways_usd").eq(dynamo(both))
        # Its batch, collected first, took it for paid both ways; answered with no billed call,
        # it was paid once, there: the batch's spend, not a second price.
        usd = float(both) if both is not None else 0.0
        moved = bool(usd and read.get("rescued_from") and _unbilled(written[0]))
        if moved:
            written[0] = {k: v for k, v in written[0].items() if k != "both_ways_usd"} | {"copy_usd": both}
        if not self.store.put_if(written[0], same & Attr("batch_ref").eq(record.ref)):
            raise TransientError("a request changed while it was settled; settled again")
        if moved:
            # Through a throttle: the item no longer says so, and no retry would move it again.
            insist(
                lambda: self.store.update_batch(
                    read["rescued_from"], add={"both_ways_usd": -usd, "batch_usd": usd}
                )
            )
            # The collector's metrics counted it both ways: their sums come out right.
            self._metrics([], Counter(), Counter(), {"both_ways_usd": -usd, "batch_usd": usd})

    def _both_ways(
        self, record: BatchRecord, chunk: list[dict[str, Any]], items: dict[str, dict[str, Any]]
    ) -> tuple[float, float]:
        """The batch price of this batch's lines for requests it lost to realtime, counted once:
        paid both ways, and (apart) paid only here, for those whose realtime answer made no billed
        call (refused for the budget, or by the API), which are this batch's spend and no more."""
        total = copies = 0.0
        for result in chunk:
            key = request_key(result["custom_id"])
            item = items.get(key)
            if item is None or item.get("rescued_from") != record.ref or held_by(item, record.ref):
                continue
            line = result.get("result") or {}
            usage = (line.get("message") or {}).get("usage") if line.get("type") == "succeeded" else None
            cost = cost_of(item.get("model", ""), usage) if usage else None
            if cost is None:
                continue
            once = Attr("both_ways_usd").not_exists() & Attr("copy_usd").not_exists()
            if _unbilled(item):
                if self.store.update_if(key, once, copy_usd=cost.batch_usd):
                    copies += cost.batch_usd
            elif self.store.update_if(key, once, both_ways_usd=cost.batch_usd):
                total += cost.batch_usd
        if total:
            logger.info("requests answered in realtime also ran in their batch", extra={"usd": total})
        return total, copies

    def flush(self, ref: str) -> int:
        """Publish what an earlier try wrote to batch <ref>'s outbox but did not send: only the
        completions whose items were written naming that outbox (a try that died before writing
        an item left it claimed, and the item is settled afresh, with another outbox)."""
        sent = 0
        for box, n, call in self.payloads.unsent(ref):
            items = self.store.get_many(request_key(e["id"]) for e in call)
            kept = [e for e in call if (items.get(request_key(e["id"])) or {}).get("outbox") == box]
            sent += self._send(box, n, kept)
        if sent:
            logger.warning("published completions a crashed try left unsent", extra={"ref": ref, "n": sent})
        return sent

    def _send(self, box: str, n: int, call: list[dict[str, Any]]) -> int:
        sent = self.topic.send(call) if call else []
        insist(lambda: self.payloads.sent(box, n, sent, whole=len(sent) == len(call)))
        if len(sent) < len(call):
            raise TransientError(f"{len(call) - len(sent)} of {len(call)} completions not published")
        return len(sent)

    def hold(self, tier: str) -> None:
        """Pause a tier after an account problem, each time longer (5 minutes doubling to an hour)."""
        level = self.store.hold(tier, clock.now(), base=HOLD_BASE_SECONDS, cap=HOLD_CAP_SECONDS)
        logger.error(
            "the API refused requests for an account problem; the tier is held",
            extra={"tier": tier, "level": level},
        )
        metrics.add_metric(name="AccountHolds", unit=MetricUnit.Count, value=1)

    @staticmethod
    def _metrics(
        done: list[Completion], tally: Counter[str], tokens: Counter[str], totals: dict[str, float]
    ) -> None:
        misses = sum(1 for c in done if c.deadline and c.completed_at > c.deadline)
        if misses:
            metrics.add_metric(name="DeadlineMisses", unit=MetricUnit.Count, value=misses)
        for status, n in tally.items():
            metrics.add_metric(name=f"Results_{status}", unit=MetricUnit.Count, value=n)
        for key, name in TOKEN_METRICS.items():
            if tokens[key]:
                metrics.add_metric(name=name, unit=MetricUnit.Count, value=tokens[key])
        for key, name in COST_METRICS.items():
            if totals.get(key):
                metrics.add_metric(name=name, unit=MetricUnit.NoUnit, value=totals.get(key, 0.0))
        for c in done:
            if c.received_at:
                waited = clock.parse(c.completed_at) - clock.parse(c.received_at)
                metrics.add_metric(name="ReceiptToCompletion", unit=MetricUnit.Seconds, value=waited)

    def _outcome(
        self, record: BatchRecord, item: dict[str, Any], result: dict[str, Any], results_key: str | None
    ) -> tuple[Completion | None, dict[str, Any], str]:
        """What one result means for its request: a completion, another attempt, or a hold."""
        kind, message, error, said = read(result)
        attempts = int(item.get("attempts", 1))
        now = clock.now()
        # A realtime try ends with its outcome, whatever it is.
        dropped = ("pending_tier", "pending_since", "batch_ref", *REALTIME_TRY)
        base = {k: v for k, v in item.items() if k not in dropped}
        base["last_batch_id"] = record.batch_id
        again = self._again(base, kind, said, now)
        if again is not None:
            base["last_error"] = error.model_dump() if error else None
            return None, _dynamo_ready(requeued(base, self._sort_key(item))), again
        usage = message.get("usage") if message else None
        realtime = record.route == "realtime"
        cost = (realtime_cost_of if realtime else cost_of)(item["model"], usage) if usage else None
        if cost is not None and realtime and item.get("rescued_from"):
            # Also billed in the batch it was taken from, if that ran it: known once its results
            # are in, estimated from this answer until then.
            cost.both_ways_usd = self._both_ways_of(item, cost.list_usd * BATCH_DISCOUNT)
        completion = Completion(
            request_id=item["request_id"],
            status=kind,
            batch_id=record.batch_id,
            route="realtime" if realtime else "batch",
            tier=item.get("tier"),
            model=item.get("model"),
            message=message,
            error=error,
            attempts=attempts,
            usage=usage,
            cost=cost,
            metadata=item.get("metadata") or {},
            deadline=item.get("deadline"),
            received_at=item.get("received_at"),
            submitted_at=item.get("submitted_at"),
            completed_at=clock.iso(now),
            producer=item.get("producer"),
        )
        if message is not None and len(encode(completion).encode()) > INLINE_BUDGET:
            pointer = self.payloads.put_json(f"messages/{item['request_id']}/{attempts}.json", message)
            completion = completion.model_copy(update={"message": pointer})
        base.pop("held_since", None)
        base.pop("route", None)  # an earlier try's
        if realtime:
            base["route"] = "realtime"  # (a batch's answer says nothing: items stay under 1 KB)
        base.update(
            batch_id=record.batch_id,
            completed_at=completion.completed_at,
            notified=True,
            error=error.model_dump() if error else None,
            usage=_tokens(usage),
            cost=cost.model_dump() if cost else None,
            results_key=results_key,
        )
        return completion, _dynamo_ready(answered(base, kind)), kind

    def _again(self, base: dict[str, Any], kind: str, said: str, now: float) -> str | None:
        """Whether a request goes back to its tier for another try: "held" (not its fault: the
        attempt given back, `base` says since when), "retried" (attempts remain), or None."""
        attempts = int(base.get("attempts", 1))
        if said == "held":
            since = float(base.get("held_since") or now)
            if now - since < self.settings.max_hold_seconds:
                base.update(attempts=attempts - 1, held_since=since)
                return "held"
        retry = kind == "expired" or said == "retried"
        return "retried" if retry and attempts < self.settings.max_attempts else None

    def _both_ways_of(self, item: dict[str, Any], estimate: float) -> float | None:
        """What the batch a realtime request was taken from spent on its copy: as its results
        recorded it, nothing once it was collected without it, this answer's estimate until then."""
        if item.get("both_ways_usd") is not None:
            return round(float(item["both_ways_usd"]), 8)
        batch = self.store.batch(item["rescued_from"])
        if batch is not None and batch.status not in AWAITING_RESULTS:
            return None  # its batch has ended and been collected: the copy was never billed
        return round(estimate, 8)

    def _sort_key(self, item: dict[str, Any]) -> str:
        tier = self.settings.tiers.get(item["tier"]) or self.settings.tiers[self.settings.default_tier]
        return sort_key(item["received_at"], item.get("deadline"), tier, self.settings)


def _unbilled(item: dict[str, Any]) -> bool:
    """A request answered in realtime without a billed call (its answer carries no cost)."""
    return (
        item.get("route") == "realtime"
        and item.get("status") not in ("claimed", "pending")
        and not item.get("cost")
    )


def _dynamo_ready(item: dict[str, Any]) -> dict[str, Any]:
    return dynamo({k: v for k, v in item.items() if v is not None})


# What an answered item keeps of its usage: the token counts the reports sum. The whole usage
# (its split cache writes, server tools, tier, geo) is in the completion, so the item stays under
# 1 KB and each of its writes costs one write unit.
ITEM_TOKENS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _tokens(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    return {k: usage[k] for k in ITEM_TOKENS if usage.get(k)} if usage else None
