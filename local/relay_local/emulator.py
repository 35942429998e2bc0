"""A local emulator of Anthropic's Message Batches API (and of the realtime Messages and token-counting
calls), spoken to by the real `anthropic` SDK.

    emu = Emulator(latency_seconds=2.0, errored_share=0.05)
    with EmulatorServer(emu) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="any")

or from a shell: `python -m relay_local.emulator --port 8765 --latency 5` and ANTHROPIC_BASE_URL.

It behaves like the service where the relay depends on it: batches are `in_progress` for
`latency_seconds`, then `ended` with `request_counts` and an absolute `results_url` (on the server's
own address, as the API gives its own, so the SDK follows it as it is); results are
LF-only JSONL streamed (chunked, generated line by line) in an order unrelated to the request order,
with the errored shape nested as the API sends it (`result.error.error.type`). Bad params (model,
max_tokens, messages) come back as errored `invalid_request_error` results, since the API validates
them asynchronously, while malformed batches (custom_id, duplicates, `stream`) are refused at once
with 400, oversize ones with 413 (before the key is even looked at, as the API's edge answers it),
calls without a key with 401, and calls without an `anthropic-version` header with 400. Errors
have the API's shape, `{"type": "error", "error": {"type", "message"}, "request_id"}`, with a
`request-id` header. A batch not finished within
24 hours expires its unprocessed requests; a canceled batch cancels those not processed by the time
of the cancel (elapsed / latency of them, chosen deterministically).

How long a batch takes: `latency_seconds`, or with `latency_mix`, weighted choices
`[(weight, seconds), ...]`, one picked for each new batch from `seed` and the batch's creation number
(so the same run of creates gets the same durations): `[(0.9, 30.0), (0.1, 7200.0)]` makes about one
batch in ten late. `make_late(count, seconds)` makes the next `count` batches take `seconds`, whatever
the mix, to make exactly one batch late. From a shell: `--latency-mix 0.9:30,0.1:7200`.

Outcomes are deterministic (seeded by `seed`, the batch and the custom_id) in the configured mix:
`errored_share` (as `api_error` or `overloaded_error`), `expired_share`, the rest succeeded.
A directive anywhere in the text of the LAST user message (string content or any text block)
forces the outcome of that request:

    [[emulate:succeeded]]
    [[emulate:expired]]
    [[emulate:canceled]]
    [[emulate:errored:<error_type>]]   e.g. overloaded_error, api_error, invalid_request_error
    [[emulate:errored:<type>:<code>]]  in a batch, the line's error.details.error_code

and these shape a succeeded answer, alone or with one of the above:

    [[emulate:long]]                   an answer that fills max_tokens (about 4 bytes a token)
    [[emulate:container]]              the answer carries `container: {"id", "expires_at"}` (RFC 3339,
                                       30 days after the request ran: the emulator's
                                       choice), as when the code-execution tool ran
    [[emulate:web_search:<n>]]         `usage.server_tool_use` says n web searches (and 0 fetches), and
                                       25 output tokens a search are added past max_tokens, as server
                                       tools may go beyond it

Invalid params win over a directive, and a cancel or the 24-hour expiry wins over both.

Usage is shaped as the SDK's `Usage` type: `input_tokens`, `output_tokens`,
`cache_creation_input_tokens` (the sum of `cache_creation.ephemeral_5m_input_tokens` and
`ephemeral_1h_input_tokens`: a `cache_control` with `"ttl": "1h"` writes 1-hour tokens, any other
5-minute ones), `cache_read_input_tokens`, `service_tier` ("batch" in results, "standard" realtime),
`inference_geo` (the request's, else "global") and, after web searches, `server_tool_use`.

Versions: every call needs an `anthropic-version` header, one of `2023-06-01` and `2026-10-21`
(what the SDK 2.x sends); another is a 400 naming it. Under `2026-10-21` a message's params may not
hold `temperature`, `top_p` or `top_k` (even at their defaults: "temperature: Extra inputs are not
permitted"), a `document` block in an `assistant` message, nor a `text` block with non-empty
`citations` in a `user` message; `2023-06-01` takes them. Like any bad param, that is a 400 for a
realtime call or a token count, and an errored `invalid_request_error` result for a batch request
(the create is accepted). A batch keeps the version and the `anthropic-beta` values (comma
separated) it was created under: `batch_version(batch_id)` gives them. `versions` counts every call
by `Sent(route, version, betas)`, to check what a client sent. `max_tokens` is at most 128,000; a
batch created with `anthropic-beta: output-300k-2026-03-24` takes up to 300,000 (the beta is for
batches only). A batch request never takes `max_tokens: 0`; a realtime call does, as a cache
warm-up: the prompt is cached and the answer is empty (`stop_reason` "max_tokens", no output).

Realtime calls: `POST /v1/messages` (route "message", what `client.messages.create` calls) answers a
Message shaped as a batch result's, with `usage.service_tier` "standard", after `realtime_seconds`
(a real sleep standing for generation time; `--realtime-seconds`). Its params are checked at once,
as the API does for realtime calls: a bad model, max_tokens or messages, params the version refuses,
`stream: true` (the emulator does not stream) and no credit are 400s. Directives apply as answers:
`[[emulate:errored:<type>]]` is that type's HTTP status (overloaded_error 529, api_error 500,
rate_limit_error 429 with retry-after, invalid_request_error 400, ...), `[[emulate:long]]` fills
max_tokens, and expired or canceled mean nothing there. Each answered call is added to
`messages_created` as (model, input_tokens, output_tokens), since it is billed at list price;
`realtime_rate_limit_per_minute` limits these calls apart from the batch endpoints' limit. `POST
/v1/messages/count_tokens` (route "count_tokens", free, neither recorded nor limited) returns
`{"input_tokens"}`: the whole prompt a message with those params would report, `input_tokens` plus
both cache counts.

Each batch keeps the latency and the outcome mix in force when it was created, so changing them
later shapes only new batches. The prompt is the tool definitions (as their JSON), the system prompt
and the messages, about 4 characters a token. Blocks marked with `cache_control` make a cached
prefix: the first request (batch or realtime) to send a given prefix writes it
(`cache_creation_input_tokens`), later ones read it (`cache_read_input_tokens`), and `input_tokens`
counts only what follows the last marker.

Faults on demand: `inject(method, path_prefix, status, count, retry_after, error_code=,
should_retry=)` answers the next matching calls with an error (`retry-after` header when given,
`error.details.error_code` and `x-should-retry` as the API sends them); `account_error` (a code of
ACCOUNT_ERRORS, e.g. "organization_on_hold") refuses realtime calls with it and ends every request
of a batch made meanwhile errored with it; `lose_create_answers(n, how)` makes
the next n creates go through and then answers 503 (`how="503"`) or drops the connection
(`how="reset"`), as a gateway losing the answer would, and `lose_answers("message", n, how)` does
the same to realtime calls after they are billed; `chaos(rate, seed)` does all of these at
random (429/529/5xx before acting, lost create and realtime answers after, results streams cut half-way), and
`batch_ids()` lists every batch made, to count who was billed twice; `break_results_after(n)` cuts the
next results stream after n lines. Custom ids put in `left_out` have their result line left out of the
results of the next batch made holding them. A fault's path prefix is matched as it is: one on
`/v1/messages/batches` never hits a realtime call, and its route ("create", "message", ...) narrows
it further. `rate_limit_per_minute` refuses with 429 calls to the batch endpoints past that many in
the last 60 seconds of `clock`; `max_queued_requests` refuses with 429 a batch that would put more
requests in processing than that. `clock` may be a `SimClock`, to live through a day at once; rate
limits then lift only when the test advances it.

Drift: every body the emulator takes is also held to the SDK's param types (`relay_local.contract`),
so what a client sends cannot drift from the SDK unnoticed: a batch request's `params` to
`batch_create_params.Request`'s (MessageCreateParamsNonStreaming), a realtime call's body to
MessageCreateParamsNonStreaming, a count's to MessageCountTokensParams. What differs (pydantic's
refusal, or a key the type does not declare) is added to `drift` as "route custom_id (version):
problem"; the answer is the same either way. Only bodies whose params pass the emulator's own
checks are held to the types: one it refuses (a 400, or a batch request that ends errored with
`invalid_request_error`) is already an error the client sees, and often the point of a test.
Under `2023-06-01`, `temperature`, `top_p` and `top_k` are the API's params, which the SDK 2.x no
longer declares: not drift there. The check costs milliseconds a body, so it is kept cheap: a body's
shape (its keys, lists, value types, and the strings that could be the SDK's literals) is checked
once per route and version and remembered, and a batch past 500 requests has 500 of them checked,
spread evenly over it (a 10,000-request create takes about 50 ms more).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import secrets
import string
import sys
import threading
import time
import typing
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import chain
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from relay_local import contract

DAY = 24 * 3600
# Drift checks (see the docstring) cost milliseconds each: a batch past SAMPLED requests has that
# many checked, spread over it; each shape of body is checked once (per route and version), at most
# CHECKED_SHAPES new ones a call, and at most MAX_SHAPES remembered.
SAMPLED = 500
CHECKED_SHAPES = 100
MAX_SHAPES = 10_000
# A string that could be one of the SDK's literals ("text", "image/jpeg", "5m"): kept in a body's
# shape, where any other string counts only as a string.
LITERAL = re.compile(r"[a-z0-9][a-z0-9_./-]{0,63}")
# The API versions the emulator knows, oldest first; the SDK 2.x sends the newest.
VERSIONS = ("2023-06-01", "2026-10-21")
LATEST = VERSIONS[-1]
# Sampling params the newest version no longer takes, even at their default values.
SAMPLING = ("temperature", "top_p", "top_k")
# Past a model's usual output ceiling: up to 300,000 tokens with this beta, and in batches only.
OUTPUT_300K = "output-300k-2026-03-24"
MAX_OUTPUT = 128_000
MAX_OUTPUT_300K = 300_000
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# An errored directive may name an error code after its type: kept in the forced outcome as written.
DIRECTIVE = re.compile(r"\[\[emulate:(succeeded|expired|canceled|errored(?::[a-z_]+(?::[a-z_]+)?)?)\]\]")
WEB_SEARCH = re.compile(r"\[\[emulate:web_search:(\d{1,4})\]\]")
CONTAINER = "[[emulate:container]]"
# How long a code-execution container outlives the request that made it.
CONTAINER_SECONDS = 30 * DAY
# What a request that names no inference_geo reports (the workspace default).
INFERENCE_GEO = "global"
ROUTE = re.compile(r"^/v1/messages/batches(?:/(?P<id>[^/]+)(?P<tail>/cancel|/results)?)?$")
# The realtime paths, each with its own route name, so a fault can aim at one kind of call.
REALTIME = {"/v1/messages": "message", "/v1/messages/count_tokens": "count_tokens"}
BATCH_ROUTES = frozenset({"create", "list", "retrieve", "cancel", "delete", "results"})
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_BASE62_BYTES = bytes(ord(BASE62[b % 62]) for b in range(256))
OUTCOMES = ("processing", "succeeded", "errored", "canceled", "expired")
TRANSIENT = ("api_error", "overloaded_error")
# The API's own words for a body past its size limit.
TOO_LARGE = "Request exceeds the maximum allowed number of bytes."
# What a batch's `results_url` is built on when no server serves the emulator (direct `handle` calls).
DEFAULT_BASE = "https://api.anthropic.com"
ERROR_MESSAGES = {
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
    "rate_limit_error": "Rate limited",
    "timeout_error": "Request timed out",
    "billing_error": "Your credit balance is too low to access the Anthropic API.",
}
# What the API answers every request of a batch made while the account has no credit.
NO_CREDIT = (
    "Your credit balance is too low to access the Anthropic API. "
    "Please go to Plans & Billing to upgrade or purchase credits."
)
# Account problems the API names by code: (status, error type, message). Spend caps come as 429s
# the client is told not to retry (`x-should-retry: false`), without a retry-after.
ACCOUNT_ERRORS = {
    "organization_on_hold": (400, "invalid_request_error", "This organization has been disabled."),
    "cmek_key_disabled": (400, "invalid_request_error", "The workspace's encryption key is disabled."),
    "workspace_human_review_disabled": (400, "invalid_request_error", "Human Review is off here."),
    "enforced_spend_limit_reached": (429, "rate_limit_error", "You have reached your monthly usage limit."),
    "contract_spend_limit_reached": (
        429,
        "rate_limit_error",
        "You have reached your contract's spend limit.",
    ),
}
# The HTTP status a realtime call answers with for each error type (the API's documented pairs).
STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
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
# The answer's body: words that say what they are, never ones that read like a real answer to some
# other request. The answer starts by naming the request it answers (`_about`).
WORDS = [
    "emulated",
    "text",
    "standing",
    "in",
    "for",
    "the",
    "model's",
    "answer,",
    "as",
    "many",
    "words",
    "as",
    "the",
    "answer",
    "takes;",
]
# Words of the prompt quoted at each end to name a request that has no custom_id (a realtime call).
QUOTED_WORDS = 4


class SimClock:
    """A clock tests move by hand, to live through a day of batch life in a moment."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        retry_after: float | None = None,
        kind: str | None = None,
        code: str | None = None,
        should_retry: bool | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after
        # The error type when the status alone does not name it (a 504 is a timeout_error).
        self.kind = kind
        # `error.details.error_code`, and the `x-should-retry` header, as the API sends them.
        self.code, self.should_retry = code, should_retry


