"""What a request costs, exactly once it has run, and at most before it runs.

Prices are data (`prices.json`, each figure with its source), per model family: input and output
per million tokens, cache write factors for the 5-minute and the 1-hour TTL, the cache read factor,
long-context bands, whether `inference_geo` multipliers apply, and the most tokens one image can
cost; server tools (web search per 1,000 searches), geo multipliers and the batch discount beside
them. An operator adds or overrides families with `EXTRA_PRICES` (the stack's `ExtraPrices`): a JSON
object of the same shape as `families`, checked when a function starts.

A model id is priced by its family only when it is the family's id, that id with a `-YYYYMMDD`
snapshot suffix, or one of the family's aliases. Nothing else matches: `claude-opus-4-9` is not
Opus 4, `claude-sonnet-5` is not Sonnet 4.

Rules the relay keeps:
- A model with no price: its completion's `cost` is null and `UnpricedModel` is counted. With
  `DailyBudgetUSD` set, such a request is rejected at intake (and refused alone if it is still
  pending when the cap is set later): no upper bound of its cost exists, and spend is never
  counted as 0.
- With `DailyBudgetUSD` set, intake also rejects what no bound covers: server tools (web search,
  web fetch, code execution, MCP servers, tool search), whose searches and results add input and
  output past `max_tokens` that nothing in the request limits; PDF or file documents (base64, URL
  or `file_id`), whose tokens per page have no documented ceiling; an unknown `inference_geo`; a
  `speed` other than standard. Images (base64, URL or file) are bounded: each at its family's
  `image_tokens`.
- The bound: input tokens at most one per byte of the request line (a byte-level tokenizer
  never spends less than a byte on a token, whatever the model's tokenizer; JSON's own syntax
  covers the per-message framing), less base64 image data, plus `image_tokens` per image and a
  tool-prompt allowance when tools are given; every input token priced at the dearest kind the
  request allows (plain, a 5-minute write, or a 1-hour write when it names `ttl: 1h`); max_tokens
  of output; the long-context band's prices once the input bound passes it; the geo multiplier
  (the dearest one when the request names none, since a workspace default may apply); then the
  batch discount for a batch.
- A cost from usage is exact: cache writes split by TTL (`cache_creation`, or all of
  `cache_creation_input_tokens` at 5 minutes when the split is absent), reads, the band by the
  request's total input tokens, the geo usage reports, web searches. The batch discount halves
  every token line; the search fee is not discounted (the pricing page's batch table lists token
  prices only), so a batch's saving is on tokens alone.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .models import Cost

_DATA = json.loads((Path(__file__).parent / "prices.json").read_text())
BATCH_DISCOUNT: float = _DATA["batch_discount"]
GEO: dict[str, float] = _DATA["geo"]
WEB_SEARCH = _DATA["server_tools"]["web_search"]
# Most families' factors; each family's own are in the table.
CACHE_WRITE_FACTOR = 1.25
CACHE_READ_FACTOR = 0.1
# The tool-use system prompt is a few hundred tokens (the pricing page's "Tool use" table: 346 at
# most on current models); typed client tools (bash, text editor, computer, memory) add their own
# definitions (computer use: 735 plus a 466-499 token system prompt). Rounded up.
TOOLS_TOKENS = 1000
TYPED_TOOL_TOKENS = 1500
CLIENT_TOOLS = ("bash_", "text_editor_", "computer_", "memory_")
_SNAPSHOT = re.compile(r"-\d{8}")
EXTRA_VARIABLE = "EXTRA_PRICES"


@dataclass(frozen=True)
class Band:
    above: int  # input tokens of the request past which the band's prices apply
    input_usd: float
    output_usd: float


@dataclass(frozen=True)
class Price:
    input_usd: float  # per million input tokens
    output_usd: float  # per million output tokens
    write_5m: float = 1.25
    write_1h: float = 2.0
    read: float = 0.1
    bands: tuple[Band, ...] = ()
    geo: bool = False  # inference_geo multipliers apply
    image_tokens: int = 2000
    aliases: tuple[str, ...] = ()

    def rates(self, input_tokens: int) -> tuple[float, float]:
        """Input and output USD per million for a request of this many input tokens."""
        rates = (self.input_usd, self.output_usd)
        for band in self.bands:
            if input_tokens > band.above:
                rates = (band.input_usd, band.output_usd)
        return rates


def parse(families: Mapping[str, Any]) -> dict[str, Price]:
    """Families as the table writes them; ValueError on anything malformed."""
    out: dict[str, Price] = {}
    if not isinstance(families, Mapping):
        raise ValueError("prices must be a JSON object of model families")
    for name, f in families.items():
        try:
            price = Price(
                input_usd=float(f["input"]),
                output_usd=float(f["output"]),
                write_5m=float(f.get("write_5m", 1.25)),
                write_1h=float(f.get("write_1h", 2.0)),
                read=float(f.get("read", 0.1)),
                bands=tuple(
                    Band(int(b["above"]), float(b["input"]), float(b["output"])) for b in f.get("bands", [])
                ),
                geo=bool(f.get("geo", False)),
                image_tokens=int(f.get("image_tokens", 2000)),
                aliases=tuple(str(a) for a in f.get("aliases", [])),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"price of {name!r} is malformed: {type(exc).__name__} {exc}") from None
        figures = (price.input_usd, price.output_usd, price.write_5m, price.write_1h, price.read)
        if min(figures) < 0 or price.image_tokens < 0 or _SNAPSHOT.search(name):
            raise ValueError(f"price of {name!r}: figures must be >= 0 and the name a family id (no date)")
        out[name] = price
    return out


def parse_extra(text: str | None) -> dict[str, Price]:
    return parse(json.loads(text)) if text else {}


FAMILIES: dict[str, Price] = parse(_DATA["families"]) | parse_extra(os.environ.get(EXTRA_VARIABLE))
_ALIASES = {alias: name for name, p in FAMILIES.items() for alias in p.aliases}
DEAREST = max(FAMILIES.values(), key=lambda p: p.input_usd + p.output_usd)


def family_of(model: str) -> str | None:
    """The family a model id is priced as: its own id, with a snapshot date, or an alias."""
    names = [model, model[:-9]] if _SNAPSHOT.fullmatch(model[-9:]) else [model]
    for name in names:
        if name in FAMILIES:
            return name
        if name in _ALIASES:
            return _ALIASES[name]
    return None


def price_of(model: str) -> Price | None:
    name = family_of(model)
    return FAMILIES[name] if name else None


def cost_of(model: str, usage: dict[str, Any] | None) -> Cost | None:
    """What the request cost at batch price, what it would have cost at list price, and the
    difference; None (and `UnpricedModel` counted) when its model or geo has no price."""
    if not usage:
        return None
    price = price_of(model)
    geo = usage.get("inference_geo")
    multiplier = GEO.get(geo) if geo else 1.0
    if price is None or multiplier is None:
        # Imported here: the metrics object reads its namespace when first made, in a function.
        from .observability import MetricUnit, metrics

        metrics.add_metric(name="UnpricedModel", unit=MetricUnit.Count, value=1)
        return None
    created = usage.get("cache_creation") or {}
    hour = created.get("ephemeral_1h_input_tokens") or 0
    # The split, when given, sums to the total; what it leaves out is priced as 5-minute writes.
    written = usage.get("cache_creation_input_tokens") or 0
    five = max(created.get("ephemeral_5m_input_tokens") or 0, written - hour)
    reads = usage.get("cache_read_input_tokens") or 0
    fresh = usage.get("input_tokens") or 0
    rate_in, rate_out = price.rates(fresh + five + hour + reads)
    tokens_usd = (
        multiplier
        * (
            rate_in * (fresh + five * price.write_5m + hour * price.write_1h + reads * price.read)
            + rate_out * (usage.get("output_tokens") or 0)
        )
        / 1e6
    )
    searches = (usage.get("server_tool_use") or {}).get("web_search_requests") or 0
    search_usd = searches * WEB_SEARCH["usd_per_1000"] / 1000
    list_usd = tokens_usd + search_usd
    search_factor = BATCH_DISCOUNT if WEB_SEARCH["batch_discount"] else 1.0
    batch_usd = tokens_usd * BATCH_DISCOUNT + search_usd * search_factor
    return Cost(
        batch_usd=round(batch_usd, 8),
        list_usd=round(list_usd, 8),
        saved_usd=round(list_usd - batch_usd, 8),
        paid_usd=round(batch_usd, 8),
    )


def realtime_cost_of(model: str, usage: dict[str, Any] | None) -> Cost | None:
    """A realtime answer's cost: the list price paid, nothing saved; batch_usd still says what a
    batch would have charged, never what was paid."""
    cost = cost_of(model, usage)
    if cost is None:
        return None
    return cost.model_copy(update={"saved_usd": 0.0, "paid_usd": cost.list_usd})


def paid(cost: Cost) -> float:
    """What a request's answer was billed, from a cost with or without `paid_usd`."""
    return cost.paid_usd if cost.paid_usd is not None else cost.batch_usd


