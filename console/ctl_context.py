"""One ``staybook ctl`` invocation: its resolved options, and how its commands ask.

The ``ctl`` callback stores a :class:`CtlContext` on the typer context; the node
commands (:mod:`console.ctl`) and the dead-letter ones (:mod:`console.ctl_dlq`) read
it back with :func:`context_of` and ask through :func:`ask`, so both turn a broker
or control failure into the same one error line.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import pika
import typer
from pika.exceptions import AMQPError

from broker.rabbitmq import connection_parameters, connection_problem
from broker.topology import Topology
from config import Settings, redact_url
from console.control_client import ControlClient, ControlFailed
from console.ctl_output import fail


@dataclass
class CtlContext:
    """The options every ``ctl`` command shares (``--url``, ``--node``, ``--wait``)."""

    url: str
    topology: Topology
    node: str | None
    wait: float
    ttl: float
    management_url: str | None = None

    def client(self) -> ControlClient:
        """A control client for the operator's URL (close it: use ``with``)."""
        return ControlClient(self.url, self.topology, ttl=self.ttl)

    def connection(self) -> pika.BlockingConnection:
        """A plain broker connection, for reads that need no node."""
        return pika.BlockingConnection(connection_parameters(self.url))


def console_url(settings: Settings, url: str | None = None) -> str:
    """The operator's broker URL: ``--url``, ``STAYBOOK_CONSOLE_URL``, or the node's."""
    return url or os.environ.get("STAYBOOK_CONSOLE_URL") or settings.broker.url


def context_of(ctx: typer.Context) -> CtlContext:
    """The :class:`CtlContext` the ``ctl`` callback stored."""
    obj = ctx.obj
    assert isinstance(obj, CtlContext)
    return obj


def ask(ctx: typer.Context, op: str, args: dict[str, Any] | None = None,
        until_ok: bool = False) -> list[dict[str, Any]]:
    """``op`` on ``--node`` or every node; the replies, or one error line and exit 1.

    A node that refuses the operator (``forbidden``) fails the whole command rather
    than vanish from listings, which keep only the successful replies.
    """
    c = context_of(ctx)
    try:
        with c.client() as client:
            replies = client.request(op, args, node=c.node, wait=c.wait, until_ok=until_ok)
    except (ControlFailed, AMQPError, OSError) as exc:
        broker_failed(ctx, exc)
    if not replies:
        fail("no node answered")
    for r in replies:
        if not r.get("ok") and str(r.get("error", "")).startswith("forbidden"):
            fail(f"{r['node']}: {r['error']}")
    return replies


def broker_failed(ctx: typer.Context, exc: BaseException) -> Any:
    """One line for a request that failed: the control error, or why the broker is out
    of reach (its URL without the password, and what to check)."""
    if isinstance(exc, ControlFailed):
        fail(str(exc))
    logging.getLogger(__name__).debug("ctl: broker request failed", exc_info=True)
    fail(f"cannot reach RabbitMQ at {redact_url(context_of(ctx).url)} "
         f"({connection_problem(exc)}); check --url or STAYBOOK_CONSOLE_URL, and that the "
         "broker runs")
