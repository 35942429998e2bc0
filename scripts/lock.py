"""Compile the layer's lock (layers/relay/requirements.txt) from its floors (requirements.in).

    make lock

Resolves for the Lambda runtime the template names (python3.13 on arm64, manylinux wheels only)
with pip's resolver, whatever the machine it runs on, and pins every package of the result. Run it
after changing a floor, or to take newer releases; `sam build` then installs exactly this set.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

LAYER = Path(__file__).resolve().parents[1] / "layers" / "relay"
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64")
HEADER = """\
# The layer's lock: every package `sam build` installs into RelayLayer, pinned.
# Compiled by `make lock` (scripts/lock.py) from requirements.in for python3.13 on arm64.
# Do not edit by hand: change a floor in requirements.in, then run `make lock`.
"""


def resolve() -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
            "--report", str(report), "--target", str(Path(scratch) / "target"),
            "--python-version", "3.13", "--implementation", "cp", "--abi", "cp313",
            "--only-binary", ":all:",
            *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
            "-r", str(LAYER / "requirements.in"),
        ]  # fmt: skip
        subprocess.run(command, check=True)
        installed = json.loads(report.read_text())["install"]
    return sorted((i["metadata"]["name"].lower(), i["metadata"]["version"]) for i in installed)


def main() -> None:
    pins = resolve()
    text = HEADER + "".join(f"{name}=={version}\n" for name, version in pins)
    (LAYER / "requirements.txt").write_text(text)
    print(f"{len(pins)} packages pinned in {LAYER / 'requirements.txt'}")


if __name__ == "__main__":
    main()
