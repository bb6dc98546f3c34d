"""What every broker offers Staybook: deliveries to settle, consumers, a publisher.

Two implementations share this interface: :mod:`broker.rabbitmq` (pika, the real
one) and :mod:`broker.memory` (an in-process twin for unit and actor tests).
"""

from __future__ import annotations

import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.topology import Topology
from supervisor import Service

REASON_HEADER = "x-staybook-reason"
DETAIL_HEADER = "x-staybook-detail"
QUEUE_HEADER = "x-staybook-queue"
# Stamped on each dead letter as it is made: the book records it once however often
# the dead-letter queue redelivers it.
DEAD_ID_HEADER = "x-staybook-dead-id"


@dataclass(frozen=True)
class Outgoing:
    """A message to publish: where, what, and its AMQP properties."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None = None
    correlation_id: str | None = None
    type: str | None = None
    reply_to: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    persistent: bool = True


_TYPE = b'"type":"'


def reply_type(reply: bytes) -> str | None:
    """The envelope type of a serialized reply, for the AMQP ``type`` property.

    Read off the bytes, not parsed: the envelope's fields before ``type`` are ids
    (``ID_PATTERN``: no quotes), so its first ``"type":"`` is the envelope's own.
    """
    start = reply.find(_TYPE)
    if start < 0:
        return None
    start += len(_TYPE)
    end = reply.find(b'"', start)
    return reply[start:end].decode() if 0 < end - start <= 100 else None


class Delivery(ABC):
    """One received message; settled exactly once, from any thread.

    Settling means one of: :meth:`ack` (optionally sending the reply first),
    :meth:`requeue`, or :meth:`dead_letter`. Later calls are ignored, so a consumer
    may race a crash handler safely.

    Attributes:
        body: the raw bytes.
        queue: the queue it came from.
        reply_to: where the producer wants the answer, if anywhere.
        correlation_id: the AMQP correlation id to answer with.
        redelivered: the broker delivered it before.
        headers: the AMQP headers.
    """

    def __init__(
        self,
        body: bytes,
        *,
        queue: str,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        message_id: str | None = None,
        redelivered: bool = False,
        headers: dict[str, Any] | None = None,
        exchange: str = "",
        routing_key: str = "",
    ) -> None:
        self.body = body
        self.queue = queue
        self.reply_to = reply_to
        self.correlation_id = correlation_id
        self.message_id = message_id
        self.redelivered = redelivered
        self.headers = headers or {}
        self.exchange = exchange
        self.routing_key = routing_key
        self._settled = False
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Delivery], None]] = []

    def on_settled(self, callback: Callable[[Delivery], None]) -> None:
        """Call ``callback(self)`` once this delivery is settled (now, if it is)."""
        with self._lock:
            if not self._settled:
                self._callbacks.append(callback)
                return
        callback(self)

    def _claim(self) -> bool:
        with self._lock:
            if self._settled:
                return False
            self._settled = True
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)
        return True

    @property
    def settled(self) -> bool:
        """Whether ack, requeue or dead_letter was already called."""
        return self._settled

    def ack(self, reply: bytes | None = None) -> None:
        """Send ``reply`` to ``reply_to`` (when both exist), then ack."""
        if self._claim():
            self._ack(reply if self.reply_to else None)

    def requeue(self) -> None:
        """Give the message back to the broker for redelivery."""
        if self._claim():
            self._requeue()

    def dead_letter(self, reason: str, detail: str, reply: bytes | None = None) -> None:
        """Publish a copy to the dead-letter exchange with the reason, reply, then ack."""
        if self._claim():
            headers = dict(self.headers)
            headers[REASON_HEADER] = reason
            headers[DETAIL_HEADER] = detail[:1000]
            headers[QUEUE_HEADER] = self.queue
            headers[DEAD_ID_HEADER] = uuid.uuid4().hex
            self._dead_letter(headers, reply if self.reply_to else None)

    def reply_outgoing(self, reply: bytes) -> Outgoing:
        """The AMQP message that answers this delivery."""
        return Outgoing(
            exchange="",
            routing_key=self.reply_to or "",
            body=reply,
            correlation_id=self.correlation_id or self.message_id,
            type=reply_type(reply),
            persistent=False,
        )

    @abstractmethod
    def _ack(self, reply: bytes | None) -> None: ...

    @abstractmethod
    def _requeue(self) -> None: ...

    @abstractmethod
    def _dead_letter(self, headers: dict[str, Any], reply: bytes | None) -> None: ...


OnDelivery = Callable[[Delivery], None]


class Publisher(ABC):
    """Publishes batches with confirms; used by the outbox relay on its own thread."""

    @abstractmethod
    def publish_confirmed(self, messages: Sequence[Outgoing], timeout: float = 30.0) -> None:
        """Publish all and return only when the broker confirmed every one.

        Raises:
            Exception: if any was nacked, returned, or the connection failed.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""


class Broker(ABC):
    """A message broker with Staybook's topology."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology

    @abstractmethod
    def declare(self) -> None:
        """Declare exchanges, queues and bindings (idempotent)."""

    @abstractmethod
    def consumer(
        self, queue: str, on_delivery: OnDelivery, *, prefetch: int, name: str,
        drain_seconds: float | None = None,
        on_subscribed: Callable[[], None] | None = None,
    ) -> Service:
        """A service that hands each delivery of ``queue`` to ``on_delivery``.

        Args:
            drain_seconds: how long stopping waits for the deliveries it handed out to
                be settled (None: the broker's default).
            on_subscribed: called before each subscription's first delivery (at start,
                and again after a lost channel or connection): whatever was made of
                the queue's earlier deliveries may be stale by then.
        """

    @abstractmethod
    def publisher(self) -> Publisher:
        """A publisher with confirms, for one thread."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the broker holds."""
