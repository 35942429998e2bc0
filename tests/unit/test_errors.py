"""`errors.classify` against the SDK's own exceptions, built from real HTTP answers by the SDK's own
status-error factory: what the API says (status, `error.type`, `error.details.error_code`,
`x-should-retry`) decides the relay's kind, and every exception the SDK can raise has one."""

from __future__ import annotations

import inspect
from typing import Any

import anthropic
import anthropic.lib.credentials
import httpx2
import pytest
from anthropic import _error_classes, _exceptions
from batch_relay import errors
from batch_relay.errors import (
    AccountError,
    ApiAccessError,
    BatchRefusedError,
    BatchTooLargeError,
    NotAcceptedError,
    RelayError,
    TransientError,
    classify,
)

KINDS = (AccountError, ApiAccessError, BatchRefusedError, BatchTooLargeError, TransientError)
REQUEST = httpx2.Request("POST", "https://api.anthropic.com/v1/messages/batches")


def answer(status: int, kind: str, code: str | None = None, retry: str | None = None, message: str = "x"):
    """The SDK's exception for an error answer, as the client makes it from the response."""
    inner: dict[str, Any] = {"type": kind, "message": message}
    if code:
        inner["details"] = {"error_code": code}
    headers = {"request-id": "req_1"} | ({"x-should-retry": retry} if retry else {})
    body = {"type": "error", "error": inner, "request_id": "req_1"}
    response = httpx2.Response(status, json=body, headers=headers, request=REQUEST)
    return anthropic.Anthropic(api_key="x")._make_status_error_from_response(response)


ACCOUNT_400 = [
    "organization_on_hold",
    "cmek_key_disabled",
    "cmek_key_network_blocked",
    "claude_code_key_creator_not_member",
    "workspace_human_review_disabled",
    "organization_type_not_supported",
    "parent_organization_required",
]


@pytest.mark.parametrize("code", ACCOUNT_400)
def test_an_account_or_workspace_400_is_an_account_error_not_a_refused_batch(code):
    exc = answer(400, "invalid_request_error", code)
    assert exc.error_code == code  # the SDK read it: the answer is shaped as the API sends it
    assert isinstance(classify(exc), AccountError)


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (503, "api_error", "cmek_key_unreachable"),
        (503, "api_error", "cmek_context_unavailable"),
    ],
)
def test_billing_and_workspace_key_codes_on_other_statuses_are_account_errors(status, kind, code):
    assert isinstance(classify(answer(status, kind, code)), AccountError)


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (402, "billing_error", "linked_organization_billing_unavailable"),
        (402, "billing_error", "linked_organization_spend_limit_reached"),
        (400, "invalid_request_error", "skill_read_blocked_undecryptable"),
    ],
)
def test_codes_about_the_requests_own_profile_or_skill_are_the_requests_fault(status, kind, code):
    # The SDK's docstrings: the organization linked to *the request's* user profile; a skill the
    # request names. Holding the tier would hold every neighbour for it.
    assert isinstance(classify(answer(status, kind, code)), BatchRefusedError)


@pytest.mark.parametrize("code", ["enforced_spend_limit_reached", "contract_spend_limit_reached"])
def test_a_spend_cap_429_is_an_account_hold_not_a_rate_limit(code):
    exc = answer(429, "rate_limit_error", code, retry="false")
    kind = classify(exc)
    assert isinstance(kind, AccountError) and not isinstance(kind, TransientError)
    assert not errors.is_transient(exc)


@pytest.mark.parametrize("status", [429, 500, 503, 529])
def test_x_should_retry_false_is_never_transient(status):
    kind = classify(answer(status, "api_error", retry="false"))
    assert not isinstance(kind, TransientError)
    assert isinstance(kind, AccountError)


def test_a_ramp_limit_429_is_still_waited_out():
    assert isinstance(classify(answer(429, "rate_limit_error", "ramp_limit_exceeded")), NotAcceptedError)
    assert isinstance(classify(answer(429, "rate_limit_error")), NotAcceptedError)
    assert isinstance(classify(answer(529, "overloaded_error", retry="true")), NotAcceptedError)


@pytest.mark.parametrize("code", ["user_profile_not_billable", "user_profile_billing_not_authorized"])
def test_a_request_level_403_is_the_requests_fault_not_a_refused_key(code):
    kind = classify(answer(403, "permission_error", code))
    assert isinstance(kind, BatchRefusedError)
    assert (kind.api_type, kind.code) == ("permission_error", code)


