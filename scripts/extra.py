"""Print the requirements of one optional-dependencies extra of pyproject.toml, one a line:
`python scripts/extra.py scan` (the Makefile installs checkov's venv from it)."""

import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
print("\n".join(project["optional-dependencies"][sys.argv[1]]))
