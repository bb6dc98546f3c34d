"""RabbitMQ through pika: topology, consumers on one thread, confirmed publishing.

pika connections are not thread-safe, so a broker's consumers share one connection
held by one thread (:class:`ConsumerHub`), a channel per queue; actors settle
deliveries from other threads through ``add_callback_threadsafe``, batched so one
wake-up sends many replies and acks. The
relay's publisher runs pika's asynchronous ``SelectConnection`` on its own thread so
publisher confirms are pipelined rather than awaited one by one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError
from pika.spec import Basic, BasicProperties

from broker.base import Broker, Delivery, OnDelivery, Outgoing, Publisher
from broker.topology import HASH_EXCHANGE_TYPE, HASH_PLUGIN, Topology, topology_of
from config import Settings, redact_url, split_urls
from supervisor import ThreadService

log = logging.getLogger(__name__)


class BrokerSetupError(Exception):
    """The broker cannot hold Staybook's topology (one line saying what to do)."""


class HashExchangeMissing(BrokerSetupError):
    """The broker lacks the consistent-hash exchange plugin (which a local node's own
    ``rabbitmq-plugins`` may still enable: console.rabbittools)."""


def _missing_hash_exchange(text: str) -> bool:
    return HASH_EXCHANGE_TYPE in text or "invalid exchange type" in text


def broker_urls(url: str) -> list[str]:
    """The broker URLs in ``url``: one AMQP URL, or a cluster's, separated by commas.

    Raises:
        ValueError: when there is none.
    """
    urls = split_urls(url)
    if not urls:
        raise ValueError("no RabbitMQ URL given; set STAYBOOK_BROKER__URL")
    return urls


def connection_parameters(url: str, *, heartbeat: int = 30) -> list[pika.URLParameters]:
    """Parameters for each broker in ``url``, with Staybook's heartbeat and timeouts.

    With a cluster's URLs the list starts at a random one and wraps around: pika's
    ``BlockingConnection`` tries them in order, so clients spread over the nodes, and
    one that reconnects after its node went away does not always try that node first.
    """
    urls = broker_urls(url)
    start = random.randrange(len(urls))
    out = []
    for u in urls[start:] + urls[:start]:
        params = pika.URLParameters(u)
        params.heartbeat = heartbeat
        params.blocked_connection_timeout = 60
        params.connection_attempts = 1
        params.socket_timeout = 5
        out.append(params)
    return out


def connection_problem(exc: BaseException) -> str:
    """Why a connection to RabbitMQ failed, in a few words a user can act on."""
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        return "login refused: check the user and password"
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return "access refused: check the vhost and the user's permissions"
    text = repr(exc)
    for needle, why in (("Refused", "connection refused"), ("timed out", "timed out"),
                        ("Timeout", "timed out"), ("gaierror", "unknown host"),
                        ("Name or service not known", "unknown host"),
                        ("Unreachable", "network unreachable")):
        if needle in text:
            return why
    return type(exc).__name__


def properties_of(out: Outgoing) -> BasicProperties:
    """AMQP properties for an outgoing message."""
    return BasicProperties(
        content_type="application/json",
        delivery_mode=2 if out.persistent else 1,
        message_id=out.message_id,
        correlation_id=out.correlation_id,
        type=out.type,
        reply_to=out.reply_to,
        headers=out.headers or None,
    )


