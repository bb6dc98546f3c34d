"""The book of dead letters: recorded once, read without change, replayed when asked.

The book runs on SQLite and PostgreSQL (the ``engine`` fixture); the recorder and
replay run against the in-memory broker twin, whose publisher refuses an unroutable
message as RabbitMQ's ``mandatory`` does.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from broker.base import DEAD_ID_HEADER, QUEUE_HEADER, REASON_HEADER, Outgoing
from broker.memory import MemoryBroker
from messages import Consumer
from node.deadletters import REPLAYED_HEADER, DeadLetterRecorder, letter_of, replay
from store.deadletters import DEAD, REPLAYED, REPLAYING, BookFull, DeadLetterBook, Letter
from store.tables import dead_letters_table, inbox_table
from tests.conftest import eventually

ROOM = 1_000  # more letters than any test records: the book is never full

def letter(key: str, *, queue: str | None = "t.intake", message_id: str | None = "m1",
           body: bytes = b'{"type": "AddApartment"}') -> Letter:
    return Letter(key=key, queue=queue, reason="poison", detail="boom", type="AddApartment",
                  message_id=message_id, correlation_id="c1", reply_to=None,
                  headers={REASON_HEADER: "poison"}, body=body)


def rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(select(dead_letters_table)
                                            .order_by(dead_letters_table.c.seq))]


# --- the book ------------------------------------------------------------------------
def test_a_letter_is_recorded_once_and_read_in_landing_order(engine: Engine) -> None:
    book = DeadLetterBook(engine, max_rows=ROOM)
    assert book.record(letter("k1"))
    assert not book.record(letter("k1"))  # redelivered to the recorder: not twice
    assert book.record(letter("k2", message_id="m2"))
    page = book.page()
    assert [(r.letter.key, r.status) for r in page] == [("k1", DEAD), ("k2", DEAD)]
    assert [r.letter.key for r in book.page(after=page[0].seq)] == ["k2"]
    assert [r.seq for r in book.find(str(page[1].seq))] == [page[1].seq]
    assert [r.letter.key for r in book.find("m2")] == ["k2"]
    assert book.find("nobody") == []
    assert page[0].full()["body"] == '{"type": "AddApartment"}'


def test_reading_changes_no_row(engine: Engine) -> None:
    book = DeadLetterBook(engine, max_rows=ROOM)
    for i in range(5):
        book.record(letter(f"k{i}", message_id=f"m{i}"))
    before = rows(engine)
    for i in range(100):
        book.page(limit=3)
        book.find(f"m{i % 5}")
        book.count()
    assert rows(engine) == before


def test_a_full_book_refuses_more(engine: Engine) -> None:
    book = DeadLetterBook(engine, max_rows=2)
    book.record(letter("k1"))
    book.record(letter("k2"))
    with pytest.raises(BookFull):
        book.record(letter("k3"))
    assert not book.record(letter("k2"))  # a redelivery of a recorded one is still fine
    assert book.purge() == 2
    assert book.record(letter("k3"))


def test_one_claim_wins_and_a_release_makes_it_dead_again(engine: Engine) -> None:
    book = DeadLetterBook(engine, max_rows=ROOM)
    book.record(letter("k1"))
    [rec] = book.page()
    got = book.claim(rec.seq)
    assert got is not None and got.status == REPLAYING
    assert book.claim(rec.seq) is None  # another request, another node: refused
    book.release(rec.seq, "unroutable")
    [again] = book.page()
    assert (again.status, again.last_error) == (DEAD, "unroutable")
    assert book.claim(rec.seq) is not None
    book.replayed(rec.seq)
    assert book.page() == []
    [done] = book.page(statuses=(REPLAYED,))
    assert (done.replays, done.replayed_at is not None) == (1, True)
    assert book.claim(rec.seq) is None
    assert book.purge(replayed_only=True) == 1


def test_concurrent_claims_give_each_letter_to_one(engine: Engine) -> None:
    book = DeadLetterBook(engine, max_rows=ROOM)
    for i in range(20):
        book.record(letter(f"k{i}"))
    seqs = [r.seq for r in book.page()]
    won: list[int] = []
    lock = threading.Lock()

    def claimer() -> None:
        for s in seqs:
            if book.claim(s) is not None:
                with lock:
                    won.append(s)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == seqs


# --- what is recorded of a delivery ---------------------------------------------------
def dead_letter_via(broker: MemoryBroker, body: bytes, **headers: Any) -> Any:
    """A message refused on the intake queue, as it lands in the dead letters."""
    topo = broker.topology
    intake = topo.queue(Consumer.INTAKE)
    broker.publish(Outgoing("", intake, body, message_id="m-\x00" + "x" * 300,
                            headers=headers))
    got: list[Any] = []
    c = broker.consumer(intake, got.append, prefetch=1, name="t")
    c.start()
    eventually(lambda: bool(got))
    got[0].dead_letter("schema_error", "bad field")
    c.stop()
    taken: list[Any] = []
    c = broker.consumer(topo.dead_letter_queue, taken.append, prefetch=1, name="t2")
    c.start()
    eventually(lambda: bool(taken))
    c.stop()
    return taken[0]


def test_a_refused_message_is_recorded_with_its_reason_and_origin() -> None:
    broker = MemoryBroker()
    broker.declare()
    d = dead_letter_via(broker, b'{"type": "AddApartment", "x": "\\u0000"}')
    lt = letter_of(d)
    assert (lt.reason, lt.detail, lt.type) == ("schema_error", "bad field", "AddApartment")
    assert lt.queue == broker.topology.queue(Consumer.INTAKE)
    assert lt.key == d.headers[DEAD_ID_HEADER]
    # Fit for any column: bounded, and no NUL (PostgreSQL refuses them in text).
    assert lt.message_id is not None and len(lt.message_id) == 200
    assert "\x00" not in lt.message_id


def test_a_broker_made_dead_letter_is_recorded_from_x_death() -> None:
    broker = MemoryBroker()
    broker.declare()
    topo = broker.topology
    intake = topo.queue(Consumer.INTAKE)
    death = [{"reason": "delivery_limit", "queue": intake, "count": 21,
              "time": "2026-12-01 12:00:00"}]
    d = dead_letter_via(broker, b"{}")
    headers = {k: v for k, v in d.headers.items()
               if k not in (DEAD_ID_HEADER, REASON_HEADER, QUEUE_HEADER)}
    headers["x-death"] = death
    d.headers = headers
    lt = letter_of(d)
    assert (lt.reason, lt.queue) == ("delivery_limit", intake)
    assert letter_of(d).key == lt.key  # the same death: the same key
    d.headers = {**headers, "x-death": [{**death[0], "count": 42}]}
    assert letter_of(d).key != lt.key  # another death of the same message


# --- the recorder ---------------------------------------------------------------------
def recording(broker: MemoryBroker, book: DeadLetterBook) -> tuple[DeadLetterRecorder, Any]:
    rec = DeadLetterRecorder(book)
    rec.start()
    consumer = broker.consumer(broker.topology.dead_letter_queue, rec.on_delivery,
                               prefetch=10, name="dl")
    consumer.start()
    return rec, consumer


def refuse(broker: MemoryBroker, n: int) -> None:
    topo = broker.topology
    for i in range(n):
        broker.publish(Outgoing(topo.dead_letter_exchange, "", b"bad", message_id=f"m{i}",
                                headers={DEAD_ID_HEADER: f"id-{i}", REASON_HEADER: "not_json",
                                         QUEUE_HEADER: topo.queue(Consumer.INTAKE)}))


def test_the_recorder_empties_the_queue_into_the_book(engine: Engine) -> None:
    broker = MemoryBroker()
    broker.declare()
    book = DeadLetterBook(engine, max_rows=ROOM)
    rec, consumer = recording(broker, book)
    try:
        refuse(broker, 5)
        eventually(lambda: book.count() == 5)
        eventually(lambda: broker.depth(broker.topology.dead_letter_queue) == 0)
    finally:
        consumer.stop()
        rec.stop()
    assert [r.letter.message_id for r in book.page()] == [f"m{i}" for i in range(5)]
    assert rec.recorded == 5


def test_a_spare_copy_of_a_handled_message_is_not_a_dead_letter(engine: Engine) -> None:
    """The broker dead-letters copies at its delivery limit; lost connections raise the
    count (a broker node going away), so a handled command can reach it. Only a copy
    of a message some consumer handled, dead-lettered by the broker, is dropped."""
    broker = MemoryBroker()
    broker.declare()
    topo = broker.topology
    with engine.begin() as c:
        c.execute(insert(inbox_table).values(consumer="intake", message_id="done",
                                             recorded_at=datetime.now(UTC)))
    limit = [{"reason": "delivery_limit", "queue": topo.queue(Consumer.INTAKE), "count": 1}]
    letters: list[tuple[str, dict[str, Any]]] = [
        ("done", {"x-death": limit}),  # handled: a spare copy
        ("new", {"x-death": limit}),   # never handled: a dead letter
        ("done", {DEAD_ID_HEADER: "refused", REASON_HEADER: "not_json",  # refused by a node
                  QUEUE_HEADER: topo.queue(Consumer.INTAKE)})]
    for mid, headers in letters:
        broker.publish(Outgoing(topo.dead_letter_exchange, "", b"{}", message_id=mid,
                                headers=headers))
    book = DeadLetterBook(engine, max_rows=ROOM)
    rec, consumer = recording(broker, book)
    try:
        eventually(lambda: broker.depth(topo.dead_letter_queue) == 0)
        eventually(lambda: rec.recorded + rec.spare_copies == 3)
    finally:
        consumer.stop()
        rec.stop()
    assert rec.spare_copies == 1
    assert sorted((r.letter.message_id, r.letter.reason) for r in book.page()) == [
        ("done", "not_json"), ("new", "delivery_limit")]


def test_a_full_book_holds_letters_in_the_queue_until_purged(engine: Engine) -> None:
    """Nothing is dropped: what cannot be recorded stays unacked, then lands."""
    broker = MemoryBroker()
    broker.declare()
    dlq = broker.topology.dead_letter_queue
    book = DeadLetterBook(engine, max_rows=2)
    rec, consumer = recording(broker, book)
    try:
        refuse(broker, 4)
        eventually(lambda: book.count() == 2 and rec.failures > 0)
        assert broker.depth(dlq) == 2  # held, not acked, not requeued
        book.purge()
        eventually(lambda: book.count() == 2 and broker.depth(dlq) == 0)
    finally:
        consumer.stop()
        rec.stop()
    assert [r.letter.message_id for r in book.page()] == ["m2", "m3"]


def test_stopping_gives_unrecorded_letters_back(engine: Engine) -> None:
    broker = MemoryBroker()
    broker.declare()
    dlq = broker.topology.dead_letter_queue
    book = DeadLetterBook(engine, max_rows=1)
    rec, consumer = recording(broker, book)
    refuse(broker, 3)
    eventually(lambda: book.count() == 1 and rec.failures > 0)
    consumer.stop()
    rec.stop()
    assert broker.depth(dlq) == 2  # both back in the queue, ready for the next recorder
    assert len(broker.drain(dlq)) == 2


# --- replay ----------------------------------------------------------------------------
def test_replay_puts_a_letter_back_on_its_queue_once(engine: Engine) -> None:
    broker = MemoryBroker()
    broker.declare()
    intake = broker.topology.queue(Consumer.INTAKE)
    book = DeadLetterBook(engine, max_rows=ROOM)
    book.record(Letter(key="k1", queue=intake, reason="poison", detail="d", type="X",
                       message_id="m1", correlation_id="c1",
                       reply_to="amq.rabbitmq.reply-to.abc",
                       headers={REASON_HEADER: "poison", DEAD_ID_HEADER: "k1",
                                "x-delivery-count": 3}, body=b'{"a": 1}'))
    [seq] = [r.seq for r in book.page()]
    results = replay(book, broker, str(seq))
    assert results == [{"id": seq, "replayed": True, "queue": intake}]
    [out] = broker.drain(intake)
    assert (out.body, out.message_id, out.correlation_id, out.reply_to) == (
        b'{"a": 1}', "m1", "c1", None)  # the producer stopped waiting long ago
    assert out.headers[REPLAYED_HEADER] == 1
    assert DEAD_ID_HEADER not in out.headers and "x-delivery-count" not in out.headers
    assert replay(book, broker, str(seq))[0]["error"] == "already replayed"
    assert replay(book, broker) == []  # nothing dead is left
    assert broker.drain(intake) == []


def test_replay_to_a_queue_that_is_gone_keeps_the_letter(engine: Engine) -> None:
    broker = MemoryBroker()
    broker.declare()
    book = DeadLetterBook(engine, max_rows=ROOM)
    book.record(letter("k1", queue="t.gone"))
    book.record(letter("k2", queue=None))
    results = replay(book, broker)
    assert [r["replayed"] for r in results] == [False, False]
    assert "Unroutable" in results[0]["error"] and results[1]["error"] == "origin unknown"
    assert [(r.status, r.last_error is not None) for r in book.page()] == [
        (DEAD, True), (DEAD, False)]


def test_letters_survive_a_json_round_trip_of_their_headers(engine: Engine) -> None:
    book = DeadLetterBook(engine, max_rows=ROOM)
    lt = letter("k1")
    book.record(Letter(**{**lt.__dict__, "headers": {"x-death": [{"count": 1}], "n": None}}))
    [r] = book.page()
    assert r.letter.headers == {"x-death": [{"count": 1}], "n": None}
    assert json.loads(json.dumps(r.full()))["headers"]["x-death"][0]["count"] == 1
