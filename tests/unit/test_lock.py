"""The layer's lock: every package `sam build` installs is pinned, and the pins keep the floors."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "relay"


def _lines(path: Path) -> list[str]:
    return [x.split("#")[0].strip() for x in path.read_text().splitlines() if x.split("#")[0].strip()]


def test_every_layer_package_is_pinned_within_its_floor() -> None:
    pins = {}
    for line in _lines(LAYER / "requirements.txt"):
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"not pinned: {line}"
        pins[canonicalize_name(requirement.name)] = spec.version
    for line in _lines(LAYER / "requirements.in"):
        floor = Requirement(line)
        name = canonicalize_name(floor.name)
        assert name in pins, f"{floor.name} is in requirements.in but not in the lock"
        assert floor.specifier.contains(pins[name]), f"{floor.name}=={pins[name]} breaks {floor}"


def test_the_project_and_the_layer_share_their_floors() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {canonicalize_name(Requirement(x).name): Requirement(x).specifier for x in project}
    for line in _lines(LAYER / "requirements.in"):
        floor = Requirement(line)
        assert declared[canonicalize_name(floor.name)] == floor.specifier, floor.name
    # Streamed request bodies (post(..., content=<iterable>)) exist from anthropic 0.76.
    anthropic = declared["anthropic"]
    assert not anthropic.contains("0.75.0") and anthropic.contains("0.76.0")
