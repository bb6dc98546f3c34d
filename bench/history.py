"""What an apartment's history costs: ``python -m bench.history``.

No cost of an apartment should grow with its history. For apartments with 10, 1,000
and 10,000 events (``--sizes``) it prints, per operation, the time and its ratio to
the smallest size's figure measured in the same run:

* **rehydrate**: an apartment actor rebuilding its memory from a SQLite file: from
  its snapshot and the events after it, as the actor left them (the tail is up to
  ``snapshot_every - 1`` events); from a snapshot at the newest event (no tail: the
  best case); and, for comparison, by replaying the whole stream. Their ratios are to
  a fresh apartment's (the smallest size, which has no snapshot);
* **decide** a ``RequestReservation`` (checked against the accepted stays and the
  blocks) and an ``AcceptReservation`` that turns down the three pending requests it
  displaces, on the state the actor rehydrated;
* **evolve**: folding one of the acceptance's events;
* **take a snapshot**: what the actor does every ``--snapshot-every`` events
  (encode its state), and that per event.

Each history is written by a real apartment actor (pykka, the store writer, the
rules), so its snapshots are where the actor puts them: a round of four requests,
one accepted, one rejected, one withdrawn, one expired (nine events, all on nights of
their own), then filler to the exact size, then four pending requests for the same
nights. Times are medians of repeated runs, in CPU time of the measuring thread;
ratios are against the same run's smallest size, never an absolute threshold.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import reduce
from pathlib import Path
from typing import Any, ClassVar

from actors.apartment import ApartmentActor
from actors.base import EntityContext, GetVersion, Handle
from actors.outcome import Ticket
from config import ActorSettings
from messages import (
    AcceptReservation,
    AddApartment,
    Envelope,
    ExpireReservation,
    Message,
    RejectReservation,
    RequestReservation,
    ReservationRequested,
    UpdateApartment,
    WithdrawRequest,
)
from rules.apartment import Apartment, Rules, decide, evolve
from rules.policy import Lifecycle
from rules.snapshot import SCHEMA, snapshot_of
from store import Commit, EventStore, Snapshot, StoreWriter, make_engine
from store.writer import snapshot_effects

NOW = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)
RULES = Rules(today=NOW.date(), now=NOW, request_ttl=timedelta(0))
OWNER = "owner"
DISPLACED = 3  # pending requests an acceptance turns down


def commands(events: int, prefix: str = "") -> Iterator[Message]:
    """Commands whose events number exactly ``events`` (at least 5); reservation ids
    start with ``prefix`` (they are unique across apartments)."""
    yield AddApartment(owner_id=OWNER, city="Lisbon", title="Flat", price_per_night=100,
                       currency="EUR", capacity=2)
    left, i = events - 1 - (DISPLACED + 1), 0

    def request(rid: str, night: int) -> RequestReservation:
        start = RULES.today + timedelta(days=1 + 2 * night)
        return RequestReservation(reservation_id=rid, guest_id=f"g{rid}", start=start,
                                  end=start + timedelta(days=2))

    while left >= 9:  # requested, then accepted + booked / rejected / withdrawn / expired
        rids = [f"{prefix}r{i + k}" for k in range(4)]
        yield from (request(rid, i + k) for k, rid in enumerate(rids))
        yield AcceptReservation(reservation_id=rids[0], owner_id=OWNER)
        yield RejectReservation(reservation_id=rids[1], owner_id=OWNER)
        yield WithdrawRequest(reservation_id=rids[2], guest_id=f"g{rids[2]}")
        yield ExpireReservation(reservation_id=rids[3])
        i, left = i + 4, left - 9
    while left >= 2:
        yield request(f"{prefix}r{i}", i)
        yield RejectReservation(reservation_id=f"{prefix}r{i}", owner_id=OWNER)
        i, left = i + 1, left - 2
    if left:
        yield UpdateApartment(owner_id=OWNER)  # refused: nothing to change, one event
    for k in range(DISPLACED + 1):  # pending, all on one set of nights
        yield request(f"{prefix}p{k}", i)


class _FullReplay(ApartmentActor):
    """The apartment's actor without snapshots: it replays its whole stream."""

    snapshot_tag: ClassVar[str | None] = None


