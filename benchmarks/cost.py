"""The AWS bill: what a stack costs a month at zero traffic, and what a million requests add,
modelled from metered runs of the relay on the local stack.

Public us-east-1 list prices (on-demand, no free tier), all in this one table. What is left out:
data transfer, KMS requests behind the topic's AWS managed key, the SAM artifacts bucket, and the
free tiers (10 custom metrics, 10 alarms, 3 dashboards, 100,000 traces a month...), which would
take most of the zero-traffic floor off a small account.
"""

from __future__ import annotations

import math
import re
from typing import Any

from batch_relay.pricing import cost_of
from relay_local.stack import load_template

from benchmarks import claim

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
    "cloudwatch_metric_month": 0.30,  # a custom metric (name + dimensions), first 10,000
    "cloudwatch_alarm_metric_month": 0.10,  # standard resolution; a metric math alarm per metric in it
    "cloudwatch_dashboard_month": 3.00,
    "logs_ingested_gb": 0.50,
    "logs_stored_gb_month": 0.03,
    "secret_month": 0.40,
    "secrets_api_call": 0.05 / 10_000,
    "xray_trace": 5.00 / 1e6,  # traces recorded
    "schedule_invocation": 0.0,  # an EventBridge rule's scheduled invocations are not billed
}
HOURS_A_MONTH = 730

# Lambda's SQS poller receives up to 10 messages a call and deletes them 10 a call; producers
# are assumed to send 10 a call too (the operator CLI does).
SQS_CALLS_PER_MESSAGE = 0.1 + 0.1 + 0.1
# Reads: a consistent BatchGetItem of each request when it is claimed and again when its result is
# settled (1 unit each, items under 4 KB), and its share of the index pages the submitter queries
# (eventually consistent, half a unit).
READ_UNITS_PER_REQUEST = 2.5
# Lambda long-polls each queue that has an event source even when it is empty: five pollers, each
# a 20-second ReceiveMessage at a time (AWS does not publish the idle rate; this is its documented
# starting number of pollers, each waiting the longest a receive may).
SQS_IDLE_RECEIVES_A_MINUTE = 5 * 3
# Lambda's START, END and REPORT lines (with its X-Ray segment ids) for each invocation, which the
# local stack does not print.
PLATFORM_LOG_BYTES = 300
# An idle run's calls at AWS latencies: as a claim's, but its index queries find nothing.
IDLE_LATENCY = claim.LATENCY | {"dynamodb.Query": 0.010}
# Functions whose invocations may read the API key (cached for five minutes in each).
API_FUNCTIONS = ("SubmitterFunction", "CheckBatchFunction", "CollectResultsFunction", "RealtimeFunction")
S3_PUTS = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
S3_GETS = ("GetObject", "HeadObject")
TYPICAL = {"model": "claude-sonnet-4-5", "input_tokens": 1000, "output_tokens": 500}


def memory_gb() -> dict[str, float]:
    return {name: props["MemorySize"] / 1024 for name, props in _functions().items()}


def timeouts() -> dict[str, int]:
    return {name: int(props["Timeout"]) for name, props in _functions().items()}


def _functions() -> dict[str, Any]:
    return {name: r["Properties"] for name, r in _resources("AWS::Serverless::Function").items()}


def _resources(kind: str) -> dict[str, Any]:
    return {name: r for name, r in load_template()["Resources"].items() if r["Type"] == kind}


def _default(parameter: str) -> str:
    return str(load_template()["Parameters"][parameter]["Default"])


def schedule_runs_a_month(expression: str | None = None) -> float:
    """Runs a month of the submitter's schedule (a `rate(...)`; the template's default if none)."""
    found = re.fullmatch(r"rate\((\d+) (minutes?|hours?|days?)\)", expression or _default("SubmitSchedule"))
    if not found:
        raise ValueError(f"only rate() schedules are modelled, not {expression!r}")
    minutes = int(found[1]) * {"m": 1, "h": 60, "d": 1440}[found[2][0]]
    return HOURS_A_MONTH * 60 / minutes


