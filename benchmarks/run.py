"""`make bench`: every benchmark figure, printed as tables and written to benchmarks/results.json.

BENCH_REQUESTS sets the size of the metered pipeline runs (default 2,000);
BENCH_DEADLINE_REQUESTS the size of the simulated day of mixed deadlines (default 300).
`python -m benchmarks.run deadlines` runs that day alone, and `python -m benchmarks.run cost` the
cost model alone (a metered run and idle submitter runs), each replacing only its figures in
results.json. See benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from benchmarks import buffer, claim, cost, deadlines, fullsize, pipeline, polling

OUT = Path(__file__).parent / "results.json"
TARGETS = {
    "calls_per_request": 2.5,
    "write_units_per_request": 5.0,
    "baseline_call_ratio": 1.5,
    "usd_per_million": 15.0,
    "savings_ratio": 100.0,
    "overhead_ratio": 3.0,
    "transitions_23h": 200,
}


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in [h, *(r[i] for r in rows)]) for i, h in enumerate(header)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)))


def check(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def full_size(out: dict[str, Any]) -> None:
    memory = cost.memory_gb()["SubmitterFunction"] * 1024
    rows = []
    for label, n, size in (("100k x 2 KB", 100_000, 2000), ("near 256 MB", 25_000, 10_000)):
        m = fullsize.submitter(n, size)
        key = "submit_100k" if n == 100_000 else "submit_256mb"
        out |= {
            f"{key}_requests": n,
            f"{key}_bytes": m["bytes"],
            f"{key}_wall_seconds": m["wall_seconds"],
            f"{key}_peak_rss_mb": m["peak_rss_mb"],
        }
        rows.append(
            [
                label,
                n,
                f"{m['bytes'] / 1e6:.0f} MB",
                m["upload_seconds"],
                m["create_seconds"],
                m["peak_rss_mb"],
                f"{memory / 2:.0f}",
                check(m["peak_rss_mb"] < memory / 2),
            ]
        )
    table(
        "Submitter at full size (JSONL to S3, then one streamed create; 1 batch each)",
        ["run", "requests", "body", "upload s", "create s", "peak RSS MB", "limit MB", ""],
        rows,
    )
    rows = []
    for n in (10_000, 100_000):
        m = fullsize.collector(n)
        key = f"collect_{n // 1000}k"
        out |= {
            f"{key}_wall_seconds": m["wall_seconds"],
            f"{key}_results_per_second": m["results_per_second"],
            f"{key}_peak_rss_mb": m["peak_rss_mb"],
        }
        rows.append([n, m["wall_seconds"], m["results_per_second"], m["peak_rss_mb"]])
    table(
        "Collector results stream at full size (read, stored 100 a chunk)",
        ["results", "wall s", "results/s", "peak RSS MB"],
        rows,
    )
    out["collect_rss_growth_mb"] = round(out["collect_100k_peak_rss_mb"] - out["collect_10k_peak_rss_mb"], 1)


def buffer_memory(out: dict[str, Any]) -> None:
    """One SQS batch of 100 pointers to 32 MB bodies through the buffer's handler."""
    memory = cost.memory_gb()["BufferFunction"] * 1024
    rows = []
    for kind, label in (("valid", "32 MB prompts, stored"), ("dense", "32 MB of {} values, refused")):
        m = buffer.run(100, kind)
        out |= {
            f"buffer_{kind}_records": m["records"],
            f"buffer_{kind}_wall_seconds": m["wall_seconds"],
            f"buffer_{kind}_base_rss_mb": m["base_rss_mb"],
            f"buffer_{kind}_peak_rss_mb": m["peak_rss_mb"],
        }
        rows.append(
            [
                label,
                m["records"],
                m["stored"],
                m["rejected"],
                m["wall_seconds"],
                m["base_rss_mb"],
                m["peak_rss_mb"],
                f"{memory / 2:.0f}",
                check(m["peak_rss_mb"] < memory / 2),
            ]
        )
    table(
        "Buffer, one SQS batch of 100 pointer bodies of 32 MB each (peak RSS of the handler's process)",
        ["bodies", "records", "stored", "refused", "wall s", "base MB", "peak RSS MB", "limit MB", ""],
        rows,
    )


