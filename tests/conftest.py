"""Shared fixtures: settings on a temporary store, a node on the in-memory broker."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import port_for
import pytest
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from pytest_rabbitmq import factories as rabbitmq_factories
from sqlalchemy import URL, Engine

from broker.base import Outgoing
from broker.memory import MemoryBroker
from config import RABBITMQ_PLUGINS_FILE, Settings
from console.localdb import PG_CTL_WRAPPER
from messages import Envelope, Kind, Message
from node import Node
from rules.clock import pinned
from store import make_engine
from store.deadletters import Recorded

TODAY = date(2030, 1, 7)  # a Monday; the rules' clock in tests


def unique(base: str) -> str:
    """``base`` and 8 random hex digits: a broker prefix or name no other test shares.

    (``new_id()[:8]`` is not: its first half is fixed for the whole process.)
    """
    return f"{base}{uuid.uuid4().hex[:8]}"


def day(n: int) -> date:
    """``n`` days after the tests' today."""
    return TODAY + timedelta(days=n)


def eventually(pred: Callable[[], bool], timeout: float = 20.0, poll: float = 0.02) -> None:
    """Wait until ``pred()`` holds; fail after ``timeout`` seconds (never a timing assert)."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(poll)


def recorded_dead_letters(node: Node, n: int, timeout: float = 20.0) -> list[Recorded]:
    """The node's book of dead letters once it holds ``n`` (the queue itself is empty)."""
    eventually(lambda: node.dead_letters.count() >= n, timeout)
    letters = node.dead_letters.page(limit=1000)
    assert len(letters) == n, [r.summary() for r in letters]
    return letters


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings on a fresh SQLite file (unless ``database_url`` says otherwise)."""
    overrides.setdefault("database_url", f"sqlite:///{tmp_path / 'staybook.db'}")
    return Settings(**overrides)


# --- databases -----------------------------------------------------------------------
# PostgreSQL refuses to run as root, and the tests (CI too) run as root: pg_ctl runs
# through console/pg_ctl_as_postgres, which hands the data dir to the postgres user and
# drops to it. The data dir is NOT under pytest's tmp tree: every pytest session resets
# /tmp/pytest-of-<user> to 0700, which would cut a running server off from its files
# whenever another session starts (a developer's, in parallel).
# a throwaway server: durability off for speed; room for a few engines' pools
PG_OPTIONS = "-c fsync=off -c full_page_writes=off -c max_connections=300"


@pytest.fixture(scope="session")
def postgresql_proc() -> Iterator[PostgreSQLExecutor]:
    """One PostgreSQL server for the session (pytest-postgresql's executor, our dirs).

    It overrides the plugin's fixture of that name, and makes the template database the
    plugin's ``postgresql`` fixture clones, so that one works too.
    """
    base = Path(tempfile.mkdtemp(prefix="staybook-pg-"))
    executor = PostgreSQLExecutor(
        executable=str(PG_CTL_WRAPPER), host="127.0.0.1", port=port_for.select_random(),
        datadir=str(base / "data"), unixsocketdir=tempfile.gettempdir(),
        logfile=str(base / "postgresql.log"), startparams="-w", dbname="tests",
        postgres_options=PG_OPTIONS)
    try:
        executor.start()
        DatabaseJanitor(user=executor.user, host=executor.host, port=executor.port,
                        dbname=executor.template_dbname, as_template=True).init()
        yield executor
    finally:
        try:
            if executor.running():
                executor.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def postgresql_installed() -> bool:
    """Whether a pg_ctl is there for the wrapper to run (Debian's, or one on PATH)."""
    return bool(os.environ.get("PG_CTL") or glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
                or shutil.which("pg_ctl"))


def postgresql_url(proc: PostgreSQLExecutor) -> str:
    """A fresh, empty database on the tests' server, as a ``postgresql+psycopg`` URL.

    The caller drops it with :func:`drop_postgresql_database`.
    """
    name = f"staybook_{uuid.uuid4().hex[:16]}"
    DatabaseJanitor(user=proc.user, host=proc.host, port=proc.port, dbname=name,
                    password=proc.password).init()
    return URL.create("postgresql+psycopg", username=proc.user, password=proc.password,
                      host=proc.host, port=int(proc.port), database=name
                      ).render_as_string(hide_password=False)


def drop_postgresql_database(proc: PostgreSQLExecutor, url: str) -> None:
    """Drop a database made by :func:`postgresql_url` (its sessions are ended first)."""
    name = url.rsplit("/", 1)[1]
    DatabaseJanitor(user=proc.user, host=proc.host, port=proc.port, dbname=name,
                    password=proc.password).drop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store's URL, once per database: a SQLite file, a PostgreSQL database.

    Without PostgreSQL installed the PostgreSQL cases are skipped, except on CI
    (``CI`` set), where that is a failure: ``.ci/run`` installs it.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    if not postgresql_installed():
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    proc: PostgreSQLExecutor = request.getfixturevalue("postgresql_proc")
    url = postgresql_url(proc)
    yield url
    drop_postgresql_database(proc, url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated store on each database (see ``db_url``)."""
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


class MemoryProducer:
    """Publishes to a node on the memory broker and reads its replies."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.reply_queue = broker.reply_queue()

    def publish(self, env: Envelope) -> None:
        """Publish with reply_to."""
        topo = self.broker.topology
        ex = topo.commands_exchange if env.kind is Kind.COMMAND else topo.queries_exchange
        self.broker.publish(Outgoing(ex, env.apartment_id or "", env.to_json(),
                                     message_id=env.message_id, correlation_id=env.message_id,
                                     reply_to=self.reply_queue))

    def publish_raw(self, body: bytes, *, reply: bool = True, routing_key: str = "x") -> None:
        """Publish arbitrary bytes to the commands exchange."""
        self.broker.publish(Outgoing(self.broker.topology.commands_exchange, routing_key, body,
                                     message_id="raw", correlation_id="raw",
                                     reply_to=self.reply_queue if reply else None))

    def reply(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next reply's payload."""
        out = self.broker.get(self.reply_queue, timeout)
        assert out is not None, "no reply"
        data: dict[str, Any] = json.loads(out.body)["payload"]
        return data

    def send(self, payload: Message, apartment_id: str | None = None) -> dict[str, Any]:
        """Publish one message and return its reply's payload."""
        self.publish(Envelope.new(payload, apartment_id=apartment_id))
        return self.reply()


@pytest.fixture
def memory_node(tmp_path: Path) -> Iterator[Node]:
    """A started node on the in-memory broker, with today fixed to TODAY."""
    node = Node(make_settings(tmp_path), broker=MemoryBroker(), clock=pinned(TODAY))
    node.start()
    yield node
    node.stop()


@pytest.fixture
def producer(memory_node: Node) -> MemoryProducer:
    """A producer for ``memory_node``."""
    assert isinstance(memory_node.broker, MemoryBroker)
    return MemoryProducer(memory_node.broker)


# The session's private RabbitMQ (pytest-rabbitmq), with the plugins every Staybook
# broker has enabled (the consistent-hash exchange behind the command partitions).
rabbitmq_proc = rabbitmq_factories.rabbitmq_proc(plugindir=RABBITMQ_PLUGINS_FILE.parent)
