"""The operator CLI against the local stack (moto) and the emulator."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter, defaultdict
from contextlib import contextmanager

import boto3
import pytest
from relay_ops import cli as ops

from tests.conftest import TEST_PARAMETERS
from tests.helpers import items, learn, request, rescued, wait_for

pytestmark = pytest.mark.integration


def flags(stack):
    return [
        "--queue-url", stack.queue_url(),
        "--dlq-url", stack.queue_url("RequestDeadLetterQueue"),
        "--table", stack.physical["RequestTable"],
    ]  # fmt: skip


def run(capsys, argv):
    capsys.readouterr()  # what the functions printed before
    code = ops.main(argv)
    out = capsys.readouterr()
    # Functions running in the background (pollers) print their own log and metric lines.
    mine = [
        line for line in out.out.splitlines(keepends=True) if not line.startswith(('{"_aws"', '{"level"'))
    ]
    return code, "".join(mine), out.err


def jsonl(tmp_path, lines):
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def test_send_validates_locally_and_reports_rejected_lines(stack, emulator, capsys, tmp_path):
    lines = [request(f"op-{i}") for i in range(12)]
    lines.insert(2, {"request_id": "no-params"})
    lines.insert(5, "{broken")
    code, out, err = run(capsys, [*flags(stack), "send", "--quiet", jsonl(tmp_path, lines)])
    assert code == 1
    assert json.loads(out) == {"sent": 12, "rejected": 2}
    assert "line 3: params: Field required" in err and "line 6:" in err
    assert stack.deliver()["delivered"] == 12


def test_status_batches_and_report_after_a_run(stack, emulator, capsys, tmp_path):
    inbox = stack.subscribe()
    models = ["claude-haiku-4-5", "claude-sonnet-4-5"]
    sent = [request(f"rep-{i}", model=models[i % 2], tier=("urgent", "standard")[i % 2]) for i in range(10)]
    run(capsys, [*flags(stack), "send", "--quiet", jsonl(tmp_path, sent)])
    stack.pump()
    completions = stack.drain(inbox)

    code, out, _ = run(capsys, [*flags(stack), "status", "rep-3"])
    shown = json.loads(out)
    assert code == 0 and shown["status"] == "succeeded" and shown["batch_id"] in emulator.batch_ids()

    code, out, _ = run(capsys, [*flags(stack), "batches", "--format", "json"])
    assert {b["batch_id"] for b in json.loads(out)["batches"]} == set(emulator.batch_ids())

    code, out, _ = run(capsys, [*flags(stack), "report", "--by", "tier,model", "--format", "json"])
    rows = json.loads(out)
    assert {(r["tier"], r["model"]) for r in rows} == {("urgent", models[0]), ("standard", models[1])}
    for key in ("batch_usd", "list_usd", "saved_usd"):
        assert sum(r[key] for r in rows) == pytest.approx(sum(c["cost"][key] for c in completions), abs=1e-5)
    assert sum(r["output_tokens"] for r in rows) == sum(c["usage"]["output_tokens"] for c in completions)

    code, out, _ = run(capsys, [*flags(stack), "report", "--by", "day", "--format", "csv"])
    assert out.splitlines()[0].startswith("day,requests,input_tokens")
    code, out, _ = run(capsys, [*flags(stack), "report"])
    assert "saved_usd" in out.splitlines()[0]
    # Piped, tables are plain columns: a header line, then one line per row, no box drawing
    code, out, _ = run(capsys, [*flags(stack), "batches"])
    lines = out.split("\n\n")[0].splitlines()  # the batches; then the turnaround table
    assert lines[0].split() == ["batch_id", "tier", "status", "requests", "succeeded", "errored", "retried",
                                "age_min", "batch_usd", "saved_usd"]  # fmt: skip
    assert {line.split()[0] for line in lines[1:]} == set(emulator.batch_ids())
    assert "\x1b[" not in out and "─" not in out


def test_cancel_reaches_the_api(stack, emulator, capsys, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "operator-key")
    emulator.latency_seconds = 30
    stack.send([request("c-1")])
    stack.deliver()
    stack.tick()
    [batch_id] = emulator.batch_ids()
    code, out, _ = run(capsys, ["cancel", batch_id])
    assert code == 0 and json.loads(out)["processing_status"] == "canceling"
    code, _, err = run(capsys, ["cancel", "msgbatch_nope"])
    assert code == 2 and err.count("\n") == 1 and "404" in err


def test_redrive_moves_dead_letters_back(stack, capsys):
    sqs = boto3.client("sqs")
    for i in range(13):
        sqs.send_message(
            QueueUrl=stack.queue_url("RequestDeadLetterQueue"), MessageBody=json.dumps(request(f"d{i}"))
        )
    code, out, _ = run(capsys, [*flags(stack), "redrive"])
    assert code == 0 and json.loads(out) == {"moved": 13}
    assert stack.deliver()["delivered"] == 13


def test_tail_json_prints_the_raw_messages(stack, emulator, capsys):
    inbox = stack.subscribe()
    stack.send([request("tail-1"), request("tail-2")])
    stack.pump()
    code, out, _ = run(capsys, ["tail", "--from", inbox, "--once", "--json"])
    assert code == 0
    assert sorted(json.loads(line)["request_id"] for line in out.splitlines()) == ["tail-1", "tail-2"]


def test_tail_prints_one_readable_line_per_completion(stack, emulator, capsys):
    # Given two subscribers: one to tail, one to read the same completions raw
    inbox, raw = stack.subscribe(), stack.subscribe()
    stack.send(
        [
            request("tail-ok", text="Summarise: the printer on floor 3 jams every morning, twice."),
            request("tail-bad", text="[[emulate:errored:invalid_request_error]] fix me"),
        ]
    )
    stack.pump()
    code, out, _ = run(capsys, ["tail", "--from", inbox, "--once"])
    completions = {c["request_id"]: c for c in stack.drain(raw)}
    lines = {line.split()[2]: line for line in out.splitlines()}
    # Then one line each: time, id, status, tier, route, cost, and the answer's first words
    assert code == 0 and set(lines) == {"tail-ok", "tail-bad"}
    ok, bad = completions["tail-ok"], completions["tail-bad"]
    day, time_of_day, rid, status, tier, route, cost, *gist = lines["tail-ok"].split()
    assert f"{day}T{time_of_day}" == ok["completed_at"][:19]
    assert (rid, status, tier, route) == ("tail-ok", "succeeded", "urgent", "batch")
    assert cost == f"${ok['cost']['batch_usd']:.6f}"
    words = ok["message"]["content"][0]["text"].split()
    assert gist[: min(12, len(words))] == words[:12]
    assert "invalid_request_error" in lines["tail-bad"] and bad["error"]["message"][:20] in lines["tail-bad"]
    assert " errored " in lines["tail-bad"]


def test_tail_line_shows_the_route_and_what_it_paid():
    base = {
        "request_id": "r-1",
        "status": "succeeded",
        "tier": "urgent",
        "completed_at": "2026-11-25T10:00:00Z",
    }
    message = {"content": [{"type": "text", "text": "one two three"}]}
    cost = {"batch_usd": 0.5, "list_usd": 1.0, "saved_usd": 0.5}
    batch = ops.line(base | {"message": message, "cost": cost}).plain.split()
    realtime = ops.line(base | {"message": message, "route": "realtime", "cost": cost}).plain.split()
    assert batch[5:7] == ["batch", "$0.500000"] and batch[7:] == ["one", "two", "three"]
    assert realtime[5:7] == ["realtime", "$1.000000"]


def test_stack_outputs_are_resolved_with_cloudformation(stack, capsys, tmp_path):
    policy = '{"urgent": {"max_wait_seconds": 300}}'
    template = {
        "Parameters": {"TierPolicy": {"Type": "String", "Default": policy}},
        "Resources": {"Q": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"RequestQueueUrl": {"Value": {"Ref": "Q"}}},
    }
    cfn = boto3.client("cloudformation")
    cfn.create_stack(StackName="relay-prod", TemplateBody=json.dumps(template))
    url = cfn.describe_stacks(StackName="relay-prod")["Stacks"][0]["Outputs"][0]["OutputValue"]
    # The savings page reads each tier's max wait from the stack's TierPolicy parameter
    resolved = ops.Stack.resolve(ops.parser().parse_args(["--stack", "relay-prod", "report"]))
    assert ops.max_waits(resolved.tier_policy) == {"urgent": 300.0}
    code, out, _ = run(
        capsys, ["--stack", "relay-prod", "send", "--quiet", jsonl(tmp_path, [request("s-1")])]
    )
    assert code == 0 and json.loads(out)["sent"] == 1
    assert (
        boto3.client("sqs").get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"]
        == "1"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", "x"], "give --stack or --table"),
        (["--table", "t", "report", "--by", "week"], "--by accepts"),
        (["--stack", "missing", "batches"], "stack 'missing'"),
        (["send", "/no/such/file.jsonl"], "cannot read"),
    ],
)
def test_user_mistakes_are_one_line_and_non_zero(stack, capsys, argv, message):
    code, _, err = run(capsys, argv)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_unknown_request_is_a_clear_error(stack, capsys):
    code, _, err = run(capsys, [*flags(stack), "status", "nobody"])
    assert code == 2 and "no request 'nobody'" in err


def figures(page):
    """Each chart's Plotly figure, as embedded in the page."""
    found = re.findall(
        r'<script type="application/json" class="figure" data-chart="([^"]+)">(.*?)</script>', page, re.S
    )
    return {name: json.loads(text) for name, text in found}


