"""A corpus of malformed request messages, each with what the buffer must do with it.

`expect` is "rejected" (a `rejected` completion under `rid`, the caller's id or, where the message
has none, its SQS message id) or "logged" (no usable id: a logged rejection and a metric).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

SQS_ID = "<sqs message id>"


def ok(rid: str, **params: Any) -> dict[str, Any]:
    return {
        "request_id": rid,
        "tier": "urgent",
        "params": {
            "model": "claude-haiku-4-5",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi"}],
        }
        | params,
    }


def without(rid: str, field: str) -> dict[str, Any]:
    body = ok(rid)
    del body["params"][field]
    return body


class Case(NamedTuple):
    name: str
    body: Any  # a dict is sent as JSON, a str as it is
    expect: str
    rid: str | None
    reason: str  # a word the rejection's reason must contain


CASES = [
    Case("broken json", '{"request_id": "x", ', "logged", None, "not JSON"),
    Case("empty body", "", "logged", None, "not JSON"),
    Case("json null", "null", "logged", None, "object"),
    Case("json number", "42", "logged", None, "object"),
    Case("json string", '"hello"', "logged", None, "object"),
    Case("json array", "[1, 2, 3]", "logged", None, "object"),
    Case("nested json string", json.dumps(json.dumps(ok("nested-1"))), "logged", None, "object"),
    Case("python repr", "{'request_id': 'x'}", "logged", None, "not JSON"),
    Case("empty object", {}, "rejected", SQS_ID, "params"),
    Case("missing params", {"request_id": "m-params"}, "rejected", "m-params", "params"),
    Case("params null", {"request_id": "p-null", "params": None}, "rejected", "p-null", "params"),
    Case("params string", {"request_id": "p-str", "params": "summarise this"}, "rejected", "p-str", "params"),
    Case("params list", {"request_id": "p-list", "params": [1]}, "rejected", "p-list", "params"),
    Case("model missing", without("model-missing", "model"), "rejected", "model-missing", "model"),
    Case("model number", ok("model-num", model=4), "rejected", "model-num", "model"),
    Case("model empty", ok("model-empty", model=""), "rejected", "model-empty", "model"),
    Case("model with spaces", ok("model-space", model="claude sonnet"), "rejected", "model-space", "model"),
    Case("model unknown shape", ok("model-upper", model="GPT-4o!"), "rejected", "model-upper", "model"),
    Case("max_tokens missing", without("mt-missing", "max_tokens"), "rejected", "mt-missing", "max_tokens"),
    Case("max_tokens zero", ok("mt-zero", max_tokens=0), "rejected", "mt-zero", "max_tokens"),
    Case("max_tokens negative", ok("mt-neg", max_tokens=-5), "rejected", "mt-neg", "max_tokens"),
    Case("max_tokens string", ok("mt-str", max_tokens="100"), "rejected", "mt-str", "max_tokens"),
    Case("max_tokens float", ok("mt-float", max_tokens=1.5), "rejected", "mt-float", "max_tokens"),
    Case("max_tokens huge", ok("mt-huge", max_tokens=10**9), "rejected", "mt-huge", "max_tokens"),
    Case("max_tokens bool", ok("mt-bool", max_tokens=True), "rejected", "mt-bool", "max_tokens"),
    Case("messages missing", without("msgs-missing", "messages"), "rejected", "msgs-missing", "messages"),
    Case("messages empty", ok("msgs-empty", messages=[]), "rejected", "msgs-empty", "messages"),
    Case("messages string", ok("msgs-str", messages="hello"), "rejected", "msgs-str", "messages"),
    Case("message not object", ok("msgs-num", messages=[42]), "rejected", "msgs-num", "messages"),
    Case(
        "role system",
        ok("role-sys", messages=[{"role": "system", "content": "x"}]),
        "rejected",
        "role-sys",
        "role",
    ),
    Case(
        "content empty",
        ok("content-empty", messages=[{"role": "user", "content": ""}]),
        "rejected",
        "content-empty",
        "content",
    ),
    Case(
        "content null",
        ok("content-null", messages=[{"role": "user", "content": None}]),
        "rejected",
        "content-null",
        "content",
    ),
    Case("stream true", ok("stream-1", stream=True), "rejected", "stream-1", "stream"),
    Case("stream string", ok("stream-2", stream="yes"), "rejected", "stream-2", "stream"),
    Case("system number", ok("system-num", system=12), "rejected", "system-num", "system"),
    Case("request_id empty", ok(""), "logged", None, "request_id"),
    Case("request_id too long", ok("x" * 65), "logged", None, "request_id"),
    Case("request_id slash", ok("a/b"), "logged", None, "request_id"),
    Case("request_id number", ok("n") | {"request_id": 123}, "logged", None, "request_id"),
    Case("request_id accented", ok("réq-1"), "logged", None, "request_id"),
    Case("request_id fullwidth", ok("\uff46\uff55\uff4c\uff4c"), "logged", None, "request_id"),
    Case("request_id nul", ok("nul\u0000id"), "logged", None, "request_id"),
    Case("request_id emoji", ok("id-🙂"), "logged", None, "request_id"),
    Case("unknown tier", ok("tier-gold") | {"tier": "gold"}, "rejected", "tier-gold", "tier"),
    Case("empty tier", ok("tier-empty") | {"tier": ""}, "rejected", "tier-empty", "tier"),
    Case("tier number", ok("tier-num") | {"tier": 5}, "rejected", "tier-num", "tier"),
    Case("metadata list", ok("md-list") | {"metadata": ["a"]}, "rejected", "md-list", "metadata"),
    Case("metadata int value", ok("md-int") | {"metadata": {"n": 1}}, "rejected", "md-int", "metadata"),
    Case(
        "metadata reserved",
        ok("md-status") | {"metadata": {"status": "x"}},
        "rejected",
        "md-status",
        "reserved",
    ),
    Case(
        "metadata aws prefix",
        ok("md-aws") | {"metadata": {"AWS.trace": "x"}},
        "rejected",
        "md-aws",
        "reserved",
    ),
    Case(
        "metadata space key",
        ok("md-space") | {"metadata": {"my key": "x"}},
        "rejected",
        "md-space",
        "metadata",
    ),
    Case(
        "metadata too many",
        ok("md-many") | {"metadata": {f"k{i}": "v" for i in range(8)}},
        "rejected",
        "md-many",
        "7",
    ),
    Case(
        "metadata long value",
        ok("md-long") | {"metadata": {"k": "v" * 300}},
        "rejected",
        "md-long",
        "metadata",
    ),
    Case("metadata unicode key", ok("md-uni") | {"metadata": {"clé": "v"}}, "rejected", "md-uni", "metadata"),
    Case("extra field", ok("extra-1") | {"prompt": "hi"}, "rejected", "extra-1", "prompt"),
    Case(
        "pointer without key",
        ["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b"}],
        "rejected",
        SQS_ID,
        "s3Key",
    ),
]
