"""What the operator's tools read from RabbitMQ itself, without asking a node.

Passive declares change nothing and need no management plugin, so queue depths
are known while every node is down (which is when they matter most).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pika
from pika.exceptions import AMQPError, ChannelClosedByBroker

from broker.topology import Topology
from config import split_urls

log = logging.getLogger(__name__)


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


def queue_replicas(management_url: str, vhost: str, prefix: str, *,
                   timeout: float = 5.0) -> dict[str, dict[str, Any]] | None:
    """Each ``<prefix>.`` quorum queue's leader, members and online members, from the
    management API of the first node of ``management_url`` that answers.

    None when no node answered (the reason goes to the log at DEBUG).
    """
    for base in split_urls(management_url):
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("http", "https"):
            log.debug("management URL %s: not http(s)", parts.hostname)
            continue
        host = parts.hostname or "localhost"
        netloc = f"{host}:{parts.port}" if parts.port else host
        path = (f"/api/queues/{urllib.parse.quote(vhost, safe='')}"
                "?columns=name,type,leader,members,online")
        request = urllib.request.Request(f"{parts.scheme}://{netloc}{path}")  # noqa: S310
        if parts.username:
            token = f"{urllib.parse.unquote(parts.username)}:" \
                    f"{urllib.parse.unquote(parts.password or '')}"
            request.add_header("Authorization",
                               "Basic " + base64.b64encode(token.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                rows = json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.debug("management API at %s: %r", netloc, exc)
            continue
        return {r["name"]: {"leader": r.get("leader"), "members": sorted(r.get("members", [])),
                            "online": sorted(r.get("online", []))}
                for r in rows if r.get("type") == "quorum"
                and str(r.get("name", "")).startswith(f"{prefix}.")}
    return None