def trace(figure, name):
    [t] = [t for t in figure["data"] if t.get("name") == name]
    return t


UNITS = {"seconds": 1, "minutes": 60, "hours": 3600}


def test_report_html_is_one_page_whose_charts_add_up_to_the_totals(stack, emulator, capsys, tmp_path):
    # Given a run with two tiers, two models, expiries (retried) and final errors
    inbox = stack.subscribe()
    emulator.expired_share = 0.25
    models = ["claude-haiku-4-5", "claude-sonnet-4-5"]
    sent = [
        request(f"h-{i}", model=models[i % 2], tier=("urgent", "standard")[i % 3 == 0]) for i in range(18)
    ]
    sent += [request(f"h-bad-{i}", text="[[emulate:errored:invalid_request_error]] x") for i in range(2)]
    run(capsys, [*flags(stack), "send", "--quiet", jsonl(tmp_path, sent)])
    stack.pump()
    completions = stack.drain(inbox)
    assert len(completions) == 20

    # When the page is written
    page_path = tmp_path / "report.html"
    policy = TEST_PARAMETERS["TierPolicy"]
    code, out, _ = run(capsys, [*flags(stack), "report", "--html", str(page_path), "--tier-policy", policy])
    assert code == 0 and json.loads(out) == {"report": str(page_path.resolve())}
    page = page_path.read_text()

    # Then it is self-contained: plotly.js inline, no script or style fetched from anywhere
    assert "<script src" not in page and "<link" not in page and "Plotly.newPlot" in page
    assert len(page) > 1_000_000  # the library itself is in the page
    charts = figures(page)
    assert set(charts) == {
        "chart-spend-by-day", "chart-spend-by-tier", "chart-spend-by-model",
        "chart-queued", "chart-waits", "chart-turnaround", "chart-outcomes",
    }  # fmt: skip

    # And what each chart draws adds up to the totals, computed here from the completions
    cost = {
        k: sum((c.get("cost") or {}).get(k, 0.0) for c in completions)
        for k in ("batch_usd", "list_usd", "saved_usd")
    }
    assert cost["saved_usd"] > 0
    data = json.loads(
        re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)[1]
    )
    for key in cost:
        assert data["totals"][key] == pytest.approx(cost[key], abs=1e-5)
    assert data["totals"]["requests"] == len(completions)
    assert data["totals"]["batches"] == len(emulator.batch_ids())
    for chart, field in (
        ("chart-spend-by-day", "completed_at"),
        ("chart-spend-by-tier", "tier"),
        ("chart-spend-by-model", "model"),
    ):
        expected = defaultdict(lambda: defaultdict(float))
        for c in completions:
            group = c[field][:10] if field == "completed_at" else c[field]
            for k, v in (c.get("cost") or {}).items():
                expected[k][group] += v
        for name, key in (
            ("paid (batch price)", "batch_usd"),
            # Every request went by batch: no batch copies, so saved net is saved
            ("saved (net)", "saved_usd"),
            ("list price", "list_usd"),
        ):
            t = trace(charts[chart], name)
            drawn = dict(zip(t["x"], t["y"], strict=True))
            assert drawn == pytest.approx(dict(expected[key]), abs=1e-5), (chart, name)
            assert sum(t["y"]) == pytest.approx(cost[key], abs=1e-5)
        # Every request went by batch: nothing paid at list price, no deadline cost (and no chart of it)
        assert set(trace(charts[chart], "paid (list price, realtime)")["y"]) == {0}
    assert f"${cost['saved_usd']:,.4f}" in page
    assert (data["totals"]["realtime"], data["totals"]["both_ways"], data["totals"]["deadline_usd"]) == (
        0,
        0,
        0,
    )

    # Receipt to completion: every completion counted once, in its tier
    waits = charts["chart-waits"]
    divisor = UNITS[waits["layout"]["yaxis"]["title"]["text"].split(",")[0]]
    per_tier = defaultdict(list)
    for c in completions:
        per_tier[c["tier"]].append(_seconds(c["completed_at"]) - _seconds(c["received_at"]))
    slowest = trace(waits, "slowest")
    assert dict(zip(slowest["x"], trace(waits, "median")["customdata"], strict=True)) == {
        t: len(v) for t, v in per_tier.items()
    }
    for tier, top in zip(slowest["x"], slowest["y"], strict=True):
        assert top == pytest.approx(max(per_tier[tier]) / divisor, abs=0.01)
    # Time in the tier (receipt to submission), against the tier's flush wait
    queued = charts["chart-queued"]
    divisor = UNITS[queued["layout"]["yaxis"]["title"]["text"].split(",")[0]]
    slowest = trace(queued, "slowest")
    for tier, top in zip(slowest["x"], slowest["y"], strict=True):
        longest = max(
            _seconds(c["submitted_at"]) - _seconds(c["received_at"])
            for c in completions
            if c["tier"] == tier and c["attempts"] == 1  # a retry is submitted again: not a wait in its tier
        )
        assert top == pytest.approx(longest / divisor, abs=0.01)
    limits = trace(queued, "tier's flush wait")
    tiers = json.loads(policy)
    assert dict(zip(limits["x"], limits["y"], strict=True)) == pytest.approx(
        {t: tiers[t]["max_wait_seconds"] / divisor for t in per_tier}, abs=1e-5
    )

    # Turnaround: one point per batch the API ended, its time from created to ended
    turn = charts["chart-turnaround"]
    points = {cd[0]: y for t in turn["data"] for cd, y in zip(t["customdata"], t["y"], strict=True)}
    table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"]).scan()["Items"]
    ended = {i["batch_id"]: i for i in table if i.get("kind") == "batch" and i.get("ended_at")}
    assert set(points) == set(ended) == set(emulator.batch_ids())
    divisor = UNITS[turn["layout"]["yaxis"]["title"]["text"].split(",")[0]]
    for batch_id, y in points.items():
        b = ended[batch_id]
        assert y == pytest.approx((_seconds(b["ended_at"]) - _seconds(b["submitted_at"])) / divisor, abs=0.01)

    # Errored and retried: counts and shares per tier and overall
    outcomes = charts["chart-outcomes"]
    for status in ("errored", "expired", "canceled", "retried"):
        t = trace(outcomes, status)
        counted = Counter()
        for c in completions:
            hit = c["attempts"] > 1 if status == "retried" else c["status"] == status
            counted[c["tier"]] += hit
            counted["all"] += hit
        sizes = Counter(c["tier"] for c in completions) + Counter(all=len(completions))
        assert dict(zip(t["x"], t["customdata"], strict=True)) == {k: counted[k] for k in sizes}
        for tier, y in zip(t["x"], t["y"], strict=True):
            assert y == pytest.approx(100 * counted[tier] / sizes[tier], abs=0.01)
    assert Counter(c["status"] for c in completions)["errored"] >= 2
    assert sum(c["attempts"] > 1 for c in completions) > 0


