"""Staybook at scale in entities: a million apartments, a node's memory, threads, search.

Run it with ``python -m bench.scale [--apartments 1000000]``. It:

1. loads ``--apartments`` apartments into a fresh store (a SQLite file, or with
   ``--postgres`` a private PostgreSQL) and search's read model, directly, as a node
   would have left them (:mod:`bench.dataset`), and asks the database for the plan
   of a city + dates search (it must find the city by its index and each
   apartment's taken nights by key);
2. starts ``staybook serve`` on it (:func:`bench.procs.start_node`, a private broker
   or ``--amqp-url``) with the live-actor cap ``--max-live`` (default: the
   configured one), and reads its resident memory and threads from ``/proc``
   throughout (max);
3. sends ``--commands`` RequestReservation (default 3x the cap), each to a different
   apartment picked at random, pipelined: every one activates an actor, so the
   directory passivates least recently used ones all along;
4. once the node is idle, sends ``--queries`` SearchApartments (a city, as often as
   it has apartments, and dates) one after the other with the producer's client
   (:class:`broker.client.Client`: confirmed publish, then the reply), timing each,
   after ``--warmup`` untimed ones; and runs the same queries' statements in this
   process against the store, to tell the database's share from the broker's;
5. prints the figures against their targets (RSS < 1 GiB, threads bounded by
   the cap: at most the idle node's plus the cap plus 1% of it, at least 10, for
   passivated actors' threads still exiting; search p99 < 50 ms), marked ✓ or ✗;
   ``--json-out`` writes them all.

The targets are information. Exit status: 0 when every command and every query was
answered and none with ``error`` and the node stopped cleanly; 1 otherwise; 2 when
the store, the broker or the node could not be set up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pika.exceptions import AMQPError
from sqlalchemy import Connection, text

from actors.search import search, statements
from bench.cpu import memory_and_threads
from bench.dataset import Catalog, apartment_id, catalog, load
from bench.measure import run_end_to_end, wait_drained
from bench.procs import SetupFailed, delete_prefix, private_broker, start_node
from bench.throughput import positive
from bench.workload import Command
from broker.client import Client, NoReply, NotConfirmed
from broker.rabbitmq import wait_for_broker
from broker.topology import Topology
from config import DEFAULT_PARTITIONS, ActorSettings, redact_url
from console.control_client import ControlClient, ControlFailed
from console.localbroker import log_tail
from console.localdb import create_database, local_postgresql
from messages import Envelope, RequestReservation, SearchApartments, SearchResults, new_id
from store import make_engine
from supervisor import ThreadService

RSS_TARGET = 1 << 30
P99_TARGET_MS = 50.0
SAMPLE_SECONDS = 0.1
MiB = 1 << 20


class Sampler(ThreadService):
    """The max resident memory and thread count of one process, sampled on a thread."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS) -> None:
        super().__init__("sampler")
        self.pid = pid
        self.interval = interval
        self.rss_max = 0
        self.threads_max = 0
        self.samples = 0

    def __enter__(self) -> Sampler:
        self.sample()
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        self.sample()

    def sample(self) -> tuple[int, int] | None:
        """Read the process now (and keep the maxima)."""
        now = memory_and_threads(self.pid)
        if now is not None:
            self.samples += 1
            self.rss_max = max(self.rss_max, now[0])
            self.threads_max = max(self.threads_max, now[1])
        return now

    def run(self) -> None:
        """Sample every ``interval`` seconds until stopped."""
        while not self.pause(self.interval):
            self.sample()


@dataclass(frozen=True)
class Plan:
    """How the database runs a city + dates search: by index, or not."""

    lines: list[str]
    city_by_index: bool
    nights_by_key: bool


