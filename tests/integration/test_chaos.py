"""The randomized fault test: a few seeds in every run of the suite (`make chaos SEEDS=200` for more).

Each seed storms the whole pipeline with AWS refusals, functions killed right after a call acted,
API refusals, lost create answers and cut result streams, then heals and checks the promises."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_no_promise_breaks_under_random_faults(seed, monkeypatch):
    from relay_local import chaos

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    out = chaos.run(seed, requests=40, aws_refuse=0.06, aws_kill=0.05, api_rate=0.25)
    assert sum(out.faults.values()) > 0, "the storm injected no fault"
    assert out.lost == [], "accepted requests without a completion"
    assert out.conflicting == [], "one request answered two ways"
    assert out.billed_twice == [], "a request in two batches the API created"
    assert out.live_batches == 0
    assert out.completions >= out.accepted
