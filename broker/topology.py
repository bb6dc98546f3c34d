"""Staybook's RabbitMQ topology, derived from the message registry.

Commands: producers publish to a topic exchange with routing key ``apartment_id``.
With ``partitions`` > 0 (every real deployment) that exchange feeds a consistent-hash
exchange (RabbitMQ's ``rabbitmq_consistent_hash_exchange`` plugin) that spreads the
apartments over P partition queues: quorum, single-active-consumer, so an apartment
always lands in the same partition and only one node at a time consumes it, in
order. With ``partitions`` = 0 (the in-memory twin) one intake queue takes them all.
Every work queue is a quorum queue with a delivery limit, at-least-once
dead-lettering, and a bounded length with reject-publish, so a full queue pushes back
on producers instead of dropping. Events: one fanout exchange per
type; one durable quorum queue per consumer role, bound to the events it handles.
Every event exchange has an alternate exchange (``unrouted``) so an event nobody
consumes yet is kept (bounded, oldest dropped: the store keeps them all) instead of
being returned to the relay. Bad input and poison: a fanout dead-letter exchange and
queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from config import BrokerSettings, Settings
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
class ExchangeBindingDecl:
    """Bind exchange ``destination`` to exchange ``source`` with ``routing_key``."""

    destination: str
    source: str
    routing_key: str = "#"


HASH_EXCHANGE_TYPE = "x-consistent-hash"
HASH_PLUGIN = "rabbitmq_consistent_hash_exchange"


_BROKER = BrokerSettings()  # the bounds' defaults are the settings'


@dataclass(frozen=True)
class Topology:
    """Every name Staybook uses on the broker.

    Args:
        prefix: put before every exchange and queue name.
        queue_max_length: bound on every work queue.
        dead_letter_max_length: bound on the dead-letter queue.
        delivery_limit: redeliveries before a message is dead-lettered as poison.
        partitions: command partition queues (0: one intake queue, no plugin needed;
            the in-memory twin's).

    A node's is :func:`topology_of` its settings; the defaults here are the settings'
    defaults, for tools and tests that only need names.
    """

    prefix: str = _BROKER.prefix
    queue_max_length: int = _BROKER.queue_max_length
    dead_letter_max_length: int = _BROKER.dead_letter_max_length
    delivery_limit: int = _BROKER.delivery_limit
    partitions: int = 0

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
    def hash_exchange(self) -> str:
        """The consistent-hash exchange behind the commands exchange."""
        return f"{self.commands_exchange}.partitions"

    def partition_queue(self, partition: int) -> str:
        """The broker name of command partition ``partition`` (0-based)."""
        return f"{self.prefix}.intake.p{partition:03d}"

    def intake_queues(self) -> list[str]:
        """Every queue commands arrive on: the partitions, or the one intake queue."""
        if self.partitions:
            return [self.partition_queue(p) for p in range(self.partitions)]
        return [self.queue(Consumer.INTAKE)]

    def work_queues(self, roles: tuple[str, ...] = ("commands", "events")) -> list[str]:
        """The queues a node with ``roles`` consumes (for readiness and drain checks)."""
        out = self.intake_queues() if "commands" in roles else []
        if "events" in roles:
            out += [self.queue(c) for c in Consumer if c is not Consumer.INTAKE]
        return out

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
        """Where dead letters land, until a node records them in the store."""
        return f"{self.prefix}.dead-letters"

    # --- the operator's control channel (topic exchange, one queue per node) ----------
    @property
    def control_exchange(self) -> str:
        """Where the console sends requests: ``node.<name>`` reaches one node, ``all`` all."""
        return f"{self.prefix}.control"

    def control_queue(self, node_name: str) -> str:
        """A node's own (exclusive) control queue."""
        return f"{self.prefix}.control.{node_name}"

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
        if self.partitions:
            out.append(ExchangeDecl(self.hash_exchange, HASH_EXCHANGE_TYPE))
        return out

    def queues(self) -> list[QueueDecl]:
        """All queues: one per consumer role, plus the dead-letter queue."""
        out = [QueueDecl(self.queue(c), self.work_queue_arguments()) for c in Consumer
               if not (self.partitions and c is Consumer.INTAKE)]
        sac = {**self.work_queue_arguments(), "x-single-active-consumer": True}
        out += [QueueDecl(self.partition_queue(p), sac) for p in range(self.partitions)]
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
            if self.partitions and consumer is Consumer.INTAKE:
                continue  # the partitions are bound to the hash exchange instead
            for ex in sorted(exchanges):
                key = "#" if ex == COMMANDS_EXCHANGE else ""
                out.append(BindingDecl(self.queue(consumer), self.exchange(ex), key))
        # Equal weights: each partition takes an equal share of the hash ring.
        out += [BindingDecl(self.partition_queue(p), self.hash_exchange, "1")
                for p in range(self.partitions)]
        return out

    def exchange_bindings(self) -> list[ExchangeBindingDecl]:
        """Exchange-to-exchange bindings: commands -> the partitions' hash exchange."""
        if not self.partitions:
            return []
        return [ExchangeBindingDecl(self.hash_exchange, self.commands_exchange, "#")]


CONTROL_BROADCAST_KEY = "all"


def control_key(node_name: str | None) -> str:
    """The control routing key that reaches one node (or every node, for None)."""
    return CONTROL_BROADCAST_KEY if node_name is None else f"node.{node_name}"


def topology_of(settings: Settings) -> Topology:
    """The topology a deployment with these settings uses (nodes and tools alike)."""
    b = settings.broker
    return Topology(prefix=b.prefix, queue_max_length=b.queue_max_length,
                    dead_letter_max_length=b.dead_letter_max_length,
                    delivery_limit=b.delivery_limit, partitions=b.partitions)
