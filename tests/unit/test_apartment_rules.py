"""The apartment's rules, as given (events) / when (command) / then (events)."""

from __future__ import annotations

from datetime import date
from functools import reduce

import pytest

from messages import (
    AcceptReservation,
    AddApartment,
    ApartmentAdded,
    CommandRejected,
    DatesBooked,
    Message,
    Reason,
    RejectReservation,
    RequestReservation,
    ReservationAccepted,
    ReservationRejected,
    ReservationRequested,
)
from rules.apartment import Apartment, Rules, StayStatus, decide, evolve, refusal_of
from tests.conftest import TODAY, day

RULES = Rules(today=TODAY, max_stay_nights=30)
ADDED = ApartmentAdded(owner_id="o1", city="Lisbon", title="Flat", price_per_night=100,
                       currency="EUR", capacity=2)


def given(*events: Message) -> Apartment:
    return reduce(evolve, events, Apartment(apartment_id="a1"))


def requested(rid: str, start: date, end: date, guest: str = "g1") -> ReservationRequested:
    return ReservationRequested(reservation_id=rid, guest_id=guest, owner_id="o1", start=start,
                                end=end, guests=1, total_price=100 * (end - start).days,
                                card_token="tok_visa", card_last4="4242")


def accepted(rid: str, start: date, end: date, guest: str = "g1") -> ReservationAccepted:
    return ReservationAccepted(reservation_id=rid, guest_id=guest, owner_id="o1", start=start,
                               end=end, total_price=100 * (end - start).days,
                               card_token="tok_visa", card_last4="4242")


def request(rid: str, start: date, end: date, guests: int = 1) -> RequestReservation:
    return RequestReservation(reservation_id=rid, guest_id="g2", start=start, end=end,
                              guests=guests)


def only(events: list[Message]) -> Message:
    assert len(events) == 1, events
    return events[0]


def test_add_apartment_lists_it() -> None:
    cmd = AddApartment(owner_id="o1", city="Lisbon", title="Flat", price_per_night=100,
                       currency="EUR", capacity=2)
    assert decide(given(), cmd, RULES) == [ADDED]


@pytest.mark.parametrize(("price", "capacity", "reason"), [
    (0, 2, Reason.INVALID_PRICE), (-5, 2, Reason.INVALID_PRICE),
    (100, 0, Reason.INVALID_CAPACITY), (100, -1, Reason.INVALID_CAPACITY)])
def test_add_apartment_needs_positive_price_and_capacity(price: int, capacity: int,
                                                         reason: Reason) -> None:
    cmd = AddApartment(owner_id="o1", city="L", title="T", price_per_night=price,
                       currency="EUR", capacity=capacity)
    ev = only(decide(given(), cmd, RULES))
    assert isinstance(ev, CommandRejected) and ev.reason is reason


def test_add_apartment_twice_is_refused() -> None:
    cmd = AddApartment(owner_id="o2", city="L", title="T", price_per_night=1,
                       currency="EUR", capacity=1)
    ev = only(decide(given(ADDED), cmd, RULES))
    assert isinstance(ev, CommandRejected) and ev.reason is Reason.APARTMENT_EXISTS


def test_request_quotes_the_price_and_is_pending() -> None:
    ev = only(decide(given(ADDED), request("r1", day(7), day(10)), RULES))
    assert isinstance(ev, ReservationRequested)
    assert ev.total_price == 300 and ev.owner_id == "o1"
    assert given(ADDED, ev).stays["r1"].status is StayStatus.PENDING


@pytest.mark.parametrize(("start", "end", "guests", "reason"), [
    (day(5), day(5), 1, Reason.INVALID_DATES),
    (day(5), day(4), 1, Reason.INVALID_DATES),
    (day(-1), day(2), 1, Reason.INVALID_DATES),
    (day(1), day(32), 1, Reason.STAY_TOO_LONG),
    (day(1), day(2), 3, Reason.TOO_MANY_GUESTS),
])
def test_request_rules(start: date, end: date, guests: int, reason: Reason) -> None:
    ev = only(decide(given(ADDED), request("r1", start, end, guests), RULES))
    assert isinstance(ev, ReservationRejected) and ev.reason is reason


def test_request_for_unknown_apartment() -> None:
    ev = only(decide(given(), request("r1", day(1), day(2)), RULES))
    assert isinstance(ev, ReservationRejected) and ev.reason is Reason.UNKNOWN_APARTMENT


def test_maximum_stay_is_allowed_exactly() -> None:
    ev = only(decide(given(ADDED), request("r1", day(1), day(31)), RULES))
    assert isinstance(ev, ReservationRequested)


def test_request_overlapping_an_accepted_one_is_already_taken() -> None:
    state = given(ADDED, requested("r1", day(7), day(14)), accepted("r1", day(7), day(14)))
    ev = only(decide(state, request("r2", day(11), day(12)), RULES))
    assert isinstance(ev, ReservationRejected) and ev.reason is Reason.ALREADY_TAKEN