def search_plan(conn: Connection, q: SearchApartments) -> Plan:
    """The plans of both of ``q``'s statements (SQLite: EXPLAIN QUERY PLAN; PostgreSQL:
    EXPLAIN), and whether they find the city by the index on ``city_key`` (the covering
    ``ix_search_apartments_city_price``) and each
    apartment's taken nights by key, never scanning the apartments or taken nights.

    PostgreSQL plans by its statistics: on a small store it may rightly scan."""
    sqlite = conn.dialect.name == "sqlite"
    lines: list[str] = []
    for stmt in statements(q):
        sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        rows = conn.exec_driver_sql(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + sql)
        lines += [str(r[-1]).strip() for r in rows]
    # The tables that grow with the apartments; a tiny one (delistings) may be scanned.
    scans = [s for s in lines for t in ("search_apartments", "search_booked")
             if s.startswith(f"SCAN {t}") or f"Seq Scan on {t}" in s]
    return Plan(lines,
                city_by_index=not scans and any("ix_search_apartments_city_price" in s
                                                for s in lines),
                nights_by_key=not scans and any(
                    ("SEARCH search_booked USING" in s) if sqlite
                    else ("search_booked_pkey" in s or "ix_search_booked_nights" in s)
                    for s in lines))


def requests(cat: Catalog, n: int, seed: int, today: date) -> list[Command]:
    """``n`` RequestReservation, each to a different apartment picked at random."""
    rng = random.Random(seed + 1)
    out = []
    for j, i in enumerate(rng.sample(range(len(cat)), min(n, len(cat)))):
        start = today + timedelta(days=rng.randint(2, 365))
        env = Envelope.new(RequestReservation(
            reservation_id=f"scale-{j:07d}", guest_id=f"guest-{rng.randint(0, 99_999):05d}",
            start=start, end=start + timedelta(days=rng.randint(1, 7)),
            guests=rng.randint(1, cat.capacity[i])), apartment_id=apartment_id(i))
        out.append(Command(env.type, apartment_id(i), env.message_id, env.to_json()))
    return out


def queries(cat: Catalog, n: int, seed: int, today: date) -> list[SearchApartments]:
    """``n`` searches: a city (as often as it has apartments), dates, guests."""
    rng = random.Random(seed + 2)
    out = []
    for _ in range(n):
        start = today + timedelta(days=rng.randint(2, 180))
        out.append(SearchApartments(city=cat.pick_city(rng), start=start,
                                    end=start + timedelta(days=rng.randint(1, 7)),
                                    guests=rng.randint(1, 4)))
    return out


def run_queries(client: Client, qs: Sequence[SearchApartments], deadline: float
                ) -> dict[str, Any]:
    """Each query in turn, as a producer sends it; latency from publish to reply."""
    lat: list[float] = []
    hits: list[int] = []
    missing = wrong = 0
    for q in qs:
        if time.monotonic() > deadline:
            missing += 1
            continue
        began = time.perf_counter()
        try:
            reply = client.request(Envelope.new(q), timeout=10.0, retries=1)
        except (NoReply, NotConfirmed):
            missing += 1
            continue
        lat.append(time.perf_counter() - began)
        if isinstance(reply.payload, SearchResults):
            hits.append(reply.payload.total)
        else:
            wrong += 1
    return {"queries": len(qs), "answered": len(lat) - wrong, "missing": missing,
            "wrong": wrong, "latency_ms": percentiles(lat),
            "hits_mean": round(sum(hits) / len(hits), 1) if hits else None}


def in_process(url: str, qs: Sequence[SearchApartments]) -> dict[str, Any]:
    """The same queries' statements run here, on the store: the database's share."""
    engine = make_engine(url, migrate=False)
    lat = []
    try:
        for q in qs:
            began = time.perf_counter()
            search(engine.connect, q)
            lat.append(time.perf_counter() - began)
    finally:
        engine.dispose()
    return {"latency_ms": percentiles(lat)}


