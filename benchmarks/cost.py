"""The AWS bill for a million requests, modelled from a metered pipeline run.

Public us-east-1 list prices (on-demand, no free tier), all in this one table.
"""

from __future__ import annotations

import math
from typing import Any

from batch_relay.pricing import cost_of
from relay_local.stack import load_template

PRICES = {
    "lambda_gb_second_arm64": 0.0000133334,
    "lambda_request": 0.20 / 1e6,
    "sqs_request": 0.40 / 1e6,  # standard queue, per 64 KB chunk
    "dynamodb_write_unit": 0.625 / 1e6,  # on-demand write request unit
    "dynamodb_read_unit": 0.125 / 1e6,  # on-demand read request unit
    "dynamodb_gb_month": 0.25,
    "s3_put": 0.005 / 1000,  # PUT, COPY, POST, LIST, multipart calls
    "s3_get": 0.0004 / 1000,  # GET, HEAD
    "s3_gb_month": 0.023,
    "sns_publish": 0.50 / 1e6,  # per message (a PublishBatch entry), per 64 KB chunk
    "sfn_transition": 0.025 / 1000,  # Standard workflows
}

# Lambda's SQS poller receives up to 10 messages a call and deletes them 10 a call; producers
# are assumed to send 10 a call too (the operator CLI does).
SQS_CALLS_PER_MESSAGE = 0.1 + 0.1 + 0.1
# Reads: a consistent BatchGetItem of each request when it is claimed and again when its result is
# settled (1 unit each, items under 4 KB), and its share of the index pages the submitter queries
# (eventually consistent, half a unit).
READ_UNITS_PER_REQUEST = 2.5
S3_PUTS = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
S3_GETS = ("GetObject", "HeadObject")
TYPICAL = {"model": "claude-sonnet-4-5", "input_tokens": 1000, "output_tokens": 500}


def memory_gb() -> dict[str, float]:
    return {name: props["MemorySize"] / 1024 for name, props in _functions().items()}


def timeouts() -> dict[str, int]:
    return {name: int(props["Timeout"]) for name, props in _functions().items()}


def _functions() -> dict[str, Any]:
    resources = load_template()["Resources"]
    return {
        name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::Serverless::Function"
    }


def per_million(run: dict[str, Any], retention_days: int = 30) -> dict[str, float]:
    """USD per million requests, by service, from one metered run of `relay` (which also gives the
    mean item size in DynamoDB and request line size in S3)."""
    item_bytes, line_bytes = run["item_bytes"], run["line_bytes"]
    n = run["requests"]
    scale = 1e6 / n
    calls = run["calls"]
    gb = memory_gb()
    months = retention_days / 30
    lambda_usd = sum(
        seconds * gb[fn] * PRICES["lambda_gb_second_arm64"] for fn, seconds in run["durations"].items()
    )
    lambda_usd += sum(run["invocations"].values()) * PRICES["lambda_request"]
    s3_usd = sum(calls.get(f"s3.{op}", 0) for op in S3_PUTS) * PRICES["s3_put"]
    s3_usd += sum(calls.get(f"s3.{op}", 0) for op in S3_GETS) * PRICES["s3_get"]
    published = run.get("completions", n)
    out = {
        "lambda": lambda_usd * scale,
        "sqs": 1e6 * SQS_CALLS_PER_MESSAGE * PRICES["sqs_request"],
        "dynamodb": run["write_units"] * scale * PRICES["dynamodb_write_unit"]
        + 1e6 * READ_UNITS_PER_REQUEST * PRICES["dynamodb_read_unit"]
        + 1e6 * item_bytes / 1e9 * PRICES["dynamodb_gb_month"] * months,
        # the request line (kept twice: as buffered and in the batch's input) and its raw result,
        # a line's size again, kept for the retention period
        "s3": s3_usd * scale + 1e6 * 3 * line_bytes / 1e9 * PRICES["s3_gb_month"] * months,
        "sns": published * scale * PRICES["sns_publish"],
        "stepfunctions": run["transitions"] * scale * PRICES["sfn_transition"],
    }
    out["total"] = sum(out.values())
    return {k: round(v, 3) for k, v in out.items()}


def savings_per_million() -> dict[str, float]:
    """What batch pricing saves on a million typical requests (1,000 tokens in, 500 out)."""
    cost = cost_of(TYPICAL["model"], {k: v for k, v in TYPICAL.items() if k != "model"})
    return {
        "list_usd": round(cost.list_usd * 1e6, 2),
        "batch_usd": round(cost.batch_usd * 1e6, 2),
        "saved_usd": round(cost.saved_usd * 1e6, 2),
    }


def invocations_needed(seconds_per_result: float, results: int, budget_seconds: int) -> int:
    return max(1, math.ceil(seconds_per_result * results / budget_seconds))
