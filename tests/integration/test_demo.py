"""`make demo`'s own summary, checked against what the table and the topic say."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from batch_relay import clock
from relay_local import demo

from tests.conftest import EVENTS

pytestmark = pytest.mark.integration

FINAL = ("succeeded", "errored", "expired", "canceled")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One run of the demo with its own tiers (deadlines, two late batches, a daily budget) and
    what the table held at its end."""
    seen: dict[str, Any] = {}

    def inspect(stack, summary):
        table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"])
        page = table.scan()
        seen["items"] = page["Items"]
        while "LastEvaluatedKey" in page:
            page = table.scan(ExclusiveStartKey=page["LastEvaluatedKey"])
            seen["items"] += page["Items"]

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ANTHROPIC_API_KEY", raising=False)
        opts = demo.Options(
            size=45, duplicates=3, invalid=6, errored_share=0.1, expired_share=0.1, quiet=True
        )
        opts.out = tmp_path_factory.mktemp("demo")
        summary = demo.run(opts, inspect=inspect)
    return summary, seen["items"]


def answered(items):
    return [i for i in items if i["kind"] == "request" and i["status"] in FINAL]


def test_demo_summary_matches_the_table_and_the_completions(demo_run):
    summary, items = demo_run
    requests = [i for i in items if i["kind"] == "request"]
    assert summary["lost"] == [] and summary["duplicated"] == []
    assert summary["requests"] == summary["completions"] == len(requests) == 45 + 4
    assert Counter(i["status"] for i in requests) == Counter(summary["statuses"])
    assert summary["statuses"]["rejected"] == 4
    batches = [i for i in items if i["kind"] == "batch" and i.get("batch_id")]
    assert summary["batches"] == len(batches)
    succeeded = [i for i in requests if i["status"] == "succeeded"]
    assert summary["tokens"]["output_tokens"] == sum(int(i["usage"]["output_tokens"]) for i in succeeded)
    assert summary["cost_usd"]["saved_usd"] == pytest.approx(
        sum(float(i["cost"]["saved_usd"]) for i in succeeded), abs=1e-5
    )
    assert summary["retried"] == sum(1 for i in requests if int(i.get("attempts", 0)) > 1)
    assert summary["retried"] > 0
    text = demo.report(summary)
    assert "Every request accounted for: 49 in, 49 completions out." in text


def test_demo_summary_reconciles_messages_requests_and_completions(demo_run):
    summary, _ = demo_run
    n = summary["messages"]
    # 45 valid requests, 3 sent twice, 6 invalid of which 2 have no usable id; the late tickets too
    assert (n["requests"], n["duplicates"], n["without_id"], n["invalid"]) == (49, 3, 2, 4)
    assert n["sent"] == n["requests"] + n["duplicates"] + n["without_id"] and n["later"] > 0
    assert n["requests"] == summary["completions"] == sum(summary["statuses"].values())
    text = demo.report(summary)
    assert (
        f"{n['sent']} messages sent ({n['later']} of them tickets sent 5 minutes in) = 49 requests + 3 "
        "duplicates (answered once) + 2 with no usable id" in text
    )
    assert "49 requests (4 invalid, rejected at intake) -> 49 completions:" in text


