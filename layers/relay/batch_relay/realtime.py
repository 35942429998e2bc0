"""The realtime path: requests a batch cannot answer by their deadline, sent to the Messages API.

Fed by the realtime queue (see `handoff`), one request a message; the template caps the event
source's concurrency so realtime calls stay inside the API's rate limit. A request is answered once, at list
price, whatever is delivered twice or dies on the way:
- a message whose request its realtime record no longer holds (answered, or taken back) does
  nothing but publish what a crashed try settled and did not send;
- an invocation takes a lease on the request's item before it calls the API, so two deliveries of
  one message never both call it;
- the answer is settled exactly like a batch's results (`results.Settler`, the realtime record
  standing for the batch, `route` realtime): outbox, item, publish, marker.
A 429 or 529 is waited out when its `retry-after` fits in the invocation; otherwise the message
goes back to the queue hidden for as long as the API asked. An account problem (a spend cap, an
organization on hold, `x-should-retry: false`: see `errors.RULES`) sends the request back to its
tier, which is held. A call whose answer was lost after it was sent (a 5xx, a reset, a read timeout)
may have run and been billed, and the API has no key to ask: it is settled `api_error`, so it is
sent again only as a new attempt, which its completion counts and MaxAttempts bounds, and the
day's budget keeps the call's whole commitment. A call that
never left (a refused connection) backs off the
same way as a 429, up to MAX_TRIES; then the request is settled as `api_error`, which a later batch tries
again while attempts remain. With a daily budget, the call's upper bound (`pricing.request_bound`,
at list price) is committed first; past the cap, or with no bound at all, the request is answered
`errored` / `budget_exceeded`.
"""

from __future__ import annotations

import json
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from boto3.dynamodb.conditions import Attr
from botocore.exceptions import ClientError
from pydantic import BaseModel, ValidationError

from . import batches, clock
from .budget import Budget, today
from .completions import Topic
from .errors import (
    AccountError,
    ApiAccessError,
    BatchRefusedError,
    BatchTooLargeError,
    OutcomeUnknownError,
    TransientError,
    insist,
)
from .handoff import Handoff
from .lifecycle import held_by, holds, stand_in
from .observability import MetricUnit, logger, metrics
from .payloads import Bodies, Payloads
from .pricing import realtime_cost_of, request_bound, unbounded_reason
from .records import RequestItem
from .results import Settler, errored
from .settings import Settings
from .store import Store, dynamo, request_key

# Kept at the end of an invocation for settling and publishing after the call.
SAFETY_SECONDS = 30.0
# A try that failed otherwise (an AWS fault, a bug) comes back this soon, not after the queue's
# visibility timeout (longer than the function's).
FAILED_AGAIN_SECONDS = 15
# A wait the API asks for up to this long is slept in place; a longer one goes back to the queue.
WAIT_IN_PLACE_SECONDS = 20.0
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 900.0
MAX_TRIES = 8


class RealtimeMessage(BaseModel):
    request_id: str
    ref: str


@dataclass(frozen=True)
class Call:
    """One realtime call, ready to send."""

    api: Any  # the SDK's client, with the key already read
    params: dict[str, Any]
    headers: dict[str, str]


class Later(Exception):
    """Try this request again after `seconds`: its message goes back to the queue until then."""

    def __init__(self, seconds: float, why: str):
        super().__init__(why)
        self.seconds = seconds


