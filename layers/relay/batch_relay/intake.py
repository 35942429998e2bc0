"""The buffer: validate request messages and store each accepted request once.

Outcomes of one SQS record, decided in `accept`, always on its first receive unless AWS faults:
- valid and new: its request line stored in S3, and a pending item of its tier pointing at it;
- valid but its id is already stored: nothing more (the first one is answered); when its params
  differ from the first's, an `IdempotencyConflict` is logged and counted;
- invalid: a `rejected` completion with a short reason, and the record is done (never retried);
  without a usable id, a logged rejection and a metric instead;
- a transient AWS fault: raised, so that record alone goes back to SQS and, after the queue's
  maxReceiveCount, to the dead-letter queue.

Memory stays bounded whatever the bodies: each record is parsed, checked and its line written
before the next is read; a line too long to share an object goes to S3 at once, shorter ones
wait in one shared object of at most BODY_OBJECT_BYTES. Only a few hundred bytes a record are
kept until the items are written.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from botocore.exceptions import ClientError, ParamValidationError
from pydantic import ValidationError

from . import bodies, clock
from .completions import Topic
from .deadlines import sort_key
from .errors import RejectedRequest, TransientError, excerpt, insist, is_transient
from .lifecycle import admitted, rejected
from .models import (
    ID_PATTERN,
    MAX_TOKENS,
    OLDER_VERSION,
    TIER_PATTERN,
    Completion,
    ErrorInfo,
    RequestMessage,
    older_version_reason,
)
from .observability import MetricUnit, logger, metrics
from .payloads import SHARED_LINE_BYTES, Payloads, request_text
from .pricing import unbounded_reason
from .settings import Settings
from .store import Store, request_key

# The most request lines one body object holds; lines of one invocation share objects up to this.
BODY_OBJECT_BYTES = 8 * 1024 * 1024
# The Messages API refuses requests over 32 MB; such a request could never be answered.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
_ID = re.compile(ID_PATTERN.strip("^$"))
_TIER = re.compile(TIER_PATTERN.strip("^$"))
# S3 answers that say the object cannot be read, however often it is tried.


@dataclass
class Parsed:
    """A valid request, what its item needs, and where its line is stored (the line itself is
    dropped once written)."""

    message_id: str
    rid: str
    tier: str
    model: str
    metadata: dict[str, str]
    digest: str | None
    received_at: str
    length: int
    max_tokens: int = 0
    deadline: str | None = None
    # The headers its calls need: an API version other than the SDK's, and betas.
    api_version: str | None = None
    betas: list[str] = field(default_factory=list)
    key: str = ""
    offset: int = 0
    # The SQS SenderId of its message: the producer's account or principal id.
    producer: str | None = None


# Parsing stops with this much of the invocation left, for writing the lines and items.
PARSE_RESERVE_MS = 12_000


@dataclass
class Refused:
    rid: str | None
    reason: str
    received_at: str
    tier: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    digest: str | None = None
    producer: str | None = None


@dataclass
class Intake:
    settings: Settings
    store: Store
    payloads: Payloads
    topic: Topic
    tally: Counter[str] = field(default_factory=Counter)
    processor: BatchProcessor = field(default_factory=lambda: BatchProcessor(event_type=EventType.SQS))
    parsed: dict[str, Parsed | Refused | Exception] = field(default_factory=dict)
    shelf: list[tuple[Parsed, bytes]] = field(default_factory=list)
    shelf_bytes: int = 0
    # Whether this process has recorded its policy's tier names (`Store.note_tiers`): once is enough.
    tiers_noted: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Intake:
        return cls(
            settings, Store(settings.table_name), Payloads(settings.bucket_name), Topic(settings.topic_arn)
        )

    def process(self, event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
        """One SQS batch: each record accepted on its own; failed records reported for redelivery.

        Every record is parsed and its line stored before any item is written, so the lines of
        one invocation share S3 objects and each item holds only a pointer: the item stays under
        1 KB, so each of its writes costs one write unit whatever the prompt's size."""
        self.tally.clear()
        self.parsed = {}
        self.shelf, self.shelf_bytes = [], 0
        try:
            for raw in event.get("Records", []):
                record = SQSRecord(raw)
                if out_of_time(context):
                    # Large bodies took the invocation's time: the rest go back to the queue now,
                    # not with the whole batch when the function times out.
                    self.parsed[record.message_id] = TransientError(
                        "deferred: this invocation's time is spent"
                    )
                    self.tally["RecordsDeferred"] += 1
                    continue
                try:
                    outcome = self._parse(record)
                    # SQS always sets it; a hand-made event (sam local invoke -e) may not.
                    outcome.producer = record.raw_event.get("attributes", {}).get("SenderId")
                    self.parsed[record.message_id] = outcome
                except Exception as exc:  # raised again in `accept`, so only this record is retried
                    self.parsed[record.message_id] = _light(exc)
            self._flush()
            return process_partial_response(
                event=event, record_handler=self.accept, processor=self.processor, context=context
            )
        finally:
            self.parsed = {}
            # One value per metric and invocation: Powertools flushes early past 100 values.
            for name, n in self.tally.items():
                metrics.add_metric(name=name, unit=MetricUnit.Count, value=n)

    # parsing: one record at a time, its line written before the next is read

    def _parse(self, record: SQSRecord) -> Parsed | Refused:
        received_at = clock.iso()
        raw: Any = None
        via_s3 = False
        try:
            raw = bodies.parse(record.body)
            bodies.check(raw)
            if bodies.is_pointer(raw):
                via_s3 = True
                raw = bodies.parse(self._fetch(*bodies.pointer(raw)), "body in S3")
                bodies.check(raw, "body in S3")
            request = self._validate(raw)
        except RejectedRequest as rejection:
            rid = rejection.request_id or _usable_id(raw, record.message_id, via_s3)
            return refused_of(rid, rejection.reason, received_at, raw)
        rid = request.request_id or record.message_id
        params = request.params.payload()
        why = unbounded_reason(params) if self.settings.daily_budget_usd else None
        if why:  # a budget needs every request's cost bounded
            return refused_of(rid, why, received_at, raw)
        tier = request.tier or self.settings.default_tier
        parsed = Parsed(
            message_id=record.message_id,
            rid=rid,
            tier=tier,
            model=request.params.model,
            metadata=request.metadata,
            digest=bodies.digest(params),
            received_at=received_at,
            length=0,
            max_tokens=request.params.max_tokens,
            deadline=self._deadline(request, tier, received_at),
            betas=list(request.betas),
        )
        refusal = self._headers(parsed, params)
        if refusal:
            return refused_of(rid, refusal, received_at, raw)
        del raw, request
        try:
            text = request_text(rid, params)
            del params  # the parsed body: only its text is needed from here on
            text += "\n"
            line = text.encode()
        except (ValueError, RecursionError) as exc:  # checked in `bodies`; kept as a last guard
            reason = f"params cannot be written as JSON: {type(exc).__name__}"
            return refused_of(rid, reason, received_at, None)
        del text
        parsed.length = len(line) - 1
        self._keep(parsed, line)
        return parsed

    def _fetch(self, bucket: str, key: str) -> bytearray:
        """The body behind a pointer, read only from the inbox bucket."""
        if bucket != self.settings.inbox:
            # In AWS the buffer's role could not read it anyway; say so without asking S3.
            raise RejectedRequest(
                f"S3 pointer names bucket {excerpt(bucket)}; offloaded bodies are read only from "
                f"this stack's inbox bucket {self.settings.inbox!r}"
            )
        uri = f"s3://{bucket}/{excerpt(key, 80, quote=False)}"
        try:
            data = self.payloads.read_into(bucket, key, limit=MAX_REQUEST_BYTES)
        except ValueError as exc:
            raise RejectedRequest(f"body in S3 too large: {exc}") from None
        except ParamValidationError:
            raise RejectedRequest(f"S3 pointer names an object S3 cannot address: {uri}") from None
        except ClientError as exc:
            if is_transient(exc):
                raise  # throttling or a 5xx: the record is tried again
            # Missing, refused, encrypted with a key we are not given...: no later try can read
            # it. The body, and so the caller's id, is out of reach: answer under the SQS message id.
            code = excerpt(str(exc.response.get("Error", {}).get("Code", "")), 60, quote=False)
            raise RejectedRequest(f"S3 pointer names a missing or unreadable object {uri} ({code})") from None
        return data

    def _validate(self, raw: Any) -> RequestMessage:
        if not isinstance(raw, dict):
            raise RejectedRequest(f"body must be a JSON object, not {_kind(raw)}")
        try:
            request = RequestMessage.model_validate(raw)
        except ValidationError as exc:
            raise RejectedRequest(_explain(exc)) from None
        tier = request.tier or self.settings.default_tier
        if tier not in self.settings.tiers:
            raise RejectedRequest(f"unknown tier {tier!r}; this deployment has {sorted(self.settings.tiers)}")
        return request.model_copy(update={"tier": tier})

    def _headers(self, parsed: Parsed, params: dict[str, Any]) -> str | None:
        """Set the API version the request needs; the reason it is refused, if it is."""
        older = older_version_reason(params)
        if older and self.settings.legacy_requests == "reject":
            return (
                f"{older} is refused by API version 2026-10-21, the one this relay sends; this deployment "
                f"does not send requests under {OLDER_VERSION} (LegacyRequests=reject)"
            )
        parsed.api_version = OLDER_VERSION if older else None
        if parsed.max_tokens > MAX_TOKENS and parsed.deadline:
            return (
                f"params.max_tokens over {MAX_TOKENS:,} is available in batches only, and a request with a "
                "deadline may have to be answered in realtime"
            )
        return None

    def _deadline(self, request: RequestMessage, tier: str, received_at: str) -> str | None:
        """The request's own deadline, else its tier's default, as a UTC timestamp."""
        if request.deadline is not None:
            return clock.iso(request.deadline.timestamp())
        seconds = self.settings.tiers[tier].deadline_seconds
        return clock.iso(clock.parse(received_at) + seconds) if seconds else None

    # request lines: a long one in its own object at once, short ones shared

    def _keep(self, parsed: Parsed, line: bytes) -> None:
        """`line` ends in its newline."""
        if len(line) > SHARED_LINE_BYTES:
            self._put([(parsed, line)])
            return
        if self.shelf and self.shelf_bytes + len(line) > BODY_OBJECT_BYTES:
            self._flush()
        self.shelf.append((parsed, line))
        self.shelf_bytes += len(line)

    def _flush(self) -> None:
        group, self.shelf, self.shelf_bytes = self.shelf, [], 0
        if not group:
            return
        held = [parsed for parsed, _ in group]  # `_put` empties the group as it goes
        try:
            self._put(group)
        except Exception as exc:  # only the records whose lines it held go back to SQS
            for parsed in held:
                self.parsed[parsed.message_id] = _light(exc)

    def _put(self, group: list[tuple[Parsed, bytes]]) -> None:
        key = f"bodies/{clock.iso()[:10]}/{uuid.uuid4().hex}.jsonl"
        offset = 0
        lines: list[bytes] = []
        for parsed, line in group:
            parsed.key, parsed.offset = key, offset
            offset += len(line)
            lines.append(line)
        group.clear()
        self.payloads.put_lines(key, lines)  # one line alone is sent as it is, not copied

    # accepting: items and rejections, one record at a time

    def accept(self, record: SQSRecord) -> str:
        """Handle one SQS record; returns what happened to it ("stored", "duplicate", "rejected")."""
        try:
            return self._accept(self.parsed[record.message_id])
        except Exception as exc:
            # Never the body: the exception's type and the message it came from.
            log = logger.warning if is_transient(exc) else logger.error
            log(
                "record failed; SQS will deliver it again",
                extra={"sqs_message_id": record.message_id, "error_type": type(exc).__name__},
            )
            raise

    def _accept(self, parsed: Parsed | Refused | Exception) -> str:
        if isinstance(parsed, Exception):
            raise parsed
        if isinstance(parsed, Refused):
            return self._reject(parsed)
        rid = parsed.rid
        if not self.tiers_noted:
            # Before its first request is written: no request waits in a tier no one knows of.
            self.store.note_tiers(self.settings.tiers)
            self.tiers_noted = True
        stored = self.store.add(request_item(parsed, self.settings))
        self.tally["RequestsReceived"] += 1
        if not stored:
            if self._conflict(rid, parsed.digest):
                return "conflict"
            logger.info("duplicate request ignored", extra={"request_id": rid})
            return "duplicate"
        self.tally[f"RequestsBuffered_{parsed.tier}"] += 1
        logger.debug("request buffered", extra={"request_id": rid, "tier": parsed.tier})
        return "stored"

    def _conflict(self, rid: str, digest: str | None, existing: dict[str, Any] | None = None) -> bool:
        """The id is the idempotency key, so the first request stands; a second one with other
        params is a caller's mistake worth seeing."""
        if existing is None:
            existing = self.store.get(request_key(rid)) or {}
        first = existing.get("params_digest")
        if not first or not digest or first == digest:
            return False
        logger.warning(
            "idempotency conflict: the same request_id with other params; the first stands",
            extra={"request_id": rid, "stored_digest": first, "received_digest": digest},
        )
        self.tally["IdempotencyConflict"] += 1
        return True

    def _reject(self, refused: Refused) -> str:
        rid, reason = refused.rid, refused.reason
        self.tally["RequestsRejected"] += 1
        if rid is None:
            logger.warning("request rejected without a usable id", extra={"reason": reason})
            self.tally["RejectedWithoutId"] += 1
            return "rejected"
        logger.info("request rejected", extra={"request_id": rid, "reason": reason})
        key = request_key(rid)
        completion = Completion(
            request_id=rid,
            status="rejected",
            tier=refused.tier,
            error=ErrorInfo(type="invalid_request", message=reason),
            metadata=refused.metadata,
            received_at=refused.received_at,
            completed_at=clock.iso(),
            producer=refused.producer,
        )
        # The completion is kept on the item before it is published: a retry after a crash in
        # between publishes the very same message, never a second version of it.
        item: dict[str, Any] = {
            "pk": key,
            "kind": "request",
            "request_id": rid,
            "error": {"type": "invalid_request", "message": reason},
            "received_at": refused.received_at,
            "completed_at": completion.completed_at,
            "completion": completion.model_dump(mode="json", exclude_none=True),
            "notified": False,
            "ttl": int(clock.now()) + self.settings.retention_days * 86400,
        }
        if refused.digest:
            item["params_digest"] = refused.digest
        if not self.store.add(rejected(item)):
            existing = self.store.get(key) or {}
            unsent = existing.get("status") == "rejected" and not existing.get("notified")
            if not unsent or "completion" not in existing:
                # The id belongs to a request already accepted or already answered.
                if not self._conflict(rid, refused.digest, existing):
                    logger.info("rejected duplicate ignored", extra={"request_id": rid})
                return "duplicate"
            completion = Completion.model_validate(existing["completion"])
        self.topic.publish([completion])
        insist(lambda: self.store.update(key, notified=True))
        return "rejected"


