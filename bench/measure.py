"""Publishing a workload pipelined or paced and timing what comes back.

Every run publishes persistent messages *without* publisher confirms: a blocking pika
channel in confirm mode waits for each confirm, which would defeat the pipelining.
Every message is instead accounted for by its reply (request/reply) or its delivery
(publish/consume); ``mandatory`` returns are counted. Latency is publish -> reply (or
delivery) as seen by this process.

* :func:`run_end_to_end`: the commands to a node's commands exchange, ``reply_to`` an
  exclusive auto-delete queue on the same connection, ``correlation_id = message_id``;
  pipelined (:func:`drive`: at most ``window`` unanswered) or, with a ``rate``, paced
  (:func:`drive_paced` on a :class:`Pacer`: a fixed schedule, whatever the replies do);
* :func:`run_request_reply`: the same, to a plain durable quorum queue that
  :mod:`bench.responder` processes answer: the request/reply ceiling;
* :func:`run_raw`: the SAME bodies through a plain durable quorum queue, same window,
  consumed and acked here, no reply: the broker's publish/consume ceiling;
* :func:`wait_drained`: until a node has no work left from what it answered.
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
from console.control_client import ControlClient, ControlFailed

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

    def send(self, i: int, publish: Callable[[int], None]) -> int:
        """Publish message ``i``, timing it from now; the next index."""
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.sent[i] = now
        publish(i)
        self.published = i + 1
        return i + 1

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
            nxt = tracker.send(nxt, publish)
        idle = nxt >= total or nxt - tracker.completed >= window
        # With a time limit, this returns as soon as any callback is ready to run.
        conn.process_data_events(time_limit=min(0.05, left) if idle else 0)
    return True


@dataclass
class Pacer:
    """When the messages of a paced run go out: one every 1/``rate`` seconds.

    Message k is due at base + k/rate: a publisher that woke late sends what is
    overdue at once, so the schedule holds. The one exception is ``bound``: with that
    many awaiting their reply (a node far behind) nothing goes out, and when room
    frees the schedule restarts from that moment. A slow node thus sees the same rate
    late, never the held-back messages in one burst.
    """

    rate: float
    bound: int
    sent: int = 0
    stalls: int = 0
    stalled_s: float = 0.0
    max_lag_s: float = 0.0
    _base: float | None = None
    _k: int = 0
    _stalled_at: float | None = None

    def take(self, now: float, in_flight: int, total: int) -> int:
        """How many messages to publish at ``now``; counts them as sent."""
        if self._base is None:
            self._base = now
        if in_flight >= self.bound:
            if self._stalled_at is None and self.due_at() <= now:
                self._stalled_at = now
                self.stalls += 1
            return 0
        if self._stalled_at is not None:
            self.stalled_s += now - self._stalled_at
            self._stalled_at = None
            self._base, self._k = max(now, self.due_at()), 0
        due = math.floor((now - self._base) * self.rate + 1e-9) + 1 - self._k
        n = max(0, min(due, total - self.sent, self.bound - in_flight))
        if n:
            self.max_lag_s = max(self.max_lag_s, now - self.due_at())
            self._k += n
            self.sent += n
        return n

    def due_at(self) -> float:
        """When the next message is due (the first ``take`` starts the schedule)."""
        return (self._base or 0.0) + self._k / self.rate

    def figures(self) -> dict[str, Any]:
        """The rate asked for and how far the publisher strayed from it."""
        return {"rate_per_s": self.rate, "bound": self.bound, "stalls": self.stalls,
                "stalled_s": round(self.stalled_s, 3), "max_lag_ms": _ms(self.max_lag_s)}


def drive_paced(conn: pika.BlockingConnection, tracker: Tracker,
                publish: Callable[[int], None], total: int, pacer: Pacer,
                deadline: float) -> bool:
    """Publish ``total`` messages on ``pacer``'s schedule; False on timeout.

    Replies are taken between publishes, as in :func:`drive`.
    """
    nxt = 0
    while tracker.completed < total:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        now = time.perf_counter()
        for _ in range(pacer.take(now, nxt - tracker.completed, total)):
            nxt = tracker.send(nxt, publish)
        waiting = nxt >= total or nxt - tracker.completed >= pacer.bound
        # A full window waits for a reply (which ends the wait), as does the tail.
        wait = 0.05 if waiting else pacer.due_at() - time.perf_counter()
        conn.process_data_events(time_limit=max(0.0, min(0.05, wait, left)))
    return True


def _props(commands: Sequence[Command], exchange: str, reply_to: str | None,
           routing: Callable[[Command], str]) -> list[Any]:
    return [properties_of(Outgoing(exchange=exchange, routing_key=routing(c), body=c.body,
                                   message_id=c.message_id, correlation_id=c.message_id,
                                   type=c.type, reply_to=reply_to))
            for c in commands]


def run_end_to_end(url: str, topology: Topology, commands: Sequence[Command], window: int,
                   deadline: float, *, rate: float | None = None) -> dict[str, Any]:
    """Publish the workload to a node and time every reply.

    Pipelined (at most ``window`` unanswered), or with ``rate`` paced: message i at
    t0 + i/rate, ``window`` then only a bound on what may await its reply.
    """
    return _request_reply(url, topology.commands_exchange, lambda c: c.apartment_id,
                          commands, window, deadline, rate)


def run_request_reply(url: str, queue: str, commands: Sequence[Command], window: int,
                      deadline: float, *, rate: float | None = None) -> dict[str, Any]:
    """The workload as requests on a durable quorum queue, answered by responders.

    The same publishing, window, pacing and reply timing as :func:`run_end_to_end`;
    whoever consumes ``queue`` (:mod:`bench.responder`) answers. The queue must exist.
    """
    return _request_reply(url, "", lambda _c: queue, commands, window, deadline, rate)


def _request_reply(url: str, exchange: str, routing: Callable[[Command], str],
                   commands: Sequence[Command], window: int, deadline: float,
                   rate: float | None) -> dict[str, Any]:
    """Publish with ``reply_to`` an exclusive queue; count and time the replies."""
    tracker = Tracker.of(commands)
    statuses: Counter[str] = Counter()
    by_type: dict[str, Counter[str]] = {}
    reasons: Counter[str] = Counter()
    pacer = None if rate is None else Pacer(rate=rate, bound=window)
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
        props = _props(commands, exchange, reply_q, routing)

        def publish(i: int) -> None:
            c = commands[i]
            ch.basic_publish(exchange, routing(c), c.body, props[i], mandatory=True)

        if pacer is None:
            completed = drive(conn, tracker, publish, len(commands), window, deadline)
        else:
            completed = drive_paced(conn, tracker, publish, len(commands), pacer, deadline)
    finally:
        with contextlib.suppress(AMQPError, OSError):
            conn.close()
    out = {"commands": len(commands), "completed_in_time": completed, **tracker.figures()}
    out["replies"] = out.pop("completed")
    out["status"] = {k: statuses.get(k, 0) for k in ("ok", "rejected", "error")} | {
        k: v for k, v in statuses.items() if k not in ("ok", "rejected", "error")}
    out["by_type"] = {t: dict(c) for t, c in sorted(by_type.items())}
    out["reasons"] = dict(reasons.most_common())
    if pacer is not None:
        out["pacing"] = pacer.figures()
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
    conn = pika.BlockingConnection(connection_parameters(url))
    try:
        return _depths(conn, names)
    finally:
        with contextlib.suppress(AMQPError, OSError):
            conn.close()


def _depths(conn: pika.BlockingConnection, names: Sequence[str]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name in names:
        try:
            ch = conn.channel()  # a passive declare of a missing queue closes the channel
            out[name] = ch.queue_declare(name, passive=True).method.message_count
            ch.close()
        except AMQPError:
            out[name] = None
    return out


def wait_drained(url: str, topology: Topology, nodes: Sequence[str], deadline: float, *,
                 limit: float = 120.0, settle: int = 2) -> float | None:
    """Wait until the nodes are done with what they answered; the seconds it took.

    A reply leaves work behind (events to relay and handle), which is part of what a
    command costs and must not leak into the next phase. Done: every work queue
    empty and, by each node's ``status``, no outbox or writer backlog, ``settle``
    times in a row. None if that is not seen within ``limit`` or by ``deadline``.
    """
    began = time.monotonic()
    end = min(deadline, began + limit)
    queues = topology.work_queues()
    quiet = 0
    conn = pika.BlockingConnection(connection_parameters(url))
    try:
        with ControlClient(url, topology) as ctl:
            while time.monotonic() < end:
                idle = all(d == 0 for d in _depths(conn, queues).values())
                quiet = quiet + 1 if idle and all(_idle(ctl, n) for n in nodes) else 0
                if quiet >= settle:
                    return round(time.monotonic() - began, 2)
                time.sleep(0.2)
    finally:
        with contextlib.suppress(AMQPError, OSError):
            conn.close()
    return None


def _idle(ctl: ControlClient, node: str) -> bool:
    """The node says its outbox and its writer have nothing pending."""
    try:
        replies = ctl.request("status", node=node, wait=2.0)
    except ControlFailed:
        return False
    result = replies[0].get("result") if replies and replies[0].get("ok") else None
    return (isinstance(result, dict) and not result.get("outbox_backlog")
            and not result.get("writer_backlog"))
