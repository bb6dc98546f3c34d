"""Notifications: tell the right person about an event, once.

Each notification is a row unique on ``(event_id, recipient)`` written in the same
transaction as the inbox row and a ``NotificationSent`` event, so a redelivered event
never notifies anyone twice. The channel here is the stored log (a person's inbox in
the database); other channels (:mod:`actors.channels`, e.g. SMTP) deliver from the
stored rows, each row once.

Who hears what: the owner hears of a new request, a withdrawal and a cancellation;
the guest hears of acceptance, refusal (including "already taken"), confirmation,
payment failure, an owner's cancellation, a refund and expiry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

from sqlalchemy import Engine, select

from actors.handler import HandlerActor, Reaction
from messages import (
    CommandRejected,
    Envelope,
    Message,
    NotificationSent,
    Party,
    PaymentFailed,
    RefundIssued,
    RequestWithdrawn,
    ReservationAccepted,
    ReservationCancelled,
    ReservationConfirmed,
    ReservationExpired,
    ReservationRejected,
    ReservationRequested,
)
from store.tables import notifications_table
from store.writer import InsertRow


@dataclass(frozen=True)
class Note:
    """One message to one person."""

    recipient: str
    subject: str
    text: str


def notes_for(event: Message) -> list[Note]:
    """Who hears about an event, and what they are told. Pure."""
    match event:
        case ReservationRequested():
            return [Note(event.owner_id, "New booking request",
                         f"{event.guest_id} asks for {event.start} to {event.end} "
                         f"({event.guests} guests), {event.total_price / 100:.2f} in all. "
                         f"Reservation {event.reservation_id}.")]
        case ReservationAccepted():
            return [Note(event.guest_id, "Your request was accepted",
                         f"Reservation {event.reservation_id}: {event.start} to {event.end} "
                         f"is yours. Your card ending {event.card_last4} will be charged "
                         f"{event.total_price / 100:.2f}.")]
        case ReservationRejected():
            why = {"already_taken": "those dates are already taken",
                   "rejected_by_owner": "the owner declined",
                   "dates_blocked": "the owner is not renting those dates",
                   "apartment_delisted": "the apartment is no longer offered",
                   }.get(event.reason.value, event.reason.value)
            return [Note(event.guest_id, "Your request was not accepted",
                         f"Reservation {event.reservation_id}: {why}.")]
        case ReservationConfirmed():
            return [Note(event.guest_id, "Booking confirmed",
                         f"Reservation {event.reservation_id} is confirmed; "
                         f"{event.amount / 100:.2f} charged to the card ending "
                         f"{event.card_last4} ({event.charge_id}).")]
        case PaymentFailed():
            return [Note(event.guest_id, "Payment failed",
                         f"Reservation {event.reservation_id}: the charge of "
                         f"{event.amount / 100:.2f} failed ({event.reason}); the booking "
                         f"is cancelled and the dates released.")]
        case RequestWithdrawn():
            return [Note(event.owner_id, "Request withdrawn",
                         f"{event.guest_id} withdrew request {event.reservation_id}.")]
        case ReservationExpired():
            return [Note(event.guest_id, "Your request expired",
                         f"Reservation {event.reservation_id} ({event.start} to {event.end}) "
                         f"was not answered in time; nothing will be charged.")]
        case ReservationCancelled():
            return _cancellation_notes(event)
        case RefundIssued():
            return [Note(event.guest_id, "Refund issued",
                         f"Reservation {event.reservation_id}: {event.amount / 100:.2f} "
                         f"refunded to the card ending {event.card_last4} "
                         f"({event.refund_id}).")]
        case CommandRejected():
            return []
    return []


def _cancellation_notes(e: ReservationCancelled) -> list[Note]:
    what = f"Reservation {e.reservation_id} ({e.start} to {e.end})"
    if e.cancelled_by is Party.SYSTEM:
        # the guest already heard "payment failed"; the owner learns the dates are free
        return [Note(e.owner_id, "Reservation cancelled",
                     f"{what} was cancelled: the payment failed. The dates are free again.")]
    notes = [Note(e.owner_id, "Reservation cancelled",
                  f"{what} was cancelled by the {e.cancelled_by.value}. "
                  f"The dates are free again.")]
    if e.cancelled_by is Party.OWNER:
        notes.append(Note(e.guest_id, "Your reservation was cancelled",
                          f"{what} was cancelled by the owner; "
                          f"{e.refund_amount / 100:.2f} will be refunded."))
    return notes


class NotifierActor(HandlerActor):
    """Records one notification per (event, person) on the stored channel."""

    consumer: ClassVar[str] = "notifier"
    channel: ClassVar[str] = "stored"

    def react(self, envelope: Envelope) -> Reaction:
        """A notification row and a NotificationSent event per person told."""
        notes = notes_for(envelope.payload)
        if not notes:
            return Reaction()
        now = datetime.now(UTC)
        rows = []
        events: list[Message] = []
        for n in notes:
            nid = "n_" + hashlib.sha256(
                f"{envelope.message_id}:{n.recipient}".encode()).hexdigest()[:24]
            rows.append({"id": nid, "event_id": envelope.message_id,
                         "event_type": envelope.type, "recipient": n.recipient,
                         "channel": self.channel, "subject": n.subject, "text": n.text,
                         "created_at": now})
            events.append(NotificationSent(notification_id=nid, recipient=n.recipient,
                                           channel=self.channel, subject=n.subject,
                                           event_type=envelope.type,
                                           event_id=envelope.message_id))
        return Reaction(stream_id=f"notifications:{envelope.message_id}", expected_version=0,
                        events=events,
                        effects=[InsertRow(notifications_table, r) for r in rows])


def notifications(engine: Engine, recipient: str | None = None) -> list[dict[str, object]]:
    """The stored notifications, oldest first (for people, tests and the demo)."""
    q = select(notifications_table).order_by(notifications_table.c.created_at)
    if recipient is not None:
        q = q.where(notifications_table.c.recipient == recipient)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]
