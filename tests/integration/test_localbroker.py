"""The private-RabbitMQ launcher on a real node: what the drills and the bench rely on.

A message in a quorum queue survives a SIGKILL of the node and a restart on the same
data; a clean stop frees the port. The node is the launcher's own (free ports, a
name of its own), not the session's pytest-rabbitmq node.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pika
import pytest
from pika.exceptions import AMQPError

from broker.rabbitmq import connection_parameters
from console.localbroker import LocalRabbit
from tests.conftest import eventually


def _take(url: str, queue: str) -> bytes | None:
    """One message from ``queue``, acked; None if there is none, or no leader yet."""
    try:
        conn = pika.BlockingConnection(connection_parameters(url))
    except AMQPError:
        return None
    try:
        _method, _props, body = conn.channel().basic_get(queue, auto_ack=True)
        return None if body is None else bytes(body)
    except AMQPError:  # the broker closes the connection while the queue recovers
        return None
    finally:
        with contextlib.suppress(AMQPError):
            conn.close()


@pytest.mark.timeout(420)
def test_a_private_node_keeps_its_quorum_queue_across_a_restart_and_a_kill(
        tmp_path: Path) -> None:
    rabbit = LocalRabbit.private(tmp_path / "rabbitmq", "launch-test")
    rabbit.start()
    try:
        conn = pika.BlockingConnection(connection_parameters(rabbit.url))
        conn.channel().queue_declare("kept", durable=True,
                                     arguments={"x-queue-type": "quorum"})
        conn.close()
        # On RabbitMQ 3.10 a quorum queue declared just before a SIGKILL came back
        # without its Raft member (the node's registry of them is saved now and then,
        # and on a clean stop), so a clean restart comes first.
        rabbit.restart()
        conn = pika.BlockingConnection(connection_parameters(rabbit.url))
        ch = conn.channel()
        ch.confirm_delivery()
        for body in (b"before", b"kept"):
            ch.basic_publish("", "kept", body, pika.BasicProperties(delivery_mode=2))
        conn.close()
        assert _take(rabbit.url, "kept") == b"before"

        rabbit.restart(kill=True)
        assert rabbit.running()
        # The queue's leader is elected again after the restart: until then, no message.
        taken: list[bytes] = []

        def took() -> bool:
            body = _take(rabbit.url, "kept")
            taken.extend([] if body is None else [body])
            return bool(taken)

        eventually(took, timeout=120, poll=0.5)
        assert taken == [b"kept"]
    finally:
        stopped = rabbit.stop()
    assert stopped
    assert rabbit.proc is None and not rabbit.running()
