"""The group-committing store writer and the event store, on SQLite and PostgreSQL.

Every test runs twice (the ``db_url`` fixture): on a real SQLite file in ``tmp_path``
and on a fresh database of a real PostgreSQL server, with a running :class:`StoreWriter`. To
make batching deterministic without sleeping, a *gate* commit parks the writer thread
inside its transaction until the test opens it: everything submitted meanwhile is
queued, and the writer takes it in as few transactions as ``batch_max`` allows.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, Engine, insert, select

from messages import ApartmentAdded, DatesBooked, Envelope, Message, ReservationAccepted, spec_of
from store import (
    Commit,
    ConcurrencyError,
    DuplicateMessage,
    EventStore,
    InboxEntry,
    StoreWriter,
    WriterStopped,
    make_engine,
)
from store.tables import events_table, inbox_table, outbox_table, search_apartments_table
from store.writer import Done
from tests.conftest import day

DEADLINE = 20.0


# --- helpers -------------------------------------------------------------------------
class Gate:
    """An effect that holds the writer thread inside its transaction until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def effect(self, _conn: Connection) -> None:
        self.entered.set()
        if not self.opened.wait(DEADLINE):
            raise RuntimeError("gate never opened")

    def close_on(self, writer: StoreWriter) -> None:
        """Submit the gate and wait until the writer thread is parked on it."""
        writer.submit(Commit(stream_id=None, expected_version=0, effects=[self.effect]))
        assert self.entered.wait(DEADLINE), "writer never reached the gate"

    def open(self) -> None:
        self.opened.set()


class Outcomes:
    """Collects each commit's ``on_done`` result by key, counting calls."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.results: dict[str, BaseException | None] = {}
        self.calls: dict[str, int] = {}

    def done(self, key: str) -> Done:
        def on_done(exc: BaseException | None) -> None:
            with self._cond:
                self.results[key] = exc
                self.calls[key] = self.calls.get(key, 0) + 1
                self._cond.notify_all()
        return on_done

    def wait_for(self, keys: list[str] | set[str], timeout: float = DEADLINE) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: all(k in self.results for k in keys), timeout)
        missing = [k for k in keys if k not in self.results]
        assert ok, f"on_done never called for {missing[:5]} ({len(missing)} in all)"

    def count(self) -> int:
        with self._cond:
            return len(self.results)


def apartment_added(n: int = 1) -> ApartmentAdded:
    return ApartmentAdded(owner_id="o1", city="Porto", title=f"Flat {n}", price_per_night=100 * n,
                          currency="EUR", capacity=2)


def env_of(payload: Message, apartment_id: str | None = "a1") -> Envelope:
    return Envelope.new(payload, apartment_id=apartment_id)


def stream_rows(engine: Engine, stream_id: str) -> list[tuple[int, str]]:
    """(version, event_id) of a stream, by position (insertion order)."""
    q = (select(events_table.c.version, events_table.c.event_id)
         .where(events_table.c.stream_id == stream_id).order_by(events_table.c.position))
    with engine.connect() as c:
        return [(int(r.version), str(r.event_id)) for r in c.execute(q)]


def all_event_ids(engine: Engine) -> set[str]:
    with engine.connect() as c:
        return {str(x) for x in c.execute(select(events_table.c.event_id)).scalars()}


def outbox_rows(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as c:
        return [dict(r) for r in c.execute(
            select(outbox_table).order_by(outbox_table.c.id)).mappings()]


def inbox_keys(engine: Engine) -> set[tuple[str, str]]:
    with engine.connect() as c:
        return {(str(r.consumer), str(r.message_id)) for r in c.execute(select(inbox_table))}


def search_rows(engine: Engine) -> set[str]:
    with engine.connect() as c:
        return {str(x) for x in c.execute(
            select(search_apartments_table.c.apartment_id)).scalars()}


def insert_search_row(apartment_id: str) -> Callable[[Connection], None]:
    """An effect writing one row of a handler's own table."""
    def effect(conn: Connection) -> None:
        conn.execute(insert(search_apartments_table).values(
            apartment_id=apartment_id, city="Porto", city_key="porto", title="t",
            price_per_night=1, capacity=1))
    return effect


def commit_and_wait(writer: StoreWriter, commit: Commit) -> BaseException | None:
    """Submit one commit and return what its on_done got."""
    outcomes = Outcomes()
    writer.submit(dataclasses.replace(commit, on_done=outcomes.done("k")))
    outcomes.wait_for(["k"])
    return outcomes.results["k"]


