"""The in-memory broker twin: what only the twin has.

The behaviour it shares with RabbitMQ (routing, bounds, prefetch, requeue, the
delivery limit, dead-lettering, replies, settling once) is pinned on both brokers by
one suite, ``tests/integration/test_broker_contract.py``. Here: the twin's own
threading, and the envelope type that replies carry.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from broker import Delivery, Outgoing, Topology
from broker.base import reply_type
from broker.memory import MemoryBroker
from messages import Consumer

DEADLINE = 10.0


def make_broker(*, queue_max_length: int = 1_000, dead_letter_max_length: int = 1_000,
                delivery_limit: int = 5) -> MemoryBroker:
    b = MemoryBroker(Topology(queue_max_length=queue_max_length,
                              dead_letter_max_length=dead_letter_max_length,
                              delivery_limit=delivery_limit))
    b.declare()
    return b


def msg(exchange: str, key: str = "", body: bytes = b"x", **kw: Any) -> Outgoing:
    return Outgoing(exchange, key, body, **kw)


class Taker:
    """A consumer that hands each delivery to the test, unsettled."""

    def __init__(self, b: MemoryBroker, queue_name: str, prefetch: int = 10) -> None:
        self.deliveries: queue.Queue[Delivery] = queue.Queue()
        self.consumer = b.consumer(queue_name, self.deliveries.put, prefetch=prefetch,
                                   name=f"taker-{queue_name}")

    def take(self, timeout: float = DEADLINE) -> Delivery:
        return self.deliveries.get(timeout=timeout)


@pytest.fixture
def broker() -> MemoryBroker:
    return make_broker()


@pytest.fixture
def intake_taker(broker: MemoryBroker) -> Iterator[Taker]:
    t = Taker(broker, broker.topology.queue(Consumer.INTAKE))
    t.consumer.start()
    yield t
    t.consumer.stop()


# --- settling on the consumer's thread ------------------------------------------------
def test_settles_run_on_the_consumer_thread(
        broker: MemoryBroker, intake_taker: Taker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like RabbitConsumer, whose channel is not thread-safe: the test thread only asks."""
    topo = broker.topology
    threads: list[str] = []
    settle = broker.settle

    def recording(*args: Any, **kw: Any) -> None:
        threads.append(threading.current_thread().name)
        settle(*args, **kw)

    monkeypatch.setattr(broker, "settle", recording)
    for body in (b"ack", b"requeue", b"dead"):
        broker.publish(msg(topo.commands_exchange, "a", body))
    first, second, third = (intake_taker.take() for _ in range(3))
    first.ack()
    second.requeue()
    third.dead_letter("why", "detail")
    assert intake_taker.take().body == b"requeue"  # redelivered, so the requeue ran
    assert intake_taker.consumer.flush()
    assert threads == [intake_taker.consumer.name] * 3
    assert broker.depth(topo.dead_letter_queue) == 1


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"message_id":"m","correlation_id":"c","causation_id":null,"type":"SearchResults",'
     b'"version":1,"payload":{"type":"x"}}', "SearchResults"),
    (b'{"message_id":"m","correlation_id":"c","causation_id":"m0","type":"CommandResult"}',
     "CommandResult"),
    (b"not an envelope", None),
    (b'{"type":"' + b"x" * 200 + b'"}', None),
    (b'{"type":"', None),
])
def test_a_reply_s_type_is_read_off_its_bytes(body: bytes, expected: str | None) -> None:
    assert reply_type(body) == expected


