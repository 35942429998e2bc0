"""The emulator through the real anthropic SDK over HTTP: it must behave like the service."""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
import time
import tracemalloc
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta

import anthropic
import pytest
from relay_local.emulator import Emulator, EmulatorServer, MessageCall, Sent, SimClock

pytestmark = pytest.mark.integration

# Older SDKs lack the precise classes; their parents are what those raise.
CONTENT_TOO_LARGE = getattr(anthropic, "ContentTooLargeError", anthropic.APIStatusError)
OVERLOADED = getattr(anthropic, "OverloadedError", anthropic.InternalServerError)


def req(cid, text="Summarise this ticket.", **params):
    return {
        "custom_id": cid,
        "params": {
            "model": "claude-haiku-4-5",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": text}],
        }
        | params,
    }


@pytest.fixture
def clock():
    return SimClock()


@pytest.fixture
def emu(clock):
    return Emulator(latency_seconds=60, clock=clock, seed=3)


@pytest.fixture
def client(emu):
    with EmulatorServer(emu) as server:
        yield anthropic.Anthropic(base_url=server.url, api_key="test-key", max_retries=0)


def test_lifecycle_counts_and_results(client, emu, clock):
    sent = [req(f"r{i}") for i in range(20)]
    sent += [
        req("bad-model", model="gpt-4"),
        req("forced-err", text="x [[emulate:errored:overloaded_error]]"),
        req("forced-exp", text="x [[emulate:expired]]"),
    ]
    batch = client.messages.batches.create(requests=sent)
    assert batch.id.startswith("msgbatch_") and batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 23 and batch.results_url is None
    with pytest.raises(anthropic.AnthropicError):
        list(client.messages.batches.results(batch.id))
    clock.advance(61)
    done = client.messages.batches.retrieve(batch.id)
    assert done.processing_status == "ended" and done.ended_at is not None
    # Absolute, as the API gives it: the SDK follows it as it is rather than joining it to base_url.
    assert done.results_url == f"{emu.url}/v1/messages/batches/{batch.id}/results"
    counts = done.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.expired) == (0, 20, 2, 1)
    results = list(client.messages.batches.results(batch.id))
    order = [r.custom_id for r in results]
    assert sorted(order) == sorted(r["custom_id"] for r in sent) and order != [r["custom_id"] for r in sent]
    by_id = {r.custom_id: r.result for r in results}
    assert by_id["bad-model"].error.error.type == "invalid_request_error"
    assert by_id["forced-err"].error.error.type == "overloaded_error"
    assert by_id["forced-exp"].type == "expired"
    message = by_id["r0"].message
    assert message.type == "message" and message.content[0].text
    assert 1 <= message.usage.output_tokens <= 100 and message.usage.input_tokens >= 1


def test_refusals_match_the_api(client, emu):
    with pytest.raises(anthropic.BadRequestError, match="duplicate"):
        client.messages.batches.create(requests=[req("a"), req("a")])
    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        client.messages.batches.create(requests=[req("has space")])
    with pytest.raises(anthropic.BadRequestError, match="stream"):
        client.messages.batches.create(requests=[req("s", stream=True)])
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("msgbatch_missing")
    emu.max_requests = 3
    with pytest.raises(CONTENT_TOO_LARGE) as too_many:
        client.messages.batches.create(requests=[req(f"n{i}") for i in range(4)])
    assert too_many.value.status_code == 413 and isinstance(too_many.value, anthropic.APIStatusError)
    assert too_many.value.body["error"]["type"] == "request_too_large"
    emu.max_requests, emu.max_bytes = 100_000, 2000
    with pytest.raises(CONTENT_TOO_LARGE) as too_big:
        client.messages.batches.create(requests=[req("big", text="x" * 3000)])
    assert too_big.value.status_code == 413
    # The connection survives an oversize body: the server read it to the end before answering.
    assert client.messages.batches.create(requests=[req("small")]).processing_status == "in_progress"
    assert emu.batch_ids() and len(emu.batch_ids()) == 1


def test_key_is_required(emu):
    emu.api_key = "right"
    with EmulatorServer(emu) as server:
        wrong = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            wrong.messages.batches.list()
        right = anthropic.Anthropic(base_url=server.url, api_key="right", max_retries=0)
        assert right.messages.batches.list().data == []


def test_injected_faults_and_retry_after(client, emu):
    emu.inject("POST", "/v1/messages/batches", 429, count=2, retry_after=0.001)
    retrying = client.with_options(max_retries=2)
    retrying.messages.batches.create(requests=[req("a")])
    assert emu.calls[("POST", "create")] == 3
    emu.inject("GET", "/v1/messages/batches", 500)
    with pytest.raises(anthropic.InternalServerError) as internal:
        client.messages.batches.list()
    assert internal.value.status_code == 500 and internal.value.body["error"]["type"] == "api_error"
    assert internal.value.request_id and internal.value.request_id.startswith("req_")
    emu.inject("GET", "/v1/messages/batches", 529)
    with pytest.raises(OVERLOADED) as overloaded:
        client.messages.batches.list()
    assert (
        overloaded.value.status_code == 529 and overloaded.value.body["error"]["type"] == "overloaded_error"
    )
    assert isinstance(overloaded.value, anthropic.InternalServerError)


def test_list_is_newest_first_and_pages(client, emu, clock):
    ids = []
    for i in range(5):
        ids.append(client.messages.batches.create(requests=[req(f"x{i}")]).id)
        clock.advance(1)
    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    rest = client.messages.batches.list(limit=10, after_id=page.last_id)
    assert [b.id for b in rest.data] == ids[::-1][2:]


