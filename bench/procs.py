"""The processes a benchmark run needs: a private RabbitMQ node, Staybook nodes, responders.

The broker is :class:`console.localbroker.LocalRabbit` on a free port pair with a
node name of its own (never the developer's ``staybook-dev``), its data in the run's
temporary directory. Each node is ``staybook serve`` in a child process on a unique
prefix, so a run on a shared broker touches nothing else; :func:`delete_prefix`
removes what it declared. :func:`responders` runs the raw ceiling's answering side,
:mod:`bench.responder`, in processes of its own, as a node would be.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
from pika.exceptions import AMQPError

from broker.rabbitmq import all_consumed, connection_parameters
from broker.topology import Topology
from config import DEFAULT_PARTITIONS, RABBITMQ_CLUSTER_PLUGINS_FILE
from console.localbroker import BrokerUnavailable, LocalRabbit, free_port_pair, log_tail

REPO = Path(__file__).resolve().parent.parent


class SetupFailed(Exception):
    """The broker or the node could not be started."""


STATS_LAG_S = 5.5  # the management API's figures trail the broker's by up to about 5 s


def management_url(rabbit: LocalRabbit) -> str | None:
    """A private node's management API, with the guest login (None: not enabled)."""
    if rabbit.management_port is None:
        return None
    return f"http://guest:guest@127.0.0.1:{rabbit.management_port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_broker(state_dir: Path, deadline: float, *,
                   management: bool = False) -> Iterator[LocalRabbit]:
    """A RabbitMQ node of our own for the duration (installed first when permitted).

    Started before ``deadline`` or not at all; stopped cleanly (SIGKILL if it hangs)
    on the way out, so the caller can remove ``state_dir``. With ``management``, its
    management API is on, on a free port (:func:`management_url`): it counts
    publishes, deliveries, acks and confirms, at some CPU cost of the broker's.

    Raises:
        SetupFailed: when it cannot be installed or does not come up in time.
    """
    try:
        if management:  # the cluster's plugins: the consistent-hash exchange and the API
            port = free_port_pair()
            rabbit = LocalRabbit(state_dir, port=port,
                                 node_name=f"staybook-bench-{os.getpid()}-{port}@localhost",
                                 install=True, plugins=RABBITMQ_CLUSTER_PLUGINS_FILE,
                                 management_port=_free_port())
        else:
            rabbit = LocalRabbit.private(state_dir, "staybook-bench", install=True)
        print(f"starting a private RabbitMQ {rabbit.node_name} on port {rabbit.port} ...",
              file=sys.stderr, flush=True)
        rabbit.start(timeout=max(1.0, min(120.0, deadline - time.monotonic())))
    except BrokerUnavailable as exc:  # the report shows the end of the node's log too
        raise SetupFailed("\n".join([str(exc), *getattr(exc, "__notes__", ())])) from exc
    try:
        with unwound_by_sigterm():
            yield rabbit
    finally:
        rabbit.stop()


