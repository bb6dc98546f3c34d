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
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pika
from pika.exceptions import AMQPError

from broker.base import Outgoing
from broker.rabbitmq import (
    all_consumed,
    connection_parameters,
    properties_of,
    wait_for_broker,
)
from broker.topology import Topology
from config import CONFIG_DIR, DEFAULT_PARTITIONS, RABBITMQ_PLUGINS_FILE
from console.localbroker import CTL, SERVER, BrokerUnavailable, ensure_installed, port_open
from messages import (
    AcceptReservation,
    AddApartment,
    Envelope,
    Message,
    RejectReservation,
    RequestReservation,
    new_id,
)

REPO = Path(__file__).resolve().parent.parent
BURST = 16  # overlapping requests per burst on one hot apartment
CHUNK = 64  # publishes between two looks at the socket
CITIES = ("Lisbon", "Porto", "Rome", "Paris", "Berlin", "Madrid", "Vienna", "Prague")


class SetupFailed(Exception):
    """The broker or the node could not be started."""


# --- the workload --------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """One prepared command: its wire body and what is needed to publish it."""

    type: str
    apartment_id: str
    message_id: str
    body: bytes


def build_workload(*, apartments: int, hot: int, commands: int, seed: int,
                   today: date) -> list[Command]:
    """The seeded command stream, in publishing order.

    ``apartments`` AddApartment first; then RequestReservation (half of them in bursts
    of :data:`BURST` overlapping stays on the ``hot`` apartments, the rest spread over
    the other apartments); then AcceptReservation / RejectReservation for a fifth of
    what is left, picked among the requests. Every date is at least two days ahead of
    ``today``. Message ids are fresh; everything else follows from ``seed``.
    """
    if apartments < 1 or commands < apartments:
        raise ValueError("need apartments >= 1 and commands >= apartments")
    rng = random.Random(seed)
    hot = max(0, min(hot, apartments))
    out: list[Command] = []

    def add(payload: Message, apartment_id: str) -> None:
        env = Envelope.new(payload, apartment_id=apartment_id)
        out.append(Command(env.type, apartment_id, env.message_id, env.to_json()))

    ids = [f"apt-{i:05d}" for i in range(apartments)]
    owner = {a: f"owner-{i:05d}" for i, a in enumerate(ids)}
    capacity: dict[str, int] = {}
    for a in ids:
        capacity[a] = rng.randint(2, 6)
        add(AddApartment(owner_id=owner[a], city=rng.choice(CITIES), title=f"Flat {a}",
                         price_per_night=rng.randint(50, 300) * 100,
                         capacity=capacity[a]), a)

    left = commands - apartments
    n_decisions = left // 5
    n_requests = left - n_decisions
    hot_ids, rest = ids[:hot], ids[hot:] or ids
    n_hot = n_requests // 2 if hot_ids else 0
    requests: list[tuple[str, str]] = []  # (apartment_id, reservation_id)

    def request(a: str, start: date, nights: int) -> None:
        rid = f"res-{len(requests):06d}"
        add(RequestReservation(reservation_id=rid, guest_id=f"guest-{rng.randint(0, 9999):04d}",
                               start=start, end=start + timedelta(days=nights),
                               guests=rng.randint(1, capacity[a])), a)
        requests.append((a, rid))

    def spread() -> None:
        request(rng.choice(rest), today + timedelta(days=rng.randint(2, 365)),
                rng.randint(1, 14))

    bursts = -(-n_hot // BURST) if n_hot else 0
    spread_per_burst = (n_requests - n_hot) / bursts if bursts else 0.0
    hot_done = spread_done = 0
    for b in range(bursts):
        a = rng.choice(hot_ids)
        base = today + timedelta(days=rng.randint(2, 300))
        for _ in range(min(BURST, n_hot - hot_done)):
            request(a, base + timedelta(days=rng.randint(0, 3)), rng.randint(2, 7))
            hot_done += 1
        target = round(spread_per_burst * (b + 1))
        while spread_done < target and spread_done < n_requests - n_hot:
            spread()
            spread_done += 1
    while spread_done < n_requests - n_hot:
        spread()
        spread_done += 1

    n_decisions = min(n_decisions, len(requests))
    for a, rid in rng.sample(requests, n_decisions):
        if rng.random() < 0.5:
            add(AcceptReservation(reservation_id=rid, owner_id=owner[a]), a)
        else:
            add(RejectReservation(reservation_id=rid, owner_id=owner[a]), a)
    return out


# --- measuring ------------------------------------------------------------------------
@dataclass
class Tracker:
    """Publish times by message id, and what came back."""

    ids: dict[str, int]
    sent: list[float]
    published: int = 0
    completed: int = 0
    unexpected: int = 0
    returned: int = 0
    first: float | None = None
    last: float | None = None
    latencies: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, commands: Sequence[Command]) -> Tracker:
        """A tracker for ``commands``."""
        return cls(ids={c.message_id: i for i, c in enumerate(commands)},
                   sent=[0.0] * len(commands))

    def complete(self, message_id: str | None) -> int | None:
        """Record the answer to ``message_id``; its index, or None if not awaited."""
        i = self.ids.pop(message_id, None) if message_id else None
        if i is None:
            self.unexpected += 1
            return None
        now = time.perf_counter()
        self.latencies.append(now - self.sent[i])
        self.completed += 1
        self.last = now
        return i

    def figures(self) -> dict[str, Any]:
        """Counts, rate and latency percentiles (milliseconds)."""
        wall = (self.last - self.first) if self.first is not None and self.last is not None else 0.0
        lat = sorted(self.latencies)
        return {
            "published": self.published,
            "completed": self.completed,
            "missing": self.published - self.completed,
            "unexpected": self.unexpected,
            "returned": self.returned,
            "wall_s": round(wall, 3),
            "rate_per_s": round(self.completed / wall, 1) if wall > 0 else None,
            "latency_ms": {
                "p50": _ms(_percentile(lat, 50)),
                "p99": _ms(_percentile(lat, 99)),
                "max": _ms(lat[-1] if lat else None),
                "mean": _ms(sum(lat) / len(lat) if lat else None),
            },
        }


