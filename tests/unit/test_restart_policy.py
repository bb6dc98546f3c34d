"""One restart engine for fixed and dynamic children, tested once for both.

Restart types, intensity, backoff and stuck detection are :class:`RestartPolicy`
and :func:`stuck`, which :class:`Supervisor` (fixed children) and
:class:`DynamicSupervisor` (children started on demand) share. Each behaviour here
runs against both kinds, with real pykka actors; the decision table itself is
checked on the policy alone.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pykka
import pytest

from config.lru import BoundedLRU
from supervisor import (
    ActorChild,
    Backoff,
    ChildSpec,
    DynamicChild,
    DynamicSupervisor,
    Failure,
    Intensity,
    Link,
    Ping,
    RefOf,
    ReportFailure,
    Restart,
    RestartPolicy,
    SupervisedActor,
    Supervisor,
    SupervisorGaveUp,
    WhichChildren,
    stuck,
)
from tests.conftest import eventually


class Worker(SupervisedActor):
    """A child that crashes or hangs on request."""

    def receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError(f"{self.name} exploded")
        if message == "hang":
            time.sleep(1.5)
        return message


class ManualScheduler:
    """A fake clock for backoff: records delays, runs callbacks when told."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.due: list[Callable[[], None]] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.delays.append(delay)
        self.due.append(fn)

    def run_all(self) -> None:
        due, self.due = self.due, []
        for fn in due:
            fn()


class Harness(Protocol):
    """One child ``w`` under a supervisor of either kind."""

    scheduler: ManualScheduler

    def tell(self, message: str) -> pykka.ActorRef[Any]:
        """Send to the running incarnation; that incarnation."""

    def row(self) -> dict[str, Any] | None:
        """The child's row in its supervisor's tree (None: it is gone)."""

    def gave_up(self) -> bool:
        """Whether the supervisor gave up."""

    def check(self) -> None:
        """Let the supervisor look for stuck children now."""


class Fixed:
    """``w`` as a child spec of a :class:`Supervisor`."""

    def __init__(self, restart: Restart, intensity: Intensity, backoff: Backoff | None,
                 handler_timeout: float | None) -> None:
        self.scheduler = ManualScheduler()
        self.failures: list[Failure] = []

        def start(link: ReportFailure) -> ActorChild:
            return ActorChild(Worker.start("w", link))
        self.sup = Supervisor.start(
            "sup", [ChildSpec("w", start, restart=restart, backoff=backoff)],
            self.failures.append, intensity=intensity, handler_timeout=handler_timeout,
            scheduler=self.scheduler, check_interval=0.02)
        self.sup.ask(Ping(), timeout=10)

    def tell(self, message: str) -> pykka.ActorRef[Any]:
        ref = self.sup.ask(RefOf("w"), timeout=5)
        assert isinstance(ref, pykka.ActorRef)
        ref.tell(message)
        return ref

    def row(self) -> dict[str, Any] | None:
        if not self.sup.is_alive():
            return None
        rows: list[dict[str, Any]] = self.sup.ask(WhichChildren(), timeout=5)  # type: ignore[assignment]
        row = rows[0]
        return None if row["status"] in ("crashed", "exited") else row

    def gave_up(self) -> bool:
        return bool(self.failures) and self.failures[0].error_type == "SupervisorGaveUp"

    def check(self) -> None:
        """The supervisor ticks by itself."""


class Pool(DynamicSupervisor):
    """A dynamic supervisor of workers; their work stays pending (they are busy)."""

    def start_child(self, child: DynamicChild, link: Link) -> pykka.ActorRef[Any]:
        return Worker.start(child.id, link)


class Dynamic:
    """``w`` as a dynamic child of a :class:`DynamicSupervisor`."""

    def __init__(self, restart: Restart, intensity: Intensity, backoff: Backoff | None,
                 handler_timeout: float | None) -> None:
        self.scheduler = ManualScheduler()
        self.pool = Pool("pool", max_live=10, idle_seconds=300, intensity=intensity,
                         backoff=backoff, handler_timeout=handler_timeout, history=BoundedLRU(100),
                         restart=restart, scheduler=self.scheduler)
        self.pool.start(sweeper=False)
        self.sent = 0

    def tell(self, message: str) -> pykka.ActorRef[Any]:
        self.sent += 1
        ref = self.pool.enlist("w", self.sent, message)
        assert ref is not None
        ref.tell(message)
        return ref

    def row(self) -> dict[str, Any] | None:
        return self.pool.describe("w")

    def gave_up(self) -> bool:
        return self.pool.gave_up is not None

    def check(self) -> None:
        self.pool.sweep_once(time.monotonic())


Make = Callable[..., Harness]


