"""`make live`: a handful of real requests through the relay's code against the real Anthropic API.

    ANTHROPIC_API_KEY=sk-ant-... make live [ARGS="--model claude-haiku-4-5 --timeout 3600"]

AWS is the local stack (moto), the API is the real one: what the SDK that deploys sends and what the
API answers, checked where the emulator can only model them. Four things, each a few tokens:
a token count; a one-request batch; a request with `temperature` (sent under 2023-06-01, in a
batch of its own); a request whose deadline no batch can make (answered by the Messages API at list
price). It prints each completion's route, status and cost, and what they cost together. Without a
key it says so and does nothing; it never runs in CI. A batch takes the API minutes, sometimes
longer: the run waits up to `--timeout` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

PARAMETERS = {
    "TierPolicy": json.dumps({"urgent": {"max_wait_seconds": 1, "min_requests": 1}}),
    "DefaultTier": "urgent",
    # Until the relay has timed batches of its own it assumes this: a 15-minute deadline goes realtime.
    "DefaultTurnaroundSeconds": "3600",
    "PollMinSeconds": "15",
    "PollMaxSeconds": "60",
}
SKIPPED = "make live: skipped (ANTHROPIC_API_KEY is not set; this sends real requests at real prices)"


def requests(model: str) -> list[dict[str, Any]]:
    def one(rid: str, text: str, **extra: Any) -> dict[str, Any]:
        params = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": text}]}
        return {"request_id": rid, "params": params | extra.pop("params", {}), **extra}

    soon = (datetime.now(UTC) + timedelta(minutes=15)).isoformat()
    return [
        one("live-batch", "Reply with one word: ready."),
        one(
            "live-temperature",
            "Classify as spam or ham, one word: 'You won a prize!'",
            params={"temperature": 0},
        ),
        one("live-realtime", "Reply with one word: now.", deadline=soon),
    ]


def run(model: str, timeout: float, wait_cap: float = 30.0) -> int:
    from relay_local.stack import LocalStack

    sent = requests(model)
    with LocalStack(parameters=PARAMETERS, wait_cap=wait_cap) as stack:
        # Imported once the stack has set the functions' environment: metrics read it when made.
        from batch_relay import batches

        inbox = stack.subscribe()
        counted = batches.count_tokens(sent[0]["params"])
        print(f"count_tokens: {counted} input tokens for {sent[0]['request_id']} ({model})")
        stack.send(sent)
        done: dict[str, dict[str, Any]] = {}
        end = time.monotonic() + timeout
        while len(done) < len(sent) and time.monotonic() < end:
            stack.deliver()
            stack.tick()
            for completion in stack.drain(inbox):
                done[completion["request_id"]] = completion
            if len(done) < len(sent):
                time.sleep(min(wait_cap, 10.0))
    total = 0.0
    for body in sent:
        got = done.get(body["request_id"])
        if got is None:
            print(f"{body['request_id']:18} no completion within {timeout:.0f} s")
            continue
        cost = (got.get("cost") or {}).get("paid_usd") or 0.0
        total += cost
        usage = got.get("usage") or {}
        error = f" {got['error']['type']}: {got['error']['message']}" if got.get("error") else ""
        print(
            f"{got['request_id']:18} {got['route']:8} {got['status']:9} "
            f"in {usage.get('input_tokens', 0)} out {usage.get('output_tokens', 0)} "
            f"cost {cost:.6f} USD{error}"
        )
    print(f"total: {total:.6f} USD for {len(done)} of {len(sent)} requests")
    return 0 if len(done) == len(sent) and all(c["status"] == "succeeded" for c in done.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay-local live", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="claude-haiku-4-5", help="model of every request")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the answers")
    args = parser.parse_args(argv)
    if not os.environ.get("ANTHROPIC_API_KEY"):
        print(SKIPPED)
        return 0
    return run(args.model, args.timeout)
