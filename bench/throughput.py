"""Staybook's command throughput and CPU per command, against the physical limit, in one run.

Run it with ``python -m bench.throughput [--options]``. It:

1. uses the broker named by ``--amqp-url`` (or ``STAYBOOK_BROKER__URL``), or starts a
   private RabbitMQ node on a free port with its data in a temporary directory (only
   then is the broker's CPU visible: its processes are found by its node name);
2. builds a seeded workload with the ``messages`` models: ``--apartments``
   AddApartment, then RequestReservation in bursts of overlapping dates on ``--hot``
   apartments plus requests spread over the rest, then Accept/RejectReservation for
   some of the requests (``--commands`` in all);
3. measures the raw ceilings (unless ``--skip-raw``), with the SAME bodies and window:
   publish/consume through a durable quorum queue ``<prefix>.bench-raw``, acked here;
   then request/reply, as a node is driven: the bodies to the durable quorum queue
   ``<prefix>.bench-rpc``, answered by 1, then 2 :mod:`bench.responder` processes
   (one constant reply, an ack, nothing else); then 1 responder at each ``--paced``
   rate, the floor of the low-rate figures;
4. runs the floor (unless ``--skip-floor``): :mod:`bench.floor`, the bare pipeline
   doing Staybook's broker and store work per command in two processes, on the same
   commands at saturation and at each paced rate (:func:`_floor_runs`);
5. starts ``staybook serve`` (or, with ``--split``, a commands and an events process)
   on a unique prefix and a fresh durable SQLite store, waits for its consumers, and
   publishes the workload pipelined (at most ``--window`` awaiting their reply),
   ``reply_to`` an exclusive auto-delete queue, ``correlation_id = message_id``,
   timing every reply: Staybook at saturation;
6. then, on the same node(s), for each ``--paced`` rate a fresh workload (its own
   apartments and reservations, the floor's too) published at that fixed rate for
   ``--paced-seconds``;
7. prints a table (and ``--json-out``), stops the node(s) with SIGTERM, cleans up.

Every run but publish/consume reports CPU milliseconds per message of its processes
(responders or nodes) plus the broker, read from ``/proc`` (:mod:`bench.cpu`); a
Staybook run's CPU is counted until the node(s) drained the events its commands left,
so it is what a command costs, and nothing leaks into the next run. The table ends
with Staybook against the best raw figures and against the floor, each with its
performance target (CPU per command, rate, paced latency: :mod:`bench.report`), and
both sides' messages per command (the private broker's management API); those are
information, not the exit status.

The parts: :mod:`bench.workload` (the seeded commands), :mod:`bench.measure`
(pipelined and paced publishing, timing), :mod:`bench.procs` (the private broker, the
nodes, the responders), :mod:`bench.cpu` and :mod:`bench.report` (exit status,
tables). ``--nodes N`` hands over to :mod:`bench.nodes` (scale-out).

No run uses publisher confirms: a blocking pika channel in confirm mode waits for each
confirm, which would defeat the pipelining. Every command is instead accounted for by
its reply (or, publish/consume, its delivery); ``mandatory`` returns are counted.
Latency is publish -> reply (or delivery) as seen by this process. Nothing here
asserts a time.

Exit status: 0 when every command of every run was answered and none with ``error``
and the node(s) stopped with 0; 1 when something is missing, wrong or ``--timeout``
passed (the partial figures are still reported); 2 when the broker, the node or the
responders could not be started.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from pika.exceptions import AMQPError

from bench.cpu import Meter, Reading, broker_pids, ms_per, total
from bench.floor import create_store
from bench.floorplan import FOLLOW_ONS, RECORDED, deliveries, fanout, plan, write_plan
from bench.measure import (
    queue_depths,
    run_end_to_end,
    run_raw,
    run_request_reply,
    wait_drained,
)
from bench.nodes import main_nodes
from bench.procs import (
    NodeProcess,
    SetupFailed,
    delete_prefix,
    floor_processes,
    management_url,
    private_broker,
    responders,
    settled_counts,
    start_node,
)
from bench.report import against_ceiling, against_floor, exit_code, message_counts, render
from bench.workload import Command, build_workload
from broker.rabbitmq import RabbitBroker, wait_for_broker
from broker.topology import Topology
from config import DEFAULT_PARTITIONS, BrokerSettings, redact_url
from console.control_client import ControlClient, ControlFailed
from console.localbroker import log_tail
from messages import new_id

RESPONDERS = (1, 2)  # the raw request/reply ceiling, with one and two responder processes
PACED_BOUND_S = 10.0  # a paced run holds back only with this many seconds' worth unanswered


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything: broker, raw ceilings, node, saturation, paced rates. The report."""
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    prefix = f"bench{new_id()[:10]}"
    commands = build_workload(apartments=args.apartments, hot=args.hot,
                              commands=args.commands, seed=args.seed, today=date.today())
    report: dict[str, Any] = {
        "config": {"apartments": args.apartments, "hot": args.hot, "commands": len(commands),
                   "window": args.window, "seed": args.seed, "timeout_s": args.timeout,
                   "prefix": prefix, "publisher_confirms": False,
                   "store": "sqlite, synchronous=FULL",
                   "node": "two processes (commands, events)" if args.split
                   else "one process",
                   "responders": [] if args.skip_raw else list(RESPONDERS),
                   "paced_rates": args.paced, "paced_seconds": args.paced_seconds},
        "workload": dict(Counter(c.type for c in commands)),
        "end_to_end": None, "raw": None, "raw_rpc": [], "paced": [], "ratio": None,
        "floor": None, "against_ceiling": [], "against_floor": [], "message_counts": None,
        "timed_out": False,
        "node_exit_code": None, "setup_error": None, "error": None,
    }
    url = args.amqp_url or os.environ.get("STAYBOOK_BROKER__URL")
    management = args.management_url
    topology = Topology(prefix=prefix, partitions=DEFAULT_PARTITIONS)
    floor_topology = Topology(prefix=f"{prefix}-floor", partitions=DEFAULT_PARTITIONS)
    paced = [_paced_workload(args, i, rate) for i, rate in enumerate(args.paced)]
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="staybook-bench-")))
        try:
            broker: list[int] | None = None  # an external broker's CPU is not ours to see
            if url:
                report["config"]["broker"] = redact_url(url)
                wait_for_broker(url, timeout=max(1.0, min(60.0, deadline - time.monotonic())))
            else:
                rabbit = stack.enter_context(private_broker(work / "rabbitmq", deadline,
                                                            management=True))
                url, management = rabbit.url, management or management_url(rabbit)
                report["config"]["broker"] = f"private RabbitMQ at {redact_url(url)}"
                broker = broker_pids(rabbit.node_name)
                if broker is None:
                    print(f"bench: no process of {rabbit.node_name}; its CPU reads '-'",
                          file=sys.stderr)
            raw_queue, rpc_queue = f"{prefix}.bench-raw", f"{prefix}.bench-rpc"
            stack.callback(delete_prefix, url, topology, [raw_queue, rpc_queue])
            stack.callback(delete_prefix, url, floor_topology)
            report["config"]["message_counts"] = ("management API" if management
                                                  else "the floor's own counters")
            if not args.skip_raw:
                _raw_runs(report, url, raw_queue, rpc_queue, commands, args, work, deadline,
                          broker)
            if not args.skip_floor and time.monotonic() < deadline:
                report["floor"] = _floor_runs(url, floor_topology, commands, paced, args,
                                              work, deadline, broker, management)
            if time.monotonic() < deadline:
                _staybook_runs(report, url, topology, commands, paced, args, work, deadline,
                               broker, management)
        except SetupFailed as exc:
            report["setup_error"] = str(exc)
        except (TimeoutError, AMQPError, OSError) as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
    e2e, raw = report["end_to_end"], report["raw"]
    runs = [e2e, raw, *report["raw_rpc"], *report["paced"]]
    report["timed_out"] = (time.monotonic() > deadline
                           or any(r is not None and not r["completed_in_time"] for r in runs)
                           or (e2e is None and report["setup_error"] is None
                               and report["error"] is None))
    if e2e and raw and e2e["rate_per_s"] and raw["rate_per_s"]:
        report["ratio"] = round(e2e["rate_per_s"] / raw["rate_per_s"], 4)
    report["against_ceiling"] = against_ceiling(report)
    report["against_floor"] = against_floor(report)
    report["message_counts"] = message_counts(report)
    report["total_s"] = round(time.monotonic() - t0, 1)
    report["exit_code"] = exit_code(report, skip_raw=args.skip_raw)
    return report


