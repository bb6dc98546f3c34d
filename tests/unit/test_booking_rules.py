"""The reservation process: confirm once, after both acceptance and charge."""

from __future__ import annotations

from functools import reduce

from messages import (
    Message,
    PaymentFailed,
    PaymentSucceeded,
    Reason,
    ReservationAccepted,
    ReservationConfirmed,
    ReservationRejected,
)
from rules.reservation import Reservation, Status, decide, evolve
from tests.conftest import day

ACCEPTED = ReservationAccepted(reservation_id="r1", guest_id="g", owner_id="o", start=day(1),
                               end=day(3), total_price=200, card_token="tok_visa",
                               card_last4="4242")
PAID = PaymentSucceeded(reservation_id="r1", guest_id="g", amount=200, charge_id="ch_1",
                        card_last4="4242")


def given(*events: Message) -> Reservation:
    return reduce(evolve, events, Reservation(reservation_id="r1"))


def test_confirms_after_acceptance_then_payment() -> None:
    out = decide(given(ACCEPTED), PAID)
    assert len(out) == 1 and isinstance(out[0], ReservationConfirmed)
    assert out[0].charge_id == "ch_1" and out[0].amount == 200


def test_confirms_when_payment_arrives_first() -> None:
    out = decide(given(PAID), ACCEPTED)
    assert len(out) == 1 and isinstance(out[0], ReservationConfirmed)


def test_confirms_only_once() -> None:
    state = given(ACCEPTED, PAID, *decide(given(ACCEPTED), PAID))
    assert state.status is Status.CONFIRMED
    assert decide(state, PAID) == []


def test_payment_failure_is_recorded() -> None:
    state = given(ACCEPTED, PaymentFailed(reservation_id="r1", guest_id="g", amount=200,
                                          reason="card_declined"))
    assert state.status is Status.PAYMENT_FAILED and state.payment_failed == "card_declined"


def test_rejected_request() -> None:
    state = given(ReservationRejected(reservation_id="r1", guest_id="g",
                                      reason=Reason.ALREADY_TAKEN))
    assert state.status is Status.REJECTED