def test_cancel_then_delete(client, emu, clock):
    batch = client.messages.batches.create(requests=[req(f"c{i}") for i in range(40)])
    clock.advance(30)  # half of the latency: about half the requests are processed
    assert client.messages.batches.cancel(batch.id).processing_status == "canceling"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.delete(batch.id)
    clock.advance(1)
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.request_counts.canceled > 0
    kinds = {r.result.type for r in client.messages.batches.results(batch.id)}
    assert kinds == {"succeeded", "canceled"}
    assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


def test_a_batch_older_than_a_day_expires_what_is_left(clock):
    emu = Emulator(latency_seconds=48 * 3600, clock=clock)
    with EmulatorServer(emu) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0)
        batch = client.messages.batches.create(requests=[req(f"e{i}") for i in range(40)])
        clock.advance(24 * 3600 + 1)
        ended = client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended"
        assert ended.request_counts.expired > 0 and ended.request_counts.succeeded > 0


def test_a_broken_results_stream_raises_in_the_sdk(client, emu, clock):
    batch = client.messages.batches.create(requests=[req(f"b{i}") for i in range(1200)])
    clock.advance(61)
    emu.break_results_after(400)
    got = 0
    with pytest.raises(Exception) as broke:  # the SDK surfaces the transport's own error
        for _ in client.messages.batches.results(batch.id):
            got += 1
    assert 0 < got <= 400
    assert "httpx" in type(broke.value).__module__ or isinstance(broke.value, anthropic.APIError)
    assert len(list(client.messages.batches.results(batch.id))) == 1200


def test_env_base_url_is_honoured(emu, monkeypatch):
    with EmulatorServer(emu) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env")
        assert anthropic.Anthropic(max_retries=0).messages.batches.list().data == []
        assert emu.calls[("GET", "list")] == 1


VERSION = {"anthropic-version": "2023-06-01"}


def raw(url, method="GET", headers=None, body=None, version=True):
    """One call below the SDK, to see status, headers and bytes as the API sends them."""
    headers = (VERSION if version else {}) | (headers or {})
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_directives_in_the_last_user_message_force_outcomes(client, clock):
    blocks = [
        {"type": "text", "text": "first block"},
        {"type": "text", "text": "[[emulate:errored:api_error]]"},
    ]
    earlier = [
        {"role": "user", "content": "[[emulate:expired]]"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "no directive here"},
    ]
    sent = [
        req("ok", text="plain [[emulate:succeeded]]"),
        req("blocks", text=blocks),
        req("cancel", text="[[emulate:canceled]]"),
        req("expire", text="[[emulate:expired]] at the start"),
        req("earlier", messages=earlier),
    ]
    batch = client.messages.batches.create(requests=sent)
    clock.advance(61)
    by_id = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert by_id["ok"].type == "succeeded"
    assert by_id["blocks"].type == "errored" and by_id["blocks"].error.error.type == "api_error"
    assert by_id["blocks"].error.request_id.startswith("req_")
    assert by_id["cancel"].type == "canceled" and by_id["expire"].type == "expired"
    assert by_id["earlier"].type == "succeeded"
    counts = client.messages.batches.retrieve(batch.id).request_counts
    assert (counts.succeeded, counts.errored, counts.canceled, counts.expired) == (2, 1, 1, 1)


def test_bad_params_are_errored_results_not_refusals(client, clock):
    base = req("x")["params"]
    sent = [
        {"custom_id": "no-model", "params": {k: v for k, v in base.items() if k != "model"}},
        {"custom_id": "no-max", "params": {k: v for k, v in base.items() if k != "max_tokens"}},
        {"custom_id": "no-messages", "params": {k: v for k, v in base.items() if k != "messages"}},
        req("zero-max", max_tokens=0),
        req("other-model", model="gpt-4o"),
        req("fine"),
    ]
    batch = client.messages.batches.create(requests=sent)
    assert batch.processing_status == "in_progress"
    clock.advance(61)
    by_id = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert by_id.pop("fine").type == "succeeded"
    assert {cid: r.error.error.type for cid, r in by_id.items()} == dict.fromkeys(
        ["no-model", "no-max", "no-messages", "zero-max", "other-model"], "invalid_request_error"
    )


def test_messages_are_deterministic_and_realistic(client, clock):
    long_prompt = "word " * 400
    first = client.messages.batches.create(requests=[req("a", text=long_prompt), req("b", max_tokens=3)])
    second = client.messages.batches.create(requests=[req("a", text=long_prompt)])
    clock.advance(61)
    one = {r.custom_id: r.result.message for r in client.messages.batches.results(first.id)}
    [two] = [r.result.message for r in client.messages.batches.results(second.id)]
    assert one["a"].content[0].text == two.content[0].text and one["a"].id != two.id
    assert one["a"].id.startswith("msg_") and one["a"].role == "assistant"
    assert one["a"].model == "claude-haiku-4-5" and one["a"].stop_reason == "end_turn"
    assert one["a"].stop_sequence is None and one["a"].usage.service_tier == "batch"
    assert one["a"].usage.input_tokens == pytest.approx(2000 / 4, rel=0.05)
    assert one["a"].usage.cache_read_input_tokens == 0 == one["a"].usage.cache_creation_input_tokens
    assert 1 <= one["b"].usage.output_tokens <= 3


def test_results_are_lf_only_chunked_jsonl_and_refused_before_the_end(emu, clock):
    with EmulatorServer(emu) as server:
        key = {"x-api-key": "k"}
        status, headers, body = raw(
            server.url + "/v1/messages/batches",
            "POST",
            key | {"content-type": "application/json"},
            json.dumps({"requests": [req(f"l{i}") for i in range(50)]}).encode(),
        )
        assert status == 200 and headers["request-id"].startswith("req_")
        batch = json.loads(body)
        assert re.fullmatch(r"msgbatch_[A-Za-z0-9]{24}", batch["id"]) and batch["type"] == "message_batch"
        assert batch["created_at"].endswith("Z") and batch["ended_at"] is None
        created = datetime.fromisoformat(batch["created_at"])
        assert datetime.fromisoformat(batch["expires_at"]) - created == timedelta(hours=24)
        results = f"{server.url}/v1/messages/batches/{batch['id']}/results"
        status, headers, body = raw(results, headers=key)
        assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
        clock.advance(61)
        status, headers, body = raw(results, headers=key)
        assert status == 200 and headers.get("Transfer-Encoding") == "chunked"
        assert b"\r" not in body and body.endswith(b"\n") and b"\n\n" not in body
        assert len(body.splitlines()) == 50


