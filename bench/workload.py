"""The benchmark's seeded workload: booking commands built with the ``messages`` models.

``--apartments`` AddApartment, then RequestReservation in bursts of overlapping dates
on ``--hot`` apartments plus requests spread over the rest, then Accept/Reject for
some of the requests. The same seed gives the same stream (only message ids are
fresh), so runs and node counts compare like with like; an ``id_prefix`` gives a
later phase on the same node apartments and reservations of its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta

from messages import (
    AcceptReservation,
    AddApartment,
    Envelope,
    Message,
    RejectReservation,
    RequestReservation,
)

BURST = 16  # overlapping requests per burst on one hot apartment
CITIES = ("Lisbon", "Porto", "Rome", "Paris", "Berlin", "Madrid", "Vienna", "Prague")


@dataclass(frozen=True)
class Command:
    """One prepared command: its wire body and what is needed to publish it."""

    type: str
    apartment_id: str
    message_id: str
    body: bytes


def build_workload(*, apartments: int, hot: int, commands: int, seed: int,
                   today: date, id_prefix: str = "") -> list[Command]:
    """The seeded command stream, in publishing order.

    ``apartments`` AddApartment first; then RequestReservation (half of them in bursts
    of :data:`BURST` overlapping stays on the ``hot`` apartments, the rest spread over
    the other apartments); then AcceptReservation / RejectReservation for a fifth of
    what is left, picked among the requests. Every date is at least two days ahead of
    ``today``. Message ids are fresh; everything else follows from ``seed``.
    ``id_prefix`` starts every apartment, owner and reservation id, so two workloads
    sent to the same node do not touch each other's entities.
    """
    if apartments < 1 or commands < apartments:
        raise ValueError("need apartments >= 1 and commands >= apartments")
    rng = random.Random(seed)
    hot = max(0, min(hot, apartments))
    out: list[Command] = []

    def add(payload: Message, apartment_id: str) -> None:
        env = Envelope.new(payload, apartment_id=apartment_id)
        out.append(Command(env.type, apartment_id, env.message_id, env.to_json()))

    ids = [f"{id_prefix}apt-{i:05d}" for i in range(apartments)]
    owner = {a: f"{id_prefix}owner-{i:05d}" for i, a in enumerate(ids)}
    capacity: dict[str, int] = {}
    for a in ids:
        capacity[a] = rng.randint(2, 6)
        add(AddApartment(owner_id=owner[a], city=rng.choice(CITIES), title=f"Flat {a}",
                         price_per_night=rng.randint(50, 300) * 100,
                         currency="EUR", capacity=capacity[a]), a)

    left = commands - apartments
    n_decisions = left // 5
    n_requests = left - n_decisions
    hot_ids, rest = ids[:hot], ids[hot:] or ids
    n_hot = n_requests // 2 if hot_ids else 0
    requests: list[tuple[str, str]] = []  # (apartment_id, reservation_id)

    def request(a: str, start: date, nights: int) -> None:
        rid = f"{id_prefix}res-{len(requests):06d}"
        add(RequestReservation(reservation_id=rid, guest_id=f"guest-{rng.randint(0, 9999):04d}",
                               start=start, end=start + timedelta(days=nights),
                               guests=rng.randint(1, capacity[a])), a)
        requests.append((a, rid))

    def spread() -> None:
        request(rng.choice(rest), today + timedelta(days=rng.randint(2, 365)),
                rng.randint(1, 14))

    bursts = -(-n_hot // BURST) if n_hot else 0
    spread_per_burst = (n_requests - n_hot) / bursts if bursts else 0.0
    hot_done = spread_done = 0
    for b in range(bursts):
        a = rng.choice(hot_ids)
        base = today + timedelta(days=rng.randint(2, 300))
        for _ in range(min(BURST, n_hot - hot_done)):
            request(a, base + timedelta(days=rng.randint(0, 3)), rng.randint(2, 7))
            hot_done += 1
        target = round(spread_per_burst * (b + 1))
        while spread_done < target and spread_done < n_requests - n_hot:
            spread()
            spread_done += 1
    while spread_done < n_requests - n_hot:
        spread()
        spread_done += 1

    n_decisions = min(n_decisions, len(requests))
    for a, rid in rng.sample(requests, n_decisions):
        if rng.random() < 0.5:
            add(AcceptReservation(reservation_id=rid, owner_id=owner[a]), a)
        else:
            add(RejectReservation(reservation_id=rid, owner_id=owner[a]), a)
    return out
