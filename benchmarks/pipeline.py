"""The whole path for N requests, metered, beside the two things it is compared with.

- `relay(n)`: buffer → submitter → the deployed state machine → collector → SNS, on the moto stack
  built from template.yaml, the emulator ending each batch at once. Records reach the buffer in the
  event shape Lambda's SQS poller gives it (the poller's receive/delete calls are Lambda's, not the
  relay's, and are priced in the cost model instead).
- `naive(n)`: the same requests through the simplest relay one could write: one DynamoDB write per
  request per state change (received, claimed, submitted, answered) and one SNS publish per
  completion. Calls are counted with the same hooks.
- `direct(n)`: the irreducible work: one `batches.create` and one `results()` read of the same
  requests, straight to the emulator.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import boto3

from benchmarks.meter import Meter

MODEL = "claude-sonnet-4-5"
TICKET = (
    "Customer writes: my order #{n} arrived with a cracked screen protector and the charger is "
    "missing. I was told on the phone a replacement would ship within two days, but the tracking "
    "page still says 'label created'. Please tell me what is happening and whether I need to send "
    "the damaged item back first. I would also like a partial refund for the delay. Thanks. "
)


def params(n: int, prompt_bytes: int = 600) -> dict[str, Any]:
    text = (TICKET.format(n=n) * (1 + prompt_bytes // len(TICKET)))[:prompt_bytes]
    return {
        "model": MODEL,
        "max_tokens": 500,
        "system": "Summarise the support ticket in two sentences and give it a priority from P1 to P4.",
        "messages": [{"role": "user", "content": text}],
    }


def message(n: int, prompt_bytes: int = 600, tier: str = "standard") -> dict[str, Any]:
    return {"request_id": f"bench-{n:06d}", "tier": tier, "params": params(n, prompt_bytes)}


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The event Lambda's SQS poller would hand the buffer for these messages."""
    from relay_local.stack import sqs_record

    return {
        "Records": [
            sqs_record(
                {"MessageId": str(uuid.uuid4()), "ReceiptHandle": uuid.uuid4().hex, "Body": json.dumps(m)},
                queue_arn,
            )
            for m in messages
        ]
    }


STACK_PARAMS = {
    "TierPolicy": json.dumps({"standard": {"max_wait_seconds": 60, "min_requests": 1}}),
    "DefaultTier": "standard",
    "PollMinSeconds": "60",
}


def relay(n: int, prompt_bytes: int = 600, buffer_batch: int = 100, logs: bool = False) -> dict[str, Any]:
    """The relay's whole path for n requests: calls, write units, durations, wall time; with `logs`,
    also what the functions print (the bytes CloudWatch Logs would ingest, and the metric names)."""
    from relay_local.emulator import Emulator, EmulatorServer, SimClock
    from relay_local.stack import LocalStack

    sim = SimClock()
    meter = Meter()
    emulator = Emulator(latency_seconds=0, clock=sim)
    printed = Printed()
    try:
        with EmulatorServer(emulator) as server, printed.capturing(logs):
            env = {"ANTHROPIC_BASE_URL": server.url}
            if not logs:
                env["POWERTOOLS_METRICS_DISABLED"] = "true"
            with LocalStack(parameters=STACK_PARAMS, env=env, wait_cap=0.0) as stack:
                # moto replaces the default session when it starts; hooks go on the new one
                meter.install()
                stack.on_wait = lambda s: (sim.advance(s), stack.advance(s))
                stack.invoke = meter.wrap(stack.invoke)  # type: ignore[method-assign]
                messages = [message(i, prompt_bytes) for i in range(n)]
                arn = stack.arns["RequestQueue"]
                started = time.perf_counter()
                for start in range(0, n, buffer_batch):
                    answer = stack.invoke(
                        "BufferFunction", sqs_event(messages[start : start + buffer_batch], arn)
                    )
                    assert not answer.get("batchItemFailures"), answer
                buffered = time.perf_counter()
                stack.advance(60)
                stack.tick()
                runs = stack.settle(timeout=3600)
                wall = time.perf_counter() - started
                transitions = _transitions(runs)
                done, item_bytes, line_bytes = _answered(stack)
    finally:
        meter.uninstall()
    if done != n:
        raise RuntimeError(f"{done} of {n} requests answered")
    return {
        "requests": n,
        "prompt_bytes": prompt_bytes,
        "calls": dict(meter.calls),
        "calls_by_function": {fn: dict(c) for fn, c in meter.calls_by_fn.items()},
        "calls_total": meter.total(),
        "write_units": meter.write_units,
        "durations": dict(meter.durations),
        "service_seconds": meter.service_seconds,
        "service_by_function": dict(meter.service_by_fn),
        "invocations": dict(meter.invocations),
        "batches": len(emulator.batch_ids()),
        "item_bytes": item_bytes,
        "line_bytes": line_bytes,
        "transitions": transitions,
        "wall_seconds": wall,
        "buffer_seconds": buffered - started,
    } | printed.figures()


def idle(runs: int = 10) -> dict[str, Any]:
    """The submitter's scheduled runs with nothing to do: what a stack costs at zero traffic.

    Each run is metered as in `relay` (calls, write units, duration) and what it prints is kept
    (log bytes, metric names), on a stack with the template's default tiers.
    """
    from relay_local.stack import LocalStack

    meter = Meter()
    printed = Printed()
    try:
        with printed.capturing(True), LocalStack(wait_cap=0.0) as stack:
            meter.install()
            stack.invoke = meter.wrap(stack.invoke)  # type: ignore[method-assign]
            for _ in range(runs):
                stack.tick()
                stack.advance(60)
    finally:
        meter.uninstall()
    return {
        "runs": runs,
        "calls": dict(meter.calls),
        "write_units": meter.write_units,
        "durations": dict(meter.durations),
        "service_seconds": meter.service_seconds,
        "invocations": dict(meter.invocations),
    } | printed.figures()


