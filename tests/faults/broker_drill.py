"""The broker drill: Staybook on a three-node RabbitMQ cluster while broker nodes fail.

``python -m tests.faults.broker_drill`` (``make drill-broker``) starts a private
3-node RabbitMQ cluster (:class:`console.localcluster.LocalCluster`), a private
PostgreSQL (or ``--database-url``) and two ``staybook serve`` processes given every
broker node's URL. Producers send booking traffic with racing accepts on shared hot
apartments and safe re-sends, and a prober sends one command at a time to time the
service. The faults, in order:

1. ``kill-leader``: SIGKILL the broker node that leads the most quorum queues, then
   start it again on its data;
2. ``rolling-restart``: stop and start each broker node in turn, each only once no
   queue needs it for its majority (``rabbitmq-upgrade await_online_quorum_plus_one``);
3. ``kill-both``: SIGKILL a broker node, and while it is down SIGKILL a Staybook
   node; start the Staybook node again, then the broker node.

After each recovery the queue leaders are rebalanced. Then everything drains and
:func:`tests.faults.checker.check` counts what went wrong (lost, duplicated,
overlapping accepted stays, double charges: each must be 0). For each fault it also
reports the time without service: the longest wait, from the fault's start until the
service was back, between two consecutive answers to the prober.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pika.exceptions import AMQPError

from broker.client import Client, NoReply
from broker.topology import Topology
from config import DEFAULT_PARTITIONS
from console.localbroker import LocalRabbit
from console.localcluster import LocalCluster
from console.localdb import local_postgresql
from messages import AddApartment, Envelope
from tests.conftest import unique
from tests.faults.checker import MUST_BE_ZERO
from tests.faults.cluster_drill import wind_down
from tests.faults.drill import Faults, finish
from tests.faults.lifecycle import LIFECYCLE_FIGURES
from tests.faults.procs import NodeProcess
from tests.faults.workload import History, Op, Producer

log = logging.getLogger("broker-drill")

HOT = ("hot-0", "hot-1", "hot-2")
FAULTS = ("kill-leader", "rolling-restart", "kill-both")
BROKER_MUST_BE_ZERO = (*MUST_BE_ZERO, "partitions_unowned", "fault_quorum_not_ready",
                       "fault_rebalance_failed")
PROBE_INTERVAL = 0.1  # seconds between the prober's commands
PROBE_TIMEOUT = 1.0  # seconds the prober waits for a reply before sending it again


class Prober(threading.Thread):
    """Sends one ``AddApartment`` at a time, each re-sent with its id until answered,
    and records when each answer came: the gaps between answers are the outages.

    Its commands join the history, so the checker counts them like any other.
    """

    def __init__(self, url: str, topology: Topology, history: History,
                 stop: threading.Event) -> None:
        super().__init__(name="prober", daemon=True)
        self._url, self._topology, self._history, self._halt = url, topology, history, stop
        self.answered: list[float] = []

    def run(self) -> None:
        client: Client | None = None
        n = 0
        while not self._halt.is_set():
            n += 1
            env = Envelope.new(AddApartment(owner_id="prober", city="Probe", title="p",
                                            price_per_night=1, currency="EUR", capacity=1),
                               apartment_id=f"probe-{n}")
            op = Op(env.message_id, env.type, env.apartment_id or "", None, env.to_json())
            self._history.add(op)
            while not self._halt.is_set() or (op.confirmed and not op.replies):
                try:
                    client = client or Client(self._url, self._topology)
                    client.publish(env)
                    op.confirmed = True
                    reply = client.wait_reply(env.message_id, timeout=PROBE_TIMEOUT)
                except (NoReply, AMQPError, OSError) as exc:
                    op.error = repr(exc)[:300]
                    if client is not None and not isinstance(exc, NoReply):
                        with contextlib.suppress(Exception):
                            client.close()
                        client = None
                    time.sleep(PROBE_INTERVAL)
                    continue
                op.replies.append(reply.payload.model_dump(mode="json"))
                self.answered.append(time.monotonic())
                break
            time.sleep(PROBE_INTERVAL)
        if client is not None:
            client.close()

    def outage(self, began: float, ended: float) -> float:
        """The longest wait for an answer between ``began`` and ``ended`` (seconds)."""
        marks = [began, *(t for t in self.answered if began <= t <= ended), ended]
        return max(b - a for a, b in itertools.pairwise(marks))


def _leading_most(cluster: LocalCluster, prefix: str) -> LocalRabbit:
    leaders = [q.leader for name, q in cluster.quorum_queues().items()
               if name.startswith(f"{prefix}.")]
    busiest = max(set(leaders), key=leaders.count)
    return next(n for n in cluster.nodes if n.node_name == busiest)


def run_broker_drill(*, db_url: str, workdir: Path, producers: int = 4, seed: int = 1,
                     settle: float = 10.0, out: Callable[[str], None] = print
                     ) -> dict[str, Any]:
    """Run the three faults once; the checker's figures plus the outage per fault.

    Args:
        settle: seconds of traffic before the first fault and after each recovery.
    """
    cluster = LocalCluster.private(workdir / "rabbitmq", "drill")
    prefix = unique("bdrill")
    topology = Topology(prefix=prefix, partitions=DEFAULT_PARTITIONS)
    history = History()
    stop = threading.Event()
    faults = Faults()
    threads: list[threading.Thread] = []
    nodes: list[NodeProcess] = []
    outages: dict[str, float] = {}
    t0 = time.monotonic()

    def stamp(text: str) -> None:
        out(f"[{time.monotonic() - t0:6.1f}s] {text} ({len(history.ops)} commands so far)")

    @contextlib.contextmanager
    def fault(name: str) -> Iterator[None]:
        stamp(f"fault {name}")
        began = time.monotonic()
        yield
        cluster.wait_members(len(cluster.nodes))
        if not cluster.rebalance():
            faults.add("rebalance_failed")
        time.sleep(settle)  # service resumes within this, or the outage shows it
        outages[name] = round(prober.outage(began, time.monotonic()), 2)
        faults.add(name)
        out(f"  time without service: {outages[name]:.2f}s")

    try:
        cluster.start()
        stamp(f"cluster up: {', '.join(cluster.members())}")
        for i in (1, 2):
            node = NodeProcess(cluster.url, prefix, workdir, name=f"n{i}", db_url=db_url)
            node.start(wait_queues=i == 2)
            nodes.append(node)
        cluster.rebalance()
        prober = Prober(cluster.url, topology, history, stop)
        threads = [Producer(i, cluster.url, topology, history, stop, seed=seed, hot=HOT)
                   for i in range(producers)]
        threads.append(prober)
        for t in threads:
            t.start()
        time.sleep(settle)

        with fault("kill-leader"):
            victim = _leading_most(cluster, prefix)
            stamp(f"SIGKILL {victim.node_name} (leads the most queues)")
            victim.kill()
            time.sleep(settle)
            victim.start()
        with fault("rolling-restart"):
            for member in cluster.nodes:
                if not cluster.await_quorum_plus_one(member):
                    faults.add("quorum_not_ready")
                stamp(f"restart {member.node_name}")
                member.stop()
                member.start()
                cluster.wait_members(len(cluster.nodes))
        with fault("kill-both"):
            victim = cluster.nodes[1]
            if not cluster.await_quorum_plus_one(victim):
                faults.add("quorum_not_ready")
            stamp(f"SIGKILL {victim.node_name}, then Staybook {nodes[0].name}")
            victim.kill()
            time.sleep(2)
            nodes[0].kill()
            time.sleep(settle)
            nodes[0].start(wait_queues=False)
            victim.start()

        figures = wind_down(cluster.url, topology, db_url, history, stop, threads, nodes,
                            faults, stamp)
        figures["outage_s"] = outages
        figures["probes_answered"] = len(prober.answered)
        figures["seconds"] = round(time.monotonic() - t0)
        return figures
    finally:
        stop.set()
        for node in nodes:
            if node.alive():
                node.kill()
        cluster.kill()


def report(figures: dict[str, Any]) -> str:
    """The figures as a readable block."""
    keys = ["seconds", *(f"fault_{f}" for f in FAULTS), "outage_s", "probes_answered",
            "commands", "confirmed", "answered", "confirmed_unanswered", "not_confirmed",
            "resends", "resends_answered_from_inbox", "accepted", *LIFECYCLE_FIGURES, "charges",
            "notifications", "dead_letters", *BROKER_MUST_BE_ZERO]
    return "\n".join(f"  {k:<30} {figures.get(k, 0)}" for k in keys)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: run the drill, print its figures; 1 if a must-be-zero is not."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--producers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds of traffic before the first fault and after each one")
    ap.add_argument("--database-url", help="the shared store (default: a private PostgreSQL)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    workdir = Path(tempfile.mkdtemp(prefix="staybook-broker-drill-"))
    print(f"broker drill: {args.producers} producers, work dir {workdir}")
    try:
        with contextlib.ExitStack() as stack:
            url = args.database_url or stack.enter_context(
                local_postgresql(workdir / "postgresql", durable=False))
            figures = run_broker_drill(db_url=url, workdir=workdir, producers=args.producers,
                                       seed=args.seed, settle=args.settle)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return finish(figures, report(figures), BROKER_MUST_BE_ZERO, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