# --- fixtures ------------------------------------------------------------------------
@pytest.fixture
def writer(engine: Engine) -> Iterator[StoreWriter]:
    w = StoreWriter(engine, batch_max=256)
    w.start()
    yield w
    if w.is_alive():
        w.stop()


# --- group commit --------------------------------------------------------------------
def test_commits_submitted_concurrently_are_grouped_into_few_transactions(
        engine: Engine, writer: StoreWriter) -> None:
    gate = Gate()
    gate.close_on(writer)
    outcomes = Outcomes()
    n_threads, per_thread = 6, 15
    submitted: dict[str, list[str]] = {}  # stream -> event ids in submission order

    def produce(t: int) -> None:
        stream = f"apartment:s{t}"
        version = 0
        ids: list[str] = []
        for i in range(per_thread):
            # one or two events per commit, so versions must continue across commits
            envs = [env_of(apartment_added(i)) for _ in range(1 + i % 2)]
            writer.submit(Commit(stream_id=stream, expected_version=version, events=envs,
                                 on_done=outcomes.done(f"{t}:{i}")))
            version += len(envs)
            ids += [e.message_id for e in envs]
        submitted[stream] = ids

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gate.open()
    keys = [f"{t}:{i}" for t in range(n_threads) for i in range(per_thread)]
    outcomes.wait_for(keys)

    assert all(outcomes.results[k] is None for k in keys), {
        k: v for k, v in outcomes.results.items() if v is not None}
    assert writer.commits == n_threads * per_thread + 1  # + the gate
    assert writer.batches < writer.commits
    # all 90 were queued behind the gate: one transaction for the gate, one for the rest
    assert writer.batches == 2
    store = EventStore(engine)
    for stream, ids in submitted.items():
        rows = stream_rows(engine, stream)
        assert [v for v, _ in rows] == list(range(1, len(ids) + 1))  # contiguous
        assert [e for _, e in rows] == ids  # in submission order
        assert [e.message_id for e in store.load(stream)] == ids
    assert all_event_ids(engine) == {e for ids in submitted.values() for e in ids}


def test_batch_max_bounds_one_transaction(engine: Engine) -> None:
    w = StoreWriter(engine, batch_max=4)
    w.start()
    try:
        gate = Gate()
        gate.close_on(w)
        outcomes = Outcomes()
        for i in range(10):
            w.submit(Commit(stream_id=None, expected_version=0,
                            inbox=InboxEntry("t", f"m{i}"), on_done=outcomes.done(f"m{i}")))
        gate.open()
        outcomes.wait_for([f"m{i}" for i in range(10)])
        assert w.commits == 11
        assert w.batches == 1 + 3  # 10 commits, at most 4 per transaction
        assert inbox_keys(engine) == {("t", f"m{i}") for i in range(10)}
    finally:
        w.stop()


# --- optimistic concurrency ----------------------------------------------------------
def test_a_stale_commit_in_a_batch_fails_alone_and_writes_nothing(
        engine: Engine, writer: StoreWriter) -> None:
    gate = Gate()
    gate.close_on(writer)
    outcomes = Outcomes()
    first, stale, other = env_of(apartment_added(1)), env_of(apartment_added(2)), env_of(
        apartment_added(3), "a2")
    writer.submit(Commit(stream_id="apartment:a1", expected_version=0, events=[first],
                         inbox=InboxEntry("intake", "cmd-1"), on_done=outcomes.done("first")))
    writer.submit(Commit(stream_id="apartment:a1", expected_version=0, events=[stale],
                         inbox=InboxEntry("intake", "cmd-2"),
                         effects=[insert_search_row("from-stale")],
                         on_done=outcomes.done("stale")))
    writer.submit(Commit(stream_id="apartment:a2", expected_version=0, events=[other],
                         inbox=InboxEntry("intake", "cmd-3"),
                         effects=[insert_search_row("from-other")],
                         on_done=outcomes.done("other")))
    gate.open()
    outcomes.wait_for(["first", "stale", "other"])

    assert outcomes.results["first"] is None
    assert outcomes.results["other"] is None
    assert isinstance(outcomes.results["stale"], ConcurrencyError)
    assert writer.batches == 2  # first and other went in one transaction with the refusal
    assert stream_rows(engine, "apartment:a1") == [(1, first.message_id)]
    assert stream_rows(engine, "apartment:a2") == [(1, other.message_id)]
    assert stale.message_id not in all_event_ids(engine)
    assert stale.message_id not in {r["event_id"] for r in outbox_rows(engine)}
    assert ("intake", "cmd-2") not in inbox_keys(engine)
    assert search_rows(engine) == {"from-other"}  # the stale commit's effect never ran
    assert all(n == 1 for n in outcomes.calls.values())