def percentiles(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50, p99, max in milliseconds (nearest rank)."""
    s = sorted(seconds)

    def rank(p: float) -> float | None:
        return round(s[max(0, math.ceil(len(s) * p / 100) - 1)] * 1000, 2) if s else None

    return {"p50": rank(50), "p99": rank(99), "max": round(s[-1] * 1000, 2) if s else None}


def node_status(url: str, topology: Topology, node: str) -> dict[str, Any]:
    """The node's status reply (live actors, activations, passivations), or {}."""
    try:
        with ControlClient(url, topology) as ctl:
            replies = ctl.request("status", node=node, wait=2.0)
    except (ControlFailed, AMQPError, OSError):
        return {}
    result = replies[0].get("result") if replies and replies[0].get("ok") else None
    return result if isinstance(result, dict) else {}


@contextlib.contextmanager
def _store(args: argparse.Namespace, work: Path) -> Iterator[str]:
    """A fresh, empty store's URL: a SQLite file, or a database on a private PostgreSQL."""
    if not args.postgres:
        yield f"sqlite:///{work / 'scale.db'}"
        return
    with local_postgresql(work / "postgresql") as server:
        yield create_database(server, f"scale_{new_id()[:8]}")


def _store_bytes(conn: Connection, url: str) -> int | None:
    if conn.dialect.name == "postgresql":
        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
        return None if size is None else int(size)
    path = Path(url.removeprefix("sqlite:///"))
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load, then the node: commands, queries, memory and threads. The report."""
    today = date.today()
    cap = args.max_live
    report: dict[str, Any] = {
        "config": {"apartments": args.apartments, "max_live": cap, "seed": args.seed,
                   "booked_share": args.booked_share, "store": "postgresql" if args.postgres
                   else "sqlite", "window": args.window},
        "load": None, "plan": None, "node": None, "commands": None, "queries": None,
        "store_queries": None, "node_exit_code": None, "setup_error": None, "error": None,
    }
    cat = catalog(args.apartments, args.seed)
    with tempfile.TemporaryDirectory(prefix="staybook-scale-") as tmp:
        work = Path(tmp)
        try:
            with _store(args, work) as db_url:
                print(f"loading {args.apartments:,} apartments ...", file=sys.stderr,
                      flush=True)
                loaded = load(db_url, cat, booked_share=args.booked_share, seed=args.seed,
                              today=today, workers=args.workers, progress=args.progress)
                qs = queries(cat, args.queries + args.warmup, args.seed, today)
                engine = make_engine(db_url, migrate=False)
                try:
                    with engine.connect() as conn:
                        report["load"] = {**asdict(loaded),
                                          "store_bytes": _store_bytes(conn, db_url)}
                        report["plan"] = asdict(search_plan(conn, qs[0]))
                finally:
                    engine.dispose()
                _node_runs(report, args, cat, qs, db_url, work, today)
        except SetupFailed as exc:
            report["setup_error"] = str(exc)
        except (TimeoutError, AMQPError, OSError) as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
    report["exit_code"] = exit_code(report)
    return report


def _node_runs(report: dict[str, Any], args: argparse.Namespace, cat: Catalog,
               qs: Sequence[SearchApartments], db_url: str, work: Path, today: date) -> None:
    """A broker and the node on the loaded store; commands, then queries."""
    deadline = time.monotonic() + args.timeout
    prefix = f"scale{new_id()[:10]}"
    topology = Topology(prefix=prefix, partitions=DEFAULT_PARTITIONS)
    with contextlib.ExitStack() as stack:
        url = args.amqp_url or os.environ.get("STAYBOOK_BROKER__URL")
        if url:
            wait_for_broker(url, timeout=60)
        else:
            url = stack.enter_context(private_broker(work / "rabbitmq", deadline)).url
        report["config"]["broker"] = redact_url(url)
        stack.callback(delete_prefix, url, topology)
        node = start_node(url, prefix, work, deadline, db_url=db_url,
                          settings={"STAYBOOK_ACTORS__MAX_LIVE": str(args.max_live)})
        try:
            with Sampler(node.proc.pid) as sampler:
                idle = sampler.sample() or (0, 0)
                cmds = requests(cat, args.commands, args.seed, today)
                e2e = run_end_to_end(url, topology, cmds, args.window, deadline)
                e2e["distinct_apartments"] = len({c.apartment_id for c in cmds})
                e2e["drained_s"] = wait_drained(url, topology, [node.name], deadline)
                report["commands"] = e2e
                status = node_status(url, topology, node.name)
                with Client(url, topology) as client:
                    run_queries(client, qs[:args.warmup], deadline)
                    report["queries"] = {**run_queries(client, qs[args.warmup:], deadline),
                                         "warmup": args.warmup}
            report["node"] = {
                "rss_idle_bytes": idle[0], "threads_idle": idle[1],
                "rss_max_bytes": sampler.rss_max, "threads_max": sampler.threads_max,
                "samples": sampler.samples, "max_live": args.max_live,
                "live_actors": status.get("live_actors"),
                "activations": status.get("activations"),
                "passivations": status.get("passivations")}
        finally:
            report["node_exit_code"] = node.stop(timeout=90)
            if report["node_exit_code"] != 0:
                report["node_log_tail"] = log_tail(node.log_path, 30)
    report["store_queries"] = in_process(db_url, qs[args.warmup:])


def exit_code(report: dict[str, Any]) -> int:
    """0: every command and query answered, none with ``error``, the node stopped cleanly."""
    if report["setup_error"] is not None:
        return 2
    c, q = report["commands"], report["queries"]
    ok = (report["error"] is None and report["node_exit_code"] == 0
          and c is not None and c["replies"] == c["commands"] and c["status"]["error"] == 0
          and q is not None and q["answered"] == q["queries"])
    return 0 if ok else 1


def _exiting(cap: int) -> int:
    """Threads allowed beyond the idle node's and the cap: passivated actors exiting."""
    return max(10, cap // 100)


def targets(report: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(name, value, target, met) for each target this run measures."""
    node, q, c = report["node"] or {}, report["queries"] or {}, report["commands"] or {}
    plan = report["plan"] or {}
    rss = node.get("rss_max_bytes")
    threads, idle, cap = node.get("threads_max"), node.get("threads_idle"), node.get(
        "max_live")
    # Passivated actors' threads exit a moment after they are told to stop, while new
    # ones start: 1% of the cap (at least 10) is left for those.
    slack = None if cap is None else _exiting(cap)
    bound = None if idle is None or cap is None or slack is None else idle + cap + slack
    p99 = (q.get("latency_ms") or {}).get("p99")
    return [
        ("node RSS max", "-" if rss is None else f"{rss / MiB:,.0f} MiB",
         f"< {RSS_TARGET // MiB:,} MiB", None if rss is None else rss < RSS_TARGET),
        ("node threads max", "-" if threads is None else f"{threads:,}",
         "-" if bound is None else f"<= {idle} idle + {cap:,} cap + {slack} exiting",
         None if threads is None or bound is None else threads <= bound),
        ("search p99 (city + dates)", "-" if p99 is None else f"{p99} ms",
         f"< {P99_TARGET_MS:.0f} ms", None if p99 is None else p99 < P99_TARGET_MS),
        ("search plan", "city by index, nights by key" if plan.get("city_by_index")
         and plan.get("nights_by_key") else "a table scan", "no scan",
         bool(plan.get("city_by_index") and plan.get("nights_by_key")) if plan else None),
        ("commands answered", f"{c.get('replies', 0):,}/{c.get('commands', 0):,}", "all",
         bool(c) and c["replies"] == c["commands"] and c["status"]["error"] == 0),
        ("queries answered", f"{q.get('answered', 0):,}/{q.get('queries', 0):,}", "all",
         bool(q) and q["answered"] == q["queries"]),
    ]


def render(report: dict[str, Any]) -> str:
    """The report as a few lines and a table of the targets."""
    cfg, ld, node = report["config"], report["load"], report["node"]
    c, q, sq = report["commands"], report["queries"], report["store_queries"]
    out = [f"Staybook at scale: {cfg['apartments']:,} apartments on {cfg['store']}, "
           f"live-actor cap {cfg['max_live']:,}, seed {cfg['seed']}"]
    if ld:
        size = "-" if ld["store_bytes"] is None else f"{ld['store_bytes'] / MiB:,.0f} MiB"
        out.append(f"  load      {ld['apartments']:,} apartments ({ld['booked']:,} with "
                   f"{ld['stays']:,} stays booked): {ld['events']:,} events, {ld['rows']:,} "
                   f"rows in {ld['seconds']:,.1f} s "
                   f"({ld['apartments'] / max(ld['seconds'], 0.001):,.0f} apartments/s); "
                   f"store {size}")
    if report["plan"]:
        out.append("  plan      " + "; ".join(_access_paths(report["plan"]["lines"])))
    if node:
        out.append(f"  node      idle: {node['rss_idle_bytes'] / MiB:,.0f} MiB, "
                   f"{node['threads_idle']} threads; max: {node['rss_max_bytes'] / MiB:,.0f} "
                   f"MiB, {node['threads_max']:,} threads ({node['samples']:,} samples); "
                   f"live actors at the end {node['live_actors']}, activations "
                   f"{node['activations']}, passivations {node['passivations']}")
    if c:
        st, lat = c["status"], c["latency_ms"]
        out.append(f"  commands  {c['commands']:,} RequestReservation to "
                   f"{c['distinct_apartments']:,} apartments "
                   f"({c['distinct_apartments'] / cfg['max_live']:.1f}x the cap): "
                   f"{c['replies']:,} answered (ok {st['ok']:,}, rejected {st['rejected']:,}, "
                   f"error {st['error']:,}), {c['rate_per_s']}/s, reply p50 {lat['p50']} ms "
                   f"p99 {lat['p99']} ms; drained in {c['drained_s']} s")
    if q:
        lat = q["latency_ms"]
        out.append(f"  queries   {q['queries']:,} SearchApartments (city + dates, after "
                   f"{q['warmup']} untimed): {q['answered']:,} answered, p50 {lat['p50']} ms "
                   f"p99 {lat['p99']} ms max {lat['max']} ms; {q['hits_mean']} hits on average")
    if sq:
        lat = sq["latency_ms"]
        out.append(f"  store     the same queries in process: p50 {lat['p50']} ms "
                   f"p99 {lat['p99']} ms max {lat['max']} ms")
    for key in ("setup_error", "error"):
        if report[key]:
            out.append(f"  {key.replace('_', ' ')}: {report[key]}")
    if report.get("node_log_tail"):
        out.append(f"  node exit {report['node_exit_code']}; its log ends:\n"
                   f"{report['node_log_tail']}")
    out.append("")
    out.append("  against the targets")
    for name, value, target, met in targets(report):
        mark = "-" if met is None else ("✓" if met else "✗")
        out.append(f"    {name:<28} {value:<32} {target:<40} {mark}")
    return "\n".join(out)


def _access_paths(lines: Sequence[str]) -> list[str]:
    """The plan's lines that say how a table is read or rows sorted, each once."""
    keep = ("SEARCH", "SCAN", "USE TEMP", "Scan", "Sort", "Join")
    return list(dict.fromkeys(re.sub(r"\s+\(cost=[^)]*\)", "", line).lstrip("-> ")
                              for line in lines if any(k in line for k in keep)))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench.scale",
                                description="A node over many apartments: memory, threads "
                                            "and search latency against their targets.")
    p.add_argument("--apartments", type=positive, default=1_000_000)
    p.add_argument("--max-live", type=positive, default=ActorSettings().max_live,
                   help="the node's live-actor cap (default: the configured one)")
    p.add_argument("--commands", type=positive, default=None,
                   help="RequestReservation to distinct apartments (default: 3x the cap)")
    p.add_argument("--queries", type=positive, default=1000)
    p.add_argument("--warmup", type=int, default=20, help="untimed queries first")
    p.add_argument("--booked-share", type=float, default=0.3,
                   help="share of apartments with stays booked (1 to 3 each)")
    p.add_argument("--window", type=positive, default=500,
                   help="commands in flight (published, not yet answered)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--postgres", action="store_true",
                   help="the store on a private PostgreSQL instead of a SQLite file")
    p.add_argument("--amqp-url", default=None,
                   help="a running broker (default: $STAYBOOK_BROKER__URL, else a private one)")
    p.add_argument("--workers", type=positive, default=None,
                   help="processes making the rows to load (default: one per core)")
    p.add_argument("--progress", action="store_true", help="report the load as it goes")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds for the node's part; then report what was measured, exit 1")
    args = p.parse_args(argv)
    if args.commands is None:
        args.commands = 3 * args.max_live
    if not 0 <= args.booked_share <= 1:
        p.error("--booked-share must be within 0..1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run it, print the report (and the JSON file); the exit status."""
    args = parse_args(argv)
    # SIGTERM (``timeout``) unwinds like Ctrl-C: the node, the broker and the temporary
    # store are stopped and removed on the way out, not left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = run(args)
    print(render(report), flush=True)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return int(report["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
