"""Request builders shared by the tests."""

from __future__ import annotations

from typing import Any


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
