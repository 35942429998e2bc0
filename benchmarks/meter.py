"""What the relay's functions ask of AWS: calls by service and operation, DynamoDB write units, and
how long each function ran.

Calls are counted with botocore's event hooks on the default session, so every client the relay
makes carries them; only calls made while one of the template's handlers runs are counted (moto's
own Step Functions engine also talks to AWS, but those are state transitions, priced separately).

DynamoDB write units follow the service's rules, from the item before and after each write (read
from moto's backend, which is not a call): a write costs one unit per started KB of the larger of
the two, and each index the item enters, leaves or changes in costs one unit per KB of its entry
(two writes when the item moves from one index key to another).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3

KB = 1024
WRITES = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem")


class Meter:
    def __init__(self, index_key: str = "pending_tier"):
        self.calls: Counter[str] = Counter()
        self.calls_by_fn: dict[str, Counter[str]] = {}
        self.write_units = 0
        self.durations: Counter[str] = Counter()  # seconds per function
        self.invocations: Counter[str] = Counter()
        self.index_key = index_key
        self._inside = threading.local()
        # inside moto producing AWS's answers, for calls the handlers made: the stack's own calls
        # (the test harness polling executions) run in other threads at the same time
        self.service_seconds = 0.0
        self.service_by_fn: Counter[str] = Counter()
        self._patch: Any = None

    # wiring

    def install(self) -> None:
        """Hook the default session (clients made after this carry the hooks) and time moto."""
        from unittest import mock

        from moto.core.botocore_stubber import BotocoreStubber

        events = boto3._get_default_session()._session.get_component("event_emitter")
        events.register("before-call.*.*", self._before_call, unique_id="bench-meter-before")
        events.register("after-call.*.*", self._after_call, unique_id="bench-meter-after")
        answer = BotocoreStubber.__call__
        meter = self

        def timed(stubber: Any, event_name: str, request: Any, **kwargs: Any) -> Any:
            with meter._frame(service=True):
                return answer(stubber, event_name, request, **kwargs)

        self._patch = mock.patch.object(BotocoreStubber, "__call__", timed)
        self._patch.start()

    def uninstall(self) -> None:
        events = boto3._get_default_session()._session.get_component("event_emitter")
        events.unregister("before-call.*.*", unique_id="bench-meter-before")
        events.unregister("after-call.*.*", unique_id="bench-meter-after")
        if self._patch is not None:
            self._patch.stop()

    @contextmanager
    def _frame(self, service: bool) -> Iterator[None]:
        """Nested timing per thread: a moto answer's own time excludes the handlers it ran (Step
        Functions invoking Lambda) and the answers nested in those."""
        frames = self._inside.__dict__.setdefault("frames", [])
        frames.append(0.0)
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            nested = frames.pop()
            if service and getattr(self._inside, "on", False):
                self.service_seconds += elapsed - nested
                self.service_by_fn[self._inside.fn] += elapsed - nested
            if frames:
                frames[-1] += elapsed

    def wrap(self, invoke: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
        """A stack's `invoke`, counting what each handler asks of AWS and timing it."""

        def counted(logical_id: str, event: Any) -> Any:
            with self.counting(logical_id):
                return invoke(logical_id, event)

        return counted

    @contextmanager
    def counting(self, name: str) -> Iterator[None]:
        outer, outer_fn = getattr(self._inside, "on", False), getattr(self._inside, "fn", None)
        self._inside.on, self._inside.fn = True, name
        started = time.perf_counter()
        try:
            with self._frame(service=False):
                yield
        finally:
            self.durations[name] += time.perf_counter() - started
            self.invocations[name] += 1
            self._inside.on, self._inside.fn = outer, outer_fn

    # hooks

    # The hooks' own time (reading item images from moto's backend) is the bench's, not the
    # relay's: it is counted with moto's.

    def _before_call(self, model: Any, params: dict[str, Any], context: Any, **_: Any) -> None:
        if not getattr(self._inside, "on", False):
            return
        with self._frame(service=True):
            self._note(model, params, context)

    def _note(self, model: Any, params: dict[str, Any], context: Any) -> None:
        service = model.service_model.service_name
        self.calls[f"{service}.{model.name}"] += 1
        fn = getattr(self._inside, "fn", None) or "?"
        self.calls_by_fn.setdefault(fn, Counter())[f"{service}.{model.name}"] += 1
        if service == "dynamodb" and model.name in WRITES:
            keys = _written_keys(model.name, params.get("body", {}))
            context["bench_images"] = [(table, key, _image(table, key)) for table, key in keys]

    def _after_call(self, parsed: dict[str, Any], context: Any, **_: Any) -> None:
        # A write refused by its condition is charged too: before and after are then the same item.
        images = context.pop("bench_images", None)
        if images is None:
            return
        with self._frame(service=True):
            for table, key, before in images:
                self.write_units += self.units(before, _image(table, key))

    def units(self, before: Any, after: Any) -> int:
        size = max(_size(before), _size(after))
        if size == 0 and before is None and after is None:
            return 1  # a delete of nothing still costs a unit
        cost = max(1, math.ceil(size / KB))
        old, new = _index_value(before, self.index_key), _index_value(after, self.index_key)
        if old is not None and new is not None and old == new:
            cost += max(1, math.ceil(_size(after) / KB)) if _changed(before, after) else 0
        else:
            if old is not None:
                cost += max(1, math.ceil(_size(before) / KB))
            if new is not None:
                cost += max(1, math.ceil(_size(after) / KB))
        return cost

    # figures

    def per_request(self, n: int) -> dict[str, float]:
        return {op: round(count / n, 4) for op, count in sorted(self.calls.items())}

    def total(self) -> int:
        return sum(self.calls.values())


def _written_keys(operation: str, body: Any) -> list[tuple[str, str]]:
    request = json.loads(body) if isinstance(body, bytes | str) and body else body or {}
    if operation == "BatchWriteItem":
        out = []
        for table, writes in request.get("RequestItems", {}).items():
            for w in writes:
                item = (w.get("PutRequest") or {}).get("Item") or (w.get("DeleteRequest") or {}).get("Key")
                out.append((table, item["pk"]["S"]))
        return out
    source = request.get("Item") or request.get("Key") or {}
    return [(request["TableName"], source["pk"]["S"])]


def _backend() -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends[DEFAULT_ACCOUNT_ID][boto3._get_default_session().region_name or "us-east-1"]


def _image(table: str, key: str) -> Any:
    try:
        item = _backend().get_item(table, {"pk": {"S": key}})
    except Exception:
        return None
    return None if item is None else (item.size(), dict(item.attrs))


def _size(image: Any) -> int:
    return image[0] if image else 0


def _index_value(image: Any, key: str) -> Any:
    if not image or key not in image[1]:
        return None
    return image[1][key].value


def _changed(before: Any, after: Any) -> bool:
    return before[1] != after[1]
