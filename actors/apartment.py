"""The apartment: its rules as pure functions, then the actor that runs them.

The apartment is the consistency boundary for its calendar: every request for it,
and every accept or reject of those requests, is decided here, one at a time, so two
accepted reservations can never overlap.

Rules (``decide``):

* ``AddApartment``: price > 0, capacity > 0, only once.
* ``RequestReservation``: the apartment exists; end > start; start not in the past;
  at most ``max_stay_nights``; guests <= capacity; a new reservation id; the nights
  must not overlap an accepted reservation (``already_taken``). The price is quoted
  now and kept with the request.
* ``AcceptReservation`` / ``RejectReservation``: only the owner; only a pending
  request. Accepting re-checks the dates, takes them (``DatesBooked``) and rejects
  every other pending request that overlaps (``already_taken``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar

from actors.base import EntityActor, EntityContext, ReportFailure
from messages import (
    AcceptReservation,
    AddApartment,
    ApartmentAdded,
    CommandRejected,
    DatesBooked,
    Envelope,
    Message,
    Reason,
    RejectReservation,
    RequestReservation,
    ReservationAccepted,
    ReservationRejected,
    ReservationRequested,
)


class StayStatus(StrEnum):
    """Where a request stands, as the apartment sees it."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Stay:
    """A request for the nights [start, end)."""

    reservation_id: str
    guest_id: str
    start: date
    end: date
    guests: int
    total_price: int
    card_token: str
    card_last4: str
    status: StayStatus = StayStatus.PENDING

    def overlaps(self, start: date, end: date) -> bool:
        """True when the nights [start, end) share a night with this stay."""
        return self.start < end and start < self.end


_EMPTY: Mapping[str, Stay] = MappingProxyType({})


@dataclass(frozen=True)
class Apartment:
    """An apartment's state; ``listed`` is False until ``ApartmentAdded``."""

    apartment_id: str
    listed: bool = False
    owner_id: str = ""
    city: str = ""
    title: str = ""
    description: str = ""
    price_per_night: int = 0
    capacity: int = 0
    stays: Mapping[str, Stay] = field(default_factory=lambda: _EMPTY)

    def accepted_overlapping(self, start: date, end: date) -> list[Stay]:
        """Accepted stays that share a night with [start, end)."""
        return [
            s for s in self.stays.values()
            if s.status is StayStatus.ACCEPTED and s.overlaps(start, end)
        ]


@dataclass(frozen=True)
class Rules:
    """Parameters of the rules that are not part of the state."""

    today: date
    max_stay_nights: int = 30


def decide(state: Apartment, command: Message, rules: Rules) -> list[Message]:
    """The events a command produces; a refusal is an event too. Pure."""
    match command:
        case AddApartment():
            return _add(state, command)
        case RequestReservation():
            return _request(state, command, rules)
        case AcceptReservation():
            return _accept(state, command)
        case RejectReservation():
            return _reject(state, command)
    raise TypeError(f"an apartment does not handle {type(command).__name__}")


def _refuse(command: Message, reason: Reason, detail: str, rid: str | None = None,
            actor: str | None = None) -> list[Message]:
    return [CommandRejected(command_type=type(command).__name__, reason=reason, detail=detail,
                            reservation_id=rid, actor_id=actor)]


def _add(state: Apartment, c: AddApartment) -> list[Message]:
    if state.listed:
        return _refuse(c, Reason.APARTMENT_EXISTS, "this apartment id is taken", actor=c.owner_id)
    if c.price_per_night <= 0:
        return _refuse(c, Reason.INVALID_PRICE, "price_per_night must be > 0", actor=c.owner_id)
    if c.capacity <= 0:
        return _refuse(c, Reason.INVALID_CAPACITY, "capacity must be > 0", actor=c.owner_id)
    return [ApartmentAdded(owner_id=c.owner_id, city=c.city, title=c.title,
                           description=c.description, price_per_night=c.price_per_night,
                           capacity=c.capacity)]


def _request(state: Apartment, c: RequestReservation, rules: Rules) -> list[Message]:
    def no(reason: Reason, detail: str) -> list[Message]:
        return [ReservationRejected(reservation_id=c.reservation_id, guest_id=c.guest_id,
                                    reason=reason, detail=detail)]

    if not state.listed:
        return no(Reason.UNKNOWN_APARTMENT, f"no apartment {state.apartment_id}")
    if c.reservation_id in state.stays:
        return _refuse(c, Reason.DUPLICATE_RESERVATION, "this reservation id is taken",
                       rid=c.reservation_id, actor=c.guest_id)
    if c.end <= c.start:
        return no(Reason.INVALID_DATES, "end must be after start")
    if c.start < rules.today:
        return no(Reason.INVALID_DATES, "start is in the past")
    nights = (c.end - c.start).days
    if nights > rules.max_stay_nights:
        return no(Reason.STAY_TOO_LONG, f"{nights} nights; at most {rules.max_stay_nights}")
    if c.guests <= 0 or c.guests > state.capacity:
        return no(Reason.TOO_MANY_GUESTS, f"{c.guests} guests; capacity {state.capacity}")
    if state.accepted_overlapping(c.start, c.end):
        return no(Reason.ALREADY_TAKEN, "those nights are already booked")
    return [ReservationRequested(
        reservation_id=c.reservation_id, guest_id=c.guest_id, owner_id=state.owner_id,
        start=c.start, end=c.end, guests=c.guests, total_price=nights * state.price_per_night,
        card_token=c.card_token, card_last4=c.card_last4)]


