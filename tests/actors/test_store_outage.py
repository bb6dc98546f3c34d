"""A full disk under a SQLite store is an outage, not a crash.

The node's store lives on a small tmpfs of its own (mounting one needs root, as CI
runs; elsewhere the test is skipped). The disk is filled for real: the writer's next
transaction fails with SQLite's "database or disk is full", the node holds the
commands it was given (unanswered, unacked, nothing crashed or restarted) and says
it is not ready; once space is freed the probe reopens the store, the same batch is
written, and every command is answered once.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.memory import MemoryBroker
from messages import AddApartment, Envelope, RequestReservation
from node import Node
from node.metrics import MetricsServer
from rules.clock import pinned
from tests.conftest import TODAY, MemoryProducer, day, eventually, make_settings

APT = "full-1"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, mounted for the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        message = f"cannot mount a tmpfs here: {done.stderr.decode().strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Write a file until the disk has no room left; the file."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:  # unbuffered: nothing left to flush
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler


def test_a_full_disk_holds_commands_until_space_is_freed(small_disk: Path) -> None:
    settings = make_settings(small_disk, database_url=f"sqlite:///{small_disk / 'sb.db'}")
    settings.store.probe_max_seconds = 0.2
    node = Node(settings, broker=MemoryBroker(), clock=pinned(TODAY))
    node.start()
    server = MetricsServer(node.metrics, 0, "127.0.0.1", ready=node.readiness)
    server.start()
    try:
        assert isinstance(node.broker, MemoryBroker)
        p = MemoryProducer(node.broker)
        assert p.send(AddApartment(owner_id="o", city="Rome", title="T", price_per_night=100,
                                   currency="EUR", capacity=2), APT)["status"] == "ok"
        filler = _fill(small_disk)
        sent: list[Envelope] = []
        for i in range(400):  # until a write needs room the disk does not have
            env = Envelope.new(RequestReservation(reservation_id=f"r{i}", guest_id="g",
                                                  start=day(2 * i), end=day(2 * i + 1)),
                               apartment_id=APT)
            p.publish(env)
            sent.append(env)
            if not node.store_gate.up:
                break
        eventually(lambda: not node.store_gate.up)
        ready, why = node.readiness()
        assert not ready and "store unavailable" in why and "disk is full" in why
        assert _ready(server) == (503, why.split(" for ")[0])
        answered = _drain(p)  # those committed before the disk filled up
        assert len(answered) < len(sent)  # the rest are held, unanswered
        assert all(r["status"] == "ok" for r in answered)
        assert node.directory.restarts == 0
        filler.unlink()
        eventually(lambda: node.store_gate.up)
        rest = [p.reply() for _ in range(len(sent) - len(answered))]
        assert all(r["status"] == "ok" for r in rest)
        assert node.readiness() == (True, "ready")
        assert _ready(server) == (200, "ready")
        assert node.directory.restarts == 0 and not node.app.failed.is_set()
        assert node.writer.held >= 1 and node.store_gate.outages == 1
        history = node.store.load(f"apartment:{APT}")
        assert len(history) == 1 + len(sent)  # each request recorded once
    finally:
        server.stop()
        node.stop()


def _ready(server: MetricsServer) -> tuple[int, str]:
    """``GET /ready``: the status and the first words of the reason."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.bound_port}/ready",
                                    timeout=5) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode().strip().split(" for ")[0]


def _drain(p: MemoryProducer) -> list[dict[str, object]]:
    """The replies that come within a second of each other."""
    out = []
    while (got := p.broker.get(p.reply_queue, 1.0)) is not None:
        out.append(json.loads(got.body)["payload"])
    return out
