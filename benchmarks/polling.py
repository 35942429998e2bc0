"""Polling cost and delay: state transitions per batch, and how long results wait after a batch ends.

The real state machine runs in moto's engine against the emulator; both clocks are simulated, and
each Wait state moves them by its seconds instead of sleeping, so a 23-hour batch takes a moment.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
from batch_relay import clock


def measure(batch_seconds: float, poll_min: int = 60, poll_max: int = 7200) -> dict[str, Any]:
    """One batch that ends after `batch_seconds`: transitions of its poller, and the delay between
    the batch ending and its results being collected."""
    from relay_local.emulator import Emulator, EmulatorServer, SimClock
    from relay_local.stack import LocalStack

    sim = SimClock()
    emulator = Emulator(latency_seconds=batch_seconds, clock=sim)
    collected_at: list[float] = []
    with EmulatorServer(emulator) as server:
        params = {
            "TierPolicy": json.dumps({"now": {"max_wait_seconds": 1, "min_requests": 1}}),
            "DefaultTier": "now",
            "PollMinSeconds": str(poll_min),
            "PollMaxSeconds": str(poll_max),
            "LogLevel": "ERROR",
        }
        env = {"ANTHROPIC_BASE_URL": server.url, "POWERTOOLS_METRICS_DISABLED": "true"}
        with LocalStack(parameters=params, env=env, wait_cap=0.0) as stack:
            stack.on_wait = lambda s: (sim.advance(s), stack.advance(s))
            stack.send(
                [
                    {
                        "request_id": "p-1",
                        "params": {
                            "model": "claude-haiku-4-5",
                            "max_tokens": 10,
                            "messages": [{"role": "user", "content": "hi"}],
                        },
                    }
                ]
            )
            stack.deliver()
            stack.tick()
            [run] = stack.settle(timeout=600)
            sfn = boto3.client("stepfunctions")
            events = sfn.get_execution_history(executionArn=run["executionArn"], maxResults=1000)["events"]
            entered = [e for e in events if e["type"].endswith("StateEntered")]
            table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"])
            item = table.get_item(Key={"pk": "req#p-1"})["Item"]
            collected_at.append(clock.parse(item["completed_at"]))
            created = clock.parse(emulator.batch(emulator.batch_ids()[0])["created_at"])
    delay = collected_at[0] - (created + batch_seconds)
    return {
        "batch_seconds": batch_seconds,
        "transitions": len(entered),
        "checks": sum(1 for e in entered if e["stateEnteredEventDetails"]["name"] == "CheckBatch"),
        "delay_seconds": round(delay, 1),
        "delay_limit_seconds": max(60.0, 0.1 * batch_seconds),
    }
