"""The rooms and who may enter them, read from the source with `ast` (nothing is imported).

Three packages, three audiences: `batch_relay` is the Lambda layer (it ships what its lock holds,
nothing for terminals or charts), `relay_ops` the operator's CLI for deployed stacks (no moto, no
emulator, nothing of `relay_local`), `relay_local` the stack on one machine (it may use
`relay_ops`, never the other way round). No module imports, even lazily, one that imports it back.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "batch_relay": ROOT / "layers" / "relay" / "batch_relay",
    "relay_local": ROOT / "local" / "relay_local",
    "relay_ops": ROOT / "ops" / "relay_ops",
}
# What a terminal or a chart needs has no place in a Lambda function.
NOT_IN_THE_LAYER = {"rich", "matplotlib", "plotly", "seaborn", "bokeh", "altair", "pygal", "kaleido"}


def module_name(path: Path) -> str:
    package = next(name for name, root in PACKAGES.items() if path.is_relative_to(root))
    parts = path.relative_to(PACKAGES[package]).with_suffix("").parts
    return ".".join((package, *parts)).removesuffix(".__init__")


MODULES = {module_name(path): path for root in PACKAGES.values() for path in sorted(root.rglob("*.py"))}


def imported(path: Path, fallbacks: bool = True) -> Iterator[str]:
    """Every module a file imports, at the top or inside a function, as a dotted name. `from p
    import m` names `p.m` when `m` is a module of ours, `p` otherwise. Without `fallbacks`, the
    imports under `except ImportError` (taken only where the first choice is missing) are left out."""
    name = module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    skipped = (
        set() if fallbacks else {id(n) for h in ast.walk(tree) if _on_import_error(h) for n in ast.walk(h)}
    )
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this module is in
                base = name.split(".")[: -node.level + (path.name == "__init__.py") or None]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                yield f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source


def _on_import_error(node: ast.AST) -> bool:
    if not isinstance(node, ast.ExceptHandler) or node.type is None:
        return False
    caught = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
    return any(isinstance(c, ast.Name) and c.id in ("ImportError", "ModuleNotFoundError") for c in caught)


def graph() -> dict[str, set[str]]:
    """Module to the modules of ours it imports."""
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges[name] = set()
        for target in imported(path):
            # `a.b.c` where `a.b` is ours and `c` a name in it: the edge is to `a.b`.
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def tops(package: str, fallbacks: bool = True) -> dict[str, set[str]]:
    """Module of `package` to the top-level names of everything it imports."""
    return {
        name: {target.split(".")[0] for target in imported(path, fallbacks)}
        for name, path in MODULES.items()
        if name.split(".")[0] == package
    }


def test_the_three_packages_are_read():
    # A wrong root would make every assertion below pass on nothing.
    for package, root in PACKAGES.items():
        assert package in MODULES, root
    assert {"batch_relay.submitter", "relay_local.emulator", "relay_local.demo", "relay_ops.cli"} <= set(
        MODULES
    )
    assert "relay_ops.savings" in graph()["relay_local.demo"]


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("relay_ops", {"relay_local", "moto"}),
        ("batch_relay", {"relay_local", "relay_ops"} | NOT_IN_THE_LAYER),
    ],
)
def test_packages_stay_out_of_rooms_not_theirs(package, forbidden):
    wrong = {
        module: sorted(names & forbidden) for module, names in tops(package).items() if names & forbidden
    }
    assert wrong == {}


def test_the_operator_cli_runs_without_the_emulator():
    # The emulator lives in relay_local; its name alone, imported from anywhere, is refused too.
    found = {
        m: t for m, p in MODULES.items() if m.startswith("relay_ops") for t in imported(p) if "emulator" in t
    }
    assert found == {}


def test_the_layer_imports_only_the_standard_library_and_its_lock():
    """Whatever batch_relay imports must be in the Python runtime or in the lock `sam build`
    installs, so the layer cannot come to need a package only the operator's machine has."""
    lock = (ROOT / "layers" / "relay" / "requirements.txt").read_text()
    locked = {
        canonicalize_name(n)
        for n in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==", lock, re.M)
    }
    assert {"pydantic", "anthropic", "boto3", "aws-lambda-powertools"} <= locked
    assert not {canonicalize_name(n) for n in NOT_IN_THE_LAYER} & locked
    distributions = packages_distributions()
    outside = {}
    # A fallback (`except ImportError: import httpx`) serves older releases the lock does not hold.
    for module, names in tops("batch_relay", fallbacks=False).items():
        for top in names - set(sys.stdlib_module_names) - {"batch_relay", "__future__"}:
            if not {canonicalize_name(d) for d in distributions.get(top, [])} & locked:
                outside.setdefault(module, []).append(top)
    assert outside == {}