def test_authentication(emu):
    with EmulatorServer(emu) as server:
        status, headers, body = raw(server.url + "/v1/messages/batches")
        error = json.loads(body)
        assert status == 401 and error["type"] == "error"
        assert error["error"]["type"] == "authentication_error"
        assert headers["request-id"] == error["request_id"] and error["request_id"].startswith("req_")
        assert raw(server.url + "/v1/messages/batches", headers={"x-api-key": "any"})[0] == 200
        emu.api_key = "right"
        assert raw(server.url + "/v1/messages/batches", headers={"x-api-key": "wrong"})[0] == 401
        assert raw(server.url + "/v1/messages/batches", headers={"Authorization": "Bearer right"})[0] == 200


def test_the_anthropic_version_header_is_required(emu):
    with EmulatorServer(emu) as server:
        key = {"x-api-key": "k"}
        status, headers, body = raw(server.url + "/v1/messages/batches", headers=key, version=False)
        error = json.loads(body)
        assert status == 400 and error["error"] == {
            "type": "invalid_request_error",
            "message": "anthropic-version: header is required",
        }
        assert error["type"] == "error" and headers["request-id"] == error["request_id"]
        assert raw(server.url + "/v1/messages/batches", headers=key)[0] == 200


def test_an_oversize_body_gets_the_apis_own_413(emu):
    emu.max_bytes = 1000
    with EmulatorServer(emu) as server:
        # Answered at the edge, before the key is looked at: no key here, still a 413.
        status, headers, body = raw(server.url + "/v1/messages/batches", "POST", body=b"x" * 5000)
    error = json.loads(body)
    assert status == 413 and headers["content-type"] == "application/json"
    assert error == {
        "type": "error",
        "error": {
            "type": "request_too_large",
            "message": "Request exceeds the maximum allowed number of bytes.",
        },
        "request_id": headers["request-id"],
    }


def test_other_injected_statuses_map_to_the_sdk_exceptions(client, emu):
    for status, exc in [
        (401, anthropic.AuthenticationError),
        (403, anthropic.PermissionDeniedError),
        (413, anthropic.APIStatusError),
        (429, anthropic.RateLimitError),
    ]:
        emu.inject("GET", "/v1/messages/batches", status, retry_after=7)
        with pytest.raises(exc) as raised:
            client.messages.batches.list()
        assert raised.value.status_code == status
        assert raised.value.response.headers["retry-after"] == "7"
    emu.inject("POST", "/v1/messages/batches", 500, count=5, retry_after=0.001)
    retrying = client.with_options(max_retries=1)
    with pytest.raises(anthropic.InternalServerError):
        retrying.messages.batches.create(requests=[req("a")])
    assert emu.calls[("POST", "create")] == 2 and emu.batch_ids() == []


def test_retry_after_is_in_whole_seconds_as_the_api_sends_it(client, emu):
    emu.inject("POST", "/v1/messages/batches", 429, count=1, retry_after=0)
    started = time.monotonic()
    batch = client.with_options(max_retries=1).messages.batches.create(requests=[req("a")])
    # "0" asks for no particular wait, so the SDK falls back to its own backoff (at least 0.375 s).
    assert time.monotonic() - started > 0.3
    assert emu.calls[("POST", "create")] == 2 and emu.batch_ids() == [batch.id]
    emu.inject("GET", "/v1/messages/batches", 429, retry_after=2)
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.batches.list()
    headers = limited.value.response.headers
    assert headers["retry-after"] == "2" and "retry-after-ms" not in headers


def test_the_batch_endpoints_have_a_rate_limit(clock):
    emu = Emulator(latency_seconds=60, clock=clock, rate_limit_per_minute=3)
    with EmulatorServer(emu) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0)
        batch = client.messages.batches.create(requests=[req("a")])
        clock.advance(20)
        client.messages.batches.retrieve(batch.id)
        client.messages.batches.list()
        with pytest.raises(anthropic.RateLimitError) as limited:
            client.messages.batches.retrieve(batch.id)
        assert limited.value.body["error"]["type"] == "rate_limit_error"
        assert limited.value.response.headers["retry-after"] == "40"  # when the first call leaves the window
        clock.advance(40)
        assert client.messages.batches.retrieve(batch.id).processing_status == "ended"
        # Refused calls do not use up the allowance.
        assert emu.calls[("GET", "retrieve")] == 3


def test_a_batch_keeps_the_settings_it_was_created_under(client, emu, clock):
    before = client.messages.batches.create(requests=[req(f"k{i}") for i in range(50)])
    emu.latency_seconds, emu.errored_share = 3600, 1.0
    after = client.messages.batches.create(requests=[req(f"k{i}") for i in range(50)])
    clock.advance(61)
    assert client.messages.batches.retrieve(before.id).request_counts.succeeded == 50
    assert client.messages.batches.retrieve(after.id).processing_status == "in_progress"
    clock.advance(3600)
    assert client.messages.batches.retrieve(after.id).request_counts.errored == 50