def _raw_runs(report: dict[str, Any], url: str, raw_queue: str, rpc_queue: str,
              commands: Sequence[Command], args: argparse.Namespace, work: Path,
              deadline: float, broker: list[int] | None) -> None:
    """The ceilings: publish/consume in this process, then request/reply by responders."""
    meter = Meter({"broker": broker})
    before = meter.read()
    raw = run_raw(url, raw_queue, commands, args.window, deadline)
    raw["cpu_ms_per_message"] = ms_per(before, meter.read(), raw["received"])
    report["raw"] = raw
    def request_reply(n: int, todo: Sequence[Command], window: int,
                      rate: float | None = None) -> None:
        """One request/reply run against ``n`` responders, its CPU read around it."""
        with responders(url, rpc_queue, n, work, deadline) as pids:
            meter = Meter({"responders": pids, "broker": broker})
            before = meter.read()
            rpc = run_request_reply(url, rpc_queue, todo, window, deadline, rate=rate)
            cpu = ms_per(before, meter.read(), rpc["replies"])
        rpc["cpu_ms_per_message"] = {**cpu, "sum": total(cpu, ("responders", "broker"))}
        report["raw_rpc"].append({"responders": n, **({"rate": rate} if rate else {}), **rpc})

    for n in RESPONDERS:
        if time.monotonic() > deadline:
            break
        request_reply(n, commands, args.window)
    # The floor at the paced rates too: what pika and the broker alone cost per message
    # when messages come one at a time, so Staybook's low-rate factor has a baseline.
    for i, rate in enumerate(args.paced):
        if time.monotonic() > deadline:
            break
        request_reply(1, _paced_workload(args, i, rate), _paced_bound(args, rate), rate)


