"""Staybook's RabbitMQ topology, derived from the message registry.

Commands: a topic exchange routed by ``apartment_id`` into a quorum queue (delivery
limit, at-least-once dead-lettering, bounded length with reject-publish so a full
queue pushes back on producers instead of dropping). Events: one fanout exchange per
type; one durable quorum queue per consumer role, bound to the events it handles.
Every event exchange has an alternate exchange (``unrouted``) so an event nobody
consumes yet is kept (bounded, oldest dropped: the store keeps them all) instead of
being returned to the relay. Bad input and poison: a fanout dead-letter exchange and
queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from messages.registry import (
    COMMANDS_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    QUERIES_EXCHANGE,
    UNROUTED_EXCHANGE,
    Consumer,
    bindings,
    event_exchanges,
)


@dataclass(frozen=True)
class ExchangeDecl:
    """An exchange to declare."""

    name: str
    type: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueDecl:
    """A durable queue to declare, with its x-arguments."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BindingDecl:
    """Bind ``queue`` to ``exchange`` with ``routing_key``."""

    queue: str
    exchange: str
    routing_key: str = "#"


@dataclass(frozen=True)
class Topology:
    """Every name Staybook uses on the broker.

    Args:
        prefix: put before every exchange and queue name.
        queue_max_length: bound on every work queue.
        dead_letter_max_length: bound on the dead-letter queue.
        delivery_limit: redeliveries before a message is dead-lettered as poison.
    """

    prefix: str = "staybook"
    queue_max_length: int = 1_000_000
    dead_letter_max_length: int = 100_000
    delivery_limit: int = 5

    def exchange(self, logical: str) -> str:
        """The broker name of a logical exchange ('' stays the default exchange)."""
        return f"{self.prefix}.{logical}" if logical else ""

    def queue(self, consumer: Consumer | str) -> str:
        """The broker name of a consumer's queue."""
        return f"{self.prefix}.{consumer}"

    @property
    def commands_exchange(self) -> str:
        """Where producers publish commands (routing key: the apartment id)."""
        return self.exchange(COMMANDS_EXCHANGE)

    @property
    def queries_exchange(self) -> str:
        """Where producers publish queries."""
        return self.exchange(QUERIES_EXCHANGE)

    @property
    def dead_letter_exchange(self) -> str:
        """Where refused and poison messages go."""
        return self.exchange(DEAD_LETTER_EXCHANGE)

    @property
    def unrouted_exchange(self) -> str:
        """The alternate exchange of every event exchange."""
        return self.exchange(UNROUTED_EXCHANGE)

    @property
    def unrouted_queue(self) -> str:
        """Where events no consumer is bound to end up (bounded)."""
        return f"{self.prefix}.unrouted"

    @property
    def dead_letter_queue(self) -> str:
        """The queue an operator reads dead letters from."""
        return f"{self.prefix}.dead-letters"

    def work_queue_arguments(self) -> dict[str, Any]:
        """Quorum, bounded, with a delivery limit and safe dead-lettering."""
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-max-length": self.queue_max_length,
        }

    def exchanges(self) -> list[ExchangeDecl]:
        """All exchanges."""
        out = [
            ExchangeDecl(self.commands_exchange, "topic"),
            ExchangeDecl(self.queries_exchange, "fanout"),
            ExchangeDecl(self.dead_letter_exchange, "fanout"),
            ExchangeDecl(self.unrouted_exchange, "fanout"),
        ]
        alt = {"alternate-exchange": self.unrouted_exchange}
        out += [ExchangeDecl(self.exchange(e), "fanout", alt) for e in event_exchanges()]
        return out

    def queues(self) -> list[QueueDecl]:
        """All queues: one per consumer role, plus the dead-letter queue."""
        out = [QueueDecl(self.queue(c), self.work_queue_arguments()) for c in Consumer]
        out.append(
            QueueDecl(
                self.dead_letter_queue,
                {
                    "x-queue-type": "quorum",
                    "x-overflow": "reject-publish",
                    "x-max-length": self.dead_letter_max_length,
                },
            )
        )
        out.append(QueueDecl(self.unrouted_queue, {
            "x-queue-type": "quorum", "x-max-length": self.dead_letter_max_length}))
        return out

    def bindings(self) -> list[BindingDecl]:
        """Every queue's bindings, from the registry's consumers."""
        out = [BindingDecl(self.dead_letter_queue, self.dead_letter_exchange, ""),
               BindingDecl(self.unrouted_queue, self.unrouted_exchange, "")]
        for consumer, exchanges in sorted(bindings().items()):
            for ex in sorted(exchanges):
                key = "#" if ex == COMMANDS_EXCHANGE else ""
                out.append(BindingDecl(self.queue(consumer), self.exchange(ex), key))
        return out
