"""Publishing a workload pipelined and timing what comes back.

Both runs publish persistent messages *without* publisher confirms: a blocking pika
channel in confirm mode waits for each confirm, which would defeat the pipelining.
Every message is instead accounted for by its reply (end to end) or its delivery
(raw); ``mandatory`` returns are counted. Latency is publish -> reply (or delivery)
as seen by this process.

* :func:`run_end_to_end`: the commands to a node's commands exchange, ``reply_to`` an
  exclusive auto-delete queue on the same connection, ``correlation_id = message_id``;
* :func:`run_raw`: the SAME bodies through a plain durable quorum queue, same window,
  the consumer acking each message and doing nothing else: the broker's ceiling.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
from pika.exceptions import AMQPError

from bench.workload import Command
from broker.base import Outgoing
from broker.rabbitmq import connection_parameters, properties_of
from broker.topology import Topology

CHUNK = 64  # publishes between two looks at the socket


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
