"""The reservation: its lifecycle as pure functions over a frozen state.

A reservation's stream (``reservation:<id>``) follows one reservation from its
acceptance to its end. The apartment decides everything that touches its calendar
(requests, rejections, withdrawals and expiry never reach this process: its queue is
bound only to what it acts on, so the many requests that are never accepted cost no
actor); the reservation runs the process that follows acceptance:
accepted -> charged -> confirmed, or accepted -> payment failed -> compensated. It
reacts to events from the apartment and from the payment actor, so it works
whatever order they arrive in.

Compensation: after ``PaymentFailed`` the process sends the apartment one
``CancelUnpaidReservation`` command. It is recorded in this stream like any decision
and published from the outbox to the commands exchange (routed by apartment), so the
apartment stays the only writer of its calendar and the command is sent exactly
once per failure, even across crashes and redeliveries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from messages import (
    CancelUnpaidReservation,
    Message,
    PaymentFailed,
    PaymentSucceeded,
    RefundFailed,
    RefundIssued,
    RequestWithdrawn,
    ReservationAccepted,
    ReservationCancelled,
    ReservationConfirmed,
    ReservationExpired,
    ReservationRejected,
    ReservationRequested,
)


class Status(StrEnum):
    """Where the reservation stands."""

    NEW = "new"
    REQUESTED = "requested"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    ACCEPTED = "accepted"
    CONFIRMED = "confirmed"
    PAYMENT_FAILED = "payment_failed"
    CANCELLED = "cancelled"


_OPEN = (Status.NEW, Status.REQUESTED)
_OVER = (Status.CANCELLED, Status.PAYMENT_FAILED)


@dataclass(frozen=True)
class Reservation:
    """A reservation's process state."""

    reservation_id: str
    status: Status = Status.NEW
    guest_id: str = ""
    amount: int = 0
    card_last4: str = ""
    accepted: bool = False
    charge_id: str | None = None
    payment_failed: str | None = None
    compensation_sent: bool = False
    cancelled_by: str | None = None
    refunded: int = 0
    refund_failed: str | None = None


def decide(state: Reservation, event: Message) -> list[Message]:
    """What the process does next after ``event``. Pure.

    It confirms once it has seen both the acceptance and the successful charge,
    whichever came first, and only once, unless the reservation ended meanwhile. After
    a failed charge it asks the apartment, once, to give the dates back.
    """
    after = evolve(state, event)
    if (after.accepted and after.charge_id is not None
            and state.status is not Status.CONFIRMED and after.status not in _OVER):
        return [ReservationConfirmed(reservation_id=after.reservation_id,
                                     guest_id=after.guest_id, amount=after.amount,
                                     charge_id=after.charge_id, card_last4=after.card_last4)]
    if (isinstance(event, PaymentFailed) and not state.compensation_sent
            and state.status is not Status.CANCELLED):
        return [CancelUnpaidReservation(reservation_id=state.reservation_id,
                                        reason=event.reason)]
    return []


def evolve(state: Reservation, event: Message) -> Reservation:
    """The state after an event. Pure; never fails."""
    match event:
        case ReservationRequested():
            if state.status is Status.NEW:
                return replace(state, status=Status.REQUESTED, guest_id=event.guest_id,
                               amount=event.total_price, card_last4=event.card_last4)
            return state
        case ReservationRejected():
            if state.status in _OPEN:
                return replace(state, status=Status.REJECTED, guest_id=event.guest_id)
            return state
        case RequestWithdrawn():
            if state.status in _OPEN:
                return replace(state, status=Status.WITHDRAWN, guest_id=event.guest_id)
            return state
        case ReservationExpired():
            if state.status in _OPEN:
                return replace(state, status=Status.EXPIRED, guest_id=event.guest_id)
            return state
        case ReservationAccepted():
            status = state.status
            if status in _OPEN:
                status = Status.ACCEPTED
            return replace(state, status=status, accepted=True, guest_id=event.guest_id,
                           amount=event.total_price, card_last4=event.card_last4)
        case PaymentSucceeded():
            return replace(state, charge_id=event.charge_id, card_last4=event.card_last4,
                           amount=event.amount, guest_id=event.guest_id)
        case PaymentFailed():
            status = state.status if state.status is Status.CANCELLED else Status.PAYMENT_FAILED
            return replace(state, status=status, payment_failed=event.reason)
        case CancelUnpaidReservation():
            return replace(state, compensation_sent=True)
        case ReservationCancelled():
            return replace(state, status=Status.CANCELLED,
                           cancelled_by=event.cancelled_by.value)
        case RefundIssued():
            return replace(state, refunded=event.amount)
        case RefundFailed():
            return replace(state, refund_failed=event.reason)
        case ReservationConfirmed():
            return replace(state, status=Status.CONFIRMED)
    return state