def _paced_workload(args: argparse.Namespace, i: int, rate: float) -> list[Command]:
    """The ``i``-th paced rate's workload: ``paced_seconds`` worth of commands."""
    n = max(1, math.ceil(rate * args.paced_seconds))
    apartments = min(args.apartments, n)
    return build_workload(apartments=apartments, hot=min(args.hot, apartments), commands=n,
                          seed=args.seed + i + 1, today=date.today(), id_prefix=f"p{i + 1}-")


def _paced_bound(args: argparse.Namespace, rate: float) -> int:
    """How many may await a reply in a paced run before the publisher holds back."""
    return max(int(args.window), math.ceil(rate * PACED_BOUND_S))


def _staybook_runs(report: dict[str, Any], url: str, topology: Topology,
                   commands: Sequence[Command], paced: Sequence[Sequence[Command]],
                   args: argparse.Namespace, work: Path, deadline: float,
                   broker: list[int] | None, management: str | None) -> None:
    """Start the node(s); saturation, then each paced rate on the same node(s); stop."""
    nodes = ([start_node(url, topology.prefix, work, deadline, roles=["events"]),
              start_node(url, topology.prefix, work, deadline, roles=["commands"])]
             if args.split else [start_node(url, topology.prefix, work, deadline)])
    try:
        meter = Meter({"nodes": [n.proc.pid for n in nodes], "broker": broker,
                       **{n.name: [n.proc.pid] for n in nodes}})

        def saturate() -> dict[str, Any]:
            e2e = run_end_to_end(url, topology, commands, args.window, deadline)
            e2e["backlog_after_last_reply"] = queue_depths(
                url, [*topology.work_queues(), topology.dead_letter_queue])
            return e2e

        report["end_to_end"] = _metered(meter, nodes, saturate, url, topology, deadline,
                                        management)
        for todo, rate in zip(paced, args.paced, strict=True):
            if time.monotonic() > deadline:
                break
            run_paced = functools.partial(run_end_to_end, url, topology, todo,
                                          _paced_bound(args, rate), deadline, rate=rate)
            report["paced"].append(
                {"rate": rate, **_metered(meter, nodes, run_paced, url, topology, deadline)})
    finally:
        began = time.monotonic()
        # A graceful stop drains what is in flight; on a loaded 2-core CI
        # machine that can take a while, so wait for it rather than kill.
        codes = [n.stop(timeout=90) for n in reversed(nodes)]
        report["node_stop_s"] = round(time.monotonic() - began, 1)
        code = next((c for c in codes if c != 0), 0)
        report["node_exit_code"] = code
        if code != 0:
            report["node_log_tail"] = "\n".join(log_tail(n.log_path, 30) for n in nodes)