@contextlib.contextmanager
def unwound_by_sigterm() -> Iterator[None]:
    """Within it, a SIGTERM (a ``timeout``, a ``kill``) unwinds like an exit.

    Python's default for SIGTERM ends the process at once, skipping ``finally``: a
    benchmark stopped that way left its private broker running. On the main thread
    only (where Python runs signal handlers); the old handler comes back on the way out.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@dataclass
class NodeProcess:
    """``staybook serve`` in a child process."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    name: str = ""
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
               db_url: str | None = None, wait: bool = True,
               settings: Mapping[str, str] | None = None) -> NodeProcess:
    """Start a node and wait until each queue its roles consume has a consumer.

    Args:
        roles: what the node runs (``--split`` starts one node per role).
        name: the node's name (default: from its roles).
        db_url: the store (default: a SQLite file in ``workdir``).
        wait: wait for its queues (False: only for the node's word that it serves,
            as a node joining others finds the queues consumed already).
        settings: more ``STAYBOOK_*`` variables (e.g. ``STAYBOOK_ACTORS__MAX_LIVE``).
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
        **(settings or {}),
    }
    log_path = workdir / f"node-{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "console.cli", "serve",
                                 "--no-local-broker"], env=env, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    node = NodeProcess(proc, log_path, name)
    topology = Topology(prefix=prefix, partitions=DEFAULT_PARTITIONS)
    queues = topology.work_queues(tuple(roles))
    limit = min(deadline, time.monotonic() + 120)
    while True:
        if proc.poll() is not None:
            raise SetupFailed(f"the node exited with {proc.returncode}: {log_tail(log_path, 15)}")
        if time.monotonic() > limit:
            node.stop()
            raise SetupFailed(f"the node did not come up in time: {log_tail(log_path, 15)}")
        if (all_consumed(url, queues) if wait
                else "serving on" in log_path.read_text(errors="replace")):
            return node
        time.sleep(0.2)


@contextlib.contextmanager
def responders(url: str, queue: str, n: int, workdir: Path, deadline: float, *,
               prefetch: int = 512) -> Iterator[list[int]]:
    """``n`` :mod:`bench.responder` processes answering ``queue``; their pids.

    Yields once all ``n`` consume the queue; stops them (SIGTERM, then SIGKILL) after.

    Raises:
        SetupFailed: when one exits, or they are not all consuming in time.
    """
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n):
            log_path = workdir / f"responder-{i + 1}.log"
            with log_path.open("ab") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.responder", "--url", url, "--queue", queue,
                     "--prefetch", str(prefetch)], cwd=REPO, stdout=log,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True))
        limit = min(deadline, time.monotonic() + 60)
        while _consumers(url, queue) < n:
            if (gone := next((p for p in procs if p.poll() is not None), None)) is not None:
                raise SetupFailed(f"a responder exited with {gone.returncode}: "
                                  f"{log_tail(workdir / 'responder-1.log', 15)}")
            if time.monotonic() > limit:
                raise SetupFailed(f"the responders did not consume {queue} in time")
            time.sleep(0.1)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def _consumers(url: str, queue: str) -> int:
    """Consumers of ``queue`` now (0 if it or the broker cannot be reached)."""
    try:
        conn = pika.BlockingConnection(connection_parameters(url))
    except (AMQPError, OSError):
        return 0
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.consumer_count)
    except AMQPError:
        return 0
    finally:
        with contextlib.suppress(AMQPError, OSError):
            conn.close()


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


COUNTED = ("publish", "deliver", "ack", "confirm")


def message_counts(management_url: str | None, timeout: float = 10.0
                   ) -> dict[str, int] | None:
    """The broker's message totals so far (:data:`COUNTED`), from its management API.

    None when there is no API or it does not answer within ``timeout`` (it starts a
    little after AMQP). ``deliver`` counts deliveries to consumers that ack; the
    replies, consumed with automatic acks, are in ``publish`` only.
    """
    if not management_url:
        return None
    parts = urlsplit(management_url)
    base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}"
    login = base64.b64encode(f"{parts.username or 'guest'}:{parts.password or 'guest'}"
                             .encode()).decode()
    if parts.scheme not in ("http", "https"):
        return None
    request = urllib.request.Request(f"{base}/api/overview",  # noqa: S310 - http(s) only
                                     headers={"Authorization": f"Basic {login}"})
    limit = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
                stats: dict[str, Any] = json.load(answer).get("message_stats") or {}
            return {k: int(stats.get(k) or 0) for k in COUNTED}
        except (OSError, ValueError):
            if time.monotonic() > limit:
                return None
            time.sleep(0.5)


def settled_counts(api: str | None) -> dict[str, int] | None:
    """:func:`message_counts` once the broker's statistics caught up with now.

    The management API aggregates what the channels report every few seconds: a
    reading waits :data:`STATS_LAG_S` first (so it is taken at saturation only).
    """
    if not api:
        return None
    time.sleep(STATS_LAG_S)
    return message_counts(api)


@dataclass
class FloorProcesses:
    """The floor's two processes (:mod:`bench.floor`), events first, as a split node."""

    procs: dict[str, subprocess.Popen[bytes]]
    counters: dict[str, Path]
    logs: dict[str, Path]

    @property
    def pids(self) -> dict[str, int]:
        """Each role's pid."""
        return {role: p.pid for role, p in self.procs.items()}

    def alive(self) -> bool:
        """Whether both still run."""
        return all(p.poll() is None for p in self.procs.values())

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM both, wait; their exit codes and counters by role."""
        out: dict[str, Any] = {}
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for role, p in self.procs.items():
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
            try:
                counters = json.loads(self.counters[role].read_text())
            except (OSError, ValueError):
                counters = None
            out[role] = {"exit_code": p.returncode, "counters": counters}
        return out


@contextlib.contextmanager
def floor_processes(url: str, workdir: Path, deadline: float, *,
                    args: Mapping[str, Sequence[str]],
                    queues: Mapping[str, Sequence[str]]) -> Iterator[FloorProcesses]:
    """Start ``python -m bench.floor`` per role with ``args[role]``; stop them after.

    Yields once every queue of ``queues[role]`` has a consumer.

    Raises:
        SetupFailed: when one exits, or they are not consuming in time.
    """
    floor = FloorProcesses({}, {}, {})
    try:
        for role in ("events", "commands"):
            counters = workdir / f"floor-{role}.json"
            counters.unlink(missing_ok=True)
            log_path = workdir / f"floor-{role}.log"
            with log_path.open("ab") as log:
                floor.procs[role] = subprocess.Popen(
                    [sys.executable, "-m", "bench.floor", "--role", role, "--url", url,
                     "--counters", str(counters), *args[role]], cwd=REPO, stdout=log,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
            floor.counters[role], floor.logs[role] = counters, log_path
        limit = min(deadline, time.monotonic() + 60)
        wanted = [q for role in ("events", "commands") for q in queues[role]]
        while not all_consumed(url, wanted):
            for role, p in floor.procs.items():
                if p.poll() is not None:
                    raise SetupFailed(f"the floor's {role} process exited with "
                                      f"{p.returncode}: {log_tail(floor.logs[role], 15)}")
            if time.monotonic() > limit:
                raise SetupFailed("the floor's processes did not consume in time")
            time.sleep(0.1)
        yield floor
    finally:
        floor.stop()