@dataclass
class Realtime:
    settings: Settings
    store: Store
    payloads: Payloads
    topic: Topic
    settler: Settler = field(init=False)
    budget: Budget = field(init=False)
    handoff: Handoff = field(init=False)
    bodies: Bodies = field(init=False)
    # A request waiting out a retry-after is an expected outcome, not the function failing.
    processor: BatchProcessor = field(
        default_factory=lambda: BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    )
    until: float = field(default=float("inf"), init=False)

    def __post_init__(self) -> None:
        self.settler = Settler(self.settings, self.store, self.payloads, self.topic)
        self.budget = Budget(self.settings, self.store)
        self.handoff = Handoff(self.settings, self.store, self.payloads)
        self.bodies = Bodies(self.payloads, budget=8 * 1024 * 1024)

    @classmethod
    def from_settings(cls, settings: Settings) -> Realtime:
        return cls(
            settings, Store(settings.table_name), Payloads(settings.bucket_name), Topic(settings.topic_arn)
        )

    def process(self, event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
        left = context.get_remaining_time_in_millis() / 1000
        self.until = clock.now() + max(1.0, left - SAFETY_SECONDS)
        return process_partial_response(
            event=event, record_handler=self.handle, processor=self.processor, context=context
        )

    def handle(self, record: SQSRecord) -> str:
        try:
            msg = RealtimeMessage.model_validate_json(record.body)
        except ValidationError:
            # Only the relay writes to this queue; a message it cannot read names nothing to answer.
            logger.error("unreadable realtime message dropped", extra={"sqs_message_id": record.message_id})
            return "dropped"
        try:
            return self.answer(msg.request_id, msg.ref)
        except Later as later:
            self.handoff.later(record.receipt_handle, later.seconds)
            raise TransientError(f"{later} (again in {later.seconds:.0f} s)") from None
        except Exception:
            # Back soon, not after the queue's visibility timeout: deadlines are near.
            with suppress(Exception):
                self.handoff.later(record.receipt_handle, FAILED_AGAIN_SECONDS)
            raise

    def answer(self, rid: str, ref: str) -> str:
        key = request_key(rid)
        item = self.store.request(rid)
        if item is None:
            logger.error("realtime message names no request", extra={"request_id": rid})
            return "missing"
        if not held_by(item, ref):
            if (item.outbox or "").startswith(f"outbox/{ref}/"):
                self.settler.flush(ref)  # settled by a try that died before publishing
            return "answered"
        now = clock.now()
        wait = (item.rt_not_before or 0) - now
        if wait > 0:
            raise Later(wait, "the API asked for a pause")  # a message sent again meanwhile
        token = uuid.uuid4().hex
        free = Attr("rt_until").not_exists() | Attr("rt_until").lt(dynamo(now))
        taken = self.store.update_if(
            key,
            holds(ref) & free,
            add={"rt_tries": 1},
            rt_until=self.until + SAFETY_SECONDS,
            rt_holder=token,
        )
        if not taken and (self.store.get(key) or {}).get("rt_holder") != token:
            # (A write retried behind our back after it applied reads as refused: ours, then.)
            raise Later(60, "another invocation is answering this request")
        try:
            return self._answer(item, ref, token)
        except Exception as exc:
            # A failed try keeps no one else waiting; one the API asked to pause makes any
            # message of this request (a resend) wait as long.
            # A try sent back for later proved no call ran (a 429, 529 or refused connection).
            pause = exc.seconds if isinstance(exc, Later) else None
            self._unlease(rid, token, pause=pause or 0.0, uncalled=pause is not None)
            raise

    def _answer(self, item: RequestItem, ref: str, token: str) -> str:
        rid, key = item.request_id, request_key(item.request_id)
        tries = (item.rt_tries or 0) + 1
        kept = item.rt_answer or ""
        if not kept.startswith(f"answers/{ref}/") and tries > 1:
            # An earlier try may have died between keeping its answer and naming it on the item.
            kept = f"answers/{ref}/{rid}.json" if self.payloads.exists(f"answers/{ref}/{rid}.json") else ""
        unknown = False  # whether a call may have run and been billed with its answer lost
        if kept.startswith(f"answers/{ref}/"):
            result = self.payloads.read_json(kept)  # a try that died after the call paid for it
        elif item.rt_called == ref:
            # An earlier try sent the call, then failed or died before keeping its answer.
            why = "an earlier try's realtime call may have run; its answer was not kept"
            result, unknown = errored(rid, "api_error", why)["result"], True
        else:
            result, unknown = self._result(item, tries, ref, token)
            if result["type"] == "succeeded":
                # Kept before it is settled: a try that dies from here on is settled from it.
                kept = f"answers/{ref}/{rid}.json"
                insist(lambda: self.payloads.put_json(kept, result))
                self.store.update_if(key, Attr("rt_holder").eq(token), rt_answer=kept)
        self.settler.settle(stand_in(ref, item.tier), [{"custom_id": rid, "result": result}], None)
        message = result.get("message") or {}
        cost = realtime_cost_of(str(item.model), message.get("usage")) if message else None
        committed, day = Budget.terms(item)
        # An answer with usage but no price, or a call whose answer was lost, keeps its whole
        # commitment: what the API may have billed is never counted as 0.
        spent = cost.list_usd if cost else committed if message.get("usage") or unknown else 0.0
        self.budget.settle(key, committed, day, spent)
        metrics.add_metric(name="RealtimeAnswered", unit=MetricUnit.Count, value=1)
        # From its handoff: a request taken out of a batch was submitted when the batch was.
        since = item.rt_since or item.submitted_at
        if since:
            waited = clock.now() - clock.parse(since)
            metrics.add_metric(name="RealtimeSeconds", unit=MetricUnit.Seconds, value=waited)
        return str(result["type"])

    def _result(self, item: RequestItem, tries: int, ref: str, token: str) -> tuple[dict[str, Any], bool]:
        """The request's result line, in the batch results' shape, from one realtime call; and
        whether that call's outcome is unknown (it may have run, and been billed)."""
        rid = item.request_id
        try:
            line = self.bodies.line(str(item.body_key), int(item.body_at or 0), int(item.body_len or 0))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            return errored(rid, "request_unavailable", "the request's body could not be read back")[
                "result"
            ], False
        params: dict[str, Any] = json.loads(line)["params"]
        # A commitment is made once per try of the request: one given back (a try that went
        # back to its tier) is made again.
        if self.budget.capped and (not item.budget_day or item.budget_settled):
            usd = request_bound(params, len(line), batch=False)
            if usd is None:  # e.g. a model priced after it was accepted, then taken out of the table
                return errored(rid, "budget_exceeded", str(unbounded_reason(params)))["result"], False
            day = today()
            if not self.budget.commit(usd, day, mark=request_key(rid)):
                logger.warning("realtime request over the day's budget", extra={"request_id": rid})
                metrics.add_metric(name="BudgetExceeded", unit=MetricUnit.Count, value=1)
                message = f"answering it in realtime (up to {usd:.4f} USD) would pass the daily budget"
                return errored(rid, "budget_exceeded", message)["result"], False
            item.budget_usd, item.budget_day, item.budget_settled = usd, day, None
        # Everything the call needs (the key from Secrets Manager, the headers) is had first, so
        # that what fails after the note below is the call itself.
        call = Call(batches.client(), params, batches.headers_for(item.model_dump(), realtime=True))
        # Said before the call: a try that then fails or dies cannot tell whether the API ran it,
        # and the next one must not send it again within this attempt.
        if not self.store.update_if(request_key(rid), Attr("rt_holder").eq(token), rt_called=ref):
            raise Later(60, "another invocation is answering this request")
        return self._call(item, call, tries)

    def _call(self, item: RequestItem, call: Call, tries: int) -> tuple[dict[str, Any], bool]:
        rid = item.request_id
        while True:
            try:
                answer = batches.message(call.params, deadline=self.until, headers=call.headers, api=call.api)
                return {"type": "succeeded", "message": answer}, False
            except OutcomeUnknownError as exc:
                # It may have run and been billed: sent again only as a new attempt, which the
                # request's completion counts (and MaxAttempts bounds), never within this one.
                metrics.add_metric(name="RealtimeOutcomeUnknown", unit=MetricUnit.Count, value=1)
                message = f"the realtime call's answer was lost after it was sent; it may have run: {exc}"
                return errored(rid, "api_error", message)["result"], True
            except TransientError as exc:  # 429/529 (NotAcceptedError), a call that never left
                wait = batches.retry_after(exc) or min(
                    BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (tries - 1)
                )
                metrics.add_metric(name="RealtimeRetries", unit=MetricUnit.Count, value=1)
                if wait <= WAIT_IN_PLACE_SECONDS and clock.now() + wait + 5 < self.until:
                    clock.sleep(wait)
                    continue
                if tries >= MAX_TRIES:
                    kind = "overloaded_error" if "529" in str(exc) else "api_error"
                    return errored(rid, kind, f"realtime call failed {tries} times: {exc}")["result"], False
                raise Later(wait, f"realtime call not answered: {exc}") from None
            except BatchTooLargeError as exc:
                return errored(rid, "request_too_large", str(exc))["result"], False
            except AccountError as exc:
                # Settled like a batch's account-level result: back to its tier, which is held. A
                # spend cap's 429 lands here too: trying again before the cap lifts cannot help.
                return errored(rid, "billing_error", str(exc), exc.code)["result"], False
            except ApiAccessError as exc:
                raise Later(300, str(exc)) from None
            except BatchRefusedError as exc:
                # The request's own fault, in the API's words (a 403 about its user profile included).
                return errored(rid, exc.api_type or "invalid_request_error", str(exc), exc.code)[
                    "result"
                ], False

    def _unlease(self, rid: str, token: str, pause: float = 0.0, uncalled: bool = False) -> None:
        """End this try's lease; with `pause`, no try starts before it has passed; `uncalled`: no
        call of this try ran, so the next may call."""
        fields: dict[str, Any] = {"rt_not_before": clock.now() + pause} if pause else {}
        remove = ("rt_until", "rt_holder", "rt_called") if uncalled else ("rt_until", "rt_holder")
        # Through a throttle: a lease left behind keeps every delivery off until the try's timeout.
        insist(
            lambda: self.store.update_if(
                request_key(rid), Attr("rt_holder").eq(token), remove=remove, **fields
            )
        )