def _metered(meter: Meter, nodes: Sequence[NodeProcess], measure: Callable[[], dict[str, Any]],
             url: str, topology: Topology, deadline: float,
             management: str | None = None) -> dict[str, Any]:
    """One Staybook run with the CPU it cost per command, counted until it is drained.

    The events a command leaves behind are part of its cost, and must not leak into
    the next run: the CPU is read at the last reply and once the nodes are idle. So
    are the broker's message counts, when its management API is there.
    """
    threads_before = _threads(url, topology)
    counts = settled_counts(management)
    before = meter.read()
    out = measure()
    at_reply = meter.read()
    out["drained_s"] = wait_drained(url, topology, [n.name for n in nodes], deadline)
    after = meter.read()
    out["messages_per_command"] = per_command(counts, settled_counts(management),
                                              out["replies"])
    out["cpu_ms_per_command_by_thread"] = thread_shares(
        threads_before, _threads(url, topology), out["replies"])
    out["cpu_ms_per_command"] = _node_cpu(before, after, out["replies"], nodes)
    out["cpu_ms_per_command_at_last_reply"] = _node_cpu(before, at_reply, out["replies"],
                                                        nodes)
    return out


def _floor_runs(url: str, topology: Topology, commands: Sequence[Command],
                paced: Sequence[Sequence[Command]], args: argparse.Namespace, work: Path,
                deadline: float, broker: list[int] | None,
                management: str | None) -> dict[str, Any]:
    """The floor (:mod:`bench.floor`) on the same commands: saturation, then each paced rate.

    Its processes start afresh for each run (the commands process is given that run's
    plan), on a topology of its own declared as a node declares Staybook's, and one
    store file for all its runs, as Staybook's node keeps one.
    """
    settings = BrokerSettings()
    RabbitBroker(url, topology, heartbeat=settings.heartbeat, reconnect_max_delay=5.0,
                 drain_seconds=1.0).declare()
    db = work / "floor.db"
    create_store(db)
    routes = fanout()
    exchanges = {t: topology.exchange(f"events.{t}") for t in routes}
    handlers = routes_consumers(routes)
    queues = {"commands": topology.intake_queues(),
              "events": [topology.queue(c) for c in handlers]}
    common = ["--db", str(db), "--exchanges", json.dumps(exchanges), "--synchronous", "FULL"]
    out: dict[str, Any] = {"prefix": topology.prefix, "end_to_end": None, "paced": []}

    def one(todo: Sequence[Command], window: int, rate: float | None) -> dict[str, Any]:
        api = management if rate is None else None  # counted at saturation only
        steps = plan(todo, date.today())
        write_plan(steps, work / "floor-plan.tsv")
        expected = len(todo) + deliveries(steps, routes)
        args_of = {
            "commands": [*common, "--prefetch", str(settings.prefetch),
                         "--plan", str(work / "floor-plan.tsv"),
                         *[f"--queue={q}=intake" for q in queues["commands"]]],
            "events": [*common, "--prefetch", str(settings.handler_prefetch),
                       "--follow", json.dumps(FOLLOW_ONS), "--recorded", ",".join(RECORDED),
                       *[f"--queue={topology.queue(c)}={c}" for c in handlers]],
        }
        with floor_processes(url, work, deadline, args=args_of, queues=queues) as procs:
            pids = procs.pids
            meter = Meter({"floor": list(pids.values()), "broker": broker,
                           **{f"floor-{r}": [p] for r, p in pids.items()}})
            counts = settled_counts(api)
            base = _store_rows(db)[0]
            before = meter.read()
            run = run_end_to_end(url, topology, todo, window, deadline, rate=rate)
            at_reply = meter.read()
            run["drained_s"] = _floor_drained(db, base + expected, deadline, procs.alive)
            after = meter.read()
            run["messages_per_command"] = per_command(counts, settled_counts(api),
                                                      run["replies"])
            stopped = procs.stop()
        cpu = ms_per(before, after, run["replies"])
        run["cpu_ms_per_command"] = {
            "floor": cpu["floor"], "broker": cpu["broker"],
            "sum": total(cpu, ("floor", "broker")),
            "by_process": {r: cpu[f"floor-{r}"] for r in pids}}
        run["cpu_ms_per_command_at_last_reply"] = {
            "sum": total(ms_per(before, at_reply, run["replies"]), ("floor", "broker"))}
        run["expected_deliveries"] = expected
        run["processes"] = stopped
        run["own_counts_per_command"] = _own_counts(stopped, run["replies"])
        return run

    out["end_to_end"] = one(commands, args.window, None)
    for todo, rate in zip(paced, args.paced, strict=True):
        if time.monotonic() > deadline:
            break
        out["paced"].append({"rate": rate, **one(todo, _paced_bound(args, rate), rate)})
    return out