class RabbitBroker(Broker):
    """Staybook's topology on a real RabbitMQ.

    Args:
        url: the AMQP URL.
        topology: names and bounds.
        heartbeat: seconds between heartbeats.
        reconnect_max_delay: the cap on the consumers' reconnect backoff.
        drain_seconds: how long a stopping consumer waits for its deliveries to settle.
    """

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        heartbeat: int,
        reconnect_max_delay: float,
        drain_seconds: float,
    ) -> None:
        super().__init__(topology)
        self.url = url
        self.drain_seconds = drain_seconds
        self.heartbeat = heartbeat
        self.reconnect_max_delay = reconnect_max_delay
        self._hub_lock = threading.Lock()
        self._hub: ConsumerHub | None = None

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> RabbitBroker:
        """The broker ``settings`` describe (at ``url`` instead of theirs, when given)."""
        return cls(url or settings.broker.url, topology_of(settings),
                   heartbeat=settings.broker.heartbeat,
                   reconnect_max_delay=settings.broker.reconnect_max_delay,
                   drain_seconds=settings.cluster.drain_seconds)

    def params(self) -> list[pika.URLParameters]:
        """Fresh connection parameters, one per broker of the cluster (random start)."""
        return connection_parameters(self.url, heartbeat=self.heartbeat)

    def declare(self) -> None:
        """Declare every exchange, queue and binding (durable; idempotent)."""
        conn = pika.BlockingConnection(self.params())
        try:
            ch = conn.channel()
            for ex in self.topology.exchanges():
                ch.exchange_declare(ex.name, exchange_type=ex.type, durable=True,
                                    arguments=ex.arguments or None)
            for q in self.topology.queues():
                ch.queue_declare(q.name, durable=True, arguments=q.arguments)
            for b in self.topology.bindings():
                ch.queue_bind(b.queue, b.exchange, routing_key=b.routing_key)
            for e in self.topology.exchange_bindings():
                ch.exchange_bind(e.destination, e.source, routing_key=e.routing_key)
        except (pika.exceptions.ChannelClosedByBroker,
                pika.exceptions.ConnectionClosedByBroker) as exc:
            # An unknown exchange type is a 503 COMMAND_INVALID, which RabbitMQ answers
            # by closing the whole connection, not the channel.
            if _missing_hash_exchange(str(exc)):
                raise HashExchangeMissing(
                    f"RabbitMQ has no consistent-hash exchange: enable it with "
                    f"'rabbitmq-plugins enable {HASH_PLUGIN}'") from exc
            raise BrokerSetupError(f"RabbitMQ refused the topology: {exc.reply_text}") from exc
        finally:
            if conn.is_open:
                conn.close()

    def consumer(
        self, queue: str, on_delivery: OnDelivery, *, prefetch: int, name: str,
        drain_seconds: float | None = None,
        on_subscribed: Callable[[], None] | None = None,
    ) -> RabbitConsumer:
        """A consumer service for ``queue``, on this broker's one :class:`ConsumerHub`."""
        with self._hub_lock:
            if self._hub is None:
                self._hub = ConsumerHub(self)
            hub = self._hub
        return hub.subscribe(queue, on_delivery, prefetch=prefetch, name=name,
                             drain_seconds=self.drain_seconds if drain_seconds is None
                             else drain_seconds, on_subscribed=on_subscribed)

    @property
    def reconnects(self) -> int:
        """How often the consumers' connection was lost and opened again."""
        hub = self._hub
        return 0 if hub is None else hub.reconnects

    def close(self) -> None:
        """Stop the consumers' hub (its consumers were stopped, and drained, before)."""
        with self._hub_lock:
            hub, self._hub = self._hub, None
        if hub is not None:
            hub.stop()

    def publisher(self) -> Publisher:
        """An asynchronous-confirm publisher (connects on first use)."""
        return AsyncConfirmPublisher(self.params())


class ReconnectingService(ThreadService):
    """A supervised thread that holds one broker connection and reconnects on its own.

    :meth:`session` opens a connection and works until stopped or until the
    connection fails; a failure (``AMQPError``/``OSError``) is retried after a backoff
    that starts at 0.1 s, doubles to ``max_delay``, and starts over once a session had
    connected (``connected`` set). Broker flaps thus never reach the supervisor; any
    other error is a crash of the thread, which the supervisor sees.

    Args:
        name: the child id and thread name.
        max_delay: the cap on the reconnect backoff.
    """

    def __init__(self, name: str, max_delay: float) -> None:
        super().__init__(name)
        self._max_delay = max_delay
        self.connected = threading.Event()
        self.reconnects = 0

    @property
    def max_delay(self) -> float:
        """The cap on the reconnect backoff, in seconds."""
        return self._max_delay

    def session(self) -> None:
        """Hook: connect and work until :meth:`stopping` (raise when the link fails)."""
        raise NotImplementedError

    def facts(self) -> dict[str, Any]:
        """Whether a session is connected, and how often the connection was lost."""
        return {"connected": self.connected.is_set(), "reconnects": self.reconnects}

    def run(self) -> None:
        """Run sessions until stopped, reconnecting with backoff when the link fails."""
        delay = 0.1
        try:
            while not self.stopping():
                try:
                    self.session()
                    delay = 0.1
                except (AMQPError, OSError) as exc:
                    if self.connected.is_set():
                        delay = 0.1  # it was up: start the backoff over, not where it left off
                    self.connected.clear()
                    self.reconnects += 1
                    log.warning("%s: connection lost (%r); reconnecting in %.1fs",
                                self.name, exc, delay)
                    self.pause(delay)
                    delay = min(delay * 2, self._max_delay)
        finally:
            self.connected.clear()  # a crashed session is not connected either