def _percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not sorted_values:
        return None
    k = math.ceil(len(sorted_values) * p / 100) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, k))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def drive(conn: pika.BlockingConnection, tracker: Tracker, publish: Callable[[int], None],
          total: int, window: int, deadline: float) -> bool:
    """Publish ``total`` messages keeping at most ``window`` unanswered; False on timeout.

    Answers arrive through the consumer callbacks registered on ``conn``, which call
    ``tracker.complete``.
    """
    nxt = 0
    while tracker.completed < total:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        budget = min(total - nxt, window - (nxt - tracker.completed), CHUNK)
        for _ in range(max(0, budget)):
            now = time.perf_counter()
            if tracker.first is None:
                tracker.first = now
            tracker.sent[nxt] = now
            publish(nxt)
            nxt += 1
            tracker.published = nxt
        idle = nxt >= total or nxt - tracker.completed >= window
        # With a time limit, this returns as soon as any callback is ready to run.
        conn.process_data_events(time_limit=min(0.05, left) if idle else 0)
    return True


def _props(commands: Sequence[Command], exchange: str, reply_to: str | None,
           routing: Callable[[Command], str]) -> list[Any]:
    return [properties_of(Outgoing(exchange=exchange, routing_key=routing(c), body=c.body,
                                   message_id=c.message_id, correlation_id=c.message_id,
                                   type=c.type, reply_to=reply_to))
            for c in commands]