@pytest.fixture(params=["fixed", "dynamic"])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    made: list[Harness] = []
    kind: type[Fixed] | type[Dynamic] = Fixed if request.param == "fixed" else Dynamic

    def build(restart: Restart = Restart.TRANSIENT, intensity: Intensity | None = None,
              backoff: Backoff | None = None, handler_timeout: float | None = None
              ) -> Harness:
        h = kind(restart, intensity or Intensity(10, 60), backoff, handler_timeout)
        made.append(h)
        return h
    yield build
    for h in made:
        if isinstance(h, Dynamic):
            h.pool.stop()
    pykka.ActorRegistry.stop_all(block=True, timeout=5)


def running_after(h: Harness, restarts: int) -> Callable[[], bool]:
    def check() -> bool:
        row = h.row()
        return row is not None and row["status"] == "running" and row["restarts"] == restarts
    return check


@pytest.mark.parametrize("restart", [Restart.PERMANENT, Restart.TRANSIENT])
def test_a_crashed_child_is_restarted(make: Make, restart: Restart) -> None:
    h = make(restart)
    h.tell("ok")
    h.tell("boom")
    eventually(running_after(h, 1))
    row = h.row()
    assert row is not None and row["last_failure"]["type"] == "ValueError"
    assert h.tell("ok").ask(Ping(), timeout=5) == "pong"


def test_a_crashed_temporary_child_is_not_restarted(make: Make) -> None:
    h = make(Restart.TEMPORARY)
    h.tell("boom")
    eventually(lambda: h.row() is None)
    assert not h.gave_up()


def test_past_the_intensity_the_supervisor_gives_up(make: Make) -> None:
    h = make(intensity=Intensity(2, 60))
    for n in (1, 2):
        h.tell("boom")
        eventually(running_after(h, n))
    h.tell("boom")
    eventually(h.gave_up)


def test_restarts_wait_out_the_backoff(make: Make) -> None:
    h = make(backoff=Backoff(min=0.1, max=0.3, jitter=0.0))
    for n in range(1, 5):
        h.tell("boom")
        eventually(lambda: bool(h.scheduler.due))
        row = h.row()
        assert row is not None and row["status"] == "restarting"
        h.scheduler.run_all()
        eventually(running_after(h, n))
    assert h.scheduler.delays == pytest.approx([0.1, 0.2, 0.3, 0.3])


def test_a_stuck_child_is_abandoned_and_restarted(make: Make) -> None:
    h = make(handler_timeout=0.3)
    old = h.tell("hang")

    def restarted() -> bool:
        h.check()
        return running_after(h, 1)()
    eventually(restarted)
    row = h.row()
    assert row is not None and row["last_failure"]["type"] == "Stuck"
    with pytest.raises(pykka.ActorDeadError):
        old.tell("anything")


# --- the decision itself ---------------------------------------------------------------

def crash() -> Failure:
    return Failure("w", "receive", "ValueError", "boom", "", 0.0, "urn")


@pytest.mark.parametrize(("restart", "on_crash", "on_exit"), [
    (Restart.PERMANENT, True, True),
    (Restart.TRANSIENT, True, False),
    (Restart.TEMPORARY, False, False),
])
def test_restart_types(restart: Restart, on_crash: bool, on_exit: bool) -> None:
    policy = RestartPolicy("sup", Intensity(10, 60))
    assert (policy.after_exit("w", restart, crash(), None) is not None) is on_crash
    assert (policy.after_exit("w", restart, None, None) is not None) is on_exit


def test_the_intensity_counts_restarts_not_ends() -> None:
    policy = RestartPolicy("sup", Intensity(1, 60))
    assert policy.after_exit("w", Restart.TEMPORARY, crash(), None) is None
    assert policy.after_exit("w", Restart.TRANSIENT, None, None) is None
    assert policy.after_exit("w", Restart.TRANSIENT, crash(), None) == 0.0
    with pytest.raises(SupervisorGaveUp, match="more than 1 restarts in 60s; last: w"):
        policy.after_exit("w", Restart.TRANSIENT, crash(), None)


def test_the_backoff_delay_grows_with_the_restarts_in_the_window() -> None:
    now = [0.0]
    policy = RestartPolicy("sup", Intensity(10, 5, clock=lambda: now[0]),
                           random.Random(1))
    b = Backoff(min=1.0, max=4.0, jitter=0.0)
    assert [policy.after_exit("w", Restart.PERMANENT, crash(), b) for _ in range(4)] == [
        1.0, 2.0, 4.0, 4.0]
    now[0] = 100.0  # the window has passed: the backoff starts over
    assert policy.after_exit("w", Restart.PERMANENT, crash(), b) == 1.0


def test_stuck_is_a_failure_only_past_the_limit() -> None:
    link = Link(lambda _f: None)
    assert stuck("w", link, "urn", 1.0, now=100.0) is None  # idle
    link.busy_since, link.current = 98.0, "msg"
    assert stuck("w", link, "urn", None, now=100.0) is None  # no limit
    assert stuck("w", link, "urn", 3.0, now=100.0) is None
    failure = stuck("w", link, "urn", 1.0, now=100.0)
    assert failure is not None and failure.error_type == "Stuck"
    assert failure.cause == "msg" and failure.actor_urn == "urn"
