"""The store drill: PostgreSQL restarted, killed and cut off under booking traffic.

``python -m tests.faults.store_drill [--short]`` (``make drill-store``) starts a
private RabbitMQ node, a private PostgreSQL server and two ``staybook serve``
processes on it. Producers race requests and accepts on a few hot apartments (and
re-send unanswered commands with the same id) while the drill, in turn:

* restarts PostgreSQL with ``pg_ctl restart -m fast``, then ``-m immediate``;
* SIGKILLs the postmaster (and what is left of its server processes) and starts it
  again after 1, 5 and 30 seconds;
* terminates every backend of the store's database (``pg_terminate_backend``).

``--short`` (the CI test) makes one fault of each kind: a fast restart, a kill with
a 1 s outage, and the terminated backends.

A prober sends a new command every 0.1 s throughout. Per fault it reports the outage
(from the fault to the server accepting connections again), the time without
service (from the fault to the first answer of a probe sent after it), and the nodes
that exited. After the last fault everything drains and :func:`check` counts what
went wrong; every count must be zero, no node may exit, and no fault may cost more
than its outage plus ``SERVICE_SLACK`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from pika.exceptions import AMQPError

from broker.client import Client
from broker.rabbitmq import all_consumed
from broker.topology import Topology
from config import DEFAULT_PARTITIONS
from console.localdb import PG_CTL_WRAPPER, free_port
from messages import AddApartment, Envelope
from tests.conftest import unique
from tests.faults.checker import MUST_BE_ZERO
from tests.faults.cluster_drill import HOT, wind_down
from tests.faults.drill import Faults, finish
from tests.faults.procs import NodeProcess, private_rabbit
from tests.faults.workload import History, Op, Producer

log = logging.getLogger("store-drill")

SERVICE_SLACK = 2.0  # seconds a fault may cost beyond the store's own outage
STORE_MUST_BE_ZERO = (*MUST_BE_ZERO, "confirmed_unanswered", "node_exits", "slow_recoveries",
                      "probes_unanswered")
PASSWORD = "staybook"
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


class PgServer:
    """A private PostgreSQL server the drill can restart, kill and start again."""

    def __init__(self, workdir: Path, dbname: str = "staybook") -> None:
        self.workdir = workdir
        self.datadir = workdir / "pgdata"
        self.logfile = workdir / "postgresql.log"
        self.port = free_port()
        self.dbname = dbname
        self._executor: Any = None
        self._options = (f"-F -p {self.port} -c listen_addresses='127.0.0.1' "
                         f"-c unix_socket_directories='{workdir}' -c max_connections=300 "
                         f"-c fsync=off")

    @property
    def url(self) -> str:
        """The store's URL for the nodes."""
        return (f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{self.port}/"
                f"{self.dbname}")

    def start(self) -> None:
        """Create the cluster and its database, and start the server."""
        from pytest_postgresql.executors import PostgreSQLExecutor
        from pytest_postgresql.janitor import DatabaseJanitor

        self.workdir.mkdir(parents=True, exist_ok=True)
        # pg_ctl leaves the postmaster an orphan: be the one who adopts it, so a
        # killed server is reaped here (and its pid stops holding its lock files).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        executor = PostgreSQLExecutor(
            executable=str(PG_CTL_WRAPPER), host="127.0.0.1", port=self.port,
            user="postgres", password=PASSWORD, dbname=self.dbname, options="",
            postgres_options="-c max_connections=300 -c fsync=off",
            datadir=str(self.datadir), unixsocketdir=str(self.workdir),
            logfile=str(self.logfile), startparams="-w")
        executor.start()
        self._executor = executor  # its finaliser stops the server: keep it while in use
        DatabaseJanitor(user="postgres", host="127.0.0.1", port=self.port, dbname=self.dbname,
                        password=PASSWORD).init()

    def pg_ctl(self, *args: str, timeout: float = 120.0) -> None:
        """Run pg_ctl on this server (as the postgres user when root)."""
        subprocess.run([str(PG_CTL_WRAPPER), *args, "-D", str(self.datadir)], check=True,
                       timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def restart(self, mode: str) -> None:
        """``pg_ctl restart -m mode``: stop (fast: clean; immediate: no checkpoint), start."""
        self.pg_ctl("restart", "-m", mode, "-w", "-o", self._options, "-l", str(self.logfile))

    def kill(self) -> None:
        """SIGKILL the postmaster, then whatever of its server processes is left."""
        pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
        children = self._children(pid)
        os.kill(pid, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        # This process adopted the server's processes (a subreaper, see ``start``):
        # reap them, or their pid would still hold the lock files.
        for p in (pid, *children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p, 0)

    @staticmethod
    def _children(ppid: int) -> list[int]:
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(entry.name))
        return out

    def start_again(self) -> None:
        """``pg_ctl start`` after a kill (crash recovery runs first)."""
        self.pg_ctl("start", "-w", "-o", self._options, "-l", str(self.logfile))

    def terminate_backends(self) -> int:
        """``pg_terminate_backend`` on every other session of the store's database."""
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                             password=PASSWORD, dbname="postgres", autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (self.dbname,)).fetchall()
        return len(rows)

    def wait_accepting(self, timeout: float = 120.0) -> float:
        """Wait until the server takes connections; the monotonic time it did."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                                     password=PASSWORD, dbname=self.dbname,
                                     connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return time.monotonic()
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (immediately: the drill is over)."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.pg_ctl("stop", "-m", "immediate", "-w", timeout=60)


@dataclass(eq=False)  # a thread is hashed by identity
class Prober(threading.Thread):
    """Sends a new command every ``interval`` seconds and records when each is answered.

    Its commands join the history, so the checker counts them like any other. After a
    lost connection it re-sends what was unanswered with the same ids (the replies
    were addressed to the old connection), as any producer must.
    """

    url: str
    topology: Topology
    history: History
    stop: threading.Event
    interval: float = 0.1
    sent: list[tuple[float, Envelope, Op]] = field(default_factory=list)
    answered: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(name="prober", daemon=True)
        self._lock = threading.Lock()
        self._count = 0

    def run(self) -> None:
        """Probe until stopped, reconnecting as needed; then collect the last answers."""
        deadline = None
        while deadline is None or (time.monotonic() < deadline and self.unanswered()):
            try:
                with Client(self.url, self.topology) as client:
                    for _t, env, _op in self._pending():
                        client.publish(env)
                    while not self.stop.is_set() and self._count < 100_000:
                        self._send(client)
                        self._collect(client, self.interval)
                    deadline = deadline or time.monotonic() + 120
                    while time.monotonic() < deadline and self.unanswered():
                        self._collect(client, 0.5)
            except (AMQPError, OSError, ValueError) as exc:  # a lost connection: a new one
                log.info("prober: %r; reconnecting", exc)
                time.sleep(self.interval)

    def _send(self, client: Client) -> None:
        self._count += 1
        env = Envelope.new(AddApartment(owner_id="prober", city="Probe", title="p",
                                        price_per_night=1, currency="EUR", capacity=1),
                           apartment_id=f"probe-{self._count}")
        op = Op(env.message_id, env.type, env.apartment_id or "", None, env.to_json())
        self.history.add(op)
        with self._lock:
            self.sent.append((time.monotonic(), env, op))
        client.publish(env)
        op.confirmed = True

    def _pending(self) -> list[tuple[float, Envelope, Op]]:
        with self._lock:
            return [s for s in self.sent if s[2].message_id not in self.answered]

    def _collect(self, client: Client, wait: float) -> None:
        """Take the replies that arrive within ``wait`` seconds."""
        end = time.monotonic() + wait
        for _t, _env, op in self._pending():
            left = end - time.monotonic()
            try:
                reply = client.wait_reply(op.message_id, timeout=max(0.001, left))
            except TimeoutError:
                continue
            op.replies.append(reply.payload.model_dump(mode="json"))
            with self._lock:
                self.answered[op.message_id] = time.monotonic()

    def unanswered(self) -> int:
        """Probes published and not yet answered."""
        return len(self._pending())

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time between two answers (or ``start`` and the first) up to
        ``end``: how long nothing was answered."""
        with self._lock:
            times = sorted(t for t in self.answered.values() if start <= t <= end)
        marks = [start, *times]
        return max((b - a for a, b in itertools.pairwise(marks)), default=0.0)

    def first_answer_after(self, t: float) -> float | None:
        """When the first probe sent after ``t`` was answered (None: none yet)."""
        with self._lock:
            times = [self.answered[op.message_id] for sent, _env, op in self.sent
                     if sent >= t and op.message_id in self.answered]
        return min(times) if times else None