@dataclass
class History:
    """One apartment's history, written to the store."""

    apartment_id: str
    events: int
    snapshot_version: int


def write_history(ctx: EntityContext, apartment_id: str, events: int) -> History:
    """Have a real apartment actor handle the commands of ``events`` events."""
    ref = ApartmentActor.start(f"apartment:{apartment_id}", apartment_id, ctx,
                               lambda _f: None)
    try:
        for c in commands(events, f"{apartment_id}."):
            env = Envelope.new(c, apartment_id=apartment_id)
            ref.tell(Handle(env, Ticket(lambda _o: None, message_id=env.message_id)))
        version = ref.ask(GetVersion())
        ctx.writer.barrier(timeout=120)
    finally:
        ref.stop()
    assert version == events, (version, events)
    snapshot, _tail = ctx.store.resume(f"apartment:{apartment_id}")
    return History(apartment_id, events, 0 if snapshot is None else snapshot.version)


def per_call(fn: Callable[[], object], *, budget: float, most: int) -> float:
    """The median CPU time of ``fn`` in seconds, over about ``budget`` seconds of runs.

    The calling thread's CPU time (reading SQLite is done on it too): on a shared
    machine, wall time would mostly measure the other processes.
    """
    times: list[float] = []
    spent = 0.0
    while len(times) < 3 or (spent < budget and len(times) < most):
        t0 = time.thread_time()
        fn()
        dt = time.thread_time() - t0
        times.append(dt)
        spent += dt
    return statistics.median(times)


def measure(sizes: Sequence[int], every: int, tmp: Path,
            budget: float = 0.5) -> dict[int, dict[str, float]]:
    """Every figure, in seconds (and counts), by history size."""
    engine = make_engine(f"sqlite:///{tmp / 'history.db'}", synchronous="NORMAL")
    writer = StoreWriter(engine)
    writer.start()
    ctx = EntityContext(EventStore(engine), writer, clock=lambda: NOW,
                        lifecycle=Lifecycle(request_ttl=timedelta(0)), snapshot_every=every)
    try:
        return {n: _measure_one(ctx, write_history(ctx, f"apt-{n}", n), budget)
                for n in sizes}
    finally:
        writer.stop()
        engine.dispose()


