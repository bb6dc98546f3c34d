"""Command partitions over several nodes: one consumer each, even spread, handoffs.

The nodes run in this process (each with its own connections, writer and actors) on
the session's broker and one store; ``tests/faults`` kills node processes for real.
"""

from __future__ import annotations

from collections.abc import Callable

import pika
import pytest

from broker.client import Client
from broker.membership import NodeNameInUse, balanced
from broker.rabbitmq import connection_parameters
from messages import AddApartment, Envelope, RequestReservation, SearchApartments
from node import Node
from tests.conftest import day, eventually

FAST = {"heartbeat_seconds": 0.2, "member_timeout_seconds": 1.0, "drain_seconds": 5.0}


def _spread(nodes: list[Node]) -> dict[str, set[int]]:
    out = {}
    for n in nodes:
        assert n.partitions is not None
        out[n.settings.node_name] = n.partitions.held()
    return out


def _settled(nodes: list[Node], partitions: int) -> bool:
    """Every partition held by exactly one node, and the spread is even."""
    spread = _spread(nodes)
    held = [p for ps in spread.values() for p in ps]
    return (sorted(held) == list(range(partitions))
            and balanced([len(ps) for ps in spread.values()], partitions))


def _add(client: Client, apartments: list[str]) -> None:
    """List each apartment, one request at a time, each answered ok."""
    for apt in apartments:
        env = Envelope.new(AddApartment(owner_id="o", city="Oslo", title="t",
                                        price_per_night=10, currency="EUR", capacity=2),
                           apartment_id=apt)
        assert client.request(env, timeout=20).payload.status == "ok"  # type: ignore[attr-defined]


def _consumers(url: str, queues: list[str]) -> list[int]:
    conn = pika.BlockingConnection(connection_parameters(url))
    try:
        ch = conn.channel()
        return [ch.queue_declare(q, passive=True).method.consumer_count for q in queues]
    finally:
        conn.close()


def test_three_nodes_share_the_partitions_evenly_and_follow_joins_and_leaves(
        node_factory: Callable[..., Node], amqp_url: str) -> None:
    a = node_factory(node_name="a", roles=["commands"], cluster=FAST)
    parts_n = a.topology.partitions
    eventually(lambda: _settled([a], parts_n))
    b = node_factory(node_name="b", roles=["commands"], cluster=FAST)
    c = node_factory(node_name="c", roles=["commands"], cluster=FAST)
    eventually(lambda: _settled([a, b, c], parts_n), timeout=30)
    # The broker agrees: one subscribed consumer per partition queue (once the last
    # released partition finished draining).
    eventually(lambda: _consumers(amqp_url, a.topology.intake_queues()) == [1] * parts_n)
    # Commands reach an apartment whichever node owns its partition.
    with Client(amqp_url, a.topology) as client:
        for i in range(12):
            env = Envelope.new(AddApartment(owner_id="o", city="Oslo", title=f"t{i}",
                                            price_per_night=10, currency="EUR", capacity=2),
                               apartment_id=f"apt-{i}")
            assert client.request(env, timeout=20).payload.status == "ok"  # type: ignore[attr-defined]
    owners = {n.settings.node_name for n in (a, b, c) if n.directory.live}
    assert len(owners) >= 2  # the apartments really were spread over the nodes
    # A graceful leave hands its partitions over; the two left share all of them.
    c.stop()
    eventually(lambda: _settled([a, b], parts_n), timeout=30)
    eventually(lambda: _consumers(amqp_url, a.topology.intake_queues()) == [1] * parts_n)


def test_a_second_node_with_a_name_in_use_refuses_to_start(
        node_factory: Callable[..., Node]) -> None:
    node_factory(node_name="same", roles=["commands"])
    with pytest.raises(NodeNameInUse, match="already in use"):
        node_factory(node_name="same", roles=["commands"])


