"""Body checks, reasons and the params digest, without AWS."""

from __future__ import annotations

import json

import pytest
from batch_relay import bodies
from batch_relay.errors import MAX_REASON_BYTES, RejectedRequest, excerpt
from batch_relay.models import RequestMessage, attribute_name_problem

from tests.helpers import request


def refused(data: bytes | str) -> str:
    with pytest.raises(RejectedRequest) as err:
        bodies.check(bodies.parse(data))
    return err.value.reason


def test_a_byte_order_mark_is_tolerated_in_text_and_bytes():
    body = json.dumps(request("bom-1"))
    assert bodies.parse("\ufeff" + body) == json.loads(body)
    assert bodies.parse(bytearray(b"\xef\xbb\xbf" + body.encode())) == json.loads(body)
    assert "not JSON" in refused("\ufeff\ufeff" + body)


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ('{"a": NaN}', "not finite"),
        ('{"a": [Infinity]}', "not finite"),
        ('{"a": -1e999}', "not finite"),
        ('{"a": 9007199254740992}', "too large"),
        ('{"a": "\\ud800"}', "surrogate"),
        ('{"\\udfff": 1}', "surrogate"),
        ("[" * 101 + "]" * 101, "deep"),
        ("[" * 5000 + "]" * 5000, "deep"),
        ('{"a": 1' + "0" * 5000 + "}", "JSON"),
        ('{"a": "x\ny"}', "not JSON"),
    ],
)
def test_what_no_json_peer_reads_the_same_is_refused(text, word):
    assert word in refused(text)


def test_the_deepest_allowed_nesting_and_largest_integer_pass():
    bodies.check(bodies.parse("[" * 100 + str(2**53 - 1) + "]" * 100))
    bodies.check(bodies.parse('"\\ud83d\\ude00"'))  # a pair is one character


def test_a_too_deep_value_is_located_in_the_reason():
    reason = refused(json.dumps({"params": {"tools": [[[[1]]]] * 1 + [json.loads("[" * 120 + "]" * 120)]}}))
    assert reason.startswith("body at params.tools.1.0.0") and "100 levels" in reason


def test_bodies_of_too_many_values_are_refused_before_they_are_parsed():
    dense = ("[" + "{}," * 400_000 + "{}]").encode()
    assert "values" in refused(dense)
    # Commas inside strings do not count: a long prompt of prose passes.
    prose = json.dumps({"content": "one, two, three, " * 200_000}).encode()
    assert bodies.count_values(prose) < 10 and bodies.parse(prose)["content"].startswith("one,")
    escaped = json.dumps({"a": 'say "hi", \\ then, ' * 100_000}).encode()
    assert bodies.count_values(escaped) == 1


def test_reasons_quote_a_short_escaped_excerpt_and_stay_within_a_kilobyte():
    assert excerpt("abc") == "'abc'"
    assert excerpt("é\n" * 100, 4) == "'\\xe9\\n\\xe9\\n'... (200 chars)"
    assert len(RejectedRequest("x" * 5000).reason.encode()) == MAX_REASON_BYTES
    assert RejectedRequest("caf\u00e9 \ud800").reason == "caf\\xe9 \\ud800"


def test_metadata_names_follow_sns_rules():
    for bad in ("status\n", ".a", "a.", "a..b", "AWS.x", "amazon.y", "Tier", "a b", "k" * 257, ""):
        assert attribute_name_problem(bad), bad
    for good in ("a.b", "team", "k" * 256, "x-y_z.1"):
        assert attribute_name_problem(good) is None, good
    with pytest.raises(ValueError, match="character SNS refuses"):
        RequestMessage.model_validate(request("m-1", metadata={"k": "\x00"}))


def test_the_params_digest_ignores_key_order_and_unsent_fields():
    a = request("d-1")["params"]
    b = dict(reversed(list(a.items()))) | {"stream": False, "top_p": None}
    b["messages"] = [dict(reversed(list(m.items()))) for m in a["messages"]]
    assert bodies.digest(a) == bodies.digest(b)
    assert bodies.digest(a) != bodies.digest(a | {"max_tokens": 201})
    assert bodies.digest({"x": [1, "1"]}) != bodies.digest({"x": ["1", 1]})
    assert bodies.digest({"x": 1}) != bodies.digest({"x": 1.0}) != bodies.digest({"x": True})
    assert bodies.digest("not an object") is None


def test_pointers_of_both_formats_are_recognised_and_malformed_ones_refused():
    for cls in bodies.POINTER_CLASSES:
        assert bodies.is_pointer([cls, {}])
        assert bodies.pointer([cls, {"s3BucketName": "b", "s3Key": "k"}]) == ("b", "k")
        for bad in ([cls], [cls, {"s3BucketName": "b"}], [cls, {"s3BucketName": "b", "s3Key": ""}]):
            with pytest.raises(RejectedRequest):
                bodies.pointer(bad)
    assert not bodies.is_pointer(["something.else", {}])


@pytest.mark.parametrize(
    ("text", "values"),
    [
        (b'{"a": "x, [y] {z}", "b": [1, 2]}', 4),  # a prompt's own commas and brackets do not count
        (b'{"a": "\\\\", "b": 1}', 2),  # an escaped backslash ends before the quote
        (b'{"a": "\\"", "b": 1}', 2),  # an escaped quote does not end the string
        (b'{"a": "' + b'\\"' * 100_000 + b'", "b": [' + b"1," * 10 + b"1]}", 13),
    ],
)
def test_values_are_counted_outside_strings_only(text, values):
    assert bodies.count_values(text) == values


def test_counting_stops_past_the_limit():
    many = b"[" + b"1," * (bodies.MAX_VALUES + 10) + b"1]"
    assert bodies.count_values(many) == bodies.MAX_VALUES + 1
