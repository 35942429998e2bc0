"""The alarms and the dashboard watch metrics the code really emits (no drift by renaming)."""

from __future__ import annotations

import json
import re

import pytest
from relay_local.stack import load_template

from tests.helpers import request

pytestmark = pytest.mark.integration


def custom_metrics_in_template() -> set[str]:
    resources = load_template()["Resources"]
    names = set()
    for res in resources.values():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::CloudWatch::Alarm":
            if props.get("Namespace") == "BatchRelay":
                names.add(props["MetricName"])
            for m in props.get("Metrics", []):
                stat = m.get("MetricStat", {}).get("Metric", {})
                if stat.get("Namespace") == "BatchRelay":
                    names.add(stat["MetricName"])
        if res["Type"] == "AWS::CloudWatch::Dashboard":
            body = props["DashboardBody"]["Fn::Sub"]
            # Rows of the BatchRelay namespace, and the "." rows that repeat it.
            names |= set(re.findall(r'\["(?:BatchRelay|\.)", "(\w+)"', body))
    return names


def test_every_custom_metric_of_the_alarms_and_dashboard_is_emitted(stack, emulator, capsys):
    watched = custom_metrics_in_template()
    assert {"OldestPendingRatio", "ApiAuthFailures", "Results_errored", "SavedUSD"} <= watched

    stack.send(
        [
            request("m-ok", model="claude-sonnet-4-5"),
            request("m-err", text="x [[emulate:errored:invalid_request_error]]"),
            request("m-retry", text="x [[emulate:expired]]"),
            {**request("m-bad"), "tier": "nope"},
            request("m-late", deadline="2020-01-01T00:00:00Z"),  # answered realtime, after its deadline
        ]
    )
    emulator.inject("POST", "/v1/messages/batches", 401)
    stack.deliver()
    with pytest.raises(Exception, match="refused"):
        stack.tick()
    emulator.latency_seconds = 0.2
    stack.pump()
    emitted = set()
    for line in capsys.readouterr().out.splitlines():
        if line.startswith('{"_aws"'):
            for block in json.loads(line)["_aws"]["CloudWatchMetrics"]:
                emitted |= {m["Name"] for m in block["Metrics"]}
    # Cache metrics appear only when the API reports cache tokens; the emulator reports none. The
    # fault metrics are checked where their faults are made (test_promises.py).
    faults = {"WrongAdoptions", "AccountHolds", "ReconcileFailures"}
    # Rescues from a late batch and the daily budget are checked where they are made (test_deadlines.py).
    deadlines = {
        "DeadlineRescues",
        "BatchesCanceled",
        "BothWaysUSD",
        "BudgetHeld",
        "BudgetExceeded",
        "BudgetCommittedUSD",
    }
    missing = (
        watched - emitted - {"CacheReadTokens", "CacheWriteTokens", "Results_canceled"} - faults - deadlines
    )
    assert missing == set()


def test_each_alarm_watches_the_resource_it_names_and_notifies_the_alarm_topic():
    resources = load_template()["Resources"]
    alarms = {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    assert set(alarms) == {
        "DeadLetterAlarm",
        "PollerFailedAlarm",
        "PendingTooLongAlarm",
        "ErroredRatioAlarm",
        "AuthFailureAlarm",
        "SubmitterErrorAlarm",
        "WrongAdoptionAlarm",
        "StalledBatchAlarm",
        "AccountHoldAlarm",
        "ReconcileFailureAlarm",
        "DeadlineMissAlarm",
        "RealtimeDeadLetterAlarm",
        "BudgetHoldAlarm",
    }
    watched = {
        "DeadLetterAlarm": {"Fn::GetAtt": ["RequestDeadLetterQueue", "QueueName"]},
        "RealtimeDeadLetterAlarm": {"Fn::GetAtt": ["RealtimeDeadLetterQueue", "QueueName"]},
        "PollerFailedAlarm": {"Ref": "PollerStateMachine"},
        "SubmitterErrorAlarm": {"Ref": "SubmitterFunction"},
    }
    for name, target in watched.items():
        assert alarms[name]["Dimensions"][0]["Value"] == target, name
    for name, props in alarms.items():
        assert props["AlarmActions"]["Fn::If"][1] == [{"Ref": "AlarmTopicArn"}], name
    assert alarms["PendingTooLongAlarm"]["Threshold"] == 2  # twice the tier's max wait