def test_a_handoff_requeues_nothing_that_was_handled(
        node_factory: Callable[..., Node], amqp_url: str) -> None:
    """Commands keep flowing while a second node joins and takes half the partitions.

    Every command is answered once, none is handled twice (no redelivery reached an
    actor: the inbox would have answered it), and the store holds one event each.
    """
    a = node_factory(node_name="a", roles=["commands"], cluster=FAST)
    parts_n = a.topology.partitions
    eventually(lambda: _settled([a], parts_n))
    with Client(amqp_url, a.topology) as client:
        _add(client, [f"h-{i}" for i in range(8)])
        sent: list[Envelope] = []
        b = None
        for k in range(30):
            for i in range(8):
                env = Envelope.new(RequestReservation(
                    reservation_id=f"r{k}-{i}", guest_id="g", start=day(k * 3),
                    end=day(k * 3 + 2)), apartment_id=f"h-{i}")
                client.publish(env)
                sent.append(env)
            if k == 5:
                b = node_factory(node_name="b", roles=["commands"], cluster=FAST)
        replies = [client.wait_reply(e.message_id, timeout=60) for e in sent]
    assert b is not None
    eventually(lambda: _settled([a, b], parts_n), timeout=30)
    assert all(r.payload.status == "ok" for r in replies)  # type: ignore[attr-defined]
    assert a.partitions is not None and b.partitions is not None
    assert a.partitions.released >= parts_n // 2 - 1


def test_a_node_keeps_no_actor_of_a_partition_it_gave_away(
        node_factory: Callable[..., Node], amqp_url: str) -> None:
    """Actors do not outlive their partition: after a handoff the old owner holds no
    live actor fed from a partition it released, so it never decides from memory
    kept across a time another node owned the apartment."""
    a = node_factory(node_name="a", roles=["commands"], cluster=FAST)
    parts_n = a.topology.partitions
    eventually(lambda: _settled([a], parts_n))
    with Client(amqp_url, a.topology) as client:
        _add(client, [f"k-{i}" for i in range(24)])
    assert a.directory.live == 24
    b = node_factory(node_name="b", roles=["commands"], cluster=FAST)
    eventually(lambda: _settled([a, b], parts_n), timeout=30)
    assert a.partitions is not None
    held = {a.topology.partition_queue(p) for p in a.partitions.held()}
    sources = {row["source"] for row in a.directory.which_children()}
    assert sources <= held
    assert a.directory.released == 24 - a.directory.live > 0


def test_a_partition_consumer_that_stopped_is_started_again(
        node_factory: Callable[..., Node], amqp_url: str) -> None:
    a = node_factory(node_name="a", roles=["commands"], cluster=FAST)
    parts = a.partitions
    assert parts is not None
    eventually(lambda: _settled([a], a.topology.partitions))
    victim = parts.consumers()[0]
    victim.stop(0.0)  # it stops consuming, as if it had died
    eventually(lambda: parts.restarted >= 1 and victim.is_alive(), timeout=15)
    eventually(lambda: _consumers(amqp_url, a.topology.intake_queues()[:1]) == [1])


def test_search_answers_the_same_on_every_node(
        node_factory: Callable[..., Node], amqp_url: str) -> None:
    """Both nodes run a search actor on the shared read model; queries go to either."""
    a = node_factory(node_name="a", cluster=FAST)
    b = node_factory(node_name="b", cluster=FAST)
    with Client(amqp_url, a.topology) as client:
        for i in range(6):
            env = Envelope.new(AddApartment(owner_id="o", city="Bergen", title=f"t{i}",
                                            price_per_night=100 + i, currency="EUR", capacity=2),
                               apartment_id=f"s-{i}")
            assert client.request(env, timeout=20).payload.status == "ok"  # type: ignore[attr-defined]

        def ids() -> list[str]:
            reply = client.request(Envelope.new(SearchApartments(city="bergen")), timeout=20)
            return [x["apartment_id"] for x in reply.payload.model_dump()["apartments"]]

        eventually(lambda: len(ids()) == 6)
        answers = [ids() for _ in range(12)]
    assert all(x == answers[0] for x in answers)
    handled = [n.counters.events_handled for n in (a, b)]
    assert all(h > 0 for h in handled)  # both nodes' handlers took part
