"""The directory's sweeper and its cap, with many actors and with all of them busy.

The sweeper shares the lock that every dispatch takes. These tests count the entries
it looks at while holding it (``Directory.swept``), never a time: idle actors that
were used recently cost it nothing, however many are live; stuck detection looks at
the busy ones only. The sweeps are run by the test (``sweep_once`` at a chosen
instant), with no sweeper thread, so nothing else moves the count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors.base import EntityContext
from actors.directory import Directory
from actors.outcome import Outcome, Ticket
from messages import AddApartment, Envelope
from store import EventStore, StoreWriter, make_engine
from supervisor import InjectedCrash, Intensity
from tests.conftest import eventually


@dataclass
class Stall:
    """A fault hook: the first message to ``entity`` hangs until released, then crashes.

    ``held``: entities whose messages wait for ``release`` and then pass.
    """

    entity: str
    held: set[str] = field(default_factory=set)
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    waiting: set[str] = field(default_factory=set)
    calls: int = 0

    def __call__(self, entity_id: str, _env: Envelope) -> None:
        if entity_id in self.held:
            self.waiting.add(entity_id)
            self.release.wait(30)
            return
        if entity_id != self.entity:
            return
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            self.release.wait(30)
            raise InjectedCrash("released after being abandoned")


@pytest.fixture
def stall() -> Iterator[Stall]:
    s = Stall("apartment:slow")
    yield s
    s.release.set()


@pytest.fixture
def make_directory(tmp_path: Path, stall: Stall) -> Iterator[Callable[..., Directory]]:
    """Directories on a real store, their sweeper threads stopped: the test sweeps."""
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    writer = StoreWriter(engine)
    writer.start()
    made: list[Directory] = []

    def make(**kwargs: Any) -> Directory:
        d = Directory(EntityContext(EventStore(engine), writer, inject=stall),
                      **{"max_live": 10_000, "idle_seconds": 300.0, "handler_timeout": 1.0,
                         "intensity": Intensity(100, 5.0), "backoff": None,
                         "poison_retries": 3, **kwargs})
        d.start(sweeper=False)  # only the test sweeps
        made.append(d)
        return d

    yield make
    stall.release.set()
    for d in made:
        d.stop()
    writer.stop()
    engine.dispose()


@pytest.fixture
def directory(make_directory: Callable[..., Directory]) -> Directory:
    return make_directory()


def send(d: Directory, keys: list[str]) -> list[Ticket]:
    """AddApartment to each apartment; the tickets."""
    tickets = []
    for key in keys:
        env = Envelope.new(AddApartment(owner_id="o", city="Rome", title="T",
                                        price_per_night=100,
                                        currency="EUR", capacity=2), apartment_id=key)
        outcomes: list[Outcome] = []
        t = Ticket(outcomes.append, message_id=env.message_id)
        d.dispatch("apartment", key, env, t)
        tickets.append(t)
    return tickets


def settled(tickets: list[Ticket]) -> bool:
    return all(t.outcome is not None for t in tickets)


def swept_by(d: Directory, now: float) -> int:
    """Entries one sweep at ``now`` looked at under the lock."""
    before = d.swept
    d.sweep_once(now)
    return d.swept - before


def test_idle_recent_actors_cost_the_sweep_nothing_under_the_lock(directory: Directory) -> None:
    d = directory
    few = send(d, [f"a{i}" for i in range(10)])
    eventually(lambda: settled(few))
    with_few = swept_by(d, time.monotonic())
    many = send(d, [f"b{i}" for i in range(400)])
    eventually(lambda: settled(many))
    assert d.live == 410
    with_many = swept_by(d, time.monotonic())
    assert with_few == with_many == 1  # the oldest entry is recent: the walk stops there
    assert d.passivations == 0

    # Idle past idle_seconds: all passivated, in chunks, each entry looked at once.
    assert swept_by(d, time.monotonic() + 301) == 410 > Directory.chunk
    assert d.live == 0 and d.passivations == 410
    assert all(t.outcome is not None and t.outcome.kind == "ack" for t in few + many)


def test_stuck_detection_looks_at_the_busy_actors_only(directory: Directory,
                                                       stall: Stall) -> None:
    d = directory
    idle = send(d, [f"c{i}" for i in range(200)])
    eventually(lambda: settled(idle))
    [stuck] = send(d, ["slow"])
    assert stall.entered.wait(10)
    first = d.ref("apartment:slow")
    # Not stuck yet at the limit: looked at (it is busy), left alone.
    assert swept_by(d, time.monotonic()) == 1 + 1
    assert d.ref("apartment:slow") is first and d.restarts == 0
    # Past the limit: abandoned and restarted; its message goes to the successor.
    assert swept_by(d, time.monotonic() + 5) == 1 + 1
    eventually(lambda: stuck.outcome is not None)
    assert stuck.outcome is not None and stuck.outcome.kind == "ack"
    assert d.restarts == 1 and stall.calls == 2
    assert d.ref("apartment:slow") not in (None, first)
    eventually(lambda: swept_by(d, time.monotonic()) == 1)  # settled: busy no more


def test_a_new_actor_is_not_evicted_when_every_other_one_is_busy(
        make_directory: Callable[..., Directory], stall: Stall) -> None:
    """At the cap with all busy, the newcomer goes over it rather than lose its message."""
    d = make_directory(max_live=2)
    stall.held = {"apartment:b0", "apartment:b1"}
    busy = send(d, ["b0", "b1"])
    eventually(lambda: stall.waiting == stall.held)
    [newcomer] = send(d, ["c"])
    eventually(lambda: newcomer.outcome is not None)
    assert newcomer.outcome is not None and newcomer.outcome.kind == "ack"
    assert d.live == 3 and d.passivations == 0  # over the cap: nothing idle to evict
    # The sweep trims to the cap: the newcomer, answered, is the one idle actor.
    assert swept_by(d, time.monotonic()) == 3 + 2  # the walk, then the two busy ones
    assert d.live == 2 and d.passivations == 1 and d.ref("apartment:c") is None
    stall.release.set()
    eventually(lambda: settled(busy))
    assert swept_by(d, time.monotonic()) == 1
    [later] = send(d, ["d"])
    eventually(lambda: settled([later]))
    assert d.live == 2 and d.passivations == 2  # dispatch keeps to the cap: b0 went
    assert d.ref("apartment:b0") is None and d.ref("apartment:d") is not None
    assert all(t.outcome is not None and t.outcome.kind == "ack" for t in [*busy, later])