def end_to_end(out: dict[str, Any], n: int) -> None:
    relay, naive, direct = pipeline.relay(n, logs=True), pipeline.naive(n), pipeline.direct(n)
    ops = sorted(set(relay["calls"]) | set(naive["calls"]))
    rows = [
        [op, f"{relay['calls'].get(op, 0) / n:.3f}", f"{naive['calls'].get(op, 0) / n:.3f}"] for op in ops
    ]
    per_request = relay["calls_total"] / n
    baseline = naive["calls_total"] / n
    rows.append(["total", f"{per_request:.3f}", f"{baseline:.3f}"])
    rows.append(
        ["DynamoDB write units", f"{relay['write_units'] / n:.2f}", f"{naive['write_units'] / n:.2f}"]
    )
    table(f"AWS calls per request, {n:,} requests end to end", ["operation", "relay", "naive"], rows)
    wcu = relay["write_units"] / n
    ratio = baseline / per_request
    print(
        f"calls/request {per_request:.2f} (target <= 2.5: {check(per_request <= 2.5)}); "
        f"write units/request {wcu:.2f} (target <= 5: {check(wcu <= 5)}); "
        f"{ratio:.2f}x fewer calls than the naive relay (target >= 1.5: {check(ratio >= 1.5)})"
    )
    out |= {
        "e2e_requests": n,
        "calls_per_request": round(per_request, 3),
        "write_units_per_request": round(wcu, 2),
        "naive_calls_per_request": round(baseline, 3),
        "naive_write_units_per_request": round(naive["write_units"] / n, 2),
        "baseline_call_ratio": round(ratio, 2),
        "transitions_per_batch": relay["transitions"] / max(1, relay["batches"]),
    }
    for op, count in relay["calls"].items():
        out[f"calls_{op.replace('.', '_')}"] = round(count / n, 4)

    modelled = claim.model(relay["calls_by_function"].get("SubmitterFunction", {}), n, relay["batches"])
    table(
        "A 100,000-request claim at AWS latencies (the submitter's calls here, scaled, x typical latency)",
        ["operation", "calls", "seconds"],
        [[r["operation"], f"{r['calls']:,}", r["seconds"]] for r in modelled["rows"]],
    )
    from batch_relay.submitter import CREATE_RESERVE_SECONDS, CREATE_RESERVE_SHARE

    timeout = cost.timeouts()["SubmitterFunction"]
    budget = timeout - max(CREATE_RESERVE_SECONDS, timeout * CREATE_RESERVE_SHARE)
    print(
        f"claim and upload of 100,000 requests: {modelled['seconds']:.0f} s "
        f"(claim budget {budget:.0f} s of the {timeout} s timeout: {check(modelled['seconds'] <= budget)}; "
        "a claim past its budget stops and submits what it has)"
    )
    out["claim_100k_modelled_seconds"] = modelled["seconds"]

    costs(out, relay)

    # The handlers' time less moto's answers to them: what the relay itself spent, whichever
    # thread ran it (Step Functions runs the poller's handlers in its own).
    handlers = sum(relay["durations"].values())
    own = handlers - relay["service_seconds"]
    overhead = relay["wall_seconds"] / direct["wall_seconds"]
    overhead_own = own / direct["wall_seconds"]
    rows = [
        [
            fn,
            f"{t:.2f}",
            f"{relay['service_by_function'].get(fn, 0.0):.2f}",
            f"{t - relay['service_by_function'].get(fn, 0.0):.2f}",
        ]
        for fn, t in relay["durations"].items()
    ]
    rows.append(["all handlers", f"{handlers:.2f}", f"{relay['service_seconds']:.2f}", f"{own:.2f}"])
    rows.append(["direct create + results", "", "", f"{direct['wall_seconds']:.2f}"])
    table(
        f"Pipeline overhead, {n:,} requests, queue to completion vs one direct create + results "
        f"(relay wall {relay['wall_seconds']:.1f} s)",
        ["function", "seconds", "inside moto", "own"],
        rows,
    )
    print(
        f"ratio {overhead:.1f}x with moto's time, {overhead_own:.2f}x the relay's own "
        f"(target <= 3: {check(overhead_own <= 3)})"
    )
    collect_per_result = relay["durations"].get("CollectResultsFunction", 0.0) / n
    needed = cost.invocations_needed(collect_per_result, 100_000, 600)
    print(
        f"collect: {collect_per_result * 1000:.1f} ms a result here; "
        f"a 100,000-result batch needs {needed} invocations of its 600 s budget"
    )
    out |= {
        "overhead_ratio": round(overhead, 2),
        "overhead_ratio_own": round(overhead_own, 2),
        "relay_own_seconds": round(own, 2),
        "relay_wall_seconds": round(relay["wall_seconds"], 1),
        "direct_wall_seconds": round(direct["wall_seconds"], 2),
        "collect_invocations_100k": needed,
    }


