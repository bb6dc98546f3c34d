"""End to end over a real RabbitMQ: the demo, racing producers, bad input."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pika

from broker.client import Client
from console.demo import run_demo
from messages import AcceptReservation, AddApartment, Envelope, RequestReservation
from node import Node
from tests.conftest import TODAY, day, eventually, recorded_dead_letters


def test_the_demo_tells_the_story(node: Node, amqp_url: str) -> None:
    from actors.notifier import notifications

    lines: list[str] = []
    result = run_demo(amqp_url, node.topology, out=lines.append, today=TODAY,
                      notified=lambda who: [str(n["subject"])
                                            for n in notifications(node.engine, who)])
    text = "\n".join(lines)
    assert "already_taken" in text and "The story holds" in text
    assert "A notified (Your request was accepted, Booking confirmed)" in text
    assert result.notified_a is not None
    assert {"Your request was accepted", "Booking confirmed"} <= set(result.notified_a)
    assert [e["type"] for e in result.events].count("PaymentSucceeded") == 1
    # Without access to the store it claims nothing about notifications.
    lines.clear()
    run_demo(amqp_url, node.topology, out=lines.append, today=TODAY)
    assert "A's notifications not checked" in "\n".join(lines)


def _send(client: Client, payload: Any, apt: str) -> dict[str, Any]:
    reply = client.request(Envelope.new(payload, apartment_id=apt), timeout=20)
    data: dict[str, Any] = reply.payload.model_dump(mode="json")
    return data


def test_racing_producers_exactly_one_accepted(node: Node, amqp_url: str,
                                               client: Client) -> None:
    assert _send(client, AddApartment(owner_id="o", city="Rome", title="T",
                                      price_per_night=100,
                                      currency="EUR", capacity=4), "hot")["status"] == "ok"
    n = 8
    results: dict[str, dict[str, Any]] = {}

    def guest(i: int) -> None:
        with Client(amqp_url, node.topology) as c:
            rid = f"r{i}"
            r = _send(c, RequestReservation(reservation_id=rid, guest_id=f"g{i}",
                                            start=day(10 + i % 2), end=day(13)), "hot")
            if r["status"] != "ok":  # someone was accepted before this request arrived
                assert r["reason"] == "already_taken", r
                results[rid] = r
                return
            results[rid] = _send(c, AcceptReservation(reservation_id=rid, owner_id="o"), "hot")

    threads = [threading.Thread(target=guest, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == n
    accepted = [rid for rid, r in results.items() if r["status"] == "ok"]
    assert len(accepted) == 1, results
    assert all(r["reason"] in ("already_taken", "not_pending")
               for rid, r in results.items() if rid not in accepted)


def _dead_letters(url: str, queue: str, expected: int, timeout: float = 20) -> list[
        tuple[dict[str, Any], bytes]]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    out: list[tuple[dict[str, Any], bytes]] = []
    try:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.1)
                continue
            out.append((dict(props.headers or {}), body))
    finally:
        conn.close()
    return out


def test_malformed_messages_are_dead_lettered_and_the_node_still_serves(
        node: Node, amqp_url: str, client: Client) -> None:
    topo = node.topology
    good = {"message_id": "m1", "correlation_id": "m1", "type": "AddApartment", "version": 1,
            "apartment_id": "a1", "payload": {"owner_id": "o"}}
    bad: list[tuple[bytes, str]] = [
        (b"\x00\xffgarbage", "not_json"),
        (b"[1,2,3]", "not_object"),
        (json.dumps({**good, "message_id": "m2", "type": "Teleport"}).encode(), "unknown_type"),
        (json.dumps({**good, "message_id": "m3", "version": 7}).encode(),
         "unsupported_version"),
        (json.dumps({**good, "message_id": "m4"}).encode(), "schema_error"),
        (b'{"pad": "' + b"x" * 70_000 + b'"}', "too_large"),
    ]
    for i, (body, _reason) in enumerate(bad):
        client.publish_raw(topo.commands_exchange, "a1", body, message_id=f"bad{i}")
    replies = [client.wait_raw_reply(f"bad{i}", timeout=20) for i in range(len(bad))]
    assert [r["payload"]["status"] for r in replies] == ["error"] * len(bad)
    assert [r["payload"]["reason"] for r in replies] == [reason for _b, reason in bad]

    # Each lands in the dead letters and is recorded in the node's book, then acked.
    letters = [r.letter for r in recorded_dead_letters(node, len(bad))]
    assert sorted(str(x.reason) for x in letters) == sorted(r for _b, r in bad)
    assert all(x.detail for x in letters)
    assert {x.body for x in letters} == {b for b, _r in bad}  # the bodies, untouched
    assert len({x.queue for x in letters}) == 1  # a1's partition
    assert letters[0].queue in topo.intake_queues()

    r = _send(client, AddApartment(owner_id="o", city="Oslo", title="T", price_per_night=1,
                                   currency="EUR", capacity=1), "a1")
    assert r["status"] == "ok"


def test_unanswered_commands_survive_a_node_restart(
        node_factory: Callable[..., Node], amqp_url: str) -> None:
    first = node_factory()
    with Client(amqp_url, first.topology) as c:
        assert _send(c, AddApartment(owner_id="o", city="Oslo", title="T", price_per_night=1,
                                     currency="EUR", capacity=1), "a1")["status"] == "ok"
    first.stop()
    with Client(amqp_url, first.topology) as c:
        env = Envelope.new(RequestReservation(reservation_id="r1", guest_id="g",
                                              start=day(3), end=day(5)), apartment_id="a1")
        c.publish(env)  # queued while no node runs
        second = node_factory()
        reply = c.wait_reply(env.message_id, timeout=30)
        assert reply.payload.model_dump()["status"] == "ok"
        assert second.directory.live >= 1


def test_events_nobody_consumes_do_not_block_the_relay(node: Node, client: Client) -> None:
    """NotificationSent has no consumer: it must go to the unrouted queue, not jam the relay."""
    assert _send(client, AddApartment(owner_id="o", city="Oslo", title="T", price_per_night=10,
                                      currency="EUR", capacity=2), "a1")["status"] == "ok"
    assert _send(client, RequestReservation(reservation_id="r1", guest_id="g", start=day(3),
                                            end=day(5)), "a1")["status"] == "ok"
    assert _send(client, AcceptReservation(reservation_id="r1", owner_id="o"),
                 "a1")["status"] == "ok"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        confirmed = [e for e in node.store.load("reservation:r1")
                     if e.type == "ReservationConfirmed"]
        if confirmed and node.relay.backlog() == 0:
            break
        time.sleep(0.1)
    assert confirmed, "the payment and confirmation never happened"
    assert node.relay.backlog() == 0
    assert node.relay.failures == 0


def test_commands_and_events_roles_in_two_nodes_on_one_store(
        node_factory: Callable[..., Node], amqp_url: str) -> None:
    """One node runs the intake and the apartments, the other the event handlers."""
    commands = node_factory(roles=["commands"], node_name="n-commands")
    events = node_factory(roles=["events"], node_name="n-events")
    parts = commands.partitions
    # Every node records dead letters; the intake is the partitions' business.
    assert commands.consumers.keys() == {"dead-letters"} and parts is not None
    assert events.consumers.keys() == {"search", "payment", "notifier", "reservations",
                                       "dead-letters"}
    assert events.partitions is None and events.membership is None
    eventually(lambda: len(parts.held()) == commands.topology.partitions)
    with Client(amqp_url, commands.topology) as c:
        assert _send(c, AddApartment(owner_id="o", city="Oslo", title="T",
                                     price_per_night=10,
                                     currency="EUR", capacity=2), "a1")["status"] == "ok"
        assert _send(c, RequestReservation(reservation_id="r1", guest_id="g", start=day(3),
                                           end=day(5)), "a1")["status"] == "ok"
        assert _send(c, AcceptReservation(reservation_id="r1", owner_id="o"),
                     "a1")["status"] == "ok"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(e.type == "ReservationConfirmed" for e in events.store.load("reservation:r1")):
            break
        time.sleep(0.1)
    assert any(e.type == "ReservationConfirmed" for e in events.store.load("reservation:r1"))
    assert events.directory.live >= 1  # the reservation process ran in the events node
    assert commands.directory.ref("reservation:r1") is None
