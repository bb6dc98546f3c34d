"""Two nodes on one store and one broker: racing accepts never double-book; a producer
reads its own writes from search whichever node applies the events.

Both nodes consume the same intake queue (no partitions, no single active consumer:
the worst case), so each hot apartment has an actor on both nodes, deciding from its
own memory. Only the store's fence (expected version, in
the database) keeps their histories from forking.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

from broker.client import Client
from messages import (
    AcceptReservation,
    AddApartment,
    Envelope,
    Message,
    RequestReservation,
    SearchApartments,
)
from node import Node
from tests.conftest import day
from tests.faults.checker import count_overlaps, stored_events

APARTMENTS = ("hot-1", "hot-2")


def _send(client: Client, payload: Message, apt: str) -> dict[str, Any]:
    reply = client.request(Envelope.new(payload, apartment_id=apt), timeout=30, retries=4)
    data: dict[str, Any] = reply.payload.model_dump(mode="json")
    return data


def test_two_intake_nodes_on_one_store_never_overlap(
        node_factory: Callable[..., Node], amqp_url: str, db_url: str) -> None:
    """On SQLite (one file, two processes' worth of writers) and on PostgreSQL."""
    # No partitions: one intake queue with competing consumers, so both nodes get
    # commands for the same apartments at once. Only the fence keeps them apart.
    flat = {"partitions": 0}
    first = node_factory(node_name="n1", database_url=db_url, broker=flat)
    second = node_factory(node_name="n2", roles=["commands"], database_url=db_url,
                          broker=flat)
    assert first.partitions is None and second.partitions is None
    with Client(amqp_url, first.topology) as c:
        for apt in APARTMENTS:
            r = _send(c, AddApartment(owner_id="owner", city="Rome", title=apt,
                                      price_per_night=100, currency="EUR", capacity=2), apt)
            assert r["status"] == "ok", r

    outcomes: list[dict[str, Any]] = []
    requests = [0, 0]  # sent, accepts sent
    lock = threading.Lock()

    def burst(c: Client, payloads: list[tuple[Message, str]]) -> list[dict[str, Any]]:
        """Publish all at once (many in flight per actor), then collect every reply."""
        envs = [Envelope.new(p, apartment_id=apt) for p, apt in payloads]
        for env in envs:
            c.publish(env)
        return [c.wait_reply(env.message_id, timeout=60).payload.model_dump(mode="json")
                for env in envs]

    def guest(i: int) -> None:
        rng = random.Random(i)
        with Client(amqp_url, first.topology) as c:
            for k in range(4):
                asks: list[tuple[Message, str]] = []
                for j in range(16):
                    start = rng.randrange(0, 12)
                    asks.append((RequestReservation(
                        reservation_id=f"r{i}-{k}-{j}", guest_id=f"g{i}", start=day(start),
                        end=day(start + rng.randrange(2, 6))), rng.choice(APARTMENTS)))
                replies = burst(c, asks)
                accepts: list[tuple[Message, str]] = [
                    (AcceptReservation(reservation_id=p.reservation_id, owner_id="owner"), apt)
                    for (p, apt), r in zip(asks, replies, strict=True)
                    if r["status"] == "ok" and isinstance(p, RequestReservation)]
                answers = burst(c, accepts)
                with lock:
                    outcomes.extend(replies + answers)
                    requests[0] += len(asks)
                    requests[1] += len(accepts)

    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            guest(i)
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    assert len(outcomes) == sum(requests) and requests[0] == 6 * 4 * 16  # all answered
    accepted = [o for o in outcomes if o["status"] == "ok"
                and o["events"] and o["events"][0]["type"] == "ReservationAccepted"]
    assert accepted, "the workload accepted nothing: it proves nothing"
    assert all(o["status"] in {"ok", "rejected"} for o in outcomes), outcomes
    events = stored_events(db_url)
    assert count_overlaps(events) == 0
    # Each stream is one gapless history: no version taken twice, none skipped.
    versions: dict[str, list[int]] = {}
    for sid, v, _env in events:
        versions.setdefault(sid, []).append(v)
    assert all(sorted(vs) == list(range(1, len(vs) + 1)) for vs in versions.values())


def test_a_producer_reads_its_own_writes_from_search_on_two_nodes(
        node_factory: Callable[..., Node], amqp_url: str, db_url: str) -> None:
    """Both nodes consume search's queue (events and queries) and share its read model.

    A query may park on one node while the other applies the event it waits for; it
    must still be answered caught up, with the write in it.
    """
    first = node_factory(node_name="n1", database_url=db_url)
    node_factory(node_name="n2", database_url=db_url)
    with Client(amqp_url, first.topology) as c:
        def search(after: int, **query: Any) -> dict[str, Any]:
            reply = c.request(Envelope.new(SearchApartments(after=after, **query)),
                              timeout=30, retries=0)
            data: dict[str, Any] = reply.payload.model_dump(mode="json")
            assert data["caught_up"] is True, data
            return data

        for i in range(12):
            apt = f"ryw-{i}"
            added = _send(c, AddApartment(owner_id="owner", city="Oslo", title=apt,
                                          price_per_night=100 + i, currency="EUR", capacity=2), apt)
            assert added["status"] == "ok", added
            found = search(added["position"], city="oslo", limit=100)
            assert apt in {h["apartment_id"] for h in found["apartments"]}, (apt, found)
            if i % 3:
                continue
            asked = _send(c, RequestReservation(reservation_id=f"r{i}", guest_id="g",
                                                start=day(7), end=day(9)), apt)
            took = _send(c, AcceptReservation(reservation_id=f"r{i}", owner_id="owner"), apt)
            assert asked["status"] == took["status"] == "ok", (asked, took)
            free = search(took["position"], city="oslo", start=day(7), end=day(8), limit=100)
            assert apt not in {h["apartment_id"] for h in free["apartments"]}, (apt, free)
