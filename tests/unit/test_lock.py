"""The locks: every package `sam build` installs is pinned within its floor, and the environment the
suite runs in holds exactly the versions that deploy (the layer's lock) and the dev lock's tools."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "relay"
DEV = ROOT / "requirements" / "dev.txt"


def _requirements(path: Path) -> list[Requirement]:
    """A lock's requirements, its `\\` continuations joined and its `--hash` options dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = (re.sub(r"--hash=\S+", "", line.split("#")[0]).strip() for line in text.splitlines())
    return [Requirement(line) for line in lines if line]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for requirement in _requirements(path):
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"not pinned in {path.name}: {requirement}"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_every_layer_package_is_pinned_within_its_floor() -> None:
    pins = _pins(LAYER / "requirements.txt")
    for floor in _requirements(LAYER / "requirements.in"):
        name = canonicalize_name(floor.name)
        assert name in pins, f"{floor.name} is in requirements.in but not in the lock"
        assert floor.specifier.contains(pins[name]), f"{floor.name}=={pins[name]} breaks {floor}"


@pytest.mark.parametrize("lock", [LAYER / "requirements.txt", *sorted((ROOT / "requirements").glob("*.txt"))])
def test_every_lock_pins_every_package_with_its_hashes(lock: Path) -> None:
    text = re.sub(r"\\\n", " ", lock.read_text())
    for line in (x.split("#")[0].strip() for x in text.splitlines()):
        if line:
            assert "==" in line and "--hash=sha256:" in line, f"{lock.name}: {line[:80]}"


def test_the_suite_runs_the_versions_the_layer_deploys() -> None:
    # Given the layer's lock (what `sam build` puts in RelayLayer) and this environment
    layer = _pins(LAYER / "requirements.txt")
    # Then every package the layer ships is installed here at the layer's version
    drift = {}
    for name, pinned in layer.items():
        try:
            here = version(name)
        except PackageNotFoundError:
            here = "not installed"
        if here != pinned:
            drift[name] = f"layer {pinned}, tests {here}"
    assert not drift, f"the suite does not run what deploys (make venv installs the locks): {drift}"


def test_the_dev_lock_holds_the_layer_versions() -> None:
    dev, layer = _pins(DEV), _pins(LAYER / "requirements.txt")
    assert {n: v for n, v in layer.items() if dev.get(n) != v} == {}


def test_the_project_and_the_layer_share_their_floors() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {canonicalize_name(Requirement(x).name): Requirement(x).specifier for x in project}
    for floor in _requirements(LAYER / "requirements.in"):
        assert declared[canonicalize_name(floor.name)] == floor.specifier, floor.name
    # Streamed request bodies (post(..., content=<iterable>)) exist from anthropic 0.76.
    anthropic = declared["anthropic"]
    assert not anthropic.contains("0.75.0") and anthropic.contains("0.76.0")