def test_cache_control_blocks_are_written_once_then_read(client, clock):
    system = [{"type": "text", "text": "policy " * 400, "cache_control": {"type": "ephemeral"}}]
    first = client.messages.batches.create(
        requests=[req(f"cc{i}", text=f"ticket {i} " * 20, system=system) for i in range(3)] + [req("plain")]
    )
    clock.advance(61)
    usage = {r.custom_id: r.result.message.usage for r in client.messages.batches.results(first.id)}
    assert usage["cc0"].cache_creation_input_tokens == 700 and usage["cc0"].cache_read_input_tokens == 0
    assert usage["cc1"].cache_read_input_tokens == 700 == usage["cc2"].cache_read_input_tokens
    assert usage["cc1"].cache_creation_input_tokens == 0
    assert usage["cc1"].input_tokens == pytest.approx(len("ticket 1 " * 20) / 4, abs=1)
    assert usage["plain"].cache_read_input_tokens == 0 == usage["plain"].cache_creation_input_tokens


def test_stored_requests_are_small_whatever_the_prompt_size():
    emu = Emulator(clock=SimClock())
    filler = "lorem ipsum dolor sit amet " * 80
    body = json.dumps(
        {"requests": [req(f"m{i:05d}", text=f"{i} {filler}"[:2000]) for i in range(4000)]}
    ).encode()
    gc.collect()
    tracemalloc.start()
    try:
        status, _, _ = emu.handle("POST", "/v1/messages/batches", {"x-api-key": "k"} | VERSION, body)
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 200
    # A few hundred bytes a request: 100,000 requests of 2 KB fit in tens of megabytes.
    assert kept / 4000 < 500


def test_the_command_line_documents_its_options():
    out = subprocess.run(
        [sys.executable, "-m", "relay_local.emulator", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in (
        "--port",
        "--latency",
        "--errored-share",
        "--rate-limit-per-minute",
        "--max-bytes",
        "--latency-mix",
        "--realtime-seconds",
        "--realtime-rate-limit-per-minute",
    ):
        assert option in out
    assert "0.9:30,0.1:7200" in out
    command = [sys.executable, "-m", "relay_local.emulator", "--latency-mix", "0.9-30"]
    bad = subprocess.run(command, capture_output=True, text=True)
    assert bad.returncode == 2 and "weight:seconds" in bad.stderr


def test_the_processing_queue_has_a_limit(clock):
    emu = Emulator(latency_seconds=60, clock=clock, max_queued_requests=5)
    with EmulatorServer(emu) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0)
        client.messages.batches.create(requests=[req(f"q{i}") for i in range(4)])
        with pytest.raises(anthropic.RateLimitError):
            client.messages.batches.create(requests=[req(f"p{i}") for i in range(2)])
        clock.advance(61)
        client.messages.batches.create(requests=[req(f"p{i}") for i in range(5)])


def test_list_pages_both_ways_and_checks_limit(client, clock):
    ids = [client.messages.batches.create(requests=[req("x")]).id for _ in range(5)]
    newest = ids[::-1]
    assert [b.id for b in client.messages.batches.list().data] == newest
    page = client.messages.batches.list(limit=2, before_id=newest[4])
    assert [b.id for b in page.data] == newest[2:4] and page.has_more
    every = [b.id for b in client.messages.batches.list(limit=2)]  # the SDK follows the pages
    assert every == newest
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.list(limit=1001)


def test_cancel_is_deterministic_and_stamped(client, emu, clock):
    batch = client.messages.batches.create(requests=[req(f"c{i}") for i in range(200)])
    clock.advance(15)  # a quarter of the latency
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    assert client.messages.batches.retrieve(batch.id).processing_status == "canceling"
    clock.advance(emu.cancel_seconds)
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.ended_at == canceling.cancel_initiated_at + timedelta(seconds=emu.cancel_seconds)
    assert 25 < ended.request_counts.succeeded < 75 and ended.request_counts.canceled > 125
    again = client.messages.batches.cancel(batch.id)
    assert again.processing_status == "ended" and again.request_counts == ended.request_counts


def test_expiry_ends_the_batch_at_expires_at(clock):
    emu = Emulator(latency_seconds=30 * 3600, clock=clock)
    with EmulatorServer(emu) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0)
        batch = client.messages.batches.create(requests=[req(f"e{i}") for i in range(100)])
        clock.advance(23 * 3600)
        assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
        clock.advance(3600)
        ended = client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended" and ended.ended_at == ended.expires_at
        kinds = Counter(r.result.type for r in client.messages.batches.results(batch.id))
        assert set(kinds) == {"succeeded", "expired"} and kinds["expired"] == ended.request_counts.expired


def test_configured_mix_is_deterministic(clock):
    emu = Emulator(latency_seconds=1, clock=clock, errored_share=0.2, expired_share=0.1, seed=5)
    with EmulatorServer(emu) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0)
        batch = client.messages.batches.create(requests=[req(f"m{i}") for i in range(400)])
        clock.advance(2)

        def outcomes():
            return {
                r.custom_id: (
                    r.result.type,
                    r.result.error.error.type if r.result.type == "errored" else None,
                )
                for r in client.messages.batches.results(batch.id)
            }

        first = outcomes()
        assert first == outcomes()
        kinds = Counter(kind for kind, _ in first.values())
        assert 50 < kinds["errored"] < 110 and 20 < kinds["expired"] < 65
        assert {e for kind, e in first.values() if kind == "errored"} == {"api_error", "overloaded_error"}
        counts = client.messages.batches.retrieve(batch.id).request_counts
        assert (counts.succeeded, counts.errored, counts.expired) == (
            kinds["succeeded"],
            kinds["errored"],
            kinds["expired"],
        )


def params(text="Summarise this ticket.", **extra):
    """Keyword arguments for `client.messages.create`."""
    return req("rt", text, **extra)["params"]


