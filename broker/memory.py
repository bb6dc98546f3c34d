"""An in-process broker with RabbitMQ's semantics that Staybook relies on.

Exchanges (topic '#', fanout, default), bounded quorum queues (reject-publish or
drop-head), manual acks, prefetch, requeue with a delivery limit, dead-lettering,
and reply queues. It serves the unit and actor tests, which need no RabbitMQ.

Like :class:`broker.rabbitmq.RabbitConsumer`, a consumer settles its deliveries on its
own thread: ``ack``/``requeue``/``dead_letter`` from another thread enqueue the work
and return, so the actor tests exercise the same cross-thread handoff as production.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.base import Broker, Delivery, OnDelivery, Outgoing, Publisher
from broker.topology import Topology
from supervisor import ReportFailure, ThreadService

DELIVERY_COUNT = "x-delivery-count"
# How long a stopping consumer waits for its deliveries unless told: none, so a test
# that stops a consumer holding deliveries has them back in the queue at once.
DRAIN_SECONDS = 0.0


class QueueFull(Exception):
    """A bounded queue refused a publish (RabbitMQ's reject-publish)."""


class Unroutable(Exception):
    """A confirmed publish that no queue took (RabbitMQ returns it as unroutable)."""


@dataclass
class _Message:
    out: Outgoing
    deliveries: int = 0
    redelivered: bool = False


REJECT_PUBLISH = "reject-publish"
# A quorum queue that refused a publish takes them again once its ready messages are
# down to this share of its max length.
SOFT_LIMIT = 0.8


@dataclass
class _Queue:
    """A quorum queue: its bound counts ready messages only, as RabbitMQ's does.

    With ``reject-publish`` it refuses publishes once more than ``max_length`` are
    ready (the publish that crosses the bound is still taken), until they are down
    to ``SOFT_LIMIT`` of it; otherwise (``drop-head``) it drops its oldest.
    """

    name: str
    max_length: int | None
    delivery_limit: int | None
    dead_letter_exchange: str | None
    overflow: str = "drop-head"
    ready: deque[_Message] = field(default_factory=deque)
    unacked: int = 0
    refusing: bool = False


class MemoryBroker(Broker):
    """The in-memory twin of :class:`broker.rabbitmq.RabbitBroker`."""

    def __init__(self, topology: Topology | None = None) -> None:
        super().__init__(topology or Topology())
        self._lock = threading.Condition()
        self._exchanges: dict[str, tuple[str, list[tuple[str, str]]]] = {}
        self._alternates: dict[str, str] = {}
        self._queues: dict[str, _Queue] = {}
        self._reply_ids = itertools.count(1)

    def declare(self) -> None:
        """Create the topology (idempotent)."""
        with self._lock:
            for ex in self.topology.exchanges():
                self._exchanges.setdefault(ex.name, (ex.type, []))
                if "alternate-exchange" in ex.arguments:
                    self._alternates[ex.name] = ex.arguments["alternate-exchange"]
            for q in self.topology.queues():
                args = q.arguments
                self._queues.setdefault(
                    q.name,
                    _Queue(
                        q.name,
                        args.get("x-max-length"),
                        args.get("x-delivery-limit"),
                        args.get("x-dead-letter-exchange"),
                        args.get("x-overflow", "drop-head"),
                    ),
                )
            for b in self.topology.bindings():
                binds = self._exchanges[b.exchange][1]
                if (b.queue, b.routing_key) not in binds:
                    binds.append((b.queue, b.routing_key))

    def reply_queue(self) -> str:
        """Create an exclusive reply queue and return its name."""
        with self._lock:
            name = f"amq.gen-reply-{next(self._reply_ids)}"
            self._queues[name] = _Queue(name, None, None, None)
            return name

    def publish(self, out: Outgoing) -> bool:
        """Route a message; False when nothing was bound to take it.

        Raises:
            QueueFull: when a target queue refused it; like RabbitMQ, which nacks
                such a publish, the other target queues have taken it.
        """
        with self._lock:
            targets = self._route(out.exchange, out.routing_key)
            refused = [q for q in targets if q.refusing]
            for q in targets:
                if not q.refusing:
                    q.ready.append(_Message(out))
                    self._bound_locked(q)
            self._lock.notify_all()
            if refused:
                raise QueueFull(refused[0].name)
            return bool(targets)

    def _bound_locked(self, q: _Queue) -> None:
        """Apply ``q``'s max length after a publish to it."""
        if q.max_length is None or len(q.ready) <= q.max_length:
            return
        if q.overflow == REJECT_PUBLISH:
            q.refusing = True
            return
        while len(q.ready) > q.max_length:
            self._dead_letter_locked(q, q.ready.popleft(), "maxlen")

    def _took_locked(self, q: _Queue) -> None:
        """Messages left ``q``'s ready ones: a refusing queue may take publishes again."""
        if q.refusing and q.max_length is not None and (
                len(q.ready) <= int(q.max_length * SOFT_LIMIT)):
            q.refusing = False

    def _route(self, exchange: str, routing_key: str) -> list[_Queue]:
        if exchange == "":
            q = self._queues.get(routing_key)
            return [q] if q else []
        _type, binds = self._exchanges[exchange]
        targets = [self._queues[name] for name, _key in binds]
        if not targets and exchange in self._alternates:
            return self._route(self._alternates[exchange], routing_key)
        return targets

    def get(self, queue: str, timeout: float = 5.0) -> Outgoing | None:
        """Take one message off a queue (auto-ack), waiting up to ``timeout``."""
        with self._lock:
            q = self._queues[queue]
            if not self._lock.wait_for(lambda: bool(q.ready), timeout):
                return None
            msg = q.ready.popleft()
            self._took_locked(q)
            return msg.out

    def depth(self, queue: str) -> int:
        """Messages ready plus unacked in a queue."""
        with self._lock:
            q = self._queues[queue]
            return len(q.ready) + q.unacked

    def ready(self, queue: str) -> int:
        """Messages ready in a queue: what RabbitMQ's ``queue.declare-ok`` counts."""
        with self._lock:
            return len(self._queues[queue].ready)

    def drain(self, queue: str) -> list[Outgoing]:
        """Remove and return every ready message of a queue."""
        with self._lock:
            q = self._queues[queue]
            out = [m.out for m in q.ready]
            q.ready.clear()
            self._took_locked(q)
            return out

    def consumer(
        self, queue: str, on_delivery: OnDelivery, *, prefetch: int, name: str,
        drain_seconds: float | None = None,
        on_subscribed: Callable[[], None] | None = None,
    ) -> _MemoryConsumer:
        """A consumer thread for ``queue`` that settles its deliveries itself.

        Like a RabbitMQ consumer, stopping waits up to ``drain_seconds`` (None:
        ``DRAIN_SECONDS``) for the deliveries handed out to be settled, then gives the
        rest back to the queue, redelivered; a settle that comes later is ignored.
        """
        return _MemoryConsumer(self, queue, on_delivery, prefetch, name, on_subscribed,
                               DRAIN_SECONDS if drain_seconds is None else drain_seconds)

    # --- for its consumers ---------------------------------------------------------
    def take(self, queue: str, prefetch: int, *, interrupted: Callable[[], bool],
             timeout: float) -> _Message | None:
        """Hand out the next message of ``queue`` (now unacked), as a consumer with
        ``prefetch`` may take it; None once ``interrupted()`` holds or after ``timeout``.

        ``interrupted`` is evaluated under the broker's lock; :meth:`wake` makes a
        waiting consumer evaluate it again.
        """
        with self._lock:
            q = self._queues[queue]

            def ready() -> bool:
                return interrupted() or (bool(q.ready) and q.unacked < prefetch)

            self._lock.wait_for(ready, timeout)
            if interrupted() or not q.ready or q.unacked >= prefetch:
                return None
            msg = q.ready.popleft()
            msg.deliveries += 1
            q.unacked += 1
            self._took_locked(q)
            return msg

    def wake(self) -> None:
        """Have every consumer waiting in :meth:`take` check whether it is interrupted."""
        with self._lock:
            self._lock.notify_all()

    def publisher(self) -> Publisher:
        """A publisher whose confirms are immediate."""
        return _MemoryPublisher(self)

    def settle(self, queue: str, msg: _Message, *, requeue: bool) -> None:
        """Ack (or requeue) a message :meth:`take` handed out.

        Called on its consumer's thread (or the caller's, once it stopped), under no lock.
        """
        with self._lock:
            q = self._queues[queue]
            q.unacked -= 1
            if requeue:
                msg.redelivered = True
                if q.delivery_limit is not None and msg.deliveries > q.delivery_limit:
                    self._dead_letter_locked(q, msg, "delivery_limit")
                else:
                    q.ready.appendleft(msg)
            self._lock.notify_all()

    def _dead_letter_locked(self, q: _Queue, msg: _Message, reason: str) -> None:
        if not q.dead_letter_exchange:
            return
        out = Outgoing(
            exchange=q.dead_letter_exchange,
            routing_key=msg.out.routing_key,
            body=msg.out.body,
            message_id=msg.out.message_id,
            correlation_id=msg.out.correlation_id,
            type=msg.out.type,
            reply_to=msg.out.reply_to,
            headers=with_death(msg.out, q.name, reason),
            persistent=msg.out.persistent,
        )
        for target in self._route(out.exchange, out.routing_key):
            target.ready.append(_Message(out))


def with_death(out: Outgoing, queue: str, reason: str) -> dict[str, Any]:
    """``out``'s headers once the broker dead-letters it from ``queue``, as RabbitMQ
    writes them: one ``x-death`` entry per queue and reason (newest first, counting
    how often), and the ``x-first-death-*`` headers of the first death."""
    headers = dict(out.headers)
    deaths = [dict(d) for d in headers.get("x-death") or []]
    now = datetime.now(UTC).replace(microsecond=0)  # an AMQP timestamp: whole seconds
    same = next((d for d in deaths if (d.get("queue"), d.get("reason")) == (queue, reason)),
                None)
    if same is None:
        entry = {"count": 1, "reason": reason, "queue": queue, "time": now,
                 "exchange": out.exchange, "routing-keys": [out.routing_key]}
    else:
        deaths.remove(same)
        entry = {**same, "count": same["count"] + 1, "time": now}
    headers["x-death"] = [entry, *deaths]
    headers.setdefault("x-first-death-exchange", out.exchange)
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-reason", reason)
    return headers


class _MemoryDelivery(Delivery):
    """A delivery whose settling runs on its consumer's thread (see ``submit``)."""

    def __init__(self, consumer: _MemoryConsumer, broker: MemoryBroker, queue: str,
                 msg: _Message) -> None:
        out = msg.out
        super().__init__(
            out.body,
            queue=queue,
            reply_to=out.reply_to,
            correlation_id=out.correlation_id,
            message_id=out.message_id,
            redelivered=msg.redelivered,
            # a quorum queue counts the earlier deliveries of a redelivered message
            headers=(dict(out.headers) if msg.deliveries <= 1
                     else {**out.headers, DELIVERY_COUNT: msg.deliveries - 1}),
            exchange=out.exchange,
            routing_key=out.routing_key,
        )
        self._consumer = consumer
        self._broker = broker
        self._msg = msg

    def _ack(self, reply: bytes | None) -> None:
        self._consumer.submit(lambda: self._do_ack(reply))

    def _requeue(self) -> None:
        self._consumer.submit(self._do_requeue)

    def _dead_letter(self, headers: dict[str, Any], reply: bytes | None) -> None:
        self._consumer.submit(lambda: self._do_dead_letter(headers, reply))

    # The work itself, on the consumer's thread; none once the consumer gave it back.
    def _do_ack(self, reply: bytes | None) -> None:
        if self._consumer.release(self):
            self._apply_ack(reply)

    def _do_requeue(self) -> None:
        if self._consumer.release(self):
            self.give_back()

    def _do_dead_letter(self, headers: dict[str, Any], reply: bytes | None) -> None:
        if not self._consumer.release(self):
            return
        dlx = self._broker.topology.dead_letter_exchange
        try:
            self._broker.publish(self._dead_copy(dlx, headers))
        except QueueFull:
            self.give_back()  # not dead-lettered: give it back rather than lose it
            return
        self._apply_ack(reply)

    def _apply_ack(self, reply: bytes | None) -> None:
        if reply is not None:
            with contextlib.suppress(QueueFull):  # RabbitMQ drops it too; the ack stands
                self._broker.publish(self.reply_outgoing(reply))
        self._broker.settle(self.queue, self._msg, requeue=False)

    def give_back(self) -> None:
        """Requeue the message (released by its consumer)."""
        self._broker.settle(self.queue, self._msg, requeue=True)

    def _dead_copy(self, dlx: str, headers: dict[str, Any]) -> Outgoing:
        return Outgoing(
            exchange=dlx,
            routing_key=self.routing_key,
            body=self.body,
            message_id=self.message_id,
            correlation_id=self.correlation_id,
            reply_to=self.reply_to,
            headers=headers,
        )


class _MemoryConsumer(ThreadService):
    """Hands out deliveries and settles them, both on its own thread.

    Settles from other threads go on ``_settles`` (guarded by ``_settles_lock``; the
    broker's :meth:`MemoryBroker.wake` rouses the thread) and run between deliveries.
    Once the thread has drained them and stopped accepting (on stop), a settle runs on
    the caller's thread, while stop waits for it (``drain_seconds``); what is still
    unsettled then goes back to the queue, and its late settle is ignored, as
    RabbitMQ redelivers what a closed channel held.
    """

    def __init__(
        self, broker: MemoryBroker, queue: str, on_delivery: OnDelivery, prefetch: int,
        name: str, on_subscribed: Callable[[], None] | None = None,
        drain_seconds: float = DRAIN_SECONDS,
    ) -> None:
        super().__init__(name)
        self._on_subscribed = on_subscribed
        self._broker = broker
        self._queue = queue
        self._on_delivery = on_delivery
        self._prefetch = prefetch
        self._settles_lock = threading.Lock()
        self._settles: deque[Callable[[], None]] = deque()
        self._accepting = False  # the thread will run what is put on _settles
        self._drain_seconds = drain_seconds
        self._held: set[_MemoryDelivery] = set()  # handed out, unsettled (_settles_lock)
        self._released = threading.Condition(self._settles_lock)

    def start(self, on_crash: ReportFailure | None = None) -> None:
        """Subscribe, then hand out deliveries on the consumer's thread."""
        if self._on_subscribed is not None:
            self._on_subscribed()
        with self._settles_lock:
            self._accepting = True
        super().start(on_crash)

    def interrupt(self) -> None:
        """Wake the thread waiting for a message, so it sees the stop."""
        self._broker.wake()
    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the thread, wait up to ``drain_seconds`` for the deliveries handed out
        to settle, then give the rest back to the queue."""
        stopped = super().stop(timeout)
        with self._settles_lock:
            self._released.wait_for(lambda: not self._held,
                                    min(timeout, self._drain_seconds))
            unsettled, self._held = self._held, set()
        for d in unsettled:
            d.give_back()
        return stopped

    def release(self, d: _MemoryDelivery) -> bool:
        """Take ``d`` off the unsettled ones; False if stop gave it back already."""
        with self._settles_lock:
            if d not in self._held:
                return False
            self._held.remove(d)
            self._released.notify_all()
            return True

    def facts(self) -> dict[str, Any]:
        """The consumer's queue and the settles waiting for its thread."""
        return {"queue": self._queue, "backlog": len(self._settles)}

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` (a settle) on this consumer's thread; at once if called there."""
        if self.on_thread():
            work()
            return
        with self._settles_lock:
            accepting = self._accepting
            if accepting:
                self._settles.append(work)
        if not accepting:
            work()  # stopped (or never started): settle here rather than lose it
            return
        # After the append: a thread that found no settle is waiting by the time the
        # broker's lock is ours, so this wakes it.
        self._broker.wake()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every settle submitted before this call has run; False on timeout.

        A fence for tests: what a settle did (acked, requeued, dead-lettered, replied)
        is visible once this returns True.
        """
        done = threading.Event()
        self.submit(done.set)
        return done.wait(timeout)

    def _drain(self) -> None:
        while self._settles:
            self._settles.popleft()()

    def _interrupted(self) -> bool:
        return self.stopping() or bool(self._settles)

    def run(self) -> None:
        """Settle, then take and hand out a message, until stopped."""
        b = self._broker
        try:
            while not self.stopping():
                self._drain()
                msg = b.take(self._queue, self._prefetch, interrupted=self._interrupted,
                             timeout=0.5)
                if msg is not None:
                    d = _MemoryDelivery(self, b, self._queue, msg)
                    with self._settles_lock:
                        self._held.add(d)
                    self._on_delivery(d)
        finally:
            while True:  # settle what was submitted, then let late settles run in place
                self._drain()
                with self._settles_lock:
                    if not self._settles:
                        self._accepting = False
                        break


class _MemoryPublisher(Publisher):
    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker

    def publish_confirmed(self, messages: Sequence[Outgoing], timeout: float = 30.0) -> None:
        """Publish each, like RabbitMQ's ``mandatory``: one that nothing takes fails.

        Raises:
            Unroutable: no queue is bound to take a message.
            QueueFull: a bounded target queue is full.
        """
        for m in messages:
            if not self._broker.publish(m):
                raise Unroutable(f"{m.exchange or '(default)'} -> {m.routing_key}")
