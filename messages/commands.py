"""Commands (requests that one handler may accept or reject) and queries."""

from __future__ import annotations

from datetime import date

from pydantic import Field

from messages.base import ID_PATTERN, Message
from messages.registry import COMMANDS_EXCHANGE, QUERIES_EXCHANGE, Consumer, Kind, register

_ID = Field(pattern=ID_PATTERN)
_MONEY = Field(le=100_000_000)  # cents; the rules check > 0


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class AddApartment(Message):
    """An owner lists a new apartment (the envelope's apartment_id names it)."""

    owner_id: str = _ID
    city: str = Field(min_length=1, max_length=100)
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=2000)
    price_per_night: int = _MONEY
    capacity: int = Field(le=100)


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class RequestReservation(Message):
    """A guest asks for the nights from ``start`` up to (not including) ``end``."""

    reservation_id: str = _ID
    guest_id: str = _ID
    start: date
    end: date
    guests: int = Field(1, le=100)
    card_token: str = Field("tok_visa", pattern=r"^tok_[A-Za-z0-9_]{1,60}$")
    card_last4: str = Field("4242", pattern=r"^[0-9]{4}$")


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class AcceptReservation(Message):
    """The apartment's owner accepts a pending request."""

    reservation_id: str = _ID
    owner_id: str = _ID


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class RejectReservation(Message):
    """The apartment's owner turns a pending request down."""

    reservation_id: str = _ID
    owner_id: str = _ID


@register(Kind.QUERY, exchange=QUERIES_EXCHANGE, consumers=(Consumer.SEARCH,))
class SearchApartments(Message):
    """Which apartments match: city, price per night range, guests, free dates."""

    city: str | None = Field(None, max_length=100)
    min_price: int | None = Field(None, ge=0, le=100_000_000)
    max_price: int | None = Field(None, ge=0, le=100_000_000)
    guests: int = Field(1, ge=1, le=100)
    start: date | None = None
    end: date | None = None
    limit: int = Field(20, ge=1, le=100)
    offset: int = Field(0, ge=0, le=10_000)
