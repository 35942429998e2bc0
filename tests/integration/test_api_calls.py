"""What the relay's calls put on the wire, read by a bare HTTP server standing in for the API: the
headers a request needs, and every field the SDK's token count takes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from batch_relay import batches, clock

pytestmark = pytest.mark.integration

ANSWERS = {
    "/v1/messages/count_tokens": {"input_tokens": 42},
    "/v1/messages": {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    },
}


@contextmanager
def _api(handler: type[BaseHTTPRequestHandler], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A bare HTTP server on loopback standing in for the API, the SDK pointed at it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.delenv("API_KEY_SECRET_ARN", raising=False)
    batches.reset()
    try:
        yield
    finally:
        server.shutdown()
        batches.reset()


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, dict[str, str], Any]]]:
    seen: list[tuple[str, dict[str, str], Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            answer = json.dumps(ANSWERS[self.path]).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    with _api(Handler, monkeypatch):
        yield seen


PARAMS = {
    "model": "claude-haiku-4-5",
    "max_tokens": 100,
    "temperature": 0,
    "messages": [{"role": "user", "content": "Classify: spam or not?"}],
    "system": [{"type": "text", "text": "You classify."}],
    "output_config": {"effort": "low"},
    "cache_control": {"type": "ephemeral"},
    "speed": "fast",
    "metadata": {"user_id": "u1"},
}
NEEDS = {"api_version": "2023-06-01", "betas": ["output-300k-2026-03-24"]}


def test_a_token_count_sends_every_field_that_changes_the_count_and_the_request_headers(wire):
    # When: a request is counted with its headers
    assert batches.count_tokens(PARAMS, headers=batches.headers_for(NEEDS, realtime=True)) == 42

    # Then: the count carries what the SDK's count takes, not what it refuses, under the request's version
    [(path, headers, body)] = wire
    assert path == "/v1/messages/count_tokens"
    assert body == {
        k: PARAMS[k] for k in ("model", "messages", "system", "output_config", "cache_control", "speed")
    }
    assert headers["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in headers  # output-300k exists in batches only


def test_a_realtime_call_sends_the_request_whole_under_its_headers(wire):
    # When: a request is answered in realtime with its headers
    answer = batches.message(
        PARAMS, deadline=clock.now() + 30, headers=batches.headers_for(NEEDS, realtime=True)
    )

    # Then: every param went (sampling ones included), under the request's version and betas
    [(path, headers, body)] = wire
    assert path == "/v1/messages" and body == PARAMS
    assert headers["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in headers  # output-300k exists in batches only
    assert answer["content"][0]["text"] == "ok"


def test_calls_without_needs_go_under_the_sdks_own_version(wire):
    batches.count_tokens(
        {"model": "claude-haiku-4-5", "messages": PARAMS["messages"]}, headers=batches.headers_for({})
    )
    [(_, headers, _)] = wire
    assert headers["anthropic-version"] == "2026-10-21" and "anthropic-beta" not in headers


def test_a_call_that_never_left_may_be_tried_again_but_a_lost_answer_may_not(monkeypatch):
    import socket

    from batch_relay.errors import OutcomeUnknownError, TransientError

    # Given: nothing listens where the API should be (a refused connection: the call never left)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    batches.reset()
    try:
        # Then: the failure is transient, not an unknown outcome the caller must not resend
        with pytest.raises(TransientError) as refused:
            batches.message(PARAMS, deadline=clock.now() + 5)
        assert not isinstance(refused.value, OutcomeUnknownError)
    finally:
        batches.reset()


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The API answering every call with the error `answer` holds (status, type, code), marked
    `x-should-retry: false`, as when it may have acted before the answer was made."""
    answer: dict[str, Any] = {"status": 500, "type": "api_error", "code": None}

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            error: dict[str, Any] = {"type": answer["type"], "message": "boom"}
            if answer["code"]:
                error["details"] = {"error_code": answer["code"]}
            body = json.dumps({"type": "error", "error": error}).encode()
            self.send_response(answer["status"])
            self.send_header("content-type", "application/json")
            self.send_header("x-should-retry", "false")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with _api(Refuse, monkeypatch):
        yield answer


def test_a_realtime_5xx_the_api_says_not_to_retry_is_an_unknown_outcome(refusing):
    from batch_relay.errors import OutcomeUnknownError

    # Given: the API answers 500, marked not to be retried, after it may have run the call
    # Then: the outcome is unknown (a new attempt at most), not an account hold that resends it
    with pytest.raises(OutcomeUnknownError):
        batches.message(PARAMS, deadline=clock.now() + 5)


@pytest.mark.parametrize("code", [None, "change_outcome_unknown"])
def test_a_create_answered_5xx_not_to_retry_is_reconciled_whatever_code_it_names(refusing, code):
    from batch_relay.errors import OutcomeUnknownError

    # Given: a create answered 503 marked not to be retried, naming a code the relay does not know
    refusing.update(status=503, code=code)
    body = json.dumps({"requests": [{"custom_id": "a", "params": PARAMS}]}).encode()

    # Then: the batch may exist: reconciled, never released and created again
    with pytest.raises(OutcomeUnknownError):
        batches.create_from([body], len(body), deadline=clock.now() + 30)
