"""The completion topic: the only module that publishes to SNS.

Each completion goes out with message attributes (`status`, `tier`, `model` and the caller's
metadata keys) so subscribers can filter without parsing bodies.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aws_lambda_powertools import Logger

from . import aws
from .errors import TransientError
from .models import Completion

logger = Logger(child=True)

# SNS caps one message, and the sum of one PublishBatch call, at 256 KiB (body plus attributes).
SNS_MAX_BYTES = 256 * 1024
BATCH_ENTRIES = 10
# Room kept under the cap for attributes and JSON envelope overhead.
INLINE_BUDGET = SNS_MAX_BYTES - 16 * 1024


def encode(completion: Completion) -> str:
    return completion.model_dump_json(exclude_none=True)


def attributes(completion: Completion) -> dict[str, dict[str, str]]:
    attrs = {"status": completion.status, "tier": completion.tier, "model": completion.model}
    attrs.update(completion.metadata)
    return {k: {"DataType": "String", "StringValue": v} for k, v in attrs.items() if v}


def entry_size(body: str, attrs: dict[str, dict[str, str]]) -> int:
    return len(body.encode()) + sum(len(k) + len(v["StringValue"]) + len("String") for k, v in attrs.items())


class Topic:
    def __init__(self, topic_arn: str):
        self.arn = topic_arn
        self.sns = aws.client("sns")

    def publish(self, completions: Iterable[Completion]) -> int:
        """Publish with PublishBatch, ten (and at most 256 KiB) a call; raises if any entry failed."""
        batch: list[dict[str, Any]] = []
        size = 0
        sent = 0
        for completion in completions:
            body = encode(completion)
            attrs = attributes(completion)
            this = entry_size(body, attrs)
            if batch and (len(batch) == BATCH_ENTRIES or size + this > SNS_MAX_BYTES):
                sent += self._send(batch)
                batch, size = [], 0
            batch.append(
                {
                    "Id": str(len(batch)),
                    "Message": body,
                    "MessageAttributes": attrs,
                    "_rid": completion.request_id,
                }
            )
            size += this
        if batch:
            sent += self._send(batch)
        return sent

    def _send(self, batch: list[dict[str, Any]]) -> int:
        ids = {e["Id"]: e.pop("_rid") for e in batch}
        answer = self.sns.publish_batch(TopicArn=self.arn, PublishBatchRequestEntries=batch)
        failed = answer.get("Failed") or []
        if failed:
            logger.warning(
                "completions not published",
                extra={
                    "request_ids": [ids[f["Id"]] for f in failed],
                    "codes": [f.get("Code") for f in failed],
                },
            )
            # The caller has not recorded these as notified, so a retry publishes them again.
            raise TransientError(f"{len(failed)} of {len(batch)} completions not published")
        return len(batch)