def test_a_realtime_message_is_answered_at_list_price(client, emu):
    first = client.messages.create(**params())
    assert first.id.startswith("msg_01") and first.type == "message" and first.role == "assistant"
    assert first.model == "claude-haiku-4-5" and first.content[0].text and first.stop_reason == "end_turn"
    usage = first.usage
    assert usage.service_tier == "standard" and usage.input_tokens == len("Summarise this ticket.") // 4
    assert 1 <= usage.output_tokens <= 100
    assert usage.cache_creation_input_tokens == 0 == usage.cache_read_input_tokens
    again = client.messages.create(**params())
    assert again.id != first.id and again.content[0].text == first.content[0].text
    long = client.messages.create(**params("go on [[emulate:long]]", max_tokens=20))
    assert long.stop_reason == "max_tokens" and long.usage.output_tokens == 20
    # Batch-only directives mean nothing to a realtime call: it is answered.
    for directive in ("[[emulate:expired]]", "[[emulate:canceled]]"):
        assert client.messages.create(**params(directive)).type == "message"
    assert emu.calls[("POST", "message")] == 5 and emu.batch_ids() == []
    assert len(emu.messages_created) == 5
    assert emu.messages_created[0] == MessageCall("claude-haiku-4-5", usage.input_tokens, usage.output_tokens)
    assert emu.messages_created[2] == MessageCall("claude-haiku-4-5", long.usage.input_tokens, 20)


def test_realtime_params_are_checked_at_once(client, emu):
    for bad in ({"model": "gpt-4o"}, {"max_tokens": 128_001}, {"messages": []}, {"stream": True}):
        with pytest.raises(anthropic.BadRequestError) as refused:
            # A timeout of its own, or the SDK refuses a large max_tokens without streaming.
            client.messages.create(**params() | bad, timeout=30)
        assert refused.value.body["error"]["type"] == "invalid_request_error"
        assert next(iter(bad)) in refused.value.body["error"]["message"]
    # The SDK will not send a create without a model: below it, the API's own answer.
    url = str(client.base_url).rstrip("/") + "/v1/messages"
    no_model = json.dumps({k: v for k, v in params().items() if k != "model"}).encode()
    key = {"x-api-key": "k", "content-type": "application/json"}
    status, _, body = raw(url, "POST", key, no_model)
    assert status == 400 and json.loads(body)["error"]["message"] == "model: Field required"
    status, _, body = raw(url, "POST", key, b"[1]")
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    # The key and the version header are checked as for the batch endpoints.
    good = json.dumps(params()).encode()
    assert raw(url, "POST", {}, good)[0] == 401
    assert raw(url, "POST", key, good, version=False)[0] == 400
    assert raw(url, "POST", key, good)[0] == 200
    assert len(emu.messages_created) == 1


def test_unknown_paths_and_methods_are_not_found(emu):
    with EmulatorServer(emu) as server:
        key = {"x-api-key": "k"}
        for method, path in [
            ("GET", "/v1/messages"),
            ("GET", "/v1/messages/count_tokens"),
            ("POST", "/v1/complete"),
            ("POST", "/v1/messages/other"),
        ]:
            status, _, body = raw(server.url + path, method, key, b"{}" if method == "POST" else None)
            assert (status, json.loads(body)["error"]["type"]) == (404, "not_found_error"), (method, path)
    assert emu.calls[("GET", "unknown")] == 2 and emu.calls[("POST", "unknown")] == 2


def test_a_forced_error_answers_its_http_status(client, emu):
    with pytest.raises(OVERLOADED) as overloaded:
        client.messages.create(**params("x [[emulate:errored:overloaded_error]]"))
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(**params("[[emulate:errored:rate_limit_error]]"))
    assert limited.value.response.headers["retry-after"] == "1"
    for error, status, exc in [
        ("api_error", 500, anthropic.InternalServerError),
        ("invalid_request_error", 400, anthropic.BadRequestError),
        ("timeout_error", 504, anthropic.InternalServerError),
        ("billing_error", 402, anthropic.APIStatusError),
    ]:
        with pytest.raises(exc) as raised:
            client.messages.create(**params(f"[[emulate:errored:{error}]]"))
        assert raised.value.status_code == status and raised.value.body["error"]["type"] == error
    assert emu.messages_created == []


def test_faults_aim_at_realtime_or_batch_calls(client, emu):
    emu.inject("POST", "/v1/messages", 429, retry_after=3, route="message")
    # A batch create passes untouched: the fault waits for a realtime call.
    assert client.messages.batches.create(requests=[req("a")]).processing_status == "in_progress"
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(**params())
    assert limited.value.response.headers["retry-after"] == "3"
    assert client.messages.create(**params()).type == "message"
    # Faults aimed at the batch endpoints, by prefix or by the "create" route, miss realtime calls.
    emu.inject("POST", "/v1/messages/batches", 500)
    emu.inject("POST", "/v1/messages", 503, route="create")
    assert client.messages.create(**params()).type == "message"
    assert client.messages.count_tokens(model="claude-haiku-4-5", messages=params()["messages"])
    with pytest.raises(anthropic.InternalServerError) as first:
        client.messages.batches.create(requests=[req("b")])
    with pytest.raises(anthropic.InternalServerError) as second:
        client.messages.batches.create(requests=[req("b")])
    assert (first.value.status_code, second.value.status_code) == (500, 503)
    emu.inject("POST", "/v1/messages/count_tokens", 529, route="count_tokens")
    assert client.messages.create(**params()).type == "message"
    with pytest.raises(OVERLOADED):
        client.messages.count_tokens(model="claude-haiku-4-5", messages=params()["messages"])
    assert len(emu.messages_created) == 3 and len(emu.batch_ids()) == 1


