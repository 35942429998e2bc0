"""A request's headers are part of its batch: the API version it needs and the betas it names.

The SDK sends `anthropic-version: 2026-10-21`, which refuses sampling parameters, a document block in
an assistant message and a user text block with citations; 2023-06-01 still accepts them. The relay
sends such requests under 2023-06-01 in batches of their own (or rejects them, when the deployment
says so), never letting one request's needs fail its neighbours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import by_id, request

pytestmark = pytest.mark.integration

OUTPUT_300K = "output-300k-2026-03-24"


def _older(rid: str, **params: object) -> dict:
    body = request(rid)
    body["params"].update(params)
    return body


def _assistant_document(rid: str) -> dict:
    body = request(rid)
    body["params"]["messages"] = [
        {"role": "user", "content": "Keep this text for later."},
        {
            "role": "assistant",
            "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "kept"}}
            ],
        },
        {"role": "user", "content": "Summarise what you kept."},
    ]
    return body


def test_requests_only_the_older_version_accepts_are_batched_apart_and_succeed(stack, emulator):
    # Given: plain requests and requests that API version 2026-10-21 refuses, in one tier
    inbox = stack.subscribe()
    plain = [request(f"plain-{i}") for i in range(3)]
    older = [
        _older("temp-0", temperature=0),
        _older("topk-1", top_k=5, top_p=0.9),
        _assistant_document("doc-2"),
    ]
    stack.send(plain + older)

    # When: the pipeline runs
    stack.pump()

    # Then: every request succeeded once, and the older-version ones share no batch with the rest
    per_id = by_id(stack.drain(inbox))
    assert {rid: [c["status"] for c in v] for rid, v in per_id.items()} == {
        rid: ["succeeded"] for rid in ("plain-0", "plain-1", "plain-2", "temp-0", "topk-1", "doc-2")
    }
    plain_batches = {per_id[f"plain-{i}"][0]["batch_id"] for i in range(3)}
    older_batches = {per_id[rid][0]["batch_id"] for rid in ("temp-0", "topk-1", "doc-2")}
    assert not plain_batches & older_batches
    assert emulator.batch_version(next(iter(older_batches))) == ("2023-06-01", ())
    assert emulator.batch_version(next(iter(plain_batches))) == ("2026-10-21", ())


def test_a_deployment_can_reject_what_only_the_older_version_accepts(make_stack, emulator):
    # Given: a deployment that sends nothing under 2023-06-01
    stack = make_stack(LegacyRequests="reject")
    inbox = stack.subscribe()

    # When: a request with temperature and a plain one arrive
    stack.send([_older("temp-0", temperature=0.2), request("plain-0")])
    stack.pump()

    # Then: the first is rejected on receipt, naming the field and the versions; the second succeeds
    per_id = by_id(stack.drain(inbox))
    [rejected] = per_id["temp-0"]
    assert rejected["status"] == "rejected"
    message = rejected["error"]["message"]
    assert "params.temperature" in message and "2026-10-21" in message and "2023-06-01" in message
    assert [c["status"] for c in per_id["plain-0"]] == ["succeeded"]
    assert emulator.batch_ids() and all(
        emulator.batch_version(b) == ("2026-10-21", ()) for b in emulator.batch_ids()
    )


def test_a_beta_travels_with_its_batch_and_lifts_max_tokens(stack, emulator):
    # Given: a request naming the output-300k beta with a max_tokens only that beta allows, and a plain one
    inbox = stack.subscribe()
    big = request("long-0", betas=[OUTPUT_300K])
    big["params"]["max_tokens"] = 200_000
    stack.send([big, request("plain-0")])

    # When: the pipeline runs
    stack.pump()

    # Then: both succeed, in batches of their own, the beta's sent with its header
    per_id = by_id(stack.drain(inbox))
    assert [c["status"] for c in per_id["long-0"]] == ["succeeded"]
    assert [c["status"] for c in per_id["plain-0"]] == ["succeeded"]
    assert per_id["long-0"][0]["batch_id"] != per_id["plain-0"][0]["batch_id"]
    assert emulator.batch_version(per_id["long-0"][0]["batch_id"]) == ("2026-10-21", (OUTPUT_300K,))


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"params": {"max_tokens": 200_000}}, ["params.max_tokens", OUTPUT_300K]),
        ({"betas": ["interleaved-thinking-2099-01-01"]}, ["betas"]),
        ({"betas": [OUTPUT_300K, OUTPUT_300K]}, ["betas", "once"]),
        ({"params": {"max_tokens": 200_000}, "betas": [OUTPUT_300K], "deadline": "in 2h"}, ["batches only"]),
    ],
    ids=["over-128k-without-beta", "unknown-beta", "repeated-beta", "300k-with-deadline"],
)
def test_betas_and_their_limits_are_checked_on_receipt(stack, body, words):
    # Given: a request whose betas or max_tokens no batch could carry
    inbox = stack.subscribe()
    message = request("bad-0")
    message["params"].update(body.get("params", {}))
    for key in ("betas", "deadline"):
        if key in body:
            message[key] = body[key]
    if message.get("deadline") == "in 2h":
        message["deadline"] = (datetime.now(UTC) + timedelta(hours=2)).isoformat()

    # When: it is received
    stack.send([message])
    stack.deliver()

    # Then: it is rejected at once, the reason naming what is wrong
    [done] = stack.drain(inbox)
    assert done["status"] == "rejected"
    for word in words:
        assert word in done["error"]["message"]


def test_a_realtime_answer_goes_under_the_version_its_request_needs(make_stack, emulator):
    # Given: a request with temperature whose deadline no batch can make (batches take two hours)
    stack = make_stack(DefaultTurnaroundSeconds="7200")
    inbox = stack.subscribe()
    soon = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    stack.send([_older("rt-temp-0", temperature=0) | {"deadline": soon}])

    # When: the pipeline runs
    stack.pump()

    # Then: it is answered in realtime, under 2023-06-01
    [done] = stack.drain(inbox)
    assert (done["status"], done["route"]) == ("succeeded", "realtime")
    assert [(s.version, n) for s, n in emulator.versions.items() if s.route == "message"] == [
        ("2023-06-01", 1)
    ]


def test_answers_holding_datetimes_are_stored_and_published(make_stack, emulator):
    # Given: answers that carry a container (as the code-execution tool gives), by batch and in realtime
    stack = make_stack(DefaultTurnaroundSeconds="7200")
    inbox = stack.subscribe()
    soon = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    by_batch = request("box-batch", text="Run it [[emulate:container]]")
    by_realtime = request("box-rt", text="Run it now [[emulate:container]]", deadline=soon)

    # When: both are answered
    stack.send([by_batch, by_realtime])
    stack.pump()

    # Then: each completion holds the container, its expiry as RFC 3339 text
    per_id = by_id(stack.drain(inbox))
    for rid, route in (("box-batch", "batch"), ("box-rt", "realtime")):
        [done] = per_id[rid]
        assert (done["status"], done["route"]) == ("succeeded", route)
        expires = done["message"]["container"]["expires_at"]
        assert isinstance(expires, str) and datetime.fromisoformat(expires.replace("Z", "+00:00"))
