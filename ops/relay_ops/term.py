"""What the operator's commands show: Rich on a terminal, plain text when piped.

On a terminal, tables get borders and colour and progress is drawn live. Anywhere else (a pipe,
a file, CI) the same tables come out as aligned columns with no escape codes or box characters,
and progress as plain lines, so the output stays easy to read back and to `grep`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

# Wide enough that plain tables never wrap: the reader's pager or editor decides.
PLAIN_WIDTH = 10_000


def console(stream: TextIO | None = None) -> Console:
    """A console on `stream` (stdout by default): styled on a terminal, plain text otherwise.

    Rich decides what a terminal is: a tty, or `TTY_COMPATIBLE=1` / `FORCE_COLOR` in the environment.
    """
    styled = Console(file=stream or sys.stdout)
    if styled.is_terminal:
        return styled
    return Console(file=stream or sys.stdout, width=PLAIN_WIDTH, no_color=True, highlight=False, emoji=False)


def show(out: Console, *renderables: Any) -> None:
    """Print on `out`; plain output loses the padding Rich leaves at the end of table lines."""
    if out.is_terminal:
        out.print(*renderables, sep="\n")
        return
    with out.capture() as captured:
        out.print(*renderables, sep="\n")
    out.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    out.file.flush()


def table(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    plain: bool,
    title: str | None = None,
    numeric: Iterable[str] = (),
    total: Mapping[str, Any] | None = None,
) -> Table:
    """Rows as a table; `numeric` columns are right-aligned; `total`, if given, is a last row set
    apart (a rule above it on a terminal)."""
    right = set(numeric)
    out = Table(
        title=None if plain else title,
        box=None if plain else box.SIMPLE_HEAD,
        pad_edge=not plain,
        show_edge=not plain,
        header_style="" if plain else "bold",
        title_justify="left",
    )
    for c in columns:
        out.add_column(c, justify="right" if c in right else "left", no_wrap=plain)
    for r in rows:
        out.add_row(*(_cell(c, r.get(c)) for c in columns))
    if total is not None:
        out.add_section()
        out.add_row(*(_cell(c, total.get(c)) for c in columns), style=None if plain else "bold")
    return out


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and column.endswith("_usd"):
        return f"{value:.6f}"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return str(value)
