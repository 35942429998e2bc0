"""The product's contracts: the request message producers send and the completion subscribers get.

The JSON Schemas in `schemas/` are generated from these models, so producers in any language
validate against exactly what the buffer accepts.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from .errors import excerpt

# Patterns for the JSON Schema and pydantic (whose `$` is the end of the text). Python code matches
# with `fullmatch`: Python's `$` also matches before a final newline.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
TIER_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
RequestId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
DEADLINE_MIN = datetime(2000, 1, 1, tzinfo=UTC)
DEADLINE_MAX = datetime(9998, 12, 31, tzinfo=UTC)

# SNS allows ten message attributes; four are ours (status, tier, model, producer).
MAX_METADATA_KEYS = 6
MAX_METADATA_VALUE = 256
RESERVED_ATTRIBUTES = frozenset({"status", "tier", "model", "producer"})
# SNS's rules for attribute names: up to 256 of these characters, no leading or trailing dot,
# no "..", no "AWS." or "Amazon." prefix (any case).
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,256}")
_SNS_PREFIXES = ("aws.", "amazon.")
# Characters SNS (and SQS, for raw delivery) accept in an attribute value.
_ATTRIBUTE_VALUE = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")


def attribute_name_problem(key: str) -> str | None:
    """Why SNS would refuse `key` as a message attribute name of ours, or None."""
    if not _ATTRIBUTE_NAME.fullmatch(key) or key.startswith(".") or key.endswith(".") or ".." in key:
        return (
            f"metadata key {excerpt(key)} is not a valid SNS attribute name (1-256 of A-Z a-z 0-9 _ - ., "
            "no leading, trailing or double dot)"
        )
    if key.lower() in RESERVED_ATTRIBUTES or key.lower().startswith(_SNS_PREFIXES):
        return f"metadata key {excerpt(key)} is reserved"
    return None


# API versions and betas. A create call, a realtime call and a token count each go under one
# `anthropic-version` and one set of `anthropic-beta` values, so these are a request's own needs:
# the relay batches requests by them and sends each call with them.
# The version the SDK sends (2026-10-21) refuses sampling parameters (even at their defaults), a
# `document` block in an assistant message and a user `text` block with citations; 2023-06-01
# still accepts them.
OLDER_VERSION = "2023-06-01"
SAMPLING_PARAMS = ("temperature", "top_p", "top_k")
# The betas the relay knows, each with what it allows: output-300k lets batch requests ask for up
# to 300,000 output tokens (batches only: such a request can never be answered in realtime).
OUTPUT_300K = "output-300k-2026-03-24"
Beta = Literal["output-300k-2026-03-24"]
BATCH_ONLY_BETAS = frozenset({OUTPUT_300K})
MAX_TOKENS = 128_000
MAX_TOKENS_BATCH_ONLY = 300_000


def older_version_reason(params: dict[str, Any]) -> str | None:
    """Why a request needs API version 2023-06-01 (what the current version refuses), or None."""
    for name in SAMPLING_PARAMS:
        if name in params:
            return f"params.{name}"
    for i, msg in enumerate(params.get("messages") or ()):
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            if not isinstance(block, dict):
                continue
            if msg.get("role") == "assistant" and block.get("type") == "document":
                return f"params.messages[{i}].content[{j}] (a document block in an assistant message)"
            if msg.get("role") == "user" and block.get("type") == "text" and block.get("citations"):
                return f"params.messages[{i}].content[{j}] (a user text block with citations)"
    return None


Status = Literal["succeeded", "errored", "expired", "canceled", "rejected"]
# How a request was answered: in a message batch (half price) or by the Messages API at list price.
Route = Literal["batch", "realtime"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "errored", "expired", "canceled", "rejected"})


class MessageParams(BaseModel):
    """Messages API parameters. Known fields are checked; the rest travel to the API untouched."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._:@-]{0,127}$")]
    max_tokens: int = Field(
        ge=1,
        le=MAX_TOKENS_BATCH_ONLY,
        strict=True,
        description=f"at most {MAX_TOKENS:,}; up to {MAX_TOKENS_BATCH_ONLY:,} with the {OUTPUT_300K} beta",
    )
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stream: bool | None = None

    @field_validator("stream")
    @classmethod
    def _no_streaming(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("stream is not available in message batches")
        return value

    @field_validator("messages")
    @classmethod
    def _roles(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, msg in enumerate(value):
            if msg.get("role") not in ("user", "assistant"):
                raise ValueError(f"messages[{i}].role must be 'user' or 'assistant'")
            if not isinstance(msg.get("content"), str | list) or not msg["content"]:
                raise ValueError(f"messages[{i}].content must be a non-empty string or list of blocks")
        return value

    def payload(self) -> dict[str, Any]:
        """The params as sent to the API: unset optionals and `stream: false` left out."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"stream"})


class RequestMessage(BaseModel):
    """One SQS message body: a request that can wait for batch pricing."""

    model_config = ConfigDict(extra="forbid", title="BatchRelayRequest")

    request_id: RequestId | None = Field(
        default=None, description="caller's idempotency key; the same id is answered once"
    )
    params: MessageParams
    tier: Annotated[str, StringConstraints(pattern=TIER_PATTERN)] | None = None
    deadline: AwareDatetime | None = Field(
        default=None,
        description="RFC 3339 time (with its offset) by which the completion is needed: a request a batch "
        "can no longer answer in time goes to the Messages API at list price instead",
    )
    betas: list[Beta] = Field(
        default_factory=list,
        max_length=4,
        description="Anthropic betas the request needs (sent as anthropic-beta on its batch's create); "
        "requests are batched with others that need exactly the same betas",
    )
    metadata: dict[str, Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE)]] = Field(
        default_factory=dict,
        description="up to 6 string values, set as SNS message attributes: names of 1-256 characters "
        "A-Z a-z 0-9 _ - . (no leading, trailing or double dot, no AWS./Amazon. prefix, not status, "
        "tier, model or producer), values of at most 256 characters",
    )

    @model_validator(mode="after")
    def _beta_limits(self) -> RequestMessage:
        if len(set(self.betas)) != len(self.betas):
            raise ValueError("betas: each beta at most once")
        if self.params.max_tokens > MAX_TOKENS and OUTPUT_300K not in self.betas:
            raise ValueError(
                f"params.max_tokens: over {MAX_TOKENS:,} needs the {OUTPUT_300K} beta (in batches only)"
            )
        return self

    @field_validator("deadline", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        # pydantic would also take a number as a Unix time; the contract is an RFC 3339 string.
        if value is not None and not isinstance(value, str):
            raise ValueError("deadline must be an RFC 3339 date-time string with an offset")
        return value

    @field_validator("deadline")
    @classmethod
    def _in_range(cls, value: datetime | None) -> datetime | None:
        # Far outside any batch's life, and outside what the relay's timestamps can hold in UTC.
        try:
            inside = value is None or DEADLINE_MIN <= value.astimezone(UTC) <= DEADLINE_MAX
        except OverflowError:  # past year 9999 once in UTC
            inside = False
        if not inside:
            raise ValueError("deadline must be between 2000-01-01 and 9998-12-31 (UTC)")
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value: Any) -> Any:
        # Checked before pydantic's own errors, whose locations would quote a key whole.
        if not isinstance(value, dict):
            return value
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"metadata has {len(value)} keys; at most {MAX_METADATA_KEYS}")
        for key, item in value.items():
            problem = attribute_name_problem(key)
            if problem:
                raise ValueError(problem)
            if not isinstance(item, str):
                raise ValueError(f"metadata value of {excerpt(key)} must be a string")
            if len(item) > MAX_METADATA_VALUE:
                raise ValueError(f"metadata value of {excerpt(key)} is over {MAX_METADATA_VALUE} characters")
            if not _ATTRIBUTE_VALUE.fullmatch(item):
                raise ValueError(f"metadata value of {excerpt(key)} holds a character SNS refuses")
        return value


class S3Pointer(BaseModel):
    """Where a body too large to travel inline was put."""

    type: Literal["s3_pointer"] = "s3_pointer"
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class ErrorInfo(BaseModel):
    type: str
    message: str


class Cost(BaseModel):
    batch_usd: float = Field(
        description="its batch price (for a realtime answer, what a batch would have charged: not paid)"
    )
    list_usd: float = Field(description="what it costs at list price (what a realtime answer paid)")
    saved_usd: float = Field(description="list_usd - paid_usd: 0 for a realtime answer")
    paid_usd: float | None = Field(
        default=None,
        description="what answering it was billed: batch_usd by batch, list_usd in realtime (a batch "
        "copy's both_ways_usd is on top); absent from completions made before it was added",
    )
    both_ways_usd: float | None = Field(
        default=None,
        description="a request answered in realtime after it was put in a batch: the batch price of its "
        "batch copy, also billed (estimated from this answer when the batch has not ended yet)",
    )


class Completion(BaseModel):
    """One per request, published on the completion topic."""

    model_config = ConfigDict(title="BatchRelayCompletion")

    request_id: str
    status: Status
    batch_id: str | None = Field(
        default=None, description="the message batch that answered; null if realtime"
    )
    route: Route = "batch"
    tier: str | None = None
    model: str | None = None
    message: dict[str, Any] | S3Pointer | None = Field(
        default=None, description="the Anthropic Message, or an S3 pointer to it when too large for SNS"
    )
    error: ErrorInfo | None = None
    attempts: int = 0
    usage: dict[str, Any] | None = None
    cost: Cost | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    deadline: str | None = None
    received_at: str | None = None
    submitted_at: str | None = None
    completed_at: str
    # Who sent the request (the SQS SenderId of its message): a message attribute only, never in
    # the body, so a subscriber can filter on it. Kept on the model so a completion published
    # again from the request's item carries it too.
    producer: SkipJsonSchema[str | None] = None

    @model_validator(mode="after")
    def _error_when_not_succeeded(self) -> Completion:
        if self.status != "succeeded" and self.error is None:
            raise ValueError("a completion that did not succeed carries an error")
        return self
