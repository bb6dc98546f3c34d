"""The fence: two writers (two nodes) on one store can never both append for a stream.

Each test runs two :class:`StoreWriter` objects on one SQLite file, as two node
processes would: each has its own memory of stream versions, and only the database
is shared.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, select

from messages import ApartmentAdded, Envelope, Message
from store import Commit, ConcurrencyError, EventStore, InboxEntry, StoreWriter, make_engine
from store.tables import events_table, inbox_table
from tests.conftest import eventually

DEADLINE = 20.0
STREAM = "apartment:a1"


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = make_engine(url), make_engine(url)
    yield a, b
    a.dispose()
    b.dispose()


@pytest.fixture
def writers(engines: tuple[Engine, Engine]) -> Iterator[tuple[StoreWriter, StoreWriter]]:
    a, b = StoreWriter(engines[0]), StoreWriter(engines[1])
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


def _event(title: str) -> Envelope:
    payload: Message = ApartmentAdded(owner_id="o1", city="Porto", title=title,
                                      price_per_night=100, currency="EUR", capacity=2)
    return Envelope.new(payload, apartment_id="a1")


Pending = tuple[threading.Event, list[BaseException | None]]


def _submit(writer: StoreWriter, commit: Commit) -> Pending:
    """Submit ``commit``; what ``_wait`` reads its outcome from."""
    done = threading.Event()
    out: list[BaseException | None] = []

    def on_done(exc: BaseException | None) -> None:
        out.append(exc)
        done.set()

    commit.on_done = on_done
    writer.submit(commit)
    return done, out


def _commit(writer: StoreWriter, expected: int, lineage: int, title: str) -> Pending:
    return _submit(writer, Commit(stream_id=STREAM, expected_version=expected,
                                  events=[_event(title)], lineage=lineage))


def _wait(pending: Pending) -> BaseException | None:
    done, out = pending
    assert done.wait(DEADLINE), "commit never finished"
    return out[0]


def _titles(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as c:
        rows = c.execute(select(events_table.c.version, events_table.c.body)
                         .where(events_table.c.stream_id == STREAM)
                         .order_by(events_table.c.version)).all()
    out = []
    for version, body in rows:
        payload = Envelope.from_json(body).payload
        assert isinstance(payload, ApartmentAdded)
        out.append((version, payload.title))
    return out


def test_the_second_writer_at_a_taken_version_is_refused(
        writers: tuple[StoreWriter, StoreWriter], engines: tuple[Engine, Engine]) -> None:
    a, b = writers
    assert _wait(_commit(a, 0, 1, "a-v1")) is None
    assert _wait(_commit(b, 1, 2, "b-v2")) is None
    # ``a`` remembers version 1 for the stream; the database has 2.
    assert isinstance(_wait(_commit(a, 1, 1, "a-v2")), ConcurrencyError)
    assert _titles(engines[0]) == [(1, "a-v1"), (2, "b-v2")]


def test_commits_decided_after_a_refused_one_are_refused_too(
        writers: tuple[StoreWriter, StoreWriter], engines: tuple[Engine, Engine]) -> None:
    """The pipelining hole: the second commit's expected version equals the store's.

    Writer ``a`` decided two commands on the same memory (lineage 1) and submitted both
    before either committed: the first at version 1, the second at version 2. Writer
    ``b`` took version 2 first. The first is refused; the second expects 2, which is
    what the store now has, but it was decided on memory that included the refused
    events, so it must be refused as well.
    """
    a, b = writers
    assert _wait(_commit(a, 0, 1, "a-v1")) is None
    assert _wait(_commit(b, 1, 2, "b-v2")) is None
    first = _commit(a, 1, 1, "a-decided-first")
    second = _commit(a, 2, 1, "a-decided-on-the-first")
    assert isinstance(_wait(first), ConcurrencyError)
    assert isinstance(_wait(second), ConcurrencyError)
    # After reloading (a new lineage at the store's version) the actor may append.
    assert _wait(_commit(a, 2, 3, "a-after-reload")) is None
    assert _titles(engines[0]) == [(1, "a-v1"), (2, "b-v2"), (3, "a-after-reload")]


def test_racing_writers_leave_one_gapless_history(
        writers: tuple[StoreWriter, StoreWriter], engines: tuple[Engine, Engine]) -> None:
    """Many rounds of both writers appending at once: every version is taken once."""
    a, b = writers
    lineage = 10
    for version, i in enumerate(range(60)):
        lineage += 2
        pa = _commit(a, version, lineage, f"a{i}")
        pb = _commit(b, version, lineage + 1, f"b{i}")
        results = [_wait(pa), _wait(pb)]
        winners = [r for r in results if r is None]
        assert len(winners) == 1, results
        assert all(isinstance(r, ConcurrencyError) for r in results if r is not None)
    history = _titles(engines[0])
    assert [v for v, _ in history] == list(range(1, 61))


def test_a_due_timer_fires_once_across_two_nodes(
        writers: tuple[StoreWriter, StoreWriter], engines: tuple[Engine, Engine]) -> None:
    """Both nodes' timer services read the same due row; only one claim wins."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert

    from actors.timers import TimerService
    from store.tables import outbox_table, timers_table

    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    with engines[0].begin() as conn:
        conn.execute(insert(timers_table).values(
            timer_id="expire:r1", apartment_id="a1", reservation_id="r1",
            command="ExpireReservation", due_at=t0, attempts=0))
    services = [TimerService(e, w, poll_interval=0.5, refire_after=60,
                             clock=lambda: t0 + timedelta(seconds=1))
                for e, w in zip(engines, writers, strict=True)]
    # Park both writers' threads inside a transaction, so both services read the due
    # row before either claim is written: the two claims really race in the database.
    opened = threading.Event()
    parked = [threading.Event(), threading.Event()]

    def park(i: int) -> Callable[[Connection], None]:
        def effect(_conn: Connection) -> None:
            parked[i].set()
            opened.wait(DEADLINE)
        return effect

    for i, w in enumerate(writers):
        w.submit(Commit(stream_id=None, expected_version=0, effects=[park(i)]))
        assert parked[i].wait(DEADLINE)
    fired: list[int] = []
    threads = [threading.Thread(target=lambda s=s: fired.append(s.fire_due()))
               for s in services]
    for t in threads:
        t.start()
    eventually(lambda: writers[0].backlog == 1 and writers[1].backlog == 1)
    opened.set()
    for t in threads:
        t.join(DEADLINE)
    assert sorted(fired) == [0, 1]
    with engines[0].connect() as conn:
        rows = conn.execute(select(outbox_table.c.event_id)).scalars().all()
    assert rows == ["expire:r1:1"]


