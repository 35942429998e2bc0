"""The project's locks, compiled from their floors with one tool (uv), each with hashes.

    make lock        refresh every lock from its floors (takes the newest releases they allow)
    make lock ARGS=--keep   keep every pin the floors still allow; add or move only what they force
    make outdated    print what a refresh would change, with the changelog lines of the relay's
                     own packages, and write nothing

    layers/relay/requirements.txt  from requirements.in: the Lambda layer, python3.13 on arm64 (deploys)
    requirements/dev.txt           pyproject's `dev` extra, constrained by the layer's lock: .venv
    requirements/sam.txt           pyproject's `sam` extra: .venv-sam (the SAM CLI pins its own boto3)
    requirements/scan.txt          pyproject's `scan` extra: .venv-scan (checkov pins older boto3)

The development lock takes the layer's lock as constraints, so the suite runs exactly the versions
of anthropic, boto3, pydantic and Powertools that deploy (tests/unit/test_locks.py checks it).
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / "layers" / "relay"
HEADER = "# {what}\n# Compiled by `make lock` (scripts/lock.py) from {source}. Do not edit by hand.\n"


@dataclass(frozen=True)
class Lock:
    path: Path
    what: str
    source: str
    args: tuple[str, ...]
    extra: str | None = None  # an extra of pyproject.toml alone, without the project's own dependencies

    def compile(self, output: Path, upgrade: bool) -> None:
        uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
        if uv is None:
            sys.exit("uv is not installed: run `make venv` first (requirements/dev.txt holds it)")
        if not upgrade and self.path.exists() and output != self.path:
            shutil.copyfile(self.path, output)  # uv keeps the pins it finds in its output file
        command = [
            uv, "pip", "compile", "--quiet", "--generate-hashes", "--no-header", "--no-strip-extras",
            "--custom-compile-command", "make lock", *self.args, "-o", str(output),
            *(["--upgrade"] if upgrade else []),
        ]  # fmt: skip
        text = "\n".join(extra(self.extra)) if self.extra else None
        subprocess.run(command, check=True, cwd=ROOT, input=text, text=True)
        body = output.read_text()
        output.write_text(HEADER.format(what=self.what, source=self.source) + body)


LOCKS = (
    Lock(
        LAYER / "requirements.txt",
        "The layer's lock: every package `sam build` installs into RelayLayer (python3.13, arm64).",
        "layers/relay/requirements.in",
        (
            "layers/relay/requirements.in",
            "--python-version",
            "3.13",
            "--python-platform",
            "aarch64-manylinux_2_28",
            "--only-binary",
            ":all:",
        ),
    ),
    Lock(
        ROOT / "requirements" / "dev.txt",
        "The development lock (.venv): the layer's packages at the layer's versions, and the dev tools.",
        "pyproject.toml's `dev` extra, constrained by layers/relay/requirements.txt",
        (
            "pyproject.toml",
            "--extra",
            "dev",
            "-c",
            "layers/relay/requirements.txt",
            "--universal",
            "--python-version",
            "3.11",
            "--no-emit-package",
            "batch-relay",
        ),
    ),
    Lock(
        ROOT / "requirements" / "sam.txt",
        "The SAM CLI's lock (.venv-sam): it pins its own boto3, so it lives apart from the layer's.",
        "pyproject.toml's `sam` extra",
        ("-", "--universal", "--python-version", "3.11"),
        extra="sam",
    ),
    Lock(
        ROOT / "requirements" / "scan.txt",
        "checkov's lock (.venv-scan): it pins boto3 and others far below the layer's.",
        "pyproject.toml's `scan` extra",
        ("-", "--universal", "--python-version", "3.11"),
        extra="scan",
    ),
)


def extra(name: str) -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][name]


PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)


def pins(text: str) -> dict[str, str]:
    """Package name (canonical) to pinned version, as a lock file states them."""
    return {canonicalize_name(name): version for name, version in PIN.findall(text)}


def direct(path: Path) -> list[str]:
    """The packages a requirements.in names itself (the relay's own, whose changelogs matter)."""
    names = []
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if match and not line.lstrip().startswith("#"):
            names.append(canonicalize_name(match.group(1)))
    return names


def refresh(upgrade: bool) -> None:
    (ROOT / "requirements").mkdir(exist_ok=True)
    for lock in LOCKS:
        lock.compile(lock.path, upgrade=upgrade)
        print(f"{len(pins(lock.path.read_text()))} packages pinned in {lock.path.relative_to(ROOT)}")


def outdated() -> int:
    """Print what `make lock` would change; return how many pins would move."""
    moved = 0
    with tempfile.TemporaryDirectory() as scratch:
        for lock in LOCKS:
            fresh = Path(scratch) / lock.path.name
            now = pins(lock.path.read_text()) if lock.path.exists() else {}
            # The dev lock is constrained by the layer's: compile it against the refreshed layer.
            args = tuple(
                str(Path(scratch) / "requirements.txt") if a == "layers/relay/requirements.txt" else a
                for a in lock.args
            )
            Lock(fresh, lock.what, lock.source, args, lock.extra).compile(fresh, upgrade=True)
            after = pins(fresh.read_text())
            changes = sorted(set(now) | set(after))
            rows = [(n, now.get(n, "-"), after.get(n, "-")) for n in changes if now.get(n) != after.get(n)]
            moved += len(rows)
            print(f"\n{lock.path.relative_to(ROOT)}: {len(rows) or 'nothing'} to change")
            for name, old, new in rows:
                print(f"  {name:32} {old:>14} -> {new}")
            if lock.path == LAYER / "requirements.txt":
                for name in direct(LAYER / "requirements.in"):
                    if now.get(name) and after.get(name) and now[name] != after[name]:
                        print(changelog(name, now[name], after[name], Path(scratch)))
    print(f"\n{moved} pins would move; `make lock` takes them, then `make test` and commit the locks.")
    return moved


def changelog(name: str, old: str, new: str, scratch: Path) -> str:
    """The changelog sections between two versions, read from the new release's source on the index."""
    head = f"\n  {name} {old} -> {new}, from its changelog:"
    text = _changelog_text(name, new, scratch)
    if text is None:
        return f"{head} (the release on the index ships none)"
    lines, keep = [], False
    for line in text.splitlines():
        heading = re.match(r"^#{1,3}\s+\[?v?(\d+\.\d+[^\s\]()]*)", line)
        if heading:
            try:
                version = Version(heading.group(1))
                keep = Version(old) < version <= Version(new)
            except InvalidVersion:
                pass
        if keep:
            lines.append("    " + line)
    return head + ("\n" + "\n".join(lines) if lines else " (no sections between these versions)")


def _changelog_text(name: str, version: str, scratch: Path) -> str | None:
    target = scratch / f"{name}-{version}"
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(target),
               "--no-binary", ":all:", f"{name}=={version}"]  # fmt: skip
    if subprocess.run(command, capture_output=True).returncode != 0:
        return None
    names = re.compile(r"(^|/)(CHANGELOG|CHANGES|HISTORY|NEWS)(\.md|\.rst|\.txt)?$", re.IGNORECASE)
    for archive in target.iterdir():
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                found = [n for n in z.namelist() if names.search(n) and n.count("/") <= 1]
                if found:
                    return z.read(found[0]).decode("utf-8", "replace")
        else:
            with tarfile.open(archive) as t:
                members = [m for m in t.getmembers() if names.search(m.name) and m.name.count("/") <= 1]
                if members and (f := t.extractfile(members[0])):
                    return io.TextIOWrapper(f, "utf-8", errors="replace").read()
    return None


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--outdated", action="store_true", help="print what a refresh would change")
    parser.add_argument("--keep", action="store_true", help="keep every pin the floors still allow")
    args = parser.parse_args()
    if args.outdated:
        outdated()
    else:
        refresh(upgrade=not args.keep)


if __name__ == "__main__":
    main()
