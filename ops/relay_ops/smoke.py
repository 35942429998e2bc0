"""`batch-relay smoke`: the check to run after `sam deploy`, end to end through the deployed stack.

    batch-relay --stack batch-relay smoke --count 5

It creates a temporary queue subscribed to the completion topic (filtered to this run's requests),
sends N small `urgent` requests to the request queue, waits for their completions behind a
progress bar, then prints their latency, status counts and cost. The queue and its subscription
are removed whatever happens: success, a timeout, an error or Ctrl-C. Exit status 0 when every
request succeeded, 1 when any did not or the wait timed out.

The summary goes to stdout as one JSON object, the human-readable report to stderr, and progress to
a Rich progress bar when stdout is a terminal (plain lines on stderr otherwise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import boto3

PROMPT = "Reply with the single word: ok"


class Resources(Protocol):
    def need(self, name: str) -> str: ...


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=_positive, default=3, help="requests to send (default 3)")
    parser.add_argument("--tier", default="urgent", help="tier of the requests (default urgent)")
    parser.add_argument("--model", default="claude-haiku-4-5", help="model of the requests")
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds to wait for the completions (default 3600)"
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


@dataclass
class Smoke:
    queue_url: str
    topic_arn: str
    count: int = 3
    tier: str = "urgent"
    model: str = "claude-haiku-4-5"
    timeout: float = 3600
    run: str = field(default_factory=lambda: f"smoke-{uuid.uuid4().hex[:12]}")
    sqs: Any = field(default_factory=lambda: boto3.client("sqs"))
    sns: Any = field(default_factory=lambda: boto3.client("sns"))
    inbox_url: str | None = None
    subscription: str | None = None
    sent_at: dict[str, float] = field(default_factory=dict)
    done: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [f"{self.run}-{i}" for i in range(self.count)]

    def __call__(self, progress: Callable[[int, int], None]) -> dict[str, Any]:
        try:
            self.subscribe()
            self.send()
            self.wait(progress)
        finally:
            self.clean_up()
        return self.summary()

    def subscribe(self) -> None:
        """A queue of our own on the topic, receiving this run's completions only."""
        name = f"batch-relay-{self.run}"
        created = self.sqs.create_queue(QueueName=name, Attributes={"SqsManagedSseEnabled": "true"})
        self.inbox_url = created["QueueUrl"]
        attrs = self.sqs.get_queue_attributes(QueueUrl=self.inbox_url, AttributeNames=["QueueArn"])
        arn = attrs["Attributes"]["QueueArn"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": self.topic_arn}},
                }
            ],
        }
        self.sqs.set_queue_attributes(QueueUrl=self.inbox_url, Attributes={"Policy": json.dumps(policy)})
        self.subscription = self.sns.subscribe(
            TopicArn=self.topic_arn,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"RawMessageDelivery": "true", "FilterPolicy": json.dumps({"smoke_run": [self.run]})},
            ReturnSubscriptionArn=True,
        )["SubscriptionArn"]

    def send(self) -> None:
        bodies: list[dict[str, Any]] = [
            {
                "request_id": rid,
                "tier": self.tier,
                "params": {
                    "model": self.model,
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": PROMPT}],
                },
                "metadata": {"smoke_run": self.run},
            }
            for rid in self.ids
        ]
        for start in range(0, len(bodies), 10):
            chunk = bodies[start : start + 10]
            answer = self.sqs.send_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "MessageBody": json.dumps(b)} for i, b in enumerate(chunk)],
            )
            if answer.get("Failed"):
                raise RuntimeError(f"the request queue refused {len(answer['Failed'])} messages")
            now = time.monotonic()
            self.sent_at.update((b["request_id"], now) for b in chunk)

    def wait(self, progress: Callable[[int, int], None]) -> None:
        end = time.monotonic() + self.timeout
        progress(0, self.count)
        while len(self.done) < self.count:
            left = end - time.monotonic()
            if left <= 0:
                return
            for message in self.receive(min(20, max(1, int(left)))):
                body = json.loads(message["Body"])
                if "Type" in body and "Message" in body:  # not raw delivery: the SNS envelope
                    body = json.loads(body["Message"])
                rid = body.get("request_id")
                if rid in self.sent_at and rid not in self.done:  # a repeat delivery counts once
                    self.done[rid] = (time.monotonic(), body)
                self.sqs.delete_message(QueueUrl=self.inbox_url, ReceiptHandle=message["ReceiptHandle"])
            progress(len(self.done), self.count)

    def receive(self, wait: int) -> list[dict[str, Any]]:
        answer = self.sqs.receive_message(
            QueueUrl=self.inbox_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait
        )
        return list(answer.get("Messages", []))

    def clean_up(self) -> None:
        # Pending confirmation has no ARN to remove; deleting the queue ends it.
        if self.subscription and self.subscription.startswith("arn:"):
            self.sns.unsubscribe(SubscriptionArn=self.subscription)
        if self.inbox_url:
            self.sqs.delete_queue(QueueUrl=self.inbox_url)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(at - self.sent_at[rid] for rid, (at, _) in self.done.items())
        statuses = Counter(body.get("status", "?") for _, body in self.done.values())
        cost: dict[str, float] = defaultdict(float)
        for _, body in self.done.values():
            for key, value in (body.get("cost") or {}).items():
                cost[key] += float(value or 0)
        return {
            "run": self.run,
            "sent": len(self.sent_at),
            "answered": len(self.done),
            "missing": sorted(set(self.sent_at) - set(self.done)),
            "statuses": dict(sorted(statuses.items())),
            "latency_seconds": {
                "p50": round(statistics.median(latencies), 1) if latencies else None,
                "max": round(latencies[-1], 1) if latencies else None,
            },
            "cost_usd": {k: round(cost[k], 6) for k in ("batch_usd", "list_usd", "saved_usd")},
        }


def report(summary: dict[str, Any]) -> str:
    latency, cost = summary["latency_seconds"], summary["cost_usd"]
    lines = [
        f"answered {summary['answered']}/{summary['sent']}"
        + (f" ({len(summary['missing'])} missing)" if summary["missing"] else ""),
        "statuses: " + (", ".join(f"{k} {v}" for k, v in summary["statuses"].items()) or "none"),
        f"latency: p50 {latency['p50']} s, max {latency['max']} s",
        "cost: " + ", ".join(f"{k.removesuffix('_usd')} {v:.6f} USD" for k, v in cost.items()),
    ]
    return "\n".join(lines)


def command(stack: Resources, args: argparse.Namespace) -> int:
    smoke = Smoke(
        stack.need("queue_url"),
        stack.need("topic_arn"),
        count=args.count,
        tier=args.tier,
        model=args.model,
        timeout=args.timeout,
    )
    print(f"smoke run {smoke.run}: {smoke.count} {smoke.tier} requests", file=sys.stderr)
    if sys.stdout.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("completions"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
        ) as bar:
            task = bar.add_task("completions", total=smoke.count)
            summary = smoke(lambda done, total: bar.update(task, completed=done))
    else:
        seen = [-1]

        def plain(done: int, total: int) -> None:
            if done != seen[0]:
                seen[0] = done
                print(f"completions {done}/{total}", file=sys.stderr, flush=True)

        summary = smoke(plain)
    print(report(summary), file=sys.stderr)
    print(json.dumps(summary))
    ok = not summary["missing"] and summary["statuses"] == {"succeeded": summary["sent"]}
    return 0 if ok else 1
