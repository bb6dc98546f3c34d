"""What fencing a decision with no events costs the writer: ``python -m bench.fence``.

An actor's "nothing to do" commits only its inbox row and its reply, whose position is
the stream's newest event. The writer fences such a commit (``lineage`` set) by reading
the head of every such stream once per batch, in the transaction, and checking it
against the version the actor decided from; an unfenced commit (``lineage`` 0) reads
its head alone when its reply needs it. On one SQLite file (``synchronous=FULL``,
as a node runs), for ``--streams`` streams it prints the writer's CPU and wall time
per commit for:

* **events**: commits that append an event (the hot path, fenced by the unique index),
  the baseline of the ratios;
* **no-op, unfenced**: no events, reply position read per commit (lineage 0);
* **no-op, fenced**: no events, head read and checked once per batch (lineage set);
* **mixed**: one no-op after each append, fenced.

Commits are submitted in bursts (``--burst``), as a busy node's actors do, so batches
form. Times are of the whole run; ratios are to the same run's events figure.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from messages import ApartmentAdded, Envelope
from store import Commit, InboxEntry, StoreWriter, make_engine


def _event(i: int) -> Envelope:
    return Envelope.new(ApartmentAdded(owner_id="o", city="Rome", title=f"t{i}",
                                       price_per_night=100, currency="EUR", capacity=2),
                        apartment_id=f"a{i}")


def _run(writer: StoreWriter, commits: list[Commit]) -> tuple[float, float]:
    """Submit ``commits`` and wait for the last; (wall, process CPU) seconds."""
    left = [len(commits)]
    done = threading.Event()
    lock = threading.Lock()

    def on_done(exc: BaseException | None) -> None:
        assert exc is None, exc
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    for c in commits:
        c.on_done = on_done
    w0, c0 = time.perf_counter(), time.process_time()
    for c in commits:
        writer.submit(c)
    assert done.wait(300), "the writer did not finish"
    return time.perf_counter() - w0, time.process_time() - c0


def measure(streams: int, burst: int, workdir: Path) -> dict[str, tuple[float, float]]:
    """Per-commit (wall, CPU) microseconds of each kind, on a fresh store."""
    engine = make_engine(f"sqlite:///{workdir / 'fence.db'}")
    writer = StoreWriter(engine, batch_max=burst)
    writer.start()
    out: dict[str, tuple[float, float]] = {}
    versions = dict.fromkeys(range(streams), 0)
    mid = [0]

    def inbox() -> InboxEntry:
        mid[0] += 1
        return InboxEntry("intake", f"m{mid[0]}", lambda pos: str(pos).encode())

    def append(i: int, lineage: int) -> Commit:
        c = Commit(stream_id=f"apartment:a{i}", expected_version=versions[i],
                   events=[_event(i)], inbox=inbox(), lineage=lineage)
        versions[i] += 1
        return c

    def quiet(i: int, lineage: int) -> Commit:
        return Commit(stream_id=f"apartment:a{i}", expected_version=versions[i],
                      inbox=inbox(), lineage=lineage)

    kinds: dict[str, Callable[[int], list[Commit]]] = {
        "events": lambda i: [append(i, i + 1)],
        "no-op, unfenced": lambda i: [quiet(i, 0)],
        "no-op, fenced": lambda i: [quiet(i, i + 1)],
        "mixed (append + fenced no-op)": lambda i: [append(i, i + 1), quiet(i, i + 1)],
    }
    try:
        _run(writer, [c for i in range(streams) for c in kinds["events"](i)])  # warm up
        for name, make in kinds.items():
            commits = [c for i in range(streams) for c in make(i)]
            wall, cpu = _run(writer, commits)
            out[name] = (wall / len(commits) * 1e6, cpu / len(commits) * 1e6)
    finally:
        writer.stop()
        engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    """Run and print the figures with their ratios to the append path."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--streams", type=int, default=5000)
    ap.add_argument("--burst", type=int, default=256)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="staybook-fence-") as tmp:
        figures = measure(args.streams, args.burst, Path(tmp))
    base_wall, base_cpu = figures["events"]
    print(f"writer cost per commit, {args.streams} streams, batches of up to {args.burst}")
    print(f"  {'commit':<32} {'wall µs':>9} {'CPU µs':>9} {'wall ratio':>11} "
          f"{'CPU ratio':>10}")
    for name, (wall, cpu) in figures.items():
        print(f"  {name:<32} {wall:>9.1f} {cpu:>9.1f} {wall / base_wall:>11.2f} "
              f"{cpu / base_cpu:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