@pytest.mark.parametrize("expected", [0, 1, 3])
def test_a_commit_must_name_the_stored_version(
        engine: Engine, writer: StoreWriter, expected: int) -> None:
    two = [env_of(apartment_added(1)), env_of(apartment_added(2))]
    assert commit_and_wait(writer, Commit(stream_id="apartment:a1", expected_version=0,
                                          events=two)) is None
    late = env_of(apartment_added(3))
    exc = commit_and_wait(writer, Commit(stream_id="apartment:a1", expected_version=expected,
                                         events=[late]))
    assert isinstance(exc, ConcurrencyError)  # behind (0, 1) or ahead (3) of the store's 2
    assert [v for v, _ in stream_rows(engine, "apartment:a1")] == [1, 2]
    assert commit_and_wait(writer, Commit(stream_id="apartment:a1", expected_version=2,
                                          events=[late])) is None
    assert stream_rows(engine, "apartment:a1")[-1] == (3, late.message_id)


@pytest.fixture
def second_writer(engine: Engine) -> Iterator[StoreWriter]:
    """Another writer on the same database (another node's, say)."""
    other = make_engine(engine.url)  # the URL object: str() would mask a password
    w = StoreWriter(other)
    w.start()
    yield w
    w.stop()
    other.dispose()


def test_a_stale_commit_after_another_writer_appended_is_refused(
        engine: Engine, writer: StoreWriter, second_writer: StoreWriter) -> None:
    mine, theirs, stale = (env_of(apartment_added(i)) for i in range(3))
    assert commit_and_wait(writer, Commit(stream_id="apartment:a1", expected_version=0,
                                          events=[mine])) is None
    assert commit_and_wait(second_writer, Commit(stream_id="apartment:a1", expected_version=1,
                                                 events=[theirs])) is None
    exc = commit_and_wait(writer, Commit(stream_id="apartment:a1", expected_version=1,
                                         events=[stale], inbox=InboxEntry("intake", "m")))
    assert isinstance(exc, ConcurrencyError)
    assert stream_rows(engine, "apartment:a1") == [(1, mine.message_id), (2, theirs.message_id)]
    assert inbox_keys(engine) == set()


def test_a_current_commit_after_another_writer_appended_is_accepted(
        engine: Engine, writer: StoreWriter, second_writer: StoreWriter) -> None:
    mine, theirs, next_ = (env_of(apartment_added(i)) for i in range(3))
    assert commit_and_wait(writer, Commit(stream_id="apartment:a1", expected_version=0,
                                          events=[mine])) is None
    assert commit_and_wait(second_writer, Commit(stream_id="apartment:a1", expected_version=1,
                                                 events=[theirs])) is None
    assert [v for v, _ in stream_rows(engine, "apartment:a1")] == [1, 2]
    exc = commit_and_wait(writer, Commit(stream_id="apartment:a1", expected_version=2,
                                         events=[next_]))
    assert exc is None
    assert stream_rows(engine, "apartment:a1")[-1] == (3, next_.message_id)


# --- the inbox -----------------------------------------------------------------------
def test_a_duplicate_inbox_entry_is_refused_and_writes_nothing(
        engine: Engine, writer: StoreWriter) -> None:
    first = env_of(apartment_added(1))
    assert commit_and_wait(writer, Commit(
        stream_id="apartment:a1", expected_version=0, events=[first],
        inbox=InboxEntry("intake", "m-1", b"first reply"))) is None

    again = env_of(apartment_added(2), "a2")
    exc = commit_and_wait(writer, Commit(
        stream_id="apartment:a2", expected_version=0, events=[again],
        inbox=InboxEntry("intake", "m-1", b"second reply"),
        effects=[insert_search_row("dup")]))
    assert isinstance(exc, DuplicateMessage)
    assert stream_rows(engine, "apartment:a2") == []
    assert [r["event_id"] for r in outbox_rows(engine)] == [first.message_id]
    assert search_rows(engine) == set()
    assert EventStore(engine).seen("intake", "m-1") == (True, b"first reply")

    # the same message id for another consumer is a different message
    assert commit_and_wait(writer, Commit(stream_id=None, expected_version=0,
                                          inbox=InboxEntry("payment", "m-1"))) is None


