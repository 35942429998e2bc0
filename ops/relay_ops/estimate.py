"""What a file of requests will cost, before any of it is sent.

Each request is priced as the relay bounds it (`pricing.bound`): its input tokens, and max_tokens of
output, the most it can write. Nothing guesses a typical answer length: the figures are upper
bounds, exact in their input part. Input tokens are counted by the API
(`count_tokens`, free); a line the API could not count is estimated from its bytes
(`pricing.input_tokens_of`), as the relay itself does, and said so with the reason.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from batch_relay.errors import ApiAccessError, TransientError
from batch_relay.pricing import bound, input_tokens_of, price_of
from pydantic import ValidationError

# Counting stops for the rest of the file after this many transient failures in a row: an API that
# is down or throttling would otherwise be asked (and waited for) once a line.
MAX_FAILURES_IN_A_ROW = 3
NO_CREDENTIALS = "no ANTHROPIC_API_KEY or ANTHROPIC_BASE_URL to count with"
NOT_ASKED = "counting skipped (--no-count)"
# Where the relay's functions find the Anthropic key (the deployment's secret).
KEY_VARIABLES = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "API_KEY_SECRET_ARN")


@dataclass
class Priced:
    """One request line, priced."""

    n: int
    model: str
    input_tokens: int
    max_tokens: int
    # None when the API counted the input tokens; otherwise why they were estimated.
    estimated: str | None = None

    def usd(self, batch: bool) -> float:
        return bound(self.model, self.input_tokens, self.max_tokens, batch=batch)


@dataclass
class Counter:
    """Input tokens from `count` (the API's count), or from a line's bytes when counting fails.

    Identical requests are counted once. A refused key, a missing client setting or too many
    transient failures in a row end counting for the lines after; a request the API refuses to
    count (a 400) is estimated alone.
    """

    count: Callable[[dict[str, Any]], int] | None
    stopped: str | None = None
    _known: dict[str, int] = field(default_factory=dict)
    _failures: int = 0

    @classmethod
    def for_environment(cls, count: Callable[[dict[str, Any]], int], ask: bool = True) -> Counter:
        if not ask:
            return cls(None, stopped=NOT_ASKED)
        if not any(os.environ.get(k) for k in KEY_VARIABLES):
            return cls(None, stopped=NO_CREDENTIALS)
        return cls(count)

    def __call__(self, params: dict[str, Any], line: bytes) -> tuple[int, str | None]:
        if self.count is None or self.stopped:
            return input_tokens_of(len(line)), self.stopped or NO_CREDENTIALS
        key = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
        if key in self._known:
            return self._known[key], None
        try:
            tokens = self.count(params)
        except Exception as exc:  # any failure: the line is still priced, from its bytes
            why = reason(exc)
            if isinstance(exc, TransientError):
                self._failures += 1
                if self._failures >= MAX_FAILURES_IN_A_ROW:
                    self.stopped = f"{why}, {self._failures} times in a row: the rest not counted"
            elif isinstance(exc, ApiAccessError | ValidationError | TypeError):
                self.stopped = why
            return input_tokens_of(len(line)), why
        self._failures = 0
        self._known[key] = tokens
        return tokens, None


def reason(exc: BaseException) -> str:
    """Why a count failed, in one short line."""
    if isinstance(exc, ValidationError):  # the relay's client reads its function's settings
        missing = sorted({str(e["loc"][0]) for e in exc.errors(include_input=False) if e["loc"]})
        return f"the relay's Anthropic client needs its function settings ({', '.join(missing)})"
    if isinstance(exc, TypeError) and "api_key" in str(exc):
        return "no Anthropic API key"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"count_tokens failed: {text[:200]}"


COLUMNS = [
    "model",
    "requests",
    "input_tokens",
    "max_output_tokens",
    "batch_usd",
    "list_usd",
    "saved_usd",
    "estimated",
    "price",
]
NUMERIC = COLUMNS[1:8]


def rows(priced: Iterable[Priced]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per model, then in total: requests, input tokens, the output bound and what they cost at
    batch price and at list price. `price` is "dearest" for a model with no known price."""
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for p in priced:
        row = sums[p.model]
        row["requests"] += 1
        row["input_tokens"] += p.input_tokens
        row["max_output_tokens"] += p.max_tokens
        row["batch_usd"] += p.usd(batch=True)
        row["list_usd"] += p.usd(batch=False)
        row["estimated"] += p.estimated is not None
    out = [_row(model, row, "list" if price_of(model) else "dearest") for model, row in sorted(sums.items())]
    total: dict[str, float] = defaultdict(float)
    for row in sums.values():
        for k, v in row.items():
            total[k] += v
    return out, _row("total", total, "")


def _row(model: str, sums: dict[str, float], price: str) -> dict[str, Any]:
    batch, listed = sums.get("batch_usd", 0.0), sums.get("list_usd", 0.0)
    return {
        "model": model,
        **{k: int(sums.get(k, 0)) for k in ("requests", "input_tokens", "max_output_tokens")},
        "batch_usd": round(batch, 8),
        "list_usd": round(listed, 8),
        "saved_usd": round(listed - batch, 8),
        "estimated": int(sums.get("estimated", 0)),
        "price": price,
    }


def spans(numbers: Iterable[int]) -> str:
    """Line numbers as ranges: "1, 4-6, 9"."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
