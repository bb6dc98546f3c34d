"""Staybook's messages: the envelope, every command, event and reply, and the registry.

Importing this package registers every message type.
"""

from messages.base import BadInput, Envelope, InvalidMessage, Message, new_id, utcnow
from messages.commands import (
    AcceptReservation,
    AddApartment,
    RejectReservation,
    RequestReservation,
    SearchApartments,
)
from messages.events import (
    ApartmentAdded,
    CommandRejected,
    DatesBooked,
    NotificationSent,
    PaymentFailed,
    PaymentSucceeded,
    Reason,
    ReservationAccepted,
    ReservationConfirmed,
    ReservationRejected,
    ReservationRequested,
)
from messages.registry import Consumer, Kind, MessageSpec, all_specs, spec_for, spec_of
from messages.replies import ApartmentHit, CommandResult, SearchResults, Status

__all__ = [
    "AcceptReservation",
    "AddApartment",
    "ApartmentAdded",
    "ApartmentHit",
    "BadInput",
    "CommandRejected",
    "CommandResult",
    "Consumer",
    "DatesBooked",
    "Envelope",
    "InvalidMessage",
    "Kind",
    "Message",
    "MessageSpec",
    "NotificationSent",
    "PaymentFailed",
    "PaymentSucceeded",
    "Reason",
    "RejectReservation",
    "RequestReservation",
    "ReservationAccepted",
    "ReservationConfirmed",
    "ReservationRejected",
    "ReservationRequested",
    "SearchApartments",
    "SearchResults",
    "Status",
    "all_specs",
    "new_id",
    "spec_for",
    "spec_of",
    "utcnow",
]
