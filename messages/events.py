"""Events: facts that happened. Immutable, any number of handlers, never rejected."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from pydantic import Field

from messages.base import Published
from messages.registry import Consumer, Kind, register


class Reason(StrEnum):
    """Why a request or a command was turned down."""

    ALREADY_TAKEN = "already_taken"
    REJECTED_BY_OWNER = "rejected_by_owner"
    INVALID_DATES = "invalid_dates"
    STAY_TOO_LONG = "stay_too_long"
    TOO_MANY_GUESTS = "too_many_guests"
    UNKNOWN_APARTMENT = "unknown_apartment"
    UNKNOWN_RESERVATION = "unknown_reservation"
    DUPLICATE_RESERVATION = "duplicate_reservation"
    APARTMENT_EXISTS = "apartment_exists"
    INVALID_PRICE = "invalid_price"
    INVALID_CAPACITY = "invalid_capacity"
    NOT_OWNER = "not_owner"
    NOT_PENDING = "not_pending"
    NOT_GUEST = "not_guest"
    NOT_ACCEPTED = "not_accepted"
    APARTMENT_DELISTED = "apartment_delisted"
    ALREADY_DELISTED = "already_delisted"
    NOT_DELISTED = "not_delisted"
    DATES_BLOCKED = "dates_blocked"
    BLOCK_EXISTS = "block_exists"
    UNKNOWN_BLOCK = "unknown_block"
    TOO_LATE = "too_late"
    NOT_DUE = "not_due"
    NOTHING_TO_CHANGE = "nothing_to_change"
    PAYMENT_NOT_FAILED = "payment_not_failed"


class Party(StrEnum):
    """Who ended a reservation."""

    GUEST = "guest"
    OWNER = "owner"
    SYSTEM = "system"


@register(Kind.EVENT, consumers=(Consumer.SEARCH,))
class ApartmentAdded(Published):
    """An apartment was listed.

    Version 2 records the ``currency`` of its prices; a stored version 1 loads as euro.
    """

    VERSION = 2
    owner_id: str
    city: str
    title: str
    description: str = ""
    price_per_night: int
    currency: str
    capacity: int


@register(
    Kind.EVENT,
    consumers=(Consumer.NOTIFIER,),
)
class ReservationRequested(Published):
    """A guest's request is pending the owner's answer, at the price quoted now."""

    reservation_id: str
    guest_id: str
    owner_id: str
    start: date
    end: date
    guests: int
    total_price: int
    card_token: str
    card_last4: str
    expires_at: datetime | None = None


@register(
    Kind.EVENT,
    consumers=(Consumer.NOTIFIER,),
)
class ReservationRejected(Published):
    """A request was turned down (by the rules or by the owner); the reason says why."""

    reservation_id: str
    guest_id: str
    reason: Reason
    detail: str = ""


@register(
    Kind.EVENT,
    consumers=(Consumer.NOTIFIER, Consumer.PAYMENT, Consumer.RESERVATIONS),
)
class ReservationAccepted(Published):
    """The owner accepted; the card is to be charged ``total_price``."""

    reservation_id: str
    guest_id: str
    owner_id: str
    start: date
    end: date
    total_price: int
    card_token: str
    card_last4: str


@register(Kind.EVENT, consumers=(Consumer.SEARCH,))
class DatesBooked(Published):
    """The nights [start, end) of an apartment are taken by a reservation."""

    reservation_id: str
    start: date
    end: date


@register(Kind.EVENT)
class CommandRejected(Published):
    """A command changed nothing (wrong caller, wrong state); recorded for audit."""

    command_type: str
    reason: Reason
    detail: str = ""
    reservation_id: str | None = None
    actor_id: str | None = None


@register(
    Kind.EVENT,
    consumers=(Consumer.RESERVATIONS,),
)
class PaymentSucceeded(Published):
    """The guest's card was charged once for the reservation."""

    reservation_id: str
    guest_id: str
    amount: int
    charge_id: str
    card_last4: str


@register(
    Kind.EVENT,
    consumers=(Consumer.NOTIFIER, Consumer.RESERVATIONS),
)
class PaymentFailed(Published):
    """The charge was declined or failed; nothing was taken from the card."""

    reservation_id: str
    guest_id: str
    amount: int
    reason: str


@register(Kind.EVENT, consumers=(Consumer.NOTIFIER,))
class ReservationConfirmed(Published):
    """Accepted and paid: the reservation process finished successfully."""

    reservation_id: str
    guest_id: str
    amount: int
    charge_id: str
    card_last4: str


@register(Kind.EVENT, consumers=(Consumer.SEARCH,))
class ApartmentUpdated(Published):
    """The owner changed the apartment; these are its values now."""

    owner_id: str
    price_per_night: int
    description: str
    capacity: int


@register(Kind.EVENT, consumers=(Consumer.SEARCH,))
class ApartmentDelisted(Published):
    """The apartment takes no requests and is not offered."""

    owner_id: str


@register(Kind.EVENT, consumers=(Consumer.SEARCH,))
class ApartmentRelisted(Published):
    """The apartment takes requests and is offered again."""

    owner_id: str


@register(Kind.EVENT, consumers=(Consumer.SEARCH,))
class DatesBlocked(Published):
    """The owner took the nights [start, end) off the market."""

    block_id: str
    start: date
    end: date


@register(Kind.EVENT, consumers=(Consumer.SEARCH,))
class DatesUnblocked(Published):
    """The nights of a block are offered again."""

    block_id: str
    start: date
    end: date


@register(
    Kind.EVENT,
    consumers=(Consumer.NOTIFIER,),
)
class RequestWithdrawn(Published):
    """The guest took back a pending request."""

    reservation_id: str
    guest_id: str
    owner_id: str


@register(
    Kind.EVENT,
    consumers=(Consumer.NOTIFIER,),
)
class ReservationExpired(Published):
    """The owner did not answer in time; the request lapsed."""

    reservation_id: str
    guest_id: str
    owner_id: str
    start: date
    end: date


@register(
    Kind.EVENT,
    consumers=(Consumer.NOTIFIER, Consumer.PAYMENT, Consumer.RESERVATIONS),
)
class ReservationCancelled(Published):
    """An accepted reservation ended early; ``refund_amount`` is owed back (at most)."""

    reservation_id: str
    guest_id: str
    owner_id: str
    cancelled_by: Party
    reason: str
    start: date
    end: date
    total_price: int
    refund_amount: int
    card_last4: str = ""


@register(Kind.EVENT, consumers=(Consumer.SEARCH,))
class DatesReleased(Published):
    """The nights [start, end) a reservation held are free again."""

    reservation_id: str
    start: date
    end: date


@register(
    Kind.EVENT,
    consumers=(Consumer.NOTIFIER, Consumer.RESERVATIONS),
)
class RefundIssued(Published):
    """Money went back to the guest's card, once per reservation."""

    reservation_id: str
    guest_id: str
    amount: int
    refund_id: str
    card_last4: str


@register(Kind.EVENT, consumers=(Consumer.RESERVATIONS,))
class RefundFailed(Published):
    """The refund did not go through after bounded retries; an operator must act."""

    reservation_id: str
    guest_id: str
    amount: int
    reason: str


@register(Kind.EVENT)
class NotificationSent(Published):
    """A person was told about an event, once, on one channel."""

    notification_id: str
    recipient: str
    channel: str
    subject: str
    event_type: str
    event_id: str = Field(max_length=100)
