"""The buffer's memory for one SQS batch of large bodies: 100 pointers to 32 MB bodies each, as
the SQS Extended Client leaves them in the inbox bucket, through the buffer's real handler.

moto's server (S3, DynamoDB, SNS) runs in this process; the handler runs in a child process of its
own, so its peak RSS (VmHWM) is the buffer's alone. Two runs: valid bodies (each stored), and
dense hostile ones (32 MB of `{}` values, each refused before it is parsed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3

from benchmarks.fullsize import BUCKET, child, rss_mb, services

ROOT = Path(__file__).resolve().parents[1]
# A table of its own for each run: the moto servers of one process share their state.
TABLE = "bench-requests"
BODY_BYTES = 32 * 1024 * 1024 - 4096
POINTER = "software.amazon.payloadoffloading.PayloadS3Pointer"
PROSE = b"The export button has done nothing since Tuesday, and the board meets on Friday. "


def body(n: int, kind: str, size: int = BODY_BYTES) -> bytes:
    """One request body of about `size` bytes: a long prompt, or a dense array of empty objects."""
    head = json.dumps(
        {
            "request_id": f"mem-{kind}-{n:03d}",
            "tier": "bulk",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 256,
                "messages": [{"role": "user", "content": "@"}],
            },
        }
    ).encode()
    before, after = head.split(b'"@"')
    room = size - len(head)
    if kind == "valid":
        filler = (PROSE * (room // len(PROSE) + 1))[:room]
        return before + b'"' + filler + b'"' + after
    dense = b"{}," * (room // 3)
    return before + b"[" + dense[:-1] + b"]" + after


def run(n: int, kind: str, size: int = BODY_BYTES) -> dict[str, Any]:
    table = f"{TABLE}-{uuid.uuid4().hex[:8]}"
    with services() as (env, _emulator, s3):
        endpoint = env["AWS_ENDPOINT_URL"]
        client = dict(
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        _table(boto3.client("dynamodb", **client), table)
        topic = boto3.client("sns", **client).create_topic(Name="bench-completions")["TopicArn"]
        records = []
        for i in range(n):
            key = f"producer/{kind}-{i:03d}.json"
            s3.put_object(Bucket=BUCKET, Key=key, Body=body(i, kind, size))
            pointer = json.dumps([POINTER, {"s3BucketName": BUCKET, "s3Key": key}])
            records.append(_record(pointer))
        with tempfile.NamedTemporaryFile("w", suffix=".json") as event:
            event.write(json.dumps({"Records": records}))
            event.flush()
            got = child("benchmarks.buffer", env | {"TOPIC_ARN": topic, "TABLE_NAME": table}, event.name)
        pages = boto3.client("dynamodb", **client).get_paginator("scan").paginate(TableName=table)
        items = [{k: next(iter(v.values())) for k, v in i.items()} for p in pages for i in p["Items"]]
    stored = sum(1 for i in items if i.get("status") == "pending")
    rejected = sum(1 for i in items if i.get("status") == "rejected")
    want = (n, 0) if kind == "valid" else (0, n)
    if (stored, rejected) != want or got["failures"]:
        raise RuntimeError(f"{kind}: stored {stored}, rejected {rejected}, failures {got['failures']}")
    return got | {"stored": stored, "rejected": rejected}


def _table(ddb: Any, name: str) -> None:
    from relay_local.stack import load_template

    props = load_template()["Resources"]["RequestTable"]["Properties"]
    ddb.create_table(
        TableName=name,
        **{
            k: props[k]
            for k in ("KeySchema", "AttributeDefinitions", "GlobalSecondaryIndexes", "BillingMode")
        },
    )


def _record(body: str) -> dict[str, Any]:
    return {
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "h",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(int(time.time() * 1000))},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:requests",
        "awsRegion": "us-east-1",
    }


# the child's side: the handler as template.yaml names it, with its own imports


class _Context:
    function_name = "BufferFunction"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:BufferFunction"
    memory_limit_in_mb = 1024
    aws_request_id = "bench"
    log_group_name = "/aws/lambda/BufferFunction"
    log_stream_name = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def _handle(event_file: str) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("buffer_app", ROOT / "functions" / "buffer" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    event = json.loads(Path(event_file).read_text())
    base = rss_mb()
    started = time.perf_counter()
    answer = module.handler(event, _Context())
    wall = time.perf_counter() - started
    return {
        "records": len(event["Records"]),
        "failures": len(answer["batchItemFailures"]),
        "wall_seconds": round(wall, 1),
        "base_rss_mb": round(base, 1),
        "peak_rss_mb": round(rss_mb(), 1),
    }


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    print(json.dumps(_handle(sys.argv[1])))
