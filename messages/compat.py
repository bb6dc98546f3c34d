"""Is a changed JSON Schema compatible with the published one? (docs/messages.md)

``narrowings(a, b)`` lists the ways some document valid under schema ``a`` may be
invalid under ``b`` (both with their ``$ref`` resolved by :func:`inline`): an empty list
means ``b`` accepts everything ``a`` did. From it, :func:`check`:

- a command or query must stay **backward** compatible: ``narrowings(published, new)``,
  because producers keep sending what the published schema allowed;
- a reply must stay **forward** compatible: ``narrowings(new, published)``, because its
  readers hold the published schema;
- an event must be **both**: stored events are read by the new code, new events by
  readers of the published schema.

The check is conservative: it understands the JSON Schema pydantic writes (objects,
``required``, ``type``, ``anyOf``, ``enum``, ``const``, string and number limits,
``pattern``, ``format``, ``items``) and reports any other difference
in a keyword that constrains as a narrowing, so it may call a harmless change
breaking but not the reverse. One assumption: a writer writes only the fields its own
schema names, so a field one schema lacks is absent from its documents, even where
that schema leaves unknown fields open (events and replies, read tolerantly).
Annotations (``title``, ``description``, ``examples``) and ``x-`` extensions are
ignored; a changed ``default`` counts, since it changes what an absent field means.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Schema = Mapping[str, Any]
Resolver = Callable[[str], Schema]

_ANNOTATIONS = frozenset({"title", "description", "examples", "deprecated",
                          "readOnly", "writeOnly", "$comment"})
_UPPER = ("maxLength", "maximum", "exclusiveMaximum", "maxItems", "maxProperties")
_LOWER = ("minLength", "minimum", "exclusiveMinimum", "minItems", "minProperties")
_HANDLED = frozenset({"type", "properties", "required", "additionalProperties", "anyOf",
                      "oneOf", "enum", "const", "items", "$ref", "pattern", "format",
                      "default", *_UPPER, *_LOWER}) | _ANNOTATIONS


def narrowings(a: Schema, b: Schema, path: str = "") -> list[str]:
    """Why some document valid under ``a`` might not be valid under ``b``.

    Args:
        a: the schema whose documents must stay valid (no ``$ref``: see :func:`inline`).
        b: the schema they must be valid under (likewise).
        path: where in the document (for the messages).
    """
    a, b = _validating(a), _validating(b)
    if not b or b == a:
        return []
    where = path or "(the message)"
    if "oneOf" in a or "oneOf" in b:  # exclusive: an overlap would refuse a document
        return [] if a == b else [f"{where}: oneOf changed (not checked in detail)"]
    a_opts, b_opts = _options(a), _options(b)
    if len(a_opts) > 1 or len(b_opts) > 1:
        out = []
        for opt in a_opts:
            fits = [narrowings(opt, o, path) for o in b_opts]
            if all(fits):
                out.append(f"{where}: {_describe(opt)} is no longer accepted"
                           f" ({min(fits, key=len)[0]})")
        return out
    return _single(a, b, path, where)


def _single(a: Schema, b: Schema, path: str, where: str) -> list[str]:
    out: list[str] = []
    ta, tb = _types(a), _types(b)
    if tb is not None and (ta is None or not ta <= _widen(tb)):
        return [f"{where}: type {_fmt(ta)} became {_fmt(tb)}"]
    if "const" in b and a.get("const", _MISSING) != b["const"]:
        return [f"{where}: must now be {b['const']!r}"]
    if "enum" in b:
        allowed = a.get("enum", [a["const"]] if "const" in a else None)
        lost = None if allowed is None else [v for v in allowed if v not in b["enum"]]
        if allowed is None or lost:
            out.append(f"{where}: values {lost if lost else 'other than ' + str(b['enum'])}"
                       " are no longer accepted")
    for key in _UPPER:
        if key in b and (key not in a or a[key] > b[key]):
            out.append(f"{where}: {key} {a.get(key, 'none')} became {b[key]}")
    for key in _LOWER:
        if key in b and (key not in a or a[key] < b[key]):
            out.append(f"{where}: {key} {a.get(key, 'none')} became {b[key]}")
    for key in ("pattern", "format"):
        if key in b and a.get(key) != b[key]:
            out.append(f"{where}: {key} {a.get(key)!r} became {b[key]!r}")
    if a.get("default", _MISSING) != b.get("default", _MISSING) and "default" in a \
            and "default" in b:  # what an absent field means
        out.append(f"{where}: default {a['default']!r} became {b['default']!r}")
    if "items" in b:
        out += narrowings(a.get("items", {}), b["items"], f"{path}[]")
    if {"properties", "required", "additionalProperties"} & (set(a) | set(b)):
        out += _objects(a, b, path, where)
    for key in sorted((set(b) - _HANDLED) | {k for k in set(a) & set(b) - _HANDLED
                                             if a[k] != b[k]}):
        out.append(f"{where}: {key} changed (not checked in detail)")
    return out


def _objects(a: Schema, b: Schema, path: str, where: str) -> list[str]:
    out: list[str] = []
    pa, pb = a.get("properties", {}), b.get("properties", {})
    closed_b = b.get("additionalProperties") is False
    for name in sorted(set(b.get("required", ())) - set(a.get("required", ()))):
        out.append(f"{where}: field {name!r} became required" if name in pa
                   else f"{where}: required field {name!r} added")
    extra_b = b.get("additionalProperties", True)
    for name, sub in pa.items():
        at = f"{path}.{name}" if path else name
        if name in pb:
            out += narrowings(sub, pb[name], at)
        elif closed_b:
            out.append(f"{where}: field {name!r} removed")
        elif isinstance(extra_b, Mapping):
            out += narrowings(sub, extra_b, at)
    extra_a = a.get("additionalProperties", True)
    if closed_b and extra_a is not False:
        out.append(f"{where}: unknown fields are no longer accepted")
    elif isinstance(extra_b, Mapping):  # a map's values (dict[str, X]) must stay accepted
        out += narrowings({} if extra_a is True else extra_a, extra_b, f"{path}{{*}}")
    return out


_MISSING = object()


def _validating(s: Schema) -> Schema:
    """``s`` without annotations and ``x-`` extensions, which constrain nothing."""
    return {k: v for k, v in s.items() if k not in _ANNOTATIONS and not k.startswith("x-")}


def _options(s: Schema) -> list[Schema]:
    """The alternatives of an ``anyOf``/``oneOf`` (with the outer keywords), or [s]."""
    for key in ("anyOf", "oneOf"):
        if key in s:
            rest = {k: v for k, v in s.items() if k not in ("anyOf", "oneOf")}
            return [{**o, **rest} for o in s[key]]
    return [s]


def _types(s: Schema) -> set[str] | None:
    t = s.get("type")
    if t is None:
        if "const" in s or "enum" in s:
            values = [s["const"]] if "const" in s else s["enum"]
            return {_json_type(v) for v in values}
        return None
    return {t} if isinstance(t, str) else set(t)


def _widen(types: set[str]) -> set[str]:
    return types | {"integer"} if "number" in types else types


def _json_type(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    return "string" if isinstance(v, str) else "array" if isinstance(v, list) else "object"


def _fmt(types: set[str] | None) -> str:
    return "any" if types is None else "|".join(sorted(types))


def _describe(s: Schema) -> str:
    if "const" in s:
        return repr(s["const"])
    return _fmt(_types(s))


def check(kind: str, published: Schema, new: Schema) -> list[str]:
    """The breaking changes from ``published`` to ``new`` for a message of ``kind``.

    Args:
        kind: ``command``, ``query``, ``event`` or ``reply``.
        published: the schema as published, inlined.
        new: the schema the code generates now, inlined.
    """
    out: list[str] = []
    if kind in ("command", "query", "event"):
        out += [f"backward: {m}" for m in narrowings(published, new)]
    if kind in ("reply", "event"):
        out += [f"forward: {m}" for m in narrowings(new, published)]
    return out


def inline(s: Any, resolve: Resolver, depth: int = 0) -> Any:
    """``s`` with every ``$ref`` replaced by what ``resolve`` says it points to.

    Raises:
        ValueError: on a cycle of references (pydantic writes none for these models).
    """
    if depth > 50:
        raise ValueError("a $ref cycle")
    if isinstance(s, Mapping):
        if "$ref" in s:
            target = {**resolve(s["$ref"]), **{k: v for k, v in s.items() if k != "$ref"}}
            return inline(target, resolve, depth + 1)
        return {k: inline(v, resolve, depth + 1) for k, v in s.items()}
    if isinstance(s, list):
        return [inline(v, resolve, depth + 1) for v in s]
    return s
