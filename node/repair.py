"""Reservations whose payment failed while their apartment still holds the nights.

A declined card (``PaymentFailed`` in ``payment:<id>``) makes the reservation process
send ``CancelUnpaidReservation``, which releases the nights. An apartment actor that
decided it from memory missing the acceptance answered "nothing to do" and released
nothing, and a store written by nodes that did not fence such decisions may hold
these reservations still. Nothing in the store marks them, so they are found by
comparing the two records: each failed payment against its apartment's stream folded
with the apartment's own rules. ``staybook ctl repair`` asks a node for this, one
bounded page at a time, and sends the command that completes each one.
"""

from __future__ import annotations

from actors.lookup import stored_state
from messages import Envelope, PaymentFailed
from messages.control import RepairPage, UnpaidBooking
from rules.apartment import Apartment, StayStatus
from store import EventStore

PAGE = 500  # failed payments read per query
BUDGET = 1000  # failed payments examined per request: a request answers in bounded time
MAX_FOLDED = 256  # apartments kept folded during one request


def unpaid_bookings(store: EventStore, *, after: int = 0, limit: int = 100,
                    budget: int = BUDGET) -> RepairPage:
    """One page of the scan: the failed payments after store position ``after`` whose
    apartment still holds the stay as accepted, at most ``limit`` of them.

    ``next`` is the position to continue after, or None once every failed payment was
    examined; ``scanned`` counts the failed payments this page examined.
    """
    found: list[UnpaidBooking] = []
    scanned = 0
    folded: dict[str, Apartment] = {}
    while scanned < budget:
        want = min(PAGE, budget - scanned)
        page = store.of_type("PaymentFailed", stream_prefix="payment:", after=after,
                             limit=want)
        for position, env in page:
            after = position
            scanned += 1
            row = _still_booked(store, env, folded)
            if row is not None:
                found.append(row)
                if len(found) >= limit:
                    return RepairPage(found=found, scanned=scanned, next=after)
        if len(page) < want:
            return RepairPage(found=found, scanned=scanned, next=None)
    return RepairPage(found=found, scanned=scanned, next=after)


def _still_booked(store: EventStore, env: Envelope,
                  folded: dict[str, Apartment]) -> UnpaidBooking | None:
    """The reservation of a ``PaymentFailed`` if its apartment holds it as accepted."""
    failed = env.payload
    if not isinstance(failed, PaymentFailed):
        return None
    rid = failed.reservation_id
    apartment_id = env.apartment_id  # an event's partition key: it is always there
    if apartment_id is None:
        return None
    state = folded.get(apartment_id)
    if state is None:
        if len(folded) >= MAX_FOLDED:
            folded.clear()
        state, _events = stored_state(store, f"apartment:{apartment_id}")
        folded[apartment_id] = state
    stay = state.stays.get(rid)
    if stay is None or stay.status is not StayStatus.ACCEPTED:
        return None
    return UnpaidBooking(reservation_id=rid, apartment_id=apartment_id,
                         guest_id=stay.guest_id, start=stay.start.isoformat(),
                         end=stay.end.isoformat(), amount=failed.amount,
                         currency=state.currency, reason=failed.reason)