def test_a_duplicate_in_the_same_batch_fails_alone(engine: Engine, writer: StoreWriter) -> None:
    gate = Gate()
    gate.close_on(writer)
    outcomes = Outcomes()
    a, b, c = (env_of(apartment_added(i), f"a{i}") for i in range(3))
    writer.submit(Commit(stream_id="apartment:a0", expected_version=0, events=[a],
                         inbox=InboxEntry("search", "m-1"), on_done=outcomes.done("a")))
    writer.submit(Commit(stream_id="apartment:a1", expected_version=0, events=[b],
                         inbox=InboxEntry("search", "m-1"), effects=[insert_search_row("b")],
                         on_done=outcomes.done("b")))
    writer.submit(Commit(stream_id="apartment:a2", expected_version=0, events=[c],
                         inbox=InboxEntry("search", "m-2"), effects=[insert_search_row("c")],
                         on_done=outcomes.done("c")))
    gate.open()
    outcomes.wait_for(["a", "b", "c"])

    assert outcomes.results["a"] is None
    assert isinstance(outcomes.results["b"], DuplicateMessage)
    assert outcomes.results["c"] is None
    assert all_event_ids(engine) == {a.message_id, c.message_id}
    assert {r["event_id"] for r in outbox_rows(engine)} == {a.message_id, c.message_id}
    assert inbox_keys(engine) == {("search", "m-1"), ("search", "m-2")}
    assert search_rows(engine) == {"c"}
    assert all(n == 1 for n in outcomes.calls.values())


# --- positions in replies ------------------------------------------------------------
def event_positions(engine: Engine) -> dict[str, int]:
    with engine.connect() as c:
        return {str(r.event_id): int(r.position) for r in c.execute(
            select(events_table.c.event_id, events_table.c.position))}


def test_a_reply_function_gets_the_position_of_its_commits_last_event(
        engine: Engine, writer: StoreWriter) -> None:
    """In one batch, each commit's reply names its own last event, as stored."""
    gate = Gate()
    gate.close_on(writer)
    outcomes = Outcomes()
    asked: dict[str, int | None] = {}

    def reply(key: str) -> Callable[[int | None], bytes]:
        def finish(position: int | None) -> bytes:
            asked[key] = position
            return f"{key}@{position}".encode()
        return finish

    one, two = [env_of(apartment_added(1))], [env_of(apartment_added(i)) for i in (2, 3)]
    other = env_of(apartment_added(4), "a2")
    writer.submit(Commit(stream_id="apartment:a1", expected_version=0, events=one,
                         inbox=InboxEntry("intake", "m-1", reply("one")),
                         on_done=outcomes.done("one")))
    writer.submit(Commit(stream_id="apartment:a2", expected_version=0, events=[other],
                         on_done=outcomes.done("other")))
    writer.submit(Commit(stream_id="apartment:a1", expected_version=1, events=two,
                         inbox=InboxEntry("intake", "m-2", reply("two")),
                         on_done=outcomes.done("two")))
    # no events: the stream's newest event (``two``'s last, written in this batch)
    writer.submit(Commit(stream_id="apartment:a1", expected_version=3,
                         inbox=InboxEntry("intake", "m-3", reply("none")),
                         on_done=outcomes.done("none")))
    writer.submit(Commit(stream_id="apartment:new", expected_version=0,
                         inbox=InboxEntry("intake", "m-4", reply("empty")),
                         on_done=outcomes.done("empty")))
    gate.open()
    outcomes.wait_for(["one", "other", "two", "none", "empty"])

    assert set(outcomes.results.values()) == {None}
    at = event_positions(engine)
    assert asked == {"one": at[one[0].message_id], "two": at[two[1].message_id],
                     "none": at[two[1].message_id], "empty": None}
    assert at[two[1].message_id] != at[other.message_id]
    store = EventStore(engine)
    assert store.seen("intake", "m-2") == (True, f"two@{at[two[1].message_id]}".encode())
    assert store.seen("intake", "m-4") == (True, b"empty@None")
    assert store.head("apartment:a1") == at[two[1].message_id]
    assert store.head("apartment:nothing") is None


def test_a_refused_commit_stores_no_reply(engine: Engine, writer: StoreWriter) -> None:
    first = env_of(apartment_added(1))
    assert commit_and_wait(writer, Commit(stream_id="apartment:a1", expected_version=0,
                                          events=[first])) is None
    exc = commit_and_wait(writer, Commit(
        stream_id="apartment:a1", expected_version=0, events=[env_of(apartment_added(2))],
        inbox=InboxEntry("intake", "m-1", lambda p: f"at {p}".encode())))
    assert isinstance(exc, ConcurrencyError)
    assert EventStore(engine).seen("intake", "m-1") == (False, None)