def _owned_pending(state: Apartment, c: AcceptReservation | RejectReservation
                   ) -> Stay | list[Message]:
    if not state.listed:
        return _refuse(c, Reason.UNKNOWN_APARTMENT, f"no apartment {state.apartment_id}",
                       rid=c.reservation_id, actor=c.owner_id)
    if c.owner_id != state.owner_id:
        return _refuse(c, Reason.NOT_OWNER, "only the apartment's owner may answer",
                       rid=c.reservation_id, actor=c.owner_id)
    stay = state.stays.get(c.reservation_id)
    if stay is None:
        return _refuse(c, Reason.UNKNOWN_RESERVATION, "no such request for this apartment",
                       rid=c.reservation_id, actor=c.owner_id)
    if stay.status is not StayStatus.PENDING:
        return _refuse(c, Reason.NOT_PENDING, f"the request is {stay.status.value}",
                       rid=c.reservation_id, actor=c.owner_id)
    return stay


def _accept(state: Apartment, c: AcceptReservation) -> list[Message]:
    stay = _owned_pending(state, c)
    if isinstance(stay, list):
        return stay
    if state.accepted_overlapping(stay.start, stay.end):
        return [ReservationRejected(reservation_id=stay.reservation_id, guest_id=stay.guest_id,
                                    reason=Reason.ALREADY_TAKEN,
                                    detail="those nights were booked meanwhile")]
    out: list[Message] = [
        ReservationAccepted(reservation_id=stay.reservation_id, guest_id=stay.guest_id,
                            owner_id=state.owner_id, start=stay.start, end=stay.end,
                            total_price=stay.total_price, card_token=stay.card_token,
                            card_last4=stay.card_last4),
        DatesBooked(reservation_id=stay.reservation_id, start=stay.start, end=stay.end),
    ]
    for other in state.stays.values():
        if (other.status is StayStatus.PENDING and other.reservation_id != stay.reservation_id
                and other.overlaps(stay.start, stay.end)):
            out.append(ReservationRejected(
                reservation_id=other.reservation_id, guest_id=other.guest_id,
                reason=Reason.ALREADY_TAKEN, detail=f"taken by {stay.reservation_id}"))
    return out


def _reject(state: Apartment, c: RejectReservation) -> list[Message]:
    stay = _owned_pending(state, c)
    if isinstance(stay, list):
        return stay
    return [ReservationRejected(reservation_id=stay.reservation_id, guest_id=stay.guest_id,
                                reason=Reason.REJECTED_BY_OWNER, detail="")]


def evolve(state: Apartment, event: Message) -> Apartment:
    """The state after an event. Pure; never fails (unknown facts change nothing)."""
    match event:
        case ApartmentAdded():
            return replace(state, listed=True, owner_id=event.owner_id, city=event.city,
                           title=event.title, description=event.description,
                           price_per_night=event.price_per_night, capacity=event.capacity)
        case ReservationRequested():
            stay = Stay(event.reservation_id, event.guest_id, event.start, event.end,
                        event.guests, event.total_price, event.card_token, event.card_last4)
            return _with_stay(state, stay)
        case ReservationAccepted():
            return _set_status(state, event.reservation_id, StayStatus.ACCEPTED)
        case ReservationRejected():
            return _set_status(state, event.reservation_id, StayStatus.REJECTED)
    return state


def _with_stay(state: Apartment, stay: Stay) -> Apartment:
    stays = dict(state.stays)
    stays[stay.reservation_id] = stay
    return replace(state, stays=MappingProxyType(stays))


def _set_status(state: Apartment, rid: str, status: StayStatus) -> Apartment:
    stay = state.stays.get(rid)
    if stay is None:
        return state
    return _with_stay(state, replace(stay, status=status))


class ApartmentActor(EntityActor[Apartment]):
    """One apartment's actor: its commands, one at a time, from the intake."""

    kind: ClassVar[str] = "apartment"
    consumer: ClassVar[str] = "intake"

    def __init__(self, entity_id: str, key: str, ctx: EntityContext,
                 report: ReportFailure) -> None:
        super().__init__(entity_id, key, ctx, report)

    def initial(self) -> Apartment:
        """An apartment not yet listed."""
        return Apartment(apartment_id=self.key)

    def decide_payloads(self, envelope: Envelope) -> list[Message]:
        """Apply the apartment rules with today's date."""
        rules = Rules(today=self.ctx.today(), max_stay_nights=self.ctx.max_stay_nights)
        return decide(self.state, envelope.payload, rules)

    def apply(self, state: Apartment, event: Message) -> Apartment:
        """Fold one event."""
        return evolve(state, event)

    def describe(self) -> dict[str, Any]:
        """A summary for introspection."""
        counts: dict[str, int] = {}
        for s in self.state.stays.values():
            counts[s.status.value] = counts.get(s.status.value, 0) + 1
        return {"listed": self.state.listed, "version": self.version, "stays": counts}
