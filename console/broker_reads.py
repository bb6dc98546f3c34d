"""What the operator's tools read from RabbitMQ itself, without asking a node.

Passive declares change nothing and need no management plugin, so queue depths
are known while every node is down (which is when they matter most).
"""

from __future__ import annotations

import contextlib
from typing import Any

import pika
from pika.exceptions import AMQPError, ChannelClosedByBroker

from broker.topology import Topology


def queue_names(topology: Topology) -> list[str]:
    """Every durable Staybook queue."""
    return [q.name for q in topology.queues()]


def queue_stats(conn: pika.BlockingConnection, topology: Topology) -> list[dict[str, Any]]:
    """Depth and consumers of every Staybook queue, by passive declare (no plugin)."""
    out: list[dict[str, Any]] = []
    ch = conn.channel()
    for name in queue_names(topology):
        try:
            ok = ch.queue_declare(name, passive=True).method
            out.append({"queue": name, "messages": ok.message_count,
                        "consumers": ok.consumer_count})
        except ChannelClosedByBroker as exc:
            out.append({"queue": name, "messages": None, "consumers": None,
                        "error": exc.reply_text})
            ch = conn.channel()
    with contextlib.suppress(AMQPError):
        ch.close()
    return out


def dead_letter_depth(conn: pika.BlockingConnection, topology: Topology) -> int | None:
    """Letters that landed but are not recorded yet (a passive declare: changes nothing)."""
    ch = conn.channel()
    try:
        return int(ch.queue_declare(topology.dead_letter_queue, passive=True)
                   .method.message_count)
    except ChannelClosedByBroker:
        return None
    finally:
        if ch.is_open:
            with contextlib.suppress(AMQPError):
                ch.close()