class MessageCall(NamedTuple):
    """One answered realtime message: billed at list price, unlike batch results."""

    model: str
    input_tokens: int
    output_tokens: int


class Sent(NamedTuple):
    """The version headers of one call: what `Emulator.versions` counts."""

    route: str
    version: str
    betas: tuple[str, ...] = ()


class _Request(NamedTuple):
    """What the emulator keeps of one request: enough to answer it, never the prompt itself (only
    a few of its words, to name it in the answer), so that a full batch of 100,000 requests costs a
    few tens of megabytes."""

    custom_id: str
    model: str
    max_tokens: int
    prompt_chars: int
    prompt_hash: int
    forced: str | None
    invalid: str | None
    long: bool = False
    cached_chars: int = 0  # the prompt up to the last cache_control marker
    cache_read: bool = False  # that prefix was written by an earlier request
    cached_1h_chars: int = 0  # the part of that prefix under a 1-hour marker
    web_searches: int = 0
    container: bool = False
    geo: str = INFERENCE_GEO
    # The first and last words of its last user message, to name it by in the answer.
    quoted: str = ""


class _End(NamedTuple):
    at: float
    processed: float  # share of the requests processed before the batch stopped
    reason: str  # what the unprocessed requests become: "expired" or "canceled"


@dataclass
class _Batch:
    id: str
    created: float
    requests: list[_Request]
    latency: float
    errored_share: float
    expired_share: float
    seed: int
    credit: bool = True
    # What the batch was created under: every request of it is read by these.
    version: str = LATEST
    betas: tuple[str, ...] = ()
    account_error: str | None = None
    cancel_at: float | None = None
    cancel_seconds: float = 0.0
    deleted: bool = False
    # Once ended a batch never changes, even if a test changes the latency afterwards.
    end: _End | None = None
    counts: dict[str, int] | None = None
    left_out: frozenset[str] = frozenset()


