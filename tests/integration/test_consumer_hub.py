"""A broker's consumers share one connection and thread; each queue keeps its own fate.

Faults are real: a queue deleted under its consumer (the broker cancels it), a stop
while deliveries are still being handled on another thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from broker.base import Delivery
from broker.rabbitmq import RabbitBroker
from broker.topology import Topology
from tests.conftest import eventually, unique


@pytest.fixture
def broker(amqp_url: str) -> Iterator[RabbitBroker]:
    b = RabbitBroker(amqp_url, Topology(prefix=unique("hub")), heartbeat=30,
                     reconnect_max_delay=0.5, drain_seconds=10.0)
    yield b
    b.close()


def _declare(url: str, *names: str, kind: str = "quorum") -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    for name in names:
        ch.queue_declare(name, durable=True, arguments={"x-queue-type": kind})
    conn.close()


def _publish(url: str, name: str, *bodies: bytes) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    for body in bodies:
        ch.basic_publish("", name, body, pika.BasicProperties(delivery_mode=2))
    conn.close()


def _depth(url: str, name: str) -> tuple[int, int]:
    """(ready messages, consumers) of ``name``."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ok = conn.channel().queue_declare(name, passive=True)
    conn.close()
    return ok.method.message_count, ok.method.consumer_count


def _acking(into: queue.Queue[bytes]) -> Any:
    def on_delivery(d: Delivery) -> None:
        into.put(d.body)
        d.ack()
    return on_delivery


def test_consumers_share_one_thread_and_a_deleted_queue_stops_only_its_own(
        broker: RabbitBroker, amqp_url: str) -> None:
    a, b = broker.topology.queue("a"), broker.topology.queue("b")
    # Classic: its delete cancels consumers at once (a quorum queue's is asynchronous).
    _declare(amqp_url, a, b, kind="classic")
    got_a: queue.Queue[bytes] = queue.Queue()
    got_b: queue.Queue[bytes] = queue.Queue()
    ca = broker.consumer(a, _acking(got_a), prefetch=4, name="ca")
    cb = broker.consumer(b, _acking(got_b), prefetch=4, name="cb")
    ca.start()
    cb.start()
    eventually(lambda: _depth(amqp_url, a)[1] == 1 and _depth(amqp_url, b)[1] == 1)
    assert [t.name for t in threading.enumerate()].count("consumers") == 1

    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    conn.channel().queue_delete(a)  # the broker cancels ca's consumer
    conn.close()
    _publish(amqp_url, b, b"still served")
    assert got_b.get(timeout=10) == b"still served"
    assert ca.is_alive() and cb.is_alive()

    _declare(amqp_url, a, kind="classic")  # back: ca consumes it again, after its backoff
    eventually(lambda: _depth(amqp_url, a)[1] == 1, timeout=20)
    _publish(amqp_url, a, b"again")
    assert got_a.get(timeout=10) == b"again"
    assert ca.reconnects == cb.reconnects == 0  # only ca's channel went: not the connection


def test_stopping_one_consumer_drains_it_and_leaves_the_other_consuming(
        broker: RabbitBroker, amqp_url: str) -> None:
    a, b = broker.topology.queue("a"), broker.topology.queue("b")
    _declare(amqp_url, a, b)
    held: queue.Queue[Delivery] = queue.Queue()
    got_b: queue.Queue[bytes] = queue.Queue()
    ca = broker.consumer(a, held.put, prefetch=3, name="ca", drain_seconds=20)
    cb = broker.consumer(b, _acking(got_b), prefetch=4, name="cb")
    ca.start()
    cb.start()
    _publish(amqp_url, a, b"1", b"2", b"3", b"4", b"5")
    taken = [held.get(timeout=10) for _ in range(3)]  # the prefetch: 3 handed out
    assert ca.unacked == 3

    stopped = threading.Event()

    def stop() -> None:
        ca.stop(30)
        stopped.set()

    threading.Thread(target=stop, daemon=True).start()
    eventually(lambda: ca.draining)  # cancelled: the broker sends it nothing more
    taken[0].ack()  # settled from this thread, as an actor would: room for one more
    _publish(amqp_url, b, b"meanwhile")
    assert got_b.get(timeout=10) == b"meanwhile"  # the other queue is not held up
    eventually(lambda: ca.acked == 1)
    # Cancelled: the room it made is not filled; the two others still drain.
    assert held.empty() and _depth(amqp_url, a)[0] == 2
    assert not stopped.is_set()
    for d in taken[1:]:
        d.ack()
    assert stopped.wait(10)
    assert held.empty() and ca.acked == 3 and ca.unacked == 0
    eventually(lambda: _depth(amqp_url, a) == (2, 0))  # the rest is the broker's again
    assert cb.is_alive() and not ca.is_alive()


def test_a_multiple_ack_never_covers_a_delivery_still_being_handled(
        broker: RabbitBroker, amqp_url: str) -> None:
    """Acks of a round go out as one ``multiple`` ack for the oldest run only.

    The oldest delivery is held; the ones after it are acked (on their own, behind
    it), then the held one is given back: it alone comes again, so no ack covered it.
    """
    name = broker.topology.queue("acks")
    _declare(amqp_url, name)
    held: list[Delivery] = []
    seen: queue.Queue[bytes] = queue.Queue()

    def on_delivery(d: Delivery) -> None:
        seen.put(d.body)
        if d.body == b"0" and not d.redelivered:
            held.append(d)  # still being handled
        else:
            d.ack()

    c = broker.consumer(name, on_delivery, prefetch=16, name="acks")
    c.start()
    _publish(amqp_url, name, *[str(i).encode() for i in range(8)])
    first = [seen.get(timeout=10) for _ in range(8)]
    assert sorted(first) == [str(i).encode() for i in range(8)]
    eventually(lambda: c.unacked == 1)
    held[0].requeue()
    assert seen.get(timeout=10) == b"0"  # given back, so not covered by an ack
    eventually(lambda: c.unacked == 0)
    c.stop()
    assert _depth(amqp_url, name) == (0, 0)  # and the others were acked for good
    with pytest.raises(queue.Empty):
        seen.get(timeout=0.5)
