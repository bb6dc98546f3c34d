"""The apartment's rules, as pure functions over a frozen state.

The apartment is the consistency boundary for its calendar: every request for it,
every answer, cancellation, block and expiry is decided here, one at a time, so two
accepted reservations (or a reservation and a block) can never overlap.

Rules (``decide``); a refusal is an event (``ReservationRejected`` for a request,
``CommandRejected`` otherwise) and changes no state:

* ``AddApartment``: price > 0, capacity > 0, only once.
* ``UpdateApartment`` (owner): price > 0, capacity > 0; pending requests keep the
  price they were quoted.
* ``DelistApartment`` / ``RelistApartment`` (owner): while delisted no request is
  taken (``apartment_delisted``); delisting turns every pending request down.
* ``BlockDates`` / ``UnblockDates`` (owner): blocked nights are not bookable
  (``dates_blocked``); a block may not cover accepted nights (``already_taken``);
  blocking turns overlapping pending requests down.
* ``RequestReservation``: listed and not delisted; end > start; start not in the past;
  at most ``max_stay_nights``; guests <= capacity; a new reservation id; nights free
  of accepted stays (``already_taken``) and blocks. The price is quoted now and kept;
  the request expires ``request_ttl`` from now.
* ``AcceptReservation`` / ``RejectReservation`` (owner; pending only). Accepting
  re-checks the nights, takes them (``DatesBooked``) and turns down every other
  pending request that overlaps.
* ``WithdrawRequest`` (guest; pending only).
* ``CancelReservation`` (the guest or the owner; accepted only; before the first
  night): releases the nights (``DatesReleased``) with a refund by the
  :class:`CancellationPolicy`.
* ``ExpireReservation`` (the timer): a pending request past its deadline expires;
  early is refused (``not_due``); an answered one is left alone.
* ``CancelUnpaidReservation`` (the reservation process after ``PaymentFailed``): an
  accepted reservation is cancelled with reason ``payment_failed`` and its nights
  released, only when a failed charge is on record (``payment_not_failed``
  otherwise, so nobody can cancel someone else's booking with it). Letting the
  process send the apartment a command (through its outbox) keeps the apartment the
  only writer of its calendar.

Owner-only commands from anyone else are refused ``not_owner``; guest actions from
anyone else ``not_guest``; the refusal is recorded and logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

import immutables

from messages import (
    AcceptReservation,
    AddApartment,
    ApartmentAdded,
    ApartmentDelisted,
    ApartmentRelisted,
    ApartmentUpdated,
    BlockDates,
    CancelReservation,
    CancelUnpaidReservation,
    CommandRejected,
    DatesBlocked,
    DatesBooked,
    DatesReleased,
    DatesUnblocked,
    DelistApartment,
    ExpireReservation,
    Message,
    Party,
    Reason,
    RejectReservation,
    RelistApartment,
    RequestReservation,
    RequestWithdrawn,
    ReservationAccepted,
    ReservationCancelled,
    ReservationExpired,
    ReservationRejected,
    ReservationRequested,
    UnblockDates,
    UpdateApartment,
    WithdrawRequest,
)
from rules.intervals import Intervals
from rules.policy import CancellationPolicy
from rules.stays import NO_STAYS, Stay, Stays, StayStatus

__all__ = ["UNAUTHORIZED", "Apartment", "Block", "Rules", "Stay", "StayStatus", "Stays",
           "decide", "evolve"]

PAYMENT_FAILED = "payment_failed"
# Refusals that mean someone tried what is not theirs: the actor logs them.
UNAUTHORIZED = (Reason.NOT_OWNER, Reason.NOT_GUEST, Reason.PAYMENT_NOT_FAILED)


@dataclass(frozen=True)
class Block:
    """Nights [start, end) the owner took off the market."""

    block_id: str
    start: date
    end: date

    def overlaps(self, start: date, end: date) -> bool:
        """True when the nights [start, end) share a night with this block."""
        return self.start < end and start < self.end


_EMPTY: immutables.Map[str, Stay] = immutables.Map()
_NO_BLOCKS: immutables.Map[str, Block] = immutables.Map()
_NO_DATES = Intervals()


@dataclass(frozen=True)
class Apartment:
    """An apartment's state; ``listed`` is False until ``ApartmentAdded``.

    Besides ``stays`` (every request) and ``blocks``, it keeps indexes that
    :func:`evolve` maintains, so that no command costs as much as the apartment's
    history: the pending requests by id, and the accepted stays, pending requests and
    blocks by date (:class:`Intervals`: overlaps in O(log n + k)). Requests that were
    answered, withdrawn or expired are only in ``stays``.
    """

    apartment_id: str
    listed: bool = False
    delisted: bool = False
    owner_id: str = ""
    city: str = ""
    title: str = ""
    description: str = ""
    price_per_night: int = 0
    currency: str = ""
    capacity: int = 0
    stays: Stays = NO_STAYS
    blocks: immutables.Map[str, Block] = field(default_factory=lambda: _NO_BLOCKS)
    pending: immutables.Map[str, Stay] = field(default_factory=lambda: _EMPTY)
    booked_dates: Intervals = _NO_DATES
    pending_dates: Intervals = _NO_DATES
    blocked_dates: Intervals = _NO_DATES

    def accepted_overlapping(self, start: date, end: date) -> list[Stay]:
        """Accepted stays that share a night with [start, end), by date."""
        return [self.stays[rid] for rid in self.booked_dates.overlapping(start, end)]

    def pending_overlapping(self, start: date, end: date) -> list[Stay]:
        """Pending requests that share a night with [start, end), by date."""
        return [self.pending[rid] for rid in self.pending_dates.overlapping(start, end)]

    def blocked(self, start: date, end: date) -> bool:
        """True when a block covers any night of [start, end)."""
        return next(self.blocked_dates.overlapping(start, end), None) is not None

    def pending_by_date(self) -> list[Stay]:
        """Every pending request, by date."""
        return [self.pending[rid] for _s, _e, rid in self.pending_dates]


@dataclass(frozen=True)
class Rules:
    """Parameters of the rules that are not part of the state.

    ``now`` dates expiry deadlines; without it, requests do not expire.
    ``failed_payments`` holds the reservations whose charge is recorded as failed
    (the actor reads them from the payment streams), the proof a
    ``CancelUnpaidReservation`` needs.
    """

    today: date
    max_stay_nights: int = 30
    now: datetime | None = None
    request_ttl: timedelta = timedelta(hours=24)
    policy: CancellationPolicy = field(default_factory=CancellationPolicy)
    failed_payments: frozenset[str] = frozenset()


def decide(state: Apartment, command: Message, rules: Rules) -> list[Message]:
    """The events a command produces; a refusal is an event too. Pure."""
    match command:
        case AddApartment():
            return _add(state, command)
        case UpdateApartment():
            return _update(state, command)
        case DelistApartment():
            return _delist(state, command)
        case RelistApartment():
            return _relist(state, command)
        case BlockDates():
            return _block(state, command, rules)
        case UnblockDates():
            return _unblock(state, command)
        case RequestReservation():
            return _request(state, command, rules)
        case AcceptReservation():
            return _accept(state, command)
        case RejectReservation():
            return _reject(state, command)
        case WithdrawRequest():
            return _withdraw(state, command)
        case CancelReservation():
            return _cancel(state, command, rules)
        case ExpireReservation():
            return _expire(state, command, rules)
        case CancelUnpaidReservation():
            return _cancel_unpaid(state, command, rules)
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
                           currency=c.currency, capacity=c.capacity)]


def _owner_check(state: Apartment, c: Message, owner_id: str,
                 rid: str | None = None) -> list[Message] | None:
    """A refusal when the apartment is unknown or ``owner_id`` is not its owner."""
    if not state.listed:
        return _refuse(c, Reason.UNKNOWN_APARTMENT, f"no apartment {state.apartment_id}",
                       rid=rid, actor=owner_id)
    if owner_id != state.owner_id:
        return _refuse(c, Reason.NOT_OWNER, "only the apartment's owner may do this",
                       rid=rid, actor=owner_id)
    return None


def _update(state: Apartment, c: UpdateApartment) -> list[Message]:
    if (no := _owner_check(state, c, c.owner_id)) is not None:
        return no
    if c.price_per_night is None and c.description is None and c.capacity is None:
        return _refuse(c, Reason.NOTHING_TO_CHANGE, "give a price, description or capacity",
                       actor=c.owner_id)
    if c.price_per_night is not None and c.price_per_night <= 0:
        return _refuse(c, Reason.INVALID_PRICE, "price_per_night must be > 0", actor=c.owner_id)
    if c.capacity is not None and c.capacity <= 0:
        return _refuse(c, Reason.INVALID_CAPACITY, "capacity must be > 0", actor=c.owner_id)
    return [ApartmentUpdated(
        owner_id=state.owner_id,
        price_per_night=c.price_per_night if c.price_per_night is not None
        else state.price_per_night,
        description=c.description if c.description is not None else state.description,
        capacity=c.capacity if c.capacity is not None else state.capacity)]


def _delist(state: Apartment, c: DelistApartment) -> list[Message]:
    if (no := _owner_check(state, c, c.owner_id)) is not None:
        return no
    if state.delisted:
        return _refuse(c, Reason.ALREADY_DELISTED, "the apartment is delisted",
                       actor=c.owner_id)
    out: list[Message] = [ApartmentDelisted(owner_id=state.owner_id)]
    for stay in state.pending_by_date():
        out.append(ReservationRejected(
            reservation_id=stay.reservation_id, guest_id=stay.guest_id,
            reason=Reason.APARTMENT_DELISTED, detail="the owner delisted the apartment"))
    return out


def _relist(state: Apartment, c: RelistApartment) -> list[Message]:
    if (no := _owner_check(state, c, c.owner_id)) is not None:
        return no
    if not state.delisted:
        return _refuse(c, Reason.NOT_DELISTED, "the apartment is listed", actor=c.owner_id)
    return [ApartmentRelisted(owner_id=state.owner_id)]


def _block(state: Apartment, c: BlockDates, rules: Rules) -> list[Message]:
    if (no := _owner_check(state, c, c.owner_id)) is not None:
        return no
    if c.block_id in state.blocks:
        return _refuse(c, Reason.BLOCK_EXISTS, "this block id is taken", actor=c.owner_id)
    if c.end <= c.start:
        return _refuse(c, Reason.INVALID_DATES, "end must be after start", actor=c.owner_id)
    if c.end <= rules.today:
        return _refuse(c, Reason.INVALID_DATES, "those nights are in the past",
                       actor=c.owner_id)
    if taken := state.accepted_overlapping(c.start, c.end):
        return _refuse(c, Reason.ALREADY_TAKEN,
                       "booked by " + ", ".join(s.reservation_id for s in taken)
                       + "; cancel first", actor=c.owner_id)
    out: list[Message] = [DatesBlocked(block_id=c.block_id, start=c.start, end=c.end)]
    for stay in state.pending_overlapping(c.start, c.end):
        out.append(ReservationRejected(
            reservation_id=stay.reservation_id, guest_id=stay.guest_id,
            reason=Reason.DATES_BLOCKED, detail="the owner blocked those nights"))
    return out


def _unblock(state: Apartment, c: UnblockDates) -> list[Message]:
    if (no := _owner_check(state, c, c.owner_id)) is not None:
        return no
    block = state.blocks.get(c.block_id)
    if block is None:
        return _refuse(c, Reason.UNKNOWN_BLOCK, f"no block {c.block_id}", actor=c.owner_id)
    return [DatesUnblocked(block_id=block.block_id, start=block.start, end=block.end)]


def _request(state: Apartment, c: RequestReservation, rules: Rules) -> list[Message]:
    def no(reason: Reason, detail: str) -> list[Message]:
        return [ReservationRejected(reservation_id=c.reservation_id, guest_id=c.guest_id,
                                    reason=reason, detail=detail)]

    if not state.listed:
        return no(Reason.UNKNOWN_APARTMENT, f"no apartment {state.apartment_id}")
    if c.reservation_id in state.stays:
        return _refuse(c, Reason.DUPLICATE_RESERVATION, "this reservation id is taken",
                       rid=c.reservation_id, actor=c.guest_id)
    if state.delisted:
        return no(Reason.APARTMENT_DELISTED, "the apartment takes no requests now")
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
    if state.blocked(c.start, c.end):
        return no(Reason.DATES_BLOCKED, "the owner blocked some of those nights")
    expires = None if rules.now is None else rules.now + rules.request_ttl
    return [ReservationRequested(
        reservation_id=c.reservation_id, guest_id=c.guest_id, owner_id=state.owner_id,
        start=c.start, end=c.end, guests=c.guests, total_price=nights * state.price_per_night,
        card_token=c.card_token, card_last4=c.card_last4, expires_at=expires)]


def _owned_pending(state: Apartment, c: AcceptReservation | RejectReservation
                   ) -> Stay | list[Message]:
    if (no := _owner_check(state, c, c.owner_id, c.reservation_id)) is not None:
        return no
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
    if state.blocked(stay.start, stay.end):
        return [ReservationRejected(reservation_id=stay.reservation_id, guest_id=stay.guest_id,
                                    reason=Reason.DATES_BLOCKED,
                                    detail="the owner blocked some of those nights")]
    out: list[Message] = [
        ReservationAccepted(reservation_id=stay.reservation_id, guest_id=stay.guest_id,
                            owner_id=state.owner_id, start=stay.start, end=stay.end,
                            total_price=stay.total_price, card_token=stay.card_token,
                            card_last4=stay.card_last4),
        DatesBooked(reservation_id=stay.reservation_id, start=stay.start, end=stay.end),
    ]
    for other in state.pending_overlapping(stay.start, stay.end):
        if other.reservation_id != stay.reservation_id:
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


def _withdraw(state: Apartment, c: WithdrawRequest) -> list[Message]:
    stay = state.stays.get(c.reservation_id)
    if stay is None:
        return _refuse(c, Reason.UNKNOWN_RESERVATION, "no such request for this apartment",
                       rid=c.reservation_id, actor=c.guest_id)
    if c.guest_id != stay.guest_id:
        return _refuse(c, Reason.NOT_GUEST, "only the guest who asked may withdraw",
                       rid=c.reservation_id, actor=c.guest_id)
    if stay.status is not StayStatus.PENDING:
        return _refuse(c, Reason.NOT_PENDING, f"the request is {stay.status.value}",
                       rid=c.reservation_id, actor=c.guest_id)
    return [RequestWithdrawn(reservation_id=stay.reservation_id, guest_id=stay.guest_id,
                             owner_id=state.owner_id)]


def _cancelled(state: Apartment, stay: Stay, by: Party, reason: str,
               rules: Rules) -> list[Message]:
    refund = rules.policy.refund(stay.total_price, by=by,
                                 days_before=(stay.start - rules.today).days)
    return [
        ReservationCancelled(reservation_id=stay.reservation_id, guest_id=stay.guest_id,
                             owner_id=state.owner_id, cancelled_by=by, reason=reason,
                             start=stay.start, end=stay.end, total_price=stay.total_price,
                             refund_amount=refund, card_last4=stay.card_last4),
        DatesReleased(reservation_id=stay.reservation_id, start=stay.start, end=stay.end),
    ]


def _cancel(state: Apartment, c: CancelReservation, rules: Rules) -> list[Message]:
    stay = state.stays.get(c.reservation_id)
    if stay is None:
        return _refuse(c, Reason.UNKNOWN_RESERVATION, "no such reservation for this apartment",
                       rid=c.reservation_id, actor=c.by)
    if c.by == stay.guest_id:
        by = Party.GUEST
    elif c.by == state.owner_id:
        by = Party.OWNER
    else:
        return _refuse(c, Reason.NOT_GUEST, "only the guest or the owner may cancel",
                       rid=c.reservation_id, actor=c.by)
    if stay.status is not StayStatus.ACCEPTED:
        return _refuse(c, Reason.NOT_ACCEPTED, f"the reservation is {stay.status.value}",
                       rid=c.reservation_id, actor=c.by)
    if stay.start <= rules.today:
        return _refuse(c, Reason.TOO_LATE, "the stay has begun", rid=c.reservation_id,
                       actor=c.by)
    return _cancelled(state, stay, by, f"cancelled_by_{by.value}", rules)


def _expire(state: Apartment, c: ExpireReservation, rules: Rules) -> list[Message]:
    stay = state.stays.get(c.reservation_id)
    if stay is None or stay.status is not StayStatus.PENDING:
        return []  # answered, withdrawn or unknown: the timer has nothing to do
    if stay.expires_at is None or rules.now is None or rules.now < stay.expires_at:
        return _refuse(c, Reason.NOT_DUE, f"the request is open until {stay.expires_at}",
                       rid=c.reservation_id)
    return [ReservationExpired(reservation_id=stay.reservation_id, guest_id=stay.guest_id,
                               owner_id=state.owner_id, start=stay.start, end=stay.end)]


def _cancel_unpaid(state: Apartment, c: CancelUnpaidReservation,
                   rules: Rules) -> list[Message]:
    if c.reservation_id not in rules.failed_payments:
        return _refuse(c, Reason.PAYMENT_NOT_FAILED, "no failed charge is recorded for it",
                       rid=c.reservation_id)
    stay = state.stays.get(c.reservation_id)
    if stay is None or stay.status is not StayStatus.ACCEPTED:
        return []  # already ended some other way: nothing to give back
    return _cancelled(state, stay, Party.SYSTEM, PAYMENT_FAILED, rules)


def refusal_of(command: Message, events: Sequence[Message]
               ) -> CommandRejected | ReservationRejected | None:
    """The event that turned ``command`` down, if its events say it was (None: done).

    A command's first event is its own outcome: a ``CommandRejected``, or a
    ``ReservationRejected`` for any command but the owner's ``RejectReservation``, for
    which it is the success. Later rejections (other requests an acceptance displaced)
    are consequences, not the command's refusal.
    """
    first = events[0] if events else None
    if isinstance(first, CommandRejected):
        return first
    if isinstance(first, ReservationRejected) and not isinstance(command, RejectReservation):
        return first
    return None


def evolve(state: Apartment, event: Message) -> Apartment:
    """The state after an event. Pure; never fails (unknown facts change nothing)."""
    match event:
        case ApartmentAdded():
            return replace(state, listed=True, owner_id=event.owner_id, city=event.city,
                           title=event.title, description=event.description,
                           price_per_night=event.price_per_night, currency=event.currency,
                           capacity=event.capacity)
        case ApartmentUpdated():
            return replace(state, price_per_night=event.price_per_night,
                           description=event.description, capacity=event.capacity)
        case ApartmentDelisted():
            return replace(state, delisted=True)
        case ApartmentRelisted():
            return replace(state, delisted=False)
        case DatesBlocked():
            block = Block(event.block_id, event.start, event.end)
            dates = _unblocked(state, event.block_id).add(block.start, block.end, block.block_id)
            return replace(state, blocks=state.blocks.set(event.block_id, block),
                           blocked_dates=dates)
        case DatesUnblocked():
            if event.block_id not in state.blocks:
                return state
            return replace(state, blocks=state.blocks.delete(event.block_id),
                           blocked_dates=_unblocked(state, event.block_id))
        case ReservationRequested():
            stay = Stay(event.reservation_id, event.guest_id, event.start, event.end,
                        event.guests, event.total_price, event.card_token, event.card_last4,
                        expires_at=event.expires_at)
            return _with_stay(state, state.stays.get(stay.reservation_id), stay)
        case ReservationAccepted():
            return _set_status(state, event.reservation_id, StayStatus.ACCEPTED)
        case ReservationRejected():
            return _set_status(state, event.reservation_id, StayStatus.REJECTED)
        case RequestWithdrawn():
            return _set_status(state, event.reservation_id, StayStatus.WITHDRAWN)
        case ReservationExpired():
            return _set_status(state, event.reservation_id, StayStatus.EXPIRED)
        case ReservationCancelled():
            return _set_status(state, event.reservation_id, StayStatus.CANCELLED)
    return state


def _unblocked(state: Apartment, block_id: str) -> Intervals:
    """The blocks' dates without ``block_id``'s."""
    old = state.blocks.get(block_id)
    if old is None:
        return state.blocked_dates
    return state.blocked_dates.remove(old.start, old.end, block_id)


def _with_stay(state: Apartment, old: Stay | None, stay: Stay) -> Apartment:
    """``stay`` in place of ``old`` (its previous version, if any), indexes included.

    Persistent maps and the date index: O(log n) per event, where copying a dict was
    O(n) on busy apartments with thousands of requests.
    """
    rid = stay.reservation_id
    pending, pending_dates, booked_dates = state.pending, state.pending_dates, state.booked_dates
    if old is not None:
        if old.status is StayStatus.PENDING and rid in pending:
            pending = pending.delete(rid)
            pending_dates = pending_dates.remove(old.start, old.end, rid)
        elif old.status is StayStatus.ACCEPTED:
            booked_dates = booked_dates.remove(old.start, old.end, rid)
    if stay.status is StayStatus.PENDING:
        pending = pending.set(rid, stay)
        pending_dates = pending_dates.add(stay.start, stay.end, rid)
    elif stay.status is StayStatus.ACCEPTED:
        booked_dates = booked_dates.add(stay.start, stay.end, rid)
    # ``replace`` would run ``__init__`` over all fifteen fields through ``getattr``:
    # eight times slower, and this runs once per request event of a replay.
    new = object.__new__(Apartment)
    new.__dict__.update(state.__dict__, stays=state.stays.set(rid, stay), pending=pending,
                        pending_dates=pending_dates, booked_dates=booked_dates)
    return new


def _set_status(state: Apartment, rid: str, status: StayStatus) -> Apartment:
    stay = state.stays.get(rid)
    if stay is None:
        return state
    return _with_stay(state, stay, stay.with_status(status))
