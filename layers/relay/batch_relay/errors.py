"""The failures the relay tells apart, and the one place that sorts exceptions into them.

Names matter: Step Functions retries on the exception class name (`TransientError`), and the
buffer lets SQS redeliver only what may succeed on a later try.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

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
    """Base of the relay's own errors. One made from an API answer keeps that answer's error
    type and `error.details.error_code`, so that what is told about it says what the API said."""

    api_type: str | None = None
    code: str | None = None


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
    """The API refused the account, not the request (billing, credit, a spend cap, an organization
    on hold, a workspace's settings or encryption key): the requests wait in their tier, which
    pauses, and are never answered for it too early."""


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
        return _anthropic(exc)
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


# `error.details.error_code` values that name the organization, its workspace (settings, encryption
# key), the key's standing in it, its billing or a spend cap, each read from its type's docstring in
# the SDK: no change to the request helps, and the tier waits for an operator or the cap to lift.
ACCOUNT_CODES = frozenset(
    {
        "organization_on_hold",
        "organization_type_not_supported",
        "parent_organization_required",
        "cmek_key_disabled",
        "cmek_key_network_blocked",
        "cmek_key_unreachable",
        "cmek_context_unavailable",
        "claude_code_key_creator_not_member",
        "workspace_human_review_disabled",
        "enforced_spend_limit_reached",
        "contract_spend_limit_reached",
        "claude_tag_writes_not_enabled",
        "compliance_configuration_restricted",
        "environment_create_disabled",
        "environment_update_disabled",
        "spend_limits_admin_api_writes_not_enabled",
    }
)
# Codes about the one request, not the key or the account: its user profile, the organization
# linked to that profile (its billing, its spend limit), a custom skill it names. Its neighbours
# go on; holding the tier for it would hold them too, for as long as it keeps coming back.
REQUEST_CODES = frozenset(
    {
        "user_profile_not_billable",
        "user_profile_billing_not_authorized",
        "linked_organization_billing_unavailable",
        "linked_organization_spend_limit_reached",
        "skill_read_blocked_undecryptable",
    }
)
# Statuses the SDK would try again; the API's `x-should-retry: false` says not to.
RETRIED = frozenset({408, 409, 429, *range(500, 600)})
# What an uncoded 400 said before codes existed: still the account's.
ACCOUNT_WORDS = re.compile(r"credit balance|billing|usage limit|spend(ing)? limit", re.IGNORECASE)


class Rule(NamedTuple):
    """One row of the table: None matches anything."""

    kind: type[RelayError]
    status: frozenset[int] | None = None
    type: str | None = None
    code: frozenset[str] | None = None
    retry: bool | None = None  # the `x-should-retry` header
    words: re.Pattern[str] | None = None  # in the message of an answer with no code

    def matches(
        self, status: int, type_: str | None, code: str | None, retry: bool | None, message: str
    ) -> bool:
        return (
            (self.status is None or status in self.status)
            and (self.type is None or self.type == type_)
            and (self.code is None or code in self.code)
            and (self.retry is None or self.retry == retry)
            and (self.words is None or (code is None and bool(self.words.search(message))))
        )


# What an error answer means to the relay: the first row that matches decides. An unknown code
# reads as its bare status, as the SDK advises.
RULES = (
    Rule(AccountError, code=ACCOUNT_CODES),
    Rule(BatchRefusedError, code=REQUEST_CODES),
    Rule(BatchTooLargeError, status=frozenset({413})),
    Rule(AccountError, status=RETRIED, retry=False),
    Rule(NotAcceptedError, status=frozenset({429, 529})),
    Rule(TransientError, retry=True),
    Rule(ApiAccessError, status=frozenset({401, 403})),
    Rule(AccountError, status=frozenset({402})),
    Rule(AccountError, type="billing_error"),
    Rule(AccountError, status=frozenset({400}), words=ACCOUNT_WORDS),
    Rule(TransientError, status=RETRIED),
    Rule(BatchRefusedError, status=frozenset(range(400, 500))),
    Rule(TransientError),
)

# The status each error type comes with (the API's documented pairs), so that a result line, which
# carries the type alone, is read by the same table. The last two are the relay's own.
TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
STATUS_OF_TYPE = {t: s for s, t in TYPES_BY_STATUS.items()} | {"results_unavailable": 503}


def kind_of(
    status: int, type_: str | None, code: str | None, retry: bool | None, message: str
) -> type[RelayError]:
    return next(r.kind for r in RULES if r.matches(status, type_, code, retry, message))


def of_line(error_type: str, error_code: str | None, message: str) -> type[RelayError]:
    """What an errored result line's error means. A type the table does not know is the
    request's own (final), as the relay's own error types are."""
    return kind_of(STATUS_OF_TYPE.get(error_type, 400), error_type, error_code, None, message)


def _anthropic(exc: BaseException) -> RelayError:
    # Imported here: only an exception of the SDK gets this far, so the SDK is loaded already,
    # and the buffer, which never calls the API, does not load it (about 50 MB) at all.
    import anthropic
    from anthropic.lib.credentials import WorkloadIdentityError

    if isinstance(exc, anthropic.APIStatusError):
        retry = {"true": True, "false": False}.get(exc.response.headers.get("x-should-retry", ""))
        message = _api_message(exc)
        found = kind_of(exc.status_code, exc.type, exc.error_code, retry, message)
        said = f"{exc.status_code}" + (f" {exc.error_code}" if exc.error_code else "")
        text = f"Anthropic answered {said}: {message}"
        if found is ApiAccessError:
            text = f"Anthropic refused the API key: {said}"
        elif found is AccountError:
            text = f"Anthropic refused the account ({said}): {message}"
        kind = found(text)
        kind.api_type, kind.code = exc.type, exc.error_code
        return kind
    if isinstance(exc, anthropic.CredentialsError | WorkloadIdentityError):
        return ApiAccessError(f"Anthropic credentials unavailable: {type(exc).__name__}")
    # A broken connection, a timeout, an answer of the wrong shape, the SDK's own RetryableError,
    # or `results` asked of a batch the API shows without a `results_url` yet: a later try may do.
    return TransientError(f"Anthropic: {type(exc).__name__}: {str(exc)[:200]}")


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


def _api_message(exc: Any) -> str:
    body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error")
    found = inner.get("message") if isinstance(inner, dict) else body.get("message")
    return str(found or exc.message)[:500]
