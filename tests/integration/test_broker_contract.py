"""One contract for both brokers: the in-memory twin and a real RabbitMQ.

Every test here runs twice, on :class:`broker.memory.MemoryBroker` and on
:class:`broker.rabbitmq.RabbitBroker` over the session's private RabbitMQ node, through
the same :class:`Harness`: the broker's own interface (consumers, deliveries,
publishers) plus what a test needs to reach its queues from outside (publish, get,
count). The unit and actor tests trust the twin; this suite is what keeps it honest.

The RabbitMQ side gets a topology of its own per test (a unique prefix, deleted after),
so nothing leaks between tests; the broker process is the session's one.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import NackError, UnroutableError

from broker import DETAIL_HEADER, QUEUE_HEADER, REASON_HEADER, Broker, Delivery, Outgoing
from broker.memory import MemoryBroker, QueueFull, Unroutable
from broker.rabbitmq import PublishFailed, RabbitBroker, connection_parameters, properties_of
from broker.topology import Topology
from messages import Consumer, Kind, all_specs
from tests.conftest import eventually, unique

DEADLINE = 10.0  # only ever waited out when a test fails
DELIVERY_COUNT = "x-delivery-count"


class Refused(Exception):
    """A bounded queue refused a publish (RabbitMQ's reject-publish: a nack)."""


class Harness(ABC):
    """A broker under test, and a test's way in from outside its consumers."""

    broker: Broker
    publish_errors: tuple[type[Exception], ...]  # what the broker's publisher raises

    @property
    def topology(self) -> Topology:
        """The broker's topology."""
        return self.broker.topology

    @abstractmethod
    def publish(self, out: Outgoing) -> bool:
        """Publish with a confirm; False when no queue took it.

        Raises:
            Refused: a bounded target queue refused it.
        """

    @abstractmethod
    def get(self, queue_name: str, timeout: float = DEADLINE) -> Outgoing | None:
        """Take the next ready message off a queue (acked), waiting up to ``timeout``."""

    @abstractmethod
    def ready(self, queue_name: str) -> int:
        """How many messages of a queue are ready (unacked ones are not counted)."""

    @abstractmethod
    def reply_queue(self) -> str:
        """A fresh queue for replies, named as the broker names it."""

    @abstractmethod
    def close(self) -> None:
        """Release the broker and what this test declared on it."""

    def drain(self, queue_name: str) -> list[Outgoing]:
        """Take every ready message off a queue."""
        out = []
        while (m := self.get(queue_name, timeout=0)) is not None:
            out.append(m)
        return out

    def ready_everywhere(self) -> dict[str, int]:
        """The ready count of every queue of the topology."""
        return {q.name: self.ready(q.name) for q in self.topology.queues()}


class MemoryHarness(Harness):
    """The twin: the broker's own test API, QueueFull read as a refusal."""

    publish_errors = (QueueFull, Unroutable)

    def __init__(self, topology: Topology) -> None:
        self.memory = MemoryBroker(topology)
        self.broker = self.memory
        self.memory.declare()

    def publish(self, out: Outgoing) -> bool:
        try:
            return self.memory.publish(out)
        except QueueFull as exc:
            raise Refused(str(exc)) from exc

    def get(self, queue_name: str, timeout: float = DEADLINE) -> Outgoing | None:
        return self.memory.get(queue_name, timeout)

    def ready(self, queue_name: str) -> int:
        return self.memory.ready(queue_name)

    def reply_queue(self) -> str:
        return self.memory.reply_queue()

    def close(self) -> None:
        self.memory.close()


class RabbitHarness(Harness):
    """RabbitMQ: one connection of the test's own, a confirming channel on it."""

    publish_errors = (PublishFailed,)

    def __init__(self, url: str, topology: Topology) -> None:
        self.rabbit = RabbitBroker(url, topology, heartbeat=30, reconnect_max_delay=0.5,
                                   drain_seconds=DEADLINE)
        self.broker = self.rabbit
        self.rabbit.declare()
        self._conn = pika.BlockingConnection(connection_parameters(url))
        self._ch: BlockingChannel = self._conn.channel()
        self._ch.confirm_delivery()

    def publish(self, out: Outgoing) -> bool:
        try:
            self._ch.basic_publish(out.exchange, out.routing_key, out.body,
                                   properties_of(out), mandatory=True)
        except UnroutableError:
            return False
        except NackError as exc:
            raise Refused(f"{out.exchange} -> {out.routing_key}") from exc
        return True

    def get(self, queue_name: str, timeout: float = DEADLINE) -> Outgoing | None:
        deadline = time.monotonic() + timeout
        while True:
            method, props, body = self._ch.basic_get(queue_name, auto_ack=True)
            if method is not None:
                # basic.get stamps its own delivery count on every message it reads
                headers = {k: v for k, v in (props.headers or {}).items()
                           if k != DELIVERY_COUNT}
                return Outgoing(method.exchange, method.routing_key, body,
                                message_id=props.message_id,
                                correlation_id=props.correlation_id, type=props.type,
                                reply_to=props.reply_to, headers=headers,
                                persistent=props.delivery_mode == 2)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def ready(self, queue_name: str) -> int:
        count: int = self._ch.queue_declare(queue_name, passive=True).method.message_count
        return count

    def reply_queue(self) -> str:
        name: str = self._ch.queue_declare("", exclusive=True).method.queue
        return name

    def close(self) -> None:
        self.rabbit.close()
        with contextlib.suppress(pika.exceptions.AMQPError):
            for q in self.topology.queues():
                self._ch.queue_delete(q.name)
            for ex in self.topology.exchanges():
                self._ch.exchange_delete(ex.name)
        self._conn.close()


MakeBroker = Callable[..., Harness]


@pytest.fixture(params=["memory", "rabbitmq"])
def make_broker(request: pytest.FixtureRequest) -> Iterator[MakeBroker]:
    """A maker of brokers of one kind (each test runs on both), with a topology whose
    bounds it is given; the RabbitMQ node is started only for the RabbitMQ cases."""
    url: str | None = (request.getfixturevalue("amqp_url")
                       if request.param == "rabbitmq" else None)
    made: list[Harness] = []

    def make(*, queue_max_length: int = 1_000, dead_letter_max_length: int = 1_000,
             delivery_limit: int = 5) -> Harness:
        topo = Topology(prefix=unique("contract"), queue_max_length=queue_max_length,
                        dead_letter_max_length=dead_letter_max_length,
                        delivery_limit=delivery_limit)
        h: Harness = MemoryHarness(topo) if url is None else RabbitHarness(url, topo)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


@pytest.fixture
def broker(make_broker: MakeBroker) -> Harness:
    """A broker of each kind with roomy bounds."""
    return make_broker()


def msg(exchange: str, key: str = "", body: bytes = b"x", **kw: Any) -> Outgoing:
    return Outgoing(exchange, key, body, **kw)


def intake_of(h: Harness) -> str:
    return h.topology.queue(Consumer.INTAKE)


class Taker:
    """A consumer that hands each delivery to the test, unsettled."""

    def __init__(self, h: Harness, queue_name: str, prefetch: int = 10,
                 drain_seconds: float = DEADLINE) -> None:
        self.deliveries: queue.Queue[Delivery] = queue.Queue()
        self.consumer = h.broker.consumer(queue_name, self.deliveries.put, prefetch=prefetch,
                                          name=unique("taker-"), drain_seconds=drain_seconds)

    def take(self, timeout: float = DEADLINE) -> Delivery:
        return self.deliveries.get(timeout=timeout)

    def nothing_more(self, wait: float = 0.2) -> bool:
        """No delivery came within ``wait`` seconds."""
        try:
            extra = self.deliveries.get(timeout=wait)
        except queue.Empty:
            return True
        self.deliveries.put(extra)
        return False


@contextlib.contextmanager
def taking(h: Harness, queue_name: str, prefetch: int = 10,
           drain_seconds: float = DEADLINE) -> Iterator[Taker]:
    """A started :class:`Taker`, stopped on exit: its stop settles what was settled."""
    t = Taker(h, queue_name, prefetch, drain_seconds)
    t.consumer.start()
    try:
        yield t
    finally:
        t.consumer.stop()


# --- routing -------------------------------------------------------------------------
def test_commands_reach_the_intake_whatever_their_key(broker: Harness) -> None:
    topo = broker.topology
    for key in ("apt-1", "apt.2", "x"):
        assert broker.publish(msg(topo.commands_exchange, key))
    expected = dict.fromkeys(broker.ready_everywhere(), 0)
    expected[intake_of(broker)] = 3
    eventually(lambda: broker.ready_everywhere() == expected, DEADLINE)


def bound_queues(topo: Topology, exchange: str) -> set[str]:
    return {b.queue for b in topo.bindings() if b.exchange == exchange}


def test_every_exchange_routes_to_exactly_its_bound_queues(broker: Harness) -> None:
    topo = broker.topology
    for ex in topo.exchanges():
        expected = bound_queues(topo, ex.name)
        alternate = ex.arguments.get("alternate-exchange")
        if not expected and alternate is not None:
            expected = bound_queues(topo, alternate)  # nobody bound: the alternate takes it
        assert broker.publish(msg(ex.name, "apt-1", ex.name.encode())) == bool(expected), (
            ex.name)
        got = {name for name, n in broker.ready_everywhere().items() if n}
        assert got == expected, ex.name
        for name in got:  # one copy each, the same body
            assert [o.body for o in broker.drain(name)] == [ex.name.encode()]


def test_each_event_reaches_every_consumer_registered_for_it(broker: Harness) -> None:
    topo = broker.topology
    for spec in all_specs():
        if spec.kind is not Kind.EVENT:
            continue
        assert broker.publish(msg(topo.exchange(spec.exchange), "apt-1", spec.type.encode(),
                                  message_id=spec.type))
        # nobody consumes it (yet): kept in the unrouted queue, not returned
        targets = [topo.queue(c) for c in spec.consumers] or [topo.unrouted_queue]
        for name in targets:
            assert [o.message_id for o in broker.drain(name)] == [spec.type], (
                spec.type, name)
        assert not any(broker.ready_everywhere().values()), spec.type  # and no other


def test_queries_fan_out_to_search(broker: Harness) -> None:
    topo = broker.topology
    assert broker.publish(msg(topo.queries_exchange, "", b"q"))
    expected = dict.fromkeys(broker.ready_everywhere(), 0)
    expected[topo.queue(Consumer.SEARCH)] = 1
    assert broker.ready_everywhere() == expected


def test_the_default_exchange_routes_by_queue_name(broker: Harness) -> None:
    topo = broker.topology
    reply = broker.reply_queue()
    assert broker.publish(msg("", reply, b"r"))
    assert broker.ready(reply) == 1
    assert broker.publish(msg("", topo.queue(Consumer.PAYMENT), b"p"))
    assert broker.ready(topo.queue(Consumer.PAYMENT)) == 1
    assert not broker.publish(msg("", unique("no-such-queue-")))  # returned, not an error
    assert broker.publish(msg(topo.dead_letter_exchange))
    assert broker.ready(topo.dead_letter_queue) == 1


def test_declare_is_idempotent(broker: Harness) -> None:
    broker.broker.declare()
    assert broker.publish(msg(broker.topology.queries_exchange))
    assert broker.ready(broker.topology.queue(Consumer.SEARCH)) == 1  # not bound twice


def test_the_publisher_confirms_or_raises(broker: Harness) -> None:
    """What the outbox relay relies on: confirmed means routed; unroutable raises."""
    topo = broker.topology
    pub = broker.broker.publisher()
    try:
        pub.publish_confirmed([msg(topo.commands_exchange, "a", b"1", message_id="m1"),
                               msg(topo.queries_exchange, "", b"2", message_id="m2")])
        assert [o.body for o in broker.drain(intake_of(broker))] == [b"1"]
        assert [o.body for o in broker.drain(topo.queue(Consumer.SEARCH))] == [b"2"]
        with pytest.raises(broker.publish_errors):
            pub.publish_confirmed([msg("", unique("nowhere-"), message_id="m3")], timeout=5)
    finally:
        pub.close()


def test_a_message_keeps_its_body_and_properties(broker: Harness) -> None:
    """Far beyond the intake's own size limit, still untouched: the broker sets none."""
    topo = broker.topology
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value
    sent = msg(topo.commands_exchange, "apt-9", body, message_id="m1", correlation_id="c1",
               type="T", reply_to="rq", headers={"h": "v", "n": 7})
    assert broker.publish(sent)
    assert broker.get(intake_of(broker)) == sent


def test_persistence_is_kept_as_published(broker: Harness) -> None:
    topo = broker.topology
    for persistent in (True, False):
        assert broker.publish(msg(topo.commands_exchange, "a", persistent=persistent))
        got = broker.get(intake_of(broker))
        assert got is not None and got.persistent is persistent


# --- bounded queues ------------------------------------------------------------------
def fill(h: Harness, out: Outgoing) -> int:
    """Publish ``out`` until its queue refuses it; how many it took."""
    for taken in range(100):
        try:
            h.publish(out)
        except Refused:
            return taken
    raise AssertionError("never refused")


def test_a_full_work_queue_refuses_publishes_until_drained_to_its_soft_limit(
        make_broker: MakeBroker) -> None:
    """Quorum reject-publish: the publish that crosses the bound is taken, then none
    until the ready messages are down to 80 % of it; the old ones all stay."""
    b = make_broker(queue_max_length=5)
    topo = b.topology
    intake = intake_of(b)
    for i in range(6):
        assert b.publish(msg(topo.commands_exchange, "a", f"{i}".encode()))
    with pytest.raises(Refused):
        b.publish(msg(topo.commands_exchange, "a", b"refused"))
    assert b.ready(intake) == 6
    got = b.get(intake)
    assert got is not None and got.body == b"0"
    with pytest.raises(Refused):  # 5 ready: at the bound, above its 80 %
        b.publish(msg(topo.commands_exchange, "a", b"refused"))
    assert b.get(intake) is not None  # 4 ready: 80 % of 5
    eventually(lambda: b.publish(msg(topo.commands_exchange, "a", b"6")), DEADLINE)
    assert [o.body for o in b.drain(intake)] == [b"2", b"3", b"4", b"5", b"6"]


def test_the_unrouted_queue_drops_its_oldest_when_full(make_broker: MakeBroker) -> None:
    """Events nobody consumes are kept, bounded; publishing them never fails."""
    b = make_broker(dead_letter_max_length=3)
    topo = b.topology
    [ex] = [e.name for e in topo.exchanges() if "NotificationSent" in e.name]
    for i in range(5):
        assert b.publish(msg(ex, "", f"{i}".encode()))
    assert [o.body for o in b.drain(topo.unrouted_queue)] == [b"2", b"3", b"4"]


def test_an_event_refused_by_one_full_queue_still_reaches_the_others(
        make_broker: MakeBroker) -> None:
    """The publisher gets a nack, and the other bound queues a copy each: a retry
    duplicates it there (the handlers' inboxes absorb that)."""
    b = make_broker(queue_max_length=1)
    topo = b.topology
    spec = next(s for s in all_specs() if s.kind is Kind.EVENT and len(s.consumers) > 1)
    full, *others = sorted(topo.queue(c) for c in spec.consumers)
    assert fill(b, msg("", full, b"filler")) == 2
    with pytest.raises(Refused):
        b.publish(msg(topo.exchange(spec.exchange), "", b"event"))
    assert b.ready(full) == 2
    for name in others:
        assert [o.body for o in b.drain(name)] == [b"event"]


def test_unacked_messages_do_not_count_toward_the_max_length(
        make_broker: MakeBroker) -> None:
    b = make_broker(queue_max_length=2)
    topo = b.topology
    with taking(b, intake_of(b)) as taker:
        assert b.publish(msg(topo.commands_exchange, "a", b"0"))
        assert b.publish(msg(topo.commands_exchange, "a", b"1"))
        held = [taker.take(), taker.take()]  # both unacked, none ready
        assert b.publish(msg(topo.commands_exchange, "a", b"2"))
        assert b.publish(msg(topo.commands_exchange, "a", b"3"))
        held += [taker.take(), taker.take()]
        assert [d.body for d in held] == [b"0", b"1", b"2", b"3"]
        for d in held:
            d.ack()


def test_dead_lettering_onto_a_full_dead_letter_queue_gives_the_message_back(
        make_broker: MakeBroker) -> None:
    b = make_broker(dead_letter_max_length=1)
    topo = b.topology
    assert fill(b, msg(topo.dead_letter_exchange, "", b"already dead")) >= 1
    assert b.publish(msg(topo.commands_exchange, "a", b"bad", message_id="m1"))
    with taking(b, intake_of(b), prefetch=1) as taker:
        taker.take().dead_letter("not_json", "detail")  # must not raise
        again = taker.take()  # given back, so it comes again
        assert (again.message_id, again.redelivered) == ("m1", True)
        again.ack()


# --- prefetch ------------------------------------------------------------------------
def test_a_consumer_holds_at_most_prefetch_unsettled_deliveries(broker: Harness) -> None:
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
        assert broker.publish(msg(topo.commands_exchange, "a", f"{i}".encode()))
    c = broker.broker.consumer(intake_of(broker), on_delivery, prefetch=3, name="p")
    c.start()
    try:
        bodies: list[bytes] = []
        while len(bodies) < 12:
            d = got.get(timeout=DEADLINE)
            bodies.append(d.body)
            d.ack()
        assert bodies == [f"{i}".encode() for i in range(12)]  # in order
        assert high_water <= 3
    finally:
        c.stop()
    assert broker.ready(intake_of(broker)) == 0


def test_deliveries_stop_at_the_prefetch_until_one_is_settled(broker: Harness) -> None:
    topo = broker.topology
    intake = intake_of(broker)
    for i in range(5):
        assert broker.publish(msg(topo.commands_exchange, "a", f"{i}".encode()))
    with taking(broker, intake, prefetch=2) as taker:
        held = [taker.take(), taker.take()]
        # with two unacked, the other three must still be ready: take them ourselves
        assert [o.body for o in broker.drain(intake)] == [b"2", b"3", b"4"]
        assert taker.nothing_more()
        assert broker.publish(msg(topo.commands_exchange, "a", b"5"))
        held[0].ack()
        resumed = taker.take()
        assert resumed.body == b"5"  # a slot freed: delivery resumes
        for d in (*held[1:], resumed):
            d.ack()


# --- replies -------------------------------------------------------------------------
def test_ack_sends_the_reply_only_when_asked(broker: Harness) -> None:
    topo = broker.topology
    reply_q = broker.reply_queue()
    answer = json.dumps({"message_id": "r1", "type": "CommandResult"},
                        separators=(",", ":")).encode()
    assert broker.publish(msg(topo.commands_exchange, "a", b"1", message_id="m1",
                              reply_to=reply_q))
    assert broker.publish(msg(topo.commands_exchange, "a", b"2", message_id="m2",
                              correlation_id="c2", reply_to=reply_q))
    assert broker.publish(msg(topo.commands_exchange, "a", b"3", message_id="m3"))
    with taking(broker, intake_of(broker)) as taker:
        taker.take().ack(answer)
        taker.take().ack(b"bare")
        taker.take().ack(b"no reply_to: dropped")
    first, second = broker.get(reply_q), broker.get(reply_q)
    assert first is not None and second is not None
    # answered to the correlation id, else the message id; typed by the envelope
    assert (first.body, first.correlation_id, first.type, first.persistent) == (
        answer, "m1", "CommandResult", False)
    assert (second.body, second.correlation_id, second.type) == (b"bare", "c2", None)
    assert broker.ready(reply_q) == 0
    assert broker.ready(intake_of(broker)) == 0


# --- requeue, redelivery, the delivery limit -----------------------------------------
def test_a_requeued_message_is_redelivered_marked_redelivered(broker: Harness) -> None:
    topo = broker.topology
    assert broker.publish(msg(topo.commands_exchange, "a", b"m", message_id="m1",
                              correlation_id="c1", reply_to="rq", headers={"h": 1}))
    with taking(broker, intake_of(broker)) as taker:
        first = taker.take()
        assert not first.redelivered
        first.requeue()
        again = taker.take()
        assert again.redelivered
        assert (again.body, again.message_id, again.correlation_id, again.reply_to,
                again.headers.get("h")) == (b"m", "m1", "c1", "rq", 1)
        again.ack()
    assert broker.ready(intake_of(broker)) == 0


def test_a_requeued_message_goes_back_to_the_head(broker: Harness) -> None:
    topo = broker.topology
    for body in (b"a", b"b"):
        assert broker.publish(msg(topo.commands_exchange, "k", body))
    with taking(broker, intake_of(broker), prefetch=1) as taker:
        first = taker.take()
        assert first.body == b"a"
        first.requeue()
        second = taker.take()
        assert (second.body, second.redelivered) == (b"a", True)
        second.ack()
        third = taker.take()
        assert (third.body, third.redelivered) == (b"b", False)
        third.ack()


def test_past_the_delivery_limit_a_message_is_dead_lettered_with_x_death(
        make_broker: MakeBroker) -> None:
    b = make_broker(delivery_limit=2)
    topo = b.topology
    intake = intake_of(b)
    deliveries: list[tuple[bool, object]] = []

    def always_requeue(d: Delivery) -> None:
        deliveries.append((d.redelivered, d.headers.get(DELIVERY_COUNT)))
        d.requeue()

    assert b.publish(msg(topo.commands_exchange, "apt-1", b"poison", message_id="m1",
                         headers={"keep": "me"}, persistent=False))
    c = b.broker.consumer(intake, always_requeue, prefetch=1, name="requeuer")
    c.start()
    try:
        copy = b.get(topo.dead_letter_queue)
    finally:
        c.stop()
    # delivered delivery_limit + 1 times (RabbitMQ: "more than the limit" returns),
    # each redelivery counting the ones before
    assert deliveries == [(False, None), (True, 1), (True, 2)]
    assert b.ready(intake) == 0
    assert copy is not None
    assert (copy.exchange, copy.routing_key, copy.body, copy.message_id, copy.persistent) == (
        topo.dead_letter_exchange, "apt-1", b"poison", "m1", False)
    assert copy.headers["keep"] == "me"
    [death] = copy.headers["x-death"]
    assert isinstance(death.pop("time"), datetime)
    assert death == {"count": 1, "reason": "delivery_limit", "queue": intake,
                     "exchange": topo.commands_exchange, "routing-keys": ["apt-1"]}
    assert (copy.headers["x-first-death-reason"], copy.headers["x-first-death-queue"],
            copy.headers["x-first-death-exchange"]) == (
        "delivery_limit", intake, topo.commands_exchange)


def test_the_dead_letter_queue_has_no_delivery_limit(make_broker: MakeBroker) -> None:
    b = make_broker(delivery_limit=1)
    dlq = b.topology.dead_letter_queue  # no x-delivery-limit: an operator's requeue never drops
    assert b.publish(msg(b.topology.dead_letter_exchange, "", b"d"))
    with taking(b, dlq) as taker:
        for _ in range(4):
            taker.take().requeue()
        taker.take().ack()
    assert b.ready(dlq) == 0


# --- settling once -------------------------------------------------------------------
def test_a_delivery_settles_once(broker: Harness) -> None:
    topo = broker.topology
    assert broker.publish(msg(topo.commands_exchange, "a", b"1", reply_to="nowhere"))
    with taking(broker, intake_of(broker)) as taker:
        d = taker.take()
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
        assert taker.nothing_more()  # not requeued
    assert broker.ready(intake_of(broker)) == 0
    assert broker.ready(topo.dead_letter_queue) == 0


def test_racing_settlements_have_one_winner(broker: Harness) -> None:
    topo = broker.topology
    intake, dlq = intake_of(broker), topo.dead_letter_queue
    n = 10
    for i in range(n):
        assert broker.publish(msg(topo.commands_exchange, "a", f"{i}".encode()))
    winners: dict[bytes, str] = {}  # the winning thread's name, per body

    def won(d: Delivery) -> None:
        """Run by the winner's thread, before its settle returns."""
        winners.setdefault(d.body, threading.current_thread().name)

    with taking(broker, intake) as taker:
        for _ in range(n):
            d = taker.take()
            assert not d.redelivered  # requeues go to the head, behind what was handed out
            d.on_settled(won)
            start = threading.Barrier(3)

            def settle(fn: Callable[[], None], start: threading.Barrier = start) -> None:
                start.wait()
                fn()

            def kill(d: Delivery = d) -> None:
                d.dead_letter("why", "detail")

            threads = [threading.Thread(target=settle, args=(f,), name=name)
                       for name, f in (("ack", d.ack), ("requeue", d.requeue),
                                       ("dead", kill))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert d.body in winners
        requeued = sorted(b for b, how in winners.items() if how == "requeue")
        again = [taker.take() for _ in requeued]
        assert all(d.redelivered for d in again)
        assert sorted(d.body for d in again) == requeued
        for d in again:
            d.ack()
        assert taker.nothing_more()
    killed = sorted(b for b, how in winners.items() if how == "dead")
    eventually(lambda: broker.ready(dlq) == len(killed), DEADLINE)
    # each message went one way only: never both requeued and dead-lettered, never twice
    assert sorted(o.body for o in broker.drain(dlq)) == killed
    assert broker.ready(intake) == 0


# --- stopping a consumer ---------------------------------------------------------------
def test_a_stop_waits_for_the_deliveries_handed_out(broker: Harness) -> None:
    """A graceful stop hands nothing back that is being handled: settles go through
    until the last one."""
    topo = broker.topology
    for i in range(2):
        assert broker.publish(msg(topo.commands_exchange, "a", f"{i}".encode()))
    taker = Taker(broker, intake_of(broker))
    taker.consumer.start()
    first, second = taker.take(), taker.take()
    stopped = threading.Event()

    def stop() -> None:
        taker.consumer.stop(DEADLINE)
        stopped.set()

    threading.Thread(target=stop, daemon=True).start()
    first.ack()
    assert not stopped.wait(0.3)  # the second is still out
    second.ack()
    assert stopped.wait(DEADLINE)
    assert broker.ready(intake_of(broker)) == 0  # both acked, none given back


def test_what_a_stop_leaves_unsettled_is_redelivered(broker: Harness) -> None:
    """Past its drain time a stop gives the rest back; a settle after that is moot."""
    topo = broker.topology
    for i in range(2):
        assert broker.publish(msg(topo.commands_exchange, "a", f"{i}".encode()))
    taker = Taker(broker, intake_of(broker), drain_seconds=0.2)
    taker.consumer.start()
    held = [taker.take(), taker.take()]
    taker.consumer.stop()
    held[0].ack()  # too late: the broker has it back
    with taking(broker, intake_of(broker)) as after:
        again = [after.take(), after.take()]
        assert sorted(d.body for d in again) == [b"0", b"1"]
        assert [(d.redelivered, d.headers.get(DELIVERY_COUNT)) for d in again] == [
            (True, 1), (True, 1)]
        for d in again:
            d.ack()
    assert broker.ready(intake_of(broker)) == 0


# --- dead-lettering by a node ---------------------------------------------------------
def test_dead_letter_puts_the_reason_on_the_copy_and_replies(broker: Harness) -> None:
    topo = broker.topology
    intake = intake_of(broker)
    reply_q = broker.reply_queue()
    assert broker.publish(msg(topo.commands_exchange, "apt-7", b"not json", message_id="m1",
                              correlation_id="c1", reply_to=reply_q, headers={"h": "v"}))
    with taking(broker, intake) as taker:
        d = taker.take()
        d.dead_letter("not_json", "x" * 5000, reply=b"the error")
    assert broker.ready(intake) == 0  # acked
    copy = broker.get(topo.dead_letter_queue)
    assert copy is not None
    assert (copy.exchange, copy.routing_key, copy.body, copy.message_id,
            copy.correlation_id, copy.reply_to, copy.persistent) == (
        topo.dead_letter_exchange, "apt-7", b"not json", "m1", "c1", reply_q, True)
    assert copy.headers[REASON_HEADER] == "not_json"
    assert copy.headers[DETAIL_HEADER] == "x" * 1000  # bounded
    assert copy.headers[QUEUE_HEADER] == intake
    assert copy.headers["h"] == "v"
    assert d.headers == {"h": "v"}  # the delivery's own headers are untouched
    reply = broker.get(reply_q)
    assert reply is not None
    assert (reply.body, reply.correlation_id) == (b"the error", "c1")
