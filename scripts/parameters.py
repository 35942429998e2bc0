"""Write the parameter table of docs/parameters.md from template.yaml, so the page cannot drift
from what `sam deploy` asks. `python scripts/parameters.py --check` exits 1 when the page is stale.

Only the block between the two markers is generated; the prose around it is the page's own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from relay_local.stack import load_template

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "parameters.md"
BEGIN = "<!-- parameters: generated from template.yaml by scripts/parameters.py -->"
END = "<!-- end of parameters -->"
# For parameters whose Description says too little for a first deploy.
NOTES = {
    "LogLevel": "Level of the functions' logs",
}


def table(template: dict[str, Any] | None = None) -> str:
    """The generated block: one table per parameter group of the template, in its order."""
    template = template or load_template()
    params = template["Parameters"]
    groups = template.get("Metadata", {}).get("AWS::CloudFormation::Interface", {}).get("ParameterGroups", [])
    sections = [(g["Label"]["default"], list(g["Parameters"])) for g in groups]
    grouped = {name for _, names in sections for name in names}
    rest = [name for name in params if name not in grouped]
    if rest:
        sections.append(("Other", rest))
    lines = [BEGIN, ""]
    for label, names in sections:
        lines += [f"### {label}", "", "| parameter | default | allowed | what it does |", "|---|---|---|---|"]
        lines += [_row(name, params[name]) for name in names]
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def _row(name: str, spec: dict[str, Any]) -> str:
    default = "**required**" if "Default" not in spec else _code(spec["Default"])
    text = NOTES.get(name) or spec.get("Description", "")
    return f"| `{name}` | {default} | {_allowed(spec)} | {_cell(text)} |"


def _allowed(spec: dict[str, Any]) -> str:
    if "AllowedValues" in spec:
        return ", ".join(_code(v) for v in spec["AllowedValues"])
    low, high = spec.get("MinValue"), spec.get("MaxValue")
    if low is not None and high is not None:
        return f"{low} to {high}"
    if low is not None:
        return f"≥ {low}"
    if high is not None:
        return f"≤ {high}"
    return {"Number": "a number", "CommaDelimitedList": "comma-separated"}.get(spec["Type"], "text")


def _code(value: Any) -> str:
    text = str(value)
    return f"`{_cell(text)}`" if text else "(empty)"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(page: str) -> str:
    """The page with its generated block replaced by a fresh one."""
    start, end = page.index(BEGIN), page.index(END) + len(END)
    return page[:start] + table() + page[end:]


def main(argv: list[str]) -> int:
    page = PAGE.read_text(encoding="utf-8")
    fresh = render(page)
    if argv == ["--check"]:
        if fresh != page:
            print(f"{PAGE.relative_to(ROOT)} is stale: run python scripts/parameters.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
