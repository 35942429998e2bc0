"""A local emulator of Anthropic's Message Batches API, spoken to by the real `anthropic` SDK.

    emu = Emulator(latency_seconds=2.0, errored_share=0.05)
    with EmulatorServer(emu) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="any")

It behaves like the service where the relay depends on it: batches are `in_progress` for
`latency_seconds`, then `ended` with `request_counts` and a relative `results_url`; results are
LF-only JSONL streamed in an order unrelated to the request order, with the errored shape nested as
the API sends it (`result.error.error.type`); bad params come back as errored results (validated
asynchronously), while malformed batches are refused at once (400), oversize ones with 413, and
calls without a key with 401. A batch not finished within 24 hours expires its unprocessed
requests; a canceled batch cancels them.

Outcomes are deterministic (seeded by the batch and custom_id) in the configured mix, and a test
can force one per request by ending the last user message with a directive:
`[[emulate:succeeded]]`, `[[emulate:expired]]`, `[[emulate:canceled]]` or
`[[emulate:errored:<error_type>]]` (e.g. `overloaded_error`, `invalid_request_error`);
`[[emulate:long]]` makes a succeeded answer use all of `max_tokens` (about four bytes a token).

Faults on demand: `inject(method, path_prefix, status, count, retry_after)` answers the next
matching calls with an error; `break_results_after(n)` cuts the next results stream after n lines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import secrets
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

DAY = 24 * 3600
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
DIRECTIVE = re.compile(r"\[\[emulate:(succeeded|expired|canceled|errored(?::[a-z_]+)?)\]\]")
TRANSIENT = ("api_error", "overloaded_error")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
WORDS = [
    "customer",
    "reports",
    "export",
    "failing",
    "after",
    "release;",
    "priority",
    "P2;",
    "suggest",
    "rollback",
    "of",
    "the",
    "button",
    "handler",
    "post",
    "looks",
    "like",
    "spam",
    "promoting",
    "an",
    "external",
    "link;",
    "label",
    "spam;",
    "reason",
    "unsolicited",
    "offer",
    "company",
    "operates",
    "in",
    "logistics",
    "with",
    "mid-size",
    "headcount;",
    "region",
    "EU;",
    "angle",
    "automation",
    "savings",
    "summary",
    "follows",
    "with",
    "key",
    "facts",
    "dates",
    "amounts",
    "and",
    "next",
    "steps",
    "for",
    "the",
    "team",
]


class SimClock:
    """A clock tests move by hand, to live through a day of batch life in a moment."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


class _Request(NamedTuple):
    """What the emulator keeps of one request: enough to answer it, never the prompt itself."""

    custom_id: str
    model: str
    max_tokens: int
    prompt_chars: int
    forced: str | None
    invalid: str | None
    long: bool = False


@dataclass
class _Batch:
    id: str
    created: float
    requests: list[_Request]
    cancel_at: float | None = None
    deleted: bool = False


@dataclass
class _Fault:
    method: str
    prefix: str
    status: int
    remaining: int
    retry_after: float | None
    route: str | None


def _stamp(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _unit(*parts: object) -> float:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _new_id(prefix: str, n: int = 24) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(n))