def test_realtime_calls_have_their_own_rate_limit(clock):
    emu = Emulator(clock=clock, rate_limit_per_minute=1, realtime_rate_limit_per_minute=2)
    with EmulatorServer(emu) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0)
        client.messages.batches.list()
        with pytest.raises(anthropic.RateLimitError):
            client.messages.batches.list()
        # The batch allowance is spent, the realtime one is not.
        client.messages.create(**params())
        clock.advance(15)
        client.messages.create(**params())
        with pytest.raises(anthropic.RateLimitError) as limited:
            client.messages.create(**params())
        assert limited.value.body["error"]["type"] == "rate_limit_error"
        assert limited.value.response.headers["retry-after"] == "45"
        # Counting tokens is free and limited by neither.
        assert client.messages.count_tokens(model="claude-haiku-4-5", messages=params()["messages"])
        clock.advance(45)
        assert client.messages.create(**params()).type == "message"
        assert len(emu.messages_created) == 3


def test_realtime_without_credit_is_refused(client, emu):
    emu.credit = False
    with pytest.raises(anthropic.BadRequestError, match="credit balance is too low") as refused:
        client.messages.create(**params())
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    assert emu.messages_created == []
    emu.credit = True
    assert client.messages.create(**params()).usage.service_tier == "standard"


def test_realtime_answers_take_realtime_seconds(client, emu):
    emu.realtime_seconds = 0.3
    started = time.monotonic()
    client.messages.create(**params())
    assert time.monotonic() - started >= 0.3
    emu.realtime_seconds = 0.0
    started = time.monotonic()
    client.messages.create(**params())
    assert time.monotonic() - started < 0.3


def test_count_tokens_is_the_whole_prompt_a_message_reports(client, emu):
    policy = "policy " * 400
    marked = {"type": "text", "text": policy, "cache_control": {"type": "ephemeral"}}
    tools = [{"name": "lookup", "description": "find a ticket", "input_schema": {"type": "object"}}]
    cases = {
        "plain": {},
        "system": {"system": "You triage support tickets."},
        "cached system": {"system": [marked]},
        "cached block": {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "rules " * 300, "cache_control": {"type": "ephemeral"}},
                        {"type": "text", "text": "ticket 7 " * 20},
                    ],
                }
            ]
        },
        "tools": {"tools": tools},
    }
    counted = {}
    for name, extra in cases.items():
        call = params(f"{name}: summarise this ticket.") | extra
        options = {k: call[k] for k in ("system", "tools") if k in call}
        count = client.messages.count_tokens(model=call["model"], messages=call["messages"], **options)
        counted[name] = count.input_tokens
        # Twice: the first writes the cached prefix, the second reads it; the total is the same.
        written, read = (client.messages.create(**call).usage for _ in range(2))
        for usage in (written, read):
            total = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
            assert counted[name] == total, name
        if name.startswith("cached"):
            assert written.cache_creation_input_tokens > 0 and read.cache_read_input_tokens > 0, name
    assert counted["plain"] == len("plain: summarise this ticket.") // 4
    assert counted["system"] > counted["plain"] and counted["tools"] > counted["plain"] + 10
    assert counted["cached system"] > 700
    assert emu.calls[("POST", "count_tokens")] == len(cases)
    assert len(emu.messages_created) == 2 * len(cases)  # counting is free: not a message
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model="gpt-4o", messages=params()["messages"])
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model="claude-haiku-4-5", messages=[])


def test_realtime_calls_write_and_read_the_prompt_cache(client):
    system = [{"type": "text", "text": "policy " * 400, "cache_control": {"type": "ephemeral"}}]
    first = client.messages.create(**params("ticket 1", system=system)).usage
    second = client.messages.create(**params("ticket 2", system=system)).usage
    assert first.cache_creation_input_tokens == 700 and first.cache_read_input_tokens == 0
    assert second.cache_read_input_tokens == 700 and second.cache_creation_input_tokens == 0
    assert second.input_tokens == len("ticket 2") // 4


def durations(seed, count=40):
    """How long each of `count` batches took, in creation order, under a mix of 30 s and 2 h."""
    clock = SimClock(start=1_800_000_000.0)
    emu = Emulator(clock=clock, seed=seed, latency_mix=[(0.9, 30.0), (0.1, 7200.0)])
    with EmulatorServer(emu) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0)
        ids = [client.messages.batches.create(requests=[req("a")]).id for _ in range(count)]
        clock.advance(31)
        early = {b.id for b in client.messages.batches.list(limit=100).data if b.processing_status == "ended"}
        clock.advance(7200)
        ended = {b.id: b for b in client.messages.batches.list(limit=100).data}
    assert {b.processing_status for b in ended.values()} == {"ended"} and len(ended) == count
    taken = [round((ended[i].ended_at - ended[i].created_at).total_seconds()) for i in ids]
    # Each batch ended when its own latency said, not at a common time.
    assert [seconds == 30 for seconds in taken] == [i in early for i in ids]
    return taken


def test_a_latency_mix_spreads_batch_durations_deterministically():
    taken = durations(seed=11)
    assert set(taken) == {30, 7200}
    assert 1 <= taken.count(7200) <= 12  # about one in ten
    assert durations(seed=11) == taken


def test_make_late_makes_exactly_the_next_batches_late(client, emu, clock):
    emu.latency_mix = [(1.0, 10.0)]
    emu.make_late(1, 7200)
    late = client.messages.batches.create(requests=[req("late")])
    others = [client.messages.batches.create(requests=[req(f"o{i}")]) for i in range(3)]
    clock.advance(11)
    assert client.messages.batches.retrieve(late.id).processing_status == "in_progress"
    assert {client.messages.batches.retrieve(b.id).processing_status for b in others} == {"ended"}
    emu.latency_mix = None
    emu.make_late(2, 100)
    later = [client.messages.batches.create(requests=[req(f"l{i}")]) for i in range(3)]
    clock.advance(61)
    assert [client.messages.batches.retrieve(b.id).processing_status for b in later] == [
        "in_progress",
        "in_progress",
        "ended",
    ]
    clock.advance(7200)
    ended = client.messages.batches.retrieve(late.id)
    assert ended.processing_status == "ended"
    assert ended.ended_at - ended.created_at == timedelta(seconds=7200)