def test_demo_savings_are_net_of_the_batch_copies_of_rescued_requests(demo_run):
    summary, items = demo_run
    done = answered(items)
    c = summary["cost_usd"]
    by_batch = sum(
        float(i["cost"]["batch_usd"]) for i in done if i.get("cost") and i.get("route") != "realtime"
    )
    by_list = sum(
        float(i["cost"]["list_usd"]) for i in done if i.get("cost") and i.get("route") == "realtime"
    )
    # (Whether a late batch ran a rescued request before it was canceled depends on timing: the
    # arithmetic with copies is checked in tests/unit/test_savings.py.)
    copies = sum(float(i.get("both_ways_usd") or 0) for i in done)
    assert c["batch_usd"] == pytest.approx(by_batch, abs=1e-6)
    assert c["realtime_usd"] == pytest.approx(by_list, abs=1e-6)
    assert c["both_ways_usd"] == pytest.approx(copies, abs=1e-6)
    # Each figure is rounded to a micro-dollar: a difference of two may be one off its own rounding.
    assert c["net_saved_usd"] == pytest.approx(c["saved_usd"] - copies, abs=2e-6)
    assert c["net_saved_usd"] == pytest.approx(c["list_usd"] - c["paid_usd"], abs=1e-6)
    # A realtime answer's batch_usd is never the list price it paid
    realtime = [i["cost"] for i in done if i.get("route") == "realtime" and i.get("cost")]
    assert realtime and all(
        float(r["batch_usd"]) < float(r["paid_usd"]) == float(r["list_usd"]) for r in realtime
    )
    text = demo.report(summary)
    pct = round(100 * c["net_saved_usd"] / c["list_usd"])
    assert f"saved, net ({pct}% of list price)" in text and f"{c['net_saved_usd']:.4f} USD" in text
    page = Path(summary["report"]).read_text(encoding="utf-8")
    assert f"${c['net_saved_usd']:,.4f}" in page and "saved (net)" in page


def test_demo_answers_name_their_request_and_late_batches_are_named_beside_the_waits(demo_run):
    summary, _ = demo_run
    ok = [s for s in summary["samples"] if s["status"] == "succeeded"]
    assert {s.get("route") for s in ok} == {"batch", "realtime"}
    for sample in ok:
        text = sample["message"]["content"][0]["text"]
        if sample["route"] == "realtime":  # a realtime call has no id: named by its own words
            assert text.startswith("[emulated] realtime answer to ")
            assert f"(reference {sample['request_id'][-5:]})" in text
        else:
            assert text.startswith(f"[emulated] answer to {sample['request_id']} ")
    text = demo.report(summary)
    late = [b for b in summary["late_batches"] if b["why"]]
    waits = {w["tier"]: w for w in summary["waits"]}
    for b in late:
        assert f"Late batch {b['batch_id']} ({b['tier']}, made late on purpose" in text
        assert waits[b["tier"]]["requests"] > 0
    page = Path(summary["report"]).read_text(encoding="utf-8")
    assert all(b["batch_id"] in page for b in late)
    # One unit per view: the waits are in minutes, nowhere in seconds or hours
    assert (
        "against the tier's flush wait (minutes)" in text
        and "against each request's deadline (minutes)" in text
    )
    assert " s, p95 " not in text and " h)" not in text


def test_demo_counts_each_route_as_the_table_records_it(demo_run):
    summary, items = demo_run
    done = answered(items)
    routes = Counter(i.get("route", "batch") for i in done)
    assert summary["routes"] == dict(routes)
    assert routes["batch"] > 0 and routes["realtime"] > 0
    rescued = [i for i in done if i.get("rescued_from")]
    assert summary["realtime"]["rescued"] == len(rescued) > 0
    assert {i.get("route") for i in rescued} == {"realtime"}
    # The tickets due in 8 minutes: no batch could make it, so they went realtime at claim
    assert summary["realtime"]["routed"] == routes["realtime"] - len(rescued) > 0
    paid = sum(float(i["cost"]["list_usd"]) for i in done if i.get("route") == "realtime" and i.get("cost"))
    assert summary["realtime"]["paid_usd"] == pytest.approx(paid, abs=1e-5)


