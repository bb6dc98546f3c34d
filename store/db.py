"""Engines: SQLite in WAL mode in a file by default, any SQLAlchemy URL otherwise."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlmodel import SQLModel

import store.tables  # noqa: F401  (registers the tables on SQLModel.metadata)


def _casefold(value: object) -> object:
    return value.casefold() if isinstance(value, str) else value


def make_engine(url: str, *, synchronous: str = "FULL") -> Engine:
    """Create an engine and the tables.

    For SQLite: WAL (readers never block the writer), ``synchronous`` as configured
    (FULL: every commit is fsynced), and a busy timeout so a second process waits
    instead of failing.
    """
    is_sqlite = url.startswith("sqlite")
    kwargs: dict[str, Any] = {}
    if is_sqlite:
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        kwargs["pool_size"] = 16
        kwargs["max_overflow"] = 16
    engine = create_engine(url, **kwargs)
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            # SQLite's lower() folds ASCII only; searches compare casefold() keys.
            dbapi_conn.create_function("casefold", 1, _casefold, deterministic=True)

    for attempt in range(5):
        try:
            SQLModel.metadata.create_all(engine)
            break
        except OperationalError:
            # Another process (the other role of a node) created a table between the
            # check and the create; look again.
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    return engine