class ConsumerHub(ReconnectingService):
    """One connection and one thread that consume any number of queues, a channel each.

    Every queue a node consumes (its command partitions, the handlers' queues, the
    dead letters) is a :class:`RabbitConsumer` on the broker's one hub. A thread per
    queue would cost a wake-up per delivery and per settle on each of them; here one
    ``process_data_events`` round reads the frames of every queue, and one wake-up
    sends a burst of replies and acks, whichever queues they are for.

    A channel per queue keeps what a queue needs of its own: its prefetch, its
    consumer (single-active-consumer ownership is per consumer), and a cancel that
    drains that queue alone. A channel the broker closes is opened again after a
    backoff, without touching the others; a lost connection ends the session, and the
    next one re-subscribes every queue still wanted.

    Args:
        broker: the broker (its connection parameters and topology).
        name: the thread name.
    """

    def __init__(self, broker: RabbitBroker, name: str = "consumers") -> None:
        super().__init__(name, broker.reconnect_max_delay)
        self._broker = broker
        self._lock = threading.Lock()
        self._subs: list[RabbitConsumer] = []
        self._conn: pika.BlockingConnection | None = None
        self._dl_channel: BlockingChannel | None = None
        self._pending: deque[Callable[[], None]] = deque()
        self._wake_scheduled = False
        self._acking: set[RabbitConsumer] = set()  # acks to flush at the round's end

    # --- from any thread -------------------------------------------------------------
    def subscribe(self, queue: str, on_delivery: OnDelivery, *, prefetch: int, name: str,
                  drain_seconds: float, on_subscribed: Callable[[], None] | None = None
                  ) -> RabbitConsumer:
        """A consumer of ``queue`` on this hub (consuming once started)."""
        return RabbitConsumer(self, queue, on_delivery, prefetch=prefetch, name=name,
                              drain_seconds=drain_seconds, on_subscribed=on_subscribed)

    def ensure_started(self) -> None:
        """Start the thread unless it runs (a subscription's start restarts a dead hub)."""
        with self._lock:
            if not self.is_alive():
                self.start()

    @property
    def has_connection(self) -> bool:
        """True while a session holds a connection (so its channels may hold deliveries)."""
        return self._conn is not None

    @property
    def dead_letter_exchange(self) -> str:
        """The topology's dead-letter exchange (see :meth:`publish_confirmed`)."""
        return self._broker.topology.dead_letter_exchange

    def attach(self, sub: RabbitConsumer) -> None:
        """Consume for ``sub`` from the next round on (a wanted subscription is resumed)."""
        with self._lock:
            if sub not in self._subs:
                self._subs.append(sub)
        self.wake()

    def _detach(self, sub: RabbitConsumer) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def wake(self) -> None:
        """Have the thread run a round now (it reconciles every subscription)."""
        self.submit(lambda: None)

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` on the hub's thread, soon (now, if this is that thread)."""
        if self.on_thread():
            work()
            return
        conn = self._conn
        if conn is None:
            return  # no connection: settlements are moot, the broker redelivers
        # Lock-free: deque appends are atomic; one wake-up serves a whole burst.
        self._pending.append(work)
        if self._wake_scheduled:
            return
        self._wake_scheduled = True
        try:
            conn.add_callback_threadsafe(self._drain)
        except (AMQPError, OSError, RuntimeError):
            log.debug("%s: connection closed before the wake-up", self.name)

    # --- on the hub's thread ---------------------------------------------------------
    def session(self) -> None:
        """One connection's life: consume every wanted queue until stopped or the link fails."""
        conn = pika.BlockingConnection(self._broker.params())
        try:
            dl = conn.channel()
            dl.confirm_delivery()
            with self._lock:
                self._conn, self._dl_channel = conn, dl
                self._pending.clear()
                self._acking.clear()
                self._wake_scheduled = False
            self.connected.set()
            while not self.stopping():
                draining = self._reconcile(conn)
                conn.process_data_events(time_limit=0.02 if draining else 0.2)
                self._drain()
            with contextlib.suppress(AMQPError, OSError):
                self._drain_all(conn)
        finally:
            with self._lock:
                self._conn, self._dl_channel = None, None
                subs = list(self._subs)
            for sub in subs:
                sub.lost()
            if conn.is_open:
                with contextlib.suppress(AMQPError, OSError):
                    conn.close()

    def _reconcile(self, conn: pika.BlockingConnection) -> bool:
        """Open the channels wanted, drain and close the rest; True while one drains."""
        now = time.monotonic()
        draining = False
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            if sub.wanted:
                sub.resume(conn, now)
            elif sub.wind_down(now):
                self._detach(sub)
            else:
                draining = True
        return draining

    def _drain_all(self, conn: pika.BlockingConnection) -> None:
        """Stopping: hand out what arrived, cancel every consumer, let them settle."""
        conn.process_data_events(time_limit=0)
        self._drain()
        with self._lock:
            subs = list(self._subs)
        now = time.monotonic()
        for sub in subs:
            sub.cancel(now)
        deadline = now + max((s.drain_seconds for s in subs), default=0.0)
        while any(s.unacked for s in subs) and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.02)
            self._drain()
        for sub in subs:
            if sub.unacked:
                log.warning("%s: %d deliveries unsettled at stop; the broker redelivers "
                            "them", sub.name, sub.unacked)

    def _drain(self) -> None:
        # Clear the flag first: anything appended after this point schedules a new
        # wake-up, anything before it is drained below.
        self._wake_scheduled = False
        pending = self._pending
        while pending:
            work = pending.popleft()
            try:
                work()
            except pika.exceptions.AMQPChannelError as exc:
                # That queue's channel is gone (the broker closed it): its deliveries
                # come again on the next one. The connection and the others are fine.
                log.debug("%s: settling on a closed channel (%r)", self.name, exc)
        acking = self._acking
        while acking:
            try:
                acking.pop().flush_acks()
            except pika.exceptions.AMQPChannelError as exc:
                log.debug("%s: acking on a closed channel (%r)", self.name, exc)

    def acked(self, sub: RabbitConsumer) -> None:
        """``sub`` marked an ack: flush it at the end of this round (hub's thread only)."""
        self._acking.add(sub)

    def publish_confirmed(self, out: Outgoing) -> None:
        """Publish ``out`` (mandatory) and wait for its confirm; on the hub's thread only.

        Raises:
            AMQPError: when the broker nacks or returns it, or the link fails.
        """
        if self._dl_channel is None or self._dl_channel.is_closed:
            assert self._conn is not None
            self._dl_channel = self._conn.channel()
            self._dl_channel.confirm_delivery()
        self._dl_channel.basic_publish(
            out.exchange, out.routing_key, out.body, properties_of(out), mandatory=True
        )


class RabbitConsumer:
    """One queue consumed on a :class:`ConsumerHub`; a supervised service.

    Deliveries are settled from any thread: the work goes to the hub's thread, which
    holds the channel. Settlements for a channel that has since closed are dropped: the
    broker redelivers those messages, and the inbox makes the redelivery harmless.

    Stopping is a handoff: the consumer is cancelled (no new deliveries), then its
    channel stays open until every delivery already handed out is settled, up to
    ``drain_seconds``, so a graceful stop or a partition handed to another node
    requeues nothing that was being handled.
    """

    def __init__(self, hub: ConsumerHub, queue: str, on_delivery: OnDelivery, *,
                 prefetch: int, name: str, drain_seconds: float,
                 on_subscribed: Callable[[], None] | None = None) -> None:
        self.name = name
        self._on_subscribed = on_subscribed
        self.queue = queue
        self._hub = hub
        self._on_delivery = on_delivery
        self._prefetch = prefetch
        self._drain_seconds = drain_seconds
        self._wanted = False
        self._done = threading.Event()
        self._done.set()
        self._channel: BlockingChannel | None = None
        self._cancelled = False
        self._deadline = 0.0
        self._retry_at = 0.0
        self._backoff = 0.1
        self._outstanding = 0  # delivered and not yet settled (hub's thread)
        # The channel's unsettled delivery tags in delivery order, and those acked
        # since the last flush (hub's thread): see flush_acks.
        self._tags: OrderedDict[int, None] = OrderedDict()
        self._to_ack: set[int] = set()
        self.delivered = 0
        self.acked = 0  # taken off the queue for good (handled or dead-lettered)

    @property
    def unacked(self) -> int:
        """Deliveries handed out and not yet settled on the wire (hub and operator read it)."""
        return self._outstanding

    @property
    def wanted(self) -> bool:
        """Started and not stopped: the hub should consume this queue."""
        return self._wanted

    @property
    def drain_seconds(self) -> float:
        """How long a stop waits for the deliveries handed out to settle."""
        return self._drain_seconds

    @property
    def draining(self) -> bool:
        """Cancelled and waiting for its handed-out deliveries to settle."""
        return self._cancelled and self._channel is not None

    @property
    def reconnects(self) -> int:
        """How often the hub's connection was lost and opened again."""
        return self._hub.reconnects

    @property
    def consuming(self) -> bool:
        """Wanted and subscribed on an open channel: deliveries can reach it (ready)."""
        ch = self._channel
        return self._wanted and not self._cancelled and ch is not None and ch.is_open

    def start(self) -> None:
        """Consume from now on (the hub opens the channel at its next round)."""
        self._done.clear()
        self._wanted = True
        self._hub.ensure_started()
        self._hub.attach(self)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel, then wait up to ``timeout`` for the deliveries handed out to settle."""
        self._wanted = False  # first: a session that connects after the check sees it
        if not self._hub.is_alive() or not self._hub.has_connection:
            # No connection, so no channel: nothing of this queue is held here.
            self._done.set()
            return
        self._hub.wake()
        self._done.wait(timeout)

    def is_alive(self) -> bool:
        """True while wanted and the hub's thread runs (connected or reconnecting)."""
        return self._wanted and self._hub.is_alive()

    # --- on the hub's thread ---------------------------------------------------------
    def resume(self, conn: pika.BlockingConnection, now: float) -> None:
        """Consume on ``conn``: open the channel (after the backoff), or consume again
        on the one still draining; on the hub's thread only."""
        ch = self._channel
        if ch is not None and ch.is_open:
            if self._cancelled:  # wanted again while it drained: consume again
                ch.basic_consume(self.queue, on_message_callback=self._on_message)
                self._cancelled = False
            return
        if ch is not None:  # the broker closed it (or cancelled the consumer)
            log.warning("%s: channel closed by the broker; consuming again in %.1fs",
                        self.name, self._backoff)
            self.lost()
            self._retry_later(now)
            return
        if now < self._retry_at:
            return
        if self._on_subscribed is not None:
            try:
                self._on_subscribed()
            except Exception:
                log.exception("%s: on_subscribed failed", self.name)
        ch = conn.channel()
        try:
            ch.basic_qos(prefetch_count=self._prefetch)
            ch.add_on_cancel_callback(lambda _frame: self._on_cancelled(ch))
            ch.basic_consume(self.queue, on_message_callback=self._on_message)
        except pika.exceptions.ChannelClosedByBroker as exc:
            log.warning("%s: cannot consume %s (%s); trying again in %.1fs",
                        self.name, self.queue, exc.reply_text, self._backoff)
            self._retry_later(now)
            return
        self._channel, self._cancelled, self._outstanding = ch, False, 0

    def _retry_later(self, now: float) -> None:
        """Open the channel again after the backoff, which doubles up to the hub's cap."""
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self._hub.max_delay)

    def _on_cancelled(self, ch: BlockingChannel) -> None:
        # The broker cancelled us (queue deleted, leader gone): close the channel so
        # the next round consumes again, after the backoff.
        own = self._channel
        if self._wanted and own is not None and own is ch and own.is_open:
            with contextlib.suppress(AMQPError, OSError):
                self.flush_acks()
                own.close()

    def cancel(self, now: float) -> None:
        """Stop consuming; what was handed out may settle until ``drain_seconds`` after
        ``now``. On the hub's thread only."""
        ch = self._channel
        if ch is None or self._cancelled:
            return
        self._cancelled = True
        self._deadline = now + self._drain_seconds
        with contextlib.suppress(AMQPError, OSError):
            ch.stop_consuming()  # no more deliveries; those not handed out go back

    def wind_down(self, now: float) -> bool:
        """Drain towards closing; True once the channel is closed and stop may return.

        On the hub's thread only.
        """
        ch = self._channel
        if ch is not None and ch.is_open:
            self.cancel(now)
            if self._outstanding and now < self._deadline:
                return False
            if self._outstanding:
                log.warning("%s: %d deliveries unsettled after %.0fs; the broker "
                            "redelivers them", self.name, self._outstanding,
                            self._drain_seconds)
            with contextlib.suppress(AMQPError, OSError):
                self.flush_acks()
                ch.close()
        self.lost()  # not wanted, so this also lets stop return
        return True

    def lost(self) -> None:
        """The channel is gone: what it handed out is the broker's to redeliver.

        On the hub's thread only.
        """
        self._channel = None
        self._outstanding = 0
        self._tags.clear()
        self._to_ack.clear()
        self._cancelled = False
        if not self._wanted:
            self._done.set()

    def _on_message(
        self,
        channel: BlockingChannel,
        method: Basic.Deliver,
        props: BasicProperties,
        body: bytes,
    ) -> None:
        delivery = RabbitDelivery(self, self._hub, channel, method, props, body)
        self._tags[method.delivery_tag] = None
        self._outstanding += 1
        self.delivered += 1
        self._backoff = 0.1
        try:
            self._on_delivery(delivery)
        except Exception:
            log.exception("%s: handler raised; requeueing the delivery", self.name)
            delivery.requeue()

    def settle(self, channel: BlockingChannel, work: Callable[[], None]) -> None:
        """Run ``work`` on the hub's thread if ``channel`` is still this consumer's.

        From any thread: how a :class:`RabbitDelivery` reaches :meth:`publish`,
        :meth:`ack` and :meth:`nack`, which run in ``work``.
        """
        def guarded() -> None:
            if channel is self._channel:
                work()
        self._hub.submit(guarded)

    # Called on the hub's thread only, through settle.
    def publish(self, out: Outgoing) -> None:
        """Publish ``out`` on this consumer's channel (a reply); unconfirmed."""
        assert self._channel is not None
        self._channel.basic_publish(
            out.exchange, out.routing_key, out.body, properties_of(out)
        )

    def ack(self, tag: int) -> None:
        """Ack the delivery ``tag`` at the end of this round (see :meth:`flush_acks`)."""
        assert self._channel is not None
        self._outstanding -= 1
        self.acked += 1
        self._to_ack.add(tag)
        self._hub.acked(self)

    def nack(self, tag: int) -> None:
        """Give the delivery ``tag`` back to the queue, now."""
        assert self._channel is not None
        self._outstanding -= 1
        self._tags.pop(tag, None)
        self._channel.basic_nack(tag, requeue=True)

    def flush_acks(self) -> None:
        """Send the acks of this round: one ``multiple`` ack for the oldest run of them.

        A ``multiple`` ack settles every unsettled delivery up to its tag, so it covers
        only the run of acked tags that starts at the oldest unsettled one; an acked
        delivery behind one still being handled is acked on its own. Either way every
        ack goes out in the round it was made in, after the replies of that round:
        nothing is held back, so the prefetch window refills as before.
        On the hub's thread only.
        """
        to_ack = self._to_ack
        if not to_ack or self._channel is None:
            return
        tags = self._tags
        last = None
        while tags:
            oldest = next(iter(tags))
            if oldest not in to_ack:
                break
            tags.popitem(last=False)
            to_ack.discard(oldest)
            last = oldest
        if last is not None:
            self._channel.basic_ack(last, multiple=True)
        for tag in sorted(to_ack):
            tags.pop(tag, None)
            self._channel.basic_ack(tag)
        to_ack.clear()


class RabbitDelivery(Delivery):
    """A delivery from :class:`RabbitConsumer`; settled on its hub's thread."""

    def __init__(
        self,
        consumer: RabbitConsumer,
        hub: ConsumerHub,
        channel: BlockingChannel,
        method: Basic.Deliver,
        props: BasicProperties,
        body: bytes,
    ) -> None:
        super().__init__(
            body,
            queue=consumer.queue,
            reply_to=props.reply_to,
            correlation_id=props.correlation_id,
            message_id=props.message_id,
            redelivered=bool(method.redelivered),
            headers=dict(props.headers or {}),
            exchange=method.exchange,
            routing_key=method.routing_key,
        )
        self._consumer = consumer
        self._hub = hub
        self._channel = channel
        self._tag = method.delivery_tag

    def _ack(self, reply: bytes | None) -> None:
        c = self._consumer

        def work() -> None:
            if reply is not None:
                try:
                    c.publish(self.reply_outgoing(reply))
                except (AMQPError, OSError):
                    log.warning("could not send a reply to %s", self.reply_to)
            c.ack(self._tag)

        c.settle(self._channel, work)

    def _requeue(self) -> None:
        c = self._consumer
        c.settle(self._channel, lambda: c.nack(self._tag))

    def _dead_letter(self, headers: dict[str, Any], reply: bytes | None) -> None:
        c, hub = self._consumer, self._hub

        def work() -> None:
            out = Outgoing(
                exchange=hub.dead_letter_exchange,
                routing_key=self.routing_key,
                body=self.body,
                message_id=self.message_id,
                correlation_id=self.correlation_id,
                reply_to=self.reply_to,
                headers=headers,
            )
            try:
                hub.publish_confirmed(out)
            except (AMQPError, OSError) as exc:
                # Not dead-lettered: give it back rather than lose it.
                log.error("dead-lettering failed (%r); requeueing", exc)
                c.nack(self._tag)
                return
            if reply is not None:
                with contextlib.suppress(AMQPError, OSError):
                    c.publish(self.reply_outgoing(reply))
            c.ack(self._tag)

        c.settle(self._channel, work)


class PublishFailed(Exception):
    """The broker nacked, returned or never confirmed a message."""


class _Batch:
    def __init__(self, size: int) -> None:
        self.outstanding = size
        self.error: str | None = None
        self.done = threading.Event()
        if size == 0:
            self.done.set()

    def settle(self, error: str | None) -> None:
        if error and not self.error:
            self.error = error
        self.outstanding -= 1
        if self.outstanding <= 0:
            self.done.set()

    def fail(self, error: str) -> None:
        self.error = self.error or error
        self.done.set()


class AsyncConfirmPublisher(ThreadService, Publisher):
    """Publishes with pipelined publisher confirms on a ``SelectConnection`` thread.

    ``publish_confirmed`` hands a batch to the I/O loop and waits until the broker
    has acked every message of it (one ``multiple`` ack often covers many). Messages
    are published ``mandatory``: an unroutable one fails its batch. The I/O loop is
    the service's thread, started here; :meth:`close` stops it.

    Args:
        params: connection parameters, or one per broker of a cluster: tried in
            order until one opens (as pika's ``BlockingConnection`` takes them).
    """

    def __init__(self, params: pika.connection.Parameters
                 | Sequence[pika.connection.Parameters]) -> None:
        super().__init__("relay-publisher")
        self._params = ([params] if isinstance(params, pika.connection.Parameters)
                        else list(params))
        self._opened = False
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._error: str | None = None
        self._conn: pika.SelectConnection | None = None
        self._channel: Any = None
        self._seq = 0
        self._pending: dict[int, tuple[_Batch, str | None]] = {}  # seq -> batch, id
        self._returned_ids: dict[str, str] = {}  # message id -> why it was returned
        self.start()
        if not self._ready.wait(15) or self._error:
            self.close()
            raise PublishFailed(f"could not open the publisher: {self._error or 'timeout'}")

    def run(self) -> None:
        """The I/O loop: open a connection (trying each broker in turn) and serve it."""
        try:
            # A broker that refuses is left for the next; one that opened and then
            # closed ends this publisher (its owner makes a new one, from the start).
            for params in self._params:
                self._error = None
                self._conn = pika.SelectConnection(
                    params,
                    on_open_callback=self._on_open,
                    on_open_error_callback=self._on_open_error,
                    on_close_callback=self._on_close,
                )
                self._conn.ioloop.start()
                if self._opened:
                    break
        except Exception as exc:  # noqa: BLE001 - reported through _error
            self._error = repr(exc)
        finally:
            self._fail_all("connection closed")
            self._closed.set()
            self._ready.set()

    def _on_open(self, conn: pika.SelectConnection) -> None:
        self._opened = True
        conn.channel(on_open_callback=self._on_channel)

    def _on_open_error(self, conn: pika.SelectConnection, exc: BaseException) -> None:
        self._error = repr(exc)
        conn.ioloop.stop()

    def _on_close(self, conn: pika.SelectConnection, exc: BaseException) -> None:
        self._error = self._error or repr(exc)
        self._fail_all(f"connection closed: {exc!r}")
        conn.ioloop.stop()

    def _on_channel(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_close)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=lambda _f: self._ready.set())

    def _on_channel_close(self, channel: Any, exc: BaseException) -> None:
        self._error = repr(exc)
        self._fail_all(f"channel closed: {exc!r}")
        if self._conn is not None and self._conn.is_open:
            self._conn.close()

    def _on_return(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        # A return precedes the ack of the same message, but acks of other messages
        # (other queues confirm at their own pace) may come in between: remember the
        # return by message id, so it fails the batch of the message that bounced.
        reason = f"unroutable: {method.reply_text} ({method.exchange})"
        mid = getattr(props, "message_id", None)
        if mid:
            self._returned_ids[mid] = reason
        else:
            self._returned = reason

    _returned: str | None = None

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nack = isinstance(method, pika.spec.Basic.Nack)
        tag = method.delivery_tag
        # Sequence numbers are inserted in increasing order: a ``multiple`` ack covers a
        # prefix of the pending ones, so stop at the first beyond it (no full scan).
        tags = list(itertools.takewhile(lambda t: t <= tag, self._pending)) \
            if method.multiple else [tag]
        anonymous = self._returned
        self._returned = None
        for t in tags:
            entry = self._pending.pop(t, None)
            if entry is None:
                continue
            batch, mid = entry
            returned = self._returned_ids.pop(mid, None) if mid else None
            batch.settle("nacked by the broker" if nack else returned or anonymous)

    def _fail_all(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        self._returned_ids.clear()
        for batch in {b for b, _mid in pending.values()}:
            batch.fail(reason)

    def _publish_batch(self, batch: _Batch, messages: Sequence[Outgoing]) -> None:
        if self._channel is None or not self._channel.is_open:
            batch.fail("channel not open")
            return
        for out in messages:
            self._seq += 1
            self._pending[self._seq] = (batch, out.message_id)
            self._channel.basic_publish(
                out.exchange, out.routing_key, out.body, properties_of(out), mandatory=True
            )

    def publish_confirmed(self, messages: Sequence[Outgoing], timeout: float = 30.0) -> None:
        """Publish ``messages`` and wait for all their confirms.

        Raises:
            PublishFailed: on a nack, a return, a closed connection or a timeout.
        """
        if self._closed.is_set() or self._conn is None:
            raise PublishFailed(f"publisher closed: {self._error}")
        batch = _Batch(len(messages))
        try:
            self._conn.ioloop.add_callback_threadsafe(
                lambda: self._publish_batch(batch, messages)
            )
        except Exception as exc:
            raise PublishFailed(repr(exc)) from exc
        # Wait in slices: if the I/O loop stopped before it ran the callback above (a
        # broker shutdown), nobody will ever settle this batch, and one long wait
        # would hold the relay for the whole timeout. A closed publisher fails the
        # wait at once.
        deadline = time.monotonic() + timeout
        while not batch.done.wait(0.05):
            if self._closed.is_set():
                raise PublishFailed(f"publisher closed: {self._error}")
            if time.monotonic() > deadline:
                raise PublishFailed("timed out waiting for confirms")
        if batch.error:
            raise PublishFailed(batch.error)

    @property
    def alive(self) -> bool:
        """False once the connection has closed."""
        return not self._closed.is_set()

    def interrupt(self) -> None:
        """Have the I/O loop close the connection (or stop, if none is open)."""
        conn = self._conn
        if conn is not None and not self._closed.is_set():
            with contextlib.suppress(Exception):
                conn.ioloop.add_callback_threadsafe(
                    lambda: conn.close() if conn.is_open else conn.ioloop.stop()
                )

    def close(self) -> None:
        """Close the connection and stop the I/O loop (waiting 5 s at most)."""
        self.stop(5)


class LoginRefused(Exception):
    """RabbitMQ answered and refused the login (or the vhost): waiting changes nothing.

    Attributes:
        access: True when the login was fine but the vhost was refused to that user.
    """

    def __init__(self, message: str, *, access: bool = False) -> None:
        super().__init__(message)
        self.access = access


def wait_for_broker(url: str, timeout: float = 60.0) -> None:
    """Block until a connection to ``url`` opens.

    Raises:
        TimeoutError: when none opened in time.
        LoginRefused: at once, when the broker refused the user, password or vhost.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            pika.BlockingConnection(connection_parameters(url)).close()
            return
        except pika.exceptions.ProbableAuthenticationError as exc:
            raise LoginRefused(connection_problem(exc)) from exc
        except pika.exceptions.ProbableAccessDeniedError as exc:
            raise LoginRefused(connection_problem(exc), access=True) from exc
        except (AMQPError, OSError) as exc:
            last = exc
            time.sleep(0.5)
    raise TimeoutError(f"RabbitMQ at {redact_url(url)} did not answer in {timeout}s: "
                       f"{connection_problem(last) if last else 'no attempt'}")


def all_consumed(url: str, queues: Sequence[str]) -> bool:
    """True when every queue exists and has at least one consumer (passive declares)."""
    try:
        conn = pika.BlockingConnection(connection_parameters(url))
    except (AMQPError, OSError):
        return False
    try:
        for name in queues:
            ch = conn.channel()  # a passive declare of a missing queue closes the channel
            ok = ch.queue_declare(name, passive=True)
            ch.close()
            if ok.method.consumer_count < 1:
                return False
        return True
    except AMQPError:
        return False
    finally:
        with contextlib.suppress(AMQPError, OSError):
            conn.close()