@dataclass
class Emulator:
    latency_seconds: float = 2.0
    errored_share: float = 0.0
    expired_share: float = 0.0
    seed: int = 0
    max_requests: int = 100_000
    max_bytes: int = 256 * 1024 * 1024
    api_key: str | None = None
    clock: Callable[[], float] = time.time
    cancel_seconds: float = 0.5
    max_queued_requests: int | None = None
    url: str | None = None
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    _batches: dict[str, _Batch] = field(default_factory=dict)
    _faults: list[_Fault] = field(default_factory=list)
    _break_after: int | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # test controls

    def inject(
        self,
        method: str,
        path_prefix: str,
        status: int,
        count: int = 1,
        retry_after: float | None = None,
        route: str | None = None,
    ) -> None:
        """Answer the next `count` calls whose method and path (and route, e.g. "results") match
        with this error status."""
        with self._lock:
            self._faults.append(_Fault(method.upper(), path_prefix, status, count, retry_after, route))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def break_results_after(self, lines: int) -> None:
        """Cut the next results stream after this many lines, as a dropped connection would."""
        self._break_after = lines

    def batch_ids(self) -> list[str]:
        return [b.id for b in sorted(self._batches.values(), key=lambda b: b.created)]

    def custom_ids(self, batch_id: str) -> list[str]:
        return [r.custom_id for r in self._batches[batch_id].requests]

    # the API

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes | Iterator[bytes]]:
        parts = urlsplit(target)
        path, query = parts.path.rstrip("/"), {k: v[-1] for k, v in parse_qs(parts.query).items()}
        route = self._route(method, path)
        with self._lock:
            self.calls[(method, route)] += 1
        try:
            self._check_fault(method, path, route)
            self._authenticate(headers)
            status, payload = self._dispatch(method, route, path, query, body)
        except ApiError as err:
            return self._error(err)
        if isinstance(payload, Iterator):
            return status, {"content-type": "application/x-jsonl"}, payload
        return status, {"content-type": "application/json"}, json.dumps(payload).encode()

    def _route(self, method: str, path: str) -> str:
        tail = path.removeprefix("/v1/messages/batches")
        if tail == "":
            return "create" if method == "POST" else "list"
        if tail.endswith("/results"):
            return "results"
        if tail.endswith("/cancel"):
            return "cancel"
        return {"GET": "retrieve", "DELETE": "delete"}.get(method, "unknown")

    def _check_fault(self, method: str, path: str, route: str) -> None:
        with self._lock:
            for fault in self._faults:
                matches = fault.method == method and path.startswith(fault.prefix)
                if fault.remaining > 0 and matches and fault.route in (None, route):
                    fault.remaining -= 1
                    raise ApiError(fault.status, f"injected {fault.status}", fault.retry_after)

    def _authenticate(self, headers: dict[str, str]) -> None:
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key", "")
        if not key:
            raise ApiError(401, "x-api-key header is required")
        if self.api_key is not None and key != self.api_key:
            raise ApiError(401, "invalid x-api-key")

    def _dispatch(
        self, method: str, route: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, Any]:
        if not path.startswith("/v1/messages/batches"):
            raise ApiError(404, f"no route {method} {path}")
        if route == "create":
            return 200, self._create(body)
        if route == "list":
            return 200, self._list(query)
        batch_id = path.split("/")[4]
        batch = self._batches.get(batch_id)
        if batch is None or batch.deleted:
            raise ApiError(404, f"batch {batch_id} not found")
        if route == "retrieve":
            return 200, self._view(batch)
        if route == "cancel":
            if self._state(batch)[0] == "in_progress" and batch.cancel_at is None:
                batch.cancel_at = self.clock()
            return 200, self._view(batch)
        if route == "delete":
            if self._state(batch)[0] != "ended":
                raise ApiError(400, "a batch can only be deleted once it has ended; cancel it first")
            batch.deleted = True
            return 200, {"id": batch.id, "type": "message_batch_deleted"}
        if route == "results":
            if self._state(batch)[0] != "ended":
                raise ApiError(400, f"batch {batch_id} is still processing; results are not available")
            return 200, self._results(batch)
        raise ApiError(404, f"no route {method} {path}")

    def _create(self, body: bytes) -> dict[str, Any]:
        if len(body) > self.max_bytes:
            raise ApiError(413, f"request exceeds the maximum size of {self.max_bytes} bytes")
        try:
            payload = json.loads(body)
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"invalid JSON: {exc.msg}") from None
        items = payload.get("requests") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items:
            raise ApiError(400, "requests: a non-empty list is required")
        if len(items) > self.max_requests:
            raise ApiError(413, f"a batch holds at most {self.max_requests} requests")
        seen: set[str] = set()
        requests = []
        for n, item in enumerate(items):
            cid = item.get("custom_id") if isinstance(item, dict) else None
            params = item.get("params") if isinstance(item, dict) else None
            if not isinstance(cid, str) or not CUSTOM_ID.match(cid):
                raise ApiError(400, f"requests.{n}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
            if cid in seen:
                raise ApiError(400, f"requests.{n}.custom_id: duplicate custom_id {cid!r}")
            if not isinstance(params, dict):
                raise ApiError(400, f"requests.{n}.params: an object is required")
            if params.get("stream"):
                raise ApiError(400, f"requests.{n}.params.stream: streaming is not supported in batches")
            seen.add(cid)
            requests.append(_digest(cid, params))
        with self._lock:
            if self.max_queued_requests is not None:
                queued = sum(len(b.requests) for b in self._batches.values() if self._state(b)[0] != "ended")
                if queued + len(requests) > self.max_queued_requests:
                    raise ApiError(429, "too many requests waiting in the processing queue", retry_after=60)
            batch = _Batch(id=_new_id("msgbatch_"), created=self.clock(), requests=requests)
            self._batches[batch.id] = batch
        return self._view(batch)

    def _list(self, query: dict[str, str]) -> dict[str, Any]:
        limit = int(query.get("limit", 20))
        if not 1 <= limit <= 1000:
            raise ApiError(400, "limit: must be between 1 and 1000")
        ordered = [
            b for b in sorted(self._batches.values(), key=lambda b: b.created, reverse=True) if not b.deleted
        ]
        ids = [b.id for b in ordered]
        if "after_id" in query and query["after_id"] in ids:
            ordered = ordered[ids.index(query["after_id"]) + 1 :]
        elif "before_id" in query and query["before_id"] in ids:
            ordered = ordered[: ids.index(query["before_id"])][-limit:]
        page = ordered[:limit]
        return {
            "data": [self._view(b) for b in page],
            "has_more": len(ordered) > limit,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }

    # batch life

    def _state(self, batch: _Batch) -> tuple[str, float | None, float]:
        """(processing_status, ended_at, share of requests processed)."""
        now = self.clock()
        natural = batch.created + self.latency_seconds
        expires = batch.created + DAY
        ends = [(natural, 1.0), (expires, DAY / self.latency_seconds if self.latency_seconds else 1.0)]
        if batch.cancel_at is not None:
            share = (batch.cancel_at - batch.created) / self.latency_seconds if self.latency_seconds else 1.0
            ends.append((batch.cancel_at + self.cancel_seconds, share))
        ended_at, share = min(ends)
        if now >= ended_at:
            return "ended", ended_at, min(1.0, share)
        return ("canceling" if batch.cancel_at is not None else "in_progress"), None, 0.0

    def _outcome(self, batch: _Batch, req: _Request, share: float, rank: float) -> tuple[str, str | None]:
        if rank >= share:
            return ("canceled" if batch.cancel_at is not None else "expired"), None
        if req.forced:
            kind, _, error = req.forced.partition(":")
            return kind, (error or "api_error") if kind == "errored" else None
        if req.invalid:
            return "errored", "invalid_request_error"
        u = _unit(self.seed, batch.id, req.custom_id, "outcome")
        if u < self.errored_share:
            return "errored", TRANSIENT[int(u * 1e6) % 2]
        if u < self.errored_share + self.expired_share:
            return "expired", None
        return "succeeded", None

    def _view(self, batch: _Batch) -> dict[str, Any]:
        status, ended_at, share = self._state(batch)
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if status == "ended":
            for req in batch.requests:
                counts[self._outcome(batch, req, share, _unit(batch.id, req.custom_id, "rank"))[0]] += 1
        else:
            counts["processing"] = len(batch.requests)
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "created_at": _stamp(batch.created),
            "expires_at": _stamp(batch.created + DAY),
            "ended_at": _stamp(ended_at),
            "cancel_initiated_at": _stamp(batch.cancel_at),
            "archived_at": None,
            "results_url": f"/v1/messages/batches/{batch.id}/results" if status == "ended" else None,
        }

    def _results(self, batch: _Batch) -> Iterator[bytes]:
        _, _, share = self._state(batch)
        cut, self._break_after = self._break_after, None
        # The API answers in its own order; callers must match lines by custom_id.
        order = sorted(range(len(batch.requests)), key=lambda i: _unit(batch.id, i, "order"))
        for sent, i in enumerate(order):
            if cut is not None and sent >= cut:
                raise ConnectionAbortedError("results stream cut")
            req = batch.requests[i]
            kind, error = self._outcome(batch, req, share, _unit(batch.id, req.custom_id, "rank"))
            yield (
                json.dumps({"custom_id": req.custom_id, "result": self._result(kind, error, req)}).encode()
                + b"\n"
            )

    def _result(self, kind: str, error: str | None, req: _Request) -> dict[str, Any]:
        if kind == "succeeded":
            return {"type": "succeeded", "message": _message(req)}
        if kind == "errored":
            message = (
                req.invalid
                if error == "invalid_request_error" and req.invalid
                else f"{error} while processing"
            )
            return {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {"type": error, "message": message},
                    "request_id": _new_id("req_"),
                },
            }
        return {"type": kind}

    def _error(self, err: ApiError) -> tuple[int, dict[str, str], bytes]:
        request_id = _new_id("req_")
        headers = {"content-type": "application/json", "request-id": request_id}
        if err.retry_after is not None:
            headers["retry-after"] = str(max(0, math.ceil(err.retry_after)))
            headers["retry-after-ms"] = str(max(1, int(err.retry_after * 1000)))
        body = {
            "type": "error",
            "error": {"type": ERROR_TYPES.get(err.status, "api_error"), "message": err.message},
            "request_id": request_id,
        }
        return err.status, headers, json.dumps(body).encode()


