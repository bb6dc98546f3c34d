"""The drills' lifecycle and replay counts: each fires on the defect it names, and only then.

Streams are built with the rules themselves (``rules.apartment.decide`` and
``rules.reservation.decide``), as the actors record them; the defects are what a
stale or lost decision would leave behind.
"""

from __future__ import annotations

from collections import Counter

from messages import (
    AcceptReservation,
    AddApartment,
    CancelReservation,
    Envelope,
    Message,
    PaymentFailed,
    PaymentSucceeded,
    RefundIssued,
    RequestReservation,
)
from messages.commands import CancelUnpaidReservation
from rules import apartment, reservation
from rules.snapshot import SCHEMA, to_snapshot
from tests.conftest import TODAY, day
from tests.faults.lifecycle import (
    Replayed,
    StoredEvent,
    Tables,
    fold_apartment,
    lifecycle_counts,
    replay_counts,
)

APT = "a1"
PRICE = 10_000


class Store:
    """Streams as the actors write them: an apartment deciding commands, a reservation
    process deciding on the events it is sent, the payment actor's outcomes."""

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []
        self.flat = apartment.Apartment(apartment_id=APT)
        self.tables = Tables()
        self.procs: dict[str, reservation.Reservation] = {}

    def append(self, stream: str, payloads: list[Message]) -> None:
        version = sum(1 for sid, _v, _e in self.events if sid == stream)
        for p in payloads:
            version += 1
            self.events.append((stream, version, Envelope.new(p, apartment_id=APT)))

    def command(self, command: Message, *, failed: frozenset[str] = frozenset()) -> list[Message]:
        out = apartment.decide(self.flat, command, apartment.Rules(today=TODAY,
                                                                   failed_payments=failed))
        for e in out:
            self.flat = apartment.evolve(self.flat, e)
        self.append(f"apartment:{APT}", out)
        for e in out:
            if type(e).__name__ in ("ReservationAccepted", "ReservationCancelled"):
                self.process(e.reservation_id, e)  # type: ignore[attr-defined]
        return out

    def process(self, rid: str, event: Message) -> None:
        state = self.procs.get(rid, reservation.Reservation(reservation_id=rid))
        out = [event, *reservation.decide(state, event)]
        for e in out:
            state = reservation.evolve(state, e)
        self.procs[rid] = state
        self.append(f"reservation:{rid}", out)

    def paid(self, rid: str, ok: bool) -> None:
        outcome: Message = (
            PaymentSucceeded(reservation_id=rid, guest_id="g", amount=PRICE, charge_id="ch",
                             card_last4="4242") if ok else
            PaymentFailed(reservation_id=rid, guest_id="g", amount=PRICE, reason="card_declined"))
        self.tables.charges[rid] = ("charged" if ok else "declined", PRICE)
        self.append(f"payment:{rid}", [outcome])
        self.process(rid, outcome)

    def booked(self, rid: str, start: int = 20) -> None:
        if not self.flat.listed:
            self.command(AddApartment(owner_id="o", city="Lisbon", title="T",
                                      price_per_night=PRICE, currency="EUR", capacity=2))
        self.command(RequestReservation(reservation_id=rid, guest_id="g", start=day(start),
                                        end=day(start + 1), guests=1, card_token="tok_visa"))
        self.command(AcceptReservation(reservation_id=rid, owner_id="o"))

    def counts(self) -> Counter[str]:
        replayed = Replayed.of(self.events)
        return lifecycle_counts(replayed, self.tables) + replay_counts(replayed, self.tables)

    def search_as_replayed(self) -> None:
        """The search tables as a search that applied every event would hold them."""
        s = self.flat
        self.tables.search_rows = {APT: (s.city, s.city.casefold(), s.title,
                                         s.price_per_night, s.currency, s.capacity)}
        self.tables.search_booked = {APT: {(rid, s.stays[rid].start, s.stays[rid].end)
                                           for _a, _b, rid in s.booked_dates}}


def unpaid_release(store: Store, rid: str) -> None:
    """The process's compensation reaching the apartment."""
    store.command(CancelUnpaidReservation(reservation_id=rid, reason="card_declined"),
                  failed=frozenset({rid}))


def test_a_declined_card_is_counted_until_its_nights_are_released() -> None:
    store = Store()
    store.booked("r1")
    store.paid("r1", ok=False)
    held = store.counts()
    assert (held["failed_but_held"], held["accepted_unresolved"]) == (1, 1)
    offenders: dict[str, list[str]] = {}
    lifecycle_counts(Replayed.of(store.events), store.tables, offenders)
    assert offenders == {"failed_but_held": ["r1"], "accepted_unresolved": ["r1"]}
    unpaid_release(store, "r1")
    done = store.counts()
    assert (done["failed_but_held"], done["accepted_unresolved"]) == (0, 0)
    assert done["cancelled_by_system"] == 1


