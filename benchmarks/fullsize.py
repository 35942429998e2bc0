"""Full-size batches: the submitter's upload and create, and the collector's results stream, at the
API's limits, each in a process of its own so its peak RSS is its alone.

S3 is moto's server and the API is the emulator, both in the parent process; the child runs the
relay's own code (`Bodies` reading the buffered request lines, `JsonlWriter`, `RequestsBody` +
`batches.create_from`, `batches.results` + `Payloads.put_lines`) and reports its wall time and
peak RSS. The parent stages the request lines as the buffer leaves them (100 to an object) and
hands the child their pointers in a file, read one at a time as the claim reads index pages.

DynamoDB is not in these runs: moto answers a 1 MB query page of a 100,000-item index in seconds
and rescans the index for every page, so claiming 100,000 requests there would take hours. The
per-request DynamoDB work (batched claims and final writes) is measured on the whole pipeline
instead (`benchmarks.pipeline`), and holds one page or one chunk at a time.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

BUCKET = "bench-payloads"


def rss_mb() -> float:
    """Peak RSS of this process so far. VmHWM starts afresh at exec; ru_maxrss would keep the
    parent's figure from before it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def services() -> Any:
    """moto's server (S3) and the emulator, for a child process to talk to over HTTP."""
    from moto.server import ThreadedMotoServer
    from relay_local.emulator import Emulator, EmulatorServer, SimClock

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    emulator = Emulator(latency_seconds=0, clock=SimClock())
    try:
        with EmulatorServer(emulator) as api:
            endpoint = f"http://127.0.0.1:{port}"
            env = {
                **os.environ,
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
                "ANTHROPIC_BASE_URL": api.url,
                "ANTHROPIC_API_KEY": "bench",
                "TABLE_NAME": "bench-requests",
                "BUCKET_NAME": BUCKET,
                "TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:bench",
                "POWERTOOLS_METRICS_DISABLED": "true",
                "LOG_LEVEL": "ERROR",
                "POWERTOOLS_LOG_LEVEL": "ERROR",
            }
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
            )
            s3.create_bucket(Bucket=BUCKET)
            yield env, emulator, s3
    finally:
        moto.stop()


def child(module: str, env: dict[str, str], *args: object) -> dict[str, Any]:
    """Run `python -m module args` from the repository's root; its last stdout line, as JSON."""
    out = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def submitter(n: int, prompt_bytes: int) -> dict[str, Any]:
    """n buffered requests read back and written as the batch's JSONL, then created from it: the
    submitter's two big legs."""
    with services() as (env, emulator, s3), tempfile.NamedTemporaryFile("w", suffix=".txt") as pointers:
        _stage(s3, n, prompt_bytes, pointers)
        got = child("benchmarks.fullsize", env, "submit", pointers.name)
        [batch_id] = emulator.batch_ids()
        counts = emulator.handle(
            "GET",
            f"/v1/messages/batches/{batch_id}",
            {"x-api-key": "k", "anthropic-version": "2023-06-01"},
            b"",
        )
    processing = json.loads(counts[2])["request_counts"]
    total = sum(processing.values())
    if total != n:
        raise RuntimeError(f"the API holds {total} of {n} requests")
    return got


def collector(n: int) -> dict[str, Any]:
    """An ended batch of n results read back and stored chunk by chunk, as the collector does."""
    import anthropic

    with services() as (env, _, _s3):
        from benchmarks.pipeline import params

        client = anthropic.Anthropic(base_url=env["ANTHROPIC_BASE_URL"], api_key="bench", max_retries=0)
        requests = [{"custom_id": f"r{i:06d}", "params": params(i, 200)} for i in range(n)]
        batch = client.messages.batches.create(requests=requests)
        del requests
        return child("benchmarks.fullsize", env, "collect", batch.id, n)


def _stage(s3: Any, n: int, prompt_bytes: int, pointers: Any) -> None:
    """Request lines as the buffer stores them, 100 to an object; their pointers, one per line."""
    from batch_relay.payloads import request_line

    from benchmarks.pipeline import params

    for start in range(0, n, 100):
        key = f"bodies/bench/{start:06d}.jsonl"
        lines = [
            request_line(f"bench-{i:06d}", params(i, prompt_bytes)) for i in range(start, min(n, start + 100))
        ]
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"".join(line + b"\n" for line in lines))
        offset = 0
        for line in lines:
            pointers.write(f"{key} {offset} {len(line)}\n")
            offset += len(line) + 1
    pointers.flush()


# the child's side


def _submit(pointers: str) -> dict[str, Any]:
    from batch_relay import batches
    from batch_relay.payloads import Bodies, Payloads, RequestsBody

    base = rss_mb()
    payloads = Payloads(BUCKET)
    bodies = Bodies(payloads)
    key = "input/bench.jsonl"
    started = time.perf_counter()
    writer = payloads.writer(key)
    n = 0
    with open(pointers) as lines:
        for pointer in lines:
            body_key, offset, length = pointer.split()
            writer.write(bodies.line(body_key, int(offset), int(length)))
            n += 1
    writer.close()
    uploaded = time.perf_counter()
    body = RequestsBody(payloads, key, payloads.size(key))
    batch = batches.create_from(body, len(body), deadline=time.time() + 600)
    created = time.perf_counter()
    return {
        "requests": n,
        "bytes": len(body),
        "body_reads": bodies.reads,
        "batch_id": batch.id,
        "upload_seconds": round(uploaded - started, 2),
        "create_seconds": round(created - uploaded, 2),
        "wall_seconds": round(created - started, 2),
        "base_rss_mb": round(base, 1),
        "peak_rss_mb": round(rss_mb(), 1),
    }


def _collect(batch_id: str, n: int) -> dict[str, Any]:
    from batch_relay import batches
    from batch_relay.payloads import Payloads

    base = rss_mb()
    payloads = Payloads(BUCKET)
    started = time.perf_counter()
    chunk: list[bytes] = []
    seen = 0
    for result in batches.results(batch_id):
        chunk.append(json.dumps(result, separators=(",", ":")).encode() + b"\n")
        seen += 1
        if len(chunk) == 100:
            payloads.put_lines(f"results/{batch_id}/{seen:06d}.jsonl", chunk)
            chunk = []
    if chunk:
        payloads.put_lines(f"results/{batch_id}/{seen:06d}.jsonl", chunk)
    wall = time.perf_counter() - started
    if seen != n:
        raise RuntimeError(f"read {seen} of {n} results")
    return {
        "results": seen,
        "wall_seconds": round(wall, 2),
        "results_per_second": round(seen / wall),
        "base_rss_mb": round(base, 1),
        "peak_rss_mb": round(rss_mb(), 1),
    }


def main(argv: list[str]) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    out = _submit(argv[1]) if argv[0] == "submit" else _collect(argv[1], int(argv[2]))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
