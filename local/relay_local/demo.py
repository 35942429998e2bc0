"""`make demo`: the relay doing its job on this machine, from queue to completions.

AWS is emulated by moto (resources built from template.yaml) and the Anthropic batch API by the
project's emulator, or the real API when ANTHROPIC_API_KEY is set. A realistic workload (support
tickets to summarise, posts to moderate, company records to enrich, with duplicates and invalid
messages among them) goes through the real handlers and the real state machine definition; the
schedule fires once a simulated minute. At the end every request is accounted for against the
table and the topic, and the exit status says whether anything was lost.

The terminal shows a live view of each tier (buffered, submitted, polled, completed) and the
simulated clock, then the summary. What the functions print (their logs and metrics) goes to a
log file, and the savings page to an HTML file, both named at the end. Piped, the view is plain
lines instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from batch_relay import clock
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from relay_local import savings, term

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
    # Where the functions' log and the savings page are written.
    out: Path = Path("demo-output")
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


def run(opts: Options, inspect: Any = None) -> dict[str, Any]:
    """Run the demo; returns its summary. `inspect(stack, summary)` is called before teardown."""
    from relay_local.cli import anthropic_side
    from relay_local.stack import LocalStack

    if opts.real_api:
        opts.size = min(opts.size, REAL_API_CAP)
    params = {
        "TierPolicy": json.dumps(opts.tiers),
        "DefaultTier": next(iter(opts.tiers)),
        "MaxBatchRequests": str(opts.max_batch),
        "PollMinSeconds": "30",
        "LogLevel": "INFO",
    }
    # The emulator keeps the relay's (simulated) time, so batch timestamps and turnarounds agree.
    emulator_options = {
        "errored_share": opts.errored_share,
        "expired_share": opts.expired_share,
        "seed": 42,
        "clock": lambda: clock.now(),
    }
    started = time.monotonic()
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    messages, expected = workload(opts)
    opts.out.mkdir(parents=True, exist_ok=True)
    log_path = opts.out / "functions.log"
    view = LiveView(opts, len(expected))
    with functions_output(log_path), view:
        if opts.real_api:
            view.note(
                f"Using the real Anthropic API (ANTHROPIC_API_KEY is set): {opts.size} requests, {opts.model}"
            )
        view.note("Starting AWS (moto, from template.yaml) and the Anthropic batch API emulator")
        with (
            anthropic_side(latency=opts.latency, **emulator_options) as env,
            LocalStack(parameters=params, env=env, wait_cap=0.05 if not opts.real_api else 30.0) as stack,
        ):
            return _pipeline(opts, stack, view, messages, expected, started, inspect)


def _pipeline(
    opts: Options,
    stack: Any,
    view: LiveView,
    messages: list[Any],
    expected: set[str],
    started: float,
    inspect: Any,
) -> dict[str, Any]:
    inbox = stack.subscribe()
    stack.send(messages)
    view.note(f"Sent {len(messages)} messages ({opts.duplicates} duplicates, {opts.invalid} invalid)")
    completions: list[dict[str, Any]] = []
    rounds = 0
    for rounds in range(1, 2000):
        # A few Lambda-sized batches at a time, so the view follows the buffer as it fills.
        while sum(stack.deliver(rounds=5).values()):
            view.update(stack, rounds)
        stack.advance(idle_ticks(stack) * SCHEDULE_SECONDS)
        stack.tick()
        view.update(stack, rounds)
        stack.settle(timeout=3600)
        completions += stack.drain(inbox)
        view.update(stack, rounds)
        work = stack.open_work()
        if not work["pending"] and not work["live_batches"]:
            break
    completions += stack.drain(inbox)
    items = _items(stack)
    report = savings.gather(items, {t: v["max_wait_seconds"] for t, v in opts.tiers.items()})
    log_path, page_path = opts.out / "functions.log", opts.out / "report.html"
    page_path.write_text(savings.page(report, "Batch relay demo: savings report"), encoding="utf-8")
    summary = summarise(stack, completions, expected, rounds, time.monotonic() - started)
    summary |= {"waits": report.waits, "report": str(page_path), "log": str(log_path)}
    if inspect is not None:
        inspect(stack, summary)
    return summary


@contextlib.contextmanager
def functions_output(path: Path) -> Iterator[TextIO]:
    """What the functions print (Powertools logs, EMF metrics, warnings) goes to `path`.

    In Lambda that output is CloudWatch's; here it would bury the view. stdout and stderr point at
    the file while the stack runs, and so do the log handlers that write to a stream (Powertools
    binds its handler to the stdout of the moment it was made). The view keeps the terminal: its
    console holds the streams from before.
    """
    with path.open("w", encoding="utf-8") as log:
        moved = [(h, _point(h, log)) for h in _stream_handlers()]
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield log
        finally:
            for handler, stream in moved:
                _point(handler, stream)
            # Handlers made while the file was stdout must not write to it once it is closed.
            for handler in _stream_handlers():
                if handler.stream is log:
                    _point(handler, sys.__stdout__)


def _point(handler: logging.StreamHandler[Any], stream: Any) -> Any:
    """Swap a handler's stream; unlike setStream, never flushes the old one (it may be closed)."""
    with handler.lock or contextlib.nullcontext():
        old, handler.stream = handler.stream, stream
    return old


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [
        h
        for lg in loggers
        if isinstance(lg, logging.Logger)
        for h in lg.handlers
        # Exactly StreamHandler: files and test-capture handlers (subclasses) keep their streams.
        if type(h) is logging.StreamHandler
    ]


