"""The lifecycle module is the only writer of a state: read from the layer's source, and from the
state machine's definition."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from batch_relay import lifecycle
from batch_relay.lifecycle import BATCH, FAIL, LIVE_STATES, Batch, Moved, Request

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "relay" / "batch_relay"
# Calls that take a `status` but write nothing to the table: the completion a request gets, and
# the table of API errors (an HTTP status).
NOT_WRITES = {"Completion", "Rule"}
# Dicts with a "status" key that are not items: (module, function) and why.
NOT_ITEMS = {("completions.py", "attributes")}  # an SNS message's attributes


def status_writes(path: Path) -> list[str]:
    """Every place in a module that sets a `status`: a `status=` keyword, a "status" key in a dict
    literal, or an assignment to `x["status"]`."""
    tree = ast.parse(path.read_text())
    found: list[str] = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        where = f"{path.name}:{getattr(node, 'lineno', '?')} ({function})"
        if isinstance(node, ast.Call):
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if callee not in NOT_WRITES and any(k.arg == "status" for k in node.keywords):
                found.append(where)
        elif isinstance(node, ast.Dict) and (path.name, function) not in NOT_ITEMS:
            if any(isinstance(k, ast.Constant) and k.value == "status" for k in node.keys):
                found.append(where)
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if (
                    isinstance(t, ast.Subscript)
                    and isinstance(t.slice, ast.Constant)
                    and t.slice.value == "status"
                ):
                    found.append(where)
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "")
    return found


def test_no_module_but_lifecycle_writes_a_state():
    found = [w for p in sorted(LAYER.glob("*.py")) if p.name != "lifecycle.py" for w in status_writes(p)]
    assert found == [], "states written outside lifecycle.py:\n" + "\n".join(found)


def test_the_scan_finds_each_kind_of_status_write(tmp_path):
    source = tmp_path / "writes.py"
    source.write_text(
        "def a(store):\n    store.update('k', status='x')\n"
        "def b(item):\n    return {'pk': 1, 'status': 'x'}\n"
        "def c(item):\n    item['status'] = 'x'\n"
        "def d():\n    return Completion(status='x')\n"
    )
    assert [w.split(" ")[1] for w in status_writes(source)] == ["(a)", "(b)", "(c)"]


def test_every_state_has_one_row_and_the_sets_derive_from_the_table():
    assert set(BATCH) == set(Batch) and set(lifecycle.REQUEST) == set(Request)
    assert lifecycle.IN_FLIGHT < LIVE_STATES
    assert LIVE_STATES - {Batch.REALTIME} == lifecycle.AWAITING_RESULTS
    assert {
        Batch.CLAIMING,
        Batch.UPLOADED,
        Batch.CREATING,
        Batch.CREATED,
        Batch.FAILED,
        Batch.CLOSING,
    } == lifecycle.WAITS_ON_SUBMITTER
    # A state string stored before the enums is the same key, and the same member.
    assert "polling" in LIVE_STATES and Batch("polling") is Batch.POLLING


def test_every_transition_leaves_live_states_and_says_what_a_lost_race_means():
    for step in lifecycle.TRANSITIONS:
        assert step.leaving <= LIVE_STATES, step.name
        assert step.why and step.lost in lifecycle.Lost, step.name
    ended = {s for step in lifecycle.TRANSITIONS for s in step.to} - LIVE_STATES
    assert ended == lifecycle.ENDED, "an ended state no transition reaches"


def test_the_state_machine_records_a_failure_only_from_the_states_lifecycle_names():
    definition = json.loads((ROOT / "statemachine" / "poller.asl.json").read_text())
    record = definition["States"]["RecordFailure"]
    params = record["Parameters"]
    named = set(re.findall(r":(\w+)", params["ConditionExpression"]))
    values = {params["ExpressionAttributeValues"][f":{n}"]["S"] for n in named}
    assert values == FAIL.leaving
    assert params["ExpressionAttributeValues"][":failed"]["S"] == FAIL.only
    # A lost race (the batch ended meanwhile) ends the execution quietly, untried again.
    refused = "DynamoDB.ConditionalCheckFailedException"
    assert record["Retry"][0] == record["Retry"][0] | {"ErrorEquals": [refused], "MaxAttempts": 0}
    [catch] = record["Catch"]
    assert catch["ErrorEquals"] == [refused]
    assert definition["States"][catch["Next"]]["Type"] == "Succeed"


def test_a_request_leaves_only_the_state_its_transition_names():
    pending = {"request_id": "r", "status": "pending", "tier": "urgent", "pending_tier": "urgent"}
    claimed = lifecycle.claimed(pending, "ref", "2026-01-01T00:00:00Z")
    assert claimed["status"] == "claimed" and "pending_tier" not in claimed and claimed["attempts"] == 1
    assert lifecycle.released(claimed)["status"] == "pending"
    with pytest.raises(Moved):
        lifecycle.claimed(claimed, "other", "2026-01-01T00:00:00Z")  # claimed twice
    with pytest.raises(Moved):
        lifecycle.answered(pending, "succeeded")  # answered without a batch holding it
    with pytest.raises(Moved):
        lifecycle.admitted(pending)  # a new item over one that exists
