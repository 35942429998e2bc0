"""`batch-relay`: drive a deployed relay from an operator's machine.

examples:
  batch-relay estimate requests.jsonl                 what it will cost, at batch and at list price
  batch-relay send requests.jsonl --stack batch-relay
  batch-relay status ticket-4711 --stack batch-relay --region eu-west-1 --profile prod
  batch-relay batches --stack batch-relay             and the batch turnaround the relay has learned
  batch-relay report --stack batch-relay --by day,tier,model --format table|csv|json
  batch-relay report --stack batch-relay --html report.html      the savings page, with charts
  batch-relay cancel msgbatch_...                     at the API (needs ANTHROPIC_API_KEY)
  batch-relay redrive --stack batch-relay
  batch-relay tail --from https://sqs...              a queue subscribed to the completion topic
  batch-relay smoke --stack batch-relay --count 5     after sam deploy: end to end, then clean up
  batch-relay teardown --stack batch-relay            the stack and the data it keeps on purpose

The stack's resources come from its CloudFormation outputs (`--stack`), or each one can be named
(`--queue-url`, `--table`, ...), which is also how the local stack is reached. As with the AWS CLI,
these options, `--region` and `--profile` go before or after the command, and credentials and the
region otherwise come from the environment and ~/.aws. A user mistake ends in one line on stderr
and a non-zero exit, never a traceback. Tables and progress are drawn with Rich on a terminal and
come out as plain columns when piped; `--format csv|json` is for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import boto3
from batch_relay import aws
from batch_relay.clock import parse
from batch_relay.models import RequestMessage
from batch_relay.records import BatchRecord
from batch_relay.store import Store, request_key
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

from relay_ops import estimate as costs
from relay_ops import savings, smoke, teardown, term

OUTPUTS = {
    "queue_url": "RequestQueueUrl",
    "dlq_url": "DeadLetterQueueUrl",
    "table": "RequestTableName",
    "topic_arn": "CompletionTopicArn",
}


class UserError(Exception):
    """A mistake the operator can fix: shown as one line, exit status 2."""


@dataclass
class Stack:
    name: str | None = None
    queue_url: str | None = None
    dlq_url: str | None = None
    table: str | None = None
    topic_arn: str | None = None
    # The deployment's TierPolicy and DefaultTurnaroundSeconds parameters, when read from the stack.
    tier_policy: str | None = None
    default_turnaround: str | None = None

    @classmethod
    def resolve(cls, args: argparse.Namespace) -> Stack:
        given: dict[str, Any] = {k: getattr(args, k, None) for k in OUTPUTS} | {"name": args.stack}
        # teardown finds the stack itself: it may be gone already, its kept resources not.
        if args.stack and args.command != "teardown":
            try:
                answer = boto3.client("cloudformation").describe_stacks(StackName=args.stack)
            except ClientError as exc:
                raise UserError(f"stack {args.stack!r}: {exc.response['Error']['Message']}") from None
            outputs = {o["OutputKey"]: o["OutputValue"] for o in answer["Stacks"][0].get("Outputs", [])}
            for key, output in OUTPUTS.items():
                given[key] = given[key] or outputs.get(output)
            parameters = {
                p["ParameterKey"]: p.get("ParameterValue") for p in answer["Stacks"][0].get("Parameters", [])
            }
            given["tier_policy"] = parameters.get("TierPolicy")
            given["default_turnaround"] = parameters.get("DefaultTurnaroundSeconds")
        return cls(**given)

    def need(self, name: str) -> str:
        value = getattr(self, name)
        if not value:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"no {name.replace('_', ' ')}: give --stack or {flag}")
        return str(value)


# commands


def requests_in(path: str) -> tuple[list[tuple[int, bytes, RequestMessage]], list[tuple[int, str]]]:
    """The request lines of a JSONL file, each validated as the queue's message: the valid ones
    (line number, bytes, message) and the rejected ones (line number, reason). Lines end at "\\n"
    only: a JSON string may hold U+2028 or other characters Python would also split lines on."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    valid: list[tuple[int, bytes, RequestMessage]] = []
    rejected: list[tuple[int, str]] = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.removesuffix(b"\r")
        if not line.strip():
            continue
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            rejected.append((n, f"not UTF-8 (byte {exc.start + 1})"))
            continue
        try:
            message = RequestMessage.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            rejected.append((n, f"{where}: {first['msg']}"))
            continue
        valid.append((n, line, message))
    return valid, rejected