@dataclass
class _Fault:
    method: str
    prefix: str
    status: int
    remaining: int
    retry_after: float | None
    route: str | None
    message: str | None = None
    code: str | None = None
    should_retry: bool | None = None


def _stamp(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _unit(*parts: object) -> float:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _new_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(secrets.choice(BASE62) for _ in range(n))


def _stable_id(prefix: str, *parts: object, n: int = 24) -> str:
    # One byte a character (slightly uneven over base62, which no one can tell): results make
    # one of these per line, and a 100,000-line file should stream in seconds.
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=n).digest()
    return prefix + digest.translate(_BASE62_BYTES).decode()


@dataclass
class Emulator:
    """The API's state and behaviour, without sockets: `EmulatorServer` puts it on HTTP."""

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
    rate_limit_per_minute: int | None = None
    # Weighted choices (weight, seconds) of how long a new batch takes, instead of latency_seconds.
    latency_mix: list[tuple[float, float]] | None = None
    # A real sleep before a realtime answer, standing for generation time (a SimClock does not move).
    realtime_seconds: float = 0.0
    realtime_rate_limit_per_minute: int | None = None
    # False: batches are still accepted, but every request of one made now ends errored with
    # invalid_request_error "Your credit balance is too low ..." (as the API does).
    credit: bool = True
    # An account problem the API names by `error.details.error_code` (a key of ACCOUNT_ERRORS, e.g.
    # "organization_on_hold"): realtime calls are refused with it, and every request of a batch
    # made meanwhile ends errored with it, as `credit = False` does with its words.
    account_error: str | None = None
    # A batch holding one of these custom_ids is refused with 400, naming it.
    refused_ids: set[str] = field(default_factory=set)
    # The next batch made holding one of these custom_ids leaves its result line out (still counted).
    left_out: set[str] = field(default_factory=set)
    url: str | None = None
    calls: Counter[tuple[str, str]] = field(default_factory=Counter, repr=False)
    # The version and betas of every call past the key and version checks, by route.
    versions: Counter[Sent] = field(default_factory=Counter, repr=False)
    # Every realtime message answered, to count the calls billed at list price.
    messages_created: list[MessageCall] = field(default_factory=list, repr=False)
    # Where a body the emulator took differs from the SDK's param types: "route custom_id: problem".
    drift: list[str] = field(default_factory=list, repr=False)
    # Kept out of repr: a failing test would otherwise print every stored request.
    _batches: dict[str, _Batch] = field(default_factory=dict, repr=False)
    _admitted: deque[float] = field(default_factory=deque, repr=False)
    _realtime_admitted: deque[float] = field(default_factory=deque, repr=False)
    _late: list[float] = field(default_factory=list, repr=False)
    _made: int = field(default=0, repr=False)  # batches created, to pick each one's latency from
    _cached_prefixes: set[int] = field(default_factory=set, repr=False)
    _shapes: dict[tuple[str, str, Any], tuple[str, ...]] = field(default_factory=dict, repr=False)
    _faults: list[_Fault] = field(default_factory=list, repr=False)
    _break_after: int | None = field(default=None, repr=False)
    _lose: list[tuple[str, str]] = field(default_factory=list, repr=False)  # (route, how)
    _chaos: random.Random | None = field(default=None, repr=False)
    _chaos_rate: float = field(default=0.0, repr=False)
    faults_served: Counter[str] = field(default_factory=Counter, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # test controls

    def inject(
        self,
        method: str,
        path_prefix: str,
        status: int,
        count: int = 1,
        retry_after: float | None = None,
        route: str | None = None,
        message: str | None = None,
        error_code: str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        """Answer the next `count` calls whose method and path (and route, e.g. "results") match
        with this error status (and message), in the API's error shape: with `error_code` as
        `error.details.error_code`, with `should_retry` as the `x-should-retry` header."""
        with self._lock:
            self._faults.append(
                _Fault(
                    method.upper(),
                    path_prefix,
                    status,
                    count,
                    retry_after,
                    route,
                    message,
                    error_code,
                    should_retry,
                )
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._lose.clear()
            self._chaos = None

    def lose_create_answers(self, count: int = 1, how: str = "503") -> None:
        """Create the next `count` batches, then lose each answer: a 503 or a dropped connection."""
        self.lose_answers("create", count, how)

    def lose_answers(self, route: str, count: int = 1, how: str = "503") -> None:
        """Act on the next `count` calls of `route` ("create", "message"), then lose each answer:
        a 503 or a dropped connection, after the batch was made or the message billed."""
        with self._lock:
            self._lose.extend([(route, how)] * count)

    def chaos(self, rate: float, seed: int) -> None:
        """Fail about `rate` of calls at random, in every way the service can (seeded)."""
        with self._lock:
            self._chaos, self._chaos_rate = random.Random(seed), rate

    def _roll(self) -> float:
        return self._chaos.random() if self._chaos is not None else 1.0

    def make_late(self, count: int, seconds: float) -> None:
        """Make the next `count` batches created take `seconds`, whatever the latency or the mix."""
        with self._lock:
            self._late.extend([seconds] * count)

    def _latency(self) -> float:
        """How long the batch being created takes (under the lock, as it uses up make_late)."""
        self._made += 1
        if self._late:
            return self._late.pop(0)
        if not self.latency_mix:
            return self.latency_seconds
        # From the seed and the creation number rather than the (random) id, so a seeded run of
        # creates gets the same durations every time.
        u = _unit(self.seed, self._made, "latency") * sum(w for w, _ in self.latency_mix)
        for weight, seconds in self.latency_mix:
            if u < weight:
                return seconds
            u -= weight
        return self.latency_mix[-1][1]

    def break_results_after(self, lines: int) -> None:
        """Cut the next results stream after this many lines, as a dropped connection would."""
        with self._lock:
            self._break_after = lines

    def preload(
        self, batch_id: str, requests: list[dict[str, Any]], ended: bool = True, version: str = LATEST
    ) -> None:
        """Hold a batch under a given id, as if created `latency_seconds` ago (so ended) or just now:
        for a sample event that names its batch."""
        kept = [_digest(r["custom_id"], r["params"], version)[0] for r in requests]
        with self._lock:
            self._batches[batch_id] = _Batch(
                id=batch_id,
                created=self.clock() - (self.latency_seconds if ended else 0.0),
                requests=kept,
                latency=self.latency_seconds,
                errored_share=self.errored_share,
                expired_share=self.expired_share,
                seed=self.seed,
                version=version,
            )

    def batch_ids(self) -> list[str]:
        with self._lock:
            return list(self._batches)

    def custom_ids(self, batch_id: str) -> list[str]:
        return [r.custom_id for r in self._batches[batch_id].requests]

    def batch(self, batch_id: str) -> dict[str, Any]:
        """A batch as retrieving it shows it now (a copy: changing it changes nothing here)."""
        with self._lock:
            view = self._view(self._batches[batch_id])
            return view | {"request_counts": dict(view["request_counts"])}

    def results(self, batch_id: str) -> list[dict[str, Any]]:
        """The result lines of an ended batch, as its results stream sends them."""
        with self._lock:
            batch = self._batches[batch_id]
            if self._state(batch)[1] is None:
                raise ValueError(f"batch {batch_id} has not ended")
            return [json.loads(line) for line in self._results(batch, None)]

    def message_id(self, batch_id: str, custom_id: str) -> str:
        """The id of the message a batch's succeeded result line carries for a request."""
        return _stable_id("msg_01", batch_id, custom_id, n=22)

    def batch_version(self, batch_id: str) -> tuple[str, tuple[str, ...]]:
        """The `anthropic-version` and `anthropic-beta` values a batch was created under."""
        batch = self._batches[batch_id]
        return batch.version, batch.betas

    # the API

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes | Iterator[bytes]]:
        """Answer one HTTP request: (status, headers, body or an iterator of body pieces).

        The body may be empty when `content-length` is past `max_bytes`: the server then drains it
        rather than hold it, and the declared length is enough to refuse it."""
        parts = urlsplit(target)
        path = parts.path.rstrip("/")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        found = ROUTE.match(path)
        route = _route(method, path, found)
        with self._lock:
            self.calls[(method, route)] += 1
        try:
            self._check_fault(method, path, route)
            self._random_refusal()
            size = max(len(body), _int(headers.get("content-length")))
            # The server did not keep an oversize body, so every call that carries one is refused here.
            if route in ("create", "message", "count_tokens") and size > self.max_bytes:
                raise ApiError(413, TOO_LARGE)
            self._authenticate(headers)
            version = headers.get("anthropic-version", "").strip()
            if not version:
                raise ApiError(400, "anthropic-version: header is required")
            if version not in VERSIONS:
                raise ApiError(400, f"anthropic-version: {version!r} is not a valid version")
            betas = _betas(headers.get("anthropic-beta"))
            with self._lock:
                self.versions[Sent(route, version, betas)] += 1
            if route == "unknown":
                raise ApiError(404, f"Not found: {method} {path}")
            self._throttle(route)
            batch_id = found.group("id") if found else None
            payload = self._dispatch(route, batch_id, query, body, size, version, betas)
            if route in ("create", "message"):
                self._lose_answer(route)
        except ApiError as err:
            return self._error(err)
        request_id = {"request-id": _new_id("req_")}
        if isinstance(payload, Iterator):
            return 200, {"content-type": "application/binary"} | request_id, payload
        return 200, {"content-type": "application/json"} | request_id, json.dumps(payload).encode()

    def _check_fault(self, method: str, path: str, route: str) -> None:
        with self._lock:
            for fault in self._faults:
                matches = fault.method == method and path.startswith(fault.prefix)
                if fault.remaining > 0 and matches and fault.route in (None, route):
                    fault.remaining -= 1
                    message = fault.message or f"injected {fault.status}"
                    raise ApiError(
                        fault.status,
                        message,
                        fault.retry_after,
                        code=fault.code,
                        should_retry=fault.should_retry,
                    )

    def _random_refusal(self) -> None:
        with self._lock:
            if self._roll() < self._chaos_rate / 2:
                status = (429, 529, 500, 503)[int(self._roll() * 4) % 4]
                self.faults_served[f"refused {status}"] += 1
                raise ApiError(status, f"injected {status}", 0.001 if status == 429 else None)

    def _lose_answer(self, route: str) -> None:
        with self._lock:
            planned = next((n for n, (r, _) in enumerate(self._lose) if r == route), None)
            how = self._lose.pop(planned)[1] if planned is not None else None
            if how is None and self._roll() < self._chaos_rate / 2:
                how = "503" if self._roll() < 0.5 else "reset"
            if how is None:
                return
            self.faults_served[f"lost {route} answer ({how})"] += 1
        if how == "reset":
            raise ConnectionResetError(f"answer lost after the {route} call acted")
        raise ApiError(503, "upstream connect error or disconnect/reset before headers")

    def _authenticate(self, headers: dict[str, str]) -> None:
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key", "")
        if not key:
            raise ApiError(401, "x-api-key header is required")
        if self.api_key is not None and key != self.api_key:
            raise ApiError(401, "invalid x-api-key")

    def _throttle(self, route: str) -> None:
        # The batch endpoints and realtime messages have separate allowances; counting tokens is free.
        if route in BATCH_ROUTES:
            limit, admitted = self.rate_limit_per_minute, self._admitted
        elif route == "message":
            limit, admitted = self.realtime_rate_limit_per_minute, self._realtime_admitted
        else:
            return
        if limit is None:
            return
        with self._lock:
            now = self.clock()
            while admitted and admitted[0] <= now - 60:
                admitted.popleft()
            if len(admitted) >= limit:
                wait = admitted[0] + 60 - now
                message = f"Number of requests has exceeded your rate limit ({limit} per minute)"
                raise ApiError(429, message, max(1, math.ceil(wait)))
            admitted.append(now)

    def _dispatch(
        self,
        route: str,
        batch_id: str | None,
        query: dict[str, str],
        body: bytes,
        size: int,
        version: str = LATEST,
        betas: tuple[str, ...] = (),
    ) -> Any:
        if route == "create":
            return self._create(body, size, version, betas)
        if route == "message":
            return self._realtime(body, version)
        if route == "count_tokens":
            return self._count_tokens(body, version)
        if route == "list":
            return self._list(query)
        with self._lock:
            batch = self._batches.get(batch_id or "")
            if batch is None or batch.deleted:
                raise ApiError(404, f"No batch found with id {batch_id}")
            status = self._state(batch)[0]
            if route == "retrieve":
                return self._view(batch)
            if route == "cancel":
                if status == "in_progress":
                    batch.cancel_at, batch.cancel_seconds = self.clock(), self.cancel_seconds
                return self._view(batch)
            if route == "delete":
                if status != "ended":
                    raise ApiError(
                        400, f"Batch {batch.id} cannot be deleted while processing; cancel it first"
                    )
                batch.deleted = True
                return {"id": batch.id, "type": "message_batch_deleted"}
            if status != "ended":
                raise ApiError(400, f"Batch {batch.id} has not ended; results are not available yet")
            cut, self._break_after = self._break_after, None
            if cut is None and self._roll() < self._chaos_rate:
                cut = int(self._roll() * len(batch.requests))
                self.faults_served["results stream cut"] += 1
        return self._results(batch, cut)

    def _realtime(self, body: bytes, version: str = LATEST) -> dict[str, Any]:
        params = _json_object(body)
        if params.get("stream"):
            raise ApiError(400, "stream: this emulator does not stream; send the request without it")
        # Checked at once, unlike in a batch: a realtime call answers 400 for bad params.
        one, prefix = _digest("", params, version, (0, MAX_OUTPUT))
        if one.invalid:
            raise ApiError(400, one.invalid)
        self._check_sent("message", [("", params)], version)
        if not self.credit:
            raise ApiError(400, NO_CREDIT)
        if self.account_error:
            status, kind, message = ACCOUNT_ERRORS[self.account_error]
            raise ApiError(
                status,
                message,
                kind=kind,
                code=self.account_error,
                should_retry=False if status == 429 else None,
            )
        kind, _, error = (one.forced or "").partition(":")
        if kind == "errored":
            error, _, code = (error or "api_error").partition(":")
            status = STATUSES.get(error, 500)
            message = ERROR_MESSAGES.get(error, f"{error} while processing the request")
            raise ApiError(status, message, 1 if status == 429 else None, kind=error, code=code or None)
        if self.realtime_seconds > 0:
            time.sleep(self.realtime_seconds)  # outside the lock: other calls go on meanwhile
        with self._lock:
            if prefix is not None:
                if prefix in self._cached_prefixes:
                    one = one._replace(cache_read=True)
                self._cached_prefixes.add(prefix)
            # A fresh key for the id: realtime answers have no batch or custom_id to name them by.
            answer = _message(_new_id(""), one, self.clock())
            usage = answer["usage"]
            usage["service_tier"] = "standard"
            billed = MessageCall(one.model, usage["input_tokens"], usage["output_tokens"])
            self.messages_created.append(billed)
        return answer

    def _count_tokens(self, body: bytes, version: str = LATEST) -> dict[str, Any]:
        params = _json_object(body)
        # The count takes no max_tokens: lend it one, so the same checks apply to the rest.
        one, _ = _digest("", params | {"max_tokens": 1}, version)
        if one.invalid:
            raise ApiError(400, one.invalid)
        self._check_sent("count_tokens", [("", params)], version)
        return {"input_tokens": sum(_input_tokens(one))}

    def _create(
        self, body: bytes, size: int, version: str = LATEST, betas: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        if size > self.max_bytes:
            raise ApiError(413, TOO_LARGE)
        payload = _json(body)
        items = payload.get("requests") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items:
            raise ApiError(400, "requests: a non-empty list is required")
        if len(items) > self.max_requests:
            raise ApiError(413, f"A batch may hold at most {self.max_requests} requests")
        seen: set[str] = set()
        requests = []
        params_of: list[dict[str, Any]] = []
        limits = (1, MAX_OUTPUT_300K if OUTPUT_300K in betas else MAX_OUTPUT)
        for n, item in enumerate(items):
            cid = item.get("custom_id") if isinstance(item, dict) else None
            params = item.get("params") if isinstance(item, dict) else None
            if not isinstance(cid, str) or not CUSTOM_ID.fullmatch(cid):
                raise ApiError(400, f"requests.{n}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
            if cid in seen:
                raise ApiError(400, f"requests.{n}.custom_id: duplicate custom_id {cid!r} in this batch")
            if not isinstance(params, dict):
                raise ApiError(400, f"requests.{n}.params: an object is required")
            if params.get("stream"):
                raise ApiError(400, f"requests.{n}.params.stream: streaming is not supported in batches")
            if cid in self.refused_ids:
                raise ApiError(400, f"requests.{n}.params: this request cannot be processed ({cid})")
            seen.add(cid)
            requests.append(_digest(cid, params, version, limits))
            params_of.append(params)
        with self._lock:
            if self.max_queued_requests is not None:
                queued = sum(len(b.requests) for b in self._batches.values() if self._state(b)[0] != "ended")
                if queued + len(requests) > self.max_queued_requests:
                    raise ApiError(429, "Too many requests waiting in the batch processing queue", 60)
            kept = []
            for one, prefix in requests:
                if prefix is not None:
                    if prefix in self._cached_prefixes:
                        one = one._replace(cache_read=True)
                    self._cached_prefixes.add(prefix)
                kept.append(one)
            batch = _Batch(
                id=_new_id("msgbatch_"),
                created=self.clock(),
                requests=kept,
                latency=self._latency(),
                errored_share=self.errored_share,
                expired_share=self.expired_share,
                seed=self.seed,
                account_error=self.account_error,
                credit=self.credit,
                version=version,
                betas=betas,
                left_out=frozenset(self.left_out & seen),
            )
            self.left_out -= seen
            self._batches[batch.id] = batch
            view = self._view(batch)
        # Once the batch exists, and outside the lock: only the requests the API would process.
        taken = [
            (one.custom_id, p) for (one, _), p in zip(requests, params_of, strict=True) if not one.invalid
        ]
        self._check_sent("create", taken, version)
        return view

    def _check_sent(self, route: str, bodies: list[tuple[str, dict[str, Any]]], version: str) -> None:
        """Record where bodies differ from the SDK's param types for `route` (see "Drift")."""
        kind = _param_types()[route]
        fresh = 0
        step = max(1, len(bodies) // SAMPLED)
        for custom_id, params in bodies[::step][:SAMPLED]:
            if version != LATEST:  # params the older version takes and the SDK 2.x no longer names
                params = {k: v for k, v in params.items() if k not in SAMPLING}
            key = (route, version, _shape(params))
            found = self._shapes.get(key)
            if found is None:
                if fresh >= CHECKED_SHAPES:
                    continue
                fresh += 1
                found = tuple(contract.drift(kind, params))
                with self._lock:
                    if len(self._shapes) >= MAX_SHAPES:
                        self._shapes.clear()
                    self._shapes[key] = found
            if found:
                where = f"{route} {custom_id}".rstrip()
                with self._lock:
                    self.drift.extend(f"{where} ({version}): {problem}" for problem in found)

    def _list(self, query: dict[str, str]) -> dict[str, Any]:
        try:
            limit = int(query.get("limit", 20))
        except ValueError:
            raise ApiError(400, "limit: an integer is required") from None
        if not 1 <= limit <= 1000:
            raise ApiError(400, "limit: must be between 1 and 1000")
        with self._lock:
            # Creation order rather than created_at: batches made within one tick of a SimClock tie.
            newest = [b for b in reversed(self._batches.values()) if not b.deleted]
            ids = [b.id for b in newest]
            if query.get("after_id") in ids:
                rest = newest[ids.index(query["after_id"]) + 1 :]
                page, has_more = rest[:limit], len(rest) > limit
            elif query.get("before_id") in ids:
                rest = newest[: ids.index(query["before_id"])]
                page, has_more = rest[-limit:], len(rest) > limit
            else:
                page, has_more = newest[:limit], len(newest) > limit
            return {
                "data": [self._view(b) for b in page],
                "has_more": has_more,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            }

    # batch life

    def _state(self, batch: _Batch) -> tuple[str, _End | None]:
        if batch.end is not None:
            return "ended", batch.end
        latency = max(batch.latency, 1e-9)
        ends = [_End(batch.created + batch.latency, 1.0, "expired")]
        ends.append(_End(batch.created + DAY, min(1.0, DAY / latency), "expired"))
        if batch.cancel_at is not None:
            processed = min(1.0, (batch.cancel_at - batch.created) / latency)
            ends.append(_End(batch.cancel_at + batch.cancel_seconds, processed, "canceled"))
        end = min(ends, key=lambda e: e.at)
        if self.clock() < end.at:
            return ("canceling" if batch.cancel_at is not None else "in_progress"), None
        batch.end = end
        return "ended", end

    def _outcome(self, batch: _Batch, req: _Request, end: _End) -> tuple[str, str | None]:
        if _unit(batch.id, req.custom_id, "rank") >= end.processed:
            return end.reason, None
        if req.invalid or not batch.credit or batch.account_error:
            return "errored", "invalid_request_error"
        if req.forced:
            kind, _, error = req.forced.partition(":")
            return kind, (error or "api_error") if kind == "errored" else None
        u = _unit(batch.seed, batch.id, req.custom_id, "outcome")
        if u < batch.errored_share:
            return "errored", TRANSIENT[int(u * 1e6) % len(TRANSIENT)]
        if u < batch.errored_share + batch.expired_share:
            return "expired", None
        return "succeeded", None

    def _view(self, batch: _Batch) -> dict[str, Any]:
        status, end = self._state(batch)
        if end is None:
            counts = dict.fromkeys(OUTCOMES, 0) | {"processing": len(batch.requests)}
        else:
            if batch.counts is None:
                tally = Counter(self._outcome(batch, req, end)[0] for req in batch.requests)
                batch.counts = {k: tally.get(k, 0) for k in OUTCOMES}
            counts = batch.counts
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "created_at": _stamp(batch.created),
            "expires_at": _stamp(batch.created + DAY),
            "ended_at": _stamp(end.at if end else None),
            "cancel_initiated_at": _stamp(batch.cancel_at),
            "archived_at": None,
            "results_url": f"{self.url or DEFAULT_BASE}/v1/messages/batches/{batch.id}/results"
            if end
            else None,
        }

    def _results(self, batch: _Batch, cut: int | None) -> Iterator[bytes]:
        end = batch.end
        assert end is not None
        # The API answers in its own order; callers must match lines by custom_id.
        order = sorted(range(len(batch.requests)), key=lambda i: _unit(batch.id, i, "order"))
        order = [i for i in order if batch.requests[i].custom_id not in batch.left_out]
        for sent, i in enumerate(order):
            if cut is not None and sent >= cut:
                raise ConnectionAbortedError("results stream cut")
            req = batch.requests[i]
            kind, error = self._outcome(batch, req, end)
            line = {"custom_id": req.custom_id, "result": self._result(batch, kind, error, req)}
            yield json.dumps(line, separators=(",", ":")).encode() + b"\n"

    def _result(self, batch: _Batch, kind: str, error: str | None, req: _Request) -> dict[str, Any]:
        if kind == "succeeded":
            return {"type": "succeeded", "message": _message(batch.id, req, batch.created + batch.latency)}
        if kind == "errored":
            error, _, code = (error or "").partition(":")
            if batch.account_error:
                _, error, message = ACCOUNT_ERRORS[batch.account_error]
                code = batch.account_error
            elif error == "invalid_request_error" and not batch.credit:
                message = NO_CREDIT
            elif error == "invalid_request_error" and req.invalid:
                message = req.invalid
            else:
                message = ERROR_MESSAGES.get(error or "", f"{error} while processing the request")
            inner: dict[str, Any] = {"type": error, "message": message}
            if code:
                inner["details"] = {"error_code": code}
            return {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": inner,
                    "request_id": _stable_id("req_", batch.id, req.custom_id),
                },
            }
        return {"type": kind}

    def _error(self, err: ApiError) -> tuple[int, dict[str, str], bytes]:
        request_id = _new_id("req_")
        headers = {"content-type": "application/json", "request-id": request_id}
        if err.should_retry is not None:
            headers["x-should-retry"] = "true" if err.should_retry else "false"
        if err.retry_after is not None:
            headers["retry-after"] = str(max(0, math.ceil(err.retry_after)))
            if err.retry_after != int(err.retry_after):
                # The API only says whole seconds; a test asking for less gets the SDK's precise
                # header too, so that retries cost milliseconds.
                headers["retry-after-ms"] = str(max(1, round(err.retry_after * 1000)))
        inner: dict[str, Any] = {
            "type": err.kind or ERROR_TYPES.get(err.status, "api_error"),
            "message": err.message,
        }
        if err.code:
            inner["details"] = {"error_code": err.code}
        body = {"type": "error", "error": inner, "request_id": request_id}
        return err.status, headers, json.dumps(body).encode()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}") from None


def _json_object(body: bytes) -> dict[str, Any]:
    payload = _json(body)
    if not isinstance(payload, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return payload


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _route(method: str, path: str, found: re.Match[str] | None) -> str:
    if path in REALTIME:
        return REALTIME[path] if method == "POST" else "unknown"
    if found is None:
        return "unknown"
    tail = found.group("tail")
    if found.group("id") is None:
        return {"POST": "create", "GET": "list"}.get(method, "unknown")
    if tail == "/results":
        return "results" if method == "GET" else "unknown"
    if tail == "/cancel":
        return "cancel" if method == "POST" else "unknown"
    return {"GET": "retrieve", "DELETE": "delete"}.get(method, "unknown")


def _ttl(marker: Any) -> str:
    """The TTL a `cache_control` marker asks for ("5m" unless it says "1h"), "" for no marker."""
    if not marker:
        return ""
    return "1h" if isinstance(marker, dict) and marker.get("ttl") == "1h" else "5m"


def _texts(value: Any) -> Iterator[tuple[str, str]]:
    """The text of a system prompt or of message contents, however it is laid out in blocks, each
    piece with the TTL of the `cache_control` block it closes ("" when it closes none)."""
    if isinstance(value, str):
        yield value, ""
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        if isinstance(value.get("text"), str):
            yield value["text"], ""
        if "content" in value:
            yield from _texts(value["content"])
        if value.get("cache_control"):
            yield "", _ttl(value["cache_control"])


def _tool_texts(tools: Any) -> Iterator[tuple[str, str]]:
    """Tool definitions, which come first in the prompt, as their JSON; a marked one closes a prefix."""
    if not isinstance(tools, list):
        return
    for tool in tools:
        if isinstance(tool, dict):
            plain = {k: v for k, v in tool.items() if k != "cache_control"}
            yield json.dumps(plain, sort_keys=True), _ttl(tool.get("cache_control"))


def _betas(header: str | None) -> tuple[str, ...]:
    """`anthropic-beta: a, b` as ("a", "b"): the SDK joins a list with commas."""
    return tuple(sorted({b.strip() for b in (header or "").split(",") if b.strip()}))


def _refused_by(version: str, params: dict[str, Any]) -> str | None:
    """Why `version` refuses these params (in the API's pydantic wording), or None."""
    if version == "2023-06-01":
        return None
    for name in SAMPLING:
        if name in params:
            return f"{name}: Extra inputs are not permitted"
    messages = params.get("messages")
    for i, msg in enumerate(messages if isinstance(messages, list) else []):
        content = msg.get("content") if isinstance(msg, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else []):
            if not isinstance(block, dict):
                continue
            where = f"messages.{i}.content.{j}"
            if msg.get("role") == "assistant" and block.get("type") == "document":
                return (
                    f"{where}: Input tag 'document' found using 'type' is not permitted in assistant messages"
                )
            if msg.get("role") == "user" and block.get("type") == "text" and block.get("citations"):
                return f"{where}.citations: Extra inputs are not permitted"
    return None


def _digest(
    custom_id: str, params: dict[str, Any], version: str = LATEST, limits: tuple[int, int] = (1, MAX_OUTPUT)
) -> tuple[_Request, int | None]:
    """What to keep of one request, and a key for its cached prefix when it marks one. `limits` are
    the least and the most max_tokens the call takes (a batch never takes 0; a beta lifts the most)."""
    messages = params.get("messages")
    model, max_tokens = params.get("model"), params.get("max_tokens")
    invalid = None
    if "model" not in params:
        invalid = "model: Field required"
    elif not isinstance(model, str) or not model.startswith("claude-"):
        invalid = f"model: {model}"
    elif "max_tokens" not in params:
        invalid = "max_tokens: Field required"
    elif not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < limits[0]:
        invalid = f"max_tokens: must be greater than or equal to {limits[0]}"
    elif max_tokens > limits[1]:
        invalid = (
            f"max_tokens: {max_tokens} > {limits[1]}, which is the maximum allowed number of output "
            f"tokens for {model}"
        )
    elif not isinstance(messages, list) or not messages:
        invalid = "messages: at least one message is required"
    else:
        invalid = _refused_by(version, params)
    hasher = hashlib.blake2b(digest_size=8)
    chars = cached_chars = cached_1h_chars = 0
    prefix_key = None
    pieces = chain(_tool_texts(params.get("tools")), _texts([params.get("system"), messages]))
    for text, ttl in pieces:
        chars += len(text)
        hasher.update(text.encode("utf-8", "replace"))
        if ttl:
            cached_chars = chars
            # The API wants 1-hour markers before 5-minute ones: the prefix up to the last of them is 1-hour.
            cached_1h_chars = chars if ttl == "1h" else cached_1h_chars
            prefix_key = hash((model, chars, hasher.copy().digest()))
    last = _last_user_text(messages)
    found = DIRECTIVE.search(last)
    searches = WEB_SEARCH.search(last)
    geo = params.get("inference_geo")
    digest = _Request(
        custom_id,
        sys.intern(model) if isinstance(model, str) else "",
        max_tokens if isinstance(max_tokens, int) else 0,
        chars,
        int.from_bytes(hasher.digest(), "big"),
        found.group(1) if found else None,
        invalid,
        "[[emulate:long]]" in last,
        cached_chars if invalid is None else 0,
        False,
        cached_1h_chars if invalid is None else 0,
        int(searches.group(1)) if searches else 0,
        CONTAINER in last,
        sys.intern(geo) if isinstance(geo, str) and geo else INFERENCE_GEO,
        _quote(last),
    )
    return digest, prefix_key if invalid is None and cached_chars else None


@cache
def _param_types() -> dict[str, Any]:
    """The SDK's type for the params of each route that takes some (imported on first use: the
    command line starts without the SDK)."""
    from anthropic.types.message_count_tokens_params import MessageCountTokensParams
    from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
    from anthropic.types.messages.batch_create_params import Request

    batch = typing.get_type_hints(Request)["params"]  # what a batch request's params are typed as
    return {
        "create": batch,
        "message": MessageCreateParamsNonStreaming,
        "count_tokens": MessageCountTokensParams,
    }


def _shape(value: Any) -> Any:
    """What a drift check of `value` depends on: its keys, lists, value types and the strings that
    could be literals; two bodies of one shape get the same findings."""
    if isinstance(value, dict):
        return (dict, tuple((k, _shape(v)) for k, v in value.items()))
    if isinstance(value, list):
        return (list, tuple(_shape(v) for v in value))
    if isinstance(value, str):
        return value if LITERAL.fullmatch(value) else str
    return type(value)


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
                )
            return ""
    return ""


def _quote(text: str) -> str:
    """A request's last user message cut to its first and last few words, directives left out."""
    words = WEB_SEARCH.sub("", DIRECTIVE.sub("", text.replace(CONTAINER, ""))).split()
    if len(words) > 2 * QUOTED_WORDS:
        words = [*words[:QUOTED_WORDS], "...", *words[-QUOTED_WORDS:]]
    return " ".join(words)[:120]


def _about(req: _Request) -> str:
    """How an answer starts: marked as emulated, naming the request it answers, by its custom_id
    in a batch and by its words in a realtime call (which has no id)."""
    said = f' "{req.quoted}"' if req.quoted else ""
    if req.custom_id:
        return f"[emulated] answer to {req.custom_id}{said}:"
    return f"[emulated] realtime answer to{said or ' a request'}:"


def _input_tokens(req: _Request) -> tuple[int, int]:
    """The prompt's tokens after the last cache marker, and up to it (written or read alike)."""
    return max(1, (req.prompt_chars - req.cached_chars) // 4), req.cached_chars // 4


def _message(batch_id: str, req: _Request, at: float) -> dict[str, Any]:
    """The answer to one request, run at `at` (what a container's expiry counts from)."""
    # An ordinary answer ends on its own well within max_tokens; a "long" one runs into the limit.
    n = req.max_tokens if req.long else min(8 + req.prompt_hash % 40, max(1, int(req.max_tokens / 1.3)))
    words = [WORDS[i % len(WORDS)] for i in range(n)]
    output_tokens = max(1, min(req.max_tokens, math.ceil(n * 1.3)))
    stop = "max_tokens" if req.long else "end_turn"
    content = [{"type": "text", "text": f"{_about(req)} {' '.join(words)}."}]
    if req.max_tokens == 0:
        # A cache warm-up (realtime only): the prompt is read and cached, nothing is generated.
        content, output_tokens, stop = [], 0, "max_tokens"
    # Server tools write their queries outside the answer, so max_tokens does not bound them.
    output_tokens += 25 * req.web_searches
    fresh, cached = _input_tokens(req)
    written = 0 if req.cache_read else cached
    hour = 0 if req.cache_read else req.cached_1h_chars // 4
    usage: dict[str, Any] = {
        "input_tokens": fresh,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached if req.cache_read else 0,
        "cache_creation": {"ephemeral_5m_input_tokens": written - hour, "ephemeral_1h_input_tokens": hour},
        "service_tier": "batch",
        "inference_geo": req.geo,
    }
    if req.web_searches:
        usage["server_tool_use"] = {"web_search_requests": req.web_searches, "web_fetch_requests": 0}
    message: dict[str, Any] = {
        "id": _stable_id("msg_01", batch_id, req.custom_id, n=22),
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }
    if req.container:
        container_id = _stable_id("container_", batch_id, req.custom_id)
        message["container"] = {"id": container_id, "expires_at": _stamp(at + CONTAINER_SECONDS)}
    return message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _serve(self) -> None:
        length = _int(self.headers.get("content-length"))
        if length > self.server.emulator.max_bytes:
            # Read it to the end, as the client waits to finish sending before it reads the 413.
            left = length
            while left > 0:
                piece = self.rfile.read(min(left, 1 << 20))
                if not piece:
                    break
                left -= len(piece)
            body = b""
        else:
            body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, out_headers, payload = self.server.emulator.handle(self.command, self.path, headers, body)
        except ConnectionResetError:
            self.close_connection = True  # no answer at all: the client sees the connection drop
            return
        except Exception as exc:  # a bug here must reach the client as the API's 500, not a hang
            status, out_headers, payload = self.server.emulator._error(ApiError(500, repr(exc)))
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
            if buffer:
                self._chunk(bytes(buffer))
            self.wfile.write(b"0\r\n\r\n")
        except ConnectionAbortedError:
            if buffer:
                self._chunk(bytes(buffer))
            self.wfile.flush()
            self.close_connection = True  # no closing chunk: the client sees the stream break
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client stopped reading, as a consumer may

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

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
            # A short poll interval keeps stop() quick: tests start and stop many servers.
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="anthropic-emulator",
            daemon=True,
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


def _mix(text: str) -> list[tuple[float, float]]:
    """`0.9:30,0.1:7200` as [(0.9, 30.0), (0.1, 7200.0)]."""
    try:
        mix = [(float(w), float(sec)) for w, sec in (part.split(":") for part in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected weight:seconds,... not {text!r}") from None
    if any(w < 0 or sec < 0 for w, sec in mix) or sum(w for w, _ in mix) <= 0:
        raise argparse.ArgumentTypeError(f"negative values, or no weight at all: {text!r}")
    return mix


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m relay_local.emulator", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=5.0, help="seconds a batch stays in_progress")
    parser.add_argument(
        "--latency-mix",
        type=_mix,
        default=None,
        metavar="W:S,...",
        help="weighted batch durations instead of --latency, e.g. 0.9:30,0.1:7200 (one batch in ten late)",
    )
    parser.add_argument(
        "--realtime-seconds", type=float, default=0.0, help="seconds a realtime message takes to answer"
    )
    parser.add_argument(
        "--realtime-rate-limit-per-minute", type=int, default=None, help="realtime messages (429 past it)"
    )
    parser.add_argument("--errored-share", type=float, default=0.0, help="share of requests errored")
    parser.add_argument("--expired-share", type=float, default=0.0, help="share of requests expired")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cancel-seconds", type=float, default=0.5, help="seconds a batch stays canceling")
    parser.add_argument("--max-requests", type=int, default=100_000, help="requests per batch (413 past it)")
    parser.add_argument("--max-bytes", type=int, default=256 * 1024 * 1024, help="body size (413 past it)")
    parser.add_argument(
        "--max-queued-requests", type=int, default=None, help="requests in processing across batches (429)"
    )
    parser.add_argument(
        "--rate-limit-per-minute", type=int, default=None, help="calls to the batch endpoints (429 past it)"
    )
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any)")
    args = parser.parse_args(argv)
    emu = Emulator(
        latency_seconds=args.latency,
        errored_share=args.errored_share,
        expired_share=args.expired_share,
        seed=args.seed,
        max_requests=args.max_requests,
        max_bytes=args.max_bytes,
        api_key=args.api_key,
        cancel_seconds=args.cancel_seconds,
        max_queued_requests=args.max_queued_requests,
        rate_limit_per_minute=args.rate_limit_per_minute,
        latency_mix=args.latency_mix,
        realtime_seconds=args.realtime_seconds,
        realtime_rate_limit_per_minute=args.realtime_rate_limit_per_minute,
    )
    server = EmulatorServer(emu, args.host, args.port).start()
    print(f"Anthropic API emulator on {server.url} (set ANTHROPIC_BASE_URL to it); Ctrl-C stops it")
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