def run_end_to_end(url: str, topology: Topology, commands: Sequence[Command], window: int,
                   deadline: float) -> dict[str, Any]:
    """Publish the workload to a node and time every reply."""
    tracker = Tracker.of(commands)
    statuses: Counter[str] = Counter()
    by_type: dict[str, Counter[str]] = {}
    reasons: Counter[str] = Counter()
    conn = pika.BlockingConnection(connection_parameters(url))
    completed = True
    try:
        ch = conn.channel()
        reply_q = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue

        def on_reply(_ch: Any, _method: Any, props: Any, body: bytes) -> None:
            i = tracker.complete(props.correlation_id)
            if i is None:
                return
            try:
                payload = json.loads(body)["payload"]
                status, reason = str(payload["status"]), payload.get("reason")
            except (ValueError, KeyError, TypeError):
                status, reason = "unparsable", None
            statuses[status] += 1
            by_type.setdefault(commands[i].type, Counter())[status] += 1
            if reason:
                reasons[f"{status}:{reason}"] += 1

        def on_return(_ch: Any, _method: Any, props: Any, _body: bytes) -> None:
            if tracker.complete(props.message_id) is not None:
                tracker.returned += 1
                statuses["unroutable"] += 1

        ch.add_on_return_callback(on_return)
        ch.basic_consume(reply_q, on_reply, auto_ack=True)
        exchange = topology.commands_exchange
        props = _props(commands, exchange, reply_q, lambda c: c.apartment_id)

        def publish(i: int) -> None:
            c = commands[i]
            ch.basic_publish(exchange, c.apartment_id, c.body, props[i], mandatory=True)

        completed = drive(conn, tracker, publish, len(commands), window, deadline)
    finally:
        with contextlib.suppress(AMQPError, OSError):
            conn.close()
    out = {"commands": len(commands), "completed_in_time": completed, **tracker.figures()}
    out["replies"] = out.pop("completed")
    out["status"] = {k: statuses.get(k, 0) for k in ("ok", "rejected", "error")} | {
        k: v for k, v in statuses.items() if k not in ("ok", "rejected", "error")}
    out["by_type"] = {t: dict(c) for t, c in sorted(by_type.items())}
    out["reasons"] = dict(reasons.most_common())
    return out


def run_raw(url: str, queue: str, commands: Sequence[Command], window: int,
            deadline: float) -> dict[str, Any]:
    """The same bodies through a plain durable quorum queue: publish, consume, ack."""
    tracker = Tracker.of(commands)
    conn = pika.BlockingConnection(connection_parameters(url))
    completed = True
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_purge(queue)
        ch.basic_qos(prefetch_count=min(window, 65535))

        def on_message(chan: Any, method: Any, props: Any, _body: bytes) -> None:
            chan.basic_ack(method.delivery_tag)
            tracker.complete(props.message_id)

        def on_return(_ch: Any, _method: Any, props: Any, _body: bytes) -> None:
            if tracker.complete(props.message_id) is not None:
                tracker.returned += 1

        ch.add_on_return_callback(on_return)
        ch.basic_consume(queue, on_message, auto_ack=False)
        props = _props(commands, "", None, lambda _c: queue)

        def publish(i: int) -> None:
            ch.basic_publish("", queue, commands[i].body, props[i], mandatory=True)

        completed = drive(conn, tracker, publish, len(commands), window, deadline)
        with contextlib.suppress(AMQPError, OSError):
            ch.queue_delete(queue)
    finally:
        with contextlib.suppress(AMQPError, OSError):
            conn.close()
    out = {"messages": len(commands), "completed_in_time": completed, **tracker.figures()}
    out["received"] = out.pop("completed")
    return out


def queue_depths(url: str, names: Sequence[str]) -> dict[str, int | None]:
    """Messages ready in each queue (None where it does not exist)."""
    out: dict[str, int | None] = {}
    conn = pika.BlockingConnection(connection_parameters(url))
    try:
        for name in names:
            try:
                ch = conn.channel()
                out[name] = ch.queue_declare(name, passive=True).method.message_count
                ch.close()
            except AMQPError:
                out[name] = None
    finally:
        with contextlib.suppress(AMQPError, OSError):
            conn.close()
    return out


