"""`make demo`: the relay doing its job on this machine, from queue to completions.

AWS is emulated by moto (resources built from template.yaml) and the Anthropic batch API by the
project's emulator, or the real API when ANTHROPIC_API_KEY is set. A realistic workload (support
tickets to summarise, posts to moderate, company records to enrich, with duplicates and invalid
messages among them) goes through the real handlers and the real state machine definition; the
schedule fires once a simulated minute. At the end every request is accounted for against the
table and the topic, and the exit status says whether anything was lost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch_relay import clock

TASKS = {
    "tickets": ("urgent", "Summarise the support ticket in two sentences, then give its priority (P1-P4)."),
    "posts": (
        "standard",
        "Classify the post as ok, spam, scam or abuse. Answer with the label and one reason.",
    ),
    "records": (
        "bulk",
        "Enrich the company record: industry, size band, region and one sales angle, as JSON.",
    ),
}
DEMO_TIERS = {
    "urgent": {"max_wait_seconds": 120, "min_requests": 1},
    "standard": {"max_wait_seconds": 600, "min_requests": 100},
    "bulk": {"max_wait_seconds": 1800, "min_requests": 1000},
}
SCHEDULE_SECONDS = 60
REAL_API_CAP = 20
DATA = Path(__file__).parent / "data" / "workload.json"


@dataclass
class Options:
    size: int = 300
    duplicates: int = 6
    invalid: int = 6
    errored_share: float = 0.03
    expired_share: float = 0.02
    latency: float = 1.0
    model: str = "claude-haiku-4-5"
    max_batch: int = 100
    tiers: dict[str, Any] = field(default_factory=lambda: dict(DEMO_TIERS))
    quiet: bool = False
    real_api: bool = field(default_factory=lambda: bool(os.environ.get("ANTHROPIC_API_KEY")))


def workload(opts: Options) -> tuple[list[Any], set[str]]:
    """The messages to send, and the ids that must each get one completion."""
    data = json.loads(DATA.read_text())
    kinds = list(TASKS)
    # Each kind of work goes to the tier of the same name, or else to the policy's tiers in turn.
    names = list(opts.tiers)
    tier_of = {
        k: (TASKS[k][0] if TASKS[k][0] in opts.tiers else names[n % len(names)]) for n, k in enumerate(kinds)
    }
    messages: list[Any] = []
    for i in range(opts.size):
        kind = kinds[i % len(kinds)]
        tier, instruction = tier_of[kind], TASKS[kind][1]
        item = data[kind][(i // len(kinds)) % len(data[kind])]
        text = json.dumps(item, ensure_ascii=False) if isinstance(item, dict) else item
        messages.append(
            {
                "request_id": f"{kind[:-1]}-{i:05d}",
                "tier": tier,
                "params": {
                    "model": opts.model,
                    "max_tokens": 300,
                    "system": instruction,
                    "messages": [{"role": "user", "content": f"{text}\n\n(reference {i:05d})"}],
                },
                "metadata": {"source": kind, "team": "support" if kind == "tickets" else "growth"},
            }
        )
    expected = {m["request_id"] for m in messages}
    messages += [messages[(i * 7) % len(messages)] for i in range(min(opts.duplicates, len(messages)))]
    invalid: list[Any] = [
        {"request_id": "invalid-stream", "params": {**messages[0]["params"], "stream": True}},
        {"request_id": "invalid-tier", "tier": "platinum", "params": messages[0]["params"]},
        {"request_id": "invalid-no-params"},
        {"request_id": "invalid-max-tokens", "params": {**messages[0]["params"], "max_tokens": 0}},
        "{'this': is not JSON}",
        {"request_id": "not a valid id!", "params": messages[0]["params"]},
    ][: opts.invalid]
    expected |= {
        m["request_id"] for m in invalid if isinstance(m, dict) and m["request_id"].startswith("invalid-")
    }
    return messages + invalid, expected


def bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def run(opts: Options, inspect: Any = None) -> dict[str, Any]:
    """Run the demo; returns its summary. `inspect(stack, summary)` is called before teardown."""
    from relay_local.cli import anthropic_side
    from relay_local.stack import LocalStack

    if opts.real_api:
        opts.size = min(opts.size, REAL_API_CAP)
        say(
            opts,
            f"Using the real Anthropic API (ANTHROPIC_API_KEY is set): {opts.size} requests, {opts.model}",
        )
    params = {
        "TierPolicy": json.dumps(opts.tiers),
        "DefaultTier": next(iter(opts.tiers)),
        "MaxBatchRequests": str(opts.max_batch),
        "PollMinSeconds": "30",
        "LogLevel": "ERROR",
    }
    emulator_options = {"errored_share": opts.errored_share, "expired_share": opts.expired_share, "seed": 42}
    started = time.monotonic()
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    messages, expected = workload(opts)
    with (
        anthropic_side(latency=opts.latency, **emulator_options) as env,
        LocalStack(
            parameters=params,
            env={**env, "POWERTOOLS_METRICS_DISABLED": "true"},
            wait_cap=0.05 if not opts.real_api else 30.0,
        ) as stack,
    ):
        inbox = stack.subscribe()
        stack.send(messages)
        say(opts, f"Sent {len(messages)} messages ({opts.duplicates} duplicates, {opts.invalid} invalid)")
        completions: list[dict[str, Any]] = []
        rounds = 0
        for rounds in range(1, 2000):  # noqa: B007 - the count is reported
            stack.deliver()
            stack.advance(idle_ticks(stack) * SCHEDULE_SECONDS)
            stack.tick()
            stack.settle(timeout=3600)
            completions += stack.drain(inbox)
            progress(opts, stack, len(completions), len(expected))
            work = stack.open_work()
            if not work["pending"] and not work["live_batches"]:
                break
        completions += stack.drain(inbox)
        if not opts.quiet:
            print(file=sys.stderr)
        summary = summarise(stack, completions, expected, rounds, time.monotonic() - started)
        if inspect is not None:
            inspect(stack, summary)
    return summary


def idle_ticks(stack: Any) -> int:
    """Schedule ticks until a tier is due: ticks that would find nothing to do are skipped."""
    from batch_relay.settings import settings
    from batch_relay.store import Store

    store = Store(settings().table_name)
    if next(store.live_batches(), None) is not None:
        return 1
    waits = []
    for name, tier in settings().tiers.items():
        oldest = next(store.waiting(name, limit=1), None)
        if oldest is not None:
            waits.append(clock.parse(oldest["pending_since"]) + tier.max_wait_seconds - clock.now())
    return max(1, math.ceil(min(waits) / SCHEDULE_SECONDS)) if waits else 1


def progress(opts: Options, stack: Any, completed: int, total: int) -> None:
    if opts.quiet:
        return
    items = _items(stack)
    requests = [i for i in items if i.get("kind") == "request" and i.get("status") != "rejected"]
    submitted = sum(1 for i in requests if i.get("status") != "pending")
    line = (
        f"\r{bar(completed, total)} buffered {len(requests):4d}  submitted {submitted:4d}  "
        f"completed {completed:4d}/{total}  (simulated {clock.now() - time.time():6.0f}s)"
    )
    print(line, end="", file=sys.stderr, flush=True)


def _items(stack: Any) -> list[dict[str, Any]]:
    from batch_relay.store import Store

    return list(Store(stack.physical["RequestTable"]).scan())


def summarise(
    stack: Any, completions: list[dict[str, Any]], expected: set[str], rounds: int, seconds: float
) -> dict[str, Any]:
    per_id = Counter(c["request_id"] for c in completions)
    statuses = Counter(c["status"] for c in completions)
    retried = sum(1 for c in completions if c.get("attempts", 0) > 1)
    lost = sorted(expected - set(per_id))
    twice = sorted(k for k, n in per_id.items() if n > 1)
    latencies = [clock.parse(c["completed_at"]) - clock.parse(c["received_at"]) for c in completions]
    usage = Counter[str]()
    cost = Counter[str]()
    for c in completions:
        for k in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            usage[k] += (c.get("usage") or {}).get(k) or 0
        for k in ("batch_usd", "list_usd", "saved_usd"):
            cost[k] += (c.get("cost") or {}).get(k) or 0.0
    return {
        "requests": len(expected),
        "completions": len(completions),
        "statuses": dict(statuses),
        "retried": retried,
        "lost": lost,
        "duplicated": twice,
        "batches": len([i for i in _items(stack) if i.get("kind") == "batch" and i.get("batch_id")]),
        "rounds": rounds,
        "wall_seconds": round(seconds, 1),
        "latency_seconds": {
            "p50": round(statistics.median(latencies), 1) if latencies else None,
            "p95": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
            "max": round(max(latencies), 1) if latencies else None,
        },
        "tokens": dict(usage),
        "cost_usd": {k: round(v, 6) for k, v in cost.items()},
        "samples": [c for c in completions if c["status"] == "succeeded"][:3]
        + [c for c in completions if c["status"] != "succeeded"][:3],
    }


def report(summary: dict[str, Any]) -> str:
    out = ["", "Sample completions"]
    out.append(f"  {'request_id':<22} {'status':<10} {'tier':<9} {'detail'}")
    for c in summary["samples"]:
        if c["status"] == "succeeded":
            text = c["message"]["content"][0]["text"] if isinstance(c.get("message"), dict) else "(in S3)"
            detail = text.replace("\n", " ")[:60]
        else:
            detail = f"{c['error']['type']}: {c['error']['message']}"[:60]
        out.append(f"  {c['request_id']:<22} {c['status']:<10} {c.get('tier') or '-':<9} {detail}")
    out += ["", "Outcomes"]
    for status, n in sorted(summary["statuses"].items()):
        out.append(f"  {status:<10} {n:6d}")
    out.append(f"  {'total':<10} {summary['completions']:6d}  for {summary['requests']} requests")
    out.append(
        f"  ({summary['retried']} needed more than one batch: transient errors and expiries are retried)"
    )
    lat = summary["latency_seconds"]
    out += [
        "",
        f"Latency, receipt to completion (simulated schedule time): p50 {lat['p50']} s, "
        f"p95 {lat['p95']} s, max {lat['max']} s",
        f"Batches created: {summary['batches']}, schedule ticks: {summary['rounds']}, "
        f"wall time: {summary['wall_seconds']} s",
        "",
        "Cost",
    ]
    t, c = summary["tokens"], summary["cost_usd"]
    out.append(f"  input tokens       {t.get('input_tokens', 0):>12,}")
    out.append(f"  output tokens      {t.get('output_tokens', 0):>12,}")
    cached = t.get("cache_creation_input_tokens", 0) + t.get("cache_read_input_tokens", 0)
    out.append(f"  cache tokens       {cached:>12,}")
    out.append(f"  batch cost         {c.get('batch_usd', 0):>12.4f} USD")
    out.append(f"  list-price cost    {c.get('list_usd', 0):>12.4f} USD")
    out.append(f"  saved              {c.get('saved_usd', 0):>12.4f} USD")
    out.append("")
    if summary["lost"] or summary["duplicated"]:
        out.append(f"LOST: {summary['lost']}  DUPLICATED: {summary['duplicated']}")
    else:
        out.append(
            f"Every request accounted for: {summary['requests']} in, "
            f"{summary['completions']} completions out."
        )
    return "\n".join(out)


def say(opts: Options, text: str) -> None:
    if not opts.quiet:
        print(text, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay-local demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=300, help="valid requests to send (default 300)")
    parser.add_argument("--duplicates", type=int, default=6, help="requests sent twice (default 6)")
    parser.add_argument("--invalid", type=int, default=6, choices=range(7), help="invalid messages (0-6)")
    parser.add_argument(
        "--errored-share", type=float, default=0.03, help="emulated errored share (default 0.03)"
    )
    parser.add_argument(
        "--expired-share", type=float, default=0.02, help="emulated expired share (default 0.02)"
    )
    parser.add_argument("--latency", type=float, default=1.0, help="seconds the emulator takes per batch")
    parser.add_argument("--max-batch", type=int, default=100, help="requests per batch (default 100)")
    parser.add_argument("--model", default="claude-haiku-4-5", help="model of every request")
    parser.add_argument(
        "--tiers",
        type=json.loads,
        default=DEMO_TIERS,
        help='tier policy as JSON, e.g. \'{"urgent": {"max_wait_seconds": 60}}\' (default: '
        + json.dumps(DEMO_TIERS)
        + ")",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    opts = Options(
        size=args.size,
        duplicates=args.duplicates,
        invalid=args.invalid,
        errored_share=args.errored_share,
        expired_share=args.expired_share,
        latency=args.latency,
        model=args.model,
        max_batch=args.max_batch,
        tiers=args.tiers,
    )
    summary = run(opts)
    print(json.dumps(summary, indent=2) if args.json else report(summary))
    return 1 if summary["lost"] or summary["duplicated"] else 0