# Before a request runs: the most it can cost.

# An estimate of input tokens from bytes (English runs about four characters a token, CJK about
# three UTF-8 bytes): for reports, never for the budget, which takes `tokens_bound`.
BYTES_PER_TOKEN = 3


def input_tokens_of(line_bytes: int) -> int:
    return max(1, -(-line_bytes // BYTES_PER_TOKEN))


SERVER_PARAMS = ("mcp_servers", "container")


def unbounded_reason(params: Mapping[str, Any]) -> str | None:
    """Why no upper bound of this request's cost exists (so a budget cannot take it), or None."""
    model = str(params.get("model"))
    if price_of(model) is None:
        return (
            f"model {model!r} has no price in this deployment (ExtraPrices can add one), so its cost "
            "has no upper bound for DailyBudgetUSD"
        )
    geo = params.get("inference_geo")
    if geo is not None and geo not in GEO:
        return f"inference_geo {geo!r} has no price multiplier in this deployment"
    if params.get("speed") not in (None, "standard"):
        return f"speed {params.get('speed')!r} has no price in this deployment"
    for name in SERVER_PARAMS:
        if params.get(name):
            return f"{name} runs tools on Anthropic's side, whose tokens no request field bounds"
    for tool in params.get("tools") or []:
        kind = str(tool.get("type") or "custom") if isinstance(tool, dict) else "custom"
        if kind != "custom" and not kind.startswith(CLIENT_TOOLS):
            return (
                f"server tool {kind!r}: its calls add input and output past max_tokens that nothing "
                "in the request bounds, so DailyBudgetUSD cannot take it"
            )
    for block in content_blocks(params):
        if block.get("type") == "document":
            source = block["source"] if isinstance(block.get("source"), dict) else {}
            if source.get("type") not in ("text", "content"):
                return (
                    f"a {source.get('type')} document (PDF or file): its tokens per page have no "
                    "documented ceiling, so DailyBudgetUSD cannot take it; send its text instead"
                )
        if block.get("type") == "container_upload":
            return "container_upload needs code execution, whose tokens no request field bounds"
    return None


def tokens_bound(params: Mapping[str, Any], line_bytes: int) -> int:
    """The most input tokens the request can be billed for (see the module's rules)."""
    price = price_of(str(params.get("model"))) or DEAREST
    images = media = 0
    for block in content_blocks(params):
        if block.get("type") == "image":
            images += 1
            source = block["source"] if isinstance(block.get("source"), dict) else {}
            data = source.get("data")
            if source.get("type") == "base64" and isinstance(data, str):
                media += len(data)  # base64 is ASCII: a byte a character
    tools = params.get("tools") or []
    typed = sum(1 for t in tools if isinstance(t, dict) and str(t.get("type") or "custom") != "custom")
    overhead = (TOOLS_TOKENS if tools else 0) + typed * TYPED_TOOL_TOKENS
    return max(1, line_bytes - media) + images * price.image_tokens + overhead


def request_bound(params: Mapping[str, Any], line_bytes: int, batch: bool) -> float | None:
    """The most this request can cost in USD, at batch or list price; None when nothing bounds it
    (`unbounded_reason` says why)."""
    if unbounded_reason(params) is not None:
        return None
    price = price_of(str(params["model"]))
    assert price is not None
    geo = params.get("inference_geo")
    multiplier = GEO[geo] if geo else max(GEO.values()) if price.geo else 1.0
    return bound(
        str(params["model"]),
        tokens_bound(params, line_bytes),
        int(params["max_tokens"]),
        batch,
        hour=_names_hour(params),
        geo=multiplier,
    )


def bound(
    model: str, input_tokens: int, max_tokens: int, batch: bool, *, hour: bool = False, geo: float = 1.0
) -> float:
    """The most a request of `input_tokens` (at most) and `max_tokens` can cost, in USD: every
    input token at the dearest kind (a 1-hour write if `hour`), at the band its input may reach.
    A model with no price is priced as the dearest family (for reports; the budget refuses it)."""
    price = price_of(model) or DEAREST
    rate_in, rate_out = price.rates(input_tokens)
    dearest = max(1.0, price.write_5m, price.write_1h if hour else 0.0)
    usd = geo * (input_tokens * rate_in * dearest + max_tokens * rate_out) / 1e6
    return usd * BATCH_DISCOUNT if batch else usd


def _names_hour(params: Mapping[str, Any]) -> bool:
    """Whether any cache_control of the request asks for the 1-hour TTL."""
    marks = [b.get("cache_control") for b in content_blocks(params)]
    marks += [t.get("cache_control") for t in params.get("tools") or [] if isinstance(t, dict)]
    marks.append(params.get("cache_control"))
    return any(isinstance(m, dict) and m.get("ttl") == "1h" for m in marks)


def content_blocks(params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every content block of the system prompt and the messages, nested ones included."""
    system = params.get("system")
    if isinstance(system, list):
        yield from _walk(system)
    for message in params.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            yield from _walk(content)


def _walk(blocks: list[Any]) -> Iterator[dict[str, Any]]:
    for block in blocks:
        if not isinstance(block, dict):
            continue
        yield block
        inner = block.get("content")
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "content":
            inner = source.get("content")
        if isinstance(inner, list):
            yield from _walk(inner)