@dataclass(frozen=True)
class Fault:
    """One fault: its name and what it does (returns when the store is back)."""

    name: str
    apply: Callable[[PgServer], None]


def _kill_for(seconds: float) -> Fault:
    def apply(pg: PgServer) -> None:
        pg.kill()
        time.sleep(seconds)
        pg.start_again()
    return Fault(f"SIGKILL postmaster, start after {seconds:g}s", apply)


def faults(short: bool) -> list[Fault]:
    """The drill's faults, in order (``short``: one of each kind, a 1 s outage)."""
    fast = Fault("restart -m fast", lambda pg: pg.restart("fast"))
    cut = Fault("pg_terminate_backend (all)", lambda pg: log.info(
        "terminated %d backends", pg.terminate_backends()))
    if short:
        return [fast, _kill_for(1), cut]
    return [fast, Fault("restart -m immediate", lambda pg: pg.restart("immediate")),
            _kill_for(1), _kill_for(5), _kill_for(30), cut]


def run_store_drill(*, workdir: Path, short: bool = False, producers: int = 4, seed: int = 1,
                    nodes: int = 2, settle: float = 4.0, out: Callable[[str], None] = print
                    ) -> dict[str, Any]:
    """Run the store drill; the checker's figures plus a row per fault."""
    rabbit = private_rabbit(workdir / "rabbitmq")
    pg = PgServer(workdir / "postgresql")
    history = History()
    stop = threading.Event()
    probes_stop = threading.Event()
    t0 = time.monotonic()
    prefix = unique("store")
    topology = Topology(prefix=prefix, partitions=DEFAULT_PARTITIONS)
    live: list[NodeProcess] = []
    threads: list[threading.Thread] = []

    def stamp(text: str) -> None:
        out(f"[{time.monotonic() - t0:6.1f}s] {text} ({len(history.ops)} commands so far)")

    try:
        rabbit.start()
        pg.start()
        for i in range(nodes):
            node = NodeProcess(rabbit.url, prefix, workdir,
                               {"STAYBOOK_STORE__PROBE_MAX_SECONDS": "0.5"},
                               name=f"s{i + 1}", db_url=pg.url)
            node.start(wait_queues=False)
            live.append(node)
        deadline = time.monotonic() + 60
        while not all_consumed(rabbit.url, topology.work_queues()):
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes never consumed every partition")
            time.sleep(0.2)
        prober = Prober(rabbit.url, topology, history, probes_stop)
        threads = [Producer(i, rabbit.url, topology, history, stop, seed=seed, hot=HOT)
                   for i in range(producers)]
        for t in (*threads, prober):
            t.start()
        rows: list[dict[str, Any]] = []
        counts = Faults()
        for fault in faults(short):
            time.sleep(settle)
            stamp(f"fault: {fault.name}")
            began = time.monotonic()
            fault.apply(pg)
            back = pg.wait_accepting()
            counts.add("store_fault")
            deadline = time.monotonic() + 120
            answered = prober.first_answer_after(back)
            while answered is None and time.monotonic() < deadline:
                time.sleep(0.05)
                answered = prober.first_answer_after(back)
            outage = back - began
            without = None if answered is None else prober.longest_gap(began, answered)
            exits = sum(not n.alive() for n in live)
            rows.append({"fault": fault.name, "outage_s": round(outage, 2),
                         "without_service_s": None if without is None else round(without, 2),
                         "node_exits": exits})
            out(f"  outage {outage:.2f}s, without service "
                f"{'-' if without is None else f'{without:.2f}s'}, node exits {exits}")
        probes_stop.set()
        prober.join(150)
        figures = wind_down(rabbit.url, topology, pg.url, history, stop, threads, live,
                            counts, stamp)
        figures["faults_table"] = rows
        figures["node_exits"] = sum(r["node_exits"] for r in rows)
        figures["slow_recoveries"] = sum(
            1 for r in rows if r["without_service_s"] is None
            or r["without_service_s"] > r["outage_s"] + SERVICE_SLACK)
        figures["probes_unanswered"] = prober.unanswered()
        figures["probes"] = len(prober.sent)
        figures["seconds"] = round(time.monotonic() - t0)
        return figures
    finally:
        stop.set()
        probes_stop.set()
        for node in live:
            if node.alive():
                node.kill()
        pg.stop()
        rabbit.stop()


