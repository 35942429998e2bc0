"""The operator CLI against the local stack (moto) and the emulator."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import boto3
import pytest
from relay_local import ops

from tests.conftest import TEST_PARAMETERS
from tests.helpers import request

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
    assert {b["batch_id"] for b in json.loads(out)} == set(emulator.batch_ids())

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
    lines = out.splitlines()
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
        "chart-waits", "chart-turnaround", "chart-outcomes",
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
            ("saved", "saved_usd"),
            ("list price", "list_usd"),
        ):
            t = trace(charts[chart], name)
            drawn = dict(zip(t["x"], t["y"], strict=True))
            assert drawn == pytest.approx(dict(expected[key]), abs=1e-5), (chart, name)
            assert sum(t["y"]) == pytest.approx(cost[key], abs=1e-5)
    assert f"${cost['saved_usd']:,.4f}" in page

    # Receipt to completion: every completion counted once, in its tier, against the tier's max wait
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
    limits = trace(waits, "tier's max wait")
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
