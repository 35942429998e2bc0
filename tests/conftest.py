"""Shared fixtures: the Anthropic emulator over HTTP and the relay's stack on moto."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
    from tests.helpers import request

    inbox = stack.subscribe()
    ids = [f"q{i}" for i in range(12)]
    stack.send([request(i) for i in ids])
    stack.deliver()
    return stack, inbox, ids
