"""Shared fixtures: the Anthropic emulator over HTTP and the relay's stack on moto."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import at, items, request, sns_refuses

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"

# Small limits and quick tiers, so a test exercises splitting and retries with few requests.
TEST_PARAMETERS = {
    "TierPolicy": json.dumps(
        {
            "urgent": {"max_wait_seconds": 1, "min_requests": 1},
            "standard": {"max_wait_seconds": 3600, "min_requests": 5},
            "bulk": {"max_wait_seconds": 21600, "min_requests": 1000},
        }
    ),
    "DefaultTier": "standard",
    "MaxAttempts": "3",
    "MaxBatchRequests": "25",
    "PollMinSeconds": "5",
}


def pytest_configure(config: pytest.Config) -> None:
    # Beside the fixture that reads it.
    config.addinivalue_line(
        "markers", "allows_drift(why): sends the API params the SDK's types do not declare, on purpose"
    )


def load_event(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The API, over HTTP. At the end every body it took must be what the SDK's param types declare
    (`Emulator.drift`), so each test that uses it checks what the relay sends; a test that sends
    undeclared params on purpose says so with `@pytest.mark.allows_drift("why")`."""
    from relay_local.emulator import Emulator, EmulatorServer

    emu = Emulator(latency_seconds=0.2, seed=7)
    with EmulatorServer(emu) as server:
        emu.url = server.url
        yield emu
    if request.node.get_closest_marker("allows_drift") is None:
        found = list(emu.drift)  # a plain list: the emulator's repr would bury the findings
        assert not found, "sent what the SDK's types do not declare:\n" + "\n".join(found)


@pytest.fixture
def make_stack(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start the stack with the test parameters, some of them changed."""
    from relay_local.stack import LocalStack

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    started: list[Any] = []

    def make(**params: str) -> Any:
        s = LocalStack(parameters=TEST_PARAMETERS | params, env={"ANTHROPIC_BASE_URL": emulator.url})
        s.start()
        # The API's clock moves with the relay's when a test moves time on (batch times, windows).
        emulator.clock = lambda: time.time() + s.offset
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def stack(make_stack: Any) -> Any:
    return make_stack()


@pytest.fixture
def loaded(stack: Any) -> tuple[Any, str, list[str]]:
    """The stack with twelve urgent requests buffered, and a queue subscribed to its completions."""
    inbox = stack.subscribe()
    ids = [f"q{i}" for i in range(12)]
    stack.send([request(i) for i in ids])
    stack.deliver()
    return stack, inbox, ids


@pytest.fixture
def aws_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The stack without the Anthropic side (these tests never reach it), a queue subscribed to its
    completions (`aws_stack.inbox`), and an SNS that refuses what real SNS refuses."""
    from moto.sns.exceptions import InvalidParameterValue
    from moto.sns.models import SNSBackend
    from relay_local.stack import LocalStack

    real_publish = SNSBackend.publish

    def publish(self: Any, message: Any, arn: Any, *args: Any, message_attributes: Any = None, **kwargs: Any):
        # Real SNS refuses an entry with an invalid attribute name or value; so does this one.
        for name, value in (message_attributes or {}).items():
            problem = sns_refuses(name, value)
            if problem:
                raise InvalidParameterValue(f"Invalid parameter: MessageAttributes: {problem}")
        return real_publish(self, message, arn, *args, message_attributes=message_attributes, **kwargs)

    monkeypatch.setattr(SNSBackend, "publish", publish)
    with LocalStack(parameters=dict(TEST_PARAMETERS)) as s:
        s.inbox = s.subscribe()
        yield s


@dataclass
class LateBatch:
    stack: Any
    inbox: str
    batch_id: str
    record: dict[str, Any]  # the relay's batch record, as the tick left it


@pytest.fixture
def late_batch(make_stack: Any, emulator: Any) -> Callable[..., LateBatch]:
    """A batch that runs late while some of its requests have deadlines: the relay assumes batches
    take a minute (so a deadline half an hour away goes into a batch), the API takes `late`
    seconds over this one, and a realtime call starts `margin` seconds before a deadline. The
    tick that submits it has run; the batch has not ended.

    `due` names the requests with deadlines (all `deadline` seconds away, or each its own when a
    mapping), `free` those without (ids, or whole request bodies); `before_send(stack)` runs once
    the stack is up (to move its clock), `before_tick(stack)` between the delivery and the tick (to
    place faults); `params` change the stack's."""

    def make(
        due: Sequence[str] | Mapping[str, float],
        free: Sequence[str | dict[str, Any]] = (),
        *,
        deadline: float = 1800,
        margin: float = 60,
        late: float = 7200,
        before_send: Callable[[Any], None] | None = None,
        before_tick: Callable[[Any], None] | None = None,
        **params: str,
    ) -> LateBatch:
        stack = make_stack(DefaultTurnaroundSeconds="60", DeadlineMarginSeconds=str(margin), **params)
        if before_send is not None:
            before_send(stack)
        inbox = stack.subscribe()
        emulator.make_late(1, late)
        seconds = due if isinstance(due, Mapping) else dict.fromkeys(due, deadline)
        stamps = {s: at(s) for s in set(seconds.values())}  # requests due together, to the millisecond
        bodies = [request(r, deadline=stamps[s]) for r, s in seconds.items()]
        stack.send(bodies + [request(r) if isinstance(r, str) else r for r in free])
        stack.deliver()
        if before_tick is not None:
            before_tick(stack)
        stack.tick()
        [batch_id] = emulator.batch_ids()
        [record] = [b for b in items(stack, "batch#").values() if b.get("batch_id") == batch_id]
        return LateBatch(stack, inbox, batch_id, record)

    return make


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The relay's store over a table of its own in moto (no stack): for unit tests of the
    store's writes."""
    import boto3
    from batch_relay import aws
    from batch_relay.store import Store
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        aws.reset()
        boto3.client("dynamodb").create_table(
            TableName="requests",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield Store("requests")
        aws.reset()
