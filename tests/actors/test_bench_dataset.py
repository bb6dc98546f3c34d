"""The scale benchmark's loader writes what a node would have written, and a node on
its store carries on from there (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from bench.dataset import _Apartments, apartment_id, catalog, load, owner_id
from broker.memory import MemoryBroker
from messages import AddApartment, RequestReservation, SearchApartments
from node import Node
from rules.clock import pinned
from store import make_engine
from store.tables import (
    events_table,
    inbox_table,
    outbox_table,
    search_apartments_table,
    search_booked_table,
)
from tests.conftest import TODAY, MemoryProducer, eventually, make_settings


def _node(url: str, tmp_path: Path) -> Node:
    node = Node(make_settings(tmp_path, database_url=url), broker=MemoryBroker(),
                clock=pinned(TODAY))
    node.start()
    return node


Rows = list[tuple[Any, ...]]


def _stream(engine: Engine, key: str) -> tuple[Rows, Rows, Rows]:
    """An apartment's events as (version, type, payload), and its rows in search."""
    with engine.connect() as c:
        rows = c.execute(select(events_table.c.version, events_table.c.type,
                                events_table.c.body)
                         .where(events_table.c.stream_id == f"apartment:{key}")
                         .order_by(events_table.c.version)).all()
        apts = c.execute(select(search_apartments_table).where(
            search_apartments_table.c.apartment_id == key)).all()
        nights = c.execute(select(search_booked_table).where(
            search_booked_table.c.apartment_id == key)
            .order_by(search_booked_table.c.reservation_id)).all()
    events = [(v, t, _payload(b)) for v, t, b in rows]
    return events, [tuple(r) for r in apts], [tuple(r) for r in nights]


def _payload(body: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body)["payload"]
    data.pop("expires_at", None)  # a deadline from the moment of the request
    return data


def _replies(engine: Engine, key: str) -> list[tuple[str, list[str]]]:
    """The intake's stored replies to an apartment's commands: status, event types."""
    with engine.connect() as c:
        bodies = c.execute(select(inbox_table.c.reply).where(
            inbox_table.c.consumer == "intake")).scalars().all()
    out = []
    for b in bodies:
        env = json.loads(b)
        if env["apartment_id"] == key:
            p = env["payload"]
            out.append((p["status"], [e["type"] for e in p["events"]]))
    return sorted(out)


def test_the_loaded_rows_are_those_a_node_writes(tmp_path: Path) -> None:
    cat = catalog(3, seed=5)
    loaded = load(f"sqlite:///{tmp_path / 'loaded.db'}", cat, booked_share=1.0, seed=5,
                  today=TODAY, workers=1)
    assert loaded.apartments == 3 and loaded.booked == 3 and loaded.stays >= 3
    assert loaded.events == 3 + 3 * loaded.stays
    key = apartment_id(1)
    commands = _Apartments(cat, 1.0, 5, TODAY, datetime.now(UTC)).commands(1)
    node = _node(f"sqlite:///{tmp_path / 'sent.db'}", tmp_path)
    try:
        assert isinstance(node.broker, MemoryBroker)
        p = MemoryProducer(node.broker)
        for cmd in commands:
            assert p.send(cmd, key)["status"] == "ok"
        stays = (len(commands) - 1) // 2
        eventually(lambda: len(_stream(node.engine, key)[2]) == stays)  # search applied
        eventually(lambda: node.relay.backlog() == 0)
        sent = node.engine
        loaded_engine = make_engine(f"sqlite:///{tmp_path / 'loaded.db'}")
        try:
            assert _stream(loaded_engine, key) == _stream(sent, key)
            assert _replies(loaded_engine, key) == _replies(sent, key)
            assert len(_replies(sent, key)) == len(commands)
            with loaded_engine.connect() as c:
                assert c.execute(select(outbox_table)).all() == []
        finally:
            loaded_engine.dispose()
    finally:
        node.stop()


def test_a_node_on_a_loaded_store_knows_its_apartments_and_stays(
        db_url: str, tmp_path: Path) -> None:
    cat = catalog(40, seed=2)
    loaded = load(db_url, cat, booked_share=0.5, seed=2, today=TODAY, workers=2)
    assert loaded.apartments == 40 and 0 < loaded.booked < 40
    maker = _Apartments(cat, 0.5, 2, TODAY, datetime.now(UTC))
    i = next(i for i in range(40) if len(maker.commands(i)) > 1)
    stay = maker.commands(i)[1]
    assert isinstance(stay, RequestReservation)
    node = _node(db_url, tmp_path)
    try:
        assert isinstance(node.broker, MemoryBroker)
        p = MemoryProducer(node.broker)
        again = p.send(AddApartment(owner_id=owner_id(i), city="X", title="T",
                                    price_per_night=100,
                                    currency="EUR", capacity=2), apartment_id(i))
        assert again["reason"] == "apartment_exists"
        clash = p.send(RequestReservation(reservation_id="new-1", guest_id="g",
                                          start=stay.start, end=stay.end), apartment_id(i))
        assert clash["status"] == "rejected" and clash["reason"] == "already_taken"
        later = TODAY + timedelta(days=400)  # after every loaded stay
        free = p.send(RequestReservation(reservation_id="new-2", guest_id="g", start=later,
                                         end=later + timedelta(days=2)), apartment_id(i))
        assert free["status"] == "ok"
        assert free["position"] > loaded.events  # the store's positions carry on
        city = cat.cities[cat.city_of[i]]
        hits = p.send(SearchApartments(city=city.upper(), start=stay.start, end=stay.end,
                                       limit=100))
        ids = {a["apartment_id"] for a in hits["apartments"]}
        assert apartment_id(i) not in ids
        expected = sum(1 for j in range(40) if cat.city_of[j] == cat.city_of[i])
        assert 0 < hits["total"] < expected  # the booked one is left out, others not
        eventually(lambda: node.relay.backlog() == 0)
    finally:
        node.stop()
