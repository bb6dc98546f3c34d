"""The cluster drill: several Staybook nodes on one store and one broker, in rotation.

``python -m tests.faults.cluster_drill [--seconds N] [--database-url URL]``
(``make drill-cluster``) starts a private RabbitMQ node, a store (PostgreSQL when a
URL is given or Debian's server can be started, else a SQLite file) and three
``staybook serve`` processes with their own names. Producers send booking traffic in
which every producer also books a few shared hot apartments, so owners' accepts on
them race across nodes, and re-send answered commands with the same id. On a
schedule the drill SIGKILLs a node (and starts it again once its partitions moved),
and now and then adds a node and gracefully removes the oldest. After each kill it
measures the failover: probes sent at the kill to apartments spread over every
partition, and the time from the kill to the last probe's answer. Then everything
drains and :func:`tests.faults.checker.check` counts what went wrong; on top of its
counts: partitions left with no consumer (or two). It also counts the partition moves
the faults caused, from the nodes' membership beats.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
from pika.exceptions import AMQPError

from broker.client import Client
from broker.membership import Beat
from broker.rabbitmq import all_consumed, connection_parameters
from broker.topology import Topology
from config import DEFAULT_PARTITIONS
from console.localdb import local_postgresql
from messages import AddApartment, Envelope
from tests.conftest import unique
from tests.faults.checker import MUST_BE_ZERO, check, drain_dead_letters
from tests.faults.drill import Faults, finish, wait_quiet
from tests.faults.lifecycle import LIFECYCLE_FIGURES
from tests.faults.procs import NodeProcess, private_rabbit, queue_counts
from tests.faults.workload import History, Op, PoisonInjector, Producer

log = logging.getLogger("cluster-drill")

CLUSTER_MUST_BE_ZERO = (*MUST_BE_ZERO, "partitions_unowned")
HOT = ("hot-0", "hot-1", "hot-2")
PROBES = 64  # AddApartment probes per kill: every partition gets some (16 partitions)


class PartitionWatch(threading.Thread):
    """Counts partition moves: a partition announced held by another node than before.

    It listens to the beats every node sends on ``<prefix>.members`` (each names the
    partitions its node holds), through a queue of its own, and only listens, so the
    nodes never see it. A kill shows as its partitions reappearing in the survivors'
    beats, a rejoin or a membership change as some moving again: what actually
    happened, rather than kills times an assumed share.
    """

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(name="partition-watch", daemon=True)
        self.url = url
        self.exchange = f"{prefix}.members"
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.holder: dict[int, str] = {}
        self.moves = 0
        self._lock = threading.Lock()

    def count(self) -> int:
        """Moves seen so far."""
        with self._lock:
            return self.moves

    def balanced(self, partitions: int, nodes: int) -> bool:
        """Whether every partition is held and ``nodes`` nodes share them evenly."""
        with self._lock:
            shares = Counter(self.holder.values())
        low = partitions // nodes
        return (sum(shares.values()) == partitions and len(shares) == nodes
                and all(low <= n <= low + 1 for n in shares.values()))

    def saw(self, body: bytes) -> None:
        """Take one beat into account."""
        beat = Beat.from_json(body)
        if beat is None:
            return
        with self._lock:
            for p in beat.held:
                before = self.holder.get(p)
                self.moves += before is not None and before != beat.node
                self.holder[p] = beat.node

    def run(self) -> None:
        """Listen until stopped, reconnecting (bounded) if the connection drops."""
        for _attempt in range(1000):
            if self.stop_event.is_set():
                return
            try:
                conn = pika.BlockingConnection(connection_parameters(self.url))
            except (AMQPError, OSError):
                self.stop_event.wait(0.5)
                continue
            try:
                ch = conn.channel()
                ch.exchange_declare(self.exchange, exchange_type="fanout", durable=True)
                queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
                ch.queue_bind(queue, self.exchange)
                ch.basic_consume(queue, lambda _c, _m, _p, body: self.saw(body),
                                 auto_ack=True)
                self.ready.set()
                while not self.stop_event.is_set():
                    conn.process_data_events(time_limit=0.2)
                return
            except (AMQPError, OSError):
                continue
            finally:
                with contextlib.suppress(AMQPError, OSError):
                    conn.close()


def consumers_per_partition(url: str, topology: Topology) -> list[int] | None:
    """Consumers of each partition queue (None when the broker cannot be asked)."""
    counts = queue_counts(url, topology.intake_queues())
    return None if counts is None else [counts[q][1] for q in topology.intake_queues()]


def unowned_partitions(url: str, topology: Topology, timeout: float = 30.0) -> int:
    """Partitions without exactly one consumer, once membership had ``timeout`` seconds
    to settle (all of them when the broker cannot be asked)."""
    owners: list[int] | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owners = consumers_per_partition(url, topology)
        if owners is not None and all(n == 1 for n in owners):
            break
        time.sleep(0.5)
    return topology.partitions if owners is None else sum(n != 1 for n in owners)


def wind_down(url: str, topology: Topology, db_url: str, history: History,
              stop: threading.Event, threads: list[threading.Thread],
              nodes: list[NodeProcess], faults: Faults,
              stamp: Callable[[str], None]) -> dict[str, Any]:
    """The end of a drill on several nodes: the producers stop, the system drains, each
    partition settles to one consumer, the nodes stop, the dead letters are read, and
    the history is checked against the store.

    Returns:
        The checker's figures, with the ones every such drill reports.
    """
    stamp("faults stop; producers finish their retries")
    stop.set()
    for t in threads:
        t.join(240)
    quiet = wait_quiet(url, topology, db_url)
    # Single-active-consumer ownership survived: each partition has one consumer.
    unowned = unowned_partitions(url, topology)
    stamp(f"drained (quiet={quiet}); checking")
    for node in nodes:
        node.terminate(timeout=60)
    dead = drain_dead_letters(url, topology.dead_letter_queue, db_url)
    figures = check(db_url, history, dead)
    figures["quiet"] = int(quiet)
    figures["partitions_unowned"] = unowned
    figures.update({f"fault_{k}": v for k, v in faults.counts.items()})
    figures["producers_stuck"] = sum(t.is_alive() for t in threads)
    return figures


def probe_failover(url: str, topology: Topology, history: History, killed_at: float,
                   tag: str, timeout: float = 60.0) -> float | None:
    """Seconds from ``killed_at`` to the answer of the last of ``PROBES`` new commands.

    Each probe adds a fresh apartment, so the probes fall on (nearly) every partition,
    the killed node's among them; they are recorded in the history like any command.
    """
    with Client(url, topology) as client:
        envs = [Envelope.new(AddApartment(owner_id="prober", city="Probe", title="p",
                                          price_per_night=1, currency="EUR", capacity=1),
                             apartment_id=f"probe-{tag}-{i}") for i in range(PROBES)]
        ops = []
        for env in envs:
            op = Op(env.message_id, env.type, env.apartment_id or "", None, env.to_json())
            history.add(op)
            ops.append(op)
            try:
                client.publish(env)
                op.confirmed = True
            except (AMQPError, OSError) as exc:
                op.error = repr(exc)
                return None
        last = killed_at
        for env, op in zip(envs, ops, strict=True):
            left = killed_at + timeout - time.monotonic()
            try:
                reply = client.wait_reply(env.message_id, timeout=max(0.1, left))
            except (TimeoutError, AMQPError, OSError) as exc:
                op.error = repr(exc)[:300]
                return None
            op.replies.append(reply.payload.model_dump(mode="json"))
            last = max(last, time.monotonic())
        return last - killed_at


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


MIN_KILLS = 2  # node kills a drill makes at least (with one membership change)


def run_cluster_drill(*, seconds: float, db_url: str, producers: int = 4, seed: int = 1,
                      workdir: Path, nodes: int = 3, out: Callable[[str], None] = print
                      ) -> dict[str, Any]:
    """Run one cluster drill; the checker's figures plus failovers and faults."""
    rabbit = private_rabbit(workdir / "rabbitmq")
    rabbit.start()
    prefix = unique("cluster")
    topology = Topology(prefix=prefix, partitions=DEFAULT_PARTITIONS)
    history = History()
    stop = threading.Event()
    faults = Faults()
    threads: list[threading.Thread] = []
    live: list[NodeProcess] = []
    every: list[NodeProcess] = []
    failovers: list[float] = []
    stops: list[float] = []
    counter = [0]
    watch = PartitionWatch(rabbit.url, prefix)
    t0 = time.monotonic()

    def new_node() -> NodeProcess:
        counter[0] += 1
        node = NodeProcess(rabbit.url, prefix, workdir, name=f"n{counter[0]}", db_url=db_url)
        every.append(node)
        return node

    def stamp(text: str) -> None:
        out(f"[{time.monotonic() - t0:6.1f}s] {text} ({len(history.ops)} commands so far)")

    try:
        watch.start()
        watch.ready.wait(30)
        for _ in range(nodes):
            node = new_node()
            node.start(wait_queues=False)
            live.append(node)
        deadline = time.monotonic() + 60
        while not all_consumed(rabbit.url, topology.work_queues()):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster never consumed every partition")
            time.sleep(0.2)
        threads = [Producer(i, rabbit.url, topology, history, stop, seed=seed, hot=HOT)
                   for i in range(producers)]
        threads.append(PoisonInjector(rabbit.url, topology, history, stop, seed=seed,
                                      interval=0.5))
        # Moves count from a balanced start: the nodes joining one by one moved some.
        deadline = time.monotonic() + 30
        while (not watch.balanced(topology.partitions, nodes)
               and time.monotonic() < deadline):
            time.sleep(0.2)
        startup_moves = watch.count()
        for t in threads:
            t.start()
        step = 0
        pause = max(2.0, seconds / 12)

        def done() -> bool:
            # The same mix on a slow machine: past ``seconds`` (up to three times as
            # long) until two nodes were killed and the membership changed once.
            elapsed = time.monotonic() - t0
            mixed = (faults.counts.get("kill_node", 0) >= MIN_KILLS
                     and faults.counts.get("add_node", 0) >= 1)
            return elapsed >= seconds and (mixed or elapsed >= 3 * seconds)

        while not done() and step < 10_000:
            time.sleep(pause)
            if done():
                break
            step += 1
            if step % 3 == 0 and len(live) >= 2:
                # Membership changes: one node joins, the oldest leaves gracefully.
                joiner = new_node()
                stamp(f"add {joiner.name}")
                joiner.start(wait_queues=False)
                live.append(joiner)
                faults.add("add_node")
                leaver = live.pop(0)
                stamp(f"remove {leaver.name} (SIGTERM)")
                began = time.monotonic()
                code = leaver.terminate(timeout=60)
                faults.add("remove_node")
                stops.append(time.monotonic() - began)
                out(f"  {leaver.name} stopped in {stops[-1]:.1f}s, exit code {code}; "
                    f"{watch.count() - startup_moves} partition moves so far")
                if code != 0:
                    faults.add("remove_unclean")
                continue
            victim = live[step % len(live)]
            stamp(f"SIGKILL {victim.name}")
            killed_at = time.monotonic()
            victim.kill()
            faults.add("kill_node")
            took = probe_failover(rabbit.url, topology, history, killed_at, f"{step}")
            if took is None:
                out("  failover: probes unanswered")
                faults.add("failover_unmeasured")
            else:
                failovers.append(took)
                out(f"  failover: {took:.2f}s from the kill to the last probe's answer; "
                    f"{watch.count() - startup_moves} partition moves so far")
            victim.start(wait_queues=False)
        # Counted up to the end of the faults: the nodes' last stop moves them again.
        time.sleep(3)  # the last restarted node's share comes back to it
        watch.stop_event.set()
        figures = wind_down(rabbit.url, topology, db_url, history, stop, threads, live,
                            faults, stamp)
        figures["poison_injected"] = len(history.poison)
        figures["faults"] = sum(faults.counts.values())
        figures["node_starts"] = sum(n.starts for n in every)
        figures["partition_moves"] = watch.count() - startup_moves
        figures["failovers"] = [round(f, 2) for f in failovers]
        figures["graceful_stops_s"] = [round(f, 1) for f in stops]
        if failovers:
            figures["failover_p99_s"] = round(_p99(failovers), 2)
            figures["failover_max_s"] = round(max(failovers), 2)
        figures["seconds"] = round(time.monotonic() - t0)
        return figures
    finally:
        stop.set()
        watch.stop_event.set()
        for node in every:
            if node.alive():
                node.kill()
        rabbit.stop()