class Printed:
    """What the functions print while a run goes on: in Lambda, the log lines CloudWatch Logs
    ingests, EMF metric documents among them."""

    def __init__(self) -> None:
        self.text = ""

    @contextlib.contextmanager
    def capturing(self, on: bool) -> Iterator[None]:
        if not on:
            yield
            return
        from relay_local.demo import functions_output

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "functions.log"
            try:
                with functions_output(path):
                    yield
            finally:
                self.text = path.read_text(encoding="utf-8")

    def figures(self) -> dict[str, Any]:
        if not self.text:
            return {}
        names: set[str] = set()
        for line in self.text.splitlines():
            if line.startswith('{"_aws"'):
                for block in json.loads(line)["_aws"]["CloudWatchMetrics"]:
                    names.update(m["Name"] for m in block["Metrics"])
        return {"log_bytes": len(self.text.encode()), "metric_names": sorted(names)}


def _transitions(runs: list[dict[str, Any]]) -> int:
    sfn = boto3.client("stepfunctions")
    total = 0
    for run in runs:
        pages = sfn.get_paginator("get_execution_history").paginate(executionArn=run["executionArn"])
        total += sum(1 for page in pages for e in page["events"] if e["type"].endswith("StateEntered"))
    return total


def _answered(stack: Any) -> tuple[int, float, float]:
    """Requests answered, and the mean size of their items and of their request lines."""
    from batch_relay.store import Store

    done = [
        item
        for item in Store(stack.physical["RequestTable"]).scan("request")
        if item.get("status") in ("succeeded", "errored", "expired", "canceled") and item.get("notified")
    ]
    n = max(1, len(done))
    item_bytes = sum(len(json.dumps(item, separators=(",", ":"))) for item in done) / n
    return len(done), item_bytes, sum(int(item["body_len"]) for item in done) / n


def naive(n: int, prompt_bytes: int = 600) -> dict[str, Any]:
    """The simplest relay: a write per state change per request, a publish per completion."""
    from relay_local.emulator import Emulator, EmulatorServer, SimClock
    from relay_local.stack import LocalStack

    meter = Meter()
    emulator = Emulator(latency_seconds=0, clock=SimClock())
    try:
        with EmulatorServer(emulator) as server, LocalStack(parameters=STACK_PARAMS) as stack:
            meter.install()
            ddb, sns = boto3.client("dynamodb"), boto3.client("sns")
            table, topic = stack.physical["RequestTable"], stack.physical["CompletionTopic"]
            client = anthropic.Anthropic(base_url=server.url, api_key="bench", max_retries=0)
            with meter.counting("naive"):
                ids = []
                for i in range(n):
                    m = message(i, prompt_bytes)
                    ids.append(m["request_id"])
                    ddb.put_item(
                        TableName=table,
                        Item={
                            "pk": {"S": f"req#{m['request_id']}"},
                            "status": {"S": "pending"},
                            "params": {"S": json.dumps(m["params"])},
                        },
                    )

                def mark(rid: str, status: str, **extra: str) -> None:
                    values = {":s": {"S": status}} | {f":{k}": {"S": v} for k, v in extra.items()}
                    sets = ", ".join(["#s = :s"] + [f"{k} = :{k}" for k in extra])
                    ddb.update_item(
                        TableName=table,
                        Key={"pk": {"S": f"req#{rid}"}},
                        UpdateExpression=f"SET {sets}",
                        ExpressionAttributeNames={"#s": "status"},
                        ExpressionAttributeValues=values,
                    )

                for rid in ids:
                    mark(rid, "claimed")
                batch = client.messages.batches.create(
                    requests=[
                        {"custom_id": rid, "params": params(i, prompt_bytes)} for i, rid in enumerate(ids)
                    ]
                )
                for rid in ids:
                    mark(rid, "submitted", batch_id=batch.id)
                for result in client.messages.batches.results(batch.id):
                    mark(result.custom_id, result.result.type)
                    sns.publish(TopicArn=topic, Message=result.to_json())
    finally:
        meter.uninstall()
    return {
        "requests": n,
        "calls": dict(meter.calls),
        "calls_by_function": {fn: dict(c) for fn, c in meter.calls_by_fn.items()},
        "calls_total": meter.total(),
        "write_units": meter.write_units,
    }


def direct(n: int, prompt_bytes: int = 600) -> dict[str, Any]:
    """One create and one read of the results for the same requests: the work no relay can skip."""
    from relay_local.emulator import Emulator, EmulatorServer, SimClock

    requests = [{"custom_id": f"bench-{i:06d}", "params": params(i, prompt_bytes)} for i in range(n)]
    with EmulatorServer(Emulator(latency_seconds=0, clock=SimClock())) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="bench", max_retries=0)
        started = time.perf_counter()
        batch = client.messages.batches.create(requests=requests)
        while client.messages.batches.retrieve(batch.id).processing_status != "ended":
            time.sleep(0.01)
        got = sum(1 for _ in client.messages.batches.results(batch.id))
        wall = time.perf_counter() - started
    assert got == n
    return {"requests": n, "wall_seconds": wall}