def request_item(parsed: Parsed, settings: Settings) -> dict[str, Any]:
    """A valid request's item, as first written: pending in its tier."""
    item = {
        "pk": request_key(parsed.rid),
        "kind": "request",
        "request_id": parsed.rid,
        "tier": parsed.tier,
        "model": parsed.model,
        "attempts": 0,
        "metadata": parsed.metadata,
        "received_at": parsed.received_at,
        "pending_tier": parsed.tier,
        "pending_since": sort_key(parsed.received_at, parsed.deadline, settings.tiers[parsed.tier], settings),
        "body_key": parsed.key,
        "body_at": parsed.offset,
        "body_len": parsed.length,
        "sqs_message_id": parsed.message_id,
        "ttl": int(clock.now()) + settings.retention_days * 86400,
    }
    if parsed.digest:
        item["params_digest"] = parsed.digest
    if parsed.deadline:
        item["deadline"] = parsed.deadline
    if parsed.api_version:
        item["api_version"] = parsed.api_version
    if parsed.producer:
        item["producer"] = parsed.producer
    if parsed.betas:
        item["betas"] = parsed.betas
    if settings.daily_budget_usd:
        item["max_tokens"] = parsed.max_tokens  # for the budget's bound, without reading the line
    return admitted(item)


def refused_of(rid: str | None, reason: str, received_at: str, raw: Any) -> Refused:
    """What a rejection needs, taken from the body now, so the body itself is not kept."""
    refused = Refused(rid, reason, received_at)
    if isinstance(raw, dict):
        tier = raw.get("tier")
        refused.tier = tier if isinstance(tier, str) and _TIER.fullmatch(tier) else None
        refused.metadata = _safe_metadata(raw.get("metadata"))
        refused.digest = bodies.digest(raw.get("params"))
    return refused