def routes_consumers(routes: dict[str, list[str]]) -> list[str]:
    """The handler queues (consumer names) some event type reaches, in a stable order."""
    return sorted({c for consumers in routes.values() for c in consumers})


def _store_rows(db: Path) -> tuple[int, int]:
    """The floor store's inbox and outbox row counts."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        inbox = int(conn.execute("SELECT count(*) FROM inbox").fetchone()[0])
        outbox = int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
        return inbox, outbox
    finally:
        conn.close()


def _floor_drained(db: Path, inbox: int, deadline: float, alive: Callable[[], bool],
                   limit: float = 120.0) -> float | None:
    """Wait until the floor's store holds ``inbox`` rows and no outbox row; the seconds.

    Every delivery, commands' and handlers', leaves one inbox row, and an outbox row
    goes once the broker confirmed its event: so the floor is then done with what it
    answered. None if that is not seen within ``limit`` or by ``deadline``, or a floor
    process is gone (``alive``).
    """
    began = time.monotonic()
    end = min(deadline, began + limit)
    while time.monotonic() < end and alive():
        rows, pending = _store_rows(db)
        if rows >= inbox and pending == 0:
            return round(time.monotonic() - began, 2)
        time.sleep(0.1)
    return None


def per_command(before: dict[str, int] | None, after: dict[str, int] | None,
                count: int) -> dict[str, float] | None:
    """The broker's message counts between two readings, per command (None: unread)."""
    if before is None or after is None:
        return None
    return {k: round((after[k] - before[k]) / max(1, count), 3) for k in after}


def _own_counts(stopped: dict[str, Any], count: int) -> dict[str, float] | None:
    """The floor's counters per command, in the management API's terms.

    The benchmark's own publish of each command counts as a publish, as the broker
    counts it.
    """
    roles = [r.get("counters") for r in stopped.values()]
    if any(c is None for c in roles):
        return None
    n = max(1, count)
    summed = {k: sum(int(c[k]) for c in roles if c) for k in
              ("publishes", "deliveries", "acks", "confirms")}
    return {"publish": round((summed["publishes"] + count) / n, 3),
            "deliver": round(summed["deliveries"] / n, 3),
            "ack": round(summed["acks"] / n, 3),
            "confirm": round(summed["confirms"] / n, 3)}


