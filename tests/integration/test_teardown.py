"""`staybook broker teardown`: a prefix's queues and exchanges go, after asking."""

from __future__ import annotations

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker
from typer.testing import CliRunner

from broker.rabbitmq import RabbitBroker, connection_parameters
from broker.topology import topology_of
from config import Settings
from console.cli import app
from tests.conftest import unique


def _exists(url: str, queue: str) -> bool:
    conn = pika.BlockingConnection(connection_parameters(url))
    try:
        conn.channel().queue_declare(queue, passive=True)
        return True
    except ChannelClosedByBroker:
        return False
    finally:
        if conn.is_open:
            conn.close()


@pytest.fixture
def deployed(amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A prefix's topology declared, with a message waiting in its dead-letter queue."""
    settings = Settings(broker={"url": amqp_url, "prefix": unique("td"), "partitions": 2})
    topo = topology_of(settings)
    broker = RabbitBroker.from_settings(settings)
    broker.declare()
    broker.close()
    conn = pika.BlockingConnection(connection_parameters(amqp_url))
    conn.channel().basic_publish("", topo.dead_letter_queue, b"left behind")
    conn.close()
    monkeypatch.setenv("STAYBOOK_BROKER__URL", amqp_url)
    monkeypatch.setenv("STAYBOOK_BROKER__PARTITIONS", "2")
    return settings


def test_teardown_deletes_a_prefixs_queues_and_exchanges(amqp_url: str,
                                                         deployed: Settings) -> None:
    prefix = deployed.broker.prefix
    topo = topology_of(deployed)
    asked = CliRunner().invoke(app, ["broker", "teardown", "--prefix", prefix])
    assert asked.exit_code == 1 and "pass --yes" in asked.output  # no terminal to ask on
    assert _exists(amqp_url, topo.dead_letter_queue)
    done = CliRunner().invoke(app, ["broker", "teardown", "--prefix", prefix, "--yes"])
    assert done.exit_code == 0, done.output
    n = len(topo.queues())
    assert done.stdout.startswith(f"deleted {n} queues (1 message) and "), done.stdout
    assert not any(_exists(amqp_url, q.name) for q in topo.queues())
    again = CliRunner().invoke(app, ["broker", "teardown", "--prefix", prefix, "--yes"])
    assert again.exit_code == 0 and "nothing to delete" in again.stdout


def test_teardown_refuses_while_a_node_consumes(amqp_url: str, deployed: Settings) -> None:
    topo = topology_of(deployed)
    conn = pika.BlockingConnection(connection_parameters(amqp_url))
    try:
        conn.channel().basic_consume(topo.dead_letter_queue, lambda *_a: None)
        r = CliRunner().invoke(app, ["broker", "teardown", "--prefix",
                                     deployed.broker.prefix, "--yes"])
    finally:
        conn.close()
    assert r.exit_code == 1
    assert r.output.splitlines() == [
        f"staybook: {topo.dead_letter_queue} still consumed: stop the nodes of "
        f"{deployed.broker.prefix} first"]
    assert _exists(amqp_url, topo.dead_letter_queue)
    CliRunner().invoke(app, ["broker", "teardown", "--prefix", deployed.broker.prefix,
                             "--yes"])
