"""The lifecycles of a batch record and of a request item: their states, what each waits for, who
moves it on, what recovery does, and the only code that writes a state.

A batch record (`batch#<ref>`) is on the work list (the `live` partition of the `pending` index)
from the moment it is written until it reaches an ended state. Each live state is written before
the step that depends on it, so whatever dies anywhere leaves enough behind for the next
submitter run to finish it (see `submitter.RECOVERY`, which maps each live state to its recovery).

Every change of a batch's state is a named `Transition` and goes through `move`: a conditional
write naming the states it may leave. What a lost race means is the transition's `lost`:
- `Lost.ERROR`: raises `Moved`. The writer owns the record (it holds the submitter lease and
  wrote the state it leaves), so another writer means its lease was lost or a bug;
- `Lost.SKIP`: returns False and the caller leaves the record to whoever moved it on.
A write that botocore sent again after it applied reads as refused: when the record already is in
the target state, the move counts as done.

A request item changes state in batches (BatchWriteItem, which takes no conditions) by the one
holder of its batch (the submitter lease, a batch's collect lease, a realtime try's lease): the
functions below check the state the holder read, consistently, just before, and refuse any other.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from boto3.dynamodb.conditions import Attr

from . import clock
from .observability import logger

# The states are declared with the record whose `status` holds them; their tables are here.
from .records import Batch as Batch
from .records import BatchRecord as BatchRecord
from .records import Request as Request
from .records import RequestItem
from .store import LIVE, Store, batch_key


class Mover(StrEnum):
    """Who moves a batch on from a state."""

    SUBMITTER = "submitter"
    POLLER = "poller"
    REALTIME = "realtime"
    NOBODY = "nobody"


@dataclass(frozen=True)
class Stage:
    waits_for: str
    mover: Mover
    recovery: str | None  # what the submitter's reconcile does; None: an ended state
    in_flight: bool = False  # the API may be processing its requests (or is about to be given them)


BATCH: dict[Batch, Stage] = {
    Batch.CLAIMING: Stage(
        "its claim to finish", Mover.SUBMITTER, "release the journaled requests to their tier", True
    ),
    Batch.UPLOADED: Stage(
        "the create call",
        Mover.SUBMITTER,
        "create it (no create was sent); released instead if requests went realtime or back to their tier",
        True,
    ),
    Batch.CREATING: Stage(
        "the create's answer",
        Mover.SUBMITTER,
        "after the window: adopt the one batch the API made in it, or create again once none can be ours;"
        " released instead if its requests went back to their tier (a release cut short)",
        True,
    ),
    Batch.CREATED: Stage("its poller to start", Mover.SUBMITTER, "start it", True),
    Batch.POLLING: Stage(
        "the batch to end (check)", Mover.POLLER, "if its execution is not running: restart", True
    ),
    Batch.COLLECTING: Stage(
        "its results (collect)", Mover.POLLER, "if its execution is not running: restart"
    ),
    Batch.FAILED: Stage(
        "a restart (its poller gave up)",
        Mover.SUBMITTER,
        "restart with growing delays; once results expire, answer what is left and stop",
        True,
    ),
    Batch.CLOSING: Stage(
        "its requests' answers to go out",
        Mover.SUBMITTER,
        "answer them again (skips the answered) and publish",
    ),
    Batch.REALTIME: Stage(
        "its requests' realtime answers",
        Mover.REALTIME,
        "send again what it still holds; end it once it holds none",
    ),
    Batch.COLLECTED: Stage("nothing: every request answered", Mover.NOBODY, None),
    Batch.EMPTY: Stage("nothing: its claim found no request", Mover.NOBODY, None),
    Batch.SPLIT: Stage("nothing: too large, its requests back in their tier", Mover.NOBODY, None),
    Batch.REFUSED: Stage("nothing: the API refused it, requests released or answered", Mover.NOBODY, None),
    Batch.RELEASED: Stage("nothing: never created, its requests back in their tier", Mover.NOBODY, None),
    Batch.OVER_BUDGET: Stage("nothing: past the day's budget, requests released", Mover.NOBODY, None),
    Batch.FOREIGN: Stage("nothing: wrongly adopted, its requests released", Mover.NOBODY, None),
    Batch.ABANDONED: Stage("nothing: results expired, what was left answered", Mover.NOBODY, None),
    Batch.ANSWERED: Stage("nothing: a realtime record whose requests are answered", Mover.NOBODY, None),
}

# On the work list: the submitter's reconcile has a recovery for each.
LIVE_STATES = frozenset(s for s, stage in BATCH.items() if stage.recovery is not None)
ENDED = frozenset(BATCH) - LIVE_STATES
# Counted against the in-flight cap, and rescued by the submitter when their poller does not.
IN_FLIGHT = frozenset(s for s, stage in BATCH.items() if stage.in_flight)
# A batch whose results may still come (a realtime record has none).
AWAITING_RESULTS = LIVE_STATES - {Batch.REALTIME}
# A batch the API has made, watched by a poller (or about to be).
AT_API = frozenset({Batch.CREATED, Batch.POLLING, Batch.COLLECTING})
# Live states only a submitter run moves on: a record in one of them needs a run.
WAITS_ON_SUBMITTER = frozenset(s for s in LIVE_STATES if BATCH[s].mover is Mover.SUBMITTER)


class Lost(StrEnum):
    """What a transition whose record left its source states (a lost race) means."""

    ERROR = "error"  # raises Moved
    SKIP = "skip"  # returns False: left to whoever moved it on


@dataclass(frozen=True)
class Transition:
    name: str
    leaving: frozenset[Batch]
    to: frozenset[Batch]
    lost: Lost
    why: str  # what a lost race means

    @property
    def only(self) -> Batch:
        (target,) = self.to
        return target


def _t(name: str, leaving: Iterable[Batch], to: Iterable[Batch], lost: Lost, why: str) -> Transition:
    return Transition(name, frozenset(leaving), frozenset(to), lost, why)


B = Batch
_ATTACHED = (B.CREATED, B.POLLING, B.COLLECTING, B.FAILED)
UPLOAD = _t(
    "upload", [B.CLAIMING], [B.UPLOADED], Lost.ERROR, "the claim is the run's own: its lease was lost"
)
EMPTY = _t("empty", [B.CLAIMING], [B.EMPTY], Lost.SKIP, "a later run released the claim: nothing held")
BEGIN_CREATE = _t(
    "begin_create", [B.UPLOADED], [B.CREATING], Lost.ERROR, "never create twice: another run has it"
)
RETRY_CREATE = _t(
    "retry_create", [B.CREATING], [B.UPLOADED], Lost.ERROR, "the run reconciling it holds the lease"
)
CREATED = _t("created", [B.CREATING], [B.CREATED], Lost.ERROR, "the creator holds the lease")
START = _t("start", [B.CREATED], [B.POLLING], Lost.SKIP, "its poller saw the batch end first: left as it is")
RESTART = _t(
    "restart",
    [B.FAILED, B.POLLING, B.COLLECTING],
    [B.POLLING],
    Lost.SKIP,
    "a poller still running finished it meanwhile: left as it is",
)
ENDED_AT_API = _t(
    "ended", _ATTACHED, [B.COLLECTING], Lost.SKIP, "a late check of a batch collected (or released)"
)
COLLECT = _t("collected", _ATTACHED, [B.COLLECTED], Lost.SKIP, "another poller ended it first")
# Written by the state machine's RecordFailure (statemachine/poller.asl.json), not by `move`.
FAIL = _t(
    "fail",
    _ATTACHED,
    [B.FAILED],
    Lost.SKIP,
    "a late, stale execution of a batch already ended: its failure is not recorded",
)
CLOSE = _t(
    "close",
    [B.CREATING, B.POLLING, B.COLLECTING, B.FAILED],
    [B.CLOSING],
    Lost.SKIP,
    "moved on (collected meanwhile): whoever moved it answers its requests",
)
CLOSED = _t("closed", [B.CLOSING], [B.REFUSED, B.ABANDONED], Lost.SKIP, "closed already")
RELEASE = _t(
    "release",
    [B.CLAIMING, B.UPLOADED, B.CREATING, *_ATTACHED],
    [B.RELEASED, B.SPLIT, B.REFUSED, B.OVER_BUDGET, B.FOREIGN],
    Lost.SKIP,
    "ended meanwhile: its requests were given back or answered already",
)
ANSWER = _t("answer", [B.REALTIME], [B.ANSWERED], Lost.SKIP, "ended already")
TRANSITIONS = (
    UPLOAD,
    EMPTY,
    BEGIN_CREATE,
    RETRY_CREATE,
    CREATED,
    START,
    RESTART,
    ENDED_AT_API,
    COLLECT,
    FAIL,
    CLOSE,
    CLOSED,
    RELEASE,
    ANSWER,
)
# Leaving the work list: ended states drop the index attributes.
OFF_LIST = ("pending_tier", "pending_since")


class Moved(Exception):
    """A record left the states a transition may leave, where that means an error."""


def new_record(
    tier: str, retention_days: int, state: Batch, ref: str | None = None, **extra: Any
) -> BatchRecord:
    """A `batch#<ref>` item as first written, on the work list: a batch's (claiming), one answering
    a request no batch can take (closing), or a realtime record's (realtime)."""
    if state not in LIVE_STATES:
        raise ValueError(f"a record starts on the work list, not in {state}")
    ref = ref or uuid.uuid4().hex
    now = clock.iso()
    BatchRecord.check(extra)
    first = dict(
        pk=batch_key(ref),
        kind="batch",
        ref=ref,
        tier=tier,
        status=state,
        pending_tier=LIVE,
        pending_since=now,
        claimed_at=now,
        updated_at=now,
        request_count=0,
        ttl=int(clock.now()) + retention_days * 86400,
    )
    return BatchRecord(**(first | extra))


