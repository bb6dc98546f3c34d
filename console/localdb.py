"""A private PostgreSQL server for drills and benchmarks (Debian's binaries).

Like :mod:`console.localbroker` for RabbitMQ: a throwaway server in a directory of
its own, started with pytest-postgresql's executor (a development dependency) through
``pg_ctl_as_postgres``, a wrapper that runs PostgreSQL as the ``postgres`` user when
the caller is root (PostgreSQL refuses to run as root, and CI runs as root).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

PG_CTL_WRAPPER = Path(__file__).resolve().parent / "pg_ctl_as_postgres"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_postgresql(workdir: Path, *, durable: bool = True,
                     dbname: str = "staybook") -> Iterator[str]:
    """Start a PostgreSQL server with its data in ``workdir``; yield a database URL.

    Args:
        workdir: where the data, socket and log go (created if missing).
        durable: keep fsync on (benchmarks); off only for throwaway test servers.
        dbname: the database created for the caller.
    """
    from pytest_postgresql.executors import PostgreSQLExecutor
    from pytest_postgresql.janitor import DatabaseJanitor

    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    options = "-c max_connections=300" + ("" if durable else " -c fsync=off")
    executor = PostgreSQLExecutor(
        executable=str(PG_CTL_WRAPPER), host="127.0.0.1", port=port, user="postgres",
        password="staybook", dbname=dbname, options="", postgres_options=options,
        datadir=str(workdir / "pgdata"), unixsocketdir=str(workdir),
        logfile=str(workdir / "postgresql.log"), startparams="-w")
    executor.start()
    try:
        DatabaseJanitor(user="postgres", host="127.0.0.1", port=port, dbname=dbname,
                        password="staybook").init()
        yield f"postgresql+psycopg://postgres:staybook@127.0.0.1:{port}/{dbname}"
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            executor.stop()


def create_database(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url``; its URL."""
    from pytest_postgresql.janitor import DatabaseJanitor
    from sqlalchemy import make_url

    u = make_url(url)
    DatabaseJanitor(user=u.username or "postgres", host=u.host or "127.0.0.1",
                    port=u.port or 5432, dbname=name, password=u.password).init()
    return u.set(database=name).render_as_string(hide_password=False)
