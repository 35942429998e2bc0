"""Which Anthropic API the local tools talk to: the emulator, or the real one when a key is set.

Its own module so that the command line (`cli`) and what it runs (`demo`, `invoke`) both use it
without importing each other.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def emulated(latency: float = 1.0, **options: Any) -> Iterator[tuple[dict[str, str], Any]]:
    """The environment that points the SDK at the emulator, and the emulator; or, when a key is set,
    no change (the real API) and None."""
    if os.environ.get("ANTHROPIC_API_KEY"):
        yield {}, None
        return
    from relay_local.emulator import Emulator, EmulatorServer

    with EmulatorServer(Emulator(latency_seconds=latency, **options)) as server:
        yield {"ANTHROPIC_BASE_URL": server.url}, server.emulator
