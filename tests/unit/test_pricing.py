"""Prices from the table, exact costs from usage, and the budget's bound over any request it takes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from batch_relay import pricing
from batch_relay.pricing import cost_of, price_of
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

MILLION = {"input_tokens": 1_000_000, "output_tokens": 0}


# The table: today's prices, and no model taking another family's


@pytest.mark.parametrize(
    "model", ["claude-opus-4-7", "claude-opus-4-8", "claude-opus-4-6", "claude-opus-4-5"]
)
def test_opus_4_5_and_later_cost_5_and_25_per_million(model):
    assert cost_of(model, MILLION).list_usd == 5.0
    assert cost_of(model, {"input_tokens": 0, "output_tokens": 1_000_000}).list_usd == 25.0


@pytest.mark.parametrize(
    "model, family",
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-0", "claude-opus-4"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-opus-4-9", None),
        ("claude-sonnet-5", None),
        ("claude-sonnet-4-7", None),
        ("claude-opus-4-8-fast", None),
        ("claude-haiku-4-5-2025", None),
    ],
)
def test_a_model_is_priced_by_its_exact_family_a_snapshot_date_or_an_alias(model, family):
    assert pricing.family_of(model) == family
    assert (price_of(model) is None) == (family is None)


def test_an_unpriced_model_has_no_cost_and_is_counted(monkeypatch):
    seen = []
    from batch_relay.observability import metrics

    monkeypatch.setattr(metrics, "add_metric", lambda **kw: seen.append(kw["name"]))
    assert cost_of("claude-opus-4-9", MILLION) is None
    assert seen == ["UnpricedModel"]


def test_the_table_takes_extra_families_and_refuses_malformed_ones():
    extra = pricing.parse_extra('{"claude-sonnet-5": {"input": 2, "output": 10, "read": 0.1}}')
    assert extra["claude-sonnet-5"].input_usd == 2.0 and extra["claude-sonnet-5"].write_1h == 2.0
    bad = ['{"x": {"input": 1}}', '{"x": {"input": -1, "output": 1}}', "[1]"]
    bad.append('{"x-20250101": {"input": 1, "output": 1}}')  # a family id has no date
    for text in bad:
        with pytest.raises(ValueError):
            pricing.parse_extra(text)


# Exact costs from usage


def test_one_hour_writes_cost_twice_input_and_five_minute_writes_a_quarter_more():
    usage = {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 3_000_000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1_000_000, "ephemeral_1h_input_tokens": 2_000_000},
    }
    # Sonnet 4.6: $3 a million; 1M at 1.25x and 2M at 2x
    assert cost_of("claude-sonnet-4-6", usage).list_usd == pytest.approx(3 * 1.25 + 3 * 2 * 2)
    # Without the split, every write is taken as a 5-minute one
    del usage["cache_creation"]
    assert cost_of("claude-sonnet-4-6", usage).list_usd == pytest.approx(3 * 1.25 * 3)


def test_a_family_reads_and_writes_at_its_own_factors():
    # Haiku 3: 5-minute writes $0.30, reads $0.03 a million (not 1.25x and 0.1x of $0.25)
    usage = {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 10**6,
        "cache_read_input_tokens": 10**6,
    }
    assert cost_of("claude-3-haiku-20240307", usage).list_usd == pytest.approx(0.30 + 0.03)


def test_past_200k_input_tokens_sonnet_4_5_costs_the_long_context_band_on_every_line():
    below = {"input_tokens": 100_000, "cache_read_input_tokens": 100_000, "output_tokens": 1000}
    above = below | {"cache_creation_input_tokens": 1}
    assert cost_of("claude-sonnet-4-5", below).list_usd == pytest.approx(
        (100_000 * 3 + 10_000 * 3 + 1000 * 15) / 1e6
    )
    want = (100_000 * 6 + 10_000 * 6 + 1.25 * 6 + 1000 * 22.5) / 1e6
    assert cost_of("claude-sonnet-4-5", above).list_usd == pytest.approx(want)
    # Sonnet 4.6 has no band
    assert cost_of("claude-sonnet-4-6", above).list_usd < want


def test_web_searches_cost_10_a_thousand_and_are_not_discounted_in_a_batch():
    usage = {
        "input_tokens": 1000,
        "output_tokens": 0,
        "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 2},
    }
    cost = cost_of("claude-haiku-4-5", usage)
    assert cost.list_usd == pytest.approx(0.001 + 0.03)
    assert cost.batch_usd == pytest.approx(0.0005 + 0.03)


def test_us_inference_costs_a_tenth_more_and_an_unknown_geo_has_no_price():
    usage = MILLION | {"inference_geo": "us"}
    assert cost_of("claude-opus-4-7", usage).list_usd == pytest.approx(5.5)
    assert cost_of("claude-opus-4-7", MILLION | {"inference_geo": "global"}).list_usd == 5.0
    assert cost_of("claude-opus-4-7", MILLION | {"inference_geo": "mars"}) is None


# What a budget cannot bound


def params(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
    } | extra


def user(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


@pytest.mark.parametrize(
    "request_params, why",
    [
        (params(model="claude-opus-4-9"), "no price"),
        (params(tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]), "server tool"),
        (params(tools=[{"type": "web_fetch_20250910", "name": "web_fetch"}]), "server tool"),
        (params(mcp_servers=[{"type": "url", "url": "https://x"}]), "mcp_servers"),
        (
            params(messages=user({"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}})),
            "document",
        ),
        (
            params(messages=user({"type": "document", "source": {"type": "file", "file_id": "file_1"}})),
            "document",
        ),
        (
            params(
                messages=user(
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"},
                    }
                )
            ),
            "document",
        ),
        (params(inference_geo="eu"), "inference_geo"),
        (params(speed="fast"), "speed"),
    ],
)
def test_a_budget_cannot_take_what_nothing_bounds(request_params, why):
    assert why in pricing.unbounded_reason(request_params)
    assert pricing.request_bound(request_params, 1000, batch=True) is None


def test_text_documents_images_and_client_tools_are_bounded():
    ok = params(
        messages=user(
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "a"}},
            {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}},
        ),
        tools=[{"name": "f", "input_schema": {"type": "object"}}, {"type": "bash_20250124", "name": "bash"}],
    )
    assert pricing.unbounded_reason(ok) is None
    # An image by URL stands for the most an image can cost, not its URL's bytes
    assert pricing.tokens_bound(ok, 300) >= 2000 + pricing.TOOLS_TOKENS + pricing.TYPED_TOOL_TOKENS


def test_opus_4_7_is_bounded_at_its_own_price_and_a_one_hour_ttl_at_twice_input():
    five = params(
        model="claude-opus-4-7",
        system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
    )
    hour = five | {
        "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    }
    # A geo-capable model with no inference_geo may run under a US workspace default: 1.1x
    assert pricing.request_bound(five, 1000, batch=False) == pytest.approx(
        1.1 * (1000 * 5 * 1.25 + 100 * 25) / 1e6
    )
    assert pricing.request_bound(hour, 1000, batch=False) == pytest.approx(
        1.1 * (1000 * 5 * 2 + 100 * 25) / 1e6
    )
    assert pricing.request_bound(hour | {"inference_geo": "global"}, 1000, batch=True) == pytest.approx(
        (1000 * 5 * 2 + 100 * 25) / 1e6 / 2
    )


# The property: for any request the relay takes and any usage the API could return for it, the
# cost is within the bound.

TEXT = st.text(max_size=40)
# Every tokenizer framing: a few tokens a block or a message (JSON's own syntax is longer).
FRAMING = 4


def text_block(ttl: str | None) -> st.SearchStrategy[dict[str, Any]]:
    mark = (
        {}
        if ttl is None
        else {"cache_control": {"type": "ephemeral"} | ({"ttl": ttl} if ttl == "1h" else {})}
    )
    return TEXT.map(lambda t: {"type": "text", "text": t} | mark)


CACHE = st.sampled_from([None, "5m", "1h"])
BLOCK = st.one_of(
    CACHE.flatmap(text_block),
    st.binary(max_size=64).map(
        lambda b: {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b.hex()}}
    ),
    TEXT.map(lambda u: {"type": "image", "source": {"type": "url", "url": f"https://x/{u}"}}),
    TEXT.map(
        lambda t: {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": t}}
    ),
)
MESSAGES = st.lists(
    st.one_of(TEXT.filter(bool), st.lists(BLOCK, min_size=1, max_size=4)), min_size=1, max_size=4
).map(lambda contents: [{"role": "user", "content": c} for c in contents])
TOOL = st.one_of(
    TEXT.map(lambda d: {"name": "f", "description": d, "input_schema": {"type": "object"}}),
    st.just({"type": "web_search_20250305", "name": "web_search", "max_uses": 2}),
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    family = draw(st.sampled_from(sorted(pricing.FAMILIES)))
    model = family + draw(st.sampled_from(["", "-20250929"]))
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": draw(st.integers(1, 300_000)),
        "messages": draw(MESSAGES),
    }
    if draw(st.booleans()):
        out["system"] = draw(st.one_of(TEXT, st.lists(CACHE.flatmap(text_block), max_size=3)))
    tools = draw(st.lists(TOOL, max_size=2))
    if tools:
        out["tools"] = tools
    geo = draw(st.sampled_from([None, "global", "us"]))
    if geo and pricing.FAMILIES[family].geo:
        out["inference_geo"] = geo
    return out


def most_input(request: dict[str, Any]) -> int:
    """Independently of the bound: a token at least a byte of text, framing per block, an image
    at most its family's ceiling, the tool prompt."""
    price = price_of(request["model"])
    texts, blocks = 0, len(request["messages"]) + 1
    for block in pricing.content_blocks(request):
        blocks += 1
        if block["type"] == "image":
            texts += price.image_tokens
        else:
            texts += len(json.dumps(block, ensure_ascii=False).encode())
    for message in request["messages"]:
        if isinstance(message["content"], str):
            texts += len(message["content"].encode())
    if isinstance(request.get("system"), str):
        texts += len(request["system"].encode())
    tools = request.get("tools") or []
    texts += sum(len(json.dumps(t).encode()) for t in tools) + (pricing.TOOLS_TOKENS if tools else 0)
    return texts + FRAMING * blocks


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests(), data=st.data())
def test_no_usage_a_request_allows_costs_more_than_its_bound(request, data):
    assume(pricing.unbounded_reason(request) is None)
    line = json.dumps({"custom_id": "r", "params": request}).encode()
    batch_bound = pricing.request_bound(request, len(line), batch=True)
    list_bound = pricing.request_bound(request, len(line), batch=False)
    # Given the usage the API could return: input split between plain, writes (1-hour ones only
    # when the request names that TTL) and reads; output up to max_tokens; where it ran
    total = data.draw(st.integers(0, most_input(request)))
    hour_ok = '"1h"' in json.dumps(request)
    hour = data.draw(st.integers(0, total)) if hour_ok else 0
    five = data.draw(st.integers(0, total - hour))
    reads = data.draw(st.integers(0, total - hour - five))
    geo = request.get("inference_geo") or (
        data.draw(st.sampled_from(["global", "us"])) if price_of(request["model"]).geo else None
    )
    usage = {
        "input_tokens": total - hour - five - reads,
        "output_tokens": data.draw(st.integers(0, request["max_tokens"])),
        "cache_creation_input_tokens": hour + five,
        "cache_read_input_tokens": reads,
        "cache_creation": {"ephemeral_5m_input_tokens": five, "ephemeral_1h_input_tokens": hour},
        "inference_geo": geo,
        "service_tier": "batch",
    }
    # When
    cost = cost_of(request["model"], usage)
    # Then
    assert cost.batch_usd <= batch_bound + 1e-8
    assert cost.list_usd <= list_bound + 1e-8


