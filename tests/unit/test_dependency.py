"""A shared dependency's outage is a state, not a crash (supervisor.Dependency).

The dependency here is a switch the test turns off and on (the store's real errors
and probe are tested in test_store_health.py and by the store drill); the actors,
links, supervisors and threads are the real runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from supervisor import (
    Dependency,
    DependencyDown,
    Failure,
    Link,
    PollingService,
    SupervisedActor,
)
from tests.conftest import eventually


class Unreachable(ConnectionError):
    """What the switched-off dependency raises."""


class Switch:
    """A dependency that is up or down, and a call that fails while it is down."""

    def __init__(self) -> None:
        self.on = True
        self.calls = 0

    def use(self) -> str:
        self.calls += 1
        if not self.on:
            raise Unreachable("connection refused")
        return "done"

    def probe(self) -> None:
        self.use()


@pytest.fixture
def switch() -> Switch:
    return Switch()


@pytest.fixture
def gate(switch: Switch) -> Iterator[Dependency]:
    dep = Dependency("store", switch.probe, lambda e: isinstance(e, Unreachable),
                     limit=None, min_delay=0.01, max_delay=0.05)
    dep.start()
    yield dep
    dep.stop()


class User(SupervisedActor):
    """An actor whose messages use the dependency (or fail on their own)."""

    def __init__(self, report: Link, switch: Switch, gate: Dependency,
                 handled: list[str]) -> None:
        super().__init__("user", report, gate)
        self.switch = switch
        self.done = handled

    def receive(self, message: Any) -> Any:
        if message == "bug":
            raise ValueError("a fault of the actor itself")
        result = self.switch.use()
        self.done.append(message)
        return result


def test_an_actor_waits_out_an_outage_and_handles_its_mailbox_in_order(
        switch: Switch, gate: Dependency) -> None:
    crashes: list[Failure] = []
    link = Link(crashes.append)
    handled: list[str] = []
    ref = User.start(link, switch, gate, handled)
    try:
        switch.on = False
        for m in ("m1", "m2", "m3"):
            ref.tell(m)
        eventually(lambda: not gate.up and switch.calls >= 3)
        assert handled == [] and ref.is_alive() and gate.outages == 1
        assert link.busy_for() == 0.0  # waiting is not being stuck
        switch.on = True
        eventually(lambda: handled == ["m1", "m2", "m3"])
        assert gate.up and crashes == []
        # A fault of the actor is still a crash.
        ref.tell("bug")
        eventually(lambda: len(crashes) == 1)
        assert crashes[0].error_type == "ValueError"
    finally:
        ref.stop(block=False)


def test_past_its_limit_the_dependency_gives_up_once_and_waiters_learn_it(
        switch: Switch) -> None:
    reasons: list[str] = []
    dep = Dependency("store", switch.probe, lambda e: isinstance(e, Unreachable),
                     limit=0.3, min_delay=0.01, max_delay=0.05, on_give_up=reasons.append)
    dep.start()
    try:
        switch.on = False
        dep.trip(Unreachable("connection refused"))
        eventually(lambda: bool(reasons))
        assert len(reasons) == 1 and "unreachable for" in reasons[0]
        assert "connection refused" in reasons[0]
        with pytest.raises(DependencyDown):
            dep.wait_up(1.0)
        assert not dep.ride_out(Unreachable("still refused"))  # given up: fail as usual
    finally:
        dep.stop()


def test_ride_out_waits_for_the_outage_and_passes_other_errors(
        switch: Switch, gate: Dependency) -> None:
    switch.on = False
    out: list[bool] = []
    t = threading.Thread(target=lambda: out.append(gate.ride_out(Unreachable("refused"))))
    t.start()
    eventually(lambda: not gate.up)
    assert out == []  # waiting while it is down
    switch.on = True
    t.join(10)
    assert out == [True] and gate.up and gate.last_outage_seconds > 0
    assert not gate.ride_out(KeyError("a bug of the caller"))  # no outage: at once
    stopping = threading.Event()
    switch.on = False
    t = threading.Thread(target=lambda: out.append(gate.ride_out(Unreachable("refused"),
                                                                 stopping.is_set)))
    t.start()
    eventually(lambda: not gate.up)
    stopping.set()
    t.join(10)
    assert out[-1] is False  # the caller stopped waiting
    switch.on = True


class Poller(PollingService):
    def __init__(self, switch: Switch, gate: Dependency) -> None:
        super().__init__("poller", 0.01, retry_delay=5.0, dependency=gate)
        self.switch = switch
        self.rounds = 0

    def poll(self) -> bool:
        self.switch.use()
        self.rounds += 1
        return False


def test_a_polling_service_waits_for_the_dependency_instead_of_backing_off(
        switch: Switch, gate: Dependency) -> None:
    poller = Poller(switch, gate)
    poller.start()
    try:
        eventually(lambda: poller.rounds > 0)
        switch.on = False
        eventually(lambda: not gate.up)
        switch.on = True
        before = poller.rounds
        # Far sooner than its 5 s retry delay: it resumed when the gate opened.
        eventually(lambda: poller.rounds > before, timeout=3.0)
        assert poller.failures == 0
    finally:
        poller.stop()
