"""Commands (requests that one handler may accept or reject) and queries."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import Field

from messages.base import ID_PATTERN, Request
from messages.registry import COMMANDS_EXCHANGE, QUERIES_EXCHANGE, Consumer, Kind, register

_ID = Field(pattern=ID_PATTERN)
_MONEY = Field(le=100_000_000, strict=True)  # cents; the rules check > 0
CURRENCY = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. EUR")
MAX_WAIT_MS = 30_000  # the longest a search may wait for its read model (SearchApartments)


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class AddApartment(Request):
    """An owner lists a new apartment (the envelope's apartment_id names it).

    Version 2 names the ``currency`` of ``price_per_night`` (ISO 4217); version 1, which
    had none, is read as euro cents (see ``messages/upcasters.py``).
    """

    VERSION = 2
    owner_id: str = _ID
    city: str = Field(min_length=1, max_length=100)
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=2000)
    price_per_night: int = _MONEY
    currency: str = CURRENCY
    capacity: int = Field(le=100, strict=True)


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class RequestReservation(Request):
    """A guest asks for the nights from ``start`` up to (not including) ``end``."""

    reservation_id: str = _ID
    guest_id: str = _ID
    start: date
    end: date
    guests: int = Field(1, le=100, strict=True)
    card_token: str = Field("tok_visa", pattern=r"^tok_[A-Za-z0-9_]{1,60}$")
    card_last4: str = Field("4242", pattern=r"^[0-9]{4}$")


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class AcceptReservation(Request):
    """The apartment's owner accepts a pending request."""

    reservation_id: str = _ID
    owner_id: str = _ID


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class RejectReservation(Request):
    """The apartment's owner turns a pending request down."""

    reservation_id: str = _ID
    owner_id: str = _ID


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class UpdateApartment(Request):
    """The owner changes price, description or capacity; pending requests keep their price."""

    owner_id: str = _ID
    price_per_night: int | None = Field(None, le=100_000_000, strict=True)
    description: str | None = Field(None, max_length=2000)
    capacity: int | None = Field(None, le=100, strict=True)


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class DelistApartment(Request):
    """The owner stops taking requests; pending ones are turned down."""

    owner_id: str = _ID


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class RelistApartment(Request):
    """The owner takes requests again."""

    owner_id: str = _ID


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class BlockDates(Request):
    """The owner takes the nights [start, end) off the market (``block_id`` names them)."""

    owner_id: str = _ID
    block_id: str = _ID
    start: date
    end: date


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class UnblockDates(Request):
    """The owner offers the nights of a block again."""

    owner_id: str = _ID
    block_id: str = _ID


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class WithdrawRequest(Request):
    """The guest takes back a request the owner has not answered yet."""

    reservation_id: str = _ID
    guest_id: str = _ID


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class CancelReservation(Request):
    """The guest or the owner cancels an accepted reservation (``by`` says who asks)."""

    reservation_id: str = _ID
    by: str = _ID


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class ExpireReservation(Request):
    """The expiry timer: a request unanswered past its deadline expires."""

    reservation_id: str = _ID


@register(Kind.COMMAND, exchange=COMMANDS_EXCHANGE, consumers=(Consumer.INTAKE,))
class CancelUnpaidReservation(Request):
    """The reservation process: the charge failed, so give the dates back."""

    reservation_id: str = _ID
    reason: str = Field(max_length=100)


@register(Kind.QUERY, exchange=QUERIES_EXCHANGE, consumers=(Consumer.SEARCH,))
class SearchApartments(Request):
    """Which apartments match: city, currency, price per night range, guests, free dates.

    Prices compare as amounts: give ``currency`` with a price range, or the range spans
    every currency's amounts alike.

    Search is eventually consistent. ``after`` (a ``CommandResult.position``) asks for
    an answer that includes that write: search waits up to ``wait_ms`` for its read
    model to apply it, then answers with ``caught_up`` saying whether it did.
    """

    city: str | None = Field(None, max_length=100)
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    min_price: int | None = Field(None, ge=0, le=100_000_000, strict=True)
    max_price: int | None = Field(None, ge=0, le=100_000_000, strict=True)
    guests: int = Field(1, ge=1, le=100, strict=True)
    start: date | None = None
    end: date | None = None
    sort: Literal["price_asc", "price_desc"] = "price_asc"
    limit: int = Field(20, ge=1, le=100, strict=True)
    offset: int = Field(0, ge=0, le=10_000, strict=True)
    after: int | None = Field(None, ge=1, le=2**63 - 1, strict=True)
    wait_ms: int = Field(5000, ge=0, le=MAX_WAIT_MS, strict=True)
