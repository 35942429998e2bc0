"""List prices per million tokens and the batch discount, to report what each request saved.

Cache writes are priced at 1.25x input (five-minute cache) and cache reads at 0.1x input; the
batch discount applies on top of both, as Anthropic bills it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .models import Cost

BATCH_DISCOUNT = 0.5
CACHE_WRITE_FACTOR = 1.25
CACHE_READ_FACTOR = 0.1


class Price(NamedTuple):
    input_usd: float  # per million input tokens
    output_usd: float  # per million output tokens


# Matched by the longest prefix, so dated snapshots (claude-sonnet-4-5-20250929) find their family.
PRICES: dict[str, Price] = {
    "claude-opus-4-5": Price(5.0, 25.0),
    "claude-opus-4-6": Price(5.0, 25.0),
    "claude-opus-4-1": Price(15.0, 75.0),
    "claude-opus-4": Price(15.0, 75.0),
    "claude-3-opus": Price(15.0, 75.0),
    "claude-sonnet-4": Price(3.0, 15.0),
    "claude-3-7-sonnet": Price(3.0, 15.0),
    "claude-3-5-sonnet": Price(3.0, 15.0),
    "claude-haiku-4-5": Price(1.0, 5.0),
    "claude-3-5-haiku": Price(0.8, 4.0),
    "claude-3-haiku": Price(0.25, 1.25),
}


def price_of(model: str) -> Price | None:
    best = max((p for p in PRICES if model.startswith(p)), key=len, default=None)
    return PRICES[best] if best else None


def cost_of(model: str, usage: dict[str, Any] | None) -> Cost | None:
    """What the request cost at batch price, what it would have cost at list price, and the difference."""
    price = price_of(model)
    if price is None or not usage:
        return None
    per_token_in = price.input_usd / 1e6
    list_usd = (
        (usage.get("input_tokens") or 0) * per_token_in
        + (usage.get("cache_creation_input_tokens") or 0) * per_token_in * CACHE_WRITE_FACTOR
        + (usage.get("cache_read_input_tokens") or 0) * per_token_in * CACHE_READ_FACTOR
        + (usage.get("output_tokens") or 0) * price.output_usd / 1e6
    )
    batch_usd = list_usd * BATCH_DISCOUNT
    return Cost(
        batch_usd=round(batch_usd, 8), list_usd=round(list_usd, 8), saved_usd=round(list_usd - batch_usd, 8)
    )


def realtime_cost_of(model: str, usage: dict[str, Any] | None) -> Cost | None:
    """A realtime answer's cost: the list price, nothing saved."""
    cost = cost_of(model, usage)
    if cost is None:
        return None
    return Cost(batch_usd=cost.list_usd, list_usd=cost.list_usd, saved_usd=0.0)


# Before a request runs, its cost has an upper bound: its input tokens (counted by the API, or
# estimated as a byte of its request line in three: English runs about four characters a token,
# CJK about three UTF-8 bytes), each priced as a cache write, and max_tokens of output. A model
# with no known price is priced as the dearest one.
BYTES_PER_TOKEN = 3
DEAREST = max(PRICES.values(), key=lambda p: p.input_usd + p.output_usd)


def input_tokens_of(line_bytes: int) -> int:
    return max(1, -(-line_bytes // BYTES_PER_TOKEN))


def bound(model: str, input_tokens: int, max_tokens: int, batch: bool) -> float:
    """The most one request can cost, in USD, at batch price or at list price."""
    price = price_of(model) or DEAREST
    # Every input token may be a cache write, the dearest kind.
    usd = input_tokens * price.input_usd * CACHE_WRITE_FACTOR / 1e6 + max_tokens * price.output_usd / 1e6
    return usd * BATCH_DISCOUNT if batch else usd