def report(figures: dict[str, Any]) -> str:
    """The figures as a readable block."""
    keys = ["seconds", "faults", "fault_kill_node", "fault_add_node", "fault_remove_node",
            "node_starts", "partition_moves", "graceful_stops_s", "failovers", "failover_p99_s",
            "failover_max_s", "commands",
            "confirmed", "answered", "confirmed_unanswered", "not_confirmed", "resends",
            "resends_answered_from_inbox", "accepted", *LIFECYCLE_FIGURES, "charges",
            "payments_failed", "notifications", "poison_confirmed", "dead_letters",
            *CLUSTER_MUST_BE_ZERO]
    return "\n".join(f"  {k:<30} {figures.get(k, 0)}" for k in keys)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: run the drill, print its figures; 1 if a must-be-zero is not."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--producers", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--database-url", help="the shared store (default: a private PostgreSQL)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    workdir = Path(tempfile.mkdtemp(prefix="staybook-cluster-drill-"))
    print(f"cluster drill: {args.seconds:.0f}s, {args.producers} producers, work dir {workdir}")
    try:
        with contextlib.ExitStack() as stack:
            url = args.database_url or stack.enter_context(
                local_postgresql(workdir / "postgresql", durable=False))
            figures = run_cluster_drill(seconds=args.seconds, db_url=url,
                                        producers=args.producers, seed=args.seed,
                                        workdir=workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return finish(figures, report(figures), CLUSTER_MUST_BE_ZERO, args.json_out)

if __name__ == "__main__":
    sys.exit(main())
