"""A fault drill: booking traffic against a node while the drill breaks things.

``python -m tests.faults.drill [--seconds N] [--producers N] [--seed N]`` (``make drill``)
starts a private RabbitMQ node and ``staybook serve`` as subprocesses, runs the
producers of :mod:`tests.faults.workload` and, on a schedule, SIGKILLs the node (and
starts it again), restarts the broker on the same data (clean stop, or SIGKILL in the
long drill), closes every connection with ``rabbitmqctl close_all_connections``, and
injects malformed messages throughout. A fifth of the charges meet a faulty gateway.
Then the faults stop, the producers finish their retries, everything drains, and
:func:`tests.faults.checker.check` counts what was lost or duplicated. It prints the
figures (and exits 1 if a count that must be zero is not).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select

from broker.topology import Topology
from config import DEFAULT_PARTITIONS
from store.tables import events_table, outbox_table
from tests.conftest import unique
from tests.faults.checker import (
    MUST_BE_ZERO,
    check,
    drain_dead_letters,
    lifecycles_open,
    store_url,
)
from tests.faults.lifecycle import LIFECYCLE_FIGURES
from tests.faults.procs import NodeProcess, private_rabbit, queue_depths
from tests.faults.workload import History, PoisonInjector, Producer

log = logging.getLogger("drill")


@dataclass
class Faults:
    """What the drill did, by kind."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str) -> None:
        """Count one injected fault."""
        self.counts[kind] = self.counts.get(kind, 0) + 1


def _store_figures(db: Path | str) -> tuple[int, int]:
    """(events recorded, outbox rows not yet published), read beside the node."""
    if isinstance(db, Path) and not db.exists():
        return (0, 0)
    engine = create_engine(store_url(db))
    try:
        with engine.connect() as conn:
            n = conn.execute(select(func.count()).select_from(events_table)).scalar() or 0
            backlog = conn.execute(select(func.count()).select_from(outbox_table)).scalar() or 0
            return (int(n), int(backlog))
    except Exception:  # noqa: BLE001 - the tables may not exist yet
        return (0, 0)
    finally:
        engine.dispose()


def wait_quiet(url: str, topology: Topology, db: Path | str, *, timeout: float = 120.0,
               quiet_for: int = 3) -> bool:
    """Wait until work queues are empty, the outbox is published, events stop growing
    and every booking's lifecycle ended.

    Ready messages and the event count miss work in flight (a delivery being handled,
    a gateway retry), so quiet alone could check a booking between its payment outcome
    and its process's answer; the lifecycles are read only once the rest looks quiet
    (every few seconds: it folds the whole store).
    """
    queues = topology.work_queues()
    deadline = time.monotonic() + timeout
    last: tuple[int, int] | None = None
    stable = 0
    while time.monotonic() < deadline:
        depths = queue_depths(url, queues)
        figures = _store_figures(db)
        idle = depths is not None and not any(depths.values()) and figures[1] == 0
        stable = stable + 1 if idle and figures == last else 0
        if stable >= quiet_for and (stable - quiet_for) % 5 == 0 and lifecycles_open(db) == 0:
            return True
        last = figures
        time.sleep(1.0)
    return False


