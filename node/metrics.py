"""Per-node Prometheus metrics, and the recent-latency window the console shows.

Every node gets its own ``CollectorRegistry``: several nodes run in one test process
(and in one bench), and the default global registry would make them collide. Counters
that the node already keeps (activations, restarts, dead letters, backlogs) are read
at scrape time by a custom collector instead of being counted twice; only what no
one else counts (each command's type, outcome and latency) is measured here, by
observing the settlement of the ticket the intake hands the command's actor.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.outcome import Ticket
from supervisor import ReportFailure, ThreadService

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)
WINDOW = 2048  # recent latencies kept for the console's p99


@dataclass(frozen=True)
class NodeGauges:
    """What the node reports at scrape time (read from its own counters)."""

    live_actors: int
    max_live: int
    activations: int
    passivations: int
    restarts: int
    dead_letters: int
    outbox_backlog: int
    writer_backlog: int
    store_up: bool = True
    store_outages: int = 0


class _NodeCollector(Collector):
    def __init__(self, read: Callable[[], NodeGauges]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        g = self._read()
        yield GaugeMetricFamily("staybook_live_actors", "Live entity actors.",
                                value=g.live_actors)
        yield GaugeMetricFamily("staybook_max_live_actors", "The cap on live entity actors.",
                                value=g.max_live)
        yield CounterMetricFamily("staybook_activations", "Entity actors activated.",
                                  value=g.activations)
        yield CounterMetricFamily("staybook_passivations", "Entity actors passivated.",
                                  value=g.passivations)
        yield CounterMetricFamily("staybook_restarts",
                                  "Restarts: entity actors and supervised children.",
                                  value=g.restarts)
        yield CounterMetricFamily("staybook_dead_letters",
                                  "Messages dead-lettered (refused input and poison).",
                                  value=g.dead_letters)
        yield GaugeMetricFamily("staybook_outbox_backlog", "Outbox rows not yet published.",
                                value=g.outbox_backlog)
        yield GaugeMetricFamily("staybook_writer_backlog", "Commits waiting for the writer.",
                                value=g.writer_backlog)
        yield GaugeMetricFamily("staybook_store_up",
                                "1 while the store answers; 0 during an outage (the node "
                                "holds its work and is not ready).", value=int(g.store_up))
        yield CounterMetricFamily("staybook_store_outages",
                                  "Times the store became unreachable.", value=g.store_outages)


class NodeMetrics:
    """One node's metrics.

    Args:
        node_name: a constant label on every sample, so one Prometheus sees many nodes.
        gauges: reads the node's own counters at scrape time (None: commands only).
    """

    def __init__(self, node_name: str,
                 gauges: Callable[[], NodeGauges] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.node_name = node_name
        self.commands = Counter("staybook_commands", "Commands handled, by type and outcome.",
                                ["type", "outcome"], registry=self.registry)
        self.latency = Histogram("staybook_command_latency_seconds",
                                 "From the intake's receipt to the settlement of a command.",
                                 ["type"], buckets=LATENCY_BUCKETS, registry=self.registry)
        if gauges is not None:
            self.registry.register(_NodeCollector(gauges))
        self._recent: deque[float] = deque(maxlen=WINDOW)
        self._lock = threading.Lock()
        self.handled = 0

    def measure(self, command_type: str, ticket: Ticket) -> None:
        """Record a command's outcome and latency when its ticket is settled.

        An observer on the ticket's one settle path: whoever settles it (the actor's
        commit, a crash, a refusal), the outcome is counted once.
        """
        t0 = time.monotonic()

        def settled(t: Ticket) -> None:
            o = t.outcome
            assert o is not None  # observers run once it is set
            outcome = (o.status or _status(o.reply)) if o.kind == "ack" else (
                "requeued" if o.kind == "requeue" else "dead_letter")
            self.record(command_type, outcome, time.monotonic() - t0)

        ticket.on_settled(settled)

    def record(self, command_type: str, outcome: str, seconds: float) -> None:
        """Count one settled command."""
        self.commands.labels(command_type, outcome).inc()
        self.latency.labels(command_type).observe(seconds)
        with self._lock:
            self._recent.append(seconds)
            self.handled += 1

    def p99(self) -> float | None:
        """The 99th percentile of the recent latencies, seconds (None before any)."""
        with self._lock:
            xs = sorted(self._recent)
        if not xs:
            return None
        return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def _status(reply: bytes | None) -> str:
    """The CommandResult status in a reply ("ok" when there is none to read)."""
    if not reply:
        return "ok"
    try:
        status = json.loads(reply).get("payload", {}).get("status", "ok")
    except (ValueError, AttributeError):
        return "ok"
    return str(status)


Readiness = Callable[[], tuple[bool, str]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    timeout = 0.5  # how long one handle_request waits, so a stop is seen in time


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a line each."""


class MetricsServer(ThreadService):
    """The HTTP endpoint Prometheus scrapes, ``/ready`` and ``/healthz``, as a service.

    ``/ready`` answers 200 while the node can do its work and 503 (with the reason,
    one line) while it cannot, e.g. during a store outage or before it consumes its
    partitions: what a load balancer or an orchestrator's readiness probe reads.
    ``/healthz`` answers 200 while the process and its supervision tree run, 503 once
    the tree gave up: a liveness probe, which must not fail during an outage the node
    rides out (restarting it then would gain nothing). ``/metrics`` (and any other
    path) is the Prometheus text.

    Args:
        metrics: the node's metrics.
        port: the TCP port (0 asks the OS for a free one; see ``bound_port``).
        address: the interface to listen on.
        ready: whether the node is ready, and why (None: always ready).
        alive: whether the node is alive, and why not (None: always alive).
    """

    def __init__(self, metrics: NodeMetrics, port: int, address: str,
                 ready: Readiness | None = None, alive: Readiness | None = None) -> None:
        super().__init__("metrics")
        self._ready = ready or (lambda: (True, "ready"))
        self._alive = alive or (lambda: (True, "alive"))
        self._metrics = metrics
        self._port = port
        self._address = address
        self._server: WSGIServer | None = None
        self.bound_port: int | None = None
        self.answered = 0

    def start(self, on_crash: ReportFailure | None = None) -> None:
        """Listen, then serve on the service's thread.

        Raises:
            OSError: when the address cannot be bound.
        """
        scrape = make_wsgi_app(self._metrics.registry)
        probes = {"/ready": self._ready, "/healthz": self._alive}

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            self.answered += 1
            probe = probes.get(str(environ.get("PATH_INFO")))
            if probe is not None:
                ok, why = probe()
                start_response("200 OK" if ok else "503 Service Unavailable",
                               [("Content-Type", "text/plain; charset=utf-8")])
                return [f"{why}\n".encode()]
            return scrape(environ, start_response)

        server = make_server(self._address, self._port, app, _Server,
                             handler_class=_QuietHandler)
        self._server = server
        self.bound_port = int(server.server_address[1])
        super().start(on_crash)

    def run(self) -> None:
        """Serve one request at a time (each on a thread of its own) until stopped.

        Not ``serve_forever``: its ``shutdown`` waits without a bound for the loop to
        end, and forever if the loop never ran.
        """
        server = self._server
        while server is not None and not self.stopping():
            server.handle_request()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop serving, then stop listening.

        Returns:
            False when the thread still runs after ``timeout`` (see ThreadService.stop).
        """
        stopped = super().stop(timeout)
        if self._server is not None:
            self._server.server_close()
        return stopped

    def facts(self) -> dict[str, Any]:
        """The port it listens on and the requests it answered."""
        return {"port": self.bound_port, "answered": self.answered}
