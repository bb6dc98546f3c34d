"""Every setting at its default, as a commented TOML file (``staybook config defaults``).

Made from the settings model, so it cannot disagree with it: ``deploy/staybook.toml`` is
this text, and a test fails when it is not.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from config import Settings

WIDTH = 88

HEADER = """\
# Staybook's settings, each at its default: `staybook config defaults` prints this
# file from the settings model (config/__init__.py). Copy the lines you change into
# the file STAYBOOK_CONFIG names, or set them as STAYBOOK_* environment variables
# (nested keys with "__": STAYBOOK_BROKER__PREFETCH=64), which take precedence."""


def defaults_toml() -> str:
    """The settings model's defaults, each under its description, as TOML."""
    lines = [HEADER, ""]
    _table(Settings.model_construct(), (), lines)  # the defaults alone: no source read
    return "\n".join(lines) + "\n"


def _table(model: BaseModel, path: tuple[str, ...], lines: list[str]) -> None:
    """``model``'s values, then its sub-models as tables of their own."""
    fields = type(model).model_fields
    nested = [n for n in fields if isinstance(getattr(model, n), BaseModel)]
    for name in fields:
        if name not in nested:
            lines += _comment(fields[name].description)
            lines.append(_assignment(name, getattr(model, name), fields[name]))
    for name in nested:
        value = getattr(model, name)
        lines.append("")
        lines += _comment(fields[name].description or type(value).__doc__)
        lines.append(f"[{'.'.join((*path, name))}]")
        _table(value, (*path, name), lines)


def _assignment(name: str, value: Any, field: FieldInfo) -> str:
    """``name = value``; a setting unset by default is shown commented out, with an
    example value."""
    if value is None:
        if not field.examples:
            raise ValueError(f"setting {name} defaults to None and has no example")
        return f"# {name} = {_value(field.examples[0])}"
    return f"{name} = {_value(value)}"


def _value(value: Any) -> str:
    """A TOML literal for the scalars and lists settings hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _comment(text: str | None) -> list[str]:
    """``text`` as ``#`` lines, its paragraphs kept."""
    if not text:
        return []
    out: list[str] = []
    for i, paragraph in enumerate(text.replace("``", "`").strip().split("\n\n")):
        if i:
            out.append("#")
        out += textwrap.wrap(" ".join(paragraph.split()), WIDTH - 2,
                             initial_indent="# ", subsequent_indent="# ",
                             break_on_hyphens=False)
    return out


__all__ = ["defaults_toml"]
