"""The failures the relay tells apart, and the one place that sorts exceptions into them.

Names matter: Step Functions retries on the exception class name (`TransientError`), and the
buffer lets SQS redeliver only what may succeed on a later try.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

T = TypeVar("T")

_RETRYABLE_AWS = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "TransactionConflictException",
        "SlowDown",
        "KMSThrottlingException",
    }
)


class RelayError(Exception):
    """Base of the relay's own errors."""


class TransientError(RelayError):
    """May succeed if tried again later: throttling, 5xx, a broken connection."""


class ApiAccessError(RelayError):
    """The Anthropic key was refused (401/403): retrying cannot help, an operator must act."""


class BatchTooLargeError(RelayError):
    """The API refused a batch as too large (413): split it and try again."""


class BatchRefusedError(RelayError):
    """The API refused a batch outright (a definitive 4xx): nothing was created. Splitting it finds
    the request(s) at fault; a lone refused request is answered with the API's message."""


class AccountError(RelayError):
    """The API refused the account, not the request (billing, credit, a spending limit): the
    requests wait in their tier, which pauses, and are never answered for it too early."""


class NotAcceptedError(TransientError):
    """The API said it did not process the call (429 or 529): nothing was created; try later."""


class OutcomeUnknownError(TransientError):
    """A create whose answer was lost (timeout, reset, any 5xx): the batch may exist. Never sent
    again blindly; reconciling with the API's list of batches finds it or proves it absent."""


class FunctionKilled(BaseException):
    """Raised by fault tests to model a function dying mid-call; no `except Exception` stops it."""


# A rejection's reason travels in a log line, an item and a completion: it stays short whatever
# the caller sent.
MAX_REASON_BYTES = 1024


def excerpt(value: str, limit: int = 40, quote: bool = True) -> str:
    """A short, escaped (ASCII) excerpt of caller input, for a reason or a log line."""
    shown = ascii(value[:limit])[1:-1]
    more = f"... ({len(value):,} chars)" if len(value) > limit else ""
    return f"'{shown}'{more}" if quote else f"{shown}{more}"


def bounded(reason: str, limit: int = MAX_REASON_BYTES) -> str:
    if len(reason.encode("utf-8", "surrogatepass")) <= limit:
        return reason
    cut = reason.encode("utf-8", "surrogatepass")[: limit - 3].decode("utf-8", "ignore")
    return cut + "..."


class RejectedRequest(RelayError):
    """A request message that can never be processed; the caller gets a `rejected` completion.
    Its reason names the field and quotes at most a short excerpt; the whole is at most 1 KB."""

    def __init__(self, reason: str, request_id: str | None = None):
        reason = bounded(ascii(reason)[1:-1] if not reason.isascii() else reason)
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id


def classify(exc: BaseException) -> BaseException:
    """Map a library exception to the relay's own kind, so callers decide on one vocabulary."""
    if isinstance(exc, RelayError):
        return exc
    if type(exc).__module__.split(".")[0] == "anthropic":
        kind = _anthropic(exc)
        if kind is not None:
            return kind
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _RETRYABLE_AWS or status >= 500:
            return TransientError(f"AWS {code or status}")
    if type(exc).__module__.split(".")[0] in ("httpx", "httpx2"):
        return TransientError(f"Anthropic stream broke: {type(exc).__name__}")
    if isinstance(exc, BotoCoreError):
        return TransientError(f"AWS client: {type(exc).__name__}")
    return exc


def _anthropic(exc: BaseException) -> BaseException | None:
    # Imported here: only an exception of the SDK gets this far, so the SDK is loaded already,
    # and the buffer, which never calls the API, does not load it (about 50 MB) at all.
    import anthropic

    if isinstance(exc, anthropic.AuthenticationError | anthropic.PermissionDeniedError):
        return ApiAccessError(f"Anthropic refused the API key: {exc.status_code}")
    if isinstance(exc, anthropic.APIStatusError) and exc.status_code == 413:
        return BatchTooLargeError(str(exc))
    if isinstance(exc, anthropic.APIStatusError) and exc.status_code in (429, 529):
        return NotAcceptedError(f"Anthropic answered {exc.status_code}")
    if isinstance(exc, anthropic.APIStatusError) and (
        exc.status_code >= 500 or exc.status_code in (408, 409)
    ):
        return TransientError(f"Anthropic answered {exc.status_code}")
    if isinstance(exc, anthropic.APIStatusError) and _account_level(exc):
        return AccountError(f"Anthropic refused the account ({exc.status_code}): {_api_message(exc)}")
    if isinstance(exc, anthropic.APIStatusError) and 400 <= exc.status_code < 500:
        return BatchRefusedError(f"Anthropic answered {exc.status_code}: {_api_message(exc)}")
    if isinstance(exc, anthropic.APIConnectionError):
        return TransientError(f"Anthropic unreachable: {type(exc).__name__}")
    return None


def is_transient(exc: BaseException) -> bool:
    return isinstance(classify(exc), TransientError)


def insist(call: Callable[[], T], tries: int = 4, wait: float = 0.2) -> T:
    """Make a write that must follow a publish, trying a transient failure again at once: every
    try lost here is a completion a retry would publish twice."""
    for n in range(tries):
        try:
            return call()
        except Exception as exc:
            if n == tries - 1 or not is_transient(exc):
                raise
            time.sleep(wait * 2**n)
    raise AssertionError("unreachable")


@contextmanager
def surfacing() -> Iterator[None]:
    """Around a handler's body: every transient fault, AWS's or Anthropic's, leaves the function as
    `TransientError`, the one name the state machine retries; anything else leaves as it is."""
    try:
        yield
    except Exception as exc:
        kind = classify(exc)
        if isinstance(kind, TransientError) and type(kind) is not TransientError:
            # Step Functions matches the error's class name exactly, never a parent's.
            raise TransientError(str(kind)) from exc
        if kind is exc:
            raise
        raise kind from exc


# What the API says when the account, not the request, is at fault.
ACCOUNT_MESSAGE = re.compile(r"credit balance|billing|usage limit|spend(ing)? limit", re.IGNORECASE)


def account_level(error_type: str, message: str) -> bool:
    """An error that says the account, not the request, is at fault."""
    return error_type in ("billing_error", "authentication_error", "permission_error") or (
        error_type == "invalid_request_error" and bool(ACCOUNT_MESSAGE.search(message))
    )


def _account_level(exc: Any) -> bool:
    body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error")
    kind = str(inner.get("type") or "") if isinstance(inner, dict) else ""
    return exc.status_code == 402 or kind == "billing_error" or account_level(kind, _api_message(exc))


def _api_message(exc: Any) -> str:
    body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error")
    found = inner.get("message") if isinstance(inner, dict) else body.get("message")
    return str(found or exc.message)[:500]
