"""The savings report's arithmetic, and the estimate's, on table items and lines written out by hand."""

from __future__ import annotations

import json
import re

import pytest
from relay_ops import savings


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
        [req("a", "succeeded", cost=0.5), req("b", "succeeded", cost=0.5, route="realtime")], ["route"]
    )
    assert [(r["route"], r["batch_usd"]) for r in rows] == [("batch", 0.5), ("realtime", 1.0)]


def test_a_table_with_nothing_completed_still_makes_a_page():
    page = savings.page(savings.gather([req("d", "rejected")]))
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S)[1])
    assert data["totals"]["requests"] == 0 and data["totals"]["rejected"] == 1
    assert page.count('class="figure"') == 7 and "no completed requests" in page


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
    assert savings.time_unit(seconds)[1] == unit


def realtime(rid, list_usd, **extra):
    """A request answered in realtime: it paid the list price, it saved nothing (batch_usd says what
    a batch would have charged)."""
    return req(rid, "succeeded", route="realtime", **extra) | {
        "cost": {"batch_usd": list_usd / 2, "list_usd": list_usd, "saved_usd": 0.0, "paid_usd": list_usd}
    }


def rescued(rid, list_usd, ref, estimate, billed=None):
    """Answered in realtime after it was taken out of batch <ref>; `billed`: what its copy cost."""
    item = realtime(rid, list_usd, rescued_from=ref)
    item["cost"]["both_ways_usd"] = estimate
    return item | ({"both_ways_usd": billed} if billed is not None else {})


def batch_record(ref, status):
    return {
        "kind": "batch",
        "pk": f"batch#{ref}",
        "ref": ref,
        "status": status,
        "batch_id": f"msgbatch_{ref}",
    }


def test_realtime_answers_count_once_at_list_price_and_batch_copies_on_top():
    items = [
        req("b", "succeeded", cost=0.5),  # batch: paid 0.5 of 1.0
        realtime("r", 1.0),  # realtime at claim: paid 1.0
        rescued("billed", 2.0, "done", estimate=1.0, billed=0.75),  # its batch ran it: 0.75
        rescued("never-ran", 2.0, "done", estimate=1.0),  # its batch was collected without it
        rescued("running", 4.0, "late", estimate=2.0),  # its batch has not ended: the estimate
        batch_record("done", "collected"),
        batch_record("late", "polling"),
    ]
    s = savings.gather(items)
    t = s.totals
    assert t["requests"] == 5 and t["realtime"] == 4
    # Paid: the batch price, or the list price for realtime; never both
    assert (t["batch_usd"], t["list_usd"], t["saved_usd"]) == (9.5, 10.0, 0.5)
    assert t["realtime_usd"] == 9.0
    # Both ways: what the batch billed, or the estimate while the batch may still run it
    assert (t["both_ways"], t["both_ways_usd"], t["both_ways_estimated"]) == (2, 2.75, 1)
    assert t["deadline_usd"] == 9.0 * 0.5 + 2.75
    # Saved net of the batch copies paid on top
    assert t["net_saved_usd"] == 0.5 - 2.75
    routes = {r["route"]: r for r in s.by_route}
    batch = routes["batch"]
    assert (batch["requests"], batch["realtime"], batch["batch_usd"]) == (1, 0, 0.5)
    assert (routes["realtime"]["requests"], routes["realtime"]["batch_usd"]) == (4, 9.0)
    assert routes["batch"]["both_ways"] == 0 and routes["realtime"]["both_ways_usd"] == 2.75


def test_spend_stacks_up_to_list_price_with_realtime_apart():
    items = [
        req("b", "succeeded", cost=0.5),
        realtime("r", 1.0),
        realtime("s", 3.0, model="claude-sonnet-4-5"),
    ]
    charts = {chart_id: fig for chart_id, _, _, fig in savings.charts(savings.gather(items))}
    spend = {t.name: list(t.y) for t in charts["spend-by-model"].data}
    assert spend["paid (batch price)"] == [0.5, 0.0]
    assert spend["paid (list price, realtime)"] == [1.0, 3.0]
    assert spend["saved (net)"] == [0.5, 0.0]
    assert spend["list price"] == [2.0, 3.0]
    deadlines = {t.name: (list(t.y), list(t.customdata)) for t in charts["deadlines"].data}
    assert deadlines["saving given up (realtime)"] == ([2.0], [2])
    assert deadlines["batch copy also paid (both ways)"] == ([0.0], [0])
    # The page draws what deadlines cost only when they cost something
    assert savings.page(savings.gather(items)).count('class="figure"') == 8
    assert savings.page(savings.gather(items[:1])).count('class="figure"') == 7


# The estimate's arithmetic (`batch-relay estimate`)