def run_drill(*, seconds: float, producers: int = 4, seed: int = 1, workdir: Path,
              broker_kill: bool = False, out: Callable[[str], None] = print
              ) -> dict[str, Any]:
    """Run one drill; return the checker's figures plus the faults injected."""
    rabbit = private_rabbit(workdir / "rabbitmq")
    rabbit.start()
    prefix = unique("drill")
    topology = Topology(prefix=prefix, partitions=DEFAULT_PARTITIONS)
    node = NodeProcess(rabbit.url, prefix, workdir)
    history = History()
    stop = threading.Event()
    faults = Faults()
    threads: list[threading.Thread] = []
    t0 = time.monotonic()
    try:
        node.start()
        threads = [Producer(i, rabbit.url, topology, history, stop, seed=seed)
                   for i in range(producers)]
        threads.append(PoisonInjector(rabbit.url, topology, history, stop, seed=seed,
                                      interval=0.5))
        for t in threads:
            t.start()
        schedule = ["kill_node", "close_connections", "kill_node", "restart_broker"]
        # A node restart takes a few seconds (it waits for its partitions): leave room
        # for them, so every kind of fault happens within ``seconds``.
        pause = max(2.0, seconds / (len(schedule) * max(1, round(seconds / 60)) + 1) - 2.5)
        i = 0

        def done() -> bool:
            # The same mix on a slow machine: past ``seconds`` (up to three times as
            # long) until every kind of fault happened once.
            elapsed = time.monotonic() - t0
            mixed = all(faults.counts.get(k, 0) for k in schedule)
            return elapsed >= seconds and (mixed or elapsed >= 3 * seconds)

        while not done() and i < 10_000:
            time.sleep(pause)
            if done():
                break
            kind = schedule[i % len(schedule)]
            i += 1
            out(f"[{time.monotonic() - t0:6.1f}s] {kind} "
                f"({len(history.ops)} commands so far)")
            if kind == "kill_node":
                node.kill()
                time.sleep(0.5)
                node.start()
            elif kind == "close_connections":
                rabbit.close_all_connections("fault drill")
            else:
                rabbit.restart(kill=broker_kill and faults.counts.get(kind, 0) % 2 == 1)
            faults.add(kind)
        out(f"[{time.monotonic() - t0:6.1f}s] faults stop; producers finish their retries")
        stop.set()
        for t in threads:
            t.join(240)
        if not node.alive():
            node.start()
        quiet = wait_quiet(rabbit.url, topology, node.db_path)
        out(f"[{time.monotonic() - t0:6.1f}s] drained (quiet={quiet}); checking")
        node.terminate()
        dead = drain_dead_letters(rabbit.url, topology.dead_letter_queue, node.db_path)
        figures = check(node.db_path, history, dead)
        figures["quiet"] = int(quiet)
        figures["poison_injected"] = len(history.poison)
        figures.update({f"fault_{k}": v for k, v in faults.counts.items()})
        figures["faults"] = sum(faults.counts.values())
        figures["node_starts"] = node.starts
        figures["producers_stuck"] = sum(t.is_alive() for t in threads)
        figures["seconds"] = round(time.monotonic() - t0)
        return figures
    finally:
        stop.set()
        if node.alive():
            node.kill()
        rabbit.stop()


def report(figures: dict[str, Any]) -> str:
    """The figures as a readable block."""
    keys = ["seconds", "faults", "fault_kill_node", "fault_close_connections",
            "fault_restart_broker", "node_starts", "commands", "confirmed", "answered",
            "confirmed_unanswered", "not_confirmed", "took_effect", "resends",
            "resends_answered_from_inbox", "accepted", *LIFECYCLE_FIGURES, "charges",
            "payments_failed", "notifications", "poison_injected", "poison_confirmed",
            "dead_letters", "poison_dead_lettered_twice", *MUST_BE_ZERO]
    return "\n".join(f"  {k:<30} {figures.get(k, 0)}" for k in keys)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: run a drill, print its figures; 1 if a must-be-zero is not."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--producers", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--broker-kill", action="store_true",
                    help="SIGKILL the broker on every other broker restart")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # refused connections are the point
    workdir = Path(tempfile.mkdtemp(prefix="staybook-drill-"))
    print(f"drill: {args.seconds:.0f}s, {args.producers} producers, work dir {workdir}")
    try:
        figures = run_drill(seconds=args.seconds, producers=args.producers, seed=args.seed,
                            workdir=workdir, broker_kill=args.broker_kill)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return finish(figures, report(figures), MUST_BE_ZERO, args.json_out)


def finish(figures: dict[str, Any], text: str, must_be_zero: Sequence[str],
           json_out: Path | None) -> int:
    """Print a drill's figures (and write them as JSON); 1 if a must-be-zero is not."""
    print(text)
    if json_out:
        json_out.write_text(json.dumps(figures, indent=2))
    bad = [k for k in must_be_zero if figures.get(k)]
    if bad:
        print("\n".join(figures.get("evidence", [])))
        print(f"FAILED: {', '.join(bad)}")
        return 1
    print("all must-be-zero counts are zero")
    return 0


if __name__ == "__main__":
    sys.exit(main())