def test_adjacent_nights_do_not_overlap() -> None:
    state = given(ADDED, requested("r1", day(7), day(14)), accepted("r1", day(7), day(14)))
    assert isinstance(only(decide(state, request("r2", day(14), day(16)), RULES)),
                      ReservationRequested)
    assert isinstance(only(decide(state, request("r3", day(5), day(7)), RULES)),
                      ReservationRequested)


def test_pending_requests_may_overlap() -> None:
    state = given(ADDED, requested("r1", day(7), day(14)))
    assert isinstance(only(decide(state, request("r2", day(8), day(9)), RULES)),
                      ReservationRequested)


def test_accept_takes_the_dates_and_rejects_overlapping_pending_requests() -> None:
    state = given(ADDED, requested("r1", day(7), day(14)), requested("r2", day(10), day(12), "g2"),
                  requested("r3", day(20), day(22), "g3"))
    events = decide(state, AcceptReservation(reservation_id="r1", owner_id="o1"), RULES)
    assert [type(e) for e in events] == [ReservationAccepted, DatesBooked, ReservationRejected]
    assert isinstance(events[2], ReservationRejected)
    assert events[2].reservation_id == "r2" and events[2].reason is Reason.ALREADY_TAKEN
    after = reduce(evolve, events, state)
    assert after.stays["r1"].status is StayStatus.ACCEPTED
    assert after.stays["r2"].status is StayStatus.REJECTED
    assert after.stays["r3"].status is StayStatus.PENDING


def test_accept_rechecks_the_dates() -> None:
    state = given(ADDED, requested("r1", day(7), day(14)), requested("r2", day(10), day(12)),
                  accepted("r2", day(10), day(12)))
    ev = only(decide(state, AcceptReservation(reservation_id="r1", owner_id="o1"), RULES))
    assert isinstance(ev, ReservationRejected) and ev.reason is Reason.ALREADY_TAKEN


@pytest.mark.parametrize("cmd_type", [AcceptReservation, RejectReservation])
def test_only_the_owner_answers(cmd_type: type[AcceptReservation | RejectReservation]) -> None:
    state = given(ADDED, requested("r1", day(7), day(14)))
    ev = only(decide(state, cmd_type(reservation_id="r1", owner_id="mallory"), RULES))
    assert isinstance(ev, CommandRejected) and ev.reason is Reason.NOT_OWNER
    assert reduce(evolve, [ev], state) == state


def test_reject_by_owner() -> None:
    state = given(ADDED, requested("r1", day(7), day(14)))
    ev = only(decide(state, RejectReservation(reservation_id="r1", owner_id="o1"), RULES))
    assert isinstance(ev, ReservationRejected) and ev.reason is Reason.REJECTED_BY_OWNER


def test_a_commands_refusal_is_its_first_event_unless_the_owner_rejected() -> None:
    """The owner's rejection is its command's success; a displaced request is a consequence."""
    state = given(ADDED, requested("r1", day(7), day(14)), requested("r2", day(10), day(12),
                                                                     "g2"))
    reject = RejectReservation(reservation_id="r1", owner_id="o1")
    assert refusal_of(reject, decide(state, reject, RULES)) is None
    accept = AcceptReservation(reservation_id="r1", owner_id="o1")
    displaced = decide(state, accept, RULES)
    assert isinstance(displaced[-1], ReservationRejected) and refusal_of(accept, displaced) is None
    taken = decide(reduce(evolve, displaced, state), request("r3", day(8), day(9)), RULES)
    assert refusal_of(request("r3", day(8), day(9)), taken) is only(taken)
    mallory = AcceptReservation(reservation_id="r1", owner_id="mallory")
    refused = decide(state, mallory, RULES)
    assert isinstance(only(refused), CommandRejected) and refusal_of(mallory, refused) is refused[0]
    assert refusal_of(accept, []) is None


def test_answering_twice_is_refused() -> None:
    state = given(ADDED, requested("r1", day(7), day(14)), accepted("r1", day(7), day(14)))
    ev = only(decide(state, AcceptReservation(reservation_id="r1", owner_id="o1"), RULES))
    assert isinstance(ev, CommandRejected) and ev.reason is Reason.NOT_PENDING


def test_unknown_reservation() -> None:
    ev = only(decide(given(ADDED), AcceptReservation(reservation_id="nope", owner_id="o1"),
                     RULES))
    assert isinstance(ev, CommandRejected) and ev.reason is Reason.UNKNOWN_RESERVATION


def test_duplicate_reservation_id_is_refused() -> None:
    state = given(ADDED, requested("r1", day(7), day(14)))
    ev = only(decide(state, request("r1", day(20), day(21)), RULES))
    assert isinstance(ev, CommandRejected) and ev.reason is Reason.DUPLICATE_RESERVATION


def test_evolve_ignores_facts_about_unknown_reservations() -> None:
    state = given(ADDED)
    assert evolve(state, accepted("ghost", day(1), day(2))) == state
