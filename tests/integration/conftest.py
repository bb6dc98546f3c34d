"""Integration fixtures: a private RabbitMQ node (pytest-rabbitmq) and nodes on it.

Each test gets its own exchange/queue prefix and its own SQLite file, so tests share
one broker process without seeing each other's messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from broker.client import Client
from broker.rabbitmq import connection_parameters, wait_for_broker
from node import Node
from rules.clock import pinned
from tests.conftest import TODAY, make_settings, unique

_HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under this directory ``integration``.

    A ``pytestmark`` in a conftest is ignored (it only works in test modules), and
    this hook sees the whole session's items, so it marks by path. ``tryfirst``: the
    marks must be on before ``-m`` deselects.
    """
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def amqp_url(rabbitmq_proc: Any) -> str:
    """The URL of the session's private RabbitMQ node."""
    url = f"amqp://guest:guest@{rabbitmq_proc.host}:{rabbitmq_proc.port}/%2F"
    wait_for_broker(url, timeout=60)
    return url


@contextlib.contextmanager
def nodes_on(url: str, tmp_path: Path, **broker: Any) -> Iterator[Callable[..., Node]]:
    """A maker of started nodes on ``url`` with a prefix of their own (and ``broker``
    settings); on exit the nodes stop and the prefix's queues and exchanges go."""
    prefix = unique("t")
    nodes: list[Node] = []

    def make(**overrides: Any) -> Node:
        settings = make_settings(tmp_path, **overrides)
        settings.broker.url = url
        settings.broker.prefix = prefix
        for name, value in broker.items():
            setattr(settings.broker, name, value)
        node = Node(settings, clock=pinned(TODAY))
        node.start()
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        for n in nodes:
            with contextlib.suppress(Exception):
                n.stop()
        _delete_prefix(url, nodes)


@pytest.fixture
def node_factory(amqp_url: str, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start nodes on the private broker with a per-test prefix; stop and clean up after."""
    with nodes_on(amqp_url, tmp_path) as make:
        yield make


def _delete_prefix(url: str, nodes: list[Node]) -> None:
    if not nodes:
        return
    topo = nodes[0].topology
    conn = pika.BlockingConnection(connection_parameters(url))
    try:
        ch = conn.channel()
        for q in topo.queues():
            ch.queue_delete(q.name)
        for ex in topo.exchanges():
            ch.exchange_delete(ex.name)
        ch.exchange_delete(f"{topo.prefix}.members")
    finally:
        conn.close()


@pytest.fixture
def node(node_factory: Callable[..., Node]) -> Node:
    """One started node on the private broker."""
    return node_factory()


@pytest.fixture
def client(node: Node, amqp_url: str) -> Iterator[Client]:
    """A producer client for ``node``."""
    c = Client(amqp_url, node.topology)
    yield c
    c.close()
