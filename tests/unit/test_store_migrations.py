"""The store's schema comes from Alembic migrations, applied when an engine is made.

Every test runs on SQLite and on PostgreSQL (the ``db_url`` fixture): a fresh store
ends at head with exactly the tables SQLModel declares, a second upgrade changes
nothing, concurrent starts (threads and processes) all succeed, and a store made by
``create_all`` before migrations existed is adopted, not refused.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, insert, inspect, select, text
from sqlmodel import SQLModel

from store import make_engine
from store.db import (
    INITIAL_REVISION,
    LEGACY_TABLES,
    current_revision,
    head_revision,
    known_revisions,
    store_id,
    store_name,
    upgrade,
)
from store.tables import events_table, search_apartments_table, store_identity_table

ROOT = Path(__file__).resolve().parents[2]
HEAD = "0011_outbox_published_at"


def bare_engine(db_url: str) -> Engine:
    """An engine on the store that leaves its schema alone."""
    return make_engine(db_url, migrate=False)


def schema_diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, SQLModel.metadata))


def make_legacy_store(db_url: str, *, without: tuple[str, ...] = ()) -> None:
    """The store as ``create_all`` made it before migrations: no city_key or currency,
    no inbox body_hash, none of the later tables (dead_letters, snapshots, store_identity),
    the outbox's published_at and its partial index, no version."""
    eng = bare_engine(db_url)
    try:
        SQLModel.metadata.create_all(eng)
        with eng.begin() as c:
            c.execute(text("DROP INDEX ix_search_apartments_city_price"))
            c.execute(text("DROP INDEX ix_search_booked_nights"))
            c.execute(text("ALTER TABLE search_apartments DROP COLUMN city_key"))
            c.execute(text("ALTER TABLE search_apartments DROP COLUMN currency"))
            c.execute(text("ALTER TABLE inbox DROP COLUMN body_hash"))
            c.execute(text("DROP TABLE dead_letters"))
            c.execute(text("DROP TABLE snapshots"))
            c.execute(text("DROP TABLE store_identity"))
            c.execute(text(f"ALTER TABLE outbox ADD COLUMN published_at {_timestamp(eng)}"))
            c.execute(text("CREATE INDEX ix_outbox_unpublished ON outbox (id) "
                           "WHERE published_at IS NULL"))
            for name in without:
                c.execute(text(f"DROP TABLE {name}"))
            c.execute(text("INSERT INTO search_apartments (apartment_id, city, title, "
                           "price_per_night, capacity) VALUES "
                           "('a1', 'STRASSE', 't', 100, 2), ('a2', 'İstanbul', 't', 100, 2)"))
            c.execute(insert(events_table).values(
                stream_id="apartment:a1", version=1, event_id="e1", type="ApartmentAdded",
                body=b"{}", recorded_at=datetime.now(UTC)))
        assert current_revision(eng) is None
    finally:
        eng.dispose()


def _timestamp(engine: Engine) -> str:
    """The aware timestamp type of the dialect (what SQLModel's datetime columns are)."""
    return "TIMESTAMP WITH TIME ZONE" if engine.dialect.name == "postgresql" else "DATETIME"


def _old_outbox_row(event_id: str, published_at: datetime | None) -> dict[str, object]:
    return {"event_id": event_id, "type": "ApartmentAdded", "exchange": "ApartmentAdded",
            "routing_key": "a1", "body": b"{}", "published_at": published_at}


# An outbox row at revision 0010: with the published_at column that 0011 drops.
_INSERT_OLD_OUTBOX = text(
    "INSERT INTO outbox (event_id, type, exchange, routing_key, body, published_at) "
    "VALUES (:event_id, :type, :exchange, :routing_key, :body, :published_at)")


# --- a fresh store -------------------------------------------------------------------
def test_the_migrations_know_their_head() -> None:
    assert head_revision() == HEAD
    assert known_revisions() == {INITIAL_REVISION, "0002_city_key", "0003_inbox_body_hash",
                                 "0004_dead_letters", "0005_outbox_prune", "0006_snapshots",
                                 "0007_search_covering", "0008_search_booked_nights",
                                 "0009_search_currency", "0010_store_identity", HEAD}


def test_a_fresh_store_is_migrated_to_head(engine: Engine) -> None:
    assert current_revision(engine) == HEAD
    tables = set(inspect(engine).get_table_names())
    assert tables == LEGACY_TABLES | {"alembic_version", "dead_letters", "snapshots",
                                      "store_identity"}


def test_the_migrated_schema_is_what_sqlmodel_declares(engine: Engine) -> None:
    assert schema_diff(engine) == []
    # the details compare_metadata does not look at: the named uniques
    uniques = {u["name"] for u in inspect(engine).get_unique_constraints("events")}
    assert "uq_events_stream_version" in uniques
    notif = {u["name"] for u in inspect(engine).get_unique_constraints("notifications")}
    assert "uq_notification_once" in notif


