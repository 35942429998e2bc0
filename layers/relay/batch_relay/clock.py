"""Time in one place, so tests and benchmarks can run hours of batch life in seconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime

now = time.time
sleep = time.sleep


def iso(ts: float | None = None) -> str:
    """A sortable UTC timestamp with milliseconds (used as an index sort key)."""
    moment = datetime.fromtimestamp(now() if ts is None else ts, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
