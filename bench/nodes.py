"""Scale-out: the same workload on 1, 2, ... N nodes sharing PostgreSQL and one broker.

``python -m bench.throughput --nodes N`` runs this. For each n in 1..N, on a fresh
database and a fresh broker prefix, it starts n ``staybook serve`` processes (both
roles, own names), waits until every command partition and event queue is consumed,
publishes the seeded workload of :mod:`bench.workload` pipelined, and reads from
``/proc`` (:mod:`bench.cpu`) the CPU time (user + system) spent meanwhile by

* the node processes,
* the RabbitMQ node (``beam.smp`` and its children),
* the PostgreSQL server (the postmaster and its backends).

On a 2-core machine wall throughput cannot grow with n (every process shares the same
two cores); CPU per command is the stable figure, and what says whether n nodes on n
machines would scale: if it stays flat as n grows, the work per command does not
depend on the number of nodes. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from bench.cpu import Meter, ms_per, pids_matching, postmaster_pid, total
from bench.measure import run_end_to_end
from bench.procs import NodeProcess, SetupFailed, delete_prefix, private_broker, start_node
from bench.report import render_nodes
from bench.workload import Command, build_workload
from broker.membership import balanced
from broker.rabbitmq import all_consumed
from broker.topology import Topology
from config import DEFAULT_PARTITIONS
from console.control_client import ControlClient, ControlFailed
from console.localdb import create_database, local_postgresql


@contextlib.contextmanager
def _cluster(url: str, prefix: str, db_url: str, workdir: Path, n: int,
             deadline: float) -> Iterator[list[NodeProcess]]:
    """``n`` nodes on one prefix and store, each partition held once, stopped after."""
    nodes: list[NodeProcess] = []
    try:
        for i in range(n):
            nodes.append(start_node(url, prefix, workdir, deadline, name=f"n{i + 1}",
                                    db_url=db_url, wait=False))
        topo = Topology(prefix=prefix, partitions=DEFAULT_PARTITIONS)
        if not wait_balanced(url, topo, n, deadline):
            raise SetupFailed("the nodes never settled on an even spread of partitions")
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def wait_balanced(url: str, topology: Topology, n: int, deadline: float) -> bool:
    """Wait until ``n`` nodes answer and hold every partition once, evenly spread."""
    with ControlClient(url, topology) as ctl:
        while time.monotonic() < deadline:
            try:
                answers = ctl.request("status", wait=0.5)
            except ControlFailed:  # the control channels are not up yet
                time.sleep(0.2)
                continue
            replies = [r["result"] for r in answers if r.get("ok")]
            held = [r.get("partitions") or [] for r in replies]
            every = sorted(p for ps in held for p in ps)
            if (len(replies) == n and every == list(range(topology.partitions))
                    and balanced([len(ps) for ps in held], topology.partitions)
                    and all_consumed(url, topology.work_queues())):
                return True
            time.sleep(0.2)
    return False


def run_nodes(url: str, broker_name: str, commands: Sequence[Command], *, max_nodes: int,
              window: int, workdir: Path, deadline: float) -> list[dict[str, Any]]:
    """One row per node count: commands/s, latency, CPU ms per command by part.

    ``broker_name`` is the broker's node name: its processes are found by it.
    """
    rows: list[dict[str, Any]] = []
    broker_pids = pids_matching(f"RABBITMQ_NODENAME={broker_name}")
    if not broker_pids:
        print(f"bench: no broker process matches {broker_name!r}; its CPU reads 0")
    with local_postgresql(workdir / "postgresql") as server_url:
        database = postmaster_pid(workdir / "postgresql" / "pgdata")
        for n in range(1, max_nodes + 1):
            if time.monotonic() > deadline:
                break
            prefix = f"bench{uuid.uuid4().hex[:10]}"  # new_id()[:10] is fixed per process
            db_url = create_database(server_url, f"bench_{n}_{uuid.uuid4().hex[:8]}")
            topo = Topology(prefix=prefix, partitions=DEFAULT_PARTITIONS)
            try:
                with _cluster(url, prefix, db_url, workdir, n, deadline) as nodes:
                    meter = Meter({"nodes": [p.proc.pid for p in nodes],
                                   "broker": broker_pids, "database": database,
                                   **{f"node-{i}": [p.proc.pid]
                                      for i, p in enumerate(nodes, 1)}})
                    before = meter.read()
                    e2e = run_end_to_end(url, topo, commands, window, deadline)
                    after = meter.read()
            finally:
                delete_prefix(url, topo)
            cpu = ms_per(before, after, int(e2e["replies"]))
            by_node = {k: cpu.pop(k) for k in [k for k in cpu if k.startswith("node-")]}
            rows.append({
                "nodes": n, "commands": e2e["commands"], "replies": e2e["replies"],
                "rate_per_s": e2e["rate_per_s"], "latency_ms": e2e["latency_ms"],
                "status": e2e["status"],
                "cpu_ms_per_command": {
                    **cpu, "nodes+broker": total(cpu, ("nodes", "broker")),
                    "total": total(cpu, ("nodes", "broker", "database"))},
                "node_share": node_shares(by_node),
            })
    base = rows[0]["cpu_ms_per_command"]["nodes+broker"] if rows else None
    for r in rows:
        r["cpu_ratio_to_1_node"] = (round(r["cpu_ms_per_command"]["nodes+broker"] / base, 2)
                                    if base else None)
    return rows


def main_nodes(args: argparse.Namespace) -> int:
    """``--nodes N``: a private broker and PostgreSQL, then 1..N nodes; the table.

    Exit status: 0 when every run answered every command, 1 otherwise, 2 on setup.
    """
    deadline = time.monotonic() + args.timeout * args.nodes
    commands = build_workload(apartments=args.apartments, hot=args.hot,
                              commands=args.commands, seed=args.seed,
                              today=date.today())
    with tempfile.TemporaryDirectory(prefix="staybook-bench-nodes-") as tmp:
        work = Path(tmp)
        try:
            with private_broker(work / "rabbitmq", deadline) as rabbit:
                rows = run_nodes(rabbit.url, rabbit.node_name, commands,
                                 max_nodes=args.nodes, window=args.window, workdir=work,
                                 deadline=deadline)
        except SetupFailed as exc:
            print(f"bench: {exc}")
            return 2
    print(render_nodes(rows), flush=True)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"nodes": rows}, indent=2) + "\n")
    complete = len(rows) == args.nodes and all(
        r["replies"] == r["commands"] and r["status"].get("error", 0) == 0 for r in rows)
    return 0 if complete else 1


def node_shares(by_node: Mapping[str, float | None]) -> dict[str, float] | None:
    """Each node's share of the nodes' CPU, 0..1 (None when a node's is not visible).

    With the partitions spread evenly, each of N nodes should take about 1/N: a node
    far above that is the one that limits the scale-out.
    """
    if not by_node or any(v is None for v in by_node.values()):
        return None
    spent = sum(v for v in by_node.values() if v is not None)
    return {k: round((v or 0.0) / spent, 3) if spent else 0.0 for k, v in by_node.items()}