def test_demo_takes_deadline_requests_out_of_its_late_batches(demo_run):
    summary, items = demo_run
    late = {b["why"]: b for b in summary["late_batches"] if b["why"]}
    assert set(late) == {"tickets", "records"}
    records = {i["batch_id"]: i for i in items if i["kind"] == "batch" and i.get("batch_id")}

    # Every request of the tickets' batch went realtime, so the relay canceled it: it ended long
    # before the hour the API would have taken
    tickets = late["tickets"]
    record = records[tickets["batch_id"]]
    assert tickets["canceled"] and tickets["rescued"] == tickets["requests"] > 0
    assert int(record["n_rescued"]) == int(record["request_count"]) == tickets["requests"]
    assert clock.parse(record["ended_at"]) - clock.parse(record["created_at"]) < demo.LATE_SECONDS["tickets"]

    # The bulk batch ran its whole time: its deadline requests were taken out, the rest answered by it
    bulk = late["records"]
    record = records[bulk["batch_id"]]
    assert not bulk["canceled"] and 0 < bulk["rescued"] < bulk["requests"] == int(record["request_count"])
    assert bulk["ran_seconds"] >= demo.LATE_SECONDS["records"]
    assert any(i.get("batch_id") == bulk["batch_id"] for i in answered(items))
    for b in (tickets, bulk):
        ref = records[b["batch_id"]]["ref"]
        taken = [i for i in answered(items) if i.get("rescued_from") == ref]
        assert len(taken) == b["rescued"]
        for i in taken:
            assert i.get("route") == "realtime" and i.get("batch_id") is None
            assert clock.parse(i["completed_at"]) <= clock.parse(i["deadline"])

    # What the late batches also ran of the requests taken out of them is counted, once each
    both = [i for i in items if i["kind"] == "request" and "both_ways_usd" in i]
    assert summary["both_ways"]["requests"] == len(both)
    assert summary["both_ways"]["batch_usd"] == pytest.approx(
        sum(float(i["both_ways_usd"]) for i in both), abs=1e-6
    )
    assert all(i.get("rescued_from") for i in both)


def test_demo_deadlines_met_and_missed_agree_with_the_table(demo_run):
    summary, items = demo_run
    due = [i for i in answered(items) if i.get("deadline")]
    in_time = [i for i in due if clock.parse(i["completed_at"]) <= clock.parse(i["deadline"])]
    met = [i for i in in_time if i["status"] == "succeeded"]
    d = summary["deadlines"]
    assert (d["requests"], d["met"], d["missed"], d["failed"]) == (
        len(due),
        len(met),
        len(due) - len(in_time),
        len(in_time) - len(met),
    )
    assert d["missed"] == 0 and d["met"] > 0
    assert sum(sum(r.values()) for r in d["by_route"].values()) == len(due)


def test_demo_budget_holds_bulk_until_the_next_utc_day(demo_run):
    summary, items = demo_run
    budget = summary["budget"]
    days = {
        i["pk"].split("#", 1)[1]: int(i["committed_micros"]) / 1e6
        for i in items
        if i["pk"].startswith("budget#")
    }
    assert budget["daily_usd"] > 0 and len(days) == 2
    assert budget["committed"] == pytest.approx(days, abs=1e-6)
    assert all(usd <= budget["daily_usd"] + 1e-9 for usd in days.values()), "a day spent past its budget"

    # Bulk waited from the evening until the next UTC day, then went on
    [held] = [h for h in budget["held"] if h["tier"] == "bulk"]
    assert held["requests"] > 0 and held["went_on"] > 0
    assert held["went_on_at"][:10] > held["since"][:10]
    first, second = sorted(days)
    waited = [
        i
        for i in answered(items)
        if i["tier"] == "bulk"
        and i["received_at"][:10] == first
        and (i.get("submitted_at") or "")[:10] == second
    ]
    assert len(waited) >= held["went_on"]

    # A request taken out for realtime while the day's budget was spent was answered so, at once
    exceeded = [i for i in answered(items) if (i.get("error") or {}).get("type") == "budget_exceeded"]
    assert budget["exceeded"] == summary["realtime"]["budget_exceeded"] == len(exceeded) > 0
    assert {i["route"] for i in exceeded} == {"realtime"}