FINAL = savings.FINAL
LIVE_STATES = ("created", "polling", "collecting")


class LiveView:
    """The demo as it runs: per tier, what is buffered, submitted, polled and completed.

    On a terminal, a Rich Live table redrawn in place (stderr, so `--json` keeps stdout clean);
    piped, one plain line per round in which something moved.
    """

    def __init__(self, opts: Options, total: int):
        self.opts, self.total = opts, total
        self.console = term.console(sys.stderr)
        self.live = self.console.is_terminal and not opts.quiet
        self.state: dict[str, Any] = {}
        self.notes: list[str] = []
        self.started = time.monotonic()
        self._live = Live(
            self,
            console=self.console,
            refresh_per_second=4,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._last = ""

    def __enter__(self) -> LiveView:
        if self.live:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self._live.stop()

    def note(self, text: str) -> None:
        self.notes.append(text)
        if not self.live and not self.opts.quiet:
            self.console.print(text)

    def update(self, stack: Any, rounds: int) -> None:
        if self.opts.quiet:
            return
        self.state = snapshot(stack, rounds, self.opts.tiers)
        if not self.live:
            s = self.state
            text = (
                f"{_clock_text(s)}  completed {s['all']['completed']}/{self.total}  "
                f"buffered {s['all']['buffered']}  submitted {s['all']['submitted']}  "
                f"batches polling {s['all']['polling']}  polls {s['polls']}"
            )
            body = text.split("  ", 1)[1]
            if body != self._last:
                self.console.print(text)
                self._last = body

    def __rich__(self) -> RenderableType:
        s = self.state
        heading = Text.assemble(
            ("batch relay demo", "bold"),
            "  ",
            (_clock_text(s) if s else "starting", "cyan"),
            "  ",
            (f"wall {time.monotonic() - self.started:.0f} s", "dim"),
        )
        if not s:
            return Group(heading, *[Text(n, style="dim") for n in self.notes])
        grid = Table(box=None, pad_edge=False, header_style="bold")
        grid.add_column("tier")
        grid.add_column("max wait", justify="right")
        for c in ("buffered", "submitted", "polling", "completed"):
            grid.add_column(c, justify="right")
        grid.add_column("", width=24)
        for name, row in s["tiers"].items():
            wait = self.opts.tiers[name]["max_wait_seconds"]
            grid.add_row(
                name,
                f"{wait // 60} min" if wait >= 60 else f"{wait} s",
                str(row["buffered"]),
                str(row["submitted"]),
                str(row["polling"]),
                f"{row['completed']}/{row['requests']}",
                ProgressBar(total=max(row["requests"], 1), completed=row["completed"], width=24),
            )
        a = s["all"]
        grid.add_row(
            Text("all", style="bold"),
            "",
            str(a["buffered"]),
            str(a["submitted"]),
            str(a["polling"]),
            f"{a['completed']}/{self.total}",
            ProgressBar(total=max(self.total, 1), completed=a["completed"], width=24),
        )
        footer = Text(
            "buffered: waiting in its tier · submitted: in a batch at the API · polling: batches the "
            f"poller is watching\n{s['rejected']} rejected at intake (answered at once) · "
            f"{s['batches']} batches created · {s['polls']} polls · schedule tick {s['rounds']}",
            style="dim",
        )
        return Group(heading, *[Text(n, style="dim") for n in self.notes], "", grid, "", footer)


def snapshot(stack: Any, rounds: int, tiers: dict[str, Any]) -> dict[str, Any]:
    """Per tier, from the table: requests waiting in the buffer, inside a batch at the API, batches
    being polled, and requests completed."""
    items = _items(stack)
    rows = {t: {"requests": 0, "buffered": 0, "submitted": 0, "polling": 0, "completed": 0} for t in tiers}
    rejected = batches = 0
    for i in items:
        tier = rows.get(i.get("tier") or "")
        if i.get("kind") == "batch":
            batches += bool(i.get("batch_id"))
            if tier is not None and i.get("batch_id") and i.get("status") in LIVE_STATES:
                tier["polling"] += 1
            continue
        if i.get("kind") != "request":
            continue
        if i.get("status") == "rejected":
            rejected += 1
            continue
        if tier is None:
            continue
        tier["requests"] += 1
        status = i.get("status")
        tier["buffered"] += status == "pending"
        tier["submitted"] += status == "claimed"
        tier["completed"] += status in FINAL
    total = {
        k: sum(r[k] for r in rows.values())
        for k in ("requests", "buffered", "submitted", "polling", "completed")
    }
    # Rejected messages are answered too: they count toward the demo's total of completions.
    total["completed"] += rejected
    return {
        "tiers": rows,
        "all": total,
        "rejected": rejected,
        "batches": batches,
        "polls": stack.invocations.get("CheckBatchFunction", 0),
        "rounds": rounds,
        "now": clock.now(),
        "offset": stack.offset,
    }


def _clock_text(s: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(s["now"], tz=UTC).strftime("%Y-%m-%d %H:%M")
    ahead = int(s["offset"])
    return f"simulated clock {when} UTC (+{ahead // 3600}:{ahead % 3600 // 60:02d} h)"


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


def summary_view(summary: dict[str, Any], plain: bool) -> list[RenderableType]:
    """The final summary: samples, outcomes, waits per tier, cost, and whether all is accounted for."""
    samples = []
    for c in summary["samples"]:
        if c["status"] == "succeeded":
            text = c["message"]["content"][0]["text"] if isinstance(c.get("message"), dict) else "(in S3)"
        else:
            text = f"{c['error']['type']}: {c['error']['message']}"
        samples.append({**c, "tier": c.get("tier") or "-", "detail": text.replace("\n", " ")[:70]})
    outcomes = [{"status": k, "requests": n} for k, n in sorted(summary["statuses"].items())]
    outcomes.append({"status": "total", "requests": summary["completions"]})
    waits = [
        {
            "tier": w["tier"],
            "requests": w["requests"],
            "median": _duration(w["p50"]),
            "p95": _duration(w["p95"]),
            "slowest": _duration(w["max"]),
            "max wait": _duration(w["max_wait_seconds"]) if w.get("max_wait_seconds") else "-",
        }
        for w in summary.get("waits", [])
    ]
    t, c = summary["tokens"], summary["cost_usd"]
    cached = t.get("cache_creation_input_tokens", 0) + t.get("cache_read_input_tokens", 0)
    cost = [
        {"": "input tokens", "amount": f"{t.get('input_tokens', 0):,}"},
        {"": "output tokens", "amount": f"{t.get('output_tokens', 0):,}"},
        {"": "cache tokens", "amount": f"{cached:,}"},
        {"": "batch cost", "amount": f"{c.get('batch_usd', 0):.4f} USD"},
        {"": "list-price cost", "amount": f"{c.get('list_usd', 0):.4f} USD"},
        {"": "saved", "amount": f"{c.get('saved_usd', 0):.4f} USD"},
    ]
    lat = summary["latency_seconds"]
    if summary["lost"] or summary["duplicated"]:
        verdict = Text(f"LOST: {summary['lost']}  DUPLICATED: {summary['duplicated']}", style="bold red")
    else:
        verdict = Text(
            f"Every request accounted for: {summary['requests']} in, "
            f"{summary['completions']} completions out.",
            style="bold green",
        )
    out: list[RenderableType] = [
        _titled("Sample completions", plain),
        term.table(samples, ["request_id", "status", "tier", "detail"], plain=plain),
        _titled("Outcomes", plain),
        term.table(outcomes, ["status", "requests"], plain=plain, numeric=["requests"]),
        f"({summary['retried']} needed more than one batch: transient errors and expiries are retried)",
        _titled("Receipt to completion (simulated schedule time)", plain),
        term.table(
            waits,
            ["tier", "requests", "median", "p95", "slowest", "max wait"],
            plain=plain,
            numeric=["requests", "median", "p95", "slowest", "max wait"],
        ),
        f"all tiers: p50 {lat['p50']} s, p95 {lat['p95']} s, max {lat['max']} s",
        f"Batches created: {summary['batches']}, schedule ticks: {summary['rounds']}, "
        f"wall time: {summary['wall_seconds']} s",
        _titled("Cost", plain),
        term.table(cost, ["", "amount"], plain=plain, numeric=["amount"]),
        "",
        verdict,
    ]
    if summary.get("report"):
        out.append(Text.assemble("Savings report: ", (str(summary["report"]), "bold")))
    if summary.get("log"):
        out.append(Text.assemble("Functions' log and metrics: ", (str(summary["log"]), "bold")))
    return out


def _titled(text: str, plain: bool) -> Text:
    return Text("\n" + text, style="" if plain else "bold underline")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def report(summary: dict[str, Any]) -> str:
    """The summary as plain text."""
    out = Console(file=None, width=term.PLAIN_WIDTH, no_color=True, highlight=False, record=True)
    with out.capture() as captured:
        out.print(*summary_view(summary, plain=True), sep="\n")
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


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
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        help="folder for the savings page and the functions' log (default demo-output)",
    )
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
        out=args.out,
    )
    summary = run(opts)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        out = term.console()
        term.show(out, *summary_view(summary, plain=not out.is_terminal))
    return 1 if summary["lost"] or summary["duplicated"] else 0