def _seconds(stamp):
    from batch_relay.clock import parse

    return parse(stamp)


def test_report_html_with_a_bad_tier_policy_is_a_clear_error(stack, capsys, tmp_path):
    argv = [*flags(stack), "report", "--html", str(tmp_path / "r.html"), "--tier-policy", "[1, 2]"]
    code, _, err = run(capsys, argv)
    assert code == 2 and "--tier-policy" in err and err.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


# estimate


def counted(emulator, params):
    """The emulator's own count of a request's input tokens, asked with the SDK directly."""
    import anthropic

    client = anthropic.Anthropic(base_url=emulator.url, api_key="test-key", max_retries=0)
    fields = {k: params[k] for k in ("model", "messages", "system") if k in params}
    return client.messages.count_tokens(**fields).input_tokens


def bound_usd(model, input_tokens, max_tokens, batch):
    """The cost bound, from the price table directly: input tokens (each priced as a cache write,
    the dearest kind) and max_tokens of output."""
    from batch_relay.pricing import BATCH_DISCOUNT, CACHE_WRITE_FACTOR, DEAREST, price_of

    price = price_of(model) or DEAREST
    usd = (input_tokens * price.input_usd * CACHE_WRITE_FACTOR + max_tokens * price.output_usd) / 1e6
    return usd * BATCH_DISCOUNT if batch else usd