def report(figures: dict[str, Any]) -> str:
    """The per-fault table, then the counts."""
    lines = [f"  {'fault':<34} {'outage s':>9} {'no service s':>13} {'node exits':>11}"]
    for r in figures.get("faults_table", []):
        ws = "-" if r["without_service_s"] is None else f"{r['without_service_s']:.2f}"
        lines.append(f"  {r['fault']:<34} {r['outage_s']:>9.2f} {ws:>13} {r['node_exits']:>11}")
    keys = ["seconds", "commands", "confirmed", "answered", "not_confirmed", "resends",
            "resends_answered_from_inbox", "probes", "accepted", "charges",
            "payments_failed", "notifications", *STORE_MUST_BE_ZERO]
    lines += [f"  {k:<30} {figures.get(k, 0)}" for k in keys]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: run the drill, print its figures; 1 if a must-be-zero is not."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--short", action="store_true",
                    help="one fault of each kind, a 1 s outage (as in CI)")
    ap.add_argument("--producers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    workdir = Path(tempfile.mkdtemp(prefix="staybook-store-drill-"))
    print(f"store drill: {args.producers} producers, work dir {workdir}")
    try:
        figures = run_store_drill(workdir=workdir, short=args.short, producers=args.producers,
                                  seed=args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return finish(figures, report(figures), STORE_MUST_BE_ZERO, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
