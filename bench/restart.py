"""Crash-to-recovery time of an entity actor, next to a crash-free baseline.

``python -m bench.restart [--crashes N]`` starts a node (in-memory broker, durable
SQLite store), lists an apartment with some history, then N times: crashes the
apartment's actor (a ``Crash`` message, the operator's drill) and at once sends it a
command; the time from the crash to that command's reply is the restart time (the
crash report, the directory restarting the actor, rehydration from the store after a
writer barrier, and the command itself). The baseline in the same run is the same
command with no crash. It prints median, p99 and max of both and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from broker.memory import MemoryBroker
from config import Settings
from messages import AddApartment, Envelope, RequestReservation
from node import Node
from rules.clock import pinned
from supervisor import Crash
from tests.conftest import TODAY, MemoryProducer, day


def _pct(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def measure(crashes: int, history: int, tmp: Path) -> dict[str, dict[str, float]]:
    """Run the drill; return the figures in milliseconds."""
    settings = Settings(database_url=f"sqlite:///{tmp / 'restart.db'}")
    # The drill crashes on purpose, faster than the default intensity allows.
    settings.supervision.entities.max_restarts = 10 * crashes
    node = Node(settings, broker=MemoryBroker(), clock=pinned(TODAY))
    node.start()
    try:
        assert isinstance(node.broker, MemoryBroker)
        p = MemoryProducer(node.broker)
        p.send(AddApartment(owner_id="o", city="c", title="t", price_per_night=1,
                            currency="EUR", capacity=9),
               "a1")
        for i in range(history):  # a stream with some events to rehydrate
            p.send(RequestReservation(reservation_id=f"h{i}", guest_id="g", start=day(1),
                                      end=day(2)), "a1")
        n = 0

        def command() -> Envelope:
            nonlocal n
            n += 1
            return Envelope.new(RequestReservation(reservation_id=f"m{n}", guest_id="g",
                                                   start=day(1), end=day(2)), apartment_id="a1")

        base: list[float] = []
        crash: list[float] = []
        for _ in range(crashes):
            env = command()
            t0 = time.perf_counter()
            p.publish(env)
            p.reply()
            base.append(time.perf_counter() - t0)

            ref = node.directory.ref("apartment:a1")
            assert ref is not None
            restarts = node.directory.restarts
            env = command()
            t0 = time.perf_counter()
            ref.tell(Crash("bench"))
            p.publish(env)
            p.reply()
            crash.append(time.perf_counter() - t0)
            assert node.directory.restarts == restarts + 1
        return {"baseline": _summary(base), "crash": _summary(crash)}
    finally:
        node.stop()


def _summary(xs: Sequence[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(xs) * 1000, "p99_ms": _pct(xs, 99) * 1000,
            "max_ms": max(xs) * 1000, "n": float(len(xs))}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crashes", type=int, default=300)
    ap.add_argument("--history", type=int, default=200, help="events in the stream")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.crashes, args.history, Path(tmp))
    b, c = r["baseline"], r["crash"]
    print(f"entity restart: {args.crashes} crashes, stream of {args.history + 1} events")
    print(f"  {'':<28}{'median ms':>10}{'p99 ms':>10}{'max ms':>10}")
    print(f"  {'command, no crash':<28}{b['median_ms']:>10.2f}{b['p99_ms']:>10.2f}"
          f"{b['max_ms']:>10.2f}")
    print(f"  {'crash -> next command done':<28}{c['median_ms']:>10.2f}{c['p99_ms']:>10.2f}"
          f"{c['max_ms']:>10.2f}")
    print(f"  ratio (median): {c['median_ms'] / b['median_ms']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
