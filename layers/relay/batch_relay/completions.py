"""The completion topic: the only module that publishes to SNS.

Each completion goes out with message attributes (`status`, `tier`, `model`, `producer`: the SQS
SenderId of the request's message, and the caller's metadata keys) so subscribers can filter
without parsing bodies. The producer is an attribute only: the body stays the completion's contract.
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
    text = completion.model_dump_json(exclude_none=True, exclude={"producer"})
    if completion.batch_id is None and completion.status != "rejected":
        # Said even when null: a realtime answer has no batch, and says so.
        text = '{"batch_id":null,' + text[1:]
    return text


def attributes(completion: Completion) -> dict[str, dict[str, str]]:
    attrs = {
        "status": completion.status,
        "tier": completion.tier,
        "model": completion.model,
        "producer": completion.producer,
    }
    attrs.update(completion.metadata)
    return {k: {"DataType": "String", "StringValue": v} for k, v in attrs.items() if v}


def entry_size(body: str, attrs: dict[str, dict[str, str]]) -> int:
    return len(body.encode()) + sum(len(k) + len(v["StringValue"]) + len("String") for k, v in attrs.items())


def entry(completion: Completion) -> dict[str, Any]:
    """One completion as it is published: the same bytes each time it is sent."""
    return {"id": completion.request_id, "body": encode(completion), "attributes": attributes(completion)}


def groups(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Entries cut into PublishBatch calls (ten, and at most 256 KiB, a call), always the same way."""
    out: list[list[dict[str, Any]]] = []
    size = 0
    for e in entries:
        this = entry_size(e["body"], e["attributes"])
        if not out or len(out[-1]) == BATCH_ENTRIES or size + this > SNS_MAX_BYTES:
            out.append([])
            size = 0
        out[-1].append(e)
        size += this
    return out


class Topic:
    def __init__(self, topic_arn: str):
        self.arn = topic_arn
        self.sns = aws.client("sns")

    def publish(self, completions: Iterable[Completion]) -> int:
        """Publish every completion; raises TransientError if any could not be."""
        sent = 0
        for group in groups([entry(c) for c in completions]):
            done = self.send(group)
            sent += len(done)
            if len(done) < len(group):
                raise TransientError(f"{len(group) - len(done)} of {len(group)} completions not published")
        return sent

    def send(self, group: list[dict[str, Any]], tries: int = 3) -> list[str]:
        """One PublishBatch call, its failed entries sent again alone (a call can half-succeed);
        returns the request ids that went out. A retry that raises after some went out returns
        those: the caller records them, so they are never published again."""
        sent: list[str] = []
        left = group
        for _ in range(tries):
            try:
                answer = self.sns.publish_batch(
                    TopicArn=self.arn,
                    PublishBatchRequestEntries=[
                        {"Id": str(n), "Message": e["body"], "MessageAttributes": e["attributes"]}
                        for n, e in enumerate(left)
                    ],
                )
            except Exception as exc:
                if not sent:
                    raise
                logger.warning(
                    "completions not published",
                    extra={"request_ids": [e["id"] for e in left], "error": type(exc).__name__},
                )
                return sent
            failed = {int(f["Id"]) for f in answer.get("Failed") or []}
            sent += [e["id"] for n, e in enumerate(left) if n not in failed]
            if not failed:
                return sent
            logger.warning(
                "completions not published",
                extra={
                    "request_ids": [left[n]["id"] for n in sorted(failed)],
                    "codes": [f.get("Code") for f in answer.get("Failed") or []],
                },
            )
            left = [left[n] for n in sorted(failed)]
        return sent
