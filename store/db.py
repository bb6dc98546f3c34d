"""Engines and schema: SQLite (WAL, a file) or PostgreSQL, migrated by Alembic at start.

``make_engine`` brings the schema to the newest revision before it returns, so a node
never runs on a store older than its code. Two processes may start on one database
at once (the two roles of a node): the upgrade is serialised by a lock taken on the
migration connection (``pg_advisory_lock`` on PostgreSQL, ``BEGIN IMMEDIATE`` on
SQLite), and whoever comes second finds the schema at head and does nothing.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    URL,
    Connection,
    Engine,
    create_engine,
    event,
    inspect,
    make_url,
    select,
    text,
)
from sqlalchemy.exc import OperationalError

import store.tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from config import StoreSettings
from store.tables import store_identity_table

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
INITIAL_REVISION = "0001_initial"
# The tables of the initial revision: a store that has them and no alembic_version was
# made by ``create_all`` before migrations existed, and is stamped at INITIAL_REVISION.
LEGACY_TABLES = frozenset({
    "events", "outbox", "inbox", "notifications", "search_apartments", "search_booked",
    "sim_gateway_charges", "sim_gateway_refunds", "search_delisted", "timers",
    "email_deliveries"})
# pg_advisory_lock key of the schema upgrade (any fixed 64-bit number; "staybook").
MIGRATION_LOCK_KEY = 0x73746179626F6F6B
_SQLITE_LOCK_ATTEMPTS = 10
SYNCHRONOUS = StoreSettings().synchronous  # the setting's default, for tools and tests


def database_url(url: str | URL) -> URL:
    """Parse ``url``; a bare ``postgresql://`` gets the psycopg (3) driver Staybook ships."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def redact(url: str | URL) -> str:
    """``url`` for messages and logs, its password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparseable URL may hold a password: show none of it
        return "<unparseable database URL>"


def store_name(url: str | URL) -> str:
    """Where a store is, for other nodes and users to read: its URL without the
    password, a SQLite file by its absolute path (a relative one names a different
    file in every working directory)."""
    try:
        parsed = database_url(url)
    except Exception:  # noqa: BLE001 - an unparseable URL may hold a password: show none of it
        return redact(url)
    db = parsed.database
    if parsed.get_backend_name() == "sqlite" and db and db != ":memory:":
        parsed = parsed.set(database=str(Path(db).resolve()))
    return redact(parsed)


def store_id(engine: Engine) -> str:
    """The store's id: the one row the ``0010_store_identity`` migration wrote.

    Raises:
        LookupError: when the store has no id (it was never migrated that far).
    """
    t = store_identity_table
    with engine.connect() as conn:
        found = conn.execute(select(t.c.store_id).where(t.c.id == 1)).scalar_one_or_none()
    if found is None:
        raise LookupError("the store has no id: run staybook db upgrade")
    return str(found)


def make_engine(url: str | URL, *, synchronous: str = SYNCHRONOUS,
                migrate: bool = True) -> Engine:
    """Create an engine and, unless ``migrate`` is False, upgrade the schema to head.

    SQLite: WAL (readers never block the writer), ``synchronous`` as configured (FULL:
    every commit is fsynced), and a busy timeout so a second process waits instead of
    failing. PostgreSQL: a pool as large as SQLite's (actors read from many threads),
    with pre-ping so a restarted server costs one reconnect, not an error.
    """
    parsed = database_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"pool_size": 16, "max_overflow": 16}
    if backend == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    elif backend == "postgresql":
        kwargs["pool_pre_ping"] = True
    else:
        kwargs = {}
    engine = create_engine(parsed, **kwargs)
    if backend == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")
            _wal(cur)
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.close()

    if migrate:
        try:
            _upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
    return engine


def _wal(cur: Any) -> None:
    """Switch a new store to WAL. The switch needs the file to itself, and SQLite may
    answer "locked" at once, without its busy wait, when several connections open a
    fresh file together (the roles of a node starting): so it is tried again."""
    for attempt in range(_SQLITE_LOCK_ATTEMPTS):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if attempt == _SQLITE_LOCK_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def upgrade(url_or_engine: str | URL | Engine) -> str | None:
    """Upgrade a store to the newest revision; return the revision it is at now."""
    if isinstance(url_or_engine, Engine):
        _upgrade(url_or_engine)
        return current_revision(url_or_engine)
    engine = make_engine(url_or_engine, migrate=False)
    try:
        _upgrade(engine)
        return current_revision(engine)
    finally:
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    """The store's revision (None: never migrated, e.g. an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """The newest revision this code knows."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def known_revisions() -> set[str]:
    """Every revision this code has a migration for."""
    return {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}


def _config(connection: Connection | None = None) -> Config:
    """Alembic's config without an ini file: the packaged scripts, and our connection."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade(engine: Engine) -> None:
    if engine.dialect.name == "postgresql":
        _upgrade_postgresql(engine)
    elif engine.dialect.name == "sqlite":
        _upgrade_sqlite(engine)
    else:  # no lock we know of: fine for a single process
        with engine.connect() as conn:
            _migrate(conn)
            conn.commit()


def _upgrade_postgresql(engine: Engine) -> None:
    """Migrate holding a session-level advisory lock, in one transaction (PG has DDL in them)."""
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        conn.commit()  # the lock is the session's: it outlives this transaction
        try:
            _migrate(conn)
            conn.commit()
        except BaseException:
            conn.rollback()
            if conn.invalidated:  # the session is gone, and its lock with it
                raise
            _advisory_unlock(conn)
            raise
        _advisory_unlock(conn)


def _advisory_unlock(conn: Connection) -> None:
    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
    conn.commit()


def _upgrade_sqlite(engine: Engine) -> None:
    """Migrate inside ``BEGIN IMMEDIATE``: the write lock keeps a second process out.

    pysqlite begins transactions itself (and only before DML); with its
    ``isolation_level`` set to None it leaves ours alone. The busy timeout makes the
    second process wait for the first; should it still find the store locked, it
    tries again.
    """
    for attempt in range(_SQLITE_LOCK_ATTEMPTS):
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            saved = raw.isolation_level
            raw.isolation_level = None
            try:
                try:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                except OperationalError:
                    conn.rollback()
                    if attempt == _SQLITE_LOCK_ATTEMPTS - 1:
                        raise
                    log.info("store locked by another process; retrying the schema upgrade")
                    time.sleep(0.2 * (attempt + 1))
                    continue
                try:
                    _migrate(conn)
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
                return
            finally:
                raw.isolation_level = saved


def _migrate(conn: Connection) -> None:
    """Stamp a store made by ``create_all`` at the initial revision, then upgrade to head."""
    context = MigrationContext.configure(conn)
    cfg = _config(conn)
    if context.get_current_revision() is None:
        tables = set(inspect(conn).get_table_names())
        if tables >= LEGACY_TABLES:
            log.info("store made before migrations: stamping it at %s", INITIAL_REVISION)
            command.stamp(cfg, INITIAL_REVISION)
        elif tables & LEGACY_TABLES:
            # An older release's store: 0001 creates only the tables it lacks.
            log.info("store made before migrations lacks %s: adding them",
                     ", ".join(sorted(LEGACY_TABLES - tables)))
    command.upgrade(cfg, "head")
