"""``/healthz`` and ``/ready`` over real HTTP, on a node of a real RabbitMQ.

Ready means consuming: a commands node is not ready until membership chose its
partitions and their consumers are subscribed; one that legitimately holds no
partition (more nodes than partitions) is ready all the same. Alive means the
supervision tree runs.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pika
import port_for

from broker.rabbitmq import connection_parameters
from messages import Consumer
from node import Node
from tests.conftest import eventually
from tests.integration.conftest import nodes_on


def _metrics() -> dict[str, int]:
    """Metrics on a free port (0 would mean none)."""
    return {"port": port_for.select_random()}


def _get(node: Node, path: str) -> tuple[int, str]:
    """``GET path`` on the node's metrics port: the status and the body's line."""
    server = node.metrics_server
    assert server is not None and server.bound_port is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.bound_port}{path}",
                                    timeout=5) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode().strip()


def test_ready_once_it_consumes_its_partitions_and_alive_until_it_gives_up(
        node_factory: Callable[..., Node]) -> None:
    node = node_factory(metrics=_metrics())
    eventually(lambda: _get(node, "/ready") == (200, "ready"))
    assert node.partitions is not None and node.partitions.held()
    assert _get(node, "/healthz") == (200, "alive")
    status, text = _get(node, "/metrics")
    assert status == 200 and "staybook_store_up" in text  # still the scrape
    node.app.fail("drill", RuntimeError("gave up"))
    assert _get(node, "/healthz") == (503, "the supervision tree gave up")
    assert _get(node, "/ready") == (503, "the supervision tree gave up")


def test_not_ready_before_membership_chose_nor_while_a_queue_is_not_consumed(
        node_factory: Callable[..., Node], amqp_url: str) -> None:
    node = node_factory(metrics=_metrics())
    eventually(lambda: node.readiness() == (True, "ready"))
    node.partitions_chosen.clear()  # as it is between the start and the first beat
    assert node.readiness() == (False, "waiting for the cluster to assign partitions")
    node.partitions_chosen.set()
    search = node.topology.queue(Consumer.SEARCH)
    conn = pika.BlockingConnection(connection_parameters(amqp_url))
    try:
        conn.channel().queue_delete(search)  # the broker cancels its consumer
    finally:
        conn.close()
    eventually(lambda: _get(node, "/ready") == (503, f"not consuming {search}"))
    assert _get(node, "/healthz") == (200, "alive")  # riding it out: alive, not ready
    node.broker.declare()
    eventually(lambda: _get(node, "/ready") == (200, "ready"))


def test_a_node_holding_no_partition_is_ready(amqp_url: str, tmp_path: Path) -> None:
    with nodes_on(amqp_url, tmp_path, partitions=1) as make:
        nodes = [make(node_name="n1", metrics=_metrics()),
                 make(node_name="n2", metrics=_metrics())]

        def settled() -> bool:  # both see both, and each holds what it is assigned
            return all(n.membership is not None and n.partitions is not None
                       and len(n.membership.members()) == 2
                       and n.partitions.held() == set(n.membership.assigned())
                       for n in nodes)

        eventually(settled)
        idle = next(n for n in nodes if n.partitions is not None and not n.partitions.held())
        eventually(lambda: _get(idle, "/ready") == (200, "ready"))
        assert idle.partitions is not None and not idle.partitions.held()