def alarm_metrics() -> int:
    """What the template's alarms bill: one each, or one per metric a metric math alarm reads."""
    total = 0
    for alarm in _resources("AWS::CloudWatch::Alarm").values():
        queries = alarm["Properties"].get("Metrics")
        total += sum("MetricStat" in q for q in queries) if queries else 1
    return total


def event_source_queues() -> int:
    """Queues that Lambda polls for the template's functions."""
    return sum(
        e["Type"] == "SQS" for props in _functions().values() for e in props.get("Events", {}).values()
    )


def idle_run_seconds(idle: dict[str, Any]) -> float:
    """A scheduled run with nothing to do, in AWS: its own time here plus its calls at AWS latency."""
    runs = idle["runs"]
    own = (sum(idle["durations"].values()) - idle["service_seconds"]) / runs
    waits = sum(count * IDLE_LATENCY.get(op, claim.OTHER) for op, count in idle["calls"].items()) / runs
    return own + waits


def per_month_at_zero(idle: dict[str, Any]) -> dict[str, float]:
    """USD a month for a deployed stack that receives nothing, from metered idle runs of `idle`:
    the schedule's submitter runs, the queues Lambda polls, CloudWatch, the secret, X-Ray."""
    runs = schedule_runs_a_month()
    per_run = {k: v / idle["runs"] for k, v in idle["calls"].items()}
    reads = sum(v for k, v in per_run.items() if k in ("dynamodb.Query", "dynamodb.GetItem"))
    log_gb = runs * (idle["log_bytes"] / idle["runs"] + PLATFORM_LOG_BYTES) / 1e9
    out = {
        "submitter_lambda": runs
        * (
            PRICES["lambda_request"]
            + idle_run_seconds(idle) * memory_gb()["SubmitterFunction"] * PRICES["lambda_gb_second_arm64"]
        ),
        "schedule": runs * PRICES["schedule_invocation"],
        "dynamodb": runs
        * (
            idle["write_units"] / idle["runs"] * PRICES["dynamodb_write_unit"]
            + reads * PRICES["dynamodb_read_unit"]
        ),
        "sqs_polling": event_source_queues()
        * SQS_IDLE_RECEIVES_A_MINUTE
        * HOURS_A_MONTH
        * 60
        * PRICES["sqs_request"],
        "cloudwatch_metrics": len(idle["metric_names"]) * PRICES["cloudwatch_metric_month"],
        "cloudwatch_alarms": alarm_metrics() * PRICES["cloudwatch_alarm_metric_month"],
        "cloudwatch_dashboard": len(_resources("AWS::CloudWatch::Dashboard"))
        * PRICES["cloudwatch_dashboard_month"],
        "cloudwatch_logs": log_gb
        * (PRICES["logs_ingested_gb"] + PRICES["logs_stored_gb_month"] * _log_months()),
        "secret": PRICES["secret_month"],
        "xray": runs * PRICES["xray_trace"],
    }
    out["total"] = sum(out.values())
    return {k: round(v, 2) for k, v in out.items()}


def metrics_with_traffic(run: dict[str, Any], idle: dict[str, Any]) -> dict[str, Any]:
    """Custom metrics a run with traffic emits beyond the idle ones: each is billed a month while
    requests keep coming (CloudWatch prorates by the hour a metric is emitted in)."""
    extra = sorted(set(run["metric_names"]) - set(idle["metric_names"]))
    return {"names": extra, "usd_a_month": round(len(extra) * PRICES["cloudwatch_metric_month"], 2)}


def _log_months() -> float:
    return int(_default("LogRetentionDays")) / 30


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
    invoked = sum(run["invocations"].values())
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
        # every invocation's platform lines and what the functions print: JSON logs, EMF metrics
        "cloudwatch_logs": (run["log_bytes"] + invoked * PLATFORM_LOG_BYTES)
        * scale
        / 1e9
        * (PRICES["logs_ingested_gb"] + PRICES["logs_stored_gb_month"] * _log_months()),
        # at most a trace an invocation and one a poller execution (default sampling traces fewer)
        "xray": (invoked + run["batches"]) * scale * PRICES["xray_trace"],
        # at most a read of the API key an invocation of a function that calls the API
        "secretsmanager": sum(run["invocations"].get(fn, 0) for fn in API_FUNCTIONS)
        * scale
        * PRICES["secrets_api_call"],
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
