"""The relay's own items of the request table, each attribute declared once with its type: a batch
record (`batch#<ref>`) and a request item (`req#<request_id>`), and the states their `status` holds.

The store reads items into these models (`Store.batch`, `Store.live_batches`, `Store.request`),
so the rest of the relay reads attributes: a misspelt name is an error (mypy's, or an
AttributeError), never a silent None. Writes to a batch record name only attributes declared here
(`BatchRecord.check`, called by `lifecycle.move` and the store's batch updates).

The states' names are declared here, beside the `status` that holds them, so the store can read a
record without importing the lifecycle (which writes through the store); `lifecycle` re-exports
them with the tables and sets derived from them.

An item written by another version of the relay still loads: attributes it lacks take their
defaults, and attributes this version does not declare (`extra="allow"`) are kept and readable
through `model_extra`. One whose state or a required attribute this version cannot read (a
rollback past a new state) fails to load: the work list reports it (`UnreadableRecords`) and
passes it over, so it stops no other record, and it waits for the version that wrote it.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class Batch(StrEnum):
    """The states of a batch record (a batch of the API's, or a realtime record)."""

    CLAIMING = "claiming"
    UPLOADED = "uploaded"
    CREATING = "creating"
    CREATED = "created"
    POLLING = "polling"
    COLLECTING = "collecting"
    FAILED = "failed"
    CLOSING = "closing"
    REALTIME = "realtime"
    # ended: off the work list
    COLLECTED = "collected"
    EMPTY = "empty"
    SPLIT = "split"
    REFUSED = "refused"
    RELEASED = "released"
    OVER_BUDGET = "over_budget"
    FOREIGN = "foreign"
    ABANDONED = "abandoned"
    ANSWERED = "answered"


class Request(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    SUCCEEDED = "succeeded"
    ERRORED = "errored"
    EXPIRED = "expired"
    CANCELED = "canceled"
    REJECTED = "rejected"


class Item(BaseModel):
    # Another version's attributes are kept (see the module's docstring).
    model_config = ConfigDict(extra="allow")

    pk: str
    kind: str
    ttl: int | None = None

    def item(self) -> dict[str, Any]:
        """The attributes as written: only those set, states as their names."""
        return self.model_dump(mode="json", exclude_unset=True)


class BatchRecord(Item):
    """A `batch#<ref>` item: a batch the relay made (or a realtime record, `route` "realtime"),
    from its claim until it ends. Times are ISO strings (`clock.iso`) unless said otherwise."""

    # The names a write may set, remove or add to (`check`); filled in below.
    names: ClassVar[frozenset[str]] = frozenset()

    kind: str = "batch"
    ttl: int
    ref: str
    tier: str
    status: Batch
    # The `pending` index: partition `live` and the time it was listed, while on the work list.
    pending_tier: str | None = None
    pending_since: str | None = None
    claimed_at: str
    updated_at: str
    request_count: int = 0
    run: str | None = None  # the submitter run (its lease holder) that made or last sent it
    after_hold: bool | None = None  # made after a tier's hold: its success ends the hold
    # what was claimed
    input_key: str | None = None  # its JSONL in S3
    bytes: int | None = None
    models: list[str] | None = None
    api_version: str | None = None  # the headers its requests need (one set per batch)
    betas: list[str] | None = None
    # the day's budget: its upper bound, committed to `budget_day`; `budget_settled` once given back
    budget_usd: float | None = None
    budget_day: str | None = None
    budget_settled: bool | None = None
    # the create, and the API's batch
    create_started: str | None = None  # the window a create of unknown outcome may have landed in
    create_until: str | None = None
    batch_id: str | None = None
    submitted_at: str | None = None
    created_at: str | None = None
    expires_at: str | None = None
    # its poller
    execution: str | None = None  # the Step Functions execution's name
    restarts: int = 0
    restart_after: str | None = None  # no restart of a failed poller before
    checked_at: str | None = None
    ended_at: str | None = None
    api_counts: dict[str, int] | None = None  # the API's request counts once it ended
    collected_at: str | None = None
    cursor: int | None = None  # result lines read when collected
    failure_error: str | None = None  # written by the state machine's RecordFailure
    failure_cause: str | None = None
    # deadline rescues: epoch seconds of the next, how far down `deadlines/<ref>.json` it got
    rescue_at: float | None = None
    rescue_from: int = 0
    cancel_wanted: bool | None = None  # every request went realtime: the batch is to be canceled
    # a realtime record: why its requests went realtime, and the batch they were taken from
    route: str | None = None
    why: str | None = None
    rescued_from: str | None = None
    # a record the relay answers itself (`closing`): the error its requests get, and its end
    close_error: str | None = None
    close_message: str | None = None
    close_status: Batch | None = None
    # tallies of settled requests (see `poller.OUTCOME_TALLIES`), and what they cost in USD
    n_succeeded: int = 0
    n_errored: int = 0
    n_expired: int = 0
    n_canceled: int = 0
    n_retried: int = 0
    n_held: int = 0
    n_rescued: int = 0
    batch_usd: float = 0.0  # what was spent, realtime answers' list price included
    list_usd: float = 0.0
    saved_usd: float = 0.0
    both_ways_usd: float = 0.0  # the batch price of requests also answered in realtime

    @classmethod
    def check(cls, names: Iterable[str]) -> None:
        """Refuse a write to an attribute a batch record does not declare (a misspelt name)."""
        unknown = sorted(set(names) - cls.names)
        if unknown:
            raise ValueError(f"a batch record has no attribute {', '.join(unknown)}")


BatchRecord.names = frozenset(BatchRecord.model_fields)


class RequestItem(Item):
    """A `req#<request_id>` item: a request from intake to its answer (bodies live in S3)."""

    kind: str = "request"
    request_id: str
    status: Request
    tier: str | None = None  # None only on a request rejected at intake
    model: str | None = None
    attempts: int = 0
    metadata: dict[str, str] | None = None
    received_at: str | None = None
    deadline: str | None = None
    # the `pending` index: its tier and sort key while pending (see `deadlines.sort_key`)
    pending_tier: str | None = None
    pending_since: str | None = None
    # its line in S3: object, offset, length
    body_key: str | None = None
    body_at: int | None = None
    body_len: int | None = None
    sqs_message_id: str | None = None
    params_digest: str | None = None  # tells a resend of its id from another request under it
    api_version: str | None = None
    betas: list[str] | None = None
    max_tokens: int | None = None  # for the budget's bound, without reading the line
    producer: str | None = None  # the SQS SenderId of its message, published as an attribute
    # claimed: by the batch or realtime record <batch_ref>
    batch_ref: str | None = None
    submitted_at: str | None = None
    route: str | None = None  # "realtime" once it goes there
    rescued_from: str | None = None  # the batch it was taken out of, for realtime
    # a realtime try: its lease, holder, tries, kept answer, start, and the API's pause (epoch s)
    rt_until: float | None = None
    rt_holder: str | None = None
    rt_tries: int | None = None
    rt_answer: str | None = None
    rt_called: str | None = None  # the record whose call was sent, answer not yet kept
    rt_since: str | None = None
    rt_not_before: float | None = None
    budget_usd: float | None = None
    budget_day: str | None = None
    budget_settled: bool | None = None
    # answered (or back in its tier for another try)
    outbox: str | None = None  # the S3 outbox its completion was published from
    batch_id: str | None = None
    last_batch_id: str | None = None
    last_error: dict[str, Any] | None = None
    held_since: float | None = None  # its tier held for an account problem since (epoch s)
    completed_at: str | None = None
    notified: bool | None = None
    error: dict[str, Any] | None = None
    usage: dict[str, int] | None = None
    cost: dict[str, Any] | None = None
    results_key: str | None = None
    completion: dict[str, Any] | None = None  # a rejected request's completion, kept to resend
    # the batch price of its copy in the batch it was taken from: run there too, or paid only there
    both_ways_usd: float | None = None
    copy_usd: float | None = None
