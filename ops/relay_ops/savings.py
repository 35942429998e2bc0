"""The savings report: what batching cost and saved, how long requests took, how often they failed.

Everything is read from the request table's items (`Store.scan`), so the report says what the relay
recorded, whichever machine runs it. `group` gives the rows of `batch-relay report`; `gather` and
`page` give one self-contained HTML page of Plotly charts. The page carries plotly.js inline and
each chart's figure as JSON beside it, so it opens from a file with no network, and what a chart
draws can be read back from the page.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from batch_relay.clock import parse
from batch_relay.pricing import BATCH_DISCOUNT

FINAL = ("succeeded", "errored", "expired", "canceled")
FAILED = ("errored", "expired", "canceled")
USD = ("batch_usd", "list_usd", "saved_usd")
# What deadlines cost: requests answered in realtime (at list price) and those that ran both ways.
ROUTE_COUNTS = ("realtime", "both_ways")
ROUTE_USD = ("realtime_usd", "both_ways_usd")
TOKENS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
GROUPS = ("day", "tier", "model", "status", "route")
# A due tier is flushed by the next schedule tick (the template's default, a minute): waiting in a
# tier longer than its flush wait by less than this is on time.
TICK_SECONDS = 60
# Chart colours: what was paid (at batch price, at list price), what was saved, what list price
# would have cost, and what batch copies of realtime answers cost.
PAID, REALTIME, SAVED, LIST, BOTH = "#4c78a8", "#f58518", "#54a24b", "#e45756", "#b279a2"


def completed(items: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Requests with a final outcome (rejected messages never reached a batch: no cost, no wait),
    each with `both_ways_usd` as `both_ways` finds it (None for a request that ran one way) and
    `both_ways_estimated` (its batch copy may still run)."""
    items = list(items)
    collected = {
        i.get("ref") or str(i.get("pk", "")).removeprefix("batch#")
        for i in items
        if i.get("kind") == "batch" and i.get("status") == "collected"
    }
    return [
        {
            **i,
            "both_ways_usd": both_ways(i, collected),
            "both_ways_estimated": i.get("both_ways_usd") is None and both_ways(i, collected) is not None,
        }
        for i in items
        if i.get("kind") == "request" and i.get("status") in FINAL and i.get("completed_at")
    ]


def both_ways(item: Mapping[str, Any], collected: set[str]) -> float | None:
    """What the batch copy of a request answered in realtime cost as well, or None.

    The completion's `cost.both_ways_usd` is an estimate while the batch it was taken from runs,
    and stays on the item after. The batch's results record what the copy really cost on the item
    (`both_ways_usd`); once that batch is collected without recording it, the copy was never
    billed (canceled before it ran, or errored).
    """
    if item.get("both_ways_usd") is not None:
        return float(item["both_ways_usd"])
    estimate = (item.get("cost") or {}).get("both_ways_usd")
    if estimate is None or item.get("rescued_from") in collected:
        return None
    return float(estimate)


def paid(item: Mapping[str, Any]) -> float:
    """What a request's (or a completion's) answer was billed: its cost's `paid_usd`, or for a
    cost from before that field, the list price of a realtime answer and the batch price of the
    others. A batch copy of a realtime answer (`both_ways_usd`) is on top."""
    cost = item.get("cost") or {}
    if cost.get("paid_usd") is not None:
        return float(cost["paid_usd"])
    return float(cost.get("list_usd" if item.get("route") == "realtime" else "batch_usd") or 0.0)


def keys(item: Mapping[str, Any]) -> dict[str, str]:
    return {
        "day": str(item["completed_at"])[:10],
        "tier": item.get("tier") or "-",
        "model": item.get("model") or "-",
        "status": item["status"],
        "route": item.get("route") or "batch",
    }


