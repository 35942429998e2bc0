"""The relay's promises against faults injected at random: `make chaos SEEDS=200`.

One seed is one end-to-end run on the local stack (moto, the template's functions, the real
state machine definition) and the emulator, in two phases:

- storm: requests (some sent twice, a few invalid) are delivered, the schedule fires and pollers
  run, while every AWS call a function makes may be refused before it acts (`aws_refuse`, as
  throttling or a 500) and a function may die right after a call acted (`aws_kill` of
  invocations, at a random call, as a `BaseException` that no `except Exception` stops), and the
  API refuses calls (429/529/5xx), loses create answers after creating and cuts result streams;
- calm: faults off, the dead-letter queue redriven, ticks with the clock moving on, until no
  request waits and no batch is live.

Then the promises are checked: every accepted request has a completion; every completion of one
request is the same; no request was in two batches the API created (counted at the emulator's
create, not at its results); no batch is left live. The report counts the faults injected, the
completions repeated, and any broken promise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import boto3
from batch_relay.errors import FunctionKilled
from botocore.exceptions import ClientError

CHAOS_TIERS = {
    "urgent": {"max_wait_seconds": 60, "min_requests": 1},
    "standard": {"max_wait_seconds": 600, "min_requests": 20},
}
CALM_STEP_SECONDS = 2 * 3600
REFUSALS = (
    ("ProvisionedThroughputExceededException", 400),
    ("ThrottlingException", 400),
    ("InternalError", 500),
    ("ServiceUnavailable", 503),
)


@dataclass
class Faults:
    """Decides, seeded, which AWS calls of the relay's functions fail and how."""

    rng: random.Random
    refuse: float
    kill: float
    injected: Counter[str] = field(default_factory=Counter)
    active: bool = True
    _plan: dict[int, int | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def before(self, function: str, operation: str) -> None:
        with self._lock:
            if not self.active or self.rng.random() >= self.refuse:
                return
            code, status = REFUSALS[self.rng.randrange(len(REFUSALS))]
            self.injected[f"AWS refused ({function})"] += 1
        raise ClientError(
            {"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": status}},
            operation,
        )

    def after(self, function: str, operation: str) -> None:
        from relay_local.stack import current_call

        invocation, number = current_call()
        with self._lock:
            if not self.active:
                return
            if invocation not in self._plan:
                # This invocation dies at one of its first 40 calls, or not at all.
                dies = self.rng.random() < self.kill
                self._plan[invocation] = self.rng.randint(1, 40) if dies else None
            if self._plan[invocation] != number:
                return
            self.injected[f"killed after {operation} ({function})"] += 1
        raise FunctionKilled(f"{function} killed right after {operation} acted")


@dataclass
class Outcome:
    seed: int
    accepted: int = 0
    completions: int = 0
    lost: list[str] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)
    billed_twice: list[str] = field(default_factory=list)
    repeated: int = 0
    live_batches: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.conflicting or self.billed_twice or self.live_batches)

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "accepted": self.accepted,
            "completions": self.completions,
            "lost": len(self.lost),
            "conflicting": len(self.conflicting),
            "billed_twice": len(self.billed_twice),
            "repeated": self.repeated,
            "live_batches": self.live_batches,
            "faults": sum(self.faults.values()),
        }


def _request(rid: str, tier: str) -> dict[str, Any]:
    text = f"Summarise ticket {rid}: the export fails after the latest release."
    return {
        "request_id": rid,
        "tier": tier,
        "params": {
            "model": "claude-haiku-4-5",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": text}],
        },
    }


