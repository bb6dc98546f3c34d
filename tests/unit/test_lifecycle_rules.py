"""The booking lifecycle's rules, as given (events) / when (command) / then (events)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import reduce

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.notifier import notes_for
from actors.timers import expiry_timer_id, timer_effects
from messages import (
    AcceptReservation,
    ApartmentAdded,
    ApartmentDelisted,
    ApartmentRelisted,
    ApartmentUpdated,
    BlockDates,
    CancelReservation,
    CancelUnpaidReservation,
    CommandRejected,
    DatesBlocked,
    DatesReleased,
    DatesUnblocked,
    DelistApartment,
    Envelope,
    ExpireReservation,
    Message,
    Party,
    PaymentFailed,
    PaymentSucceeded,
    Reason,
    RefundIssued,
    RelistApartment,
    RequestReservation,
    RequestWithdrawn,
    ReservationAccepted,
    ReservationCancelled,
    ReservationConfirmed,
    ReservationExpired,
    ReservationRejected,
    ReservationRequested,
    UnblockDates,
    UpdateApartment,
    WithdrawRequest,
)
from rules import reservation as booking
from rules.apartment import Apartment, Rules, StayStatus, decide, evolve
from rules.policy import CancellationPolicy
from tests.conftest import TODAY, day

NOW = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)
TTL = timedelta(hours=24)
RULES = Rules(today=TODAY, now=NOW, request_ttl=TTL)
ADDED = ApartmentAdded(owner_id="o1", city="Lisbon", title="Flat", price_per_night=100,
                       currency="EUR", capacity=2)


def given_(*events: Message) -> Apartment:
    return reduce(evolve, events, Apartment(apartment_id="a1"))


def requested(rid: str, start: date, end: date, guest: str = "g1",
              expires_at: datetime | None = NOW + TTL) -> ReservationRequested:
    return ReservationRequested(reservation_id=rid, guest_id=guest, owner_id="o1", start=start,
                                end=end, guests=1, total_price=100 * (end - start).days,
                                card_token="tok_visa", card_last4="4242",
                                expires_at=expires_at)


def accepted(rid: str, start: date, end: date, guest: str = "g1") -> ReservationAccepted:
    return ReservationAccepted(reservation_id=rid, guest_id=guest, owner_id="o1", start=start,
                               end=end, total_price=100 * (end - start).days,
                               card_token="tok_visa", card_last4="4242")


def request(rid: str, start: date, end: date, guest: str = "g2") -> RequestReservation:
    return RequestReservation(reservation_id=rid, guest_id=guest, start=start, end=end)


def refused(events: list[Message], reason: Reason) -> None:
    assert len(events) == 1, events
    e = events[0]
    assert isinstance(e, CommandRejected | ReservationRejected), e
    assert e.reason is reason, e


def then_nothing_changes(state: Apartment, events: list[Message]) -> None:
    assert reduce(evolve, [e for e in events if isinstance(e, CommandRejected)], state) == state


# --- owner actions: authorization ----------------------------------------------------
@pytest.mark.parametrize("command", [
    UpdateApartment(owner_id="mallory", price_per_night=1),
    DelistApartment(owner_id="mallory"),
    RelistApartment(owner_id="mallory"),
    BlockDates(owner_id="mallory", block_id="b1", start=day(1), end=day(2)),
    UnblockDates(owner_id="mallory", block_id="b1"),
    AcceptReservation(reservation_id="r1", owner_id="mallory"),
])
def test_owner_only_commands_refuse_anyone_else(command: Message) -> None:
    state = given_(ADDED, requested("r1", day(1), day(3)))
    events = decide(state, command, RULES)
    refused(events, Reason.NOT_OWNER)
    then_nothing_changes(state, events)


@pytest.mark.parametrize("command", [
    WithdrawRequest(reservation_id="r1", guest_id="mallory"),
    CancelReservation(reservation_id="r1", by="mallory"),
])
def test_guest_actions_refuse_anyone_else(command: Message) -> None:
    state = given_(ADDED, requested("r1", day(10), day(12)), accepted("r1", day(10), day(12)))
    if isinstance(command, WithdrawRequest):
        state = given_(ADDED, requested("r1", day(10), day(12)))
    events = decide(state, command, RULES)
    refused(events, Reason.NOT_GUEST)
    assert isinstance(events[0], CommandRejected) and events[0].actor_id == "mallory"


# --- UpdateApartment --------------------------------------------------------------------
def test_update_changes_price_but_a_pending_request_keeps_its_quote() -> None:
    state = given_(ADDED, requested("r1", day(1), day(3)))
    events = decide(state, UpdateApartment(owner_id="o1", price_per_night=250, capacity=4),
                    RULES)
    assert events == [ApartmentUpdated(owner_id="o1", price_per_night=250, description="",
                                       capacity=4)]
    after = reduce(evolve, events, state)
    assert after.price_per_night == 250 and after.capacity == 4
    accept = decide(after, AcceptReservation(reservation_id="r1", owner_id="o1"), RULES)
    assert isinstance(accept[0], ReservationAccepted) and accept[0].total_price == 200
    new = decide(after, request("r2", day(5), day(7)), RULES)
    assert isinstance(new[0], ReservationRequested) and new[0].total_price == 500


@pytest.mark.parametrize(("command", "reason"), [
    (UpdateApartment(owner_id="o1"), Reason.NOTHING_TO_CHANGE),
    (UpdateApartment(owner_id="o1", price_per_night=0), Reason.INVALID_PRICE),
    (UpdateApartment(owner_id="o1", capacity=0), Reason.INVALID_CAPACITY),
])
def test_update_refuses_bad_values(command: UpdateApartment, reason: Reason) -> None:
    refused(decide(given_(ADDED), command, RULES), reason)


# --- Delist / Relist ------------------------------------------------------------------
def test_delisting_rejects_every_pending_request_but_keeps_accepted_ones() -> None:
    state = given_(ADDED, requested("r1", day(1), day(3)), accepted("r1", day(1), day(3)),
                  requested("r2", day(5), day(7), guest="g2"),
                  requested("r3", day(8), day(9), guest="g3"))
    events = decide(state, DelistApartment(owner_id="o1"), RULES)
    assert events[0] == ApartmentDelisted(owner_id="o1")
    rejected = {e.reservation_id: e.reason for e in events[1:]
                if isinstance(e, ReservationRejected)}
    assert rejected == {"r2": Reason.APARTMENT_DELISTED, "r3": Reason.APARTMENT_DELISTED}
    after = reduce(evolve, events, state)
    assert after.stays["r1"].status is StayStatus.ACCEPTED


def test_no_new_requests_while_delisted_and_again_after_relisting() -> None:
    state = given_(ADDED, ApartmentDelisted(owner_id="o1"))
    refused(decide(state, request("r1", day(1), day(2)), RULES), Reason.APARTMENT_DELISTED)
    refused(decide(state, DelistApartment(owner_id="o1"), RULES), Reason.ALREADY_DELISTED)
    relisted = given_(ADDED, ApartmentDelisted(owner_id="o1"), ApartmentRelisted(owner_id="o1"))
    assert isinstance(decide(relisted, request("r1", day(1), day(2)), RULES)[0],
                      ReservationRequested)
    refused(decide(given_(ADDED), RelistApartment(owner_id="o1"), RULES), Reason.NOT_DELISTED)


# --- Block / Unblock ------------------------------------------------------------------
def test_blocked_nights_are_not_bookable_and_unblocking_frees_them() -> None:
    state = given_(ADDED)
    events = decide(state, BlockDates(owner_id="o1", block_id="b1", start=day(3), end=day(6)),
                    RULES)
    assert events == [DatesBlocked(block_id="b1", start=day(3), end=day(6))]
    blocked = reduce(evolve, events, state)
    refused(decide(blocked, request("r1", day(5), day(8)), RULES), Reason.DATES_BLOCKED)
    assert isinstance(decide(blocked, request("r1", day(6), day(8)), RULES)[0],
                      ReservationRequested)  # [start, end): the 6th is free
    unblock = decide(blocked, UnblockDates(owner_id="o1", block_id="b1"), RULES)
    assert unblock == [DatesUnblocked(block_id="b1", start=day(3), end=day(6))]
    free = reduce(evolve, unblock, blocked)
    assert isinstance(decide(free, request("r1", day(5), day(8)), RULES)[0],
                      ReservationRequested)


def test_blocking_rejects_overlapping_pending_requests_and_refuses_booked_nights() -> None:
    state = given_(ADDED, requested("r1", day(3), day(5)),
                  requested("r2", day(10), day(12), guest="g2"),
                  accepted("r2", day(10), day(12), guest="g2"))
    events = decide(state, BlockDates(owner_id="o1", block_id="b", start=day(4), end=day(6)),
                    RULES)
    assert events[1] == ReservationRejected(reservation_id="r1", guest_id="g1",
                                            reason=Reason.DATES_BLOCKED,
                                            detail="the owner blocked those nights")
    refused(decide(state, BlockDates(owner_id="o1", block_id="b", start=day(11),
                                     end=day(13)), RULES), Reason.ALREADY_TAKEN)


def test_accepting_re_checks_blocks() -> None:
    state = given_(ADDED, requested("r1", day(3), day(5)),
                  DatesBlocked(block_id="b", start=day(4), end=day(5)))
    refused(decide(state, AcceptReservation(reservation_id="r1", owner_id="o1"), RULES),
            Reason.DATES_BLOCKED)


@pytest.mark.parametrize(("command", "reason"), [
    (BlockDates(owner_id="o1", block_id="b", start=day(5), end=day(5)), Reason.INVALID_DATES),
    (BlockDates(owner_id="o1", block_id="b", start=day(-5), end=day(-1)),
     Reason.INVALID_DATES),
    (BlockDates(owner_id="o1", block_id="old", start=day(1), end=day(2)),
     Reason.BLOCK_EXISTS),
    (UnblockDates(owner_id="o1", block_id="nope"), Reason.UNKNOWN_BLOCK),
])
def test_block_refusals(command: Message, reason: Reason) -> None:
    state = given_(ADDED, DatesBlocked(block_id="old", start=day(20), end=day(21)))
    refused(decide(state, command, RULES), reason)


# --- WithdrawRequest -------------------------------------------------------------------
def test_the_guest_withdraws_a_pending_request_only() -> None:
    state = given_(ADDED, requested("r1", day(1), day(3)))
    events = decide(state, WithdrawRequest(reservation_id="r1", guest_id="g1"), RULES)
    assert events == [RequestWithdrawn(reservation_id="r1", guest_id="g1", owner_id="o1")]
    after = reduce(evolve, events, state)
    assert after.stays["r1"].status is StayStatus.WITHDRAWN
    refused(decide(after, WithdrawRequest(reservation_id="r1", guest_id="g1"), RULES),
            Reason.NOT_PENDING)
    refused(decide(after, AcceptReservation(reservation_id="r1", owner_id="o1"), RULES),
            Reason.NOT_PENDING)


# --- CancelReservation and the policy --------------------------------------------------
@pytest.mark.parametrize(("by", "start", "party", "refund"), [
    ("g1", 7, Party.GUEST, 200),   # 7 days before: full refund
    ("g1", 6, Party.GUEST, 100),   # later: half
    ("o1", 1, Party.OWNER, 200),   # the owner cancelling refunds in full
])
def test_cancelling_releases_the_dates_and_refunds_by_policy(
        by: str, start: int, party: Party, refund: int) -> None:
    state = given_(ADDED, requested("r1", day(start), day(start + 2)),
                  accepted("r1", day(start), day(start + 2)))
    events = decide(state, CancelReservation(reservation_id="r1", by=by), RULES)
    cancelled, released = events
    assert isinstance(cancelled, ReservationCancelled)
    assert (cancelled.cancelled_by, cancelled.refund_amount) == (party, refund)
    assert released == DatesReleased(reservation_id="r1", start=day(start),
                                     end=day(start + 2))
    after = reduce(evolve, events, state)
    assert after.stays["r1"].status is StayStatus.CANCELLED
    assert isinstance(decide(after, request("r2", day(start), day(start + 1)), RULES)[0],
                      ReservationRequested)  # the nights came back


def test_the_policy_is_configurable() -> None:
    strict = Rules(today=TODAY, now=NOW, policy=CancellationPolicy(
        full_refund_days=30, late_refund_percent=0))
    state = given_(ADDED, requested("r1", day(10), day(12)), accepted("r1", day(10), day(12)))
    cancelled = decide(state, CancelReservation(reservation_id="r1", by="g1"), strict)[0]
    assert isinstance(cancelled, ReservationCancelled) and cancelled.refund_amount == 0


@pytest.mark.parametrize(("then", "start", "reason"), [
    (None, 5, Reason.NOT_ACCEPTED),                        # still pending
    ("rejected", 5, Reason.NOT_ACCEPTED),
    ("accepted", 0, Reason.TOO_LATE),                      # the stay has begun
])
def test_cancel_refusals(then: str | None, start: int, reason: Reason) -> None:
    history: list[Message] = [ADDED, requested("r1", day(start), day(start + 2))]
    if then == "accepted":
        history.append(accepted("r1", day(start), day(start + 2)))
    elif then == "rejected":
        history.append(ReservationRejected(reservation_id="r1", guest_id="g1",
                                           reason=Reason.REJECTED_BY_OWNER))
    state = given_(*history)
    refused(decide(state, CancelReservation(reservation_id="r1", by="g1"), RULES), reason)
    refused(decide(state, CancelReservation(reservation_id="zz", by="g1"), RULES),
            Reason.UNKNOWN_RESERVATION)


# --- expiry ---------------------------------------------------------------------------
def test_a_request_gets_a_deadline_and_expires_only_after_it() -> None:
    made = decide(given_(ADDED), request("r1", day(1), day(3)), RULES)[0]
    assert isinstance(made, ReservationRequested) and made.expires_at == NOW + TTL
    state = given_(ADDED, made)
    early = Rules(today=TODAY, now=NOW + TTL - timedelta(seconds=1))
    refused(decide(state, ExpireReservation(reservation_id="r1"), early), Reason.NOT_DUE)
    late = Rules(today=TODAY, now=NOW + TTL)
    events = decide(state, ExpireReservation(reservation_id="r1"), late)
    assert events == [ReservationExpired(reservation_id="r1", guest_id="g2", owner_id="o1",
                                         start=day(1), end=day(3))]
    after = reduce(evolve, events, state)
    assert after.stays["r1"].status is StayStatus.EXPIRED
    refused(decide(after, AcceptReservation(reservation_id="r1", owner_id="o1"), late),
            Reason.NOT_PENDING)


def test_an_answered_request_ignores_its_timer() -> None:
    state = given_(ADDED, requested("r1", day(1), day(3)), accepted("r1", day(1), day(3)))
    assert decide(state, ExpireReservation(reservation_id="r1"),
                  Rules(today=TODAY, now=NOW + 2 * TTL)) == []


def test_timers_start_with_the_request_and_clear_when_it_is_answered() -> None:
    def env(p: Message) -> Envelope:
        return Envelope.new(p, apartment_id="a1")

    assert len(timer_effects([env(requested("r1", day(1), day(3)))])) == 1
    assert timer_effects([env(requested("r1", day(1), day(3), expires_at=None))]) == []
    for ends in (accepted("r1", day(1), day(3)),
                 RequestWithdrawn(reservation_id="r1", guest_id="g", owner_id="o")):
        assert len(timer_effects([env(ends)])) == 1
    assert expiry_timer_id("r1") == "expire:r1"


# --- payment failure: compensation ------------------------------------------------------
def test_an_unpaid_reservation_is_cancelled_with_its_dates_released() -> None:
    state = given_(ADDED, requested("r1", day(3), day(5)), accepted("r1", day(3), day(5)))
    proven = Rules(today=TODAY, now=NOW, failed_payments=frozenset({"r1"}))
    events = decide(state, CancelUnpaidReservation(reservation_id="r1", reason="declined"),
                    proven)
    cancelled = events[0]
    assert isinstance(cancelled, ReservationCancelled)
    assert (cancelled.reason, cancelled.cancelled_by) == ("payment_failed", Party.SYSTEM)
    assert events[1] == DatesReleased(reservation_id="r1", start=day(3), end=day(5))
    after = reduce(evolve, events, state)
    assert decide(after, CancelUnpaidReservation(reservation_id="r1", reason="x"),
                  proven) == []  # a second one finds nothing to do


def test_nobody_cancels_a_booking_as_unpaid_without_a_failed_charge() -> None:
    state = given_(ADDED, requested("r1", day(3), day(5)), accepted("r1", day(3), day(5)))
    events = decide(state, CancelUnpaidReservation(reservation_id="r1", reason="x"), RULES)
    refused(events, Reason.PAYMENT_NOT_FAILED)
    then_nothing_changes(state, events)


ACCEPTED = accepted("r1", day(3), day(5))
FAILED = PaymentFailed(reservation_id="r1", guest_id="g1", amount=200, reason="card_declined")
PAID = PaymentSucceeded(reservation_id="r1", guest_id="g1", amount=200, charge_id="ch",
                        card_last4="4242")
CANCELLED = ReservationCancelled(reservation_id="r1", guest_id="g1", owner_id="o1",
                                 cancelled_by=Party.GUEST, reason="cancelled_by_guest",
                                 start=day(3), end=day(5), total_price=200, refund_amount=200)


def process(*events: Message) -> booking.Reservation:
    return reduce(booking.evolve, events, booking.Reservation(reservation_id="r1"))


def test_the_process_compensates_a_failed_payment_once() -> None:
    state = process(ACCEPTED)
    out = booking.decide(state, FAILED)
    assert out == [CancelUnpaidReservation(reservation_id="r1", reason="card_declined")]
    after = reduce(booking.evolve, [FAILED, *out], state)
    assert booking.decide(after, FAILED) == []


def test_the_process_does_not_compensate_a_reservation_already_cancelled() -> None:
    assert booking.decide(process(ACCEPTED, CANCELLED), FAILED) == []


def test_a_reservation_cancelled_before_the_charge_is_never_confirmed() -> None:
    assert booking.decide(process(ACCEPTED, CANCELLED), PAID) == []
    assert isinstance(booking.decide(process(ACCEPTED), PAID)[0], ReservationConfirmed)


def test_the_process_follows_withdrawal_expiry_and_refund() -> None:
    req = requested("r1", day(3), day(5))
    assert process(req, RequestWithdrawn(reservation_id="r1", guest_id="g1", owner_id="o1")
                   ).status is booking.Status.WITHDRAWN
    assert process(req, ReservationExpired(reservation_id="r1", guest_id="g1", owner_id="o1",
                                           start=day(3), end=day(5))
                   ).status is booking.Status.EXPIRED
    refunded = process(ACCEPTED, PAID, CANCELLED, RefundIssued(
        reservation_id="r1", guest_id="g1", amount=200, refund_id="re", card_last4="4242"))
    assert (refunded.status, refunded.refunded) == (booking.Status.CANCELLED, 200)


# --- who is told ----------------------------------------------------------------------
@pytest.mark.parametrize(("event", "told"), [
    (requested("r1", day(1), day(2)), ["o1"]),
    (ACCEPTED, ["g1"]),
    (ReservationRejected(reservation_id="r1", guest_id="g1", reason=Reason.ALREADY_TAKEN),
     ["g1"]),
    (FAILED, ["g1"]),
    (CANCELLED, ["o1"]),
    (CANCELLED.model_copy(update={"cancelled_by": Party.OWNER}), ["o1", "g1"]),
    (CANCELLED.model_copy(update={"cancelled_by": Party.SYSTEM}), ["o1"]),
    (RefundIssued(reservation_id="r1", guest_id="g1", amount=1, refund_id="re",
                  card_last4="4242"), ["g1"]),
    (ReservationExpired(reservation_id="r1", guest_id="g1", owner_id="o1", start=day(1),
                        end=day(2)), ["g1"]),
    (RequestWithdrawn(reservation_id="r1", guest_id="g1", owner_id="o1"), ["o1"]),
    (DatesReleased(reservation_id="r1", start=day(1), end=day(2)), []),
])
def test_everyone_who_cares_is_told(event: Message, told: list[str]) -> None:
    assert [n.recipient for n in notes_for(event)] == told


def test_cards_are_only_tokens_and_last_four() -> None:
    with pytest.raises(ValueError, match="card_token"):
        RequestReservation(reservation_id="r", guest_id="g", start=day(1), end=day(2),
                           card_token="4242424242424242")
    with pytest.raises(ValueError, match="card_last4"):
        RequestReservation(reservation_id="r", guest_id="g", start=day(1), end=day(2),
                           card_last4="42424242")


# --- the invariant, under any sequence of commands ----------------------------------------
_rid = st.sampled_from(["r1", "r2", "r3"])
_block = st.sampled_from(["b1", "b2"])


@st.composite
def _command(draw: st.DrawFn) -> Message:
    start = day(draw(st.integers(min_value=-1, max_value=6)))
    end = start + timedelta(days=draw(st.integers(min_value=0, max_value=3)))
    rid, who = draw(_rid), draw(st.sampled_from(["o1", "o1", "g1", "mallory"]))
    kind = draw(st.sampled_from(["request"] * 3 + ["accept"] * 3 + [
        "withdraw", "cancel", "unpaid", "expire", "block", "block", "unblock", "delist",
        "relist", "update"]))
    match kind:
        case "request":
            return RequestReservation(reservation_id=rid, guest_id=who, start=start, end=end)
        case "accept":
            return AcceptReservation(reservation_id=rid, owner_id=who)
        case "withdraw":
            return WithdrawRequest(reservation_id=rid, guest_id=who)
        case "cancel":
            return CancelReservation(reservation_id=rid, by=who)
        case "unpaid":
            return CancelUnpaidReservation(reservation_id=rid, reason="declined")
        case "expire":
            return ExpireReservation(reservation_id=rid)
        case "block":
            return BlockDates(owner_id=who, block_id=draw(_block), start=start, end=end)
        case "unblock":
            return UnblockDates(owner_id=who, block_id=draw(_block))
        case "delist":
            return DelistApartment(owner_id=who)
        case "relist":
            return RelistApartment(owner_id=who)
    return UpdateApartment(owner_id=who, price_per_night=draw(st.integers(0, 300)))


@settings(max_examples=500, deadline=None)
@given(st.lists(_command(), min_size=5, max_size=40), st.booleans())
def test_no_two_accepted_stays_or_a_stay_and_a_block_ever_overlap(
        commands: list[Message], late: bool) -> None:
    rules = Rules(today=TODAY, now=NOW + (2 * TTL if late else timedelta(0)), request_ttl=TTL,
                  failed_payments=frozenset({"r2"}))
    state = given_(ADDED)
    for command in commands:
        events = decide(state, command, rules)
        if any(isinstance(e, CommandRejected) for e in events):
            assert reduce(evolve, events, state) == state  # a refusal changes nothing
        state = reduce(evolve, events, state)
        taken = [s for s in state.stays.values() if s.status is StayStatus.ACCEPTED]
        for i, a in enumerate(taken):
            assert not any(a.overlaps(b.start, b.end) for b in taken[i + 1:]), state
            assert not any(a.overlaps(b.start, b.end) for b in state.blocks.values()), state