def group(requests: Iterable[Mapping[str, Any]], by: list[str]) -> list[dict[str, Any]]:
    """Requests, tokens and cost of completed requests, one row per value of the `by` keys.

    A row's `batch_usd` is what was paid (`paid`): the batch price, or for a realtime answer its
    list price (its `realtime_usd` too, never added twice); `both_ways_usd` is paid on top, for
    batch copies of requests answered in realtime (`completed` resolves it), and `net_saved_usd`
    is what was saved once they are paid."""
    sums: dict[tuple[str, ...], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for item in requests:
        values = keys(item)
        row = sums[tuple(values[b] for b in by)]
        row["requests"] += 1
        usage, cost = item.get("usage") or {}, item.get("cost") or {}
        for k in TOKENS:
            row[k] += int(usage.get(k) or 0)
        for k in USD:
            row[k] += paid(item) if k == "batch_usd" else float(cost.get(k) or 0.0)
        if values["route"] == "realtime":
            row["realtime"] += 1
            row["realtime_usd"] += float(cost.get("list_usd") or 0.0)
        both = item.get("both_ways_usd")
        if both:
            row["both_ways"] += 1
            row["both_ways_usd"] += float(both)
    return [
        dict(zip(by, key, strict=True))
        | {"requests": int(row["requests"])}
        | {k: int(row[k]) for k in TOKENS}
        | {k: round(row[k], 6) for k in USD}
        | {k: int(row[k]) for k in ROUTE_COUNTS}
        | {k: round(row[k], 6) for k in ROUTE_USD}
        | {"net_saved_usd": round(row["saved_usd"] - row["both_ways_usd"], 6)}
        for key, row in sorted(sums.items())
    ]


def deadline_usd(row: Mapping[str, Any]) -> float:
    """What deadlines cost: the saving realtime answers gave up, and the batch copies also paid."""
    return round(row["realtime_usd"] * (1 - BATCH_DISCOUNT) + row["both_ways_usd"], 6)


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted values: the smallest value with p of them at or below it."""
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


@dataclass
class Savings:
    totals: dict[str, Any]
    by_day: list[dict[str, Any]]
    by_tier: list[dict[str, Any]]
    by_model: list[dict[str, Any]]
    # Batch and realtime: requests and what they cost, apart.
    by_route: list[dict[str, Any]]
    # Per tier: receipt-to-completion seconds (p50, p95, max) against its max wait.
    waits: list[dict[str, Any]]
    # Per batch the API ended: created to ended, in seconds.
    turnaround: list[dict[str, Any]]
    # Per tier, and "all": how many requests ended errored, expired or canceled, and how many retried.
    shares: list[dict[str, Any]]
    generated_at: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))


def gather(items: Iterable[Mapping[str, Any]], max_wait: Mapping[str, float] | None = None) -> Savings:
    """The report from the table's items; `max_wait` is each tier's max_wait_seconds, when known."""
    items = list(items)
    done = completed(items)
    [totals] = group(done, []) or [
        {
            "requests": 0,
            **dict.fromkeys(TOKENS, 0),
            **dict.fromkeys(USD, 0.0),
            **dict.fromkeys(ROUTE_COUNTS, 0),
            **dict.fromkeys(ROUTE_USD, 0.0),
            "net_saved_usd": 0.0,
        }
    ]
    statuses = Counter(i["status"] for i in done)
    retried = sum(1 for i in done if int(i.get("attempts") or 1) > 1)
    rejected = sum(1 for i in items if i.get("kind") == "request" and i.get("status") == "rejected")

    waits = []
    by_tier: dict[str, list[float]] = defaultdict(list)
    # The yardsticks: a tier's flush wait bounds how long a request waits in it before it is
    # submitted (not its completion, which adds the batch's turnaround); a deadline bounds completion.
    queued: dict[str, list[float]] = defaultdict(list)
    spare: dict[str, list[float]] = defaultdict(list)
    for i in done:
        tier = keys(i)["tier"]
        if i.get("received_at"):
            by_tier[tier].append(parse(i["completed_at"]) - parse(i["received_at"]))
            # A retried request was submitted again after its first batch: only first tries count.
            if i.get("submitted_at") and int(i.get("attempts") or 1) == 1:
                queued[tier].append(max(0.0, parse(i["submitted_at"]) - parse(i["received_at"])))
        if i.get("deadline"):
            spare[tier].append(parse(i["deadline"]) - parse(i["completed_at"]))
    for tier in sorted(by_tier, key=lambda t: ((max_wait or {}).get(t, math.inf), t)):
        ordered, q, d = sorted(by_tier[tier]), sorted(queued[tier]), sorted(spare[tier])
        limit = (max_wait or {}).get(tier)
        waits.append(
            {
                "tier": tier,
                "requests": len(ordered),
                "p50": round(percentile(ordered, 0.5), 3),
                "p95": round(percentile(ordered, 0.95), 3),
                "max": round(ordered[-1], 3),
                "max_wait_seconds": limit,
                # Receipt to submission (first tries a batch took), against the flush wait.
                "queued": len(q),
                "queued_p50": round(percentile(q, 0.5), 3) if q else None,
                "queued_max": round(q[-1], 3) if q else None,
                "over_max_wait": sum(1 for v in q if limit is not None and v > limit + TICK_SECONDS),
                # Deadline minus completion, for requests with a deadline (negative: missed).
                "with_deadline": len(d),
                "missed": sum(1 for v in d if v < 0),
                "least_spare": round(d[0], 3) if d else None,
                "median_spare": round(percentile(d, 0.5), 3) if d else None,
            }
        )

    turnaround = sorted(
        (
            {
                "batch_id": b["batch_id"],
                "tier": b.get("tier") or "-",
                "requests": int(b.get("request_count") or 0),
                "submitted_at": b["submitted_at"],
                "seconds": round(parse(b["ended_at"]) - parse(b["submitted_at"]), 3),
            }
            for b in items
            if b.get("kind") == "batch" and b.get("batch_id") and b.get("submitted_at") and b.get("ended_at")
        ),
        key=lambda b: b["submitted_at"],
    )

    shares = []
    order = {w["tier"]: n for n, w in enumerate(waits)}
    tiers = sorted({keys(i)["tier"] for i in done}, key=lambda t: (order.get(t, len(order)), t))
    for tier in [*tiers, "all"]:
        chosen = [i for i in done if tier == "all" or keys(i)["tier"] == tier]
        counts = Counter(i["status"] for i in chosen)
        shares.append(
            {
                "tier": tier,
                "requests": len(chosen),
                **{s: counts[s] for s in FAILED},
                "retried": sum(1 for i in chosen if int(i.get("attempts") or 1) > 1),
            }
        )

    all_waits = sorted(w for ws in by_tier.values() for w in ws)
    return Savings(
        totals=totals
        | {s: statuses[s] for s in FINAL}
        | {
            "retried": retried,
            "rejected": rejected,
            "batches": len({i["batch_id"] for i in items if i.get("kind") == "batch" and i.get("batch_id")}),
            "p50_seconds": round(percentile(all_waits, 0.5), 3) if all_waits else None,
            "p95_seconds": round(percentile(all_waits, 0.95), 3) if all_waits else None,
            "deadline_usd": deadline_usd(totals),
            # Realtime answers whose batch copy may still run: their both-ways cost is estimated.
            "both_ways_estimated": sum(1 for i in done if i.get("both_ways_estimated")),
        },
        by_day=group(done, ["day"]),
        by_tier=sorted(group(done, ["tier"]), key=lambda r: order.get(r["tier"], len(order))),
        by_model=group(done, ["model"]),
        by_route=group(done, ["route"]),
        waits=waits,
        turnaround=turnaround,
        shares=shares,
    )


# charts


def charts(s: Savings) -> list[tuple[str, str, str, Any]]:
    """(id, title, what it shows, Plotly figure) for each chart of the page."""
    import plotly.graph_objects as go

    def spend(rows: list[dict[str, Any]], key: str, label: str) -> Any:
        x = [r[key] for r in rows]
        # Paid at batch price, paid at list price (realtime), batch copies also paid and saved (net)
        # stack up to the list price.
        fig = go.Figure(
            [
                go.Bar(
                    name="paid (batch price)",
                    x=x,
                    y=[round(r["batch_usd"] - r["realtime_usd"], 6) for r in rows],
                    marker_color=PAID,
                ),
                go.Bar(
                    name="paid (list price, realtime)",
                    x=x,
                    y=[r["realtime_usd"] for r in rows],
                    customdata=[r["realtime"] for r in rows],
                    marker_color=REALTIME,
                    hovertemplate="%{x}: $%{y:.4f} (%{customdata} requests)<extra>realtime</extra>",
                ),
                go.Bar(
                    name="batch copies of realtime answers",
                    x=x,
                    y=[r["both_ways_usd"] for r in rows],
                    customdata=[r["both_ways"] for r in rows],
                    marker_color=BOTH,
                    hovertemplate="%{x}: $%{y:.4f} (%{customdata} requests)<extra>batch copies</extra>",
                ),
                # Net: what the batch copies cost is not saved; the stack still adds up to list price.
                go.Bar(name="saved (net)", x=x, y=[r["net_saved_usd"] for r in rows], marker_color=SAVED),
                go.Scatter(
                    name="list price",
                    x=x,
                    y=[r["list_usd"] for r in rows],
                    mode="markers",
                    marker={"symbol": "line-ew-open", "size": 36, "color": LIST, "line": {"width": 3}},
                ),
            ]
        )
        fig.update_layout(barmode="stack", xaxis={"type": "category", "title": label})
        fig.update_yaxes(title="USD", tickformat="$.3~r")
        return fig

    def per_tier(rows: list[dict[str, Any]], bars: tuple[tuple[str, str, str], ...], what: str) -> Any:
        """Bars per tier of durations, in the one unit that suits the largest of them."""
        values = [r[k] for r in rows for k, _, _ in bars if r[k] is not None]
        div, unit = time_unit([abs(v) for v in values])
        fig = go.Figure(
            [
                go.Bar(
                    name=name,
                    x=[r["tier"] for r in rows],
                    y=[None if r[key] is None else round(r[key] / div, 6) for r in rows],
                    customdata=[r["requests"] for r in rows],
                    marker_color=colour,
                    hovertemplate="%{x}: %{y:.1f} "
                    + unit
                    + " (%{customdata} requests)<extra>"
                    + name
                    + "</extra>",
                )
                for key, name, colour in bars
            ]
        )
        fig.update_layout(barmode="group", xaxis={"type": "category", "title": "tier"})
        fig.update_yaxes(title=f"{unit}, {what}")
        return fig, div, values

    waits, _, values = per_tier(
        s.waits,
        (("p50", "median", "#9ecae9"), ("p95", "95th percentile", PAID), ("max", "slowest", "#1d3f6e")),
        "receipt to completion",
    )
    # Tiers may differ a hundredfold (minutes against hours): then a log scale keeps each one readable.
    log_if_spread(waits, values)

    flushed = [w for w in s.waits if w["queued"]]
    queued, div, values = per_tier(
        flushed,
        (("queued_p50", "median", "#9ecae9"), ("queued_max", "slowest", "#1d3f6e")),
        "receipt to submission",
    )
    queued.add_trace(
        go.Scatter(
            name="tier's flush wait",
            x=[w["tier"] for w in flushed if w["max_wait_seconds"]],
            y=[round(w["max_wait_seconds"] / div, 6) for w in flushed if w["max_wait_seconds"]],
            mode="markers",
            marker={"symbol": "line-ew-open", "size": 14, "color": LIST, "line": {"width": 3}},
        )
    )
    # The flush wait as a dashed line across each tier's group of bars (category i sits at x = i).
    for n, w in enumerate(flushed):
        if w["max_wait_seconds"]:
            y = w["max_wait_seconds"] / div
            queued.add_shape(
                type="line",
                x0=n - 0.45,
                x1=n + 0.45,
                y0=y,
                y1=y,
                line={"color": LIST, "width": 2, "dash": "dash"},
            )
    log_if_spread(queued, [*values, *(w["max_wait_seconds"] or 0 for w in flushed)])

    timed = [w for w in s.waits if w["with_deadline"]]
    spare, _, _ = per_tier(
        timed,
        (("least_spare", "least to spare", LIST), ("median_spare", "median to spare", SAVED)),
        "from completion to deadline",
    )
    spare.update_yaxes(zeroline=True, zerolinecolor="#1f2933")

    div, unit = time_unit([b["seconds"] for b in s.turnaround])
    turnaround = go.Figure(
        [
            go.Scatter(
                name=tier,
                x=[b["submitted_at"] for b in s.turnaround if b["tier"] == tier],
                y=[round(b["seconds"] / div, 6) for b in s.turnaround if b["tier"] == tier],
                customdata=[[b["batch_id"], b["requests"]] for b in s.turnaround if b["tier"] == tier],
                hovertemplate="%{customdata[0]}<br>%{customdata[1]} requests, %{y:.1f} "
                + unit
                + "<extra></extra>",
                mode="markers",
                marker={"size": 9},
            )
            for tier in sorted({b["tier"] for b in s.turnaround})
        ]
    )
    turnaround.update_xaxes(title="created")
    turnaround.update_yaxes(title=f"{unit}, created to ended", rangemode="tozero")

    outcomes = go.Figure(
        [
            go.Bar(
                name=status,
                x=[r["tier"] for r in s.shares],
                y=[_share(r[status], r["requests"]) for r in s.shares],
                customdata=[r[status] for r in s.shares],
                marker_color=colour,
                hovertemplate="%{x}: %{y:.1f}% (%{customdata})<extra>" + status + "</extra>",
            )
            for status, colour in zip((*FAILED, "retried"), (LIST, "#f58518", "#9d9da1", PAID), strict=True)
        ]
    )
    outcomes.update_layout(barmode="group", xaxis={"type": "category", "title": "tier"})
    outcomes.update_yaxes(title="% of completed requests", rangemode="tozero")

    days = [r["day"] for r in s.by_day]
    deadlines = go.Figure(
        [
            go.Bar(
                name="saving given up (realtime)",
                x=days,
                y=[round(r["realtime_usd"] * (1 - BATCH_DISCOUNT), 6) for r in s.by_day],
                customdata=[r["realtime"] for r in s.by_day],
                marker_color=REALTIME,
                hovertemplate="%{x}: $%{y:.4f} (%{customdata} answered in realtime)<extra></extra>",
            ),
            go.Bar(
                name="batch copy also paid (both ways)",
                x=days,
                y=[r["both_ways_usd"] for r in s.by_day],
                customdata=[r["both_ways"] for r in s.by_day],
                marker_color=BOTH,
                hovertemplate="%{x}: $%{y:.4f} (%{customdata} requests ran both ways)<extra></extra>",
            ),
        ]
    )
    deadlines.update_layout(barmode="stack", xaxis={"type": "category", "title": "day (UTC)"})
    deadlines.update_yaxes(title="USD", tickformat="$.3~r", rangemode="tozero")

    return [
        ("spend-by-day", "Spend per day", "Paid at batch price, paid at list price for realtime answers, "
         "paid for batch copies of requests answered in realtime, and saved against list price (net of "
         "those copies).", spend(
            s.by_day, "day", "day (UTC)"
        )),
        ("spend-by-tier", "Spend by tier", "The same, for each latency tier.", spend(
            s.by_tier, "tier", "tier"
        )),
        ("spend-by-model", "Spend by model", "The same, for each model.", spend(
            s.by_model, "model", "model"
        )),
        ("queued", "Time in the tier, against its flush wait", "Per tier: how long requests waited "
         "in their tier before a batch took them (median and slowest), against the tier's flush wait "
         "(max_wait_seconds: how long a request may wait before its tier is flushed). A tier held by the "
         "day's budget waits longer; a request with a near deadline goes sooner.", queued),
        ("waits", "Receipt to completion", "Per tier: median, 95th percentile and slowest request, "
         "from receipt to its completion: the time in the tier plus its batch's turnaround.", waits),
    ] + ([
        ("deadlines-spare", "Against each request's deadline", "Per tier, for requests with a deadline: "
         "the least and the median time left between completion and deadline (below zero: missed).",
         spare),
    ] if timed else []) + [
        ("turnaround", "Batch turnaround", "Each batch the API ended: from its creation to its end.",
         turnaround),
        ("outcomes", "Errored and retried", "Share of completed requests that ended errored, expired or "
         "canceled, and that needed more than one batch (transient errors and expiries are retried).",
         outcomes),
    ] + ([
        # Only when a deadline cost something: a relay that batches everything has nothing to show.
        ("deadlines", "What deadlines cost", "Per day: the saving given up by requests answered in realtime "
         "(at list price, since no batch could make their deadline), and the batch price of the copies "
         "that also ran in the batch they were taken out of.", deadlines),
    ] if s.totals["realtime"] or s.totals["both_ways"] else [])  # fmt: skip


def time_unit(seconds: list[float]) -> tuple[float, str]:
    """Seconds, minutes or hours, whichever reads best for the largest of the values."""
    top = max(seconds, default=0.0)
    return (1.0, "seconds") if top < 120 else (60.0, "minutes") if top < 3 * 3600 else (3600.0, "hours")


def log_if_spread(fig: Any, values: list[float]) -> None:
    """A log scale when values differ over thirtyfold, ticked at 1-2-5 steps with their whole values
    (Plotly's own log ticks label the ones between powers of ten with a bare digit: "2", "5")."""
    shown = [v for v in values if v and v > 0]
    if not shown or max(shown) / min(shown) <= 30:
        return
    unit = fig.layout.yaxis.title.text.split(",")[0]
    div = {"seconds": 1.0, "minutes": 60.0, "hours": 3600.0}[unit]
    # Values come in seconds; the axis is in its unit.
    lo, hi = min(shown) / div, max(shown) / div
    ticks = [
        m * 10.0**e
        for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
        for m in (1, 2, 5)
        if lo / 2 <= m * 10.0**e <= hi * 2
    ]
    fig.update_yaxes(type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])


def _share(n: int, of: int) -> float:
    return round(100 * n / of, 3) if of else 0.0


def page(s: Savings, title: str = "Batch relay: savings report", notes: Iterable[str] = ()) -> str:
    """One HTML page, plotly.js inline: it opens from a file, with no network. `notes` are lines
    shown above the charts (the demo names the batches it made late there)."""
    from plotly.offline import get_plotlyjs

    t = s.totals
    saved_pct = _share(t["net_saved_usd"], t["list_usd"]) if t["list_usd"] else 0.0
    cards = [
        ("requests completed", f"{t['requests']:,}", f"{t['rejected']:,} rejected at intake"),
        (
            "paid",
            f"${t['batch_usd']:,.4f}",
            f"list price ${t['list_usd']:,.4f}"
            + (f"; ${t['both_ways_usd']:,.4f} more for batch copies" if t["both_ways"] else ""),
        ),
        (
            "saved (net)",
            f"${t['net_saved_usd']:,.4f}",
            f"{saved_pct:.0f}% of list price"
            + (f", after ${t['both_ways_usd']:,.4f} of batch copies" if t["both_ways"] else ""),
        ),
        ("errored", f"{_share(t['errored'], t['requests']):.1f}%", f"{t['errored']:,} requests"),
        ("retried", f"{_share(t['retried'], t['requests']):.1f}%", f"{t['retried']:,} needed another batch"),
        ("batches", f"{t['batches']:,}", _latency(t)),
        (
            "answered in realtime",
            f"{t['realtime']:,}",
            f"{t['requests'] - t['realtime']:,} by batch; ${t['realtime_usd']:,.4f} paid at list price",
        ),
        ("cost of deadlines", f"${t['deadline_usd']:,.4f}", _both_ways(t)),
    ]
    sections = []
    for chart_id, heading, text, fig in charts(s):
        fig.update_layout(
            template="plotly_white",
            height=380,
            margin={"l": 70, "r": 20, "t": 20, "b": 60},
            legend={"orientation": "h", "y": 1.12},
        )
        sections.append(
            f"<section><h2>{html.escape(heading)}</h2><p>{html.escape(text)}</p>"
            f'<div class="chart" id="chart-{chart_id}"></div>'
            f'<script type="application/json" class="figure" data-chart="chart-{chart_id}">'
            f"{_script_json(fig.to_json())}</script></section>"
        )
    return _PAGE.format(
        title=html.escape(title),
        generated=html.escape(s.generated_at),
        cards="".join(
            f'<div class="card"><div class="label">{html.escape(a)}</div><div class="value">{html.escape(b)}'
            f'</div><div class="note">{html.escape(c)}</div></div>'
            for a, b, c in cards
        ),
        notes="".join(f"<li>{html.escape(n)}</li>" for n in notes),
        sections="\n".join(sections),
        totals=_script_json(json.dumps(asdict(s) | {"generated_at": s.generated_at}, sort_keys=True)),
        plotly=get_plotlyjs(),
    )


def _latency(t: Mapping[str, Any]) -> str:
    if t.get("p50_seconds") is None:
        return "no completed requests"
    return (
        f"receipt to completion: median {t['p50_seconds'] / 60:.1f} min, p95 {t['p95_seconds'] / 60:.1f} min"
    )


def _both_ways(t: Mapping[str, Any]) -> str:
    note = f"{t['both_ways']:,} ran both ways: ${t['both_ways_usd']:,.4f} paid for batch copies"
    if t.get("both_ways_estimated"):
        note += f" ({t['both_ways_estimated']:,} estimated, their batch still running)"
    return note


def _script_json(text: str) -> str:
    """JSON safe inside a <script> element: no `<`, `>` or `&` can end it or start markup."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2933; margin: 0;
  background: #f5f7fa; }}
main {{ max-width: 1100px; margin: 0 auto; padding: 24px; }}
h1 {{ font-size: 24px; margin: 0 0 4px; }} h2 {{ font-size: 18px; margin: 0 0 2px; }}
.sub {{ color: #52606d; margin: 0 0 20px; }}
.cards {{ display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px;
  margin-bottom: 20px; }}
.card, section {{ background: #fff; border: 1px solid #e4e7eb; border-radius: 8px; padding: 14px 16px; }}
.card .label {{ color: #52606d; font-size: 13px; }} .card .value {{ font-size: 24px; font-weight: 600; }}
.card .note {{ color: #7b8794; font-size: 12px; }}
section {{ margin-bottom: 16px; }} section p {{ color: #52606d; margin: 0 0 6px; }}
.notes {{ color: #52606d; margin: 0 0 16px; }}
</style>
<script>{plotly}</script>
</head><body><main>
<h1>{title}</h1>
<p class="sub">From the relay's request table, {generated}. Each request is priced from its token
usage; the Message Batches API charges half the list price, and a request no batch could answer by its
deadline is answered in realtime, at list price.</p>
<div class="cards">{cards}</div>
<ul class="notes">{notes}</ul>
{sections}
<script type="application/json" id="report-data">{totals}</script>
</main>
<script>
for (const spec of document.querySelectorAll("script.figure")) {{
  const figure = JSON.parse(spec.textContent);
  Plotly.newPlot(spec.dataset.chart, figure.data, figure.layout,
                 {{responsive: true, displaylogo: false}});
}}
</script>
</body></html>
"""
