"""One registry of every message: its kind, exchange, routing and consumers.

Routing (which exchange a message goes to, which queues bind where), validation
(which types the intake accepts) and the message catalog all read this table, so a
new message is declared exactly once, next to its schema.

Every event type has a fanout exchange of its own (``events.<Type>``): a consumer
queue is bound to exactly the events it handles, so no queue receives an event only
to drop it, and adding a consumer to an event is one word in its registration.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from messages.base import Message


class Kind(StrEnum):
    """What a message is: a request, a fact, a question, or an answer."""

    COMMAND = "command"
    QUERY = "query"
    EVENT = "event"
    REPLY = "reply"


class Consumer(StrEnum):
    """The durable queues Staybook consumes from; each has one consumer role."""

    INTAKE = "intake"
    SEARCH = "search"
    PAYMENT = "payment"
    NOTIFIER = "notifier"
    RESERVATIONS = "reservations"


@dataclass(frozen=True)
class MessageSpec:
    """Where a message travels and who handles it.

    Attributes:
        type: the wire name, also the class name.
        version: the schema version this node writes and accepts.
        kind: command, query, event or reply.
        cls: the pydantic payload model.
        exchange: logical exchange name (prefixed at declaration), "" for replies.
        consumers: queues that receive it.
        doc: first line of the class docstring, for the catalog.
    """

    type: str
    version: int
    kind: Kind
    cls: builtins.type[Message]
    exchange: str
    consumers: tuple[Consumer, ...]
    doc: str


Step = Callable[[dict[str, Any]], dict[str, Any]]
"""An upcaster's step: one version's payload (JSON data) to the next version's."""


@dataclass(frozen=True)
class Upcaster:
    """How a payload of an older version becomes the next version's.

    Attributes:
        type: the wire type name.
        version: the version it reads (it writes ``version + 1``).
        model: that version's schema, frozen as it was published: it validates the old
            payload (so errors name that version's fields) and goes into the contract.
        step: a pure function from that version's payload to the next version's.
    """

    type: str
    version: int
    model: builtins.type[Message]
    step: Step


_REGISTRY: dict[str, MessageSpec] = {}
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}

M = TypeVar("M", bound="type[Message]")

COMMANDS_EXCHANGE = "commands"
QUERIES_EXCHANGE = "queries"
DEAD_LETTER_EXCHANGE = "dlx"
UNROUTED_EXCHANGE = "unrouted"
EVENTS_PREFIX = "events."


def register(
    kind: Kind, *, exchange: str = "", consumers: tuple[Consumer, ...] = ()
) -> Callable[[M], M]:
    """Class decorator that records a payload model in the registry.

    Args:
        kind: command, query, event or reply.
        exchange: the logical exchange of a command or query (events always get
            their own, ``events.<Type>``; the argument is ignored for them).
        consumers: the queues that receive it.

    Raises:
        ValueError: if the type name is registered twice.
    """

    def wrap(cls: M) -> M:
        name = cls.__name__
        if name in _REGISTRY:
            raise ValueError(f"message type {name} registered twice")
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        _REGISTRY[name] = MessageSpec(
            type=name,
            version=cls.VERSION,
            kind=kind,
            cls=cls,
            exchange=f"{EVENTS_PREFIX}{name}" if kind is Kind.EVENT else exchange,
            consumers=consumers,
            doc=doc,
        )
        return cls

    return wrap


def upcaster(type_name: str, version: int, model: builtins.type[Message]) -> Callable[[Step], Step]:
    """Decorator that registers ``step`` as the upcaster of ``type_name`` ``version``.

    Args:
        type_name: a registered message type.
        version: the older version the step reads; a chain of steps must reach the
            type's current version.
        model: that version's published schema.

    Raises:
        ValueError: for an unknown type, a version not older than the current one, or a
            second step for the same version.
    """

    def wrap(step: Step) -> Step:
        spec = _REGISTRY.get(type_name)
        if spec is None or not 1 <= version < spec.version:
            raise ValueError(f"no upcaster can read {type_name} version {version}")
        if (type_name, version) in _UPCASTERS:
            raise ValueError(f"{type_name} version {version} has two upcasters")
        _UPCASTERS[(type_name, version)] = Upcaster(type_name, version, model, step)
        return step

    return wrap


def accepted_versions(spec: MessageSpec) -> tuple[int, ...]:
    """The versions of a type this node reads, oldest first: the current one, and every
    older one from which a chain of upcasters reaches it."""
    v = spec.version
    while (spec.type, v - 1) in _UPCASTERS:
        v -= 1
    return tuple(range(v, spec.version + 1))


def older_versions(spec: MessageSpec) -> list[Upcaster]:
    """The upcasters of every older version still read, oldest first."""
    return [_UPCASTERS[(spec.type, v)] for v in accepted_versions(spec)[:-1]]


def upcast(spec: MessageSpec, version: int, payload: Any) -> tuple[dict[str, Any], Any]:
    """A payload of an accepted older ``version``: as that version's model reads it,
    and as the current version's data.

    Each step's input is first validated against its version's model, so a bad old
    payload fails with that version's field names (pydantic's ``ValidationError``).

    Raises:
        KeyError: if ``version`` is not an accepted older version.
        pydantic.ValidationError: if the payload does not match its version's schema.
    """
    as_sent: dict[str, Any] | None = None
    while version < spec.version:
        up = _UPCASTERS[(spec.type, version)]
        data = up.model.model_validate(payload).model_dump(mode="json")
        as_sent = data if as_sent is None else as_sent
        payload = up.step(data)
        version += 1
    if as_sent is None:
        raise KeyError(f"{spec.type} version {version} is not older than the current one")
    return as_sent, payload


def spec_for(type_name: str) -> MessageSpec | None:
    """The spec of a wire type name, or None when unknown."""
    return _REGISTRY.get(type_name)


def spec_of(message: Message | type[Message]) -> MessageSpec:
    """The spec of a payload instance or class (always registered)."""
    cls = message if isinstance(message, type) else type(message)
    return _REGISTRY[cls.__name__]


def all_specs() -> Iterator[MessageSpec]:
    """Every registered message, in declaration order."""
    return iter(_REGISTRY.values())


def types_of(kind: Kind) -> list[str]:
    """The type names of one kind, in declaration order (what a tool may offer)."""
    return [s.type for s in _REGISTRY.values() if s.kind is kind]


def event_exchanges() -> list[str]:
    """Logical names of the fanout exchanges that carry events."""
    return sorted({s.exchange for s in _REGISTRY.values() if s.kind is Kind.EVENT})


def bindings() -> dict[Consumer, set[str]]:
    """Which logical exchanges each consumer queue binds to, derived from consumers."""
    out: dict[Consumer, set[str]] = {}
    for s in _REGISTRY.values():
        for c in s.consumers:
            out.setdefault(c, set()).add(s.exchange)
    return out


def catalog() -> list[dict[str, Any]]:
    """The message catalog as data: one row per message with its JSON schema."""
    return [
        {
            "type": s.type,
            "version": s.version,
            "accepts": list(accepted_versions(s)),
            "kind": s.kind.value,
            "exchange": s.exchange or "(reply_to)",
            "consumers": [c.value for c in s.consumers],
            "doc": s.doc,
            "schema": s.cls.model_json_schema(),
        }
        for s in _REGISTRY.values()
    ]