def _measure_one(ctx: EntityContext, h: History, budget: float) -> dict[str, float]:
    eid = f"apartment:{h.apartment_id}"

    def rehydrate(kind: type[ApartmentActor]) -> ApartmentActor:
        actor = kind(eid, h.apartment_id, ctx, lambda _f: None)
        actor.repository.rehydrate()
        return actor

    state: Apartment = rehydrate(ApartmentActor).state
    assert rehydrate(_FullReplay).state == state
    # nights no accepted stay holds, half-way through the history
    start = RULES.today + timedelta(days=3 + 8 * ((h.events - 5) // 9 // 2))
    request = RequestReservation(reservation_id=f"{h.apartment_id}.new", guest_id="g",
                                 start=start, end=start + timedelta(days=2))
    assert isinstance(decide(state, request, RULES)[0], ReservationRequested)
    accept = AcceptReservation(reservation_id=f"{h.apartment_id}.p0", owner_id=OWNER)
    accepted = decide(state, accept, RULES)
    assert len(accepted) == 2 + DISPLACED, accepted
    figures: dict[str, float] = {
        "events": h.events, "stays": len(state.stays), "accepted": len(state.booked_dates),
        "snapshot at": h.snapshot_version, "tail": h.events - h.snapshot_version,
        LEFT: per_call(lambda: rehydrate(ApartmentActor), budget=budget, most=200),
        WHOLE: per_call(lambda: rehydrate(_FullReplay), budget=budget, most=200),
        "decide RequestReservation": per_call(
            lambda: decide(state, request, RULES), budget=budget / 4, most=5000),
        f"decide AcceptReservation ({DISPLACED} displaced)": per_call(
            lambda: decide(state, accept, RULES), budget=budget / 4, most=5000),
        "evolve, per event": per_call(
            lambda: reduce(evolve, accepted, state), budget=budget / 4,
            most=5000) / len(accepted),
        TAKE: per_call(lambda: snapshot_of(state), budget=budget / 2, most=500),
    }
    # the best case: a snapshot at the newest event, as if the last commit had taken it
    body, _kept = snapshot_of(state)
    ctx.writer.submit(Commit(stream_id=eid, expected_version=h.events, effects=snapshot_effects(
        Snapshot(eid, h.events, SCHEMA, body))))
    ctx.writer.barrier()
    figures[HEAD] = per_call(lambda: rehydrate(ApartmentActor), budget=budget, most=200)
    return figures


LEFT = "rehydrate: snapshot + tail (as left)"
HEAD = "rehydrate: snapshot at the newest event"
WHOLE = "rehydrate: replay the whole stream"
TAKE = "take a snapshot"
TIMED = (LEFT, HEAD, WHOLE, "decide RequestReservation",
         f"decide AcceptReservation ({DISPLACED} displaced)", "evolve, per event", TAKE)


def _time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def render(figures: dict[int, dict[str, float]], every: int) -> str:
    """The table: counts, then each time with its ratio to the first size's (for the
    rehydrations, to a fresh apartment's: the first size replayed, with no snapshot)."""
    sizes = sorted(figures)
    base = figures[sizes[0]]
    width = 21
    lines = [f"apartment history costs (SQLite file; a snapshot every {every} events): "
             f"CPU time per operation, and its ratio to {sizes[0]:,} events' in this run",
             f"(the rehydrations' to a fresh apartment's: {sizes[0]:,} events, no snapshot)",
             f"  {'':<42}" + "".join(f"{f'{n:,} events':>{width}}" for n in sizes)]

    def row(label: str, cells: Sequence[str]) -> None:
        lines.append(f"  {label:<42}" + "".join(f"{c:>{width}}" for c in cells))

    row("stays (accepted)", [f"{int(figures[n]['stays']):,} ({int(figures[n]['accepted']):,})"
                             for n in sizes])
    row("snapshot at version (tail)", [
        f"{int(figures[n]['snapshot at']):,} ({int(figures[n]['tail']):,})" for n in sizes])
    for key in TIMED:
        fresh = base[LEFT if key.startswith("rehydrate") else key]
        row(key, [f"{_time(figures[n][key])} {figures[n][key] / fresh:5.1f}x" for n in sizes])
    per_event = [figures[n]["take a snapshot"] / every for n in sizes]
    row(f"  the same, per event (/{every})",
        [f"{_time(p)} {p / per_event[0]:5.1f}x" for p in per_event])
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    """``10,1000,10000`` -> sizes (each at least 5 events)."""
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 5:
        raise argparse.ArgumentTypeError("sizes are event counts of at least 5")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", type=parse_sizes, default=[10, 1000, 10_000],
                    help="events in each apartment's stream (default 10,1000,10000)")
    ap.add_argument("--snapshot-every", type=int, default=ActorSettings().snapshot_every,
                    help="the actors' snapshot_every (default: as configured by default)")
    ap.add_argument("--budget", type=float, default=0.5,
                    help="seconds spent timing each operation, about (default 0.5)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        figures: dict[int, dict[str, Any]] = measure(args.sizes, args.snapshot_every,
                                                     Path(tmp), args.budget)
    print(render(figures, args.snapshot_every))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
