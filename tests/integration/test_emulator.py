"""The emulator through the real anthropic SDK over HTTP: it must behave like the service."""

from __future__ import annotations

import anthropic
import pytest
from relay_local.emulator import Emulator, EmulatorServer, SimClock

pytestmark = pytest.mark.integration


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
    assert done.results_url == f"/v1/messages/batches/{batch.id}/results"
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
    with pytest.raises(anthropic.APIStatusError) as too_many:
        client.messages.batches.create(requests=[req(f"n{i}") for i in range(4)])
    assert too_many.value.status_code == 413
    emu.max_requests, emu.max_bytes = 100_000, 2000
    with pytest.raises(anthropic.APIStatusError) as too_big:
        client.messages.batches.create(requests=[req("big", text="x" * 3000)])
    assert too_big.value.status_code == 413


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
    with pytest.raises(anthropic.InternalServerError):
        client.messages.batches.list()
    emu.inject("GET", "/v1/messages/batches", 529)
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        client.messages.batches.list()
    assert overloaded.value.status_code == 529


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
    batch = client.messages.batches.create(requests=[req(f"c{i}") for i in range(10)])
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
    batch = client.messages.batches.create(requests=[req(f"b{i}") for i in range(3000)])
    clock.advance(61)
    emu.break_results_after(1000)
    got = 0
    with pytest.raises(Exception) as broke:  # the SDK surfaces the transport's own error
        for _ in client.messages.batches.results(batch.id):
            got += 1
    assert 0 < got <= 1000
    assert "httpx" in type(broke.value).__module__ or isinstance(broke.value, anthropic.APIError)
    assert len(list(client.messages.batches.results(batch.id))) == 3000


def test_env_base_url_is_honoured(emu, monkeypatch):
    with EmulatorServer(emu) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env")
        assert anthropic.Anthropic(max_retries=0).messages.batches.list().data == []
        assert emu.calls[("GET", "list")] == 1