# --- the outbox ----------------------------------------------------------------------
def test_outbox_rows_are_written_for_published_events_only(
        engine: Engine, writer: StoreWriter) -> None:
    accepted = ReservationAccepted(reservation_id="r1", guest_id="g1", owner_id="o1",
                                   start=day(7), end=day(9), total_price=10000,
                                   card_token="tok_visa", card_last4="4242")
    booked = DatesBooked(reservation_id="r1", start=day(7), end=day(9))
    private, public1, public2 = env_of(apartment_added()), env_of(accepted), env_of(booked)
    assert commit_and_wait(writer, Commit(
        stream_id="reservation:r1", expected_version=0,
        events=[private, public1, public2], keep_private=1)) is None

    rows = outbox_rows(engine)
    assert [r["event_id"] for r in rows] == [public1.message_id, public2.message_id]
    for row, env in zip(rows, [public1, public2], strict=True):
        assert row["type"] == env.type
        assert row["exchange"] == spec_of(env.payload).exchange
        assert row["routing_key"] == "a1"
        assert row["body"] == env.to_json()
    # every event is recorded, the private one too
    assert [e for _, e in stream_rows(engine, "reservation:r1")] == [
        private.message_id, public1.message_id, public2.message_id]

    unpublished = env_of(apartment_added(), apartment_id=None)
    assert commit_and_wait(writer, Commit(
        stream_id="apartment:x", expected_version=0, events=[unpublished],
        publish=False)) is None
    assert unpublished.message_id in all_event_ids(engine)
    assert len(outbox_rows(engine)) == 2

    no_key = env_of(apartment_added(), apartment_id=None)
    assert commit_and_wait(writer, Commit(stream_id="apartment:y", expected_version=0,
                                          events=[no_key])) is None
    assert outbox_rows(engine)[-1]["routing_key"] == ""


# --- barrier -------------------------------------------------------------------------
def test_barrier_returns_only_after_earlier_commits(engine: Engine, writer: StoreWriter) -> None:
    gate = Gate()
    gate.close_on(writer)
    outcomes = Outcomes()
    n = 25
    for i in range(n):
        writer.submit(Commit(stream_id=None, expected_version=0,
                             inbox=InboxEntry("t", f"m{i}"), on_done=outcomes.done(f"m{i}")))
    seen_at_return: list[int] = []
    rows_at_return: list[int] = []
    returned = threading.Event()

    def wait_barrier() -> None:
        writer.barrier(timeout=DEADLINE)
        seen_at_return.append(outcomes.count())
        rows_at_return.append(len(inbox_keys(engine)))
        returned.set()

    t = threading.Thread(target=wait_barrier)
    t.start()
    assert not returned.is_set()  # the writer is parked on the gate: nothing is durable
    gate.open()
    t.join(DEADLINE)
    assert returned.is_set()
    assert seen_at_return == [n]
    assert rows_at_return == [n]


# --- stopping ------------------------------------------------------------------------
def test_a_stopped_writer_refuses_new_commits(engine: Engine) -> None:
    w = StoreWriter(engine)
    with pytest.raises(WriterStopped):  # never started
        w.submit(Commit(stream_id=None, expected_version=0))
    w.start()
    assert commit_and_wait(w, Commit(stream_id=None, expected_version=0,
                                     inbox=InboxEntry("t", "before"))) is None
    w.stop()
    assert not w.is_alive()
    called: list[BaseException | None] = []
    with pytest.raises(WriterStopped):
        w.submit(Commit(stream_id=None, expected_version=0, inbox=InboxEntry("t", "after"),
                        on_done=called.append))
    with pytest.raises(WriterStopped):
        w.barrier(timeout=1)
    assert called == []
    assert inbox_keys(engine) == {("t", "before")}