def out_of_time(context: Any) -> bool:
    """Whether parsing must stop: what is left of the invocation is kept for storing what was read."""
    left = getattr(context, "get_remaining_time_in_millis", None)
    return left is not None and left() < PARSE_RESERVE_MS


def _light(exc: Exception) -> Exception:
    """The exception without its traceback, whose frames would keep a whole body alive."""
    exc.__traceback__ = None
    exc.__context__ = exc.__cause__ = None
    return exc


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _usable_id(raw: Any, message_id: str, via_s3: bool = False) -> str | None:
    """The id to answer a rejected message under: the caller's if valid, the SQS id if none was
    given (or the body behind a pointer is not an object)."""
    if not isinstance(raw, dict):
        return message_id if via_s3 else None
    if raw.get("request_id") is None:
        return message_id
    rid = raw["request_id"]
    return rid if isinstance(rid, str) and _ID.fullmatch(rid) else None


def _safe_metadata(value: Any) -> dict[str, str]:
    """Echo the caller's metadata on a rejection only when it is itself valid."""
    try:
        return RequestMessage.model_validate(
            {
                "params": {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]},
                "metadata": value,
            }
        ).metadata
    except (ValidationError, ValueError, RecursionError):
        return {}


def _explain(exc: ValidationError) -> str:
    """A short reason naming each bad field; quotes caller input only as a short excerpt."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False)[:5]:
        where = ".".join(excerpt(str(p), 24, quote=False) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
