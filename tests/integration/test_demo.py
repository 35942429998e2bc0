"""`make demo`'s own summary, checked against what the table and the topic say."""

from __future__ import annotations

import json
from collections import Counter

import boto3
import pytest
from relay_local import demo

from tests.conftest import EVENTS

pytestmark = pytest.mark.integration


def test_demo_summary_matches_the_table_and_the_completions(monkeypatch, tmp_path):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    seen = {}

    def inspect(stack, summary):
        table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"])
        seen["items"] = table.scan()["Items"]
        seen["summary"] = summary

    opts = demo.Options(size=45, duplicates=3, invalid=6, errored_share=0.1, expired_share=0.1, quiet=True)
    opts.out = tmp_path
    summary = demo.run(opts, inspect=inspect)

    requests = [i for i in seen["items"] if i["kind"] == "request"]
    assert summary["lost"] == [] and summary["duplicated"] == []
    assert summary["requests"] == summary["completions"] == len(requests) == 45 + 4
    assert Counter(i["status"] for i in requests) == Counter(summary["statuses"])
    assert summary["statuses"]["rejected"] == 4
    batches = [i for i in seen["items"] if i["kind"] == "batch" and i.get("batch_id")]
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


def test_demo_with_a_tier_policy_of_its_own(monkeypatch, tmp_path):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    opts = demo.Options(size=12, duplicates=1, invalid=0, errored_share=0, expired_share=0, quiet=True)
    opts.tiers = {"now": {"max_wait_seconds": 60, "min_requests": 1}}
    opts.out = tmp_path
    summary = demo.run(opts)
    assert summary["statuses"] == {"succeeded": 12} and summary["lost"] == []
    assert {c["tier"] for c in summary["samples"]} == {"now"}


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
    assert text.count('class="figure"') == 6 and "Plotly.newPlot" in text


def test_demo_json_summary_is_the_only_thing_on_stdout(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    argv = ["--size", "6", "--duplicates", "0", "--invalid", "0", "--latency", "0.2", "--json"]
    assert demo.main([*argv, "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["completions"] == 6 and summary["report"] == str(tmp_path / "report.html")
    assert [w["requests"] for w in summary["waits"]] == [2, 2, 2]