def _digest(custom_id: str, params: dict[str, Any]) -> _Request:
    messages = params.get("messages")
    model, max_tokens = params.get("model"), params.get("max_tokens")
    invalid = None
    if not isinstance(model, str) or not model.startswith("claude-"):
        invalid = f"model: {model!r} is not a known model"
    elif not isinstance(max_tokens, int) or max_tokens < 1:
        invalid = "max_tokens: must be at least 1"
    elif not isinstance(messages, list) or not messages:
        invalid = "messages: at least one message is required"
    prompt = json.dumps([params.get("system"), messages], ensure_ascii=False)
    forced = None
    last = _last_user_text(messages)
    found = DIRECTIVE.search(last) if last else None
    if found:
        forced = found.group(1)
    return _Request(
        custom_id,
        model if isinstance(model, str) else "",
        max_tokens if isinstance(max_tokens, int) else 0,
        len(prompt),
        forced,
        invalid,
        "[[emulate:long]]" in last,
    )


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _message(req: _Request) -> dict[str, Any]:
    n = req.max_tokens if req.long else 8 + int(_unit(req.custom_id, "len") * 40)
    start = int(_unit(req.custom_id, "start") * len(WORDS))
    words = [WORDS[(start + i) % len(WORDS)] for i in range(n)]
    output_tokens = max(1, min(req.max_tokens, int(n * 1.3)))
    stop = "end_turn" if output_tokens < req.max_tokens else "max_tokens"
    return {
        "id": "msg_" + hashlib.blake2b(req.custom_id.encode(), digest_size=12).hexdigest(),
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": [{"type": "text", "text": " ".join(words).capitalize() + "."}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": max(1, req.prompt_chars // 4),
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "batch",
        },
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out_headers, payload = self.server.emulator.handle(self.command, self.path, headers, body)
        self.send_response(status)
        for k, v in out_headers.items():
            self.send_header(k, v)
        if isinstance(payload, bytes):
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        buffer = bytearray()
        try:
            for line in payload:
                buffer += line
                if len(buffer) >= 64 * 1024:
                    self._chunk(bytes(buffer))
                    buffer.clear()
        except ConnectionAbortedError:
            if buffer:
                self._chunk(bytes(buffer))
            self.wfile.flush()
            self.close_connection = True
            return  # no closing chunk: the client sees the stream break
        if buffer:
            self._chunk(bytes(buffer))
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read their own output
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    emulator: Emulator


class EmulatorServer:
    """Serves an Emulator over HTTP on loopback, in a background thread."""

    def __init__(self, emulator: Emulator, host: str = "127.0.0.1", port: int = 0):
        self.emulator = emulator
        self.httpd = _Server((host, port), _Handler)
        self.httpd.emulator = emulator
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="anthropic-emulator", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> EmulatorServer:
        self.thread.start()
        self.emulator.url = self.url
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m relay_local.emulator", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=5.0, help="seconds a batch stays in_progress")
    parser.add_argument("--errored-share", type=float, default=0.0)
    parser.add_argument("--expired-share", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any)")
    args = parser.parse_args(argv)
    emu = Emulator(
        latency_seconds=args.latency,
        errored_share=args.errored_share,
        expired_share=args.expired_share,
        seed=args.seed,
        api_key=args.api_key,
    )
    server = EmulatorServer(emu, args.host, args.port).start()
    print(f"Anthropic batch emulator on {server.url} (set ANTHROPIC_BASE_URL to it); Ctrl-C stops it")
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