def estimate_lines():
    """Requests for two known models (one prompt twice), a long system prompt, and a model with no price."""
    return [
        request("e-1", text="Summarise: the printer on floor 3 jams every morning."),
        request("e-2", text="Translate into French: the meeting moved to Thursday at ten." * 8),
        request("e-3", text="Summarise: the printer on floor 3 jams every morning."),
        request("e-4", model="claude-sonnet-4-5", text="Classify this ticket: VPN drops hourly.")
        | {"deadline": "2026-12-01T10:00:00+01:00"},
        with_max_tokens(request("e-5", model="claude-sonnet-4-5", text="Write a haiku about queues."), 900)
        | {"metadata": {"team": "ops"}},
        request("e-6", model="claude-mystery-9", text="Who are you?"),
    ]


def with_max_tokens(line, max_tokens):
    return line | {"params": line["params"] | {"max_tokens": max_tokens}}


def expected_rows(emulator, lines, count=True):
    """Per model: requests, input tokens (the emulator's count, or the bytes estimate), max tokens
    and the cost bounds, computed here line by line."""
    from batch_relay.pricing import input_tokens_of

    rows = defaultdict(lambda: defaultdict(float))
    for line in lines:
        params = line["params"]
        tokens = counted(emulator, params) if count else input_tokens_of(len(json.dumps(line).encode()))
        row = rows[params["model"]]
        row["requests"] += 1
        row["input_tokens"] += tokens
        row["max_output_tokens"] += params["max_tokens"]
        row["batch_usd"] += bound_usd(params["model"], tokens, params["max_tokens"], batch=True)
        row["list_usd"] += bound_usd(params["model"], tokens, params["max_tokens"], batch=False)
    return rows


def assert_figures(shown, expected):
    by_model = {r["model"]: r for r in shown["models"]}
    assert set(by_model) == set(expected)
    for model, want in expected.items():
        got = by_model[model]
        assert (got["requests"], got["input_tokens"], got["max_output_tokens"]) == (
            want["requests"],
            want["input_tokens"],
            want["max_output_tokens"],
        ), model
        assert got["batch_usd"] == pytest.approx(want["batch_usd"], abs=1e-8), model
        assert got["list_usd"] == pytest.approx(want["list_usd"], abs=1e-8), model
        assert got["saved_usd"] == pytest.approx(want["list_usd"] - want["batch_usd"], abs=1e-8), model
    total = shown["total"]
    for key in ("requests", "input_tokens", "max_output_tokens", "batch_usd", "list_usd", "saved_usd"):
        assert total[key] == pytest.approx(sum(r[key] for r in shown["models"]), abs=1e-8), key