def test_stopping_under_load_settles_every_accepted_commit(engine: Engine) -> None:
    """Submitters race stop(): each accepted commit is written or failed, none hangs."""
    w = StoreWriter(engine, batch_max=1024, queue_max=10_000_000)
    w.start()
    gate = Gate()
    gate.close_on(w)
    outcomes = Outcomes()
    accepted: list[list[str]] = [[] for _ in range(4)]
    refused: list[str] = []
    first_submit = [threading.Event() for _ in range(4)]

    def submit_until_refused(t: int) -> None:
        i = 0
        while True:  # submit() must refuse once stop() began
            key = f"{t}-{i}"
            i += 1
            try:
                w.submit(Commit(stream_id=None, expected_version=0,
                                inbox=InboxEntry("t", key), on_done=outcomes.done(key)))
            except WriterStopped:
                refused.append(key)
                return
            accepted[t].append(key)
            first_submit[t].set()

    submitters = [threading.Thread(target=submit_until_refused, args=(t,)) for t in range(4)]
    for s in submitters:
        s.start()
    for ev in first_submit:
        assert ev.wait(DEADLINE)
    stopper = threading.Thread(target=w.stop, kwargs={"timeout": 60.0})
    stopper.start()
    for s in submitters:
        s.join(DEADLINE)
        assert not s.is_alive()
    gate.open()  # only now may the writer reach the stop sentinel
    stopper.join(60.0)
    assert not w.is_alive()

    keys = [k for ks in accepted for k in ks]
    outcomes.wait_for(keys)
    assert len(refused) == 4
    assert not any(k in outcomes.results for k in refused)
    assert all(n == 1 for n in outcomes.calls.values())
    written = {m for _, m in inbox_keys(engine)}
    for k in keys:
        exc = outcomes.results[k]
        assert exc is None or isinstance(exc, WriterStopped), exc
        assert (k in written) == (exc is None), k


def test_a_writer_stopped_twice_can_be_started_again(engine: Engine) -> None:
    w = StoreWriter(engine)
    w.start()
    w.stop()
    w.stop()
    w.start()
    try:
        outcomes = Outcomes()
        w.submit(Commit(stream_id=None, expected_version=0, inbox=InboxEntry("t", "m"),
                        on_done=outcomes.done("m")))
        deadline = time.monotonic() + DEADLINE
        # wait for the outcome, or for the writer thread to die (then it never comes)
        while "m" not in outcomes.results and w.is_alive():
            assert time.monotonic() < deadline, "on_done never called"
            time.sleep(0.01)
        assert outcomes.results.get("m", "never called") is None
        assert w.is_alive()
    finally:
        w.stop()


# --- reads ---------------------------------------------------------------------------
def test_load_returns_a_stream_in_version_order(engine: Engine, writer: StoreWriter) -> None:
    envs = {v: env_of(apartment_added(v)) for v in (1, 2, 3)}
    other = env_of(apartment_added(9), "a9")
    now = datetime.now(UTC)
    with engine.begin() as c:  # stored out of order: positions 1..4 hold versions 3, 1, -, 2
        for v, sid, env in ((3, "apartment:a1", envs[3]), (1, "apartment:a1", envs[1]),
                            (1, "apartment:a9", other), (2, "apartment:a1", envs[2])):
            c.execute(insert(events_table).values(
                stream_id=sid, version=v, event_id=env.message_id, type=env.type,
                body=env.to_json(), recorded_at=now))
    store = EventStore(engine)
    loaded = store.load("apartment:a1")
    assert [e.message_id for e in loaded] == [envs[1].message_id, envs[2].message_id,
                                              envs[3].message_id]
    assert loaded == [envs[1], envs[2], envs[3]]  # the envelopes round-trip
    assert store.load("apartment:none") == []

    # and through the writer, appended after those
    more = [env_of(apartment_added(4)), env_of(apartment_added(5))]
    assert commit_and_wait(writer, Commit(stream_id="apartment:a1", expected_version=3,
                                          events=more)) is None
    assert [e.message_id for e in store.load("apartment:a1")][3:] == [
        m.message_id for m in more]


def test_seen_returns_the_stored_reply(writer: StoreWriter, engine: Engine) -> None:
    assert commit_and_wait(writer, Commit(stream_id=None, expected_version=0,
                                          inbox=InboxEntry("intake", "m-1", b'{"ok": 1}'))) is None
    assert commit_and_wait(writer, Commit(stream_id=None, expected_version=0,
                                          inbox=InboxEntry("payment", "m-2"))) is None
    store = EventStore(engine)
    assert store.seen("intake", "m-1") == (True, b'{"ok": 1}')
    assert store.seen("payment", "m-2") == (True, None)
    assert store.seen("payment", "m-1") == (False, None)
    assert store.seen("intake", "m-3") == (False, None)


def test_only_a_commit_with_something_to_publish_wakes_the_relay(writer: StoreWriter) -> None:
    """Events for the outbox, or effects that add outbox rows, wake it; the relay's own
    "published" marks and a handler's rows do not (it would wake itself for nothing)."""
    wakes: list[int] = []
    writer.set_on_committed(lambda: wakes.append(1))
    assert commit_and_wait(writer, Commit(stream_id=None, expected_version=0,
                                          effects=[insert_search_row("x1")])) is None
    assert wakes == []
    assert commit_and_wait(writer, Commit(stream_id="apartment:a1", expected_version=0,
                                          events=[env_of(apartment_added())])) is None
    assert wakes == [1]
    assert commit_and_wait(writer, Commit(stream_id=None, expected_version=0,
                                          effects=[insert_search_row("x2")],
                                          adds_outbox=True)) is None
    assert wakes == [1, 1]