def test_an_estimate_prices_input_and_max_tokens_per_model():
    from batch_relay.pricing import DEAREST
    from relay_ops.estimate import Priced, rows

    priced = [
        Priced(1, "claude-haiku-4-5", 1000, 200),
        Priced(2, "claude-haiku-4-5", 3000, 800, estimated="no key"),
        Priced(3, "claude-nobody-1", 10, 10),
    ]
    models, total = rows(priced)
    haiku, nobody = models
    # haiku: 4000 input tokens at $1/M, each priced as a cache write (1.25x), and 1000 output
    # tokens at $5/M, halved in a batch
    assert (haiku["requests"], haiku["input_tokens"], haiku["max_output_tokens"], haiku["estimated"]) == (
        2, 4000, 1000, 1
    )  # fmt: skip
    assert haiku["list_usd"] == pytest.approx(0.005 + 0.005) and haiku["batch_usd"] == pytest.approx(0.005)
    assert haiku["saved_usd"] == pytest.approx(0.005) and haiku["price"] == "list"
    assert nobody["price"] == "dearest"
    assert nobody["list_usd"] == pytest.approx(10 * (DEAREST.input_usd * 1.25 + DEAREST.output_usd) / 1e6)
    assert total["requests"] == 3
    assert total["list_usd"] == pytest.approx(haiku["list_usd"] + nobody["list_usd"])


def test_counting_stops_on_a_refused_key_or_a_run_of_failures_but_not_on_one_bad_request():
    from batch_relay.errors import ApiAccessError, BatchRefusedError, TransientError
    from batch_relay.pricing import input_tokens_of
    from relay_ops.estimate import Counter, spans

    answers = iter([BatchRefusedError("400: model"), 7, TransientError("500"), TransientError("500"), 9,
                    TransientError("529"), TransientError("529"), TransientError("529")])  # fmt: skip
    asked = []

    def count(params):
        asked.append(params)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    counter = Counter(count)
    line, guess = b"x" * 30, input_tokens_of(30)
    got = [counter({"n": n}, line) for n in range(8)]
    assert [t for t, _ in got] == [guess, 7, guess, guess, 9, guess, guess, guess]
    assert got[0][1] == "count_tokens failed: 400: model" and got[1][1] is None
    # Two transient failures and a success: counting goes on; three in a row: it stops
    assert counter({"n": 8}, line)[1] == counter.stopped and "3 times in a row" in counter.stopped
    assert len(asked) == 8
    # The same request is counted once
    again = Counter(lambda p: asked.append(p) or 5)
    asked.clear()
    assert again({"a": 1}, line) == again({"a": 1}, line) == (5, None) and len(asked) == 1
    # A refused key stops at once
    refused = Counter(lambda p: (_ for _ in ()).throw(ApiAccessError("401")))
    refused({}, line)
    assert refused.stopped and refused({"b": 2}, line) == (guess, refused.stopped)
    assert spans([9, 1, 4, 5, 6, 2]) == "1-2, 4-6, 9"


def test_a_realtime_cost_from_before_paid_usd_is_paid_at_list_price():
    old = realtime("old", 2.0)
    old["cost"] = {"batch_usd": 2.0, "list_usd": 2.0, "saved_usd": 0.0}
    items = [old, realtime("new", 2.0)]
    assert [savings.paid(i) for i in items] == [2.0, 2.0]
    assert savings.gather(items).totals["batch_usd"] == 4.0


def test_waits_are_measured_against_the_flush_wait_and_the_deadline():
    # Given an urgent request that waited 5 minutes in its tier (flush wait 2) and one within it,
    # and a bulk request done 10 minutes past its deadline
    def timed(rid, tier, queued, done, deadline=None):
        return req(rid, "succeeded", tier=tier) | {
            "received_at": "2026-11-20T10:00:00Z",
            "submitted_at": f"2026-11-20T10:{queued:02d}:00Z",
            "completed_at": f"2026-11-20T10:{done:02d}:00Z",
            **({"deadline": f"2026-11-20T10:{deadline:02d}:00Z"} if deadline is not None else {}),
        }

    items = [timed("a", "urgent", 5, 6, 30), timed("b", "urgent", 1, 2), timed("c", "bulk", 1, 50, 40)]
    s = savings.gather(items, {"urgent": 120, "bulk": 1800})
    w = {r["tier"]: r for r in s.waits}
    # Then the time in the tier is held against the flush wait, completion against the deadline
    assert (w["urgent"]["queued_max"], w["urgent"]["over_max_wait"]) == (300, 1)
    assert (w["bulk"]["over_max_wait"], w["bulk"]["missed"], w["bulk"]["least_spare"]) == (0, 1, -600)
    assert (w["urgent"]["with_deadline"], w["urgent"]["median_spare"]) == (1, 24 * 60)
    charts = {chart_id: fig for chart_id, _, _, fig in savings.charts(s)}
    flush = {t.name: t for t in charts["queued"].data}["tier's flush wait"]
    assert dict(zip(flush.x, flush.y, strict=True)) == {"urgent": 2.0, "bulk": 30.0}
    assert charts["queued"].layout.yaxis.title.text == "minutes, receipt to submission"


def test_a_log_axis_labels_its_ticks_with_whole_values():
    # Given tiers a hundredfold apart
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_yaxes(title="minutes, receipt to completion")
    savings.log_if_spread(fig, [60.0, 3 * 3600.0])
    # Then the axis is logarithmic and every label is the value it marks
    assert fig.layout.yaxis.type == "log"
    assert list(fig.layout.yaxis.ticktext) == [f"{v:g}" for v in fig.layout.yaxis.tickvals]
    assert list(fig.layout.yaxis.tickvals) == [0.5, 1, 2, 5, 10, 20, 50, 100, 200]