OLD = {"anthropic-version": "2023-06-01"}


def test_the_newest_version_refuses_sampling_params_and_misplaced_blocks(client, emu, clock):
    cited = {"type": "text", "text": "as quoted", "citations": [{"type": "char_location"}]}
    document = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}}
    refused = {
        "temperature": ({"temperature": 1.0}, "temperature: Extra inputs are not permitted"),
        "top_p": ({"top_p": 0.99}, "top_p: Extra inputs are not permitted"),
        "top_k": ({"top_k": 5}, "top_k: Extra inputs are not permitted"),
        "document": (
            {
                "messages": [
                    {"role": "user", "content": "read this"},
                    {"role": "assistant", "content": [document]},
                    {"role": "user", "content": "and now?"},
                ]
            },
            "messages.1.content.0: Input tag 'document'",
        ),
        "citations": ({"messages": [{"role": "user", "content": [cited]}]}, "messages.0.content.0.citations"),
    }
    old = client.with_options(default_headers=OLD)
    for name, (extra, message) in refused.items():
        # The SDK 2.x signatures have no sampling params: they go as extra body, as a caller must.
        call = params() | {k: v for k, v in extra.items() if k == "messages"}
        sampling = {k: v for k, v in extra.items() if k != "messages"}
        with pytest.raises(anthropic.BadRequestError) as realtime:
            client.messages.create(**call, extra_body=sampling)
        assert realtime.value.body["error"]["type"] == "invalid_request_error"
        assert realtime.value.body["error"]["message"].startswith(message), name
        count = {"model": call["model"], "messages": call["messages"], "extra_body": sampling}
        with pytest.raises(anthropic.BadRequestError) as counted:
            client.messages.count_tokens(**count)
        assert counted.value.body["error"]["message"].startswith(message), name
        # The older version takes them all.
        assert old.messages.create(**call, extra_body=sampling).type == "message", name
        assert old.messages.count_tokens(**count).input_tokens >= 1, name
    # In a batch the create is accepted and each such request ends errored, as params are checked later.
    batch = client.messages.batches.create(
        requests=[req(n, **e) for n, (e, _) in refused.items()] + [req("ok")]
    )
    taken = old.messages.batches.create(requests=[req(n, **e) for n, (e, _) in refused.items()])
    assert emu.batch_version(batch.id) == ("2026-10-21", ())
    assert emu.batch_version(taken.id) == ("2023-06-01", ())
    clock.advance(61)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results.pop("ok").type == "succeeded"
    for name, result in results.items():
        assert result.type == "errored" and result.error.error.type == "invalid_request_error", name
        assert result.error.error.message.startswith(refused[name][1]), name
    assert {r.result.type for r in old.messages.batches.results(taken.id)} == {"succeeded"}


def test_versions_are_checked_and_counted(client, emu):
    assert client.messages.batches.list().data == []
    old = client.with_options(default_headers=OLD)
    old.messages.create(**params())
    betas = client.with_options(default_headers={"anthropic-beta": "output-300k-2026-03-24, other-beta"})
    betas.messages.batches.create(requests=[req("a")])
    assert emu.versions == Counter(
        {
            Sent("list", "2026-10-21"): 1,
            Sent("message", "2023-06-01"): 1,
            Sent("create", "2026-10-21", ("other-beta", "output-300k-2026-03-24")): 1,
        }
    )
    # A batch is made under one version and one set of betas, whatever later calls send.
    assert emu.batch_version(emu.batch_ids()[0]) == ("2026-10-21", ("other-beta", "output-300k-2026-03-24"))
    with pytest.raises(anthropic.BadRequestError) as unknown:
        client.with_options(default_headers={"anthropic-version": "2024-01-01"}).messages.batches.list()
    assert unknown.value.body["error"]["type"] == "invalid_request_error"
    assert "2024-01-01" in unknown.value.body["error"]["message"]
    assert sum(emu.versions.values()) == 3


OUTPUT_300K = {"anthropic-beta": "output-300k-2026-03-24"}


def test_max_tokens_limits_and_the_output_300k_beta(client, emu, clock):
    sizes = {"zero": 0, "ceiling": 128_000, "over": 128_001, "most": 300_000, "past": 300_001}
    sent = [req(name, max_tokens=n) for name, n in sizes.items()]
    plain = client.messages.batches.create(requests=sent)
    beta = client.with_options(default_headers=OUTPUT_300K).messages.batches.create(requests=sent)
    assert emu.batch_version(beta.id) == ("2026-10-21", ("output-300k-2026-03-24",))
    clock.advance(61)
    kinds = {}
    for batch in (plain, beta):
        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
        kinds[batch.id] = {name: r.type for name, r in results.items()}
        assert results["zero"].error.error.message == "max_tokens: must be greater than or equal to 1"
    assert kinds[plain.id] == {
        "zero": "errored",
        "ceiling": "succeeded",
        "over": "errored",
        "most": "errored",
        "past": "errored",
    }
    assert kinds[beta.id] == {
        "zero": "errored",
        "ceiling": "succeeded",
        "over": "succeeded",
        "most": "succeeded",
        "past": "errored",
    }
    # The beta is for batches: a realtime call stays under the usual ceiling even when sending it.
    with pytest.raises(anthropic.BadRequestError, match="128001 > 128000"):
        client.with_options(default_headers=OUTPUT_300K).messages.create(
            **params(max_tokens=128_001), timeout=30
        )
    # Realtime, max_tokens 0 warms the cache: nothing is generated.
    system = [{"type": "text", "text": "policy " * 400, "cache_control": {"type": "ephemeral"}}]
    warm = client.messages.create(**params(max_tokens=0, system=system))
    assert warm.content == [] and warm.stop_reason == "max_tokens" and warm.usage.output_tokens == 0
    assert warm.usage.cache_creation_input_tokens == 700
    assert client.messages.create(**params(system=system)).usage.cache_read_input_tokens == 700