def test_bodies_are_binary(engine: Engine) -> None:
    body = bytes(range(256))
    with engine.begin() as c:
        c.execute(insert(events_table).values(
            stream_id="s", version=1, event_id="e", type="t", body=body,
            recorded_at=datetime.now(UTC)))
    with engine.connect() as c:
        assert c.execute(select(events_table.c.body)).scalar_one() == body
    if engine.dialect.name == "postgresql":
        with engine.connect() as c:
            kind = c.execute(text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'events' AND column_name = 'body'")).scalar_one()
        assert kind == "bytea"


def test_a_second_upgrade_is_a_no_op(engine: Engine, db_url: str) -> None:
    with engine.begin() as c:
        c.execute(insert(search_apartments_table).values(
            apartment_id="a1", city="Porto", city_key="porto", title="t",
            price_per_night=1, capacity=1))
    assert upgrade(db_url) == HEAD
    assert upgrade(engine) == HEAD
    again = make_engine(db_url)
    try:
        assert current_revision(again) == HEAD
    finally:
        again.dispose()
    with engine.connect() as c:
        assert c.execute(select(search_apartments_table.c.apartment_id)).scalars().all() == [
            "a1"]
        assert c.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1


def test_an_engine_made_without_migrating_leaves_the_store_alone(db_url: str) -> None:
    eng = bare_engine(db_url)
    try:
        assert current_revision(eng) is None
        assert inspect(eng).get_table_names() == []
    finally:
        eng.dispose()


# --- concurrent starts ---------------------------------------------------------------
def test_threads_upgrading_one_store_at_once_all_succeed(db_url: str) -> None:
    n = 6
    start = threading.Barrier(n)
    errors: list[BaseException] = []
    revisions: list[str | None] = []
    lock = threading.Lock()

    def start_node() -> None:
        start.wait()
        try:
            eng = make_engine(db_url)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            with lock:
                errors.append(exc)
            return
        try:
            with lock:
                revisions.append(current_revision(eng))
        finally:
            eng.dispose()

    threads = [threading.Thread(target=start_node) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert revisions == [HEAD] * n


def test_processes_upgrading_one_store_at_once_all_succeed(db_url: str) -> None:
    """The two roles of a node start as two processes on one store (here, four)."""
    script = ("import sys; from store import make_engine; from store.db import current_revision;"
              " e = make_engine(sys.argv[1]); print(current_revision(e)); e.dispose()")
    procs = [subprocess.Popen([sys.executable, "-c", script, db_url], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [p.communicate(timeout=90) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == HEAD
    eng = bare_engine(db_url)
    try:
        assert schema_diff(eng) == []
    finally:
        eng.dispose()


# --- stores made before migrations ---------------------------------------------------
def test_a_create_all_store_is_stamped_and_upgraded(db_url: str) -> None:
    make_legacy_store(db_url)
    eng = make_engine(db_url)
    try:
        assert current_revision(eng) == HEAD
        assert schema_diff(eng) == []
        with eng.connect() as c:
            keys = {r.apartment_id: r.city_key for r in c.execute(select(
                search_apartments_table.c.apartment_id, search_apartments_table.c.city_key))}
            assert keys == {"a1": "strasse", "a2": "i̇stanbul"}  # backfilled by 0002
            currencies = c.execute(select(search_apartments_table.c.currency)).scalars()
            assert set(currencies) == {"EUR"}  # the rows version 1 listed (0009)
            assert c.execute(select(events_table.c.event_id)).scalars().all() == ["e1"]
    finally:
        eng.dispose()


def test_an_older_create_all_store_gets_its_missing_tables(db_url: str) -> None:
    make_legacy_store(db_url, without=("email_deliveries", "timers"))
    eng = make_engine(db_url)
    try:
        assert current_revision(eng) == HEAD
        assert schema_diff(eng) == []
        with eng.connect() as c:
            assert c.execute(select(events_table.c.event_id)).scalars().all() == ["e1"]
    finally:
        eng.dispose()


def test_0005_drops_published_outbox_rows_and_ids_never_repeat(db_url: str) -> None:
    """Rows published before 0005 are deleted, unpublished ones kept; afterwards a new
    row never takes the id of a deleted one (the relay's cursor relies on it)."""
    from alembic import command

    from store.db import _config
    from store.tables import outbox_table
    eng = bare_engine(db_url)
    try:
        with eng.begin() as conn:
            command.upgrade(_config(conn), "0004_dead_letters")
        with eng.begin() as c:
            c.execute(_INSERT_OLD_OUTBOX, [_old_outbox_row("sent", datetime.now(UTC)),
                                           _old_outbox_row("due", None),
                                           _old_outbox_row("last", None)])
        upgrade(eng)
        assert current_revision(eng) == HEAD
        with eng.begin() as c:
            left: dict[str, int] = {str(r[0]): int(r[1]) for r in c.execute(
                select(outbox_table.c.event_id, outbox_table.c.id))}
            assert set(left) == {"due", "last"}
            c.execute(outbox_table.delete().where(outbox_table.c.event_id == "last"))
            c.execute(insert(outbox_table).values(
                event_id="new", type="ApartmentAdded", exchange="ApartmentAdded",
                routing_key="a1", body=b"{}"))
            new_id = c.execute(select(outbox_table.c.id).where(
                outbox_table.c.event_id == "new")).scalar_one()
        assert new_id > left["last"]
    finally:
        eng.dispose()


def test_0006_adds_the_snapshots_table_and_its_downgrade_drops_it(db_url: str) -> None:
    from alembic import command

    from store.db import _config
    eng = bare_engine(db_url)
    try:
        with eng.begin() as conn:
            command.upgrade(_config(conn), "0005_outbox_prune")
        assert "snapshots" not in inspect(eng).get_table_names()
        upgrade(eng)
        assert "snapshots" in inspect(eng).get_table_names()
        assert schema_diff(eng) == []
        with eng.begin() as conn:
            command.downgrade(_config(conn), "0005_outbox_prune")
        assert "snapshots" not in inspect(eng).get_table_names()
        assert current_revision(eng) == "0005_outbox_prune"
    finally:
        eng.dispose()


def test_0011_drops_published_at_keeps_the_rows_and_its_downgrade_adds_it_back(
        db_url: str) -> None:
    """Every row left is unpublished: the rows survive the rebuild, ids still never
    repeat, and the downgrade restores the column (NULL) and its partial index."""
    from alembic import command

    from store.db import _config
    from store.tables import outbox_table
    eng = bare_engine(db_url)
    try:
        with eng.begin() as conn:
            command.upgrade(_config(conn), "0010_store_identity")
        with eng.begin() as c:
            c.execute(_INSERT_OLD_OUTBOX, [_old_outbox_row("due", None),
                                           _old_outbox_row("last", None)])
        upgrade(eng)
        columns = {col["name"] for col in inspect(eng).get_columns("outbox")}
        assert "published_at" not in columns
        assert "ix_outbox_unpublished" not in {
            ix["name"] for ix in inspect(eng).get_indexes("outbox")}
        assert schema_diff(eng) == []
        with eng.begin() as c:
            left: dict[str, int] = {str(r[0]): int(r[1]) for r in c.execute(
                select(outbox_table.c.event_id, outbox_table.c.id))}
            assert set(left) == {"due", "last"}
            c.execute(outbox_table.delete().where(outbox_table.c.event_id == "last"))
            new_id = c.execute(insert(outbox_table).values(
                event_id="new", type="ApartmentAdded", exchange="ApartmentAdded",
                routing_key="a1", body=b"{}")).inserted_primary_key
        assert new_id is not None and new_id[0] > left["last"]
        with eng.begin() as conn:
            command.downgrade(_config(conn), "0010_store_identity")
        assert current_revision(eng) == "0010_store_identity"
        assert "ix_outbox_unpublished" in {
            ix["name"] for ix in inspect(eng).get_indexes("outbox")}
        with eng.connect() as c:
            published = c.execute(text("SELECT event_id, published_at FROM outbox")).all()
        assert sorted(tuple(r) for r in published) == [("due", None), ("new", None)]
    finally:
        eng.dispose()


# --- the store's id ------------------------------------------------------------------
def identity_rows(engine: Engine) -> list[str]:
    with engine.connect() as c:
        return [str(r) for r in c.execute(select(store_identity_table.c.store_id)).scalars()]


def test_a_store_has_exactly_one_id_and_keeps_it(engine: Engine, db_url: str) -> None:
    first = store_id(engine)
    assert identity_rows(engine) == [first]
    assert upgrade(db_url) == HEAD  # upgrading again writes no second id
    again = make_engine(db_url)
    try:
        assert store_id(again) == first
        assert identity_rows(again) == [first]
    finally:
        again.dispose()


def test_two_stores_have_two_ids(engine: Engine, tmp_path: Path) -> None:
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        assert store_id(other) != store_id(engine)
    finally:
        other.dispose()


def test_a_store_migrated_earlier_gets_its_id_when_it_reaches_0010(db_url: str) -> None:
    from alembic import command

    from store.db import _config
    eng = bare_engine(db_url)
    try:
        with eng.begin() as conn:
            command.upgrade(_config(conn), "0009_search_currency")
        assert "store_identity" not in inspect(eng).get_table_names()
        upgrade(eng)
        assert len(identity_rows(eng)) == 1
        assert identity_rows(eng) == [store_id(eng)]
    finally:
        eng.dispose()


def test_a_store_is_named_without_its_password_and_sqlite_by_its_whole_path(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert store_name("postgresql://app:s3cret@db:5432/staybook") == (
        "postgresql+psycopg://app:***@db:5432/staybook")
    monkeypatch.chdir(tmp_path)
    assert store_name("sqlite:///staybook.db") == f"sqlite:///{tmp_path / 'staybook.db'}"
