"""Removing a deployment's queues and exchanges from a broker (``staybook broker teardown``).

A test run, a demo or a retired deployment leaves its prefix's quorum queues and
exchanges behind; RabbitMQ keeps them (and their messages) forever. What a prefix
owns is what its topology declares, plus the exchanges the nodes declare at run
time (control, members); the nodes' own control and member queues are exclusive and
go with their connections.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError, ChannelClosedByBroker

from broker.topology import Topology


@dataclass(frozen=True)
class Found:
    """What a prefix has on the broker now."""

    queues: dict[str, tuple[int, int]]  # name -> (messages, consumers)
    exchanges: list[str]

    @property
    def messages(self) -> int:
        """Messages its queues hold (lost when they are deleted)."""
        return sum(m for m, _c in self.queues.values())

    def in_use(self) -> list[str]:
        """Queues something still consumes: a node of this prefix runs."""
        return sorted(q for q, (_m, c) in self.queues.items() if c)


def exchanges_of(topology: Topology) -> list[str]:
    """Every exchange of the prefix: the declared ones, the control and members ones."""
    return [*(e.name for e in topology.exchanges()), topology.control_exchange,
            f"{topology.prefix}.members"]


def survey(connect: Callable[[], pika.BlockingConnection], topology: Topology) -> Found:
    """Which of the prefix's queues and exchanges exist (passive declares change nothing)."""
    conn = connect()
    try:
        queues: dict[str, tuple[int, int]] = {}
        exchanges: list[str] = []
        ch = conn.channel()
        for q in topology.queues():
            try:
                ok = ch.queue_declare(q.name, passive=True)
                queues[q.name] = (ok.method.message_count, ok.method.consumer_count)
            except ChannelClosedByBroker:  # 404: not there
                ch = conn.channel()
        for name in exchanges_of(topology):
            try:
                ch.exchange_declare(name, passive=True)
                exchanges.append(name)
            except ChannelClosedByBroker:
                ch = conn.channel()
        return Found(queues, exchanges)
    finally:
        with contextlib.suppress(AMQPError, OSError):
            conn.close()


def remove(connect: Callable[[], pika.BlockingConnection], found: Found) -> list[str]:
    """Delete what :func:`survey` found; one line per thing that could not be deleted."""
    errors: list[str] = []
    conn = connect()
    try:
        ch: BlockingChannel = conn.channel()
        steps = [*(("queue", q) for q in found.queues),
                 *(("exchange", e) for e in found.exchanges)]
        for kind, name in steps:
            try:
                if kind == "queue":
                    ch.queue_delete(name)
                else:
                    ch.exchange_delete(name)
            except ChannelClosedByBroker as exc:
                errors.append(f"cannot delete {kind} {name}: {exc.reply_text}")
                ch = conn.channel()
    finally:
        with contextlib.suppress(AMQPError, OSError):
            conn.close()
    return errors