# --- the private broker --------------------------------------------------------------
def _free_port_pair(rng: random.Random) -> int:
    """A port p with p and p + 20000 (RabbitMQ's distribution port) both free."""
    for _ in range(200):
        p = rng.randint(20000, 40000)
        if _bindable(p) and _bindable(p + 20000):
            return p
    raise SetupFailed("no free port pair for a private RabbitMQ")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def private_broker(state_dir: Path, deadline: float) -> Iterator[str]:
    """A RabbitMQ node of our own for the duration, like ``console.localbroker``.

    It is started the same way as ``start_local_broker`` but with a node name of its
    own: that helper always names its node ``staybook-dev``, which would collide with
    a developer's running node (and ``stop_local_broker`` would stop theirs).
    """
    try:
        ensure_installed()
    except BrokerUnavailable as exc:
        raise SetupFailed(str(exc)) from exc
    port = _free_port_pair(random.Random())
    node = f"staybook-bench-{os.getpid()}-{port}@localhost"
    for sub in ("log", "mnesia"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HOME": os.environ.get("HOME") or str(state_dir),
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(port + 20000),
        "RABBITMQ_MNESIA_BASE": str(state_dir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(state_dir / "log"),
        "RABBITMQ_CONFIG_FILE": str(CONFIG_DIR / "rabbitmq" / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(RABBITMQ_PLUGINS_FILE),
    }
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    log_path = state_dir / "rabbitmq.out"
    print(f"starting a private RabbitMQ {node} on port {port} ...", file=sys.stderr, flush=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen([str(SERVER)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        limit = min(deadline, time.monotonic() + 120)
        while not port_open("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > limit:
                raise SetupFailed(f"RabbitMQ did not start; see {_tail(log_path)}")
            time.sleep(0.3)
        try:
            wait_for_broker(url, timeout=max(1.0, limit - time.monotonic()))
        except TimeoutError as exc:
            raise SetupFailed(str(exc)) from exc
        yield url
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([str(CTL), "-n", node, "stop"], env=env, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# --- the node ----------------------------------------------------------------------------
@dataclass
class NodeProcess:
    """``staybook serve`` in a child process."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    exit_code: int | None = None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait; SIGKILL if it does not stop in time. The exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.exit_code = self.proc.returncode
        return self.exit_code


def start_node(url: str, prefix: str, workdir: Path, deadline: float, *,
               roles: Sequence[str] = ("commands", "events"), name: str | None = None,
               db_url: str | None = None, wait: bool = True) -> NodeProcess:
    """Start a node and wait until each queue its roles consume has a consumer.

    Args:
        roles: what the node runs (``--split`` starts one node per role).
        name: the node's name (default: from its roles).
        db_url: the store (default: a SQLite file in ``workdir``).
        wait: wait for its queues (False: only for the node's word that it serves,
            as a node joining others finds the queues consumed already).
    """
    name = name or "bench-" + "-".join(roles)
    env = {
        **os.environ,
        "STAYBOOK_BROKER__URL": url,
        "STAYBOOK_BROKER__PREFIX": prefix,
        "STAYBOOK_DATABASE_URL": db_url or f"sqlite:///{workdir / 'bench.db'}",
        "STAYBOOK_STORE__SYNCHRONOUS": "FULL",
        "STAYBOOK_LOG_LEVEL": "WARNING",
        "STAYBOOK_NODE_NAME": name,
        "STAYBOOK_ROLES": json.dumps(list(roles)),
        "PYTHONUNBUFFERED": "1",
    }
    log_path = workdir / f"node-{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "console.cli", "serve",
                                 "--no-local-broker"], env=env, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    node = NodeProcess(proc, log_path)
    topology = Topology(prefix=prefix, partitions=DEFAULT_PARTITIONS)
    queues = topology.work_queues(tuple(roles))
    limit = min(deadline, time.monotonic() + 120)
    while True:
        if proc.poll() is not None:
            raise SetupFailed(f"the node exited with {proc.returncode}: {_tail(log_path)}")
        if time.monotonic() > limit:
            node.stop()
            raise SetupFailed(f"the node did not come up in time: {_tail(log_path)}")
        if (all_consumed(url, queues) if wait
                else "serving on" in log_path.read_text(errors="replace")):
            return node
        time.sleep(0.2)


def delete_prefix(url: str, topology: Topology, extra_queues: Sequence[str] = ()) -> None:
    """Remove a run's queues and exchanges from a shared broker."""
    with contextlib.suppress(AMQPError, OSError):
        conn = pika.BlockingConnection(connection_parameters(url))
        try:
            ch = conn.channel()
            for name in [q.name for q in topology.queues()] + list(extra_queues):
                ch.queue_delete(name)
            for ex in topology.exchanges():
                ch.exchange_delete(ex.name)
        finally:
            with contextlib.suppress(AMQPError, OSError):
                conn.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} unreadable)"
    return f"{path}:\n" + "\n".join(text[-lines:])


def _redact(url: str) -> str:
    if "@" in url and "//" in url:
        scheme, rest = url.split("//", 1)
        return f"{scheme}//***@{rest.split('@', 1)[1]}"
    return url


# --- the run -------------------------------------------------------------------------------
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
                report["config"]["broker"] = _redact(url)
                wait_for_broker(url, timeout=max(1.0, min(60.0, deadline - time.monotonic())))
            else:
                url = stack.enter_context(private_broker(work / "rabbitmq", deadline))
                report["config"]["broker"] = f"private RabbitMQ at {_redact(url)}"
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
                        report["node_log_tail"] = "\n".join(_tail(n.log_path, 30)
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
    report["exit_code"] = _exit_code(report, skip_raw=args.skip_raw)
    return report


def _exit_code(report: dict[str, Any], *, skip_raw: bool) -> int:
    if report["setup_error"]:
        return 2
    e2e, raw = report["end_to_end"], report["raw"]
    ok = (e2e is not None and not report["timed_out"] and report["error"] is None
          and e2e["missing"] == 0 and e2e["replies"] == e2e["commands"]
          and e2e["status"]["error"] == 0
          and e2e["status"]["ok"] + e2e["status"]["rejected"] == e2e["commands"]
          and report["node_exit_code"] == 0
          and (skip_raw or (raw is not None and raw["received"] == raw["messages"])))
    return 0 if ok else 1


def render(report: dict[str, Any]) -> str:
    """The report as a table."""
    cfg = report["config"]
    lines = [
        "Staybook throughput benchmark",
        f"  broker {cfg.get('broker', '?')}, prefix {cfg['prefix']}, seed {cfg['seed']}, "
        f"window {cfg['window']}, store {cfg['store']}, publisher confirms: no, "
        f"node: {cfg['node']}",
        "  workload: " + ", ".join(f"{n} {t}" for t, n in report["workload"].items()),
        "",
        f"  {'run':<28}{'msgs':>8}{'answered':>10}{'msgs/s':>10}{'p50 ms':>10}"
        f"{'p99 ms':>10}{'max ms':>10}",
    ]

    def row(name: str, r: dict[str, Any] | None, total_key: str, done_key: str) -> None:
        if r is None:
            lines.append(f"  {name:<28}{'-':>8}")
            return
        lat = r["latency_ms"]
        lines.append(f"  {name:<28}{r[total_key]:>8}{r[done_key]:>10}"
                     f"{_fmt(r['rate_per_s']):>10}{_fmt(lat['p50']):>10}{_fmt(lat['p99']):>10}"
                     f"{_fmt(lat['max']):>10}")

    e2e, raw = report["end_to_end"], report["raw"]
    row("end to end (node)", e2e, "commands", "replies")
    row("raw quorum queue (ceiling)", raw, "messages", "received")
    ratio = report["ratio"]
    lines.append(f"  ratio end-to-end / raw: {'-' if ratio is None else f'{ratio:.3f}'}"
                 + (" (partial: timed out)" if report["timed_out"] and ratio is not None
                    else ""))
    if e2e is not None:
        lines.append("")
        lines.append("  replies: " + ", ".join(f"{k} {v}" for k, v in e2e["status"].items())
                     + f"; missing {e2e['missing']}, unexpected {e2e['unexpected']}")
        for t, c in e2e["by_type"].items():
            lines.append(f"    {t:<22}" + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
        if e2e["reasons"]:
            lines.append("  reasons: " + ", ".join(f"{k} {v}" for k, v in e2e["reasons"].items()))
        backlog = e2e.get("backlog_after_last_reply") or {}
        lines.append("  queued when the last reply came: "
                     + ", ".join(f"{k.split('.', 1)[-1]} {v}" for k, v in backlog.items()))
    lines.append("")
    lines.append(f"  node exit code {report['node_exit_code']}, total {report['total_s']} s"
                 + (", TIMED OUT" if report["timed_out"] else "")
                 + (f", setup error: {report['setup_error']}" if report["setup_error"] else "")
                 + (f", error: {report['error']}" if report["error"] else ""))
    if report.get("node_log_tail"):
        lines.append(report["node_log_tail"])
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}"


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
        from bench.nodes import main_nodes

        return main_nodes(args)
    report = run(args)
    print(render(report), flush=True)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return int(report["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
