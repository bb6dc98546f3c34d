"""A producer's client for RabbitMQ: publish with confirms, wait for the reply.

It is what ``staybook send``, ``search`` and ``demo`` use, and what a producer in
Python can use as it is. Replies come through RabbitMQ's direct reply-to
(``amq.rabbitmq.reply-to``), so the client declares nothing.

The safe way to send a command is :meth:`Client.request`: it publishes with
publisher confirms, waits for the reply, and on a timeout, a nack, or a dead
connection it reconnects and publishes again *with the same message_id*, a bounded
number of times. A node that already handled that id answers from its inbox and
changes nothing, so a retry can duplicate a reply but never an effect.

One client is one connection: use it from one thread only (pika is not thread-safe).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import pika
from pika.exceptions import AMQPError, ChannelClosedByBroker, NackError, UnroutableError

from broker.base import Outgoing
from broker.rabbitmq import connection_parameters, properties_of
from broker.topology import Topology
from config.lru import BoundedLRU
from messages import Envelope, Kind

log = logging.getLogger(__name__)

REPLY_TO = "amq.rabbitmq.reply-to"
NOT_FOUND = 404


class NoReply(TimeoutError):
    """No reply arrived in time (the command may still take effect: re-send it)."""


class NotConfirmed(Exception):
    """The broker never confirmed the message (nacked, unroutable, or no connection).

    The command may or may not have been enqueued; re-sending it with the same
    ``message_id`` is safe.
    """


class Client:
    """Sends commands and queries and returns their replies.

    Args:
        url: the AMQP URL.
        topology: exchange names.
        reply_cache: most unclaimed replies kept (late duplicates of answered
            requests are dropped oldest first, so a long-lived client stays bounded).
    """

    def __init__(self, url: str, topology: Topology | None = None, *,
                 reply_cache: int = 10_000) -> None:
        self.topology = topology or Topology()
        self._url = url
        self._replies: BoundedLRU[str, bytes] = BoundedLRU(reply_cache)
        # Any, not Optional: console/demo.py reaches into ``_conn`` (see :meth:`pump`).
        self._conn: Any = None
        self._ch: Any = None
        self.reconnects = 0
        self._connect()

    # --- connection ---------------------------------------------------------------
    def _connect(self) -> None:
        conn = pika.BlockingConnection(connection_parameters(self._url))
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)
        except BaseException:
            with contextlib.suppress(AMQPError, OSError):
                conn.close()
            raise
        self._conn, self._ch = conn, ch

    def _reconnect(self) -> None:
        """Drop the connection (whatever state it is in) and open a new one."""
        self.close()
        self.reconnects += 1
        self._connect()

    @property
    def connected(self) -> bool:
        """True while the connection and channel are open."""
        return (self._conn is not None and self._conn.is_open
                and self._ch is not None and self._ch.is_open)

    def pump(self, time_limit: float = 0.0) -> None:
        """Let the connection do its I/O (heartbeats, replies) for up to ``time_limit``."""
        if self._conn is not None and self._conn.is_open:
            self._conn.process_data_events(time_limit=time_limit)

    def _on_reply(self, _ch: Any, _method: Any, props: pika.BasicProperties,
                  body: bytes) -> None:
        if props.correlation_id:
            self._replies.put(props.correlation_id, body)

    def consumers(self, queues: Sequence[str]) -> int:
        """How many consumers ``queues`` have together (a queue not declared has none).

        Passive declares change nothing: a tool asks before it publishes what no node
        would read, rather than wait out every reply's timeout to learn it.

        Raises:
            pika.exceptions.AMQPError: if the connection failed.
        """
        if not self.connected:
            self._reconnect()
        total = 0
        ch = self._conn.channel()
        try:
            for name in queues:
                try:
                    total += ch.queue_declare(name, passive=True).method.consumer_count
                except ChannelClosedByBroker as exc:
                    if exc.reply_code != NOT_FOUND:
                        raise
                    ch = self._conn.channel()  # a missing queue closes the channel
        finally:
            if ch.is_open:
                with contextlib.suppress(AMQPError, OSError):
                    ch.close()
        return total

    # --- publishing ---------------------------------------------------------------
    def publish(self, env: Envelope, *, reply: bool = True) -> None:
        """Publish a command or query and wait for the broker's confirm.

        Raises:
            pika.exceptions.UnroutableError: if no queue took it.
            pika.exceptions.NackError: if the broker refused it (e.g. queue full).
            pika.exceptions.AMQPError: if the connection failed.
        """
        exchange = (self.topology.commands_exchange if env.kind is Kind.COMMAND
                    else self.topology.queries_exchange)
        self.publish_raw(exchange, env.apartment_id or "", env.to_json(),
                         message_id=env.message_id, reply=reply)

    def publish_raw(self, exchange: str, routing_key: str, body: bytes, *,
                    message_id: str | None = None, reply: bool = True,
                    headers: dict[str, Any] | None = None,
                    correlation_id: str | None = None) -> None:
        """Publish any bytes, confirmed (for tools and tests of bad input)."""
        if not self.connected:
            self._reconnect()
        corr = correlation_id or message_id
        out = Outgoing(exchange=exchange, routing_key=routing_key, body=body,
                       message_id=message_id, correlation_id=corr,
                       reply_to=REPLY_TO if reply else None, headers=headers or {})
        self._ch.basic_publish(exchange, routing_key, body, properties_of(out), mandatory=True)

    # --- replies ------------------------------------------------------------------
    def wait_reply(self, correlation_id: str, timeout: float = 10.0) -> Envelope:
        """The reply with ``correlation_id``.

        Raises:
            NoReply: when none came within ``timeout`` seconds.
            pika.exceptions.AMQPError: if the connection failed meanwhile.
        """
        deadline = time.monotonic() + timeout
        while correlation_id not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoReply(f"no reply to {correlation_id} within {timeout}s")
            if self._conn is None:
                raise NoReply(f"no connection to wait for {correlation_id} on")
            self._conn.process_data_events(time_limit=min(left, 0.2))
        return Envelope.from_json(self._replies.pop(correlation_id), max_bytes=1 << 24)

    def wait_raw_reply(self, correlation_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The reply with ``correlation_id`` as plain JSON."""
        return self.wait_reply(correlation_id, timeout).to_dict()

    def request(self, env: Envelope, timeout: float = 10.0, retries: int = 2, *,
                backoff: float = 0.2, max_backoff: float = 5.0,
                on_confirmed: Callable[[], None] | None = None) -> Envelope:
        """Publish and wait for the reply; retry with the same message id, bounded.

        Each attempt publishes (reconnecting first if the connection died) and waits
        ``timeout`` seconds for the reply. A nack, an unroutable return, a dead
        connection or a missing reply costs one attempt; failed publishes pause with
        a doubling ``backoff`` (capped by ``max_backoff``) before the next one.
        Re-sending is safe: a node that already handled the message id answers with
        the stored reply and changes nothing.

        Args:
            on_confirmed: called after the first publish the broker confirmed (from
                then on the command is in a durable queue and will take effect).

        Raises:
            NoReply: when a publish was confirmed but no reply came in any attempt.
            NotConfirmed: when no publish was ever confirmed.
        """
        confirmed = False
        delay = backoff
        last: BaseException | None = None
        for _attempt in range(retries + 1):
            try:
                self.publish(env)
            except (NackError, UnroutableError, AMQPError, OSError) as exc:
                last = exc
                log.info("publish of %s not confirmed (%r); retrying", env.message_id, exc)
                if not isinstance(exc, UnroutableError):
                    # Reconnect on the next attempt. After a cluster node went away one
                    # channel kept nacking one queue for 9 attempts (about 30 s) though
                    # the queue had a new leader (docs/cluster.md).
                    self.close()
                time.sleep(delay)
                delay = min(delay * 2, max_backoff)
                continue
            if not confirmed:
                confirmed = True
                if on_confirmed is not None:
                    on_confirmed()
            try:
                return self.wait_reply(env.message_id, timeout)
            except NoReply as exc:
                last = exc
            except (AMQPError, OSError) as exc:
                last = exc
                self.close()
        if confirmed:
            raise NoReply(f"no reply to {env.message_id} after {retries + 1} attempts: "
                          f"{last!r}")
        raise NotConfirmed(f"{env.message_id} never confirmed: {last!r}")

    def close(self) -> None:
        """Close the connection (ignoring one that is already broken)."""
        conn, self._conn, self._ch = self._conn, None, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(AMQPError, OSError):
                conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