def test_estimate_prices_each_model_from_the_api_s_token_count(stack, emulator, capsys, tmp_path):
    from batch_relay.pricing import input_tokens_of

    lines = estimate_lines()
    path = jsonl(tmp_path, lines)
    code, out, err = run(capsys, ["estimate", path, "--format", "json"])
    asked = emulator.calls[("POST", "count_tokens")]
    assert code == 0
    shown = json.loads(out)
    expected = expected_rows(emulator, lines)
    assert_figures(shown, expected)
    assert shown["estimated_lines"] == [] and shown["rejected_lines"] == []
    # The counts are the API's, not the bytes estimate (which differs for these lines)
    by_model = {r["model"]: r for r in shown["models"]}
    guess = sum(input_tokens_of(len(json.dumps(x).encode())) for x in lines[:3])
    assert by_model["claude-haiku-4-5"]["input_tokens"] != guess
    # One count per distinct request: e-1 and e-3 differ only in their id
    assert asked == len(lines) - 1
    # A model with no price is said so, and priced as the dearest
    assert (
        by_model["claude-mystery-9"]["price"] == "dearest" and by_model["claude-haiku-4-5"]["price"] == "list"
    )
    assert "model 'claude-mystery-9' has no known price" in err
    assert "\nline " not in "\n" + err

    # The same figures as a table (plain when piped) and as CSV, with a total row
    code, out, _ = run(capsys, ["estimate", path])
    table = [line.split() for line in out.splitlines()]
    assert table[0] == ["model", "requests", "input_tokens", "max_output_tokens", "batch_usd", "list_usd",
                        "saved_usd", "estimated", "price"]  # fmt: skip
    assert [r[0] for r in table[1:]] == ["claude-haiku-4-5", "claude-mystery-9", "claude-sonnet-4-5", "total"]
    total = shown["total"]
    assert table[-1][1:5] == [
        str(total["requests"]),
        str(total["input_tokens"]),
        str(total["max_output_tokens"]),
        f"{total['batch_usd']:.6f}",
    ]
    assert "\x1b[" not in out and "─" not in out
    code, out, _ = run(capsys, ["estimate", path, "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["model"] for r in rows][-1] == "total"
    assert float(rows[-1]["list_usd"]) == pytest.approx(shown["total"]["list_usd"], abs=1e-8)


def test_estimate_falls_back_to_the_bytes_estimate_when_counting_fails(stack, emulator, capsys, tmp_path):
    from batch_relay.pricing import input_tokens_of

    lines = estimate_lines()[:5]
    path = jsonl(tmp_path, lines)
    # Given the API fails the first count
    emulator.inject("POST", "/v1/messages/count_tokens", 500, count=1, route="count_tokens")
    code, out, err = run(capsys, ["estimate", path, "--format", "json"])
    assert code == 0
    shown = json.loads(out)
    # Then that line alone is estimated from its bytes, and said so; the others are counted
    assert shown["estimated_lines"] == [1]
    said = "input tokens estimated from bytes (count_tokens failed: Anthropic answered 500: injected 500)"
    assert f"{said}: lines 1" in err
    expected = expected_rows(emulator, lines)
    line_1 = lines[0]["params"]
    fix = input_tokens_of(len(json.dumps(lines[0]).encode())) - counted(emulator, line_1)
    haiku = expected["claude-haiku-4-5"]
    haiku["input_tokens"] += fix
    haiku["batch_usd"] += bound_usd("claude-haiku-4-5", fix, 0, batch=True)
    haiku["list_usd"] += bound_usd("claude-haiku-4-5", fix, 0, batch=False)
    assert_figures(shown, expected)
    assert {r["model"]: r["estimated"] for r in shown["models"]}["claude-haiku-4-5"] == 1

    # Given an API that keeps failing: three tries in a row, then the rest are estimated unasked
    emulator.calls.clear()
    emulator.inject("POST", "/v1/messages/count_tokens", 503, count=100, route="count_tokens")
    code, out, err = run(capsys, ["estimate", path, "--format", "json"])
    shown = json.loads(out)
    assert code == 0 and shown["estimated_lines"] == [1, 2, 3, 4, 5]
    assert emulator.calls[("POST", "count_tokens")] == 3
    assert "3 times in a row: the rest not counted): lines 4-5" in err
    emulator.clear_faults()
    assert_figures(shown, expected_rows(emulator, lines, count=False))


@contextmanager
def without_env(*names):
    """The variables unset for a while (the stack restores its own environment when it stops)."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def test_estimate_without_a_key_or_base_url_asks_no_api(stack, emulator, capsys, tmp_path):
    lines = estimate_lines()
    with without_env("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "API_KEY_SECRET_ARN"):
        code, out, err = run(capsys, ["estimate", jsonl(tmp_path, lines), "--format", "json"])
    shown = json.loads(out)
    assert code == 0 and shown["estimated_lines"] == list(range(1, len(lines) + 1))
    assert emulator.calls[("POST", "count_tokens")] == 0
    assert "(no ANTHROPIC_API_KEY or ANTHROPIC_BASE_URL to count with): lines 1-6" in err
    assert_figures(shown, expected_rows(emulator, lines, count=False))


def test_estimate_reports_bad_lines_and_prices_the_rest(stack, emulator, capsys, tmp_path):
    good = estimate_lines()[:4]
    # A JSON string may hold U+2028: still one line (Python's splitlines would cut it in two)
    good[1]["params"]["messages"][0]["content"] += " \u2028 next"
    lines = [good[0], {"request_id": "no-params"}, good[1], "{broken", good[2]]
    lines += [request("bad-deadline", deadline="tomorrow"), "", good[3]]
    path = tmp_path / "requests.jsonl"
    text = "\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines)
    path.write_text(text, encoding="utf-8")
    code, out, err = run(capsys, ["estimate", str(path), "--format", "json"])
    assert code == 1
    shown = json.loads(out)
    assert shown["rejected_lines"] == [2, 4, 6]
    assert "line 2: params: Field required" in err and "line 4: " in err and "line 6: deadline" in err
    assert shown["total"]["requests"] == 4 and shown["estimated_lines"] == []
    assert_figures(shown, expected_rows(emulator, good))
    # `send` reads lines the same way: the U+2028 line goes as one message
    code, out, _ = run(capsys, [*flags(stack), "send", "--quiet", str(path)])
    assert code == 1 and json.loads(out) == {"sent": 4, "rejected": 3}


# batches: what the relay learned about turnaround


def test_batches_shows_the_turnaround_learned_per_model(stack, emulator, capsys):
    from batch_relay.deadlines import Turnaround
    from batch_relay.settings import settings
    from batch_relay.store import Store

    # Given four haiku batches (the emulator's take 0.2 s) and one sonnet batch
    learn(stack, emulator, batches=4)
    stack.send([request("s-1", model="claude-sonnet-4-5")])
    stack.pump()
    code, out, _ = run(capsys, [*flags(stack), "batches", "--format", "json"])
    assert code == 0
    shown = json.loads(out)
    assert {b["batch_id"] for b in shown["batches"]} == set(emulator.batch_ids())
    learned = {r["model"]: r for r in shown["turnaround"]}
    assert set(learned) == {"claude-haiku-4-5", "claude-sonnet-4-5"}

    # Then each model's samples are its batches' created-to-ended times, as the table holds them
    table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"]).scan()["Items"]
    samples = defaultdict(list)
    for i in table:
        if i.get("kind") == "turnaround":
            samples[i["model"]].append(float(i["seconds"]))
    haiku, sonnet = learned["claude-haiku-4-5"], learned["claude-sonnet-4-5"]
    ordered = sorted(samples["claude-haiku-4-5"])
    assert haiku["samples"] == len(ordered) == 4
    assert haiku["p50_seconds"] == pytest.approx(ordered[1], abs=1e-3)  # nearest rank: 2nd of 4
    assert haiku["p95_seconds"] == pytest.approx(ordered[3], abs=1e-3)  # 4th of 4
    # The value in use: the p95 once there are 3 samples, the default before
    config = settings()
    in_use = Turnaround(Store(config.table_name), config)
    assert haiku["expected_seconds"] == pytest.approx(in_use.expected("claude-haiku-4-5"), abs=1e-3)
    assert haiku["expected_seconds"] == haiku["p95_seconds"] < 60 and haiku["source"] == "learned"
    assert sonnet["samples"] == 1 and sonnet["p50_seconds"] == pytest.approx(samples["claude-sonnet-4-5"][0])
    assert sonnet["expected_seconds"] == config.default_turnaround_seconds and sonnet["source"] == "default"

    # The default comes from the stack's parameter, or is given
    code, out, _ = run(capsys, [*flags(stack), "batches", "--format", "json", "--default-turnaround", "900"])
    learned = {r["model"]: r for r in json.loads(out)["turnaround"]}
    assert learned["claude-sonnet-4-5"]["expected_seconds"] == 900
    assert learned["claude-haiku-4-5"]["expected_seconds"] == haiku["expected_seconds"]
    code, _, err = run(capsys, [*flags(stack), "batches", "--default-turnaround", "5"])
    assert code == 2 and "--default-turnaround" in err and err.count("\n") == 1

    # Piped, a second plain table follows the batches
    code, out, _ = run(capsys, [*flags(stack), "batches"])
    lines = out.splitlines()
    start = lines.index("") + 1
    assert lines[start].split() == ["model", "samples", "p50_seconds", "p95_seconds", "expected_seconds",
                                    "source"]  # fmt: skip
    assert [line.split()[:2] for line in lines[start + 1 :]] == [["claude-haiku-4-5", "4"],
                                                                 ["claude-sonnet-4-5", "1"]]  # fmt: skip


# report: routes and what deadlines cost


def page_data(page):
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    return json.loads(found[1])


def write_report(stack, capsys, tmp_path):
    path = tmp_path / "report.html"
    code, _, _ = run(capsys, [*flags(stack), "report", "--html", str(path)])
    assert code == 0
    page = path.read_text()
    return page_data(page), figures(page), page


def test_report_shows_routes_and_what_deadlines_cost(late_batch, emulator, capsys, tmp_path):
    # Given one request due too soon for any batch (realtime at claim), two taken out of a late
    # batch for realtime before their deadline, and two left in that batch
    due, free = ["dl0", "dl1"], ["nd0", "nd1"]
    late = late_batch(
        {"soon": 100} | dict.fromkeys(due, 1800),
        [request(r, text=f"Summarise ticket {r}: the lift is stuck.") for r in free],
    )
    stack, inbox = late.stack, late.inbox
    stack.deliver_realtime()
    stack.advance(1800 - 60 + 5)
    wait_for(lambda: rescued(stack))
    wait_for(lambda: stack.deliver_realtime() and len(emulator.messages_created) == 3)

    # While the batch runs, what its copies cost is the completions' estimate, and said so
    early = {c["request_id"]: c for c in stack.drain(inbox)}
    assert set(early) == {"soon", *due}
    data, _, _ = write_report(stack, capsys, tmp_path)
    t = data["totals"]
    assert (t["requests"], t["realtime"], t["both_ways"], t["both_ways_estimated"]) == (3, 3, 2, 2)
    assert t["both_ways_usd"] == pytest.approx(sum(early[r]["cost"]["both_ways_usd"] for r in due), abs=1e-8)

    # When the late batch ends, having run every request
    stack.advance(7200)
    stack.pump()
    completions = list(early.values()) + stack.drain(inbox)
    assert sorted(c["request_id"] for c in completions) == sorted(["soon", *due, *free])
    routes = {c["request_id"]: c["route"] for c in completions}
    assert routes == dict.fromkeys(["soon", *due], "realtime") | dict.fromkeys(free, "batch")
    [record] = [b for b in items(stack, "batch#").values() if b.get("batch_id")]
    billed = float(record["both_ways_usd"])  # what the batch's results said its copies cost
    assert billed > 0
    realtime = [c for c in completions if c["route"] == "realtime"]
    batch = [c for c in completions if c["route"] == "batch"]

    # Then the report counts requests by route, and realtime answers at what they paid, once
    code, out, _ = run(capsys, [*flags(stack), "report", "--by", "route", "--format", "json"])
    rows = {r["route"]: r for r in json.loads(out)}
    assert (rows["batch"]["requests"], rows["realtime"]["requests"]) == (2, 3)
    assert (rows["batch"]["realtime"], rows["realtime"]["realtime"]) == (0, 3)
    list_paid = sum(c["cost"]["list_usd"] for c in realtime)
    assert rows["realtime"]["realtime_usd"] == pytest.approx(list_paid, abs=1e-6)
    assert rows["realtime"]["batch_usd"] == pytest.approx(list_paid, abs=1e-6)
    assert rows["realtime"]["saved_usd"] == 0 and rows["batch"]["saved_usd"] > 0
    paid = sum(c["cost"]["batch_usd"] for c in batch) + list_paid
    assert sum(r["batch_usd"] for r in rows.values()) == pytest.approx(paid, abs=1e-6)
    assert sum(r["list_usd"] for r in rows.values()) == pytest.approx(
        sum(c["cost"]["list_usd"] for c in completions), abs=1e-6
    )
    # And the requests that ran both ways, at what their batch copies cost
    assert (rows["realtime"]["both_ways"], rows["batch"]["both_ways"]) == (2, 0)
    assert rows["realtime"]["both_ways_usd"] == pytest.approx(billed, abs=1e-6)

    # On screen: the rows asked for, then by route with what deadlines cost, each with a total row
    code, out, _ = run(capsys, [*flags(stack), "report", "--by", "tier"])
    assert code == 0
    first, second = ([line.split() for line in t.splitlines()] for t in out.split("\n\n"))
    assert first[0] == ["tier", "requests", "realtime", "input_tokens", "output_tokens", "batch_usd",
                        "list_usd", "saved_usd"]  # fmt: skip
    assert [r[0] for r in first[1:]] == ["urgent", "total"]
    total = dict(zip(first[0], first[-1], strict=True))
    assert (total["requests"], total["realtime"]) == ("5", "3")
    assert float(total["batch_usd"]) == pytest.approx(paid, abs=1e-6)
    assert second[0] == [
        "route",
        "requests",
        "batch_usd",
        "list_usd",
        "saved_usd",
        "both_ways",
        "both_ways_usd",
    ]
    assert [r[0] for r in second[1:]] == ["batch", "realtime", "total"]
    by_route = {r[0]: dict(zip(second[0], r, strict=True)) for r in second[1:]}
    assert float(by_route["realtime"]["batch_usd"]) == pytest.approx(list_paid, abs=1e-6)
    assert float(by_route["total"]["batch_usd"]) == pytest.approx(paid, abs=1e-6)
    assert by_route["total"]["both_ways"] == by_route["realtime"]["both_ways"] == "2"
    assert float(by_route["total"]["both_ways_usd"]) == pytest.approx(billed, abs=1e-6)

    # The page: its totals, what deadlines cost per day, and spend that stacks up to list price
    data, charts, page = write_report(stack, capsys, tmp_path)
    t = data["totals"]
    assert (t["requests"], t["realtime"], t["both_ways"], t["both_ways_estimated"]) == (5, 3, 2, 0)
    assert t["batch_usd"] == pytest.approx(paid, abs=1e-6)
    assert t["both_ways_usd"] == pytest.approx(billed, abs=1e-6)
    assert t["deadline_usd"] == pytest.approx(list_paid / 2 + billed, abs=1e-6)
    assert {r["route"]: r["requests"] for r in data["by_route"]} == {"batch": 2, "realtime": 3}
    assert f"${t['deadline_usd']:,.4f}" in page
    per_day = defaultdict(lambda: defaultdict(float))
    for c in completions:
        day = per_day[c["completed_at"][:10]]
        if c["route"] == "realtime":
            day["given_up"] += c["cost"]["list_usd"] / 2
            day["realtime"] += 1
        day["both_ways_usd"] += 0
    for i in items(stack).values():
        if i.get("both_ways_usd") is not None:
            day = per_day[i["completed_at"][:10]]
            day["both_ways_usd"] += float(i["both_ways_usd"])
            day["both_ways"] += 1
    given_up = trace(charts["chart-deadlines"], "saving given up (realtime)")
    copies = trace(charts["chart-deadlines"], "batch copy also paid (both ways)")
    assert dict(zip(given_up["x"], given_up["y"], strict=True)) == pytest.approx(
        {d: v["given_up"] for d, v in per_day.items()}, abs=1e-6
    )
    assert dict(zip(given_up["x"], given_up["customdata"], strict=True)) == {
        d: v["realtime"] for d, v in per_day.items()
    }
    assert dict(zip(copies["x"], copies["y"], strict=True)) == pytest.approx(
        {d: v["both_ways_usd"] for d, v in per_day.items()}, abs=1e-6
    )
    assert sum(copies["customdata"]) == 2
    for chart in ("chart-spend-by-day", "chart-spend-by-tier", "chart-spend-by-model"):
        at_batch, at_list, both, saved, listed = (
            trace(charts[chart], name)["y"]
            for name in (
                "paid (batch price)",
                "paid (list price, realtime)",
                "batch copies of realtime answers",
                "saved (net)",
                "list price",
            )
        )
        # Saved net of the batch copies: paid, copies and saved still stack up to the list price
        stacked = [sum(p) for p in zip(at_batch, at_list, both, saved, strict=True)]
        assert stacked == pytest.approx(listed, abs=1e-6), chart
        assert sum(both) == pytest.approx(sum(copies["y"]), abs=1e-6), chart
        assert sum(at_list) == pytest.approx(list_paid, abs=1e-6), chart
        assert sum(at_batch) == pytest.approx(paid - list_paid, abs=1e-6), chart


def canceled_before_running(late_batch, emulator):
    """A late batch whose requests were all taken out for realtime, canceled before it ran (most
    of) them, and collected before the realtime answers came. Returns the stack, the completions,
    the batch's record and the requests' items."""
    ids = [f"cx{i}" for i in range(6)]
    # A batch of 20 hours canceled after half an hour has run about 2% of its requests
    late = late_batch(ids, late=20 * 3600)
    stack, inbox, batch_id = late.stack, late.inbox, late.batch_id
    stack.polls_realtime = False  # the realtime answers come after the batch is collected
    stack.advance(1800 - 60 + 5)
    wait_for(lambda: emulator.batch(batch_id)["cancel_initiated_at"] is not None)

    def collected():
        stack.settle()
        [record] = [b for b in items(stack, "batch#").values() if b.get("batch_id") == batch_id]
        stack.advance(60)
        return record["status"] == "collected"

    wait_for(collected)
    assert emulator.batch(batch_id)["request_counts"]["canceled"] >= 1
    stack.polls_realtime = True
    stack.deliver_realtime()
    got = {c["request_id"]: c for c in stack.drain(inbox)}
    assert set(got) == set(ids) and {c["route"] for c in got.values()} == {"realtime"}
    [record] = [b for b in items(stack, "batch#").values() if b.get("batch_id") == batch_id]
    return stack, got, record, {i["request_id"]: i for i in items(stack).values()}


def test_report_counts_a_batch_copy_only_if_its_batch_billed_it(late_batch, emulator, capsys):
    stack, got, record, table = canceled_before_running(late_batch, emulator)
    # What the batch's results billed for copies, request by request and in all
    billed = {r: float(i["both_ways_usd"]) for r, i in table.items() if i.get("both_ways_usd") is not None}
    assert float(record.get("both_ways_usd") or 0) == pytest.approx(sum(billed.values()))
    assert len(billed) < len(got)
    # The completions, written after the batch was collected, carry what it billed, nothing more
    claimed = sum((c["cost"] or {}).get("both_ways_usd") or 0 for c in got.values())
    assert claimed == pytest.approx(sum(billed.values()))
    # Then the report counts only the copies the batch billed, at what it billed
    code, out, _ = run(capsys, [*flags(stack), "report", "--by", "route", "--format", "json"])
    [row] = json.loads(out)
    assert code == 0 and (row["route"], row["requests"], row["realtime"]) == ("realtime", 6, 6)
    assert row["both_ways"] == len(billed)
    assert row["both_ways_usd"] == pytest.approx(sum(billed.values()), abs=1e-6)
    assert (
        row["batch_usd"]
        == row["list_usd"]
        == pytest.approx(sum(c["cost"]["list_usd"] for c in got.values()), abs=1e-6)
    )


def test_a_completion_claims_no_batch_copy_its_collected_batch_never_ran(late_batch, emulator):
    _, got, _, table = canceled_before_running(late_batch, emulator)
    unbilled = [r for r in got if table[r].get("both_ways_usd") is None]
    assert unbilled
    assert {r: (got[r]["cost"] or {}).get("both_ways_usd") for r in unbilled} == dict.fromkeys(unbilled)


def test_estimate_counts_tokens_on_an_operator_s_machine(emulator, tmp_path):
    import subprocess
    import sys

    # An operator's shell: a key and a base URL, none of the functions' variables
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "ANTHROPIC_API_KEY": "operator-key",
        "ANTHROPIC_BASE_URL": emulator.url,
    }
    lines = estimate_lines()
    done = subprocess.run(
        [sys.executable, "-m", "relay_ops.cli", "estimate", jsonl(tmp_path, lines), "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["total"]["requests"] == len(lines)
    assert shown["estimated_lines"] == [], done.stderr


def test_what_a_batch_copy_cost_survives_a_realtime_answer_settled_at_the_same_time(late_batch, emulator):
    from batch_relay.settings import settings
    from batch_relay.store import Store, request_key
    from boto3.dynamodb.conditions import Attr

    # Given a request taken out of a late batch for realtime
    stack = late_batch(["race"], ["stays"]).stack
    stack.advance(1800 - 60 + 5)
    wait_for(lambda: rescued(stack))

    # When the batch's collector records what its copy cost (the write `Settler._both_ways` makes)
    # while the realtime function settles its answer: after the function's read, before its write
    store, key, written = Store(settings().table_name), request_key("race"), []

    def collector_meanwhile(function, operation):
        if function == "RealtimeFunction" and operation == "PutItem" and not written:
            stack.before = None
            written.append(store.update_if(key, Attr("both_ways_usd").not_exists(), both_ways_usd=0.000123))

    stack.before = collector_meanwhile
    wait_for(lambda: stack.deliver_realtime() and emulator.messages_created)
    stack.before = None
    stack.advance(60)  # the try that found the item changed comes back, and settles from its answer
    stack.deliver_realtime()
    assert written == [True] and len(emulator.messages_created) == 1
    assert items(stack)[key]["status"] == "succeeded"

    # Then what the collector recorded is still on the item
    assert items(stack)[key].get("both_ways_usd") is not None