def stand_in(ref: str, tier: str | None) -> BatchRecord:
    """Realtime record <ref> as far as settling one of its requests needs it, without reading it."""
    now = clock.iso()
    return BatchRecord(
        pk=batch_key(ref),
        ref=ref,
        tier=tier or "",
        status=Batch.REALTIME,
        route="realtime",
        claimed_at=now,
        updated_at=now,
        ttl=0,  # never written
    )


def move(
    store: Store,
    record: BatchRecord | str,
    step: Transition,
    to: Batch | None = None,
    remove: tuple[str, ...] = (),
    add: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Write a batch record's move to `to` (the transition's one target by default) with
    `fields`, only from the states `step` may leave; True once it is in `to`. An ended state takes
    the record off the work list. A lost race raises `Moved` or returns False, as `step.lost`
    says. `record` is its ref, or the record as read, which a move that applies updates."""
    ref = record if isinstance(record, str) else record.ref
    target = step.only if to is None else to
    BatchRecord.check([*fields, *remove, *(add or ())])
    if target not in step.to:
        raise ValueError(f"{step.name} moves to {sorted(step.to)}, not {target}")
    if target in ENDED:
        remove = tuple(dict.fromkeys((*remove, *OFF_LIST)))
    source = Attr("status").is_in([s.value for s in step.leaving])
    key = batch_key(ref)
    if store.update_if(key, source, remove=remove, add=add, status=target.value, **fields):
        _mirror(record, target, remove, fields)
        return True
    found = store.batch(ref)
    now = found.status if found else None
    if now == target:
        _mirror(record, target, remove, fields)
        return True  # a write sent again after it applied, or the same move by another hand
    if step.lost is Lost.ERROR:
        raise Moved(f"{step.name}: batch {ref} is {now}, not one of {sorted(step.leaving)}")
    logger.info("a batch moved on before this write; left as it is", extra={"ref": ref, "step": step.name})
    return False


def _mirror(record: BatchRecord | str, to: Batch, remove: tuple[str, ...], fields: dict[str, Any]) -> None:
    if isinstance(record, BatchRecord):
        for k in remove:
            setattr(record, k, BatchRecord.model_fields[k].default)
        for k, v in fields.items():
            setattr(record, k, v)
        record.status = to


# request items


@dataclass(frozen=True)
class RequestStage:
    waits_for: str
    mover: str
    recovery: str | None


REQUEST: dict[Request, RequestStage] = {
    Request.PENDING: RequestStage(
        "its tier to flush (the index, under its tier)", "the submitter (claim)", None
    ),
    Request.CLAIMED: RequestStage(
        "its batch (`batch_ref`, a batch or a realtime record) to answer it",
        "the poller's collect, a rescue (to a realtime record), the realtime function, a release",
        "its batch's recovery: released with it, answered by its collect or close, sent again",
    ),
    Request.SUCCEEDED: RequestStage("nothing: answered", "nobody", None),
    Request.ERRORED: RequestStage("nothing: answered (a final error, or attempts spent)", "nobody", None),
    Request.EXPIRED: RequestStage("nothing: answered (attempts spent)", "nobody", None),
    Request.CANCELED: RequestStage("nothing: answered", "nobody", None),
    Request.REJECTED: RequestStage("nothing: refused at intake, answered", "nobody", None),
}
ANSWERED = frozenset({Request.SUCCEEDED, Request.ERRORED, Request.EXPIRED, Request.CANCELED})

# What a realtime try leaves on a request, for as long as one record holds it: a request back in
# its tier starts afresh (no lease of a past try to wait out, its tries counted from one again, no
# budget commitment of a past try to take for its own: that one is settled by the try that made it).
REALTIME_TRY = (
    "rt_until",
    "rt_holder",
    "rt_tries",
    "rt_answer",
    "rt_since",
    "rt_called",
    "budget_usd",
    "budget_day",
    "budget_settled",
)


def _enter(item: dict[str, Any], to: Request, leaving: frozenset[Request] | None) -> dict[str, Any]:
    """`item` in state `to`, from one of `leaving` (None: a new item)."""
    now = item.get("status")
    if (now is None) != (leaving is None) or (leaving is not None and now not in leaving):
        raise Moved(f"request {item.get('request_id')} is {now}, not one of {sorted(leaving or [])}")
    return item | {"status": to.value}


def admitted(item: dict[str, Any]) -> dict[str, Any]:
    """A new request, pending in its tier (written only where no item has its key)."""
    return _enter(item, Request.PENDING, None)


def rejected(item: dict[str, Any]) -> dict[str, Any]:
    """A new request refused at intake (written only where no item has its key)."""
    return _enter(item, Request.REJECTED, None)


def claimed(item: dict[str, Any], ref: str, at: str) -> dict[str, Any]:
    """A pending request as batch <ref> holds it: out of the index, one more attempt."""
    out = {k: v for k, v in item.items() if k != "pending_tier"}
    out.update(batch_ref=ref, submitted_at=at, attempts=int(item.get("attempts", 0)) + 1)
    return _enter(out, Request.CLAIMED, frozenset({Request.PENDING}))


def held_by(item: dict[str, Any] | RequestItem | None, ref: str) -> bool:
    """Whether batch <ref> still holds this request: claimed by it and not yet answered."""
    if isinstance(item, RequestItem):
        return item.status == Request.CLAIMED and item.batch_ref == ref
    return item is not None and item.get("status") == Request.CLAIMED and item.get("batch_ref") == ref


def holds(ref: str) -> Any:
    """The condition that batch <ref> still holds a request, for a conditional write."""
    return Attr("status").eq(Request.CLAIMED.value) & Attr("batch_ref").eq(ref)


def released(item: dict[str, Any]) -> dict[str, Any]:
    """A claimed request back in its tier, as if never claimed (its batch was never created)."""
    out = {k: v for k, v in item.items() if k not in ("batch_ref", "submitted_at", *REALTIME_TRY)}
    out.update(pending_tier=item["tier"], attempts=int(item.get("attempts", 1)) - 1)
    return _enter(out, Request.PENDING, frozenset({Request.CLAIMED}))


def requeued(item: dict[str, Any], since: str) -> dict[str, Any]:
    """A claimed request whose result asks for another try: back in its tier, sorted at `since`."""
    out = item | {"pending_tier": item["tier"], "pending_since": since}
    return _enter(out, Request.PENDING, frozenset({Request.CLAIMED}))


def answered(item: dict[str, Any], outcome: str) -> dict[str, Any]:
    """A claimed request with its final outcome."""
    return _enter(item, Request(outcome), frozenset({Request.CLAIMED}))