def test_usage_splits_cache_writes_by_ttl(client, clock):
    hour = [{"type": "text", "text": "rules " * 400, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    five = [{"type": "text", "text": "style " * 200, "cache_control": {"type": "ephemeral"}}]
    both = client.messages.create(**params("ticket 1", system=hour + five)).usage
    assert both.cache_creation.ephemeral_1h_input_tokens == 600
    assert both.cache_creation.ephemeral_5m_input_tokens == 300
    assert both.cache_creation_input_tokens == 900 and both.cache_read_input_tokens == 0
    assert (both.service_tier, both.inference_geo, both.server_tool_use) == ("standard", "global", None)
    read = client.messages.create(**params("ticket 2", system=hour + five)).usage
    assert read.cache_read_input_tokens == 900 and read.cache_creation_input_tokens == 0
    assert (read.cache_creation.ephemeral_1h_input_tokens, read.cache_creation.ephemeral_5m_input_tokens) == (
        0,
        0,
    )
    other = [{"type": "text", "text": "other " * 400, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    batch = client.messages.batches.create(requests=[req("a", system=other, inference_geo="us")])
    clock.advance(61)
    (line,) = client.messages.batches.results(batch.id)
    usage = line.result.message.usage
    assert usage.cache_creation.ephemeral_1h_input_tokens == 600 == usage.cache_creation_input_tokens
    assert (usage.service_tier, usage.inference_geo) == ("batch", "us")


def test_container_and_web_search_directives(client, clock):
    started = datetime.fromtimestamp(clock(), tz=UTC)
    answer = client.messages.create(**params("run it [[emulate:container]]"))
    assert answer.container.id.startswith("container_")
    assert answer.container.expires_at == started + timedelta(days=30)
    assert client.messages.create(**params()).container is None
    searched = client.messages.create(**params("look it up [[emulate:web_search:3]]", max_tokens=10))
    tools = searched.usage.server_tool_use
    assert (tools.web_search_requests, tools.web_fetch_requests) == (3, 0)
    # Server tools are not bounded by max_tokens.
    assert searched.usage.output_tokens > 10
    sent = [
        req("box", text="[[emulate:container]] [[emulate:web_search:2]]"),
        req("both", text="[[emulate:container]] [[emulate:errored:overloaded_error]]"),
    ]
    batch = client.messages.batches.create(requests=sent)
    clock.advance(61)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    box = results["box"].message
    assert box.container.id.startswith("container_") and box.usage.server_tool_use.web_search_requests == 2
    assert box.container.expires_at == started + timedelta(seconds=60, days=30)
    # A forced outcome wins: the container shapes only a succeeded answer.
    assert results["both"].type == "errored"


def test_a_realtime_directive_with_an_error_code_answers_that_type_and_code(emu):
    from relay_local.emulator import LATEST

    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "x [[emulate:errored:permission_error:user_profile_not_billable]]"}
        ],
    }
    headers = {"x-api-key": "k", "anthropic-version": LATEST}
    status, _, payload = emu.handle("POST", "/v1/messages", headers, json.dumps(body).encode())
    error = json.loads(payload)["error"]
    assert (status, error["type"], error["details"]["error_code"]) == (
        403,
        "permission_error",
        "user_profile_not_billable",
    )


def test_an_answer_names_the_request_it_answers_and_says_it_is_emulated(client, clock):
    # Given two requests in one batch, and one realtime call with no id to name it by
    text = "The export button on the Reports page does nothing since Tuesday (reference 00018)"
    batch = client.messages.batches.create(
        requests=[
            req("ticket-00018", text),
            req("post-00019", "Selling my old road bike [[emulate:succeeded]]"),
        ]
    )
    clock.advance(61)
    # When they are answered
    answers = {
        r.custom_id: r.result.message.content[0].text for r in client.messages.batches.results(batch.id)
    }
    realtime = client.messages.create(**params(text)).content[0].text
    # Then each answer starts by naming its own request, as emulated text; directives are left out
    assert answers["ticket-00018"].startswith(
        '[emulated] answer to ticket-00018 "The export button on ... since Tuesday (reference 00018)":'
    )
    assert answers["post-00019"].startswith('[emulated] answer to post-00019 "Selling my old road bike":')
    assert realtime.startswith(
        '[emulated] realtime answer to "The export button on ... since Tuesday (reference 00018)":'
    )


def test_tests_see_a_batch_as_the_api_shows_it(client, emu, clock):
    # Given a batch of two, one canceled while it runs
    batch = client.messages.batches.create(requests=[req("a"), req("b")])
    seen = emu.batch(batch.id)
    assert seen == client.messages.batches.retrieve(batch.id).model_dump(mode="json", exclude_unset=True)
    with pytest.raises(ValueError, match="not ended"):
        emu.results(batch.id)
    client.messages.batches.cancel(batch.id)
    assert emu.batch(batch.id)["cancel_initiated_at"] is not None
    # What a test is given is a copy: changing it changes nothing in the API
    seen["request_counts"]["processing"] = 0
    assert emu.batch(batch.id)["request_counts"]["processing"] == 2
    clock.advance(61)
    lines = emu.results(batch.id)
    assert lines == [
        r.model_dump(mode="json", exclude_unset=True) for r in client.messages.batches.results(batch.id)
    ]
    ended = emu.batch(batch.id)
    ended["request_counts"]["canceled"] = -1
    assert (
        emu.batch(batch.id)["request_counts"]
        == client.messages.batches.retrieve(batch.id).request_counts.to_dict()
    )
    # And a succeeded line's message carries the id the emulator names for it
    emu.cancel_seconds = 0
    done = client.messages.batches.create(requests=[req("c")])
    clock.advance(61)
    [line] = emu.results(done.id)
    assert line["result"]["message"]["id"] == emu.message_id(done.id, "c")
