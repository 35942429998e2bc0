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