def test_a_batch_that_meets_a_conflict_is_screened_not_split_into_single_commits(
        writers: tuple[StoreWriter, StoreWriter], engines: tuple[Engine, Engine]) -> None:
    """One stale commit among many: it is refused, the rest commit in one transaction."""
    from store import DuplicateMessage, InboxEntry

    a, b = writers
    assert _wait(_commit(a, 0, 1, "a-v1")) is None
    assert _wait(_commit(b, 1, 2, "b-v2")) is None  # ``a`` still remembers version 1
    dup = threading.Event()
    a.submit(Commit(stream_id=None, expected_version=0, inbox=InboxEntry("t", "m-1"),
                    on_done=lambda _e: dup.set()))
    assert dup.wait(DEADLINE)
    opened = threading.Event()
    parked = threading.Event()

    def park(_conn: Connection) -> None:
        parked.set()
        opened.wait(DEADLINE)

    a.submit(Commit(stream_id=None, expected_version=0, effects=[park]))
    assert parked.wait(DEADLINE)
    stale = _commit(a, 1, 7, "a-stale")
    outcomes: dict[str, BaseException | None] = {}
    done = threading.Event()

    def record(label: str) -> Callable[[BaseException | None], None]:
        def on_done(exc: BaseException | None) -> None:
            outcomes[label] = exc
            if len(outcomes) == 6:
                done.set()
        return on_done

    for i in range(5):
        a.submit(Commit(stream_id=f"apartment:other-{i}", expected_version=0,
                        events=[_event(f"o{i}")], on_done=record(f"o{i}"), lineage=100 + i))
    a.submit(Commit(stream_id=None, expected_version=0, inbox=InboxEntry("t", "m-1"),
                    on_done=record("dup")))
    eventually(lambda: a.backlog == 7)
    batches, conflicts = a.batches, a.conflicts
    opened.set()
    assert isinstance(_wait(stale), ConcurrencyError)
    assert done.wait(DEADLINE)
    assert [outcomes[f"o{i}"] for i in range(5)] == [None] * 5
    assert isinstance(outcomes["dup"], DuplicateMessage)
    assert a.conflicts == conflicts + 1
    # The parked commit's transaction, then the five others in one (not five).
    assert a.batches == batches + 2


def _quiet(writer: StoreWriter, expected: int, lineage: int, mid: str) -> Pending:
    """An actor's decision with no events: only its inbox row (and the fence)."""
    return _submit(writer, Commit(
        stream_id=STREAM, expected_version=expected, lineage=lineage,
        inbox=InboxEntry("intake", mid, lambda pos: str(pos).encode())))


def _replies(engine: Engine) -> dict[str, bytes]:
    with engine.connect() as c:
        return {m: r for m, r in c.execute(select(inbox_table.c.message_id,
                                                  inbox_table.c.reply))}


def test_a_decision_with_no_events_is_fenced_too(db_url: str) -> None:
    """On SQLite and PostgreSQL: "nothing to do" decided at a version the stream has
    moved past is refused (the actor reloads and decides again), and nothing of it
    is recorded; at the stream's version it commits, its reply at the head."""
    engines = (make_engine(db_url), make_engine(db_url))
    a, b = StoreWriter(engines[0]), StoreWriter(engines[1])
    a.start()
    b.start()
    try:
        assert _wait(_commit(a, 0, 1, "a-v1")) is None
        assert _wait(_commit(b, 1, 2, "b-v2")) is None
        # ``a`` decided from version 1 (its memory); the stream is at 2.
        assert isinstance(_wait(_quiet(a, 1, 1, "stale")), ConcurrencyError)
        # Its lineage stays fenced: a later commit of the same memory is refused.
        assert isinstance(_wait(_commit(a, 2, 1, "a-on-old-memory")), ConcurrencyError)
        # Decided again from the stream (a new lineage): it commits.
        assert _wait(_quiet(a, 2, 3, "fresh")) is None
        # In one batch after an append of the same stream: checked against it.
        first, second = _commit(b, 2, 4, "b-v3"), _quiet(b, 3, 4, "after-append")
        assert _wait(first) is None and _wait(second) is None
        replies = _replies(engines[0])
        assert "stale" not in replies
        head = EventStore(engines[0]).head(STREAM)
        assert replies["after-append"] == str(head).encode()
        assert int(replies["fresh"]) < int(replies["after-append"])
        assert [v for v, _ in _titles(engines[0])] == [1, 2, 3]
    finally:
        a.stop()
        b.stop()
        for e in engines:
            e.dispose()
