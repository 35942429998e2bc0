"""The layer's shape, measured from its source: no room outgrows what one reader holds at once,
and the submitter recovers exactly the states that are live."""

from __future__ import annotations

import ast
from pathlib import Path

from batch_relay.lifecycle import LIVE_STATES
from batch_relay.submitter import RECOVERY

LAYER = Path(__file__).resolve().parents[2] / "layers" / "relay" / "batch_relay"
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60
MAX_SUBMITTER_LINES = 350


def spans(kinds: tuple[type, ...]) -> dict[str, int]:
    """Lines of every class or function of the layer, by `module:name`."""
    out: dict[str, int] = {}
    for path in sorted(LAYER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, kinds):
                assert isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                out[f"{path.name}:{node.name}"] = (node.end_lineno or node.lineno) - node.lineno + 1
    return out


def test_the_recovery_table_covers_exactly_the_live_states():
    assert set(RECOVERY) == LIVE_STATES


def test_no_class_in_the_layer_is_over_300_lines():
    classes = spans((ast.ClassDef,))
    assert "submitter.py:Submitter" in classes
    assert {k: n for k, n in classes.items() if n > MAX_CLASS_LINES} == {}


def test_no_function_in_the_layer_is_over_60_lines():
    functions = spans((ast.FunctionDef, ast.AsyncFunctionDef))
    assert "submitter.py:flush" in functions
    assert {k: n for k, n in functions.items() if n > MAX_FUNCTION_LINES} == {}


def test_the_submitter_module_keeps_to_350_lines():
    assert len((LAYER / "submitter.py").read_text().splitlines()) <= MAX_SUBMITTER_LINES