# --- row effects ---------------------------------------------------------------------
def _search_row(apartment_id: str) -> dict[str, object]:
    return {"apartment_id": apartment_id, "city": "Porto", "city_key": "porto", "title": "t",
            "price_per_night": 1, "capacity": 1}


def test_row_effects_of_a_batch_go_in_one_transaction(
        engine: Engine, writer: StoreWriter) -> None:
    """Thirty commits' rows (inserts and deletes): one transaction, every row right."""
    from store.writer import DeleteRow, InsertRow
    assert commit_and_wait(writer, Commit(stream_id=None, expected_version=0, effects=[
        InsertRow(search_apartments_table, _search_row(f"old{i}")) for i in range(30)])) is None
    before = writer.batches
    gate, outcomes = Gate(), Outcomes()
    gate.close_on(writer)
    for i in range(30):
        writer.submit(Commit(stream_id=None, expected_version=0, effects=[
            InsertRow(search_apartments_table, _search_row(f"new{i}")),
            DeleteRow(search_apartments_table, f"old{i}")], on_done=outcomes.done(str(i))))
    gate.open()
    outcomes.wait_for([str(i) for i in range(30)])
    assert all(outcomes.results[str(i)] is None for i in range(30))
    assert search_rows(engine) == {f"new{i}" for i in range(30)}
    assert writer.batches - before == 2  # the gate's, then all thirty


def test_a_row_inserted_and_deleted_in_one_batch_is_never_written(
        engine: Engine, writer: StoreWriter) -> None:
    """A request accepted in the batch that made it leaves no timer; delete-then-insert
    of one key (in that order) leaves the new row."""
    from store.writer import DeleteRow, Effect, InsertRow
    assert commit_and_wait(writer, Commit(stream_id=None, expected_version=0, effects=[
        InsertRow(search_apartments_table, _search_row("kept"))])) is None
    gate, outcomes = Gate(), Outcomes()
    gate.close_on(writer)
    steps: list[Effect] = [InsertRow(search_apartments_table, _search_row("gone")),
             DeleteRow(search_apartments_table, "gone"),
             DeleteRow(search_apartments_table, "kept"),
             InsertRow(search_apartments_table, {**_search_row("kept"), "title": "again"})]
    for i, step in enumerate(steps):
        writer.submit(Commit(stream_id=None, expected_version=0, effects=[step],
                             on_done=outcomes.done(str(i))))
    gate.open()
    outcomes.wait_for([str(i) for i in range(len(steps))])
    assert all(r is None for r in outcomes.results.values())
    with engine.connect() as c:
        rows = {(str(r.apartment_id), str(r.title)) for r in c.execute(
            select(search_apartments_table))}
    assert rows == {("kept", "again")}


# --- lazy commits --------------------------------------------------------------------
def test_a_lazy_commit_rides_in_the_next_transaction(engine: Engine) -> None:
    """The relay's clean-up waits for company: no transaction of its own while commits
    come; alone, it is written once ``lazy_delay`` passed; stopping writes it."""
    from store.writer import InsertRow
    w = StoreWriter(engine, lazy_delay=3600)
    w.start()
    try:
        outcomes = Outcomes()
        w.submit(Commit(stream_id=None, expected_version=0, lazy=True, effects=[
            InsertRow(search_apartments_table, _search_row("lazy"))],
            on_done=outcomes.done("lazy")))
        w.barrier()  # a barrier is a commit: the lazy one rides with it
        assert outcomes.results == {"lazy": None} and w.batches == 1
        assert search_rows(engine) == {"lazy"}
        w.submit(Commit(stream_id=None, expected_version=0, lazy=True, effects=[
            InsertRow(search_apartments_table, _search_row("at-stop"))],
            on_done=outcomes.done("at-stop")))
    finally:
        w.stop()
    assert outcomes.results["at-stop"] is None and "at-stop" in search_rows(engine)
    quick = StoreWriter(engine, lazy_delay=0.05)
    quick.start()
    try:
        late = Outcomes()
        quick.submit(Commit(stream_id=None, expected_version=0, lazy=True, effects=[
            InsertRow(search_apartments_table, _search_row("alone"))],
            on_done=late.done("alone")))
        late.wait_for(["alone"])  # nothing else comes: written after the delay
        assert late.results["alone"] is None and quick.batches == 1
    finally:
        quick.stop()


