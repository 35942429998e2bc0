"""Request builders shared by the tests."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import boto3


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
    import time

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