def costs(out: dict[str, Any], relay: dict[str, Any]) -> None:
    """The AWS bill: a month at zero traffic (idle scheduled runs, metered), and what a million
    requests add (from the metered run `relay`), with the prices the model assumes."""
    idle = pipeline.idle(10)
    floor = cost.per_month_at_zero(idle)
    table(
        f"Modelled AWS cost a month at zero traffic (USD; {cost.schedule_runs_a_month():,.0f} scheduled "
        f"submitter runs of {cost.idle_run_seconds(idle) * 1000:.0f} ms, {len(idle['metric_names'])} custom "
        f"metrics, {cost.alarm_metrics()} alarm metrics)",
        ["item", "USD"],
        [[k, f"{v:.2f}"] for k, v in floor.items()],
    )
    bill = cost.per_million(relay)
    saved = cost.savings_per_million()
    table(
        "Modelled AWS cost per million requests (USD, us-east-1 list prices)",
        ["service", "USD"],
        [[k, f"{v:.2f}"] for k, v in bill.items()],
    )
    extra = cost.metrics_with_traffic(relay, idle)
    print(
        f"with traffic, {len(extra['names'])} more custom metrics: {extra['usd_a_month']:.2f} USD a month "
        f"while requests keep coming ({', '.join(extra['names'])})"
    )
    savings_ratio = saved["saved_usd"] / bill["total"]
    print(
        f"batch pricing saves {saved['saved_usd']:,.0f} USD per million typical Sonnet requests "
        f"(1,000 in / 500 out): {savings_ratio:,.0f}x the AWS cost "
        f"(targets: < 15 USD {check(bill['total'] < 15)}, >= 100x {check(savings_ratio >= 100)})"
    )
    table(
        "Prices the model assumes (USD, us-east-1, on-demand, no free tier)",
        ["price", "USD"],
        [[k, f"{v:.10g}"] for k, v in cost.PRICES.items()],
    )
    out |= {f"usd_per_million_{k}": v for k, v in bill.items()}
    out |= {f"usd_a_month_at_zero_{k}": v for k, v in floor.items()}
    out |= {
        "usd_a_month_traffic_metrics": extra["usd_a_month"],
        "traffic_metric_names": extra["names"],
        "idle_run_seconds": round(cost.idle_run_seconds(idle), 3),
    }
    out |= {"anthropic_saved_usd_per_million": saved["saved_usd"], "savings_ratio": round(savings_ratio)}


def polled(out: dict[str, Any]) -> None:
    rows = []
    for label, seconds in (("1 minute", 60), ("1 hour", 3600), ("23 hours", 23 * 3600)):
        m = polling.measure(seconds)
        rows.append([label, m["transitions"], m["checks"], m["delay_seconds"], m["delay_limit_seconds"]])
        key = label.replace(" ", "_")
        out[f"polling_transitions_{key}"] = m["transitions"]
        out[f"polling_delay_seconds_{key}"] = m["delay_seconds"]
    table("Polling, one batch", ["batch ends after", "transitions", "checks", "delay s", "limit s"], rows)