def test_a_paid_stay_ends_only_once_its_process_confirmed_it() -> None:
    store = Store()
    store.booked("r1")
    store.append("payment:r1", [PaymentSucceeded(reservation_id="r1", guest_id="g",
                                                 amount=PRICE, charge_id="ch",
                                                 card_last4="4242")])
    store.tables.charges["r1"] = ("charged", PRICE)
    assert store.counts()["accepted_unresolved"] == 1  # the process never heard of it
    store.process("r1", store.events[-1][2].payload)
    after = store.counts()
    assert (after["accepted_unresolved"], after["reservations_confirmed"]) == (0, 1)


def test_a_guest_cancelling_before_the_payment_outcome_ends_the_stay() -> None:
    store = Store()
    store.booked("r1")
    store.command(CancelReservation(reservation_id="r1", by="g"))
    store.paid("r1", ok=False)  # the charge failed after the guest cancelled
    c = store.counts()
    assert (c["accepted_unresolved"], c["failed_but_held"]) == (0, 0)
    assert (c["cancelled_by_guest"], c["replay_mismatch_process"]) == (1, 0)


def refund(store: Store, rid: str, *amounts: int) -> None:
    """The refund stream and the gateway's rows of ``amounts`` refunded (first: issued)."""
    store.events = [e for e in store.events if e[0] != f"refund:{rid}"]
    store.append(f"refund:{rid}", [RefundIssued(reservation_id=rid, guest_id="g",
                                                amount=amounts[0], refund_id="re",
                                                card_last4="4242")])
    store.tables.refunds = [(rid, a) for a in amounts]


def test_a_cancelled_charged_stay_needs_a_refund_outcome_and_no_more() -> None:
    store = Store()
    store.booked("r1")
    store.paid("r1", ok=True)
    store.command(CancelReservation(reservation_id="r1", by="g"))
    assert store.counts()["cancelled_paid_without_refund"] == 1
    refund(store, "r1", PRICE)
    exact = store.counts()
    assert (exact["cancelled_paid_without_refund"], exact["refunds_over_charge"]) == (0, 0)
    refund(store, "r1", PRICE + 1)
    assert store.counts()["refunds_over_charge"] == 1
    refund(store, "r1", PRICE, 1)  # a second refund of the same charge
    assert store.counts()["refunds_over_charge"] == 1


def test_a_declined_cancelled_stay_owes_no_refund_outcome() -> None:
    store = Store()
    store.booked("r1")
    store.paid("r1", ok=False)
    unpaid_release(store, "r1")
    assert store.counts()["cancelled_paid_without_refund"] == 0


def test_a_snapshot_must_be_the_replay_of_its_stream_up_to_its_version() -> None:
    store = Store()
    for i in range(4):
        store.booked(f"r{i}", start=10 + 2 * i)
    stream = [e.payload for sid, _v, e in store.events if sid == f"apartment:{APT}"]
    v = len(stream) - 2  # before the last acceptance (its DatesBooked changes no state)
    good = to_snapshot(fold_apartment(APT, stream[:v]))
    store.tables.snapshots = [(f"apartment:{APT}", v, SCHEMA, good)]
    counts = store.counts()
    assert (counts["snapshots_checked"], counts["replay_mismatch_snapshot"]) == (1, 0)
    ahead = to_snapshot(fold_apartment(APT, stream))  # holds an event past its version
    store.tables.snapshots = [(f"apartment:{APT}", v, SCHEMA, ahead)]
    assert store.counts()["replay_mismatch_snapshot"] == 1


def test_search_must_hold_what_the_apartment_replays_to() -> None:
    store = Store()
    store.booked("r1")
    store.booked("r2", start=30)
    store.command(CancelReservation(reservation_id="r2", by="g"))
    store.search_as_replayed()
    assert store.counts()["replay_mismatch_search"] == 0
    store.tables.search_booked[APT].add(("r2", day(30), day(31)))  # a release not applied
    assert store.counts()["replay_mismatch_search"] == 1


def test_a_process_decision_missing_from_its_stream_is_a_mismatch() -> None:
    store = Store()
    store.booked("r1")
    store.paid("r1", ok=False)
    assert store.counts()["replay_mismatch_process"] == 0
    # The compensation, which the process decides with the failure, is not recorded.
    store.events = [e for e in store.events if e[2].type != "CancelUnpaidReservation"]
    assert store.counts()["replay_mismatch_process"] == 1
