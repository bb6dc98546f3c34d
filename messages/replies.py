"""Replies sent to a producer's ``reply_to`` with its ``correlation_id``."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Any

from pydantic import Field

from messages.base import Message
from messages.registry import Kind, register


class Status(StrEnum):
    """The outcome of a command: done, refused by the rules, or not understood."""

    OK = "ok"
    REJECTED = "rejected"
    ERROR = "error"


@register(Kind.REPLY)
class CommandResult(Message):
    """The outcome of one command, with the events it recorded."""

    status: Status
    reason: str | None = None
    detail: str | None = None
    events: list[dict[str, Any]] = Field(default_factory=list)


class ApartmentHit(Message):
    """One search result."""

    apartment_id: str
    city: str
    title: str
    price_per_night: int
    capacity: int


@register(Kind.REPLY)
class SearchResults(Message):
    """Apartments matching a SearchApartments query, in its price order, one page."""

    apartments: list[ApartmentHit]
    total: int
    start: date | None = None
    end: date | None = None
