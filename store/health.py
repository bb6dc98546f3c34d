"""Whether the store can be reached: the errors that mean it cannot, and a probe.

An outage (the server restarting, failing over, refusing connections; a SQLite file
locked past its busy wait, or on a full or failing disk) is a state of the store,
not a fault of the code that met it. The node's store gate (a
:class:`supervisor.Dependency` built from :func:`is_outage` and :func:`probe`) holds
work while it lasts, instead of letting every actor that touched the store crash.
"""

from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

# PostgreSQL error classes that mean the server (not the statement) is the problem:
# connection exceptions, operator intervention (shutdown, restart, terminated
# backend, "starting up"), insufficient resources (disk full, too many connections)
# and system errors (I/O).
_PG_OUTAGE_CLASSES = ("08", "57P", "53", "58")

# What SQLite says when its file cannot be used now, rather than that a statement
# is wrong: a lock held past the busy wait, a full or failing disk, a file gone.
_SQLITE_OUTAGE_WORDS = ("locked", "busy", "disk", "full", "unable to open", "readonly",
                        "read-only", "i/o")


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the store cannot be reached now.

    Integrity errors (a taken version, a handled message), programming errors and
    anything else are not outages: they stay the caller's to handle, or a crash.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, sa_exc.TimeoutError):  # no pooled connection came back in time
            return True
        if isinstance(e, psycopg.OperationalError | psycopg.InterfaceError):
            state = e.sqlstate
            return state is None or state.startswith(_PG_OUTAGE_CLASSES)
        if isinstance(e, sqlite3.OperationalError):
            text = str(e).lower()
            return any(w in text for w in _SQLITE_OUTAGE_WORDS)
        orig = e.orig if isinstance(e, sa_exc.DBAPIError) else None
        e = orig if isinstance(orig, BaseException) else e.__cause__
    return False


def describe(exc: BaseException) -> str:
    """The driver's own words for an error, on one line: no SQL, no parameters."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else None
    text = str(orig if isinstance(orig, BaseException) else exc)
    return " ".join(text.split())[:200] or type(exc).__name__


def probe(engine: Engine) -> None:
    """Raise unless the store answers; on SQLite, unless it also takes a write.

    A full disk lets SQLite read: the probe writes the header's ``user_version``
    (unused by Staybook) back unchanged, which needs room and the write lock.
    """
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            version = conn.exec_driver_sql("PRAGMA user_version").scalar()
            conn.exec_driver_sql(f"PRAGMA user_version = {int(version or 0)}")
        else:
            conn.exec_driver_sql("SELECT 1")