def run(
    seed: int,
    requests: int = 40,
    aws_refuse: float = 0.04,
    aws_kill: float = 0.02,
    api_rate: float = 0.1,
    storm_rounds: int = 6,
) -> Outcome:
    from relay_local.emulator import Emulator, EmulatorServer
    from relay_local.stack import LocalStack

    rng = random.Random(seed)
    emu = Emulator(latency_seconds=0.1, seed=seed)
    params = {
        "TierPolicy": json.dumps(CHAOS_TIERS),
        "DefaultTier": "urgent",
        "MaxBatchRequests": "15",
        "PollMinSeconds": "5",
    }
    outcome = Outcome(seed)
    with (
        EmulatorServer(emu) as server,
        LocalStack(parameters=params, env={"ANTHROPIC_BASE_URL": server.url}) as stack,
    ):
        emu.clock = lambda: time.time() + stack.offset
        inbox = stack.subscribe()
        faults = Faults(random.Random(seed * 7919 + 1), aws_refuse, aws_kill)
        stack.before, stack.after = faults.before, faults.after
        emu.chaos(api_rate, seed)
        ids = [f"c{seed}-{n}" for n in range(requests)]
        tiers = {rid: rng.choice(list(CHAOS_TIERS)) for rid in ids}
        per_round = max(1, len(ids) // storm_rounds)
        for r in range(storm_rounds):
            sent = ids[r * per_round : (r + 1) * per_round] if r < storm_rounds - 1 else ids[r * per_round :]
            bodies: list[Any] = [_request(rid, tiers[rid]) for rid in sent]
            bodies += [_request(rid, tiers[rid]) for rid in rng.sample(sent, min(2, len(sent)))]  # duplicates
            bodies.append({"request_id": f"bad{seed}-{r}", "params": {"model": "claude-haiku-4-5"}})
            rng.shuffle(bodies)
            stack.send(bodies)
            _step(stack)
            stack.advance(rng.choice([30, 90, 300, 1200]))
        # calm: heal, redrive what the faults sent to the dead-letter queue, run until done
        faults.active = False
        emu.clear_faults()
        _redrive(stack)
        for _ in range(40):
            _step(stack)
            work = stack.open_work()
            if not work["pending"] and not work["live_batches"] and not work["running"]:
                break
            stack.advance(CALM_STEP_SECONDS)
        outcome.faults = faults.injected + emu.faults_served
        _check(stack, emu, inbox, ids, outcome)
    return outcome


def _step(stack: Any) -> None:
    """One round: deliver what is queued, fire the schedule, let the pollers run."""
    stack.deliver()
    with contextlib.suppress(Exception, FunctionKilled):
        stack.tick()  # a failed or killed run: the next tick finishes its work
    stack.settle(timeout=300)


def _redrive(stack: Any) -> None:
    sqs = boto3.client("sqs")
    dlq = stack.queue_url("RequestDeadLetterQueue")
    while got := sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10).get("Messages", []):
        stack.send(m["Body"] for m in got)
        for m in got:
            sqs.delete_message(QueueUrl=dlq, ReceiptHandle=m["ReceiptHandle"])


def _check(stack: Any, emu: Any, inbox: str, ids: list[str], outcome: Outcome) -> None:
    from batch_relay.store import Store

    completions = stack.drain(inbox)
    outcome.completions = len(completions)
    seen: dict[str, list[dict[str, Any]]] = {}
    for c in completions:
        c.pop("_attributes", None)
        seen.setdefault(c["request_id"], []).append(c)
    outcome.accepted = len(ids)
    outcome.lost = [rid for rid in ids if rid not in seen]
    outcome.conflicting = [rid for rid, cs in seen.items() if any(c != cs[0] for c in cs)]
    outcome.repeated = sum(len(cs) - 1 for cs in seen.values())
    billed = Counter(cid for b in emu.batch_ids() for cid in emu.custom_ids(b))
    outcome.billed_twice = [cid for cid, n in billed.items() if n > 1]
    outcome.live_batches = len(list(Store(stack.physical["RequestTable"]).live_batches()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay-local chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="how many seeded runs")
    parser.add_argument("--first", type=int, default=1, help="first seed")
    parser.add_argument("--requests", type=int, default=40, help="requests per run")
    parser.add_argument("--aws-refuse", type=float, default=0.04, help="share of AWS calls refused")
    parser.add_argument(
        "--aws-kill", type=float, default=0.02, help="share of invocations killed after a call"
    )
    parser.add_argument("--api-rate", type=float, default=0.1, help="share of API calls failed")
    parser.add_argument("--json", action="store_true", help="one JSON line per seed, then the totals")
    args = parser.parse_args(argv)
    total = Counter[str]()
    faults = Counter[str]()
    broken = []
    for seed in range(args.first, args.first + args.seeds):
        out = run(seed, args.requests, args.aws_refuse, args.aws_kill, args.api_rate)
        total.update({k: v for k, v in out.summary().items() if k != "seed"})
        faults.update(out.faults)
        if not out.ok:
            broken.append(seed)
        line = out.summary()
        print(
            json.dumps(line)
            if args.json
            else "seed {seed}: {accepted} accepted, {completions} completions, "
            "{lost} lost, {conflicting} conflicting, {billed_twice} billed twice, {repeated} repeated, "
            "{live_batches} live, {faults} faults".format(**line),
            flush=True,
        )
    share = 100 * total["repeated"] / max(1, total["accepted"])
    print(
        f"\n{args.seeds} seeds, {total['accepted']} requests, {sum(faults.values())} faults injected: "
        f"{total['lost']} lost, {total['conflicting']} conflicting, {total['billed_twice']} billed twice, "
        f"{total['live_batches']} batches left live, {total['repeated']} repeated completions ({share:.2f}%)"
    )
    for kind, n in faults.most_common():
        print(f"  {n:6d}  {kind}")
    if broken:
        print(f"promises broken in seeds {broken}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
