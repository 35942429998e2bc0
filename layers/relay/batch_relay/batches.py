"""The Anthropic Message Batches API: the only module that touches the `anthropic` client.

The client is left to read ANTHROPIC_BASE_URL itself, so any deployment or test can point it at
another endpoint. The key comes from Secrets Manager (cached by Powertools) when the deployment
names a secret, otherwise from ANTHROPIC_API_KEY, which is meant for local runs only.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from typing import Any

import anthropic
from anthropic.types.messages import MessageBatch
from aws_lambda_powertools.utilities import parameters

from . import clock
from .errors import (
    ACCOUNT_CODES,
    AccountError,
    ApiAccessError,
    NotAcceptedError,
    OutcomeUnknownError,
    TransientError,
    classify,
)
from .models import BATCH_ONLY_BETAS
from .observability import MetricUnit, logger, metrics

try:  # the SDK moved to the httpx2 fork; older releases use httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]
from .settings import api_settings

SECRET_MAX_AGE = 300
# A create refused with 429/529 and no retry-after is tried again after this long.
CREATE_BACKOFF_SECONDS = 5.0
# A call is not started with less time than this left.
MIN_CALL_SECONDS = 5.0
# Longest wait for one read of an answer: less than the margin a function keeps before its timeout.
CALL_SECONDS = 30.0
LIST_PAGE = 100


@cache
def _client_for(api_key: str | None) -> anthropic.Anthropic:
    # Each call sets its own retries and timeout (see `create_from` and `_bounded`); these apply
    # only to the operator's calls.
    return anthropic.Anthropic(api_key=api_key, max_retries=2, timeout=httpx.Timeout(600.0, connect=10.0))


def reset() -> None:
    """Forget the client, so a changed environment (base URL, key) takes effect."""
    _client_for.cache_clear()
    api_settings.cache_clear()


def client() -> anthropic.Anthropic:
    arn = api_settings().api_key_secret_arn
    key = _secret_key(arn) if arn else None
    return _client_for(key)


def _secret_key(arn: str) -> str:
    value = parameters.get_secret(arn, max_age=SECRET_MAX_AGE)
    text = value.decode() if isinstance(value, bytes) else str(value)
    # Accept either the bare key or a JSON object with an api_key field.
    if text.lstrip().startswith("{"):
        text = json.loads(text).get("api_key", "")
    if not text:
        raise ValueError(f"secret {arn} holds no API key")
    return text.strip()


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (anthropic.AnthropicError, httpx.HTTPError) as exc:
        raise _sorted(exc) from exc


def _sorted(exc: BaseException) -> BaseException:
    kind = classify(exc)
    if isinstance(kind, ApiAccessError):
        # Nothing retries its way out of a refused key: say so loudly, for the alarm and the operator.
        logger.error(
            "Anthropic refused the API key; requests are kept until it is fixed", extra={"error": str(kind)}
        )
        metrics.add_metric(name="ApiAuthFailures", unit=MetricUnit.Count, value=1)
    return kind


def headers_for(needs: Mapping[str, Any], realtime: bool = False) -> dict[str, str]:
    """The headers the calls for a request (or a batch of them) go with: its API version when it
    is not the SDK's own, and its betas. A batch is created under one of each, so requests are
    batched by these. A realtime call or count leaves out the betas that exist in batches only
    (intake refuses a request that would need one in realtime)."""
    found = {}
    if needs.get("api_version"):
        found["anthropic-version"] = str(needs["api_version"])
    betas = sorted(b for b in needs.get("betas") or () if not (realtime and b in BATCH_ONLY_BETAS))
    if betas:
        found["anthropic-beta"] = ",".join(betas)
    return found


def create_from(
    body: Iterable[bytes], length: int, deadline: float, headers: Mapping[str, str] | None = None
) -> Any:
    """Create a batch from a request body already in the API's JSON shape, sent as it is read.

    A 256 MB batch never exists in memory as request objects or as one string. The SDK never
    retries a create: the API has no idempotency key, so a create sent again after a lost answer
    makes a second batch and bills every request twice. Only answers that prove nothing was made
    (429, 529) are tried again here, after the wait the API asks for, while `deadline` allows.
    Any other failure without an answer raises `OutcomeUnknownError`: the caller reconciles.
    """
    sent = _Told(body)
    while True:
        left = deadline - clock.now()
        if left < MIN_CALL_SECONDS:
            raise NotAcceptedError("no time left to send the create")  # nothing was sent
        try:
            return _call(
                client().post,
                "/v1/messages/batches",
                cast_to=MessageBatch,
                content=sent,
                options={
                    "headers": {
                        "Content-Type": "application/json",
                        "Content-Length": str(length),
                        **(headers or {}),
                    },
                    "max_retries": 0,
                    "timeout": httpx.Timeout(left, connect=min(10.0, left)),
                },
            )
        except NotAcceptedError as exc:
            wait = _retry_after(exc.__cause__) or CREATE_BACKOFF_SECONDS
            if clock.now() + wait + MIN_CALL_SECONDS > deadline:
                raise
            logger.warning("batch create not accepted; trying again", extra={"wait_seconds": wait})
            clock.sleep(wait)
        except AccountError as exc:
            if _unknown(exc.__cause__):
                # An uncoded 5xx the API says not to retry: still an answer that says nothing of
                # whether the batch exists, so it is reconciled like any lost answer.
                raise OutcomeUnknownError(f"create unanswered: {exc}") from exc
            raise
        except TransientError as exc:
            if not sent.whole:
                # Cut short on our side (a read of its object refused): the API, told the body's
                # length, never had a whole request to act on, so nothing was created.
                raise NotAcceptedError(f"create body not sent whole: {exc}") from exc
            raise OutcomeUnknownError(f"create unanswered: {exc}") from exc


def _unknown(exc: BaseException | None) -> bool:
    """An answer that leaves a call's outcome unknown: a 5xx other than 529 naming no account
    cause (a code the relay does not know is read as its bare status, as the SDK advises)."""
    return (
        isinstance(exc, anthropic.APIStatusError)
        and exc.status_code >= 500
        and exc.status_code != 529
        and exc.error_code not in ACCOUNT_CODES
    )


class _Told:
    """A request body that tells whether it was read to its end."""

    def __init__(self, body: Iterable[bytes]):
        self.body, self.whole = body, False

    def __iter__(self) -> Iterator[bytes]:
        self.whole = False
        yield from self.body
        self.whole = True


def _retry_after(exc: BaseException | None) -> float | None:
    """The wait an error answer asks for (retry-after-ms, then retry-after in seconds)."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) * scale)
        except (KeyError, TypeError, ValueError):
            continue
    return None