def test_demo_with_a_tier_policy_of_its_own(monkeypatch, tmp_path):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    opts = demo.Options(size=12, duplicates=1, invalid=0, errored_share=0, expired_share=0, quiet=True)
    opts.tiers = {"now": {"max_wait_seconds": 60, "min_requests": 1}}
    opts.out = tmp_path
    summary = demo.run(opts)
    assert summary["statuses"] == {"succeeded": 12} and summary["lost"] == []
    assert {c["tier"] for c in summary["samples"]} == {"now"}
    # Its requests still name deadlines, but no batch is made late and no budget is set
    assert summary["late_batches"] == [] and summary["budget"]["daily_usd"] == 0
    assert summary["deadlines"]["requests"] > 0 and summary["deadlines"]["missed"] == 0


def test_with_the_real_api_no_batch_is_made_late_and_the_demo_says_so(monkeypatch, capsys, tmp_path):
    """The real API's batch durations cannot be forced: the demo says so and runs the rest. Here
    the emulator stands in for the API, unseen by the demo."""
    from relay_local import api
    from relay_local.emulator import Emulator, EmulatorServer

    @contextlib.contextmanager
    def real_api(latency=1.0, **options):
        with EmulatorServer(Emulator(latency_seconds=latency, **options)) as server:
            yield {"ANTHROPIC_BASE_URL": server.url}, None

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setattr(api, "emulated", real_api)
    monkeypatch.setattr(demo, "REAL_API_WAIT_CAP", 0.05)
    opts = demo.Options(size=15, duplicates=0, invalid=0, errored_share=0, expired_share=0, real_api=True)
    opts.out = tmp_path
    summary = demo.run(opts)
    assert "No batch is made late" in capsys.readouterr().err
    assert summary["late_batches"] == [] and summary["realtime"]["rescued"] == 0
    assert summary["lost"] == [] and summary["completions"] == 15
    assert summary["realtime"]["routed"] == summary["routes"]["realtime"] > 0


def test_invoke_runs_a_function_of_the_template_with_a_sample_event(capsys, monkeypatch):
    from relay_local import cli

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    event = str(EVENTS / "buffer.json")
    assert cli.main(["invoke", "BufferFunction", event]) == 0
    assert '"batchItemFailures": []' in capsys.readouterr().out
    assert cli.main(["invoke", "NoSuchFunction", event]) == 2


def test_demo_shows_only_its_view_and_summary_and_names_its_log_and_report(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    argv = ["--size", "9", "--duplicates", "1", "--invalid", "2", "--latency", "0.2", "--out", str(tmp_path)]
    code = demo.main(argv)
    out, err = capsys.readouterr()
    log, page = tmp_path / "functions.log", tmp_path / "report.html"

    # The functions' logs and metrics went to the log file, none of it to the terminal
    assert code == 0
    shown = out + err
    assert '"_aws"' not in shown and '"level"' not in shown and "Traceback" not in shown
    written = log.read_text()
    assert '"_aws"' in written and '"level":"INFO"' in written
    # Piped (as here), the view is plain lines: no escape codes, no redrawing
    assert "\x1b[" not in shown and "\r" not in shown
    assert "completed 11/11" in err
    # The summary names both files, and the page has its charts and the run's figures
    assert "Every request accounted for: 11 in, 11 completions out." in out
    assert f"Savings report: {page}" in out and f"Functions' log and metrics: {log}" in out
    text = page.read_text()
    # eight charts (the deadlines' among them), and what deadlines cost once some requests went realtime
    assert text.count('class="figure"') == 9 and "Plotly.newPlot" in text


def test_demo_json_summary_is_the_only_thing_on_stdout(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    argv = ["--size", "6", "--duplicates", "0", "--invalid", "0", "--latency", "0.2", "--json"]
    assert demo.main([*argv, "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["completions"] == 6 and summary["report"] == str(tmp_path / "report.html")
    assert [w["requests"] for w in summary["waits"]] == [2, 2, 2]
    assert sum(summary["routes"].values()) == 6 and summary["budget"]["daily_usd"] > 0