def test_a_plain_403_still_reads_as_a_refused_key():
    assert isinstance(classify(answer(403, "permission_error")), ApiAccessError)
    assert isinstance(classify(answer(401, "authentication_error")), ApiAccessError)


def test_ordinary_answers_keep_their_kinds():
    assert isinstance(classify(answer(400, "invalid_request_error")), BatchRefusedError)
    assert isinstance(
        classify(answer(400, "invalid_request_error", "image_dimensions_too_large")), BatchRefusedError
    )
    assert isinstance(classify(answer(413, "request_too_large")), BatchTooLargeError)
    assert isinstance(classify(answer(500, "api_error")), TransientError)
    # Older wording, with no code: a credit balance or spend limit is still the account's.
    low = "Your credit balance is too low to access the Anthropic API."
    assert isinstance(classify(answer(400, "invalid_request_error", message=low)), AccountError)


def test_results_of_a_batch_without_results_url_is_transient():
    """`messages.batches.results` raises a bare AnthropicError when the batch has no results_url."""
    exc = anthropic.AnthropicError("No `results_url` for the given batch; Has it finished processing? ended")
    assert isinstance(classify(exc), TransientError)


@pytest.mark.parametrize(
    ("kind", "code", "expected"),
    [
        ("rate_limit_error", None, TransientError),
        ("timeout_error", None, TransientError),
        ("api_error", None, TransientError),
        ("overloaded_error", None, TransientError),
        ("invalid_request_error", None, BatchRefusedError),
        ("invalid_request_error", "organization_on_hold", AccountError),
        ("invalid_request_error", "workspace_human_review_disabled", AccountError),
        ("rate_limit_error", "enforced_spend_limit_reached", AccountError),
        ("permission_error", "user_profile_not_billable", BatchRefusedError),
        ("billing_error", None, AccountError),
        ("authentication_error", None, ApiAccessError),
        ("something_new", None, BatchRefusedError),
    ],
)
def test_a_result_lines_error_reads_by_the_same_table(kind, code, expected):
    assert issubclass(errors.of_line(kind, code, "x"), expected)


def _sdk_exceptions() -> list[type[BaseException]]:
    found: set[type[BaseException]] = set(_error_classes.ERROR_CLASSES.values())
    for module in (anthropic, _exceptions):
        for name in dir(module):
            value = getattr(module, name)
            if inspect.isclass(value) and issubclass(value, anthropic.AnthropicError):
                found.add(value)
    for module in (anthropic.types, anthropic.types.shared, anthropic.lib.credentials):
        for name in dir(module):
            value = getattr(module, name)
            if inspect.isclass(value) and issubclass(value, anthropic.AnthropicError):
                found.add(value)
    return sorted(found, key=lambda c: c.__name__)


def _instance(cls: type[BaseException]) -> BaseException:
    if issubclass(cls, anthropic.APIStatusError):
        status = next((s for (s, _), c in _error_classes.ERROR_CLASSES.items() if c is cls), None)
        status = status or int(getattr(cls, "status_code", 0) or 0) or 500
        code = next((k for (s, k), c in _error_classes.ERROR_CLASSES.items() if c is cls and k), None)
        exc = answer(status, errors.TYPES_BY_STATUS.get(status, "api_error"), code)
        assert isinstance(exc, cls) or cls is anthropic.APIStatusError or not code
        return exc if type(exc) is cls else cls("x", response=exc.response, body=exc.body)
    if issubclass(cls, anthropic.APITimeoutError):
        return cls(request=REQUEST)
    if issubclass(cls, anthropic.APIConnectionError):
        return cls(request=REQUEST)
    if issubclass(cls, anthropic.APIResponseValidationError):
        return cls(httpx2.Response(200, json={}, request=REQUEST), body={})
    if issubclass(cls, anthropic.APIError):
        return cls("x", REQUEST, body=None)
    return cls("x")


def test_every_exception_the_sdk_exports_maps_to_one_of_the_relays_kinds():
    classes = _sdk_exceptions()
    assert len(classes) > 100  # the per-code classes are in: the walk found them
    for cls in classes:
        kind = classify(_instance(cls))
        assert isinstance(kind, KINDS), f"{cls.__name__} -> {type(kind).__name__}"
        assert isinstance(kind, RelayError)
