"""How the project's modules use each other, read from the source with `ast`: no test module imports
another (shared helpers live in `tests/helpers.py`, `tests/malformed.py` and the conftest files), and
no module reaches into another's private names.

A private name is one that starts with an underscore (dunders aside). It belongs to the module that
defines it: at module level, in a class body, or as `self._x` / `cls._x` in a method. Another
module may not import it (`from relay_local.stack import _WRITES`), read it off a module or an object
(`emulator._batches`, `local._RUNNING`), or name it in a string to `getattr`, `setattr`,
`monkeypatch.setattr` or `mock.patch.object`. A name some module of the project defines counts as
the accessing module's own when that module defines it too (`other._lock` beside `self._lock`);
private names of third-party packages are not the project's to police here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Folders that hold no project source: virtual environments, build output, caches.
NOT_SOURCE = {"node_modules", "build", "dist", "__pycache__"}
# Functions that take an attribute's name as their second argument.
BY_NAME = {"getattr", "setattr", "hasattr", "delattr", "object"}


def sources(root: Path = ROOT) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts[:-1]
        if not any(p.startswith(".") or p in NOT_SOURCE for p in parts):
            yield path


def parsed(root: Path = ROOT) -> dict[str, ast.Module]:
    return {p.relative_to(root).as_posix(): ast.parse(p.read_text(), str(p)) for p in sources(root)}


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imported_modules(node: ast.AST) -> list[str]:
    """The modules an import statement may name, dotted (`from a import b` names `a`, and `a.b` if
    `b` is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = "." * node.level + (node.module or "")
        joint = base + "." if node.module else base
        return [base, *(joint + alias.name for alias in node.names)]
    return []


def is_test_module(dotted: str) -> bool:
    """What pytest collects (`test_*.py`); helpers and conftest files are not test modules."""
    return any(part.startswith("test_") for part in dotted.split("."))


def imports_of_test_modules(trees: dict[str, ast.Module]) -> list[str]:
    """Where a file under tests/ imports a test module."""
    found = []
    for rel, tree in trees.items():
        if rel.startswith("tests/"):
            for node in ast.walk(tree):
                named = [m for m in imported_modules(node) if is_test_module(m)]
                if named:
                    found.append(f"{rel}:{node.lineno}: imports {named[0]}")
    return sorted(found)


def defined_privates(tree: ast.Module) -> tuple[set[str], set[str]]:
    """The private names a module defines: at module level, and as members of its classes."""
    top: set[str] = set()
    members: set[str] = set()

    def bind(target: ast.AST, into: set[str]) -> None:
        if isinstance(target, ast.Name) and private(target.id):
            into.add(target.id)
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
            if target.value.id in ("self", "cls") and private(target.attr):
                members.add(target.attr)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                bind(t, into)

    def visit(body: list[ast.stmt], into: set[str]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and private(node.name):
                into.add(node.name)
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    bind(t, into)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                bind(node.target, into)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                into.update(a.asname for a in node.names if a.asname and private(a.asname))
            if isinstance(node, ast.ClassDef):
                visit(node.body, members)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):  # self._x = ... anywhere in a method
                    targets = sub.targets if isinstance(sub, ast.Assign) else [getattr(sub, "target", None)]
                    for t in targets:
                        if isinstance(t, ast.Attribute):
                            bind(t, members)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit([n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)], into)

    visit(tree.body, top)
    return top, members


def reached_privates(tree: ast.Module) -> Iterator[tuple[int, str, bool]]:
    """Private names a module imports (flagged True), or reads or names on something other than
    self/cls (False)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            for alias in node.names:
                if private(alias.name):
                    yield node.lineno, alias.name, True
        elif isinstance(node, ast.Attribute) and private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                yield node.lineno, node.attr, False
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = node.args
            if called in BY_NAME and len(args) >= 2:
                named = args[1]
            elif called == "setattr" and args:  # monkeypatch.setattr("package.module._name", value)
                named = args[0]
            else:
                continue
            if isinstance(named, ast.Constant) and isinstance(named.value, str):
                name = named.value.rsplit(".", 1)[-1]
                if private(name):
                    yield node.lineno, name, False


def private_reaches(trees: dict[str, ast.Module]) -> list[str]:
    """Where a module reaches a private name another module of the project defines. A name read
    off an object is the module's own when its classes define that member too."""
    defined = {rel: defined_privates(tree) for rel, tree in trees.items()}
    owners: dict[str, set[str]] = {}
    for rel, (top, members) in defined.items():
        for name in top | members:
            owners.setdefault(name, set()).add(rel)
    found = []
    for rel, tree in trees.items():
        top, members = defined[rel]
        for line, name, imported in reached_privates(tree):
            others = owners.get(name, set()) - {rel}
            if others and not (name in members and not imported):
                found.append(f"{rel}:{line}: {name} (defined in {', '.join(sorted(others))})")
    return sorted(set(found), key=lambda f: (f.split(":")[0], int(f.split(":")[1])))


def test_no_test_module_imports_another():
    assert imports_of_test_modules(parsed()) == []


def test_no_module_reaches_into_another_modules_private_names():
    assert private_reaches(parsed()) == []


def test_the_checks_find_what_they_look_for():
    """Each check fails on a small tree that breaks its rule, and passes the same tree kept to it."""
    given = {
        "tests/helpers.py": "def at(): ...\n",
        "tests/integration/test_a.py": "from tests.integration.test_b import at\nimport tests.unit.test_c\n",
        "tests/integration/test_b.py": "from .test_a import at\nfrom . import test_c\n",
        "local/relay_local/emulator.py": "def _stable_id(): ...\nclass Emulator:\n"
        "    def __init__(self):\n        self._batches = {}\n",
        "local/relay_local/chaos.py": "from relay_local.emulator import _stable_id\n"
        "def f(emulator, mp):\n    mp.setattr(emulator, '_batches', {})\n    return emulator._batches\n",
        "local/relay_local/own.py": "class W:\n    def __init__(self):\n        self._lock = 1\n"
        "    def same(self, other):\n        return other._lock + len(__name__)\n",
    }
    trees = {rel: ast.parse(text) for rel, text in given.items()}
    assert [f.split(": ")[0] for f in imports_of_test_modules(trees)] == [
        "tests/integration/test_a.py:1",
        "tests/integration/test_a.py:2",
        "tests/integration/test_b.py:1",
        "tests/integration/test_b.py:2",
    ]
    assert private_reaches(trees) == [
        "local/relay_local/chaos.py:1: _stable_id (defined in local/relay_local/emulator.py)",
        "local/relay_local/chaos.py:3: _batches (defined in local/relay_local/emulator.py)",
        "local/relay_local/chaos.py:4: _batches (defined in local/relay_local/emulator.py)",
    ]
    kept = {rel: text for rel, text in given.items() if "test_" not in rel and "chaos" not in rel}
    kept["tests/integration/test_a.py"] = "from tests.helpers import at\n"
    assert imports_of_test_modules({rel: ast.parse(text) for rel, text in kept.items()}) == []
    assert private_reaches({rel: ast.parse(text) for rel, text in kept.items()}) == []
