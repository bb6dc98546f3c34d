"""A producer's client for RabbitMQ: publish with confirms, wait for the reply.

It is what ``staybook send``, ``search`` and ``demo`` use, and what a producer in
Python can use as it is. Replies come through RabbitMQ's direct reply-to
(``amq.rabbitmq.reply-to``), so the client declares nothing.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pika
from pika.exceptions import AMQPError

from broker.base import Outgoing
from broker.rabbitmq import connection_parameters, properties_of
from broker.topology import Topology
from messages import Envelope, Kind

REPLY_TO = "amq.rabbitmq.reply-to"


class NoReply(TimeoutError):
    """No reply arrived in time (the command may still take effect: re-send it)."""


class Client:
    """Sends commands and queries and returns their replies.

    Args:
        url: the AMQP URL.
        topology: exchange names.
    """

    def __init__(self, url: str, topology: Topology | None = None) -> None:
        self.topology = topology or Topology()
        self._conn = pika.BlockingConnection(connection_parameters(url))
        self._ch = self._conn.channel()
        self._ch.confirm_delivery()
        self._replies: dict[str, bytes] = {}
        self._ch.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)

    def _on_reply(self, _ch: Any, _method: Any, props: pika.BasicProperties,
                  body: bytes) -> None:
        if props.correlation_id:
            self._replies[props.correlation_id] = body

    def publish(self, env: Envelope, *, reply: bool = True) -> None:
        """Publish a command or query, confirmed by the broker.

        Raises:
            pika.exceptions.UnroutableError: if no queue took it.
            pika.exceptions.NackError: if the broker refused it (e.g. queue full).
        """
        exchange = (self.topology.commands_exchange if env.kind is Kind.COMMAND
                    else self.topology.queries_exchange)
        self.publish_raw(exchange, env.apartment_id or "", env.to_json(),
                         message_id=env.message_id, reply=reply)

    def publish_raw(self, exchange: str, routing_key: str, body: bytes, *,
                    message_id: str | None = None, reply: bool = True,
                    headers: dict[str, Any] | None = None) -> None:
        """Publish any bytes (for tools and tests of bad input)."""
        out = Outgoing(exchange=exchange, routing_key=routing_key, body=body,
                       message_id=message_id, correlation_id=message_id,
                       reply_to=REPLY_TO if reply else None, headers=headers or {})
        self._ch.basic_publish(exchange, routing_key, body, properties_of(out), mandatory=True)

    def wait_reply(self, correlation_id: str, timeout: float = 10.0) -> Envelope:
        """The reply with ``correlation_id``.

        Raises:
            NoReply: when none came within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while correlation_id not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoReply(f"no reply to {correlation_id} within {timeout}s")
            self._conn.process_data_events(time_limit=min(left, 0.2))
        return Envelope.from_json(self._replies.pop(correlation_id), max_bytes=1 << 24)

    def wait_raw_reply(self, correlation_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The reply with ``correlation_id`` as plain JSON."""
        return self.wait_reply(correlation_id, timeout).to_dict()

    def request(self, env: Envelope, timeout: float = 10.0, retries: int = 2) -> Envelope:
        """Publish and wait for the reply; on a timeout re-send the same message id.

        Re-sending is safe: a node that already handled the message id answers with
        the stored reply and changes nothing.

        Raises:
            NoReply: when no reply came after the retries.
        """
        for attempt in range(retries + 1):
            try:
                self.publish(env)
                return self.wait_reply(env.message_id, timeout)
            except NoReply:
                if attempt == retries:
                    raise
            except AMQPError:
                if attempt == retries:
                    raise
                time.sleep(0.5)
        raise NoReply(env.message_id)

    def close(self) -> None:
        """Close the connection."""
        if self._conn.is_open:
            self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def reply_json(env: Envelope) -> str:
    """A reply's payload as indented JSON."""
    return json.dumps(env.payload.model_dump(mode="json"), indent=2)
