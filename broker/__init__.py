"""Brokers: RabbitMQ (pika) for real, an in-memory twin for tests, and the topology."""

from broker.base import (
    DETAIL_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    Broker,
    Delivery,
    Outgoing,
    Publisher,
)
from broker.topology import Topology

__all__ = [
    "DETAIL_HEADER",
    "QUEUE_HEADER",
    "REASON_HEADER",
    "Broker",
    "Delivery",
    "Outgoing",
    "Publisher",
    "Topology",
]
