"""The buffer: validate request messages and store each accepted request once.

Outcomes of one SQS record, decided in `accept`:
- valid and new: its request line stored in S3, and a pending item of its tier pointing at it;
- valid but its id is already stored: nothing more (the first one is answered);
- invalid: a `rejected` completion with the reason, and the record is done (never retried);
  without a usable id, a logged rejection and a metric instead;
- a transient AWS fault: raised, so that record alone goes back to SQS and, after the queue's
  maxReceiveCount, to the dead-letter queue.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pydantic import ValidationError

from . import clock
from .completions import Topic
from .errors import RejectedRequest, insist
from .models import ID_PATTERN, Completion, ErrorInfo, RequestMessage
from .observability import MetricUnit, logger, metrics
from .payloads import SHARED_LINE_BYTES, Payloads, request_line
from .settings import Settings
from .store import Store, request_key

# The SQS Extended Client's pointer, which producers in Java, Python and .NET already emit.
EXTENDED_POINTER = "software.amazon.payloadoffloading.PayloadS3Pointer"
# The most request lines one body object holds; lines of one invocation share objects up to this.
BODY_OBJECT_BYTES = 8 * 1024 * 1024
# The Messages API refuses requests over 32 MB; such a request could never be answered.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
_ID = re.compile(ID_PATTERN)


@dataclass
class Parsed:
    """A valid request, its line as the batch will carry it, and where that line is stored."""

    rid: str
    request: RequestMessage
    line: bytes
    received_at: str
    key: str = ""
    offset: int = 0


@dataclass
class Refused:
    rid: str | None
    reason: str
    received_at: str
    raw: Any


@dataclass
class Intake:
    settings: Settings
    store: Store
    payloads: Payloads
    topic: Topic
    tally: Counter[str] = field(default_factory=Counter)
    processor: BatchProcessor = field(default_factory=lambda: BatchProcessor(event_type=EventType.SQS))
    parsed: dict[str, Parsed | Refused | Exception] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Intake:
        return cls(
            settings, Store(settings.table_name), Payloads(settings.bucket_name), Topic(settings.topic_arn)
        )

    def process(self, event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
        """One SQS batch: each record accepted on its own; failed records reported for redelivery.

        Every record is parsed first so that the accepted request lines go to S3 together, one
        object per invocation, and each item holds only a pointer: the item stays under 1 KB, so
        each of its writes costs one write unit whatever the prompt's size."""
        self.tally.clear()
        self.parsed = {}
        try:
            for raw in event.get("Records", []):
                record = SQSRecord(raw)
                try:
                    self.parsed[record.message_id] = self._parse(record)
                except Exception as exc:  # raised again in `accept`, so only this record is retried
                    self.parsed[record.message_id] = exc
            self._store_lines([p for p in self.parsed.values() if isinstance(p, Parsed)])
            return process_partial_response(
                event=event, record_handler=self.accept, processor=self.processor, context=context
            )
        finally:
            # One value per metric and invocation: Powertools flushes early past 100 values.
            for name, n in self.tally.items():
                metrics.add_metric(name=name, unit=MetricUnit.Count, value=n)

    def _parse(self, record: SQSRecord) -> Parsed | Refused:
        received_at = clock.iso()
        raw: Any = None
        try:
            raw = self._body(record)
            request = self._validate(raw)
        except RejectedRequest as rejection:
            rid = rejection.request_id or _usable_id(raw, record.message_id)
            return Refused(rid, rejection.reason, received_at, raw)
        rid = request.request_id or record.message_id
        return Parsed(rid, request, request_line(rid, request.params.payload()), received_at)

    def _store_lines(self, accepted: list[Parsed]) -> None:
        """Write the accepted lines to S3: shared objects of up to BODY_OBJECT_BYTES, and a line too
        large to share in an object of its own."""
        group: list[Parsed] = []
        size = 0
        for p in accepted:
            if len(p.line) > SHARED_LINE_BYTES:
                self._put([p])
                continue
            if group and size + len(p.line) + 1 > BODY_OBJECT_BYTES:
                self._put(group)
                group, size = [], 0
            group.append(p)
            size += len(p.line) + 1
        if group:
            self._put(group)

    def _put(self, group: list[Parsed]) -> None:
        key = f"bodies/{clock.iso()[:10]}/{uuid.uuid4().hex}.jsonl"
        offset = 0
        for p in group:
            p.key, p.offset = key, offset
            offset += len(p.line) + 1
        self.payloads.put_lines(key, [p.line + b"\n" for p in group])

    def accept(self, record: SQSRecord) -> str:
        """Handle one SQS record; returns what happened to it ("stored", "duplicate", "rejected")."""
        parsed = self.parsed[record.message_id]
        if isinstance(parsed, Exception):
            raise parsed
        if isinstance(parsed, Refused):
            return self._reject(parsed.rid, parsed.reason, parsed.received_at, parsed.raw)
        rid, request = parsed.rid, parsed.request
        stored = self.store.add(self._item(parsed, record.message_id))
        self.tally["RequestsReceived"] += 1
        if not stored:
            logger.info("duplicate request ignored", extra={"request_id": rid})
            return "duplicate"
        self.tally[f"RequestsBuffered_{request.tier}"] += 1
        logger.debug("request buffered", extra={"request_id": rid, "tier": request.tier})
        return "stored"

    def _body(self, record: SQSRecord) -> Any:
        try:
            raw = json.loads(record.body)
        except (json.JSONDecodeError, TypeError) as exc:
            raise RejectedRequest(f"body is not JSON: {exc.msg if hasattr(exc, 'msg') else exc}") from None
        if (
            isinstance(raw, list)
            and len(raw) == 2
            and raw[0] == EXTENDED_POINTER
            and isinstance(raw[1], dict)
        ):
            bucket, key = raw[1].get("s3BucketName"), raw[1].get("s3Key")
            if not (isinstance(bucket, str) and isinstance(key, str)):
                raise RejectedRequest("S3 pointer lacks s3BucketName or s3Key", record.message_id)
            try:
                data = self.payloads.read(bucket, key, limit=MAX_REQUEST_BYTES)
            except ValueError as exc:
                raise RejectedRequest(f"body in S3 too large: {exc}", record.message_id) from None
            except (self.payloads.s3.exceptions.NoSuchKey, self.payloads.s3.exceptions.NoSuchBucket):
                # The body, and so the caller's id, is gone: answer under the SQS message id.
                raise RejectedRequest(
                    f"S3 pointer names a missing object s3://{bucket}/{key}", record.message_id
                ) from None
            try:
                raw = json.loads(data)
            except ValueError as exc:  # bad JSON or bad UTF-8
                raise RejectedRequest(f"body in S3 is not JSON: {exc}", record.message_id) from None
        return raw

    def _validate(self, raw: Any) -> RequestMessage:
        if not isinstance(raw, dict):
            raise RejectedRequest(f"body must be a JSON object, not {type(raw).__name__}")
        try:
            request = RequestMessage.model_validate(raw)
        except ValidationError as exc:
            raise RejectedRequest(_explain(exc)) from None
        tier = request.tier or self.settings.default_tier
        if tier not in self.settings.tiers:
            raise RejectedRequest(f"unknown tier {tier!r}; this deployment has {sorted(self.settings.tiers)}")
        return request.model_copy(update={"tier": tier})

    def _item(self, parsed: Parsed, message_id: str) -> dict[str, Any]:
        request = parsed.request
        return {
            "pk": request_key(parsed.rid),
            "kind": "request",
            "request_id": parsed.rid,
            "tier": request.tier,
            "model": request.params.model,
            "status": "pending",
            "attempts": 0,
            "metadata": request.metadata,
            "received_at": parsed.received_at,
            "pending_tier": request.tier,
            "pending_since": parsed.received_at,
            "body_key": parsed.key,
            "body_at": parsed.offset,
            "body_len": len(parsed.line),
            "sqs_message_id": message_id,
            "ttl": int(clock.now()) + self.settings.retention_days * 86400,
        }

    def _reject(self, rid: str | None, reason: str, received_at: str, raw: Any) -> str:
        self.tally["RequestsRejected"] += 1
        if rid is None:
            logger.warning("request rejected without a usable id", extra={"reason": reason})
            self.tally["RejectedWithoutId"] += 1
            return "rejected"
        logger.info("request rejected", extra={"request_id": rid, "reason": reason})
        key = request_key(rid)
        metadata = raw.get("metadata") if isinstance(raw, dict) else None
        completion = Completion(
            request_id=rid,
            status="rejected",
            tier=raw.get("tier") if isinstance(raw, dict) and isinstance(raw.get("tier"), str) else None,
            error=ErrorInfo(type="invalid_request", message=reason),
            metadata=_safe_metadata(metadata),
            received_at=received_at,
            completed_at=clock.iso(),
        )
        # The completion is kept on the item before it is published: a retry after a crash in
        # between publishes the very same message, never a second version of it.
        item = {
            "pk": key,
            "kind": "request",
            "request_id": rid,
            "status": "rejected",
            "error": {"type": "invalid_request", "message": reason},
            "received_at": received_at,
            "completed_at": completion.completed_at,
            "completion": completion.model_dump(mode="json", exclude_none=True),
            "notified": False,
            "ttl": int(clock.now()) + self.settings.retention_days * 86400,
        }
        if not self.store.add(item):
            existing = self.store.get(key) or {}
            unsent = existing.get("status") == "rejected" and not existing.get("notified")
            if not unsent or "completion" not in existing:
                # The id belongs to a request already accepted or already answered.
                logger.info("rejected duplicate ignored", extra={"request_id": rid})
                return "duplicate"
            completion = Completion.model_validate(existing["completion"])
        self.topic.publish([completion])
        insist(lambda: self.store.update(key, notified=True))
        return "rejected"


def _usable_id(raw: Any, message_id: str) -> str | None:
    """The id to answer a rejected message under: the caller's if valid, the SQS id if none was given."""
    if not isinstance(raw, dict) or "request_id" not in raw or raw["request_id"] is None:
        return message_id if isinstance(raw, dict) else None
    rid = raw["request_id"]
    return rid if isinstance(rid, str) and _ID.match(rid) else None


def _safe_metadata(value: Any) -> dict[str, str]:
    """Echo the caller's metadata on a rejection only when it is itself valid."""
    try:
        return RequestMessage.model_validate(
            {
                "params": {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]},
                "metadata": value,
            }
        ).metadata
    except ValidationError:
        return {}


def _explain(exc: ValidationError) -> str:
    """A short reason naming each bad field; never echoes the input (it may hold prompt text)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