def deadline_day(out: dict[str, Any], s: deadlines.Scenario) -> None:
    """A simulated day of mixed deadlines through the stack, beside the same day sent always by batch."""
    n = s.requests
    m = deadlines.measure(s)
    relay, batch = m["relay"], m["always_batch"]
    mix = ", ".join(f"{w:.0%} {deadlines.duration(sec)}" for w, sec in s.latency_mix)
    rows = []
    for label, r in (("relay", relay), ("always batch", batch)):
        late = r["late_by_route"]
        rows.append(
            [
                label,
                r["with_deadline"],
                f"{r['on_time_share']:.1%}",
                late["batch"],
                late["realtime"],
                late["unanswered"],
                deadlines.duration(r["worst_late_seconds"]) if r["late"] else "",
                r["by_route"]["batch"],
                r["by_route"]["realtime"],
                r["batches"],
            ]
        )
    table(
        f"Deadlines over a simulated day: {n:,} requests, {relay['with_deadline']} with a deadline; "
        f"batches take {mix}",
        [
            "run",
            "deadlines",
            "met",
            "late batch",
            "late realtime",
            "unanswered",
            "worst late",
            "batch",
            "realtime",
            "batches",
        ],
        rows,
    )
    ok = relay["late"] == 0 and relay["unanswered"] == 0 and not relay["answered_twice"]
    print(
        f"{relay['on_time_share']:.1%} answered by their deadline, each once (target 100%: {check(ok)}); "
        f"always batch would have missed {batch['late']} of {batch['with_deadline']}"
    )
    table(
        "Cost of the day, as the API billed it (USD: batch lines at batch price, realtime calls at list)",
        ["every request sent", "USD"],
        [
            ["realtime (list price)", f"{m['always_realtime_usd']:.4f}"],
            ["by batch, deadlines ignored", f"{batch['billed_usd']:.4f}"],
            ["as the relay sent them", f"{relay['billed_usd']:.4f}"],
        ],
    )
    kept = m["discount_kept_share"]
    print(
        f"batch discount kept: {kept:.1%} "
        f"(between always-realtime, 0%, and always-batch, 100%: {check(0 < kept <= 1)})"
    )
    print(
        f"realtime: {relay['realtime_at_claim']} at claim, {relay['rescued']} taken out of a running batch; "
        f"batches canceled, every request gone realtime: {relay['batches_canceled']}; ran both ways: "
        f"{relay['both_ways_count']} requests, {relay['both_ways_usd']:.4f} USD by their completions "
        f"({relay['ran_twice_count']} actually run by their batch, {relay['ran_twice_usd']:.4f} USD; "
        f"{relay['both_ways_estimated_unran']} estimated while their batch ran and never run by it; "
        f"{relay['both_ways_left_out']} rescued completions state none, their batch collected without them)"
    )
    print(
        f"{relay['sim_hours']} and {batch['sim_hours']} simulated hours in {relay['wall_seconds']:.0f} "
        f"and {batch['wall_seconds']:.0f} s, side by side; the submitter ran {relay['submitter_runs']} "
        f"and {batch['submitter_runs']} times, the schedule's idle runs skipped "
        f"({relay['unpredicted_runs'] + batch['unpredicted_runs']} runs found requests due unforeseen)"
    )
    out["deadlines"] = m


def main(only: str | None = None) -> None:
    """Every benchmark, or `only` one part (`deadlines`, `cost`), whose figures then replace their own
    in results.json."""
    warnings.filterwarnings("ignore")
    n = int(os.environ.get("BENCH_REQUESTS", "2000"))
    out: dict[str, Any] = json.loads(OUT.read_text()) if only and OUT.exists() else {}
    if only == "cost":
        costs(out, pipeline.relay(n, logs=True))
    elif only is None:
        full_size(out)
        buffer_memory(out)
        end_to_end(out, n)
        polled(out)
    if only in (None, "deadlines"):
        deadline_day(out, deadlines.Scenario(requests=int(os.environ.get("BENCH_DEADLINE_REQUESTS", "300"))))
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    import sys

    parts = sys.argv[1:]
    if parts not in ([], ["deadlines"], ["cost"]):
        sys.exit("usage: python -m benchmarks.run [deadlines | cost]")
    main(only=parts[0] if parts else None)