def _bounded(deadline: float | None) -> anthropic.Anthropic:
    """The client for one call that must end by `deadline`: no SDK retry (the SDK would wait as
    long as a retry-after says, past any function's timeout), each read bounded; the caller's
    own retries (Step Functions', the next run's) do the waiting."""
    if deadline is None:
        return client()
    left = max(1.0, deadline - clock.now())
    per_read = min(CALL_SECONDS, left)
    return client().with_options(max_retries=0, timeout=httpx.Timeout(per_read, connect=min(10.0, per_read)))


def retrieve(batch_id: str, deadline: float | None = None) -> Any:
    return _call(_bounded(deadline).messages.batches.retrieve, batch_id)


def created_between(start: float, end: float, deadline: float | None = None) -> Iterator[Any]:
    """Batches the API created in [start, end], newest first, read page by page."""
    try:
        for batch in _bounded(deadline).messages.batches.list(limit=LIST_PAGE):
            created = batch.created_at.timestamp()
            if created < start:
                return
            if created <= end:
                yield batch
    except (anthropic.AnthropicError, httpx.HTTPError) as exc:
        raise _sorted(exc) from exc


def custom_ids(batch_id: str, deadline: float | None = None) -> Iterator[str]:
    """The custom_ids in an ended batch's results, to tell whose batch it is."""
    for line in results(batch_id, deadline=deadline):
        yield str(line.get("custom_id"))


