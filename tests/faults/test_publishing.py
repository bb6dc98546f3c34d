"""Publishing under refusal: nacks, returns and dead connections fail the batch.

On the session's private RabbitMQ node (pytest-rabbitmq). The relay may mark an
outbox row published only after the broker confirmed it; these tests make the broker
refuse in each way it can and check the rows stay unmarked until it accepts them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.exceptions import AMQPError
from sqlalchemy import Engine, insert, select

from broker.base import Outgoing
from broker.rabbitmq import AsyncConfirmPublisher, PublishFailed, RabbitBroker, wait_for_broker
from broker.topology import Topology
from messages import new_id
from node.relay import Relay
from store import StoreWriter, make_engine
from store.tables import outbox_table
from tests.conftest import unique

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def broker_url(rabbitmq_proc: Any) -> str:
    """The session's private RabbitMQ node."""
    url = f"amqp://guest:guest@{rabbitmq_proc.host}:{rabbitmq_proc.port}/%2F"
    wait_for_broker(url, timeout=60)
    return url


@pytest.fixture
def names(broker_url: str) -> Iterator[dict[str, str]]:
    """A fresh exchange and bounded queue for one test; deleted after it."""
    p = unique("pub")
    out = {"exchange": f"{p}.ex", "queue": f"{p}.q", "lonely": f"{p}.lonely"}
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    ch.exchange_declare(out["exchange"], "fanout", durable=True)
    ch.exchange_declare(out["lonely"], "fanout", durable=True)  # no queue bound
    ch.queue_declare(out["queue"], durable=True, arguments={
        "x-queue-type": "quorum", "x-max-length": 2, "x-overflow": "reject-publish"})
    ch.queue_bind(out["queue"], out["exchange"])
    conn.close()
    yield out
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    with contextlib.suppress(AMQPError):
        ch.queue_delete(out["queue"])
        ch.exchange_delete(out["exchange"])
        ch.exchange_delete(out["lonely"])
    with contextlib.suppress(AMQPError, OSError):
        conn.close()


def _msg(exchange: str, n: int = 0) -> Outgoing:
    return Outgoing(exchange=exchange, routing_key="", body=b'{"n": %d}' % n,
                    message_id=new_id())


def test_confirmed_unroutable_and_nacked_batches(broker_url: str,
                                                 names: dict[str, str]) -> None:
    pub = AsyncConfirmPublisher(pika.URLParameters(broker_url))
    try:
        pub.publish_confirmed([_msg(names["exchange"], i) for i in range(2)])  # confirmed
        with pytest.raises(PublishFailed, match="unroutable"):
            pub.publish_confirmed([_msg(names["lonely"])])  # mandatory, returned
        # A full queue (reject-publish) nacks. A quorum queue's limit is soft: it may
        # take a few more messages before it starts refusing.
        nacked = None
        for i in range(20):
            try:
                pub.publish_confirmed([_msg(names["exchange"], 3 + i)])
            except PublishFailed as exc:
                nacked = exc
                break
        assert nacked is not None and "nack" in str(nacked)
        assert pub.alive  # refusals do not cost the connection
    finally:
        pub.close()


def test_a_dead_connection_fails_the_wait_instead_of_hanging(
        broker_url: str, names: dict[str, str]) -> None:
    pub = AsyncConfirmPublisher(pika.URLParameters(broker_url))
    try:
        # A 404 (no such exchange) closes the channel, and the publisher with it.
        with pytest.raises(PublishFailed):
            pub.publish_confirmed([_msg(f"{names['exchange']}-missing")], timeout=600)
        deadline = time.monotonic() + 10
        while pub.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pub.alive
        with pytest.raises(PublishFailed, match="closed"):
            pub.publish_confirmed([_msg(names["exchange"])], timeout=600)
    finally:
        pub.close()


def _outbox_row(engine: Engine, exchange_logical: str) -> int:
    with engine.begin() as conn:
        res = conn.execute(insert(outbox_table).values(
            event_id=new_id(), type="ApartmentAdded", exchange=exchange_logical,
            routing_key="", body=b"{}"))
        pk = res.inserted_primary_key
        assert pk is not None
        return int(pk[0])


def _present(engine: Engine, row: int) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(outbox_table.c.id).where(
            outbox_table.c.id == row)).first() is not None


def test_the_relay_deletes_a_row_only_after_its_confirm(
        broker_url: str, names: dict[str, str], tmp_path: Path) -> None:
    """A row whose exchange refuses it stays unpublished, retried, until it is accepted."""
    prefix = names["exchange"].rsplit(".", 1)[0]
    broker = RabbitBroker(broker_url, Topology(prefix=prefix), heartbeat=30,
                          reconnect_max_delay=0.2, drain_seconds=10.0)
    engine = make_engine(f"sqlite:///{tmp_path / 'relay.db'}")
    writer = StoreWriter(engine)
    relay = Relay(engine, writer, broker, batch=10, max_delay=0.2)
    writer.set_on_committed(relay.wake)
    writer.start()
    relay.start()
    try:
        refused = _outbox_row(engine, "lonely")  # unroutable: returned on every try
        deadline = time.monotonic() + 30
        while relay.failures < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert relay.failures >= 3
        assert _present(engine, refused)
        assert relay.backlog() == 1
        # Give it somewhere to go: the next attempt is confirmed, and only then deleted.
        conn = pika.BlockingConnection(pika.URLParameters(broker_url))
        conn.channel().queue_bind(names["queue"], names["lonely"])
        conn.close()
        deadline = time.monotonic() + 30
        while _present(engine, refused) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _present(engine, refused)
        assert relay.published == 1 and relay.backlog() == 0
    finally:
        relay.stop()
        writer.stop()
        engine.dispose()
