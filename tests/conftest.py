"""Shared fixtures: settings on a temporary store, a node on the in-memory broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.base import Outgoing
from broker.memory import MemoryBroker
from config import Settings
from messages import Envelope, Kind, Message
from node import Node

TODAY = date(2030, 1, 7)  # a Monday; the rules' clock in tests


def day(n: int) -> date:
    """``n`` days after the tests' today."""
    return TODAY + timedelta(days=n)


def eventually(pred: Callable[[], bool], timeout: float = 20.0, poll: float = 0.02) -> None:
    """Wait until ``pred()`` holds; fail after ``timeout`` seconds (never a timing assert)."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(poll)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings on a fresh SQLite file."""
    return Settings(database_url=f"sqlite:///{tmp_path / 'staybook.db'}", **overrides)


class MemoryProducer:
    """Publishes to a node on the memory broker and reads its replies."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.reply_queue = broker.reply_queue()

    def publish(self, env: Envelope) -> None:
        """Publish with reply_to."""
        topo = self.broker.topology
        ex = topo.commands_exchange if env.kind is Kind.COMMAND else topo.queries_exchange
        self.broker.publish(Outgoing(ex, env.apartment_id or "", env.to_json(),
                                     message_id=env.message_id, correlation_id=env.message_id,
                                     reply_to=self.reply_queue))

    def publish_raw(self, body: bytes, *, reply: bool = True) -> None:
        """Publish arbitrary bytes to the commands exchange."""
        self.broker.publish(Outgoing(self.broker.topology.commands_exchange, "x", body,
                                     message_id="raw", correlation_id="raw",
                                     reply_to=self.reply_queue if reply else None))

    def reply(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next reply's payload."""
        out = self.broker.get(self.reply_queue, timeout)
        assert out is not None, "no reply"
        data: dict[str, Any] = json.loads(out.body)["payload"]
        return data

    def send(self, payload: Message, apartment_id: str | None = None) -> dict[str, Any]:
        """Publish one message and return its reply's payload."""
        self.publish(Envelope.new(payload, apartment_id=apartment_id))
        return self.reply()


@pytest.fixture
def memory_node(tmp_path: Path) -> Iterator[Node]:
    """A started node on the in-memory broker, with today fixed to TODAY."""
    node = Node(make_settings(tmp_path), broker=MemoryBroker(), today=lambda: TODAY)
    node.start()
    yield node
    node.stop()


@pytest.fixture
def producer(memory_node: Node) -> MemoryProducer:
    """A producer for ``memory_node``."""
    assert isinstance(memory_node.broker, MemoryBroker)
    return MemoryProducer(memory_node.broker)
