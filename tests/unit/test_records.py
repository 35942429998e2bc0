"""The typed items at the store's edge: every attribute written to a batch record is declared,
a misspelt one is refused before anything is written, and an item another version wrote loads."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from batch_relay import clock, lifecycle
from batch_relay.intake import Parsed, request_item
from batch_relay.lifecycle import CLOSE, START, Batch, new_record
from batch_relay.records import BatchRecord, RequestItem
from batch_relay.settings import Settings
from batch_relay.store import dynamo, plain

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "relay" / "batch_relay"
# Calls whose keywords are attributes written to a batch record, and their keywords that are not.
WRITERS = {"move": {"to", "remove", "add"}, "update_batch": {"remove", "add"}, "new_record": {"ref", "state"}}
ENV = {"TABLE_NAME": "requests", "BUCKET_NAME": "bucket", "TOPIC_ARN": "arn:aws:sns:us-east-1:1:t"}


def written_names(path: Path) -> set[str]:
    """Attribute names a module writes to a batch record by name: the keywords of the writers
    (with `remove=` and `add=` literals), of `Handoff.record`, which makes a realtime record, and
    the keys of the dicts a writer is given as `**name` in the same function (a literal, its items
    set, its `update`, or what a method of the module named as the call returns)."""
    tree = ast.parse(path.read_text())
    functions = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)]
    by_name = {f.name: f for f in functions}
    names: set[str] = set()
    for function in functions:
        splatted: set[str] = set()
        for node in ast.walk(function):
            if not isinstance(node, ast.Call):
                continue
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            is_handoff = callee == "record" and isinstance(node.func, ast.Attribute) and node.keywords
            if callee not in WRITERS and not is_handoff:
                continue
            for k in node.keywords:
                if k.arg is None:
                    splatted |= {n.id for n in ast.walk(k.value) if isinstance(n, ast.Name)}
                elif k.arg in ("remove", "add"):
                    names |= _literal(k.value)
                elif k.arg not in WRITERS.get(callee, ()):
                    names.add(k.arg)
        for node in ast.walk(function):
            target, value = _assigned(node)
            if target in splatted and isinstance(value, ast.Dict):
                names |= _literal(value)
            elif target in splatted and isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
                method = by_name.get(value.func.attr)
                for r in ast.walk(method) if method else ():
                    if isinstance(r, ast.Return) and isinstance(r.value, ast.Dict):
                        names |= _literal(r.value)
            elif isinstance(node, ast.Subscript) and getattr(node.value, "id", None) in splatted:
                if isinstance(node.ctx, ast.Store) and isinstance(node.slice, ast.Constant):
                    names.add(node.slice.value)
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "update"
                and getattr(getattr(node.func, "value", None), "id", None) in splatted
            ):
                names |= {k.arg for k in node.keywords if k.arg}
    return {n for n in names if isinstance(n, str)}


def _literal(node: ast.AST) -> set[str]:
    """The names a literal dict (its keys) or tuple (its items) spells out, either way of an `if`."""
    if isinstance(node, ast.IfExp):
        return _literal(node.body) | _literal(node.orelse)
    found = node.keys if isinstance(node, ast.Dict) else node.elts if isinstance(node, ast.Tuple) else []
    return {k.value for k in found if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def _assigned(node: ast.AST) -> tuple[str | None, ast.AST | None]:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id, node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id, node.value
    return None, None


def test_every_attribute_the_layer_writes_to_a_batch_record_is_declared():
    found = {n for p in sorted(LAYER.glob("*.py")) for n in written_names(p)}
    # the ones the state machine's RecordFailure writes, too
    asl = json.loads((ROOT / "statemachine" / "poller.asl.json").read_text())
    update = json.dumps(asl)
    found |= set(re.findall(r"(\w+) = :", update))
    seen = {"batch_id", "execution", "rescue_from", "close_status", "api_counts", "bytes", "failure_error"}
    assert seen | {"n_rescued"} <= found
    assert found - BatchRecord.names == set()


def test_the_scan_finds_keywords_and_removed_names(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "def fields(self):\n"
        "    return {'bytes': 1}\n"
        "def f():\n"
        "    fields = {'close_error': e}\n"
        "    fields['close_status'] = s\n"
        "    fields.update(cursor=1)\n"
        "    more = taking.fields()\n"
        "    move(s, r, STEP, remove=('restart_after',), add={'n_held': 1}, updated_at=x, **fields)\n"
        "    store.update_batch(r, **more)\n"
        "    send.record(tier, rescued_from=ref)\n"
        "def g():\n"
        "    fields = {'rt_since': 1}\n"
        "    store.update_if(key, **fields)\n"
    )
    assert written_names(source) == {
        *("restart_after", "n_held", "updated_at", "rescued_from"),
        *("close_error", "close_status", "cursor", "bytes"),
    }


def test_a_misspelt_attribute_is_refused_before_anything_is_written(store):
    record = new_record("urgent", 30, Batch.CREATED, ref="r1", batch_id="msgbatch_1")
    store.add(record)
    with pytest.raises(ValueError, match="rescued_from_x"):
        lifecycle.move(store, record, START, execution="msgbatch_1", rescued_from_x="r0")
    with pytest.raises(ValueError, match="close_eror"):
        lifecycle.move(store, "r1", CLOSE, close_eror="api_error")
    with pytest.raises(ValueError, match="n_sucess"):
        store.update_batch("r1", add={"n_sucess": 1})
    with pytest.raises(ValueError, match="restart_afer"):
        store.update_batch("r1", remove=("restart_afer",))
    with pytest.raises(ValueError, match="rescue_form"):
        new_record("urgent", 30, Batch.CLAIMING, rescue_form=3)
    # Then the record is as first written, and a well-spelt move applies and is mirrored
    assert store.get("batch#r1") == plain(dynamo(record.item()))
    assert lifecycle.move(store, record, START, execution="msgbatch_1", restarts=0)
    assert (record.status, record.execution) == (Batch.POLLING, "msgbatch_1")
    assert store.batch("r1") == record


def test_a_record_round_trips_through_the_table_with_its_money_exact(store):
    record = new_record("bulk", 30, Batch.CLAIMING, ref="r2", input_key="input/r2.jsonl", run="h")
    store.add(record)
    fields = {"budget_usd": 0.12345678, "models": ["claude-haiku-4-5"], "rescue_at": 1.5e9 + 0.25}
    store.update_batch("r2", add={"batch_usd": 0.000001, "n_succeeded": 3}, **fields)
    read = store.batch("r2")
    assert read is not None
    assert (read.budget_usd, read.rescue_at, read.batch_usd) == (0.12345678, 1.5e9 + 0.25, 0.000001)
    assert (read.n_succeeded, read.models, read.status) == (3, ["claude-haiku-4-5"], Batch.CLAIMING)
    # a new record writes only what it sets: no attribute left at its default is stored
    assert set(record.item()) == {
        *("pk", "kind", "ref", "tier", "status", "pending_tier", "pending_since", "claimed_at"),
        *("updated_at", "request_count", "ttl", "input_key", "run"),
    }


def test_a_record_an_older_version_wrote_still_loads():
    old = {
        "pk": "batch#r3",
        "kind": "batch",
        "ref": "r3",
        "tier": "standard",
        "status": "polling",
        "claimed_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:01:00.000Z",
        "ttl": 1_790_000_000,
        "batch_id": "msgbatch_3",
        "legacy_note": "written by a version that had it",
    }
    record = BatchRecord.model_validate(old)
    assert (record.request_count, record.n_rescued, record.restarts, record.rescue_at) == (0, 0, 0, None)
    assert record.model_extra == {"legacy_note": "written by a version that had it"}
    assert record.item() == old
    with pytest.raises(AttributeError):
        _ = record.rescued_frm  # type: ignore[attr-defined]


def test_an_unknown_state_is_refused():
    with pytest.raises(ValueError, match="status"):
        BatchRecord.model_validate(
            {"pk": "batch#x", "ref": "x", "tier": "t", "status": "limbo", "claimed_at": "", "updated_at": ""}
            | {"ttl": 1}
        )


def test_a_request_item_as_intake_writes_it_loads_and_what_claiming_adds_too():
    settings = Settings.from_env(ENV)
    tier = settings.default_tier
    parsed = Parsed(
        message_id="m1",
        rid="q1",
        tier=tier,
        model="claude-haiku-4-5",
        metadata={"team": "support"},
        digest="abc",
        received_at=clock.iso(),
        length=120,
        deadline=clock.iso(clock.now() + 3600),
        api_version="2026-10-21",
        betas=["b1"],
        key="bodies/k.jsonl",
        offset=7,
    )
    written = request_item(parsed, settings)
    item = RequestItem.model_validate(plain(dynamo(written)))
    assert (item.request_id, item.tier, item.body_at, item.betas) == ("q1", tier, 7, ["b1"])
    assert item.model_extra == {} and item.item() == written
    held = RequestItem.model_validate(lifecycle.claimed(written, "r1", clock.iso()))
    assert lifecycle.held_by(held, "r1") and not lifecycle.held_by(held, "r2")
    assert held.attempts == 1 and held.pending_tier is None
