"""The writer's hot statements, sent straight to the DBAPI cursor.

Building, compiling and binding a SQLAlchemy statement costs far more than SQLite
spends running it: per command, the writer's inserts through SQLAlchemy Core were
the largest share of a node's CPU. The statements here are compiled once per table
and column set (by SQLAlchemy, so the SQL is the dialect's own), their values are
converted with the columns' own bind processors (so a row reads back exactly as if
SQLAlchemy had written it), and they run on the connection's DBAPI cursor inside
the caller's transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Connection, LargeBinary, Table, bindparam, delete, insert
from sqlalchemy.exc import DBAPIError

_Processor = Callable[[Any], Any] | None


class _Compiled:
    """A statement's SQL for one dialect, and how to turn rows into its parameters."""

    def __init__(self, conn: Connection, statement: Any, columns: Sequence[Column[Any]]
                 ) -> None:
        compiled = statement.compile(dialect=conn.dialect)
        self.sql = str(compiled)
        procs = {c.name: _processor(c, conn.dialect) for c in columns}
        # SQLite's driver takes positional parameters, psycopg's named ones.
        self.positional = bool(compiled.positional)
        names = list(compiled.positiontup) if self.positional else list(procs)
        self.params: list[tuple[str, _Processor]] = [(n, procs.get(n)) for n in names]
        self.defaults: dict[str, Any] = dict(compiled.params)  # e.g. an OFFSET's 0

    def bind(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Each row's parameters, converted as SQLAlchemy would convert them.

        A batch's rows share values (one timestamp per commit): a converted value is
        reused while the next row holds the very same object.
        """
        params = [(n, p, [_UNSET, None]) for n, p in self.params]

        def value(row: Mapping[str, Any], name: str, proc: _Processor,
                  last: list[Any]) -> Any:
            v = row[name]
            if proc is None:
                return v
            if v is not last[0]:
                last[0], last[1] = v, proc(v)
            return last[1]

        if self.positional:
            return [tuple(value(row, n, p, last) for n, p, last in params) for row in rows]
        return [{n: value(row, n, p, last) for n, p, last in params} for row in rows]


_UNSET = object()


def _processor(column: Column[Any], dialect: Any) -> _Processor:
    """The column's bind processor, but none for bytes on SQLite, whose driver takes
    ``bytes`` as they are (SQLAlchemy wraps them in a ``memoryview`` first)."""
    if dialect.name == "sqlite" and isinstance(column.type, LargeBinary):
        return None
    processor: _Processor = column.type.dialect_impl(dialect).bind_processor(dialect)
    return processor


_cache: dict[tuple[Any, ...], _Compiled] = {}


@contextlib.contextmanager
def _cursor(conn: Connection, sql: str) -> Iterator[Any]:
    """The connection's DBAPI cursor; driver errors come out as SQLAlchemy's, as they
    would from ``conn.execute`` (so an ``IntegrityError`` is classified the same)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    base = conn.dialect.loaded_dbapi.Error
    try:
        yield cursor
    except base as exc:
        raise DBAPIError.instance(sql, None, exc, base) from exc
    finally:
        cursor.close()


def _compiled(conn: Connection, key: tuple[Any, ...], statement: Any,
              columns: Sequence[Column[Any]]) -> _Compiled:
    """The statement compiled for ``conn``'s dialect, once per key."""
    full = (conn.dialect.name, *key)
    found = _cache.get(full)
    if found is None:
        found = _cache[full] = _Compiled(conn, statement, columns)
    return found


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """``INSERT`` the rows: one ``executemany`` per set of keys, in order of first use."""
    if not rows:
        return
    by_names: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        by_names.setdefault(tuple(row), []).append(row)
    for names, same in by_names.items():
        c = _compiled(conn, ("insert", table.name, names),
                      insert(table).values({n: bindparam(n) for n in names}),
                      [table.c[n] for n in names])
        with _cursor(conn, c.sql) as cursor:
            cursor.executemany(c.sql, c.bind(same))


def insert_returning(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]],
                     generated: Column[Any]) -> list[Any]:
    """``INSERT`` every row and return the ``generated`` column of each, in row order.

    SQLite: one ``execute`` per row (the C loop is cheap) and its ``lastrowid``, which
    is ``generated`` (the table's integer primary key). PostgreSQL: one ``executemany``
    with ``RETURNING``, its result sets in row order.
    """
    if not rows:
        return []
    names = tuple(rows[0])
    columns = [table.c[n] for n in names]
    stmt = insert(table).values({n: bindparam(n) for n in names})
    sqlite = conn.dialect.name == "sqlite"
    if not sqlite:
        stmt = stmt.returning(generated)
    c = _compiled(conn, ("returning", table.name, names, generated.name), stmt, columns)
    params = c.bind(rows)
    out: list[Any] = []
    with _cursor(conn, c.sql) as cursor:
        if sqlite:
            for p in params:
                cursor.execute(c.sql, p)
                out.append(cursor.lastrowid)
            return out
        cursor.executemany(c.sql, params, returning=True)
        while True:
            out.append(cursor.fetchone()[0])
            if not cursor.nextset():
                return out


def delete_keys(conn: Connection, table: Table, keys: Sequence[Any]) -> None:
    """``DELETE`` the rows whose primary key is in ``keys`` (tuples for a composite key)."""
    if not keys:
        return
    columns = list(table.primary_key.columns)
    stmt = delete(table)
    for col in columns:
        stmt = stmt.where(col == bindparam(col.name))
    c = _compiled(conn, ("delete", table.name), stmt, columns)
    names = [col.name for col in columns]
    rows = [dict(zip(names, k if len(names) > 1 else (k,), strict=True)) for k in keys]
    with _cursor(conn, c.sql) as cursor:
        cursor.executemany(c.sql, c.bind(rows))


def fetch(conn: Connection, key: str, statement: Any, params: Mapping[str, Any]
          ) -> list[tuple[Any, ...]]:
    """Run a ``SELECT`` (compiled once per ``key``) and return its rows as plain tuples.

    Only for columns whose driver values are already what the caller wants (numbers,
    text, bytes): no result processing is applied.
    """
    c = _compiled(conn, ("select", key), statement, [])
    values = {**c.defaults, **params}
    bound: Any = tuple(values[n] for n, _p in c.params) if c.positional else values
    with _cursor(conn, c.sql) as cursor:
        cursor.execute(c.sql, bound)
        return [tuple(r) for r in cursor.fetchall()]
