"""End-to-end command throughput of a running node, next to the raw broker ceiling.

Run it with ``python -m bench.throughput [--options]``. It:

1. uses the broker named by ``--amqp-url`` (or ``STAYBOOK_BROKER__URL``), or starts a
   private RabbitMQ node on a free port with its data in a temporary directory;
2. builds a seeded workload with the ``messages`` models: ``--apartments``
   AddApartment, then RequestReservation in bursts of overlapping dates on ``--hot``
   apartments plus requests spread over the rest, then Accept/RejectReservation for
   some of the requests (``--commands`` in all);
3. measures the raw ceiling (unless ``--skip-raw``): the SAME bodies published to and
   consumed from a plain durable quorum queue ``<prefix>.bench-raw``, same window,
   the consumer acking each message and doing nothing else;
4. starts ``staybook serve`` as a separate process (unique prefix, a fresh durable
   SQLite store), waits for its consumers, publishes the workload pipelined (at most
   ``--window`` commands awaiting their reply) with ``reply_to`` an exclusive
   auto-delete queue on the same connection and ``correlation_id = message_id``,
   and times every reply;
5. prints a table (and ``--json-out``), stops the node with SIGTERM, and cleans up.

This module is the run and its command line; the parts are :mod:`bench.workload`
(the seeded commands), :mod:`bench.measure` (pipelined publishing, timing, the raw
ceiling), :mod:`bench.procs` (the private broker, the nodes) and :mod:`bench.report`
(exit status, tables). ``--nodes N`` hands over to :mod:`bench.nodes` (scale-out).

Both runs publish persistent messages *without* publisher confirms: a blocking pika
channel in confirm mode waits for each confirm, which would defeat the pipelining.
Every command is instead accounted for by its reply (or, in the raw run, by its
delivery); ``mandatory`` returns are counted. Latency is publish -> reply (or
delivery) as seen by this process. Nothing here asserts a time.

Exit status: 0 when every command was answered and none with ``error``; 1 when
something is missing, wrong or ``--timeout`` passed (the partial figures are still
reported); 2 when the broker or the node could not be started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from pika.exceptions import AMQPError

from bench.measure import queue_depths, run_end_to_end, run_raw
from bench.nodes import main_nodes
from bench.procs import SetupFailed, delete_prefix, private_broker, start_node
from bench.report import exit_code, render
from bench.workload import build_workload
from broker.rabbitmq import redact_url, wait_for_broker
from broker.topology import Topology
from config import DEFAULT_PARTITIONS
from console.localbroker import log_tail
from messages import new_id


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything: broker, raw ceiling, node, end to end. The report."""
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
                   else "one process"},
        "workload": dict(Counter(c.type for c in commands)),
        "end_to_end": None, "raw": None, "ratio": None, "timed_out": False,
        "node_exit_code": None, "setup_error": None, "error": None,
    }
    url = args.amqp_url or os.environ.get("STAYBOOK_BROKER__URL")
    topology = Topology(prefix=prefix, partitions=DEFAULT_PARTITIONS)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="staybook-bench-")))
        try:
            if url:
                report["config"]["broker"] = redact_url(url)
                wait_for_broker(url, timeout=max(1.0, min(60.0, deadline - time.monotonic())))
            else:
                url = stack.enter_context(private_broker(work / "rabbitmq", deadline)).url
                report["config"]["broker"] = f"private RabbitMQ at {redact_url(url)}"
            raw_queue = f"{prefix}.bench-raw"
            stack.callback(delete_prefix, url, topology, [raw_queue])
            if not args.skip_raw:
                report["raw"] = run_raw(url, raw_queue, commands, args.window, deadline)
            if time.monotonic() < deadline:
                nodes = ([start_node(url, prefix, work, deadline, roles=["events"]),
                          start_node(url, prefix, work, deadline, roles=["commands"])]
                         if args.split else [start_node(url, prefix, work, deadline)])
                try:
                    e2e = run_end_to_end(url, topology, commands, args.window, deadline)
                    e2e["backlog_after_last_reply"] = queue_depths(
                        url, [*topology.work_queues(), topology.dead_letter_queue])
                    report["end_to_end"] = e2e
                finally:
                    began = time.monotonic()
                    # A graceful stop drains what is in flight; on a loaded 2-core CI
                    # machine that can take a while, so wait for it rather than kill.
                    codes = [n.stop(timeout=90) for n in reversed(nodes)]
                    report["node_stop_s"] = round(time.monotonic() - began, 1)
                    code = next((c for c in codes if c != 0), 0)
                    report["node_exit_code"] = code
                    if code != 0:
                        report["node_log_tail"] = "\n".join(log_tail(n.log_path, 30)
                                                             for n in nodes)
        except SetupFailed as exc:
            report["setup_error"] = str(exc)
        except (TimeoutError, AMQPError, OSError) as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
    e2e, raw = report["end_to_end"], report["raw"]
    report["timed_out"] = (time.monotonic() > deadline
                           or any(r is not None and not r["completed_in_time"]
                                  for r in (e2e, raw))
                           or (e2e is None and report["setup_error"] is None
                               and report["error"] is None))
    if e2e and raw and e2e["rate_per_s"] and raw["rate_per_s"]:
        report["ratio"] = round(e2e["rate_per_s"] / raw["rate_per_s"], 4)
    report["total_s"] = round(time.monotonic() - t0, 1)
    report["exit_code"] = exit_code(report, skip_raw=args.skip_raw)
    return report


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return n


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench.throughput",
                                description="End-to-end command throughput of a Staybook "
                                            "node next to the raw quorum-queue ceiling.")
    p.add_argument("--apartments", type=_positive, default=200)
    p.add_argument("--hot", type=int, default=5, help="apartments taking the bursts")
    p.add_argument("--commands", type=_positive, default=20_000,
                   help="commands in all, AddApartment included")
    p.add_argument("--window", type=_positive, default=1000,
                   help="commands in flight (published, not yet answered)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--amqp-url", default=None,
                   help="a running broker (default: $STAYBOOK_BROKER__URL, else a private one)")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--skip-raw", action="store_true", help="skip the raw quorum-queue run")
    p.add_argument("--nodes", type=_positive, default=None,
                   help="scale-out: run 1..N nodes on a private PostgreSQL, one after the "
                        "other, and print commands/s and CPU per command for each")
    p.add_argument("--split", action="store_true",
                   help="run the node as two processes: the commands role and the events role")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds for the whole run; then report what was measured, exit 1")
    args = p.parse_args(argv)
    if args.commands < args.apartments:
        p.error("--commands must be >= --apartments")
    if args.hot < 0:
        p.error("--hot must be >= 0")
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
