"""Which real store errors are outages, and the probe (store.health).

Every error here is made for real: a refused TCP connection to PostgreSQL's driver,
a SQLite file locked by another connection, a duplicate key.
"""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

from store import make_engine
from store.health import describe, is_outage, probe


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_connection_is_an_outage_and_says_so_in_one_line() -> None:
    url = f"postgresql+psycopg://staybook:secret-pw@127.0.0.1:{_closed_port()}/x"
    engine = create_engine(url)
    with pytest.raises(OperationalError) as caught:
        probe(engine)
    assert is_outage(caught.value)
    line = describe(caught.value)
    assert "refused" in line and "\n" not in line and "secret-pw" not in line
    with pytest.raises(psycopg.OperationalError) as raw:
        psycopg.connect(host="127.0.0.1", port=_closed_port(), connect_timeout=2)
    assert is_outage(raw.value)


def test_a_sqlite_file_locked_past_the_busy_wait_is_an_outage(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        other = sqlite3.connect(path, timeout=0.05)
        with pytest.raises(sqlite3.OperationalError) as caught:
            other.execute("INSERT INTO t VALUES (1)")
        assert is_outage(caught.value)
        engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
        with pytest.raises(OperationalError) as wrapped:
            probe(engine)
        assert is_outage(wrapped.value)
        other.close()
        engine.dispose()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_errors_of_the_request_are_not_outages(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 's.db'}")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE k (id INTEGER PRIMARY KEY)"))
            conn.execute(text("INSERT INTO k VALUES (1)"))
        with pytest.raises(IntegrityError) as dup, engine.begin() as conn:
            conn.execute(text("INSERT INTO k VALUES (1)"))
        assert not is_outage(dup.value)
        with pytest.raises(OperationalError) as missing, engine.begin() as conn:
            conn.execute(text("SELECT * FROM no_such_table"))
        assert not is_outage(missing.value)
        assert not is_outage(ValueError("a bug"))
        probe(engine)  # a healthy store answers
    finally:
        engine.dispose()
