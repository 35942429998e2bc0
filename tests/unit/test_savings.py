"""The savings report's arithmetic, on table items written out by hand."""

from __future__ import annotations

import json
import re

import pytest
from relay_local import savings


def req(rid, status, tier="urgent", model="claude-haiku-4-5", attempts=1, cost=None, **extra):
    return {
        "kind": "request",
        "request_id": rid,
        "status": status,
        "tier": tier,
        "model": model,
        "attempts": attempts,
        "received_at": "2026-11-24T23:50:00Z",
        "completed_at": "2026-11-25T00:10:00Z",
        **({"cost": {"batch_usd": cost, "list_usd": 2 * cost, "saved_usd": cost}} if cost else {}),
        **extra,
    }


def test_rejected_and_unfinished_requests_are_left_out_and_days_follow_completion():
    items = [
        req("a", "succeeded", cost=0.25),
        req("b", "succeeded", tier="bulk", attempts=2, cost=0.5, completed_at="2026-11-26T01:00:00Z"),
        req("c", "errored", attempts=3),
        req("d", "rejected"),
        req("e", "pending", completed_at=None),
        req("f", "claimed", completed_at=None),
    ]
    s = savings.gather(items, {"urgent": 600, "bulk": 7200})
    t = s.totals
    assert (t["requests"], t["rejected"], t["succeeded"], t["errored"], t["retried"]) == (3, 1, 2, 1, 2)
    assert (t["batch_usd"], t["list_usd"], t["saved_usd"]) == (0.75, 1.5, 0.75)
    assert [(r["day"], r["requests"], r["batch_usd"]) for r in s.by_day] == [
        ("2026-11-25", 2, 0.25),
        ("2026-11-26", 1, 0.5),
    ]
    # Tiers in the order of their max wait, on every chart
    assert [w["tier"] for w in s.waits] == ["urgent", "bulk"]
    assert [r["tier"] for r in s.by_tier] == ["urgent", "bulk"]
    assert [r["tier"] for r in s.shares] == ["urgent", "bulk", "all"]
    assert s.shares[-1] | {} == {
        "tier": "all",
        "requests": 3,
        "errored": 1,
        "expired": 0,
        "canceled": 0,
        "retried": 2,
    }


def test_percentiles_are_nearest_rank():
    ordered = [float(n) for n in range(1, 21)]
    assert savings.percentile(ordered, 0.5) == 10.0
    assert savings.percentile(ordered, 0.95) == 19.0
    assert savings.percentile([7.0], 0.95) == 7.0


def test_a_route_of_realtime_is_grouped_apart():
    rows = savings.group(
        [req("a", "succeeded", cost=0.5), req("b", "succeeded", cost=1.0, route="realtime")], ["route"]
    )
    assert [(r["route"], r["batch_usd"]) for r in rows] == [("batch", 0.5), ("realtime", 1.0)]


def test_a_table_with_nothing_completed_still_makes_a_page():
    page = savings.page(savings.gather([req("d", "rejected")]))
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S)[1])
    assert data["totals"]["requests"] == 0 and data["totals"]["rejected"] == 1
    assert page.count('class="figure"') == 6 and "no completed requests" in page


def test_text_from_the_table_cannot_end_the_page_s_scripts():
    item = req("x", "succeeded", cost=0.1, tier="</script><script>alert(1)</script>")
    page = savings.page(savings.gather([item]))
    assert "<script>alert(1)" not in page
    figures = re.findall(r'class="figure" data-chart="[^"]+">(.*?)</script>', page, re.S)
    assert any("</script><script>alert(1)" in json.dumps(json.loads(f)) for f in figures)


@pytest.mark.parametrize(
    ("seconds", "unit"), [([30.0], "seconds"), ([600.0], "minutes"), ([4 * 3600.0], "hours")]
)
def test_chart_units_follow_the_largest_value(seconds, unit):
    assert savings._unit(seconds)[1] == unit
