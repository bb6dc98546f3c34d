"""The operator's side of the control protocol (the node's side is :mod:`node.control`).

A request is published to the control exchange (``<prefix>.control``) with the
routing key of one node or of all (:func:`broker.topology.control_key`), stamped with
the operator's broker user as AMQP ``user_id``; the nodes answer on direct reply-to.
``staybook ctl``, the live view and the benchmarks all ask through this client, so
they share one way of collecting replies and one error for "no node answered".
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pika
from pika.exceptions import AMQPError, ChannelClosedByBroker, UnroutableError
from pika.spec import BasicProperties

from broker.rabbitmq import connection_parameters
from broker.topology import Topology, control_key
from messages import new_id

REPLY_TO = "amq.rabbitmq.reply-to"
NOT_FOUND = 404
# A replay publishes with confirms, up to 10,000 letters: give it time to answer.
REPLAY_WAIT = 120.0


class ControlFailed(Exception):
    """No node answered, or the broker refused the request."""


class ControlClient:
    """Sends control requests to the nodes and collects their replies.

    Args:
        url: the operator's AMQP URL (its user is stamped on every request).
        topology: the deployment's names.
        ttl: seconds after which an unread request expires in a node's queue.
    """

    def __init__(self, url: str, topology: Topology, *, ttl: float = 10.0) -> None:
        params = connection_parameters(url)
        self.user: str = params[0].credentials.username
        self.topology = topology
        self._ttl = ttl
        self._conn = pika.BlockingConnection(params)
        self._ch = self._conn.channel()
        self._ch.confirm_delivery()
        self._replies: dict[str, list[dict[str, Any]]] = {}
        self._ch.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)

    def _on_reply(self, _ch: Any, _method: Any, props: BasicProperties, body: bytes) -> None:
        box = self._replies.get(props.correlation_id or "")
        if box is not None:
            with contextlib.suppress(ValueError):
                box.append(json.loads(body))

    def request(self, op: str, args: dict[str, Any] | None = None, *,
                node: str | None = None, wait: float = 1.0,
                until_ok: bool = False) -> list[dict[str, Any]]:
        """Ask one node (``node``) or all; the replies that came within ``wait`` seconds.

        A request to one node returns at its first reply; ``until_ok`` returns at the
        first successful reply from any node (an actor lives on one node only).

        Raises:
            ControlFailed: when no node is listening or the broker refused it.
        """
        corr = new_id()
        box: list[dict[str, Any]] = []
        self._replies[corr] = box
        props = BasicProperties(reply_to=REPLY_TO, correlation_id=corr, user_id=self.user,
                                content_type="application/json",
                                expiration=str(int(self._ttl * 1000)))
        body = json.dumps({"op": op, "args": args or {}}).encode()
        try:
            self._ch.basic_publish(self.topology.control_exchange, control_key(node), body, props,
                                   mandatory=True)
        except UnroutableError as exc:
            raise self._nobody(node) from exc
        except ChannelClosedByBroker as exc:
            if exc.reply_code == NOT_FOUND:  # no node ever declared the control exchange
                raise self._nobody(node) from exc
            raise ControlFailed(f"the broker refused the request: {exc.reply_text}") from exc
        deadline = time.monotonic() + wait
        try:
            while (left := deadline - time.monotonic()) > 0:
                self._conn.process_data_events(time_limit=min(left, 0.05))
                if (node and box) or (until_ok and any(r.get("ok") for r in box)):
                    break
        finally:
            self._replies.pop(corr, None)
        return sorted(box, key=lambda r: str(r.get("node")))

    def _nobody(self, node: str | None) -> ControlFailed:
        """No control queue took the request: it failed at once, no need to wait."""
        exchange = self.topology.control_exchange
        if node:
            return ControlFailed(f"no node named {node} is consuming {exchange}; is it "
                                 "running? (staybook ctl nodes lists those that are)")
        return ControlFailed(f"no node is consuming {exchange}; start one (make serve)")

    def close(self) -> None:
        """Close the connection."""
        if self._conn.is_open:
            with contextlib.suppress(AMQPError, OSError):
                self._conn.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- actor operations ---------------------------------------------------------
    def act(self, op: str, actor: str, *, node: str | None = None,
            wait: float = 1.0) -> dict[str, Any]:
        """Restart, stop or crash one actor, on the one node that has it.

        Without ``node`` the actor is first looked up on every node; a child found on
        several nodes (``payment`` runs everywhere) needs ``node``.

        Raises:
            ControlFailed: when it is nowhere, ambiguous, or the node refused.
        """
        if node is None:
            # Only where it is live: every node can fold an entity from the store.
            found = [r for r in self.request("inspect", {"id": actor}, wait=wait)
                     if r["ok"] and r["result"].get("live", True)]
            if not found:
                raise ControlFailed(f"{actor}: not live on any node")
            if len(found) > 1:
                names = ", ".join(str(r["node"]) for r in found)
                raise ControlFailed(f"{actor} runs on {names}: choose one with --node")
            node = str(found[0]["node"])
        replies = self.request(op, {"id": actor, "by": self.user}, node=node, wait=wait)
        if not replies:
            raise ControlFailed(f"{node} did not answer")
        reply = replies[0]
        if not reply.get("ok"):
            raise ControlFailed(f"{node}: {reply.get('error')}")
        return reply