def _threads(url: str, topology: Topology) -> dict[str, dict[str, float]]:
    """Each node's CPU seconds by thread group (``ctl threads``); empty if none answers."""
    try:
        with ControlClient(url, topology) as ctl:
            answers = ctl.request("threads", wait=1.0)
    except (ControlFailed, AMQPError, OSError):
        return {}
    return {a["node"]: {t["thread"]: float(t["cpu_s"]) for t in a["result"]}
            for a in answers if a.get("ok")}


def thread_shares(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
                  count: int, top: int = 6) -> dict[str, list[tuple[str, float]]]:
    """Per node, the busiest thread groups between two readings, in CPU ms per command.

    A group whose threads ended in between (passivated actors) counts only what its
    live threads used, so the figures are a floor; the process total is exact.
    """
    out: dict[str, list[tuple[str, float]]] = {}
    for node, groups in after.items():
        was = before.get(node, {})
        ms = {g: (cpu - was.get(g, 0.0)) * 1000 / max(1, count) for g, cpu in groups.items()}
        out[node] = [(g, round(v, 3)) for g, v in
                     sorted(ms.items(), key=lambda kv: -kv[1])[:top] if v > 0]
    return out


def _node_cpu(before: Reading, after: Reading, count: int,
              nodes: Sequence[NodeProcess]) -> dict[str, Any]:
    cpu = ms_per(before, after, count)
    return {"nodes": cpu["nodes"], "broker": cpu["broker"],
            "sum": total(cpu, ("nodes", "broker")),
            "by_node": {n.name: cpu[n.name] for n in nodes}}


def positive(text: str) -> int:
    """An argument type: an integer >= 1."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return n


def _rates(text: str) -> list[float]:
    """``"150,500"`` -> [150.0, 500.0]; ``""`` -> [] (no paced runs)."""
    try:
        rates = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of rates") from None
    if any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise argparse.ArgumentTypeError(f"{text!r}: every rate must be > 0")
    return rates


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench.throughput",
                                description="End-to-end command throughput of a Staybook "
                                            "node next to the raw quorum-queue ceiling.")
    p.add_argument("--apartments", type=positive, default=200)
    p.add_argument("--hot", type=int, default=5, help="apartments taking the bursts")
    p.add_argument("--commands", type=positive, default=20_000,
                   help="commands in all, AddApartment included")
    p.add_argument("--window", type=positive, default=1000,
                   help="commands in flight (published, not yet answered)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--amqp-url", default=None,
                   help="a running broker (default: $STAYBOOK_BROKER__URL, else a private one)")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--skip-raw", action="store_true", help="skip the raw quorum-queue run")
    p.add_argument("--skip-floor", action="store_true",
                   help="skip the floor (bench.floor: the bare pipeline, same work)")
    p.add_argument("--management-url", default=None,
                   help="the broker's management API, e.g. http://guest:guest@host:15672, "
                        "for the message counts (a private broker's is used by default)")
    p.add_argument("--nodes", type=positive, default=None,
                   help="scale-out: run 1..N nodes on a private PostgreSQL, one after the "
                        "other, and print commands/s and CPU per command for each")
    p.add_argument("--split", action="store_true",
                   help="run the node as two processes: the commands role and the events role")
    p.add_argument("--paced", type=_rates, default=[150.0, 500.0], metavar="RATES",
                   help="commands/s of the paced runs after saturation, comma-separated "
                        "(default 150,500; '' for none)")
    p.add_argument("--paced-seconds", type=float, default=15.0,
                   help="how long each paced run publishes")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds for the whole run; then report what was measured, exit 1")
    args = p.parse_args(argv)
    if args.commands < args.apartments:
        p.error("--commands must be >= --apartments")
    if args.hot < 0:
        p.error("--hot must be >= 0")
    if not args.paced_seconds > 0:
        p.error("--paced-seconds must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table (and the JSON file); the exit status."""
    args = parse_args(argv)
    if args.nodes:
        return main_nodes(args)
    report = run(args)
    print(render(report), flush=True)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return int(report["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