def test_a_full_queue_holds_the_submitter_until_the_writer_takes_a_batch(
        engine: Engine) -> None:
    """Backpressure: with ``queue_max`` commits waiting, ``submit`` blocks (it does not
    drop nor grow the queue) and goes on once the writer has taken them."""
    w = StoreWriter(engine, batch_max=256, queue_max=3)
    w.start()
    try:
        gate, outcomes = Gate(), Outcomes()
        gate.close_on(w)
        for i in range(3):
            w.submit(Commit(stream_id=None, expected_version=0, on_done=outcomes.done(str(i))))
        held = threading.Thread(target=lambda: w.submit(Commit(
            stream_id=None, expected_version=0, on_done=outcomes.done("held"))))
        held.start()
        held.join(0.3)
        assert held.is_alive() and w.backlog == 3  # waiting for room, nothing dropped
        gate.open()
        held.join(DEADLINE)
        assert not held.is_alive()
        outcomes.wait_for(["0", "1", "2", "held"])
    finally:
        w.stop()


# --- snapshots -----------------------------------------------------------------------
def snapshot_commit(stream: str, version: int, n: int, body: bytes | None,
                    done: Done | None = None) -> Commit:
    """``n`` events on ``stream`` after ``version``, and a snapshot at their end."""
    from store import Snapshot
    from store.writer import snapshot_effects
    effects = [] if body is None else snapshot_effects(
        Snapshot(stream, version + n, "test/1", body))
    commit = Commit(stream_id=stream, expected_version=version,
                    events=[env_of(apartment_added(version + i)) for i in range(n)],
                    effects=effects)
    return commit if done is None else dataclasses.replace(commit, on_done=done)


def test_the_last_snapshot_of_a_batch_is_the_one_kept(engine: Engine,
                                                      writer: StoreWriter) -> None:
    """Each snapshot deletes its stream's row and inserts its own; in one batch the
    writer cancels all but the last insert."""
    assert commit_and_wait(writer, snapshot_commit("s", 0, 2, b"first")) is None
    gate, outcomes = Gate(), Outcomes()
    gate.close_on(writer)
    writer.submit(snapshot_commit("s", 2, 1, b"second", outcomes.done("2")))
    writer.submit(snapshot_commit("s", 3, 2, b"third", outcomes.done("3")))
    writer.submit(snapshot_commit("s", 5, 1, None, outcomes.done("4")))
    gate.open()
    outcomes.wait_for(["2", "3", "4"])
    assert set(outcomes.results.values()) == {None}
    snapshot, tail = EventStore(engine).resume("s")
    assert snapshot is not None and (snapshot.version, snapshot.body) == (5, b"third")
    assert snapshot.schema_tag == "test/1"
    assert [e.payload for e in tail] == [apartment_added(5)]


def test_a_refused_commit_writes_no_snapshot(engine: Engine, writer: StoreWriter) -> None:
    assert commit_and_wait(writer, snapshot_commit("s", 0, 2, b"kept")) is None
    assert isinstance(commit_and_wait(writer, snapshot_commit("s", 1, 2, b"stale")),
                      ConcurrencyError)
    snapshot, tail = EventStore(engine).resume("s")
    assert snapshot is not None and (snapshot.version, snapshot.body, tail) == (2, b"kept", [])


def test_resume_reads_a_whole_stream_without_a_snapshot_it_can_use(
        engine: Engine, writer: StoreWriter) -> None:
    """No snapshot, or one at a version the stream does not reach: every event."""
    store = EventStore(engine)
    assert store.resume("s") == (None, [])
    assert commit_and_wait(writer, snapshot_commit("s", 0, 3, None)) is None
    snapshot, tail = store.resume("s")
    assert snapshot is None and [e.payload for e in tail] == [apartment_added(i)
                                                              for i in range(3)]
    assert commit_and_wait(writer, snapshot_commit("other", 0, 4, b"ahead")) is None
    with engine.begin() as c:  # a row claiming more than "s" holds
        from store.tables import snapshots_table
        c.execute(insert(snapshots_table).values(stream_id="s", version=4, schema_tag="test/1",
                                                 body=b"ahead", taken_at=datetime.now(UTC)))
    snapshot, tail = store.resume("s")
    assert snapshot is None and len(tail) == 3
    assert [e.payload for e in store.load("s", after=1)] == [apartment_added(1),
                                                             apartment_added(2)]
    assert store.load("s", after=3) == []
