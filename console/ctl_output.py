"""How ``staybook ctl`` prints: aligned tables, JSON, and one error line.

Shared by the node commands (:mod:`console.ctl`) and the dead-letter ones
(:mod:`console.ctl_dlq`), so every listing looks the same and every failure is one
line on stderr with exit status 1 (scripts check both).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 event``, ``2 events`` (``many``: the plural when it is not ``word`` + s)."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def fail(message: str) -> Any:
    """Print ``error: message`` on stderr and exit with status 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def dump(data: Any) -> None:
    """The ``--json`` output: indented, anything unknown as its string."""
    typer.echo(json.dumps(data, indent=2, default=str))


def table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    """``rows`` as left-aligned columns under upper-case headers; ``(none)`` if empty."""
    if not rows:
        typer.echo("(none)")
        return
    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    typer.echo("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True))
               .rstrip())
    for row in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def cell(v: Any) -> str:
    """One table cell: ``-`` for nothing, a failure as ``type: message`` (cut to 60)."""
    if v is None:
        return "-"
    if isinstance(v, dict):
        return f"{v.get('type')}: {v.get('message')}"[:60]
    return str(v)
