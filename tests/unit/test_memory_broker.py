"""The in-memory broker twin: the RabbitMQ semantics Staybook's code relies on.

Routing through the topology's exchanges, bounded queues that refuse publishes,
manual acks with a prefetch bound, requeue and redelivery, the delivery limit and
dead-lettering, and deliveries that settle exactly once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from broker import DETAIL_HEADER, QUEUE_HEADER, REASON_HEADER, Delivery, Outgoing, Topology
from broker.base import reply_type
from broker.memory import MemoryBroker, QueueFull
from messages import Consumer, Kind, all_specs
from tests.conftest import eventually

DEADLINE = 10.0


def make_broker(*, queue_max_length: int = 1_000, dead_letter_max_length: int = 1_000,
                delivery_limit: int = 5) -> MemoryBroker:
    b = MemoryBroker(Topology(queue_max_length=queue_max_length,
                              dead_letter_max_length=dead_letter_max_length,
                              delivery_limit=delivery_limit))
    b.declare()
    return b


def queue_names(b: MemoryBroker) -> list[str]:
    return [q.name for q in b.topology.queues()]


def depths(b: MemoryBroker) -> dict[str, int]:
    return {name: b.depth(name) for name in queue_names(b)}


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


# --- routing -------------------------------------------------------------------------
def test_topic_exchange_routes_every_key_to_the_intake(broker: MemoryBroker) -> None:
    topo = broker.topology
    for key in ("apt-1", "apt.2", "x"):
        assert broker.publish(msg(topo.commands_exchange, key))
    expected = dict.fromkeys(queue_names(broker), 0)
    expected[topo.queue(Consumer.INTAKE)] = 3
    assert depths(broker) == expected


def bound_queues(topo: Topology, exchange: str) -> set[str]:
    return {b.queue for b in topo.bindings() if b.exchange == exchange}


def test_every_exchange_routes_to_exactly_its_bound_queues(broker: MemoryBroker) -> None:
    topo = broker.topology
    for ex in topo.exchanges():
        expected = bound_queues(topo, ex.name)
        alternate = ex.arguments.get("alternate-exchange")
        if not expected and alternate is not None:
            expected = bound_queues(topo, alternate)  # nobody bound: the alternate takes it
        routed = broker.publish(msg(ex.name, "apt-1", ex.name.encode()))
        assert routed == bool(expected), ex.name
        got = {name for name, n in depths(broker).items() if n}
        assert got == expected, ex.name
        for name in got:  # one copy each, the same body
            assert [o.body for o in broker.drain(name)] == [ex.name.encode()]


def test_each_event_reaches_every_consumer_registered_for_it(broker: MemoryBroker) -> None:
    topo = broker.topology
    for spec in all_specs():
        if spec.kind is not Kind.EVENT:
            continue
        broker.publish(msg(topo.exchange(spec.exchange), "apt-1", spec.type.encode(),
                           message_id=spec.type))
        for c in spec.consumers:
            assert [o.message_id for o in broker.drain(topo.queue(c))] == [spec.type], (
                spec.type, c)
        for name in queue_names(broker):  # and to no other consumer
            broker.drain(name)


def test_queries_fan_out_to_search(broker: MemoryBroker) -> None:
    topo = broker.topology
    assert broker.publish(msg(topo.queries_exchange, "", b"q"))
    expected = dict.fromkeys(queue_names(broker), 0)
    expected[topo.queue(Consumer.SEARCH)] = 1
    assert depths(broker) == expected


def test_default_exchange_routes_by_queue_name(broker: MemoryBroker) -> None:
    topo = broker.topology
    reply = broker.reply_queue()
    assert broker.publish(msg("", reply, b"r"))
    assert broker.depth(reply) == 1
    assert broker.publish(msg("", topo.queue(Consumer.PAYMENT), b"p"))
    assert broker.depth(topo.queue(Consumer.PAYMENT)) == 1
    assert not broker.publish(msg("", "no-such-queue"))  # routed nowhere, not an error
    assert broker.publish(msg(topo.dead_letter_exchange))
    assert broker.depth(topo.dead_letter_queue) == 1


def test_declare_is_idempotent(broker: MemoryBroker) -> None:
    broker.declare()
    broker.publish(msg(broker.topology.queries_exchange))
    assert broker.depth(broker.topology.queue(Consumer.SEARCH)) == 1  # not bound twice


# --- bounded queues ------------------------------------------------------------------
def test_a_full_queue_refuses_the_publish() -> None:
    b = make_broker(queue_max_length=3)
    topo = b.topology
    intake = topo.queue(Consumer.INTAKE)
    for i in range(3):
        b.publish(msg(topo.commands_exchange, "a", f"{i}".encode()))
    with pytest.raises(QueueFull):
        b.publish(msg(topo.commands_exchange, "a", b"3"))
    assert b.depth(intake) == 3
    assert [o.body for o in b.drain(intake)] == [b"0", b"1", b"2"]  # the old ones stay
    b.publish(msg(topo.commands_exchange, "a", b"4"))  # room again
    assert b.depth(intake) == 1


def test_unacked_messages_do_not_count_toward_the_max_length() -> None:
    b = make_broker(queue_max_length=2)
    topo = b.topology
    taker = Taker(b, topo.queue(Consumer.INTAKE))
    taker.consumer.start()
    try:
        b.publish(msg(topo.commands_exchange, "a", b"0"))
        b.publish(msg(topo.commands_exchange, "a", b"1"))
        held = [taker.take(), taker.take()]  # both unacked, none ready
        # Two in the queue, at its max length, yet this is taken (QueueFull otherwise).
        assert b.publish(msg(topo.commands_exchange, "a", b"2"))
        assert b.depth(topo.queue(Consumer.INTAKE)) == 3
        assert taker.take().body == b"2"
        for d in held:
            d.ack()
    finally:
        taker.consumer.stop()


# --- prefetch ------------------------------------------------------------------------
def test_a_consumer_holds_at_most_prefetch_unsettled_deliveries(broker: MemoryBroker) -> None:
    topo = broker.topology
    lock = threading.Lock()
    outstanding = 0
    high_water = 0
    got: queue.Queue[Delivery] = queue.Queue()

    def settled(_d: Delivery) -> None:
        nonlocal outstanding
        with lock:
            outstanding -= 1

    def on_delivery(d: Delivery) -> None:
        nonlocal outstanding, high_water
        with lock:
            outstanding += 1
            high_water = max(high_water, outstanding)
        d.on_settled(settled)
        got.put(d)

    for i in range(12):
        broker.publish(msg(topo.commands_exchange, "a", f"{i}".encode()))
    c = broker.consumer(topo.queue(Consumer.INTAKE), on_delivery, prefetch=3, name="p")
    c.start()
    try:
        bodies: list[bytes] = []
        while len(bodies) < 12:
            d = got.get(timeout=DEADLINE)
            bodies.append(d.body)
            d.ack()
        assert bodies == [f"{i}".encode() for i in range(12)]  # in order
        assert high_water <= 3
        eventually(lambda: broker.depth(topo.queue(Consumer.INTAKE)) == 0)
    finally:
        c.stop()


def test_deliveries_stop_at_the_prefetch_until_one_is_settled(broker: MemoryBroker) -> None:
    topo = broker.topology
    intake = topo.queue(Consumer.INTAKE)
    for i in range(5):
        broker.publish(msg(topo.commands_exchange, "a", f"{i}".encode()))
    taker = Taker(broker, intake, prefetch=2)
    taker.consumer.start()
    try:
        held = [taker.take(), taker.take()]
        # with two unacked, the other three must still be ready: take them ourselves
        rest = broker.drain(intake)
        assert [o.body for o in rest] == [b"2", b"3", b"4"]
        assert taker.deliveries.empty()
        assert broker.depth(intake) == 2  # the two unacked
        broker.publish(msg(topo.commands_exchange, "a", b"5"))
        held[0].ack()
        assert taker.take().body == b"5"  # a slot freed: delivery resumes
    finally:
        taker.consumer.stop()


# --- requeue, redelivery, the delivery limit -----------------------------------------
def test_a_requeued_message_is_redelivered_marked_redelivered(
        broker: MemoryBroker, intake_taker: Taker) -> None:
    topo = broker.topology
    broker.publish(msg(topo.commands_exchange, "a", b"m", message_id="m1",
                       correlation_id="c1", reply_to="rq", headers={"h": 1}))
    first = intake_taker.take()
    assert not first.redelivered
    first.requeue()
    again = intake_taker.take()
    assert again.redelivered
    assert (again.body, again.message_id, again.correlation_id, again.reply_to,
            again.headers) == (b"m", "m1", "c1", "rq", {"h": 1})
    again.ack()
    eventually(lambda: broker.depth(topo.queue(Consumer.INTAKE)) == 0)


def test_a_requeued_message_goes_back_to_the_head(broker: MemoryBroker) -> None:
    topo = broker.topology
    taker = Taker(broker, topo.queue(Consumer.INTAKE), prefetch=1)
    for body in (b"a", b"b"):
        broker.publish(msg(topo.commands_exchange, "k", body))
    taker.consumer.start()
    try:
        first = taker.take()
        assert first.body == b"a"
        first.requeue()
        second = taker.take()
        assert (second.body, second.redelivered) == (b"a", True)
        second.ack()
        third = taker.take()
        assert (third.body, third.redelivered) == (b"b", False)
        third.ack()
    finally:
        taker.consumer.stop()


def test_past_the_delivery_limit_a_message_is_dead_lettered_with_x_death() -> None:
    b = make_broker(delivery_limit=2)
    topo = b.topology
    intake = topo.queue(Consumer.INTAKE)
    deliveries: list[bool] = []

    def always_requeue(d: Delivery) -> None:
        deliveries.append(d.redelivered)
        d.requeue()

    b.publish(msg(topo.commands_exchange, "apt-1", b"poison", message_id="m1",
                  headers={"keep": "me"}))
    c = b.consumer(intake, always_requeue, prefetch=1, name="requeuer")
    c.start()
    try:
        eventually(lambda: b.depth(topo.dead_letter_queue) == 1)
        eventually(lambda: b.depth(intake) == 0)
    finally:
        c.stop()
    # delivered delivery_limit + 1 times (RabbitMQ: "more than the limit" returns)
    assert deliveries == [False, True, True]
    dead = b.drain(topo.dead_letter_queue)
    assert len(dead) == 1
    copy = dead[0]
    assert (copy.body, copy.message_id, copy.routing_key) == (b"poison", "m1", "apt-1")
    assert copy.headers["keep"] == "me"
    assert copy.headers["x-death"] == [{"reason": "delivery_limit", "queue": intake,
                                        "count": 3}]


def test_the_dead_letter_queue_has_no_delivery_limit() -> None:
    b = make_broker(delivery_limit=1)
    topo = b.topology
    dlq = topo.dead_letter_queue  # no x-delivery-limit: an operator's requeue never drops
    b.publish(msg(topo.dead_letter_exchange, "", b"d"))
    taker = Taker(b, dlq)
    taker.consumer.start()
    try:
        for _ in range(4):
            d = taker.take()
            d.requeue()
        taker.take().ack()
        eventually(lambda: b.depth(dlq) == 0)
    finally:
        taker.consumer.stop()


# --- settling once -------------------------------------------------------------------
def test_a_delivery_settles_once(broker: MemoryBroker, intake_taker: Taker) -> None:
    topo = broker.topology
    intake = topo.queue(Consumer.INTAKE)
    broker.publish(msg(topo.commands_exchange, "a", b"1", reply_to="nowhere"))
    d = intake_taker.take()
    calls: list[Delivery] = []
    d.on_settled(calls.append)
    d.on_settled(calls.append)
    assert not d.settled
    d.ack()
    assert d.settled
    d.ack()
    d.requeue()
    d.dead_letter("late", "ignored")
    assert calls == [d, d]  # each callback once
    late: list[Delivery] = []
    d.on_settled(late.append)  # registered after settling: called at once
    assert late == [d]
    assert intake_taker.consumer.flush()  # the consumer thread ran every settle it got
    assert broker.depth(intake) == 0  # not -1, not requeued
    assert broker.depth(topo.dead_letter_queue) == 0
    assert intake_taker.deliveries.empty()


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


def test_settles_around_a_stop_are_not_lost(broker: MemoryBroker) -> None:
    """One submitted before stop() runs before the thread ends; one after runs in place."""
    topo = broker.topology
    intake = topo.queue(Consumer.INTAKE)
    reply_q = broker.reply_queue()
    for i in range(2):
        broker.publish(msg(topo.commands_exchange, "a", f"{i}".encode(), message_id=f"m{i}",
                           reply_to=reply_q))
    taker = Taker(broker, intake)
    taker.consumer.start()
    before, after = taker.take(), taker.take()
    before.ack(b"r0")
    taker.consumer.stop()
    assert not taker.consumer.is_alive()
    assert broker.depth(intake) == 1  # the ack before stop() was applied by the thread
    after.ack(b"r1")
    assert broker.depth(intake) == 0  # and this one on the caller's thread
    replies = [broker.get(reply_q, timeout=DEADLINE) for _ in range(2)]
    assert [r.correlation_id for r in replies if r is not None] == ["m0", "m1"]


def test_racing_settlements_have_one_winner(broker: MemoryBroker, intake_taker: Taker) -> None:
    topo = broker.topology
    intake, dlq = topo.queue(Consumer.INTAKE), topo.dead_letter_queue
    n = 30
    for i in range(n):
        broker.publish(msg(topo.commands_exchange, "a", f"{i}".encode()))
    redelivered: list[bytes] = []
    dead: list[bytes] = []
    raced = 0
    while raced < n:
        d = intake_taker.take()
        if d.redelivered:  # a requeue won an earlier race
            redelivered.append(d.body)
            d.ack()
            assert intake_taker.consumer.flush()
            continue
        raced += 1
        calls: list[Delivery] = []
        d.on_settled(calls.append)
        start = threading.Barrier(3)
        dead_before = broker.depth(dlq)

        def settle(fn: Callable[[], None], start: threading.Barrier = start) -> None:
            start.wait()
            fn()

        def kill(d: Delivery = d) -> None:
            d.dead_letter("why", "detail")

        threads = [threading.Thread(target=settle, args=(f,)) for f in (d.ack, d.requeue, kill)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert intake_taker.consumer.flush()  # the winner's settle has run
        assert len(calls) == 1
        assert broker.depth(dlq) - dead_before in (0, 1)
    while broker.depth(intake) > 0:
        d = intake_taker.take()
        assert d.redelivered
        redelivered.append(d.body)
        d.ack()
    dead = [o.body for o in broker.drain(dlq)]
    # each message went one way only: never both requeued and dead-lettered, never twice
    assert len(set(redelivered)) == len(redelivered)
    assert len(set(dead)) == len(dead)
    assert not set(redelivered) & set(dead)
    assert broker.depth(intake) == 0


def test_dead_letter_puts_the_reason_on_the_copy_and_replies(broker: MemoryBroker) -> None:
    topo = broker.topology
    intake = topo.queue(Consumer.INTAKE)
    reply_q = broker.reply_queue()
    broker.publish(msg(topo.commands_exchange, "apt-7", b"not json", message_id="m1",
                       correlation_id="c1", reply_to=reply_q, headers={"h": "v"}))
    taker = Taker(broker, intake)
    taker.consumer.start()
    try:
        d = taker.take()
        d.dead_letter("not_json", "x" * 5000, reply=b"the error")
    finally:
        taker.consumer.stop()
    assert broker.depth(intake) == 0  # acked
    dead = broker.drain(topo.dead_letter_queue)
    assert len(dead) == 1
    copy = dead[0]
    assert (copy.body, copy.message_id, copy.correlation_id, copy.routing_key) == (
        b"not json", "m1", "c1", "apt-7")
    assert copy.headers[REASON_HEADER] == "not_json"
    assert copy.headers[DETAIL_HEADER] == "x" * 1000  # bounded
    assert copy.headers[QUEUE_HEADER] == intake
    assert copy.headers["h"] == "v"
    assert d.headers == {"h": "v"}  # the delivery's own headers are untouched
    reply = broker.get(reply_q, timeout=DEADLINE)
    assert reply is not None
    assert (reply.body, reply.correlation_id) == (b"the error", "c1")


def test_ack_sends_the_reply_only_when_asked(broker: MemoryBroker) -> None:
    topo = broker.topology
    reply_q = broker.reply_queue()
    broker.publish(msg(topo.commands_exchange, "a", b"1", message_id="m1", reply_to=reply_q))
    broker.publish(msg(topo.commands_exchange, "a", b"2", message_id="m2"))
    taker = Taker(broker, topo.queue(Consumer.INTAKE))
    taker.consumer.start()
    try:
        taker.take().ack(b"answer")
        taker.take().ack(b"no reply_to: dropped")
    finally:
        taker.consumer.stop()
    out = broker.get(reply_q, timeout=DEADLINE)
    assert out is not None
    # the AMQP type is the reply envelope's (tests/actors: CommandResult, SearchResults);
    # these bare bodies have none
    assert (out.body, out.correlation_id, out.type) == (b"answer", "m1", None)
    assert broker.depth(reply_q) == 0


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


def test_dead_lettering_onto_a_full_dead_letter_queue_gives_the_message_back() -> None:
    b = make_broker(dead_letter_max_length=1)
    topo = b.topology
    intake = topo.queue(Consumer.INTAKE)
    b.publish(msg(topo.dead_letter_exchange, "", b"already dead"))  # the DLQ is full
    b.publish(msg(topo.commands_exchange, "a", b"bad", message_id="m1"))
    taker = Taker(b, intake, prefetch=1)
    taker.consumer.start()
    try:
        d = taker.take()
        d.dead_letter("not_json", "detail")  # must not raise
        again = taker.take()  # given back, so it comes again
        assert again.message_id == "m1"
        again.ack()
    finally:
        taker.consumer.stop()
