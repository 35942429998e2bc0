"""Settings read once from the environment and validated when a function starts.

A missing or malformed variable fails the cold start with a clear message instead of surfacing
later as an odd error deep in a request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from .store import LIVE

# The Message Batches API's own ceilings; deployments may only lower them.
API_MAX_REQUESTS = 100_000
API_MAX_BYTES = 256 * 1024 * 1024


class Tier(BaseModel):
    """When pending requests of one latency tier are flushed into a batch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_wait_seconds: PositiveInt = Field(description="flush once the oldest pending request is this old")
    min_requests: PositiveInt = Field(
        default=1, description="flush earlier once this many requests are pending"
    )
    deadline_seconds: PositiveInt | None = Field(
        default=None, description="deadline of a request that names none, in seconds from its receipt"
    )


DEFAULT_TIERS = {
    "urgent": Tier(max_wait_seconds=300, min_requests=1),
    "standard": Tier(max_wait_seconds=3600, min_requests=5000),
    "bulk": Tier(max_wait_seconds=6 * 3600, min_requests=50_000),
}


class Settings(BaseModel):
    """Everything a function needs to know about its deployment (template.yaml sets each variable)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    table_name: str = Field(alias="TABLE_NAME", min_length=3)
    bucket_name: str = Field(alias="BUCKET_NAME", min_length=3)
    # Where producers offload bodies too large for SQS (the buffer only reads it); the relay's own
    # bucket when a deployment names none.
    inbox_bucket_name: str | None = Field(default=None, alias="INBOX_BUCKET_NAME")
    topic_arn: str = Field(alias="TOPIC_ARN", pattern=r"^arn:aws[a-z-]*:sns:")
    state_machine_arn: str | None = Field(default=None, alias="STATE_MACHINE_ARN")
    tiers: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")], Tier] = Field(
        default_factory=lambda: dict(DEFAULT_TIERS), alias="TIER_POLICY"
    )
    default_tier: str = Field(default="standard", alias="DEFAULT_TIER")
    max_attempts: int = Field(default=3, alias="MAX_ATTEMPTS", ge=1, le=10)
    max_batch_requests: int = Field(
        default=API_MAX_REQUESTS, alias="MAX_BATCH_REQUESTS", ge=1, le=API_MAX_REQUESTS
    )
    max_batch_bytes: int = Field(default=API_MAX_BYTES, alias="MAX_BATCH_BYTES", ge=1024, le=API_MAX_BYTES)
    max_in_flight: int = Field(default=100_000, alias="MAX_IN_FLIGHT", ge=1)
    poll_min_seconds: int = Field(default=60, alias="POLL_MIN_SECONDS", ge=1)
    poll_max_seconds: int = Field(default=7200, alias="POLL_MAX_SECONDS", ge=1)
    collect_budget_seconds: int = Field(default=600, alias="COLLECT_BUDGET_SECONDS", ge=1)
    max_hold_seconds: int = Field(default=86_400, alias="MAX_HOLD_SECONDS", ge=0)
    stalled_batch_seconds: int = Field(default=6 * 3600, alias="STALLED_BATCH_SECONDS", ge=60)
    retention_days: int = Field(default=30, alias="RETENTION_DAYS", ge=1)
    api_key_secret_arn: str | None = Field(default=None, alias="API_KEY_SECRET_ARN")
    # Deadlines: where requests a batch cannot answer in time go, how long batches are assumed to
    # take until the relay has seen its own, and how long before a deadline the realtime call starts.
    realtime_queue_url: str | None = Field(default=None, alias="REALTIME_QUEUE_URL")
    default_turnaround_seconds: int = Field(
        default=7200, alias="DEFAULT_TURNAROUND_SECONDS", ge=60, le=86_400
    )
    deadline_margin_seconds: int = Field(default=600, alias="DEADLINE_MARGIN_SECONDS", ge=30, le=86_400)
    # What the relay may commit to spend per UTC day, batch and realtime (0: no cap).
    daily_budget_usd: float = Field(default=0.0, alias="DAILY_BUDGET_USD", ge=0)
    # A request only API version 2023-06-01 accepts (sampling parameters, ...): sent under that
    # version in batches of its own, or rejected on receipt.
    legacy_requests: Literal["send", "reject"] = Field(default="send", alias="LEGACY_REQUESTS")
    # Prices of model families the shipped table lacks (or overrides), as JSON: checked here so a
    # malformed value fails the cold start, not a completion's pricing.
    extra_prices: str = Field(default="", alias="EXTRA_PRICES")

    @field_validator("tiers", mode="before")
    @classmethod
    def _parse_tiers(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator(
        "state_machine_arn", "api_key_secret_arn", "inbox_bucket_name", "realtime_queue_url", mode="before"
    )
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return value or None

    @field_validator("extra_prices")
    @classmethod
    def _prices(cls, value: str) -> str:
        from .pricing import parse_extra

        try:
            parse_extra(value)
        except ValueError as exc:  # json's own errors are ValueErrors too
            raise ValueError(f"EXTRA_PRICES: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.tiers:
            raise ValueError("TIER_POLICY names no tier")
        if LIVE in self.tiers:
            # The work list's partition of live batch records: requests there would read as records.
            raise ValueError(f"TIER_POLICY: {LIVE!r} is reserved, not a tier name")
        if self.default_tier not in self.tiers:
            raise ValueError(f"DEFAULT_TIER {self.default_tier!r} is not in TIER_POLICY {sorted(self.tiers)}")
        if self.poll_max_seconds < self.poll_min_seconds:
            raise ValueError("POLL_MAX_SECONDS is below POLL_MIN_SECONDS")
        return self

    def timing(self, tier: str) -> Tier:
        """A tier's policy; a tier the policy no longer names (dropped or renamed by a later
        deployment, its requests still waiting or coming back for another attempt) is flushed and
        measured as the default tier is."""
        return self.tiers.get(tier) or self.tiers[self.default_tier]

    def flushed(self, known: Iterable[str]) -> dict[str, Tier]:
        """Every tier the submitter flushes: the policy's, then those requests were put in under
        an earlier policy, each with its timing."""
        orphans = sorted(set(known) - set(self.tiers))
        return {**self.tiers, **{name: self.timing(name) for name in orphans}}

    @property
    def inbox(self) -> str:
        """The one bucket offloaded request bodies may be read from."""
        return self.inbox_bucket_name or self.bucket_name

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        return cls.model_validate(dict(os.environ if env is None else env))


@cache
def settings() -> Settings:
    """The process-wide settings; handlers call this at import so a bad deployment fails at cold start."""
    return Settings.from_env()


class ApiSettings(BaseModel):
    """What calling the Anthropic API needs, and nothing else: an operator's machine that counts
    tokens for `batch-relay estimate` has no table, bucket or topic."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    api_key_secret_arn: str | None = Field(default=None, alias="API_KEY_SECRET_ARN")

    @field_validator("api_key_secret_arn", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return value or None


@cache
def api_settings() -> ApiSettings:
    return ApiSettings.model_validate(dict(os.environ))
