"""The emulator's answers and the bodies it accepts, held to the SDK's own types, strictly.

The SDK's models take unknown keys silently and read missing optional ones as None, so a response
that drifted from the API would still parse. Here every answer is validated with pydantic (not the
SDK's lenient `construct`) and walked with its type (`relay_local.contract`): a key the type does not
declare is drift.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.pagination import SyncPage
from anthropic.types import Message, MessageTokensCount
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from anthropic.types.messages import DeletedMessageBatch, MessageBatch, MessageBatchIndividualResponse
from anthropic.types.messages.batch_create_params import BatchCreateParams
from anthropic.types.shared import ErrorDetails, ErrorResponse
from relay_local.contract import drift, invalid, undeclared
from relay_local.emulator import Emulator, EmulatorServer, SimClock

KEY = {"x-api-key": "k", "anthropic-version": "2026-10-21", "content-type": "application/json"}


def strict(kind: Any, data: Any) -> None:
    """`data` is what `kind` says, with nothing more."""
    problems = drift(kind, data)
    assert not problems, f"what the SDK's {kind} does not say: {problems}"


def error_body(data: dict[str, Any]) -> None:
    """An error envelope: ErrorResponse, whose error objects declare no `details`; the SDK declares
    those apart (`ErrorDetails`, read by its exceptions), so they are checked as that."""
    data = json.loads(json.dumps(data))
    details = data["error"].pop("details", None)
    strict(ErrorResponse, data)
    if details is not None:
        strict(ErrorDetails, details)


@pytest.fixture
def clock() -> SimClock:
    return SimClock(start=1_800_000_000.0)


@pytest.fixture
def emu(clock: SimClock) -> Emulator:
    return Emulator(latency_seconds=60, clock=clock, seed=5, cancel_seconds=5)


def call(
    emu: Emulator, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    raw = b"" if body is None else json.dumps(body).encode()
    status, _, payload = emu.handle(method, path, KEY | (headers or {}), raw)
    if isinstance(payload, Iterator):
        return status, [json.loads(line) for line in b"".join(payload).splitlines()]
    return status, json.loads(payload)


def params(text: str = "Summarise this ticket.", **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": text}],
    } | extra


CACHED = [
    {"type": "text", "text": "rules " * 400, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    {"type": "text", "text": "style " * 200, "cache_control": {"type": "ephemeral"}},
]
# One request of each kind of answer a batch gives.
REQUESTS = [
    {"custom_id": "plain", "params": params()},
    {"custom_id": "cached", "params": params(system=CACHED)},
    {"custom_id": "box", "params": params("[[emulate:container]] [[emulate:web_search:2]]")},
    {"custom_id": "long", "params": params("[[emulate:long]]", max_tokens=20)},
    {"custom_id": "errored", "params": params("[[emulate:errored:overloaded_error]]")},
    {"custom_id": "invalid", "params": params(max_tokens=0)},
    {"custom_id": "expired", "params": params("[[emulate:expired]]")},
    {"custom_id": "canceled", "params": params("[[emulate:canceled]]")},
]


def test_batches_and_their_results_are_what_the_sdk_declares(emu: Emulator, clock: SimClock) -> None:
    strict(BatchCreateParams, {"requests": REQUESTS})
    status, made = call(emu, "POST", "/v1/messages/batches", {"requests": REQUESTS})
    assert status == 200 and made["processing_status"] == "in_progress"
    strict(MessageBatch, made)
    _, other = call(emu, "POST", "/v1/messages/batches", {"requests": REQUESTS[:1]})
    _, canceling = call(emu, "POST", f"/v1/messages/batches/{other['id']}/cancel")
    assert canceling["processing_status"] == "canceling"
    strict(MessageBatch, canceling)
    clock.advance(61)
    for batch_id in (made["id"], other["id"]):
        _, ended = call(emu, "GET", f"/v1/messages/batches/{batch_id}")
        assert ended["processing_status"] == "ended" and ended["results_url"]
        strict(MessageBatch, ended)
    _, page = call(emu, "GET", "/v1/messages/batches?limit=1")
    assert page["has_more"] and len(page["data"]) == 1
    strict(SyncPage[MessageBatch], page)
    _, empty = call(emu, "GET", f"/v1/messages/batches?after_id={made['id']}")
    strict(SyncPage[MessageBatch], empty)
    status, lines = call(emu, "GET", f"/v1/messages/batches/{made['id']}/results")
    by_id = {line["custom_id"]: line for line in lines}
    kinds = {cid: line["result"]["type"] for cid, line in by_id.items()}
    assert set(kinds.values()) == {"succeeded", "errored", "expired", "canceled"}
    for line in lines:
        strict(MessageBatchIndividualResponse, line)
        if line["result"]["type"] == "errored":
            error_body(line["result"]["error"])
    box = by_id["box"]["result"]["message"]
    assert box["container"]["expires_at"] and box["usage"]["server_tool_use"]["web_search_requests"] == 2
    cache = by_id["cached"]["result"]["message"]["usage"]["cache_creation"]
    assert cache == {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 600}
    assert by_id["invalid"]["result"]["error"]["error"]["type"] == "invalid_request_error"
    _, deleted = call(emu, "DELETE", f"/v1/messages/batches/{made['id']}")
    strict(DeletedMessageBatch, deleted)


def test_realtime_answers_and_counts_are_what_the_sdk_declares(emu: Emulator) -> None:
    bodies = [
        params(),
        params(system=CACHED),
        params(system=CACHED),  # read from the cache this time
        params("[[emulate:container]] [[emulate:web_search:3]]", max_tokens=5),
        params("[[emulate:long]]", max_tokens=12),
        params(max_tokens=0, inference_geo="us"),
    ]
    for body in bodies:
        strict(MessageCreateParamsNonStreaming, body)
        status, answer = call(emu, "POST", "/v1/messages", body)
        assert status == 200, answer
        strict(Message, answer)
        # What the API always sends, though the SDK's type lets it be absent.
        assert {"cache_creation", "service_tier", "inference_geo"} <= set(answer["usage"])
    counted = params(system=CACHED, tools=[{"name": "t", "input_schema": {"type": "object"}}])
    del counted["max_tokens"]
    status, count = call(emu, "POST", "/v1/messages/count_tokens", counted)
    assert status == 200
    strict(MessageTokensCount, count)


def test_errors_are_what_the_sdk_declares(emu: Emulator, clock: SimClock) -> None:
    answers = [
        call(emu, "GET", "/v1/messages/batches", headers={"anthropic-version": ""}),
        call(emu, "GET", "/v1/messages/batches", headers={"anthropic-version": "2099-01-01"}),
        call(emu, "POST", "/v1/messages", params(temperature=0.5)),
        call(emu, "POST", "/v1/messages", params(max_tokens=128_001)),
        call(emu, "POST", "/v1/messages/batches", {"requests": []}),
        call(emu, "GET", "/v1/messages/batches/msgbatch_missing"),
        call(emu, "GET", "/v1/complete"),
    ]
    for kind in ("overloaded_error", "api_error", "rate_limit_error", "timeout_error", "billing_error"):
        answers.append(call(emu, "POST", "/v1/messages", params(f"[[emulate:errored:{kind}]]")))
    status, _, body = emu.handle("GET", "/v1/messages/batches", {"anthropic-version": "2026-10-21"}, b"")
    answers.append((status, json.loads(body)))  # type: ignore[arg-type]
    emu.inject("GET", "/v1/messages/batches", 529)
    answers.append(call(emu, "GET", "/v1/messages/batches"))
    statuses = []
    for status, body in answers:
        statuses.append(status)
        error_body(body)
    assert statuses == [400, 400, 400, 400, 400, 404, 404, 529, 500, 429, 504, 402, 401, 529]


def test_an_oversize_body_is_the_one_error_type_the_sdk_does_not_declare(emu: Emulator) -> None:
    # The API answers 413 with `request_too_large`, which the SDK's ErrorObject union lacks.
    emu.max_bytes = 10
    status, body = call(emu, "POST", "/v1/messages/batches", {"requests": REQUESTS})
    assert status == 413 and body["error"]["type"] == "request_too_large"
    with pytest.raises(AssertionError, match="request_too_large"):
        error_body(body)
    body["error"]["type"] = "invalid_request_error"
    error_body(body)  # the rest of it is the envelope


def test_over_http_the_sdk_gets_the_same_shapes(emu: Emulator, clock: SimClock) -> None:
    with EmulatorServer(emu) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0)
        answer = client.messages.with_raw_response.create(**params("[[emulate:container]]"))  # type: ignore[arg-type]
        strict(Message, json.loads(answer.http_response.content))
        made = client.messages.batches.create(requests=REQUESTS[:4])  # type: ignore[arg-type]
        clock.advance(61)
        raw = client.messages.batches.with_raw_response.retrieve(made.id)
        strict(MessageBatch, json.loads(raw.http_response.content))
        ended = client.messages.batches.retrieve(made.id)
        assert ended.results_url
        request = urllib.request.Request(ended.results_url, headers=KEY)
        with urllib.request.urlopen(request) as response:
            lines = response.read().splitlines()
        assert len(lines) == 4
        for line in lines:
            strict(MessageBatchIndividualResponse, json.loads(line))


@pytest.mark.parametrize(
    ("kind", "data", "where"),
    [
        (MessageTokensCount, {"input_tokens": 3, "output_tokens": 1}, "$.output_tokens"),
        (
            Message,
            {
                "id": "m",
                "type": "message",
                "role": "assistant",
                "model": "claude-haiku-4-5",
                "content": [{"type": "text", "text": "hi", "extra": 1}],
                "usage": {
                    "input_tokens": 1,
                    "output_tokens": 1,
                    "cache_creation": {
                        "ephemeral_5m_input_tokens": 0,
                        "ephemeral_1h_input_tokens": 0,
                        "ephemeral_2h": 0,
                    },
                },
            },
            "$.content[0].extra",
        ),
        (
            MessageBatchIndividualResponse,
            {
                "custom_id": "a",
                "result": {
                    "type": "errored",
                    "error": {"type": "error", "error": {"type": "api_error", "message": "x", "code": 1}},
                },
            },
            "$.result.error.error.code",
        ),
        (
            BatchCreateParams,
            {"requests": [{"custom_id": "a", "params": params(temperature=1)}]},
            "$.requests[0].params.temperature",
        ),
    ],
)
def test_the_check_finds_undeclared_keys_at_any_depth(kind: Any, data: Any, where: str) -> None:
    assert invalid(kind, data) is None
    assert where in undeclared(kind, data)
    with pytest.raises(AssertionError):
        strict(kind, data)


def test_the_check_finds_missing_required_keys() -> None:
    with pytest.raises(AssertionError, match="request_counts"):
        strict(
            MessageBatch,
            {
                "id": "b",
                "type": "message_batch",
                "processing_status": "ended",
                "created_at": "2026-01-01T00:00:00Z",
                "expires_at": "2026-01-02T00:00:00Z",
            },
        )
    usage = {"input_tokens": 1, "output_tokens": 1, "server_tool_use": {"web_search_requests": 1}}
    with pytest.raises(AssertionError, match="web_fetch_requests"):
        strict(
            Message,
            {"id": "m", "type": "message", "role": "assistant", "model": "m", "content": [], "usage": usage},
        )


def test_the_emulator_records_what_a_body_sends_beyond_the_sdks_types(emu: Emulator) -> None:
    old = {"anthropic-version": "2023-06-01"}
    typo = [{"custom_id": "typo", "params": params(temprature=0)}, {"custom_id": "fine", "params": params()}]
    assert call(emu, "POST", "/v1/messages/batches", {"requests": typo})[0] == 200
    assert emu.drift == ["create typo (2026-10-21): $.temprature: not declared"]
    emu.drift.clear()
    # Under 2023-06-01 sampling params are the API's own; a key is still checked below them.
    sampled = params(temperature=0, top_p=0.9, top_k=5)
    one = {"requests": [{"custom_id": "t", "params": sampled}]}
    assert call(emu, "POST", "/v1/messages/batches", one, old)[0] == 200
    assert call(emu, "POST", "/v1/messages", sampled, old)[0] == 200
    assert emu.drift == []
    block = {"role": "user", "content": [{"type": "text", "text": "hi", "colour": "red"}]}
    assert call(emu, "POST", "/v1/messages", params(temperature=0, messages=[block]), old)[0] == 200
    counted = {"model": "claude-haiku-4-5", "messages": [block], "max_tokens": 5}
    assert call(emu, "POST", "/v1/messages/count_tokens", counted)[0] == 200
    assert emu.drift == [
        "message (2023-06-01): $.messages[0].content[0].colour: not declared",
        "count_tokens (2026-10-21): $.max_tokens: not declared",
        "count_tokens (2026-10-21): $.messages[0].content[0].colour: not declared",
    ]


def test_bodies_the_emulator_refuses_are_not_drift(emu: Emulator) -> None:
    # Errors the client sees already: a 400, and a batch request that ends errored.
    assert call(emu, "POST", "/v1/messages", params(temperature=0.5))[0] == 400
    bad = [{"custom_id": "zero", "params": params(max_tokens=0, temprature=0)}]
    assert call(emu, "POST", "/v1/messages/batches", {"requests": bad})[0] == 200
    assert emu.drift == []


def test_a_large_batch_is_checked_in_a_spread_sample_and_by_shape(emu: Emulator) -> None:
    many = [{"custom_id": f"r{n}", "params": params(f"ticket {n}")} for n in range(2000)]
    for n in (0, 1000, 1003):
        many[n]["params"]["temprature"] = 0
    assert call(emu, "POST", "/v1/messages/batches", {"requests": many})[0] == 200
    # Every 4th of 2,000 is checked: r1003 is not, and r0 and r1000 share a shape, checked once.
    assert emu.drift == [
        "create r0 (2026-10-21): $.temprature: not declared",
        "create r1000 (2026-10-21): $.temprature: not declared",
    ]