def results(batch_id: str, skip: int = 0, deadline: float | None = None) -> Iterator[dict[str, Any]]:
    """The result lines of an ended batch as plain dicts, streamed, the first `skip` passed over."""
    try:
        stream = _bounded(deadline).messages.batches.results(batch_id)
        for n, line in enumerate(stream):
            if n >= skip:
                # JSON mode: a message's datetimes (container.expires_at) become strings here, not
                # an error where the line is stored.
                yield line.to_dict(mode="json")
    except (anthropic.AnthropicError, httpx.HTTPError) as exc:
        # (A batch the API shows without a `results_url` yet raises a bare AnthropicError.)
        raise _sorted(exc) from exc


def cancel(batch_id: str, deadline: float | None = None) -> Any:
    return _call(_bounded(deadline).messages.batches.cancel, batch_id)


def message(
    params: dict[str, Any],
    deadline: float,
    headers: Mapping[str, str] | None = None,
    api: anthropic.Anthropic | None = None,
) -> dict[str, Any]:
    """One realtime Messages API call, at list price, through `api` (the key's client by default).
    No SDK retry: a 429/529 comes back at once with its retry-after (`retry_after`), for the caller
    to wait out or hand back to its queue; the read may take as long as `deadline` allows (a long
    answer is generated before it is sent)."""
    left = max(1.0, deadline - clock.now())
    timeout = httpx.Timeout(left, connect=min(10.0, left))
    bounded = (api or client()).with_options(max_retries=0, timeout=timeout)
    # Parameters this SDK does not name yet still reach the API, as they would in a batch.
    known = {k: v for k, v in params.items() if k in _CREATE_PARAMS}
    extra = {k: v for k, v in params.items() if k not in _CREATE_PARAMS}
    try:
        answer = _call(
            bounded.messages.create,
            **known,
            **({"extra_body": extra} if extra else {}),
            **({"extra_headers": dict(headers)} if headers else {}),
        )
    except AccountError as exc:
        if _unknown(exc.__cause__):
            # An uncoded 5xx the API says not to retry says no more of whether the call ran.
            raise OutcomeUnknownError(f"realtime call unanswered: {exc}") from exc
        raise
    except TransientError as exc:
        if isinstance(exc, NotAcceptedError) or _never_sent(exc):
            raise
        # As with a create: a 5xx, a reset or a read timeout says nothing of whether the API ran
        # the call and billed it, and no key lets us ask. It is never sent again blindly.
        raise OutcomeUnknownError(f"realtime call unanswered: {exc}") from exc
    return answer.to_dict(mode="json")


def _never_sent(exc: BaseException | None) -> bool:
    """Whether a failure happened before a connection was made, so the request never left."""
    while exc is not None:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


_NOT_PARAMS = frozenset({"self", "extra_headers", "extra_query", "extra_body", "timeout", "stream"})


def _named(method: Any) -> frozenset[str]:
    return frozenset(inspect.signature(method).parameters) - _NOT_PARAMS


_CREATE_PARAMS = _named(anthropic.resources.Messages.create)
# What a count takes, as the SDK names it (output_config, cache_control, speed... change the count).
COUNTED_FIELDS = _named(anthropic.resources.Messages.count_tokens)


def count_tokens(
    params: dict[str, Any], deadline: float | None = None, headers: Mapping[str, str] | None = None
) -> int:
    """The input tokens of a request, counted by the API (free, rate-limited on its own)."""
    fields = {k: v for k, v in params.items() if k in COUNTED_FIELDS}
    extra = {"extra_headers": dict(headers)} if headers else {}
    return int(_call(_bounded(deadline).messages.count_tokens, **fields, **extra).input_tokens)


def retry_after(exc: BaseException) -> float | None:
    """The wait a refused call's answer asks for, if it names one."""
    return _retry_after(exc.__cause__ if exc.__cause__ is not None else exc)
