"""Polling cost and delay on the real state machine with simulated time: counts, not times."""

from __future__ import annotations

import pytest

from benchmarks.polling import measure

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("batch_seconds", [60, 3600, 23 * 3600])
def test_polling_stays_cheap_and_prompt(batch_seconds, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    m = measure(batch_seconds)
    assert m["transitions"] <= 200
    assert 0 <= m["delay_seconds"] <= m["delay_limit_seconds"]