def send(stack: Stack, args: argparse.Namespace) -> int:
    """Validate each line locally, then send the valid ones ten a call."""
    checked, rejected = requests_in(args.file)
    valid = [line.decode("utf-8") for _, line, _ in checked]
    numbers = [n for n, _, _ in checked]
    url = stack.need("queue_url")
    sqs = boto3.client("sqs")
    sent = 0
    err = term.console(sys.stderr)
    # A live bar on a terminal only: piped, the summary line below says it all.
    with Progress(
        TextColumn("sending"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        disable=args.quiet or not err.is_terminal,
        transient=True,
    ) as bar:
        task = bar.add_task("send", total=len(valid))
        for start in range(0, len(valid), 10):
            chunk = valid[start : start + 10]
            answer = sqs.send_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)]
            )
            sent += len(answer.get("Successful", []))
            for failed in answer.get("Failed", []):
                rejected.append(
                    (numbers[start + int(failed["Id"])], f"SQS: {failed.get('Message', failed['Code'])}")
                )
            bar.advance(task, len(chunk))
    for n, reason in sorted(rejected):
        print(f"line {n}: {reason}", file=sys.stderr)
    print(json.dumps({"sent": sent, "rejected": len(rejected)}))
    return 1 if rejected else 0


def estimate(stack: Stack, args: argparse.Namespace) -> int:
    """What a JSONL file of requests will cost, per model and in total, before any of it is sent."""
    checked, rejected = requests_in(args.file)
    counter = costs.Counter.for_environment(_count_tokens, ask=not args.no_count)
    priced: list[costs.Priced] = []
    err = term.console(sys.stderr)
    with Progress(
        TextColumn("counting tokens"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        disable=args.quiet or not err.is_terminal or counter.stopped is not None,
        transient=True,
    ) as bar:
        task = bar.add_task("count", total=len(checked))
        for n, line, message in checked:
            params = message.params.payload()
            tokens, why = counter(params, line)
            priced.append(costs.Priced(n, params["model"], tokens, int(params["max_tokens"]), why))
            bar.advance(task)
    rows, total = costs.rows(priced)
    estimated: dict[str, list[int]] = {}
    for p in priced:
        if p.estimated:
            estimated.setdefault(p.estimated, []).append(p.n)
    for n, reason in rejected:
        print(f"line {n}: {reason}", file=sys.stderr)
    for why, lines in estimated.items():
        print(f"input tokens estimated from bytes ({why}): lines {costs.spans(lines)}", file=sys.stderr)
    for row in rows:
        if row["price"] == "dearest":
            print(f"model {row['model']!r} has no known price: priced as the dearest model", file=sys.stderr)
    if args.format == "json":
        print(
            json.dumps(
                {
                    "models": rows,
                    "total": total,
                    "estimated_lines": sorted(p.n for p in priced if p.estimated),
                    "rejected_lines": [n for n, _ in rejected],
                },
                indent=2,
            )
        )
    elif args.format == "csv":
        write_csv([*rows, total], costs.COLUMNS)
    else:
        out = term.console()
        title = (
            f"Expected cost of {total['requests']} requests, output at max_tokens (an upper bound)"
            if rows
            else "No request to price"
        )
        table = term.table(
            rows, costs.COLUMNS, plain=not out.is_terminal, title=title, numeric=costs.NUMERIC, total=total
        )
        term.show(out, table)
    return 1 if rejected else 0


def _count_tokens(params: dict[str, Any]) -> int:
    """The API's count of a request's input tokens, through the relay's own client."""
    from batch_relay import batches, clock

    return batches.count_tokens(params, deadline=clock.now() + batches.CALL_SECONDS)


def write_csv(rows: list[dict[str, Any]], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    print(buffer.getvalue(), end="")


def status(stack: Stack, args: argparse.Namespace) -> int:
    store = Store(stack.need("table"))
    item = store.get(request_key(args.request_id))
    if item is None:
        raise UserError(f"no request {args.request_id!r}")
    batch_id = item.get("batch_id") or item.get("last_batch_id")
    if not batch_id and item.get("batch_ref"):
        record = store.batch(item["batch_ref"])
        batch_id = record.batch_id if record else None
    keys = (
        "request_id",
        "status",
        "tier",
        "model",
        "attempts",
        "received_at",
        "submitted_at",
        "completed_at",
    )
    out = {k: item.get(k) for k in keys} | {
        "batch_id": batch_id,
        "error": item.get("error"),
        "cost": item.get("cost"),
    }
    print(json.dumps({k: v for k, v in out.items() if v is not None}, indent=2))
    return 0


def list_batches(stack: Stack, args: argparse.Namespace) -> int:
    """The batches, newest first, and the turnaround the relay has learned from them per model."""
    now = time.time()
    store = Store(stack.need("table"))
    records: list[BatchRecord] = []
    models: set[str] = set()
    for item in store.scan():
        if item.get("kind") == "batch":
            records.append(BatchRecord.model_validate(item))
            models.update(records[-1].models or [])
        elif item.get("kind") == "turnaround" and item.get("model"):
            models.add(item["model"])
    rows = []
    for b in sorted(records, key=lambda b: b.claimed_at, reverse=True):
        if not b.batch_id and not args.all:
            continue
        rows.append(
            {
                "batch_id": b.batch_id or "-",
                "tier": b.tier,
                "status": b.status.value,
                "requests": b.request_count,
                "succeeded": b.n_succeeded,
                "errored": b.n_errored,
                "retried": b.n_retried,
                "age_min": round((now - parse(b.claimed_at)) / 60, 1),
                "batch_usd": round(b.batch_usd, 4),
                "saved_usd": round(b.saved_usd, 4),
            }
        )
    columns = [
        "batch_id",
        "tier",
        "status",
        "requests",
        "succeeded",
        "errored",
        "retried",
        "age_min",
        "batch_usd",
        "saved_usd",
    ]
    learned = turnaround(store, sorted(models), default_turnaround(args, stack))
    if args.format == "json":
        print(json.dumps({"batches": rows, "turnaround": learned}, indent=2))
        return 0
    out = term.console()
    plain = not out.is_terminal
    numeric = [c for c in columns if c not in ("batch_id", "tier", "status")]
    term.show(
        out,
        term.table(rows, columns, plain=plain, title="Batches, newest first", numeric=numeric),
        "",
        term.table(
            learned,
            TURNAROUND_COLUMNS,
            plain=plain,
            title="Turnaround per model, created to ended, last 7 days (p95 from 3 samples; default before)",
            numeric=TURNAROUND_COLUMNS[1:5],
        ),
    )
    return 0


TURNAROUND_COLUMNS = ["model", "samples", "p50_seconds", "p95_seconds", "expected_seconds", "source"]


def turnaround(store: Store, models: list[str], default: int | None) -> list[dict[str, Any]]:
    """Per model: the batch turnaround samples in the relay's window, their p50 and p95, and the
    value deadlines use now (`Turnaround.expected`: the p95, or the default until 3 samples)."""
    from batch_relay.deadlines import MIN_SAMPLES, Turnaround
    from batch_relay.settings import Settings

    # Turnaround reads only the table and the default; the rest of a function's settings is not
    # known (nor needed) on an operator's machine.
    fields: dict[str, Any] = {"table_name": store.table.name}
    if default is not None:
        fields["default_turnaround_seconds"] = default
    learned = Turnaround(store, Settings.model_construct(**fields))
    rows = []
    for model in models:
        seen = sorted(learned.samples(model))
        rows.append(
            {
                "model": model,
                "samples": len(seen),
                "p50_seconds": round(savings.percentile(seen, 0.5), 3) if seen else None,
                "p95_seconds": round(savings.percentile(seen, 0.95), 3) if seen else None,
                "expected_seconds": round(learned.expected(model), 3),
                "source": "learned" if len(seen) >= MIN_SAMPLES else "default",
            }
        )
    return rows


def default_turnaround(args: argparse.Namespace, stack: Stack) -> int | None:
    """DefaultTurnaroundSeconds: given, the stack's parameter, the environment's (the local stack
    sets it), or None for the relay's own default."""
    given = (
        args.default_turnaround or stack.default_turnaround or os.environ.get("DEFAULT_TURNAROUND_SECONDS")
    )
    if given is None:
        return None
    try:
        seconds = int(given)
    except ValueError:
        raise UserError(f"--default-turnaround: expected seconds, not {given!r}") from None
    if not 60 <= seconds <= 86_400:
        raise UserError("--default-turnaround: between 60 and 86400 seconds")
    return seconds


def report(stack: Stack, args: argparse.Namespace) -> int:
    """Tokens, cost and savings of completed requests, grouped as asked; or the savings page."""
    by = [b.strip() for b in args.by.split(",") if b.strip()]
    unknown = set(by) - set(savings.GROUPS)
    if unknown:
        raise UserError(f"--by accepts {', '.join(savings.GROUPS)}; not {', '.join(sorted(unknown))}")
    items = list(Store(stack.need("table")).scan())
    if args.html:
        return write_page(items, args.html, max_waits(args.tier_policy or stack.tier_policy))
    done = savings.completed(items)
    rows = savings.group(done, by)
    columns = [*by, "requests", *REPORT_COLUMNS]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    elif args.format == "csv":
        write_csv(rows, columns)
    else:
        # On screen, two tables: the rows asked for, then by route with what deadlines cost.
        total = next(iter(savings.group(done, [])), None)
        out = term.console()
        plain = not out.is_terminal
        shown = [*by, "requests", "realtime", "input_tokens", "output_tokens", *savings.USD]
        routes = ["route", "requests", *savings.USD, "both_ways", "both_ways_usd"]
        term.show(
            out,
            term.table(
                rows,
                shown,
                plain=plain,
                title=f"Completed requests by {', '.join(by)}",
                numeric=shown[len(by) :],
                total=({by[0]: "total"} | total) if by and total else None,
            ),
            "",
            term.table(
                savings.group(done, ["route"]),
                routes,
                plain=plain,
                title="By route: paid (batch_usd), and batch copies paid on top (both_ways_usd)",
                numeric=routes[1:],
                total={"route": "total"} | total if total else None,
            ),
        )
    return 0


# After the grouping keys and `requests`: tokens, what was paid, what list price would have cost,
# what batching saved, then what deadlines cost (realtime answers, and batch copies also paid).
REPORT_COLUMNS = [
    "input_tokens",
    "output_tokens",
    "batch_usd",
    "list_usd",
    "saved_usd",
    "realtime",
    "realtime_usd",
    "both_ways",
    "both_ways_usd",
]


def max_waits(policy: str | None) -> dict[str, float]:
    """Each tier's max_wait_seconds from a TierPolicy JSON (the stack's parameter, or --tier-policy)."""
    if not policy:
        return {}
    try:
        tiers = json.loads(policy)
        return {name: float(tier["max_wait_seconds"]) for name, tier in tiers.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise UserError('--tier-policy: expected JSON like {"urgent": {"max_wait_seconds": 300}}') from None


def write_page(items: list[dict[str, Any]], path: str, waits: dict[str, float]) -> int:
    target = Path(path)
    try:
        target.write_text(savings.page(savings.gather(items, waits)), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    print(json.dumps({"report": str(target.resolve())}))
    return 0


def cancel(stack: Stack, args: argparse.Namespace) -> int:
    import anthropic

    try:
        batch = anthropic.Anthropic(max_retries=2).messages.batches.cancel(args.batch_id)
    except TypeError:
        raise UserError("no Anthropic key: set ANTHROPIC_API_KEY") from None
    except anthropic.APIStatusError as exc:
        raise UserError(f"cancel {args.batch_id}: {exc.status_code} {exc.message}") from None
    print(json.dumps({"batch_id": batch.id, "processing_status": batch.processing_status}))
    return 0


def redrive(stack: Stack, args: argparse.Namespace) -> int:
    """Move the dead-letter queue's messages back to the request queue (after fixing the cause)."""
    sqs = boto3.client("sqs")
    source, target = stack.need("dlq_url"), stack.need("queue_url")
    moved = 0
    while True:
        got = sqs.receive_message(QueueUrl=source, MaxNumberOfMessages=10, MessageAttributeNames=["All"]).get(
            "Messages", []
        )
        if not got:
            break
        entries: list[Any] = [
            {
                "Id": str(i),
                "MessageBody": m["Body"],
                **({"MessageAttributes": m["MessageAttributes"]} if m.get("MessageAttributes") else {}),
            }
            for i, m in enumerate(got)
        ]
        sqs.send_message_batch(QueueUrl=target, Entries=entries)
        sqs.delete_message_batch(
            QueueUrl=source,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)],
        )
        moved += len(got)
    print(json.dumps({"moved": moved}))
    return 0


def tail(stack: Stack, args: argparse.Namespace) -> int:
    """Follow completions from a queue subscribed to the topic: one line each, or the raw JSON."""
    sqs = boto3.client("sqs")
    url = args.queue_url_tail
    out = term.console()
    while True:
        got = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0 if args.once else 20
        ).get("Messages", [])
        for m in got:
            body = json.loads(m["Body"])
            if "Type" in body and "Message" in body:  # not raw delivery: unwrap the SNS envelope
                body = json.loads(body["Message"])
            if args.json:
                print(json.dumps(body), flush=True)
            else:
                # On a terminal the answer's words stop at its edge; piped, lines are whole.
                out.print(line(body), no_wrap=True, overflow="ellipsis", crop=True, highlight=False)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        if args.once and not got:
            return 0


STATUS_STYLE = {"succeeded": "green", "errored": "red", "expired": "yellow", "canceled": "yellow"}


def line(c: dict[str, Any], words: int = 12) -> Text:
    """One completion as a line: time, id, status, tier, route, cost and the answer's first words."""
    route = c.get("route") or "batch"
    cost = c.get("cost") or {}
    # A realtime answer is paid at list price; a batch one at the batch price.
    paid = cost.get("list_usd" if route == "realtime" else "batch_usd")
    status = str(c.get("status", "?"))
    return Text.assemble(
        (str(c.get("completed_at") or "-")[:19].replace("T", " "), "dim"),
        "  ",
        f"{c.get('request_id', '?'):<24}",
        "  ",
        (f"{status:<9}", STATUS_STYLE.get(status, "magenta")),
        "  ",
        f"{c.get('tier') or '-':<9}",
        "  ",
        f"{route:<8}",
        "  ",
        f"{'$' + format(paid, '.6f') if paid is not None else '-':>10}",
        "  ",
        _gist(c, words),
    )


def _gist(c: dict[str, Any], words: int) -> str:
    message = c.get("message")
    if c.get("status") == "succeeded" and isinstance(message, dict):
        if message.get("type") == "s3_pointer":
            return f"(answer in s3://{message.get('bucket')}/{message.get('key')})"
        text = " ".join(
            b.get("text", "")
            for b in message.get("content") or []
            if isinstance(b, dict) and b.get("type") == "text"
        )
        first = text.split()
        return " ".join(first[:words]) + (" ..." if len(first) > words else "")
    error = c.get("error") or {}
    return f"{error.get('type', '')}: {error.get('message', '')}".strip(": ")


COMMANDS = {
    "send": send,
    "estimate": estimate,
    "status": status,
    "batches": list_batches,
    "report": report,
    "cancel": cancel,
    "redrive": redrive,
    "tail": tail,
    "smoke": smoke.command,
    "teardown": teardown.command,
}

# The options every command takes, before or after its name; None when not given.
GLOBAL = ("stack", "queue_url", "dlq_url", "table", "topic_arn", "region", "profile")


def common() -> argparse.ArgumentParser:
    """The stack and AWS options, as a parent of the top parser and of every command's: their
    default is SUPPRESS so that one given before the command is not reset by the command's parser."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("stack and AWS options (before or after the command)")
    quiet = argparse.SUPPRESS
    g.add_argument(
        "--stack",
        default=quiet,
        metavar="NAME",
        help="the relay's CloudFormation stack: resources from its outputs",
    )
    g.add_argument("--queue-url", dest="queue_url", default=quiet, metavar="URL", help="the request queue")
    g.add_argument("--dlq-url", dest="dlq_url", default=quiet, metavar="URL", help="the dead-letter queue")
    g.add_argument("--table", default=quiet, metavar="NAME", help="the request table")
    g.add_argument("--topic-arn", dest="topic_arn", default=quiet, metavar="ARN", help="the completion topic")
    g.add_argument(
        "--region",
        default=quiet,
        help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION or the profile's)",
    )
    g.add_argument(
        "--profile", default=quiet, help="a named profile of ~/.aws/config (default: AWS_PROFILE or default)"
    )
    return p


def parser() -> argparse.ArgumentParser:
    shared = common()
    doc = __doc__ or ""
    top = argparse.ArgumentParser(
        prog="batch-relay",
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[shared],
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = top.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        title="commands",
        help="one of these; `batch-relay COMMAND --help` for its own options",
    )

    def command(name: str, what: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=what, description=what, parents=[shared])

    p = command("send", "validate a JSONL file of requests and send it to the queue, ten a call")
    p.add_argument("file", help="one request message (JSON) a line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = command(
        "estimate", "what a JSONL file of requests will cost, at batch and at list price, before sending"
    )
    p.add_argument("file", help="one request message (JSON) a line")
    p.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="output (default table)"
    )
    p.add_argument(
        "--no-count", action="store_true", help="estimate input tokens from each line's bytes; ask no API"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = command("status", "where one request is: its state, batch, attempts, cost")
    p.add_argument("request_id", help="the request's id, as sent")
    p = command("batches", "the batches the relay made, newest first, and the turnaround learned per model")
    p.add_argument("--all", action="store_true", help="also claims that never became a batch")
    p.add_argument("--format", choices=["table", "json"], default="table", help="output (default table)")
    p.add_argument(
        "--default-turnaround",
        dest="default_turnaround",
        type=int,
        metavar="SECONDS",
        help="the DefaultTurnaroundSeconds parameter, used until a model has 3 samples (read from --stack "
        "otherwise)",
    )
    p = command("report", "tokens, cost and savings of completed requests, or the savings page")
    p.add_argument(
        "--by", default="day,tier,model", help="grouping: day, tier, model, status, route (comma-separated)"
    )
    p.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="output (default table)"
    )
    p.add_argument("--html", metavar="PATH", help="write the savings page (charts, one self-contained file)")
    p.add_argument(
        "--tier-policy",
        dest="tier_policy",
        help="the TierPolicy JSON, for each tier's max wait on the page (read from --stack otherwise)",
    )
    p = command("cancel", "cancel a message batch at the API (its requests end canceled)")
    p.add_argument("batch_id", help="the batch's id at the API (msgbatch_...)")
    command("redrive", "move the dead-letter queue's messages back to the request queue")
    p = command("tail", "follow completions from a queue subscribed to the topic")
    p.add_argument(
        "--from", dest="queue_url_tail", required=True, metavar="URL", help="the subscribed queue's URL"
    )
    p.add_argument("--once", action="store_true", help="stop when the queue is empty")
    p.add_argument(
        "--json", action="store_true", help="print each completion message as it came, one JSON a line"
    )
    p = command("smoke", "after sam deploy: N urgent requests end to end, then clean up")
    smoke.arguments(p)
    p = command("teardown", teardown.WHAT)
    teardown.arguments(p)
    return top


def _version() -> str:
    try:
        return version("batch-relay")
    except PackageNotFoundError:  # run from a checkout, not installed
        return "(not installed)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    for name in GLOBAL:
        if not hasattr(args, name):
            setattr(args, name, None)
    return args


@contextlib.contextmanager
def session(profile: str | None, region: str | None) -> Iterator[None]:
    """Every boto3 client made inside (the relay's own store included) uses this profile and region;
    the process's default session is put back after, so a caller's other clients are untouched."""
    if not (profile or region):
        yield
        return
    before = boto3.DEFAULT_SESSION
    try:
        boto3.setup_default_session(profile_name=profile, region_name=region)
    except ProfileNotFound:
        raise UserError(f"--profile {profile}: no such profile in the AWS config") from None
    aws.reset()  # clients cached under the former session
    try:
        yield
    finally:
        boto3.DEFAULT_SESSION = before
        aws.reset()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with session(args.profile, args.region):
            return COMMANDS[args.command](Stack.resolve(args), args)
    except (UserError, teardown.Refused) as exc:
        print(f"batch-relay: {exc}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError) as exc:
        print(f"batch-relay: AWS: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
