"""How long a 100,000-request claim takes at AWS's latencies, from the calls the submitter makes.

moto answers in microseconds, so a claim's time here says nothing of its time in AWS. Instead the
submitter's calls are counted in the metered end-to-end run, scaled to a full batch, and each is
multiplied by a typical latency for its kind in the same region (DynamoDB's single-digit
milliseconds for a small request, more for a 100-item read or 1 MB page; S3's 100-200 ms first-byte
latency for a GET, tens of milliseconds for a small PUT, a 16 MiB part at about 100 MB/s).
The claim must finish well inside the submitter's 900 s timeout, leaving the create its share.
"""

from __future__ import annotations

from typing import Any

FULL_BATCH = 100_000
# Seconds per call, sequential, as the submitter makes them.
LATENCY = {
    "dynamodb.Query": 0.050,  # a page of up to 1,000 index entries (1 MB)
    "dynamodb.BatchGetItem": 0.020,  # 100 consistent item reads
    "dynamodb.BatchWriteItem": 0.015,  # 25 puts
    "dynamodb.PutItem": 0.006,
    "dynamodb.UpdateItem": 0.006,
    "dynamodb.GetItem": 0.005,
    "dynamodb.DeleteItem": 0.006,
    "s3.PutObject": 0.040,
    "s3.GetObject": 0.150,
    "s3.HeadObject": 0.030,
    "s3.CreateMultipartUpload": 0.040,
    "s3.UploadPart": 0.200,
    "s3.CompleteMultipartUpload": 0.060,
    "s3.ListObjectsV2": 0.050,
}
OTHER = 0.050


def model(calls: dict[str, int], requests: int, batches: int) -> dict[str, Any]:
    """The submitter's calls per request (and per batch) scaled to one 100,000-request claim."""
    rows = []
    total = 0.0
    for op, count in sorted(calls.items()):
        scaled = count * FULL_BATCH / requests
        seconds = scaled * LATENCY.get(op, OTHER)
        total += seconds
        rows.append({"operation": op, "calls": round(scaled), "seconds": round(seconds, 1)})
    return {"rows": rows, "seconds": round(total, 1), "batches_measured": batches}