def test_the_price_table_ships_with_the_layer():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "prices.json" in data["batch_relay"]
    assert (root / "layers/relay/batch_relay/prices.json").is_file()  # the layer's CodeUri is layers/relay


# The budget's give-back: applied once, even when the SDK sends it again after a lost answer


def test_a_give_back_sent_twice_frees_the_room_once(store, monkeypatch):
    from batch_relay.budget import Budget
    from batch_relay.settings import Settings

    env = {"TABLE_NAME": "requests", "BUCKET_NAME": "bucket", "TOPIC_ARN": "arn:aws:sns:us-east-1:1:t"}
    env["DAILY_BUDGET_USD"] = "10"
    budget = Budget(Settings.from_env(env), store)
    store.add({"pk": "batch#a", "kind": "batch"})
    assert budget.commit(4.0, "2026-12-07", mark="batch#a")
    # Given a client whose writes to the day's budget are applied, their answer lost, and
    # sent again (what a botocore retry does): the caller sees the second answer
    client = store.table.meta.client
    send = client._make_api_call

    def twice(operation, kwargs):
        if "budget#" not in json.dumps(kwargs, default=str) or operation == "GetItem":
            return send(operation, kwargs)
        send(operation, kwargs)
        return send(operation, kwargs)

    monkeypatch.setattr(client, "_make_api_call", twice)
    # When 1 USD of the 4 is spent
    budget.settle("batch#a", 4.0, "2026-12-07", 1.0)
    budget.settle("batch#a", 4.0, "2026-12-07", 1.0)  # and a retry of ours
    # Then 3 come back, once
    monkeypatch.setattr(client, "_make_api_call", send)
    assert store.committed("2026-12-07") == pytest.approx(1.0)
    assert store.get("batch#a")["budget_settled"] is True


def test_extra_prices_are_checked_when_a_function_starts() -> None:
    from batch_relay.settings import Settings

    base = {"TABLE_NAME": "tab", "BUCKET_NAME": "bucket", "TOPIC_ARN": "arn:aws:sns:us-east-1:1:t"}
    good = '{"claude-x-1": {"input": 3, "output": 15, "aliases": ["claude-x"]}}'
    assert Settings.from_env(base | {"EXTRA_PRICES": good}).extra_prices == good
    for bad in (
        '{"claude-x-1": {"input": "three"}}',
        "{not json",
        '{"claude-x-1-20260101": {"input": 1, "output": 2}}',
    ):
        with pytest.raises(ValueError, match="EXTRA_PRICES"):
            Settings.from_env(base | {"EXTRA_PRICES": bad})
