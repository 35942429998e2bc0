"""What the tests share: request builders, reading the relay's table and completions, and faults
placed at exact steps through the stack's hooks."""

from __future__ import annotations

import json
import re
import threading
import time
import traceback
from collections import Counter
from typing import Any

import boto3
from botocore.exceptions import ClientError

# Past the submitter's STALE_SECONDS: a record of a run that died is recovered by then.
STALE = 16 * 60
# SNS's rules for message attributes (names and values), which moto does not enforce.
SNS_NAME = re.compile(r"(?!\.)(?!.*\.\.)(?!.*\.$)(?!(?i:aws\.|amazon\.))[A-Za-z0-9_.-]{1,256}")
SNS_VALUE = re.compile(r"[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]+")


def request(
    rid: str | None,
    text: str = "Summarise: the printer on floor 3 jams every morning.",
    tier: str | None = "urgent",
    model: str = "claude-haiku-4-5",
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "params": {"model": model, "max_tokens": 200, "messages": [{"role": "user", "content": text}]},
        **extra,
    }
    if rid is not None:
        body["request_id"] = rid
    if tier is not None:
        body["tier"] = tier
    return body


def by_id(completions: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for c in completions:
        out.setdefault(c["request_id"], []).append(c)
    return out


def stored_line(bucket: str, item: dict[str, Any]) -> dict[str, Any]:
    """The request line a buffered item points at in the payload bucket."""
    start, length = int(item["body_at"]), int(item["body_len"])
    span = f"bytes={start}-{start + length - 1}"
    body = boto3.client("s3").get_object(Bucket=bucket, Key=item["body_key"], Range=span)["Body"].read()
    return json.loads(body)


def stop_execution(arn: str, tries: int = 100) -> None:
    """Stop a poller execution by hand, once moto's engine has set it going (it refuses before)."""
    sfn = boto3.client("stepfunctions")
    for n in range(tries):
        try:
            sfn.stop_execution(executionArn=arn, error="Operator", cause="stopped by hand")
            return
        except AttributeError:  # the execution's worker has not started yet
            if n == tries - 1:
                raise
            time.sleep(0.05)


def emitted(capsys: Any) -> Counter[str]:
    """The functions' EMF metrics printed so far, summed by name."""
    out: Counter[str] = Counter()
    for line in capsys.readouterr().out.splitlines():
        if line.startswith('{"_aws"'):
            doc = json.loads(line)
            for block in doc["_aws"]["CloudWatchMetrics"]:
                for m in block["Metrics"]:
                    value = doc[m["Name"]]
                    out[m["Name"]] += sum(value) if isinstance(value, list) else value
    return out


def sns_refuses(name: str, value: Any) -> str | None:
    """Why real SNS would refuse this message attribute, if it would."""
    if not SNS_NAME.fullmatch(name):
        return f"invalid attribute name {name[:40]!r}"
    text = (value.get("StringValue") or value.get("Value")) if isinstance(value, dict) else None
    if not isinstance(text, str) or not SNS_VALUE.fullmatch(text):
        return f"invalid value for attribute {name[:40]!r}"
    return None


# the relay's clock, its table and its completions


def at(seconds: float) -> str:
    """An RFC 3339 deadline this many seconds from now on the relay's clock."""
    from batch_relay import clock

    return clock.iso(clock.now() + seconds).replace("Z", "+00:00")


def wait_for(check: Any, seconds: float = 30.0) -> None:
    end = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def to_morning(stack: Any) -> None:
    """Move the relay's clock (and the API's) to 06:00 UTC of the next day, so a test that reads a
    day's budget never straddles midnight."""
    from batch_relay import clock

    now = clock.now()
    stack.advance(86400 - now % 86400 + 6 * 3600)


def table(stack: Any) -> Any:
    return boto3.resource("dynamodb").Table(stack.physical["RequestTable"])


def items(stack: Any, prefix: str = "req#") -> dict[str, dict[str, Any]]:
    return {i["pk"]: i for i in table(stack).scan()["Items"] if i["pk"].startswith(prefix)}


def records(stack: Any) -> list[Any]:
    """The batch records (`BatchRecord`), as the store reads them."""
    from batch_relay.records import BatchRecord
    from batch_relay.store import plain

    return [BatchRecord.model_validate(plain(i)) for i in items(stack, "batch#").values()]


def rescued(stack: Any) -> bool:
    """Whether some request has been taken out of its batch for realtime (a realtime record)."""
    return any(b.status == "realtime" for b in records(stack))


def committed(stack: Any, day: str | None = None) -> float:
    """What the day's budget item says is committed (today, on the relay's clock, by default)."""
    from batch_relay.budget import today

    item = table(stack).get_item(Key={"pk": f"budget#{day or today()}"}, ConsistentRead=True).get("Item")
    return int(item["committed_micros"]) / 1e6 if item else 0.0


def once(stack: Any, inbox: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The completions on `inbox`, one for each of `ids` and no other."""
    per_id = by_id(stack.drain(inbox))
    assert set(per_id) == set(ids)
    assert {k: len(v) for k, v in per_id.items() if len(v) != 1} == {}, "a request was answered twice"
    return {k: v[0] for k, v in per_id.items()}


def ids_in_batches(emulator: Any) -> Counter[str]:
    """How many of the API's batches hold each request: each one bills it."""
    return Counter(cid for b in emulator.batch_ids() for cid in emulator.custom_ids(b))


def assert_once(stack: Any, inbox: str, expected: list[str], emulator: Any = None) -> dict[str, list[Any]]:
    """Each of `expected` answered exactly once (and, given the API, in at most one batch)."""
    per_id = by_id(stack.drain(inbox))
    assert set(per_id) == set(expected)
    assert {k: len(v) for k, v in per_id.items() if len(v) != 1} == {}
    if emulator is not None:
        assert max(ids_in_batches(emulator).values()) == 1
    return per_id


def answered(stack: Any, inbox: str, rid: str) -> list[dict[str, Any]]:
    return by_id(stack.drain(inbox)).get(rid, [])


def learn(stack: Any, emulator: Any, batches: int = 3) -> None:
    """Let the relay time a few of its own batches (the emulator's take 0.2 s)."""
    for n in range(batches):
        stack.send([request(f"warm-{n}")])
        stack.pump()


def answered_in_time(stack: Any, inbox: str, rid: str, seconds: float = 600) -> None:
    """Send request <rid> due in `seconds`, run the schedule every minute, and assert it is
    answered realtime by its deadline (which no submitter run kept out by a lease can do)."""
    from batch_relay import clock

    stack.send([request(rid, deadline=at(seconds))])
    stack.deliver()
    deadline = clock.now() + seconds
    got: list[dict[str, Any]] = []
    skipped = 0
    while not got and clock.now() + 60 < deadline:
        stack.advance(60)
        skipped += bool(stack.tick().get("skipped"))
        stack.deliver_realtime()
        got = answered(stack, inbox, rid)
    assert got, f"not answered by its deadline: {skipped} submitter runs found the lease held"
    [c] = got
    assert c["route"] == "realtime" and c["completed_at"] <= c["deadline"]


# faults at exact steps: `stack.before(function, operation)` runs before each AWS call a function
# makes (raising there refuses the call, or kills the function before the call acts); `stack.after`
# runs once the call has acted (raising `FunctionKilled` there is a function that died right after).


def throttled(operation: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "ThrottlingException", "Message": "injected"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        operation,
    )


class Once:
    """Fail one call, once: the first `operation` of `function` (after `after_op` acted in the same
    invocation, when given), refused or killed before it acts, or killed right after it acted.

    A killed invocation stays dead: the AWS calls its `finally` clauses would still make (Python
    runs them as `FunctionKilled` unwinds) are killed before they act, as nothing runs in a Lambda
    that died."""

    def __init__(self, function: str, operation: str, how: str, after_op: str | None = None, on_fire=None):
        self.function, self.operation, self.how, self.after_op = function, operation, how, after_op
        self.on_fire = on_fire
        self.fired = threading.Event()
        self._armed: set[int] = set()
        self._dead: set[int] = set()
        self._lock = threading.Lock()

    def _hit(self, function: str, operation: str) -> bool:
        from relay_local.stack import current_call

        invocation, _ = current_call()
        with self._lock:
            if self.fired.is_set() or function != self.function:
                return False
            if self.after_op is not None and invocation not in self._armed:
                return False
            if operation != self.operation:
                return False
            self.fired.set()
            if self.how != "refuse":
                self._dead.add(invocation)
        if self.on_fire is not None:
            self.on_fire()
        return True

    def _arm(self, function: str, operation: str) -> None:
        from relay_local.stack import current_call

        if function == self.function and operation == self.after_op:
            with self._lock:
                self._armed.add(current_call()[0])

    def before(self, function: str, operation: str) -> None:
        from batch_relay.errors import FunctionKilled
        from relay_local.stack import current_call

        if current_call()[0] in self._dead:
            raise FunctionKilled(f"{function} is dead")
        if self.how in ("refuse", "kill before") and self._hit(function, operation):
            if self.how == "refuse":
                raise throttled(operation)
            raise FunctionKilled(f"{function} killed before {operation}")

    def after(self, function: str, operation: str) -> None:
        from batch_relay.errors import FunctionKilled

        if self.how == "kill after" and self._hit(function, operation):
            raise FunctionKilled(f"{function} killed right after {operation} acted")
        self._arm(function, operation)


def install(stack: Any, hook: Once) -> None:
    stack.before, stack.after = hook.before, hook.after


class RefuseInTurn:
    """Refuse, once each and in this order, the first call of each of `operations` that `function`
    makes (a later one only once the one before it was refused), optionally only from inside a
    frame named `within`."""

    def __init__(self, function: str, operations: list[str], within: str | None = None):
        self.function, self.operations, self.within = function, list(operations), within
        self.refused: list[str] = []
        self._lock = threading.Lock()

    def before(self, function: str, operation: str) -> None:
        if function != self.function:
            return
        if self.within is not None and not any(f.name == self.within for f in traceback.extract_stack()):
            return
        with self._lock:
            if not self.operations or operation != self.operations[0]:
                return
            self.refused.append(self.operations.pop(0))
        raise throttled(operation)

    def after(self, function: str, operation: str) -> None:
        return None
