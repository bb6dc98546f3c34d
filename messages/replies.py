"""Replies sent to a producer's ``reply_to`` with its ``correlation_id``."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Any

from pydantic import Field

from messages.base import BadInput, Envelope, Published
from messages.events import Reason
from messages.registry import Kind, register

IDEMPOTENCY_CONFLICT = "idempotency_conflict"
"""A used message_id with a different request (actors/base.py)."""
POISON = "poison"
"""A command that kept crashing its actor (actors/poison.py)."""
NODE_REASONS = (IDEMPOTENCY_CONFLICT, POISON)
"""Error reasons a node gives besides the bad-input ones."""


class Status(StrEnum):
    """The outcome of a command: done, refused by the rules, or not understood."""

    OK = "ok"
    REJECTED = "rejected"
    ERROR = "error"


@register(Kind.REPLY)
class CommandResult(Published):
    """The outcome of one command, with the events it recorded.

    ``position`` is the store position of the last event the command recorded (of the
    stream's newest event when it recorded none): pass it as ``SearchApartments.after``
    to search a read model that includes this write. None when nothing was recorded
    (the command was refused unread, or its stream is empty).
    """

    status: Status
    reason: str | None = Field(None, description=(
        "Why, unless ok: a rule's reason when rejected, the message's fault when error. "
        "New reasons may appear: act on status, show an unknown reason as it is."),
        json_schema_extra={"x-rejected-reasons": [r.value for r in Reason],
                           "x-error-reasons": [*(r.value for r in BadInput), *NODE_REASONS]})
    detail: str | None = None
    events: list[dict[str, Any]] = Field(default_factory=list, description=(
        "The events it recorded, in order: each one's type, version and message_id, and "
        "the fields of that event's payload (its schema: that version's message)."),
        json_schema_extra={"items": {"type": "object", "required": ["type", "version",
                                                                      "message_id"],
                                     "properties": {"type": {"type": "string"},
                                                    "version": {"type": "integer"},
                                                    "message_id": {"type": "string"}}}})
    # The last field: with_position splices it into the serialized reply.
    position: int | None = None


_NO_POSITION = b',"position":null}}'


def with_position(reply: bytes, position: int | None) -> bytes:
    """A serialized ``CommandResult`` envelope, its ``position`` set.

    The writer calls this once per command, on its own thread, after the events are
    inserted: the common case is a splice of the envelope's last bytes (``position`` is
    the payload's last field and the payload the envelope's), not a parse and
    re-serialization on the store's busiest thread. Anything else is parsed; a reply
    that is not a ``CommandResult`` comes back unchanged.
    """
    if position is None:
        return reply
    if reply.endswith(_NO_POSITION):
        return b"%s,\"position\":%d}}" % (reply[:-len(_NO_POSITION)], position)
    env = Envelope.from_json(reply, max_bytes=1 << 30)
    if not isinstance(env.payload, CommandResult):
        return reply
    payload = env.payload.model_copy(update={"position": position})
    return env.model_copy(update={"payload": payload}).to_json()


class ApartmentHit(Published):
    """One search result."""

    apartment_id: str
    city: str
    title: str
    price_per_night: int
    currency: str  # added in place (docs/messages.md): a reader ignores what it does not know
    capacity: int


@register(Kind.REPLY)
class SearchResults(Published):
    """Apartments matching a SearchApartments query, in its price order, one page.

    ``caught_up`` answers a query's ``after``: True when the read model had applied
    every search event of that write's stream up to it, False when it had not within
    ``wait_ms`` (or too many queries were already waiting): the hits are then the read
    model as it stood and may miss that write, so search again later or show them as
    possibly stale. None when the query gave no ``after``.

    ``total`` is exact up to 1,000 matches (or up to the query's ``offset + limit``,
    when that is more). Past it, counting every match of a large city would cost more
    than the page itself, so ``total`` is that bound and ``total_exact`` is False:
    show "1,000+". Paging is unaffected.
    """

    apartments: list[ApartmentHit]
    total: int
    total_exact: bool = True
    start: date | None = None
    end: date | None = None
    caught_up: bool | None = None
