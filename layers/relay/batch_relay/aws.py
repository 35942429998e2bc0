"""boto3 clients, made once per process and reused across invocations (Lambda keeps them warm)."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

# Standard retry mode backs off on throttling before an error reaches our code.
_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})


@cache
def client(service: str) -> Any:
    return boto3.client(service, config=_CONFIG)  # type: ignore[call-overload]


@cache
def dynamodb() -> Any:
    return boto3.resource("dynamodb", config=_CONFIG)


def table(name: str) -> Any:
    return dynamodb().Table(name)


def reset() -> None:
    """Forget the clients (tests start a fresh emulated account for each case)."""
    client.cache_clear()
    dynamodb.cache_clear()
