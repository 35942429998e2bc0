"""A corpus of malformed request messages, each with what the buffer must do with it.

`expect` is "rejected" (a `rejected` completion under `rid`, the caller's id or, where the message
has none, its SQS message id), "logged" (no usable id: a logged rejection and a metric) or
"stored" (odd but valid: stored once, like any request).

`via` says how the body travels: "sqs" inline (a body over SQS's 256 KB limit goes to S3 instead),
"s3" as an object in the inbox bucket behind the SQS Extended Client's pointer, "legacy" behind
its legacy pointer. INBOX in a pointer stands for the inbox bucket's name.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

SQS_ID = "<sqs message id>"
INBOX = "<inbox bucket>"
POINTER = "software.amazon.payloadoffloading.PayloadS3Pointer"
LEGACY = "com.amazon.sqs.javamessaging.MessageS3Pointer"
# Inline bodies past this travel through S3, as a producer's SQS Extended Client would send them.
SQS_LIMIT = 256 * 1024 - 1024
LONG = 300_000


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


def meta(rid: str, metadata: Any) -> dict[str, Any]:
    return ok(rid) | {"metadata": metadata}


def raw(rid: str, params_tail: str) -> str:
    """A body as JSON text, its params ending in `params_tail` (for what json.dumps cannot write)."""
    return (
        f'{{"request_id": "{rid}", "tier": "urgent", "params": {{"model": "claude-haiku-4-5", '
        f'"max_tokens": 50, "messages": [{{"role": "user", "content": "hi"}}], {params_tail}}}}}'
    )


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def nested_text(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def pointer(bucket: Any, key: Any, cls: str = POINTER) -> list[Any]:
    return [cls, {"s3BucketName": bucket, "s3Key": key}]


class Case(NamedTuple):
    name: str
    body: Any  # a dict or list is sent as JSON, a str as it is, bytes only through S3
    expect: str
    rid: str | None
    reason: str  # a word the rejection's reason must contain
    via: str = "sqs"


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
        ok("md-many") | {"metadata": {f"k{i}": "v" for i in range(7)}},
        "rejected",
        "md-many",
        "at most 6",
    ),
    Case(
        "metadata producer",
        ok("md-producer") | {"metadata": {"producer": "someone-else"}},
        "rejected",
        "md-producer",
        "reserved",
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
    # A trailing newline: Python's `$` matches before it; ids and names are matched whole.
    Case("request_id trailing newline", ok("x\n"), "logged", None, "request_id"),
    Case("request_id leading newline", ok("\nx"), "logged", None, "request_id"),
    Case(
        "metadata key status newline", meta("md-nl-1", {"status\n": "x"}), "rejected", "md-nl-1", "metadata"
    ),
    Case(
        "metadata key trailing newline", meta("md-nl-2", {"team\n": "x"}), "rejected", "md-nl-2", "metadata"
    ),
    Case("tier trailing newline", ok("tier-nl") | {"tier": "urgent\n"}, "rejected", "tier-nl", "tier"),
    Case(
        "model trailing newline", ok("model-nl", model="claude-haiku-4-5\n"), "rejected", "model-nl", "model"
    ),
    # SNS's own rules for attribute names and values.
    Case("metadata key 257 chars", meta("md-257", {"k" * 257: "v"}), "rejected", "md-257", "metadata"),
    Case("metadata key leading dot", meta("md-dot-1", {".team": "v"}), "rejected", "md-dot-1", "metadata"),
    Case("metadata key trailing dot", meta("md-dot-2", {"team.": "v"}), "rejected", "md-dot-2", "metadata"),
    Case("metadata key double dot", meta("md-dot-3", {"a..b": "v"}), "rejected", "md-dot-3", "metadata"),
    Case("metadata key amazon prefix", meta("md-amz", {"Amazon.x": "v"}), "rejected", "md-amz", "reserved"),
    Case(
        "metadata key AMAZON prefix", meta("md-amz-2", {"AMAZON.x": "v"}), "rejected", "md-amz-2", "reserved"
    ),
    Case("metadata key aws mixed case", meta("md-aws-2", {"aWs.x": "v"}), "rejected", "md-aws-2", "reserved"),
    Case("metadata key Status", meta("md-status-2", {"Status": "v"}), "rejected", "md-status-2", "reserved"),
    Case("metadata key tier", meta("md-tier", {"tier": "v"}), "rejected", "md-tier", "reserved"),
    Case("metadata key model", meta("md-model", {"model": "v"}), "rejected", "md-model", "reserved"),
    Case("metadata key empty", meta("md-empty", {"": "v"}), "rejected", "md-empty", "metadata"),
    Case("metadata key slash", meta("md-slash", {"a/b": "v"}), "rejected", "md-slash", "metadata"),
    Case("metadata key colon", meta("md-colon", {"a:b": "v"}), "rejected", "md-colon", "metadata"),
    Case("metadata key tab", meta("md-tab", {"a\tb": "v"}), "rejected", "md-tab", "metadata"),
    Case("metadata value nul", meta("md-nul", {"k": "a\u0000b"}), "rejected", "md-nul", "metadata"),
    Case("metadata value escape", meta("md-esc", {"k": "\u001b[31m"}), "rejected", "md-esc", "metadata"),
    Case("metadata value fffe", meta("md-fffe", {"k": "\ufffe"}), "rejected", "md-fffe", "metadata"),
    Case("metadata value null", meta("md-none", {"k": None}), "rejected", "md-none", "metadata"),
    Case("metadata value object", meta("md-obj", {"k": {"a": "b"}}), "rejected", "md-obj", "metadata"),
    Case("metadata value bool", meta("md-bool", {"k": True}), "rejected", "md-bool", "metadata"),
    Case("metadata null", meta("md-null", None), "rejected", "md-null", "metadata"),
    Case("metadata string", meta("md-str", "team=a"), "rejected", "md-str", "metadata"),
    # Numbers that only parse as a ValueError, or that no JSON peer could read.
    Case("5000-digit integer", raw("int-5000", '"temperature": 1' + "0" * 5000), "logged", None, "JSON"),
    Case("5000-digit max_tokens", raw("int-5000b", '"top_k": -' + "9" * 5000), "logged", None, "JSON"),
    Case("4000-digit integer", raw("int-4000", '"top_k": ' + "7" * 4000), "rejected", "int-4000", "number"),
    Case("integer over 2^53", ok("int-2p60", top_k=2**60), "rejected", "int-2p60", "number"),
    Case("integer under -2^53", ok("int-neg", top_k=-(2**60)), "rejected", "int-neg", "number"),
    Case("NaN temperature", raw("nan-1", '"temperature": NaN'), "rejected", "nan-1", "number"),
    Case("Infinity top_p", raw("inf-1", '"top_p": Infinity'), "rejected", "inf-1", "number"),
    Case("-Infinity top_k", raw("inf-2", '"top_k": -Infinity'), "rejected", "inf-2", "number"),
    Case("float overflow", raw("inf-3", '"temperature": 1e999'), "rejected", "inf-3", "number"),
    Case(
        "NaN in a tool",
        raw("nan-2", '"tools": [{"name": "t", "input_schema": {"max": NaN}}]'),
        "rejected",
        "nan-2",
        "number",
    ),
    Case(
        "NaN max_tokens",
        raw("nan-3", '"top_p": 1').replace('"max_tokens": 50', '"max_tokens": NaN'),
        "rejected",
        "nan-3",
        "number",
    ),
    Case(
        "NaN in metadata",
        raw("nan-4", '"x": 1').replace('"tier": "urgent"', '"metadata": {"k": NaN}, "tier": "urgent"'),
        "rejected",
        "nan-4",
        "number",
    ),
    Case("NaN request_id", '{"request_id": NaN, "params": {}}', "logged", None, "number"),
    Case("NaN body", "NaN", "logged", None, "number"),
    Case("Infinity via s3", raw("inf-s3", '"top_p": Infinity'), "rejected", "inf-s3", "number", "s3"),
    # Nesting too deep for the validator, inline and in the S3 object.
    Case("nesting 300 lists", ok("deep-300", tools=nested(300)), "rejected", "deep-300", "deep"),
    Case(
        "nesting 300 objects",
        raw("deep-300o", '"x": ' + '{"a": ' * 300 + "1" + "}" * 300),
        "rejected",
        "deep-300o",
        "deep",
    ),
    Case("nesting 101 lists", ok("deep-101", tools=nested(101)), "rejected", "deep-101", "deep"),
    Case(
        "nesting in messages",
        ok("deep-msg", messages=[{"role": "user", "content": nested(300, {"type": "text"})}]),
        "rejected",
        "deep-msg",
        "deep",
    ),
    Case("nesting in metadata", meta("deep-md", {"k": nested(300)}), "rejected", "deep-md", "deep"),
    Case("nesting 5000 text", raw("deep-5000", '"x": ' + nested_text(5000)), "logged", None, "JSON"),
    Case("nesting 100000 text", nested_text(100_000), "logged", None, "JSON"),
    Case("nesting 300 via s3", ok("deep-s3", tools=nested(300)), "rejected", "deep-s3", "deep", "s3"),
    Case(
        "nesting 5000 via s3", raw("deep-s3b", '"x": ' + nested_text(5000)), "rejected", SQS_ID, "JSON", "s3"
    ),
    Case(
        "nesting 300 via legacy", ok("deep-leg", tools=nested(300)), "rejected", "deep-leg", "deep", "legacy"
    ),
    # Lone surrogates: valid JSON escapes, no UTF-8 encoding.
    Case("lone high surrogate", ok("sur-1", system="a\ud800b"), "rejected", "sur-1", "surrogate"),
    Case(
        "lone low surrogate",
        ok("sur-2", messages=[{"role": "user", "content": "\udc00"}]),
        "rejected",
        "sur-2",
        "surrogate",
    ),
    Case("surrogate in a key", ok("sur-3", tools=[{"\ud800": 1}]), "rejected", "sur-3", "surrogate"),
    Case("surrogate in metadata", meta("sur-4", {"k": "\ud800"}), "rejected", "sur-4", "surrogate"),
    Case("surrogate in tier", ok("sur-5") | {"tier": "\ud800"}, "rejected", "sur-5", "surrogate"),
    Case("surrogate request_id", ok("\ud800"), "logged", None, "surrogate"),
    Case("reversed surrogate pair", ok("sur-6", system="\ude00\ud83d"), "rejected", "sur-6", "surrogate"),
    Case("surrogate via s3", ok("sur-s3", system="\udbff"), "rejected", "sur-s3", "surrogate", "s3"),
    Case(
        "encoded surrogate bytes via s3",
        b'{"request_id": "sur-b", "params": "\xed\xa0\x80"}',
        "rejected",
        SQS_ID,
        "JSON",
        "s3",
    ),
    Case(
        "latin-1 bytes via s3", b'{"request_id": "lat-1", "x": "caf\xe9"}', "rejected", SQS_ID, "JSON", "s3"
    ),
    # Pointers that cannot be followed, or that name a bucket other than the inbox.
    Case("pointer empty key", pointer(INBOX, ""), "rejected", SQS_ID, "s3Key"),
    Case("pointer bucket ../etc", pointer("../etc", "passwd"), "rejected", SQS_ID, "bucket"),
    Case("pointer bucket empty", pointer("", "k"), "rejected", SQS_ID, "bucket"),
    Case("pointer other bucket", pointer("someone-elses-bucket", "k.json"), "rejected", SQS_ID, "bucket"),
    Case("pointer bucket with slash", pointer("a/b", "k"), "rejected", SQS_ID, "bucket"),
    Case("pointer key number", pointer(INBOX, 7), "rejected", SQS_ID, "s3Key"),
    Case("pointer bucket null", pointer(None, "k"), "rejected", SQS_ID, "s3BucketName"),
    Case("pointer key too long", pointer(INBOX, "k" * 2000), "rejected", SQS_ID, "s3Key"),
    Case("pointer details a list", [POINTER, ["b", "k"]], "rejected", SQS_ID, "pointer"),
    Case(
        "pointer three items",
        [POINTER, {"s3BucketName": INBOX, "s3Key": "k"}, 1],
        "rejected",
        SQS_ID,
        "pointer",
    ),
    Case("pointer missing object", pointer(INBOX, "nothing/here.json"), "rejected", SQS_ID, "missing"),
    Case("legacy pointer empty key", pointer(INBOX, "", LEGACY), "rejected", SQS_ID, "s3Key"),
    Case("legacy pointer other bucket", pointer("elsewhere", "k", LEGACY), "rejected", SQS_ID, "bucket"),
    Case("legacy pointer missing object", pointer(INBOX, "gone.json", LEGACY), "rejected", SQS_ID, "missing"),
    Case("pointer to non-JSON object", b"\x00\x01 not json", "rejected", SQS_ID, "JSON", "s3"),
    Case("pointer to empty object", b"", "rejected", SQS_ID, "JSON", "s3"),
    Case("pointer to a pointer", pointer(INBOX, "k"), "rejected", SQS_ID, "object", "s3"),
    # Caller input echoed without bound: a reason quotes at most a short excerpt.
    Case("metadata key 300k chars", meta("long-key", {"k" * LONG: "v"}), "rejected", "long-key", "metadata"),
    Case(
        "metadata value 300k chars", meta("long-val", {"k": "v" * LONG}), "rejected", "long-val", "metadata"
    ),
    Case("tier 300k chars", ok("long-tier") | {"tier": "t" * LONG}, "rejected", "long-tier", "tier"),
    Case("extra field 300k chars", ok("long-extra") | {"x" * LONG: 1}, "rejected", "long-extra", "extra"),
    Case("model 300k chars", ok("long-model", model="m" * LONG), "rejected", "long-model", "model"),
    Case("request_id 300k chars", ok("r" * LONG), "logged", None, "request_id"),
    Case(
        "many bad metadata keys",
        meta("many-bad", {f"bad key {i}" + "x" * 200: "v" for i in range(7)}),
        "rejected",
        "many-bad",
        "metadata",
    ),
    Case(
        "role 300k chars",
        ok("long-role", messages=[{"role": "r" * LONG, "content": "x"}]),
        "rejected",
        "long-role",
        "role",
    ),
    Case("unknown tier 30 chars", ok("tier-30") | {"tier": "t" * 30}, "rejected", "tier-30", "tier"),
    # Control characters: raw ones are not JSON; escaped ones only matter where SNS carries them.
    Case("raw newline in a string", '{"request_id": "ctl-1", "params": "a\nb"}', "logged", None, "JSON"),
    Case("raw tab in a string", '{"request_id": "ctl-2", "params": "a\tb"}', "logged", None, "JSON"),
    Case("escaped nul in request_id", ok("ctl\u0000"), "logged", None, "request_id"),
    Case("escaped bell in tier", ok("ctl-3") | {"tier": "\u0007"}, "rejected", "ctl-3", "tier"),
    # Byte-order marks: one at the start is tolerated; anywhere else the body is not JSON.
    Case("two byte-order marks", "\ufeff\ufeff" + json.dumps(ok("bom-2")), "logged", None, "JSON"),
    Case("byte-order mark at the end", json.dumps(ok("bom-3")) + "\ufeff", "logged", None, "JSON"),
    # Odd but valid: each is stored once.
    Case("byte-order mark inline", "\ufeff" + json.dumps(ok("bom-1")), "stored", "bom-1", ""),
    Case(
        "byte-order mark via s3",
        b"\xef\xbb\xbf" + json.dumps(ok("bom-s3")).encode(),
        "stored",
        "bom-s3",
        "",
        "s3",
    ),
    Case("legacy pointer", ok("legacy-1"), "stored", "legacy-1", "", "legacy"),
    Case("current pointer", ok("current-1"), "stored", "current-1", "", "s3"),
    Case("surrogate pair emoji", ok("emoji-1", system="\ud83d\ude00"), "stored", "emoji-1", ""),
    Case("nesting 50 lists", ok("deep-50", tools=nested(50)), "stored", "deep-50", ""),
    Case("integer 2^53 - 1", ok("int-max", top_k=2**53 - 1), "stored", "int-max", ""),
    Case("metadata key 256 chars", meta("md-256", {"k" * 256: "v"}), "stored", "md-256", ""),
    Case("metadata key dotted", meta("md-dots", {"a.b-c_d": "v"}), "stored", "md-dots", ""),
    Case("metadata value unicode", meta("md-uv", {"k": "café ☕ \U0001f600"}), "stored", "md-uv", ""),
    Case(
        "escaped nul in content",
        ok("nul-c", messages=[{"role": "user", "content": "a\u0000b"}]),
        "stored",
        "nul-c",
        "",
    ),
    Case("body over 256 KB via s3", ok("big-1", system="s" * LONG), "stored", "big-1", ""),
]
