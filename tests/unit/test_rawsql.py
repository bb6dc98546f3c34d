"""The writer's DBAPI statements write what SQLAlchemy would, on SQLite and PostgreSQL.

Rows go in through :mod:`store.rawsql` and come back through SQLAlchemy: aware
datetimes, bytes and composite keys read back equal, generated positions are those
the database gave, and a constraint violation surfaces as SQLAlchemy's
``IntegrityError``, as the writer's classification expects.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from store.rawsql import delete_keys, insert_returning, insert_rows
from store.tables import events_table, search_booked_table, timers_table
from tests.conftest import day


def _event(n: int) -> dict[str, object]:
    return {"stream_id": "apartment:a1", "version": n, "event_id": f"e{n}",
            "type": "ApartmentAdded", "body": b"\x00{}\xff", "recorded_at":
            datetime(2026, 12, 1, 10, 0, n, 123456, tzinfo=UTC)}


def test_generated_positions_and_values_read_back(engine: Engine) -> None:
    with engine.begin() as conn:
        positions = insert_returning(conn, events_table, [_event(1), _event(2), _event(3)],
                                     events_table.c.position)
    with engine.connect() as conn:
        rows = conn.execute(select(events_table).order_by(events_table.c.position)).all()
    assert [r.position for r in rows] == positions and positions == sorted(positions)
    assert [r.event_id for r in rows] == ["e1", "e2", "e3"]
    assert rows[1].body == b"\x00{}\xff"
    assert rows[2].recorded_at == datetime(2026, 12, 1, 10, 0, 3, 123456, tzinfo=UTC)


def test_rows_with_different_keys_and_composite_deletes(engine: Engine) -> None:
    due = datetime(2026, 12, 2, tzinfo=UTC)
    timer = {"timer_id": "t1", "apartment_id": "a1", "reservation_id": "r1",
             "command": "ExpireReservation", "due_at": due, "attempts": 0}
    with engine.begin() as conn:
        insert_rows(conn, timers_table, [timer, {**timer, "timer_id": "t2",
                                                 "fired_at": due + timedelta(hours=1)}])
        insert_rows(conn, search_booked_table, [
            {"apartment_id": "a1", "reservation_id": r, "start": day(1), "end": day(3)}
            for r in ("r1", "r2", "r3")])
        delete_keys(conn, search_booked_table, [("a1", "r1"), ("a1", "r3"), ("a9", "r2")])
        delete_keys(conn, timers_table, ["t1"])
    with engine.connect() as conn:
        timers = conn.execute(select(timers_table)).all()
        booked = conn.execute(select(search_booked_table.c.reservation_id)).scalars().all()
    assert [(t.timer_id, t.due_at, t.fired_at) for t in timers] == [
        ("t2", due, due + timedelta(hours=1))]
    assert booked == ["r2"]


def test_a_violation_is_sqlalchemys_integrity_error(engine: Engine) -> None:
    with pytest.raises(IntegrityError), engine.begin() as conn:
        insert_rows(conn, events_table, [_event(1), {**_event(1), "event_id": "other"}])
    with engine.connect() as conn:
        assert conn.execute(select(events_table)).all() == []  # rolled back, all of it


def test_fetch_runs_a_compiled_select_with_its_limit(engine: Engine) -> None:
    from sqlalchemy import bindparam

    from store.rawsql import fetch
    q = (select(events_table.c.version, events_table.c.body)
         .where(events_table.c.version > bindparam("after"))
         .order_by(events_table.c.version).limit(bindparam("n")))
    with engine.begin() as conn:
        insert_rows(conn, events_table, [_event(n) for n in range(1, 6)])
    with engine.connect() as conn:
        assert fetch(conn, "test", q, {"after": 2, "n": 2}) == [(3, b"\x00{}\xff"),
                                                              (4, b"\x00{}\xff")]
        assert fetch(conn, "test", q, {"after": 4, "n": 10}) == [(5, b"\x00{}\xff")]
