"""OTP semantics of supervisor.py, with real pykka actors (no broker, no store)."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from supervisor import (
    BRUTAL,
    ActorChild,
    Application,
    Backoff,
    ChildSpec,
    CountChildren,
    Failure,
    Intensity,
    Link,
    Ping,
    RefOf,
    ReportFailure,
    Restart,
    Shutdown,
    Strategy,
    SupervisedActor,
    Supervisor,
    ThreadService,
    WhichChildren,
    service_child,
    supervisor_child,
)
from tests.conftest import eventually

Log = list[tuple[str, str]]


class Worker(SupervisedActor):
    """A child that logs its life and misbehaves on request."""

    def __init__(self, name: str, report: ReportFailure, log: Log, *,
                 fail_start: Callable[[], bool] = lambda: False,
                 hold: threading.Event | None = None) -> None:
        super().__init__(name, report)
        self.log = log
        self.fail_start = fail_start
        self.hold = hold  # on_stop blocks until the test sets it

    def started(self) -> None:
        self.log.append(("start", self.name))
        if self.fail_start():
            raise RuntimeError(f"{self.name} cannot start")

    def receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError(f"{self.name} exploded")
        if message == "exit":
            raise SystemExit(3)  # a BaseException: must not take other actors down
        if message == "quit":
            self.actor_ref.stop(block=False)  # a normal exit
            return None
        if message == "hang":
            time.sleep(2.0)
            return None
        return (self.name, message)

    def on_stop(self) -> None:
        self.log.append(("stop", self.name))
        if self.hold is not None:
            self.hold.wait(30)
            self.log.append(("stopped", self.name))


def spec(name: str, log: Log, *, restart: Restart = Restart.PERMANENT,
         shutdown: Shutdown = 5.0, backoff: Backoff | None = None, **kw: Any) -> ChildSpec:
    def start(link: ReportFailure) -> ActorChild:
        return ActorChild(Worker.start(name, link, log, **kw))
    return ChildSpec(id=name, start=start, restart=restart, shutdown=shutdown, backoff=backoff)


@pytest.fixture(autouse=True)
def _no_leftover_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=5)


def start_sup(specs: list[ChildSpec], **kw: Any) -> tuple[pykka.ActorRef[Supervisor], list[
        Failure]]:
    failures: list[Failure] = []
    kw.setdefault("check_interval", 0.02)
    kw.setdefault("intensity", Intensity(3, 5.0))
    ref = Supervisor.start("sup", specs, failures.append, **kw)
    ref.ask(Ping(), timeout=10)
    return ref, failures


def children(ref: pykka.ActorRef[Supervisor]) -> dict[str, dict[str, Any]]:
    rows: list[dict[str, Any]] = ref.ask(WhichChildren(), timeout=5)  # type: ignore[assignment]
    return {r["id"]: r for r in rows}


def child_ref(ref: pykka.ActorRef[Supervisor], cid: str) -> pykka.ActorRef[Any]:
    got = ref.ask(RefOf(cid), timeout=5)
    assert isinstance(got, pykka.ActorRef)
    return got


def restarts(ref: pykka.ActorRef[Supervisor], cid: str) -> int:
    return int(children(ref)[cid]["restarts"])


def running_after(ref: pykka.ActorRef[Supervisor], cid: str, n: int) -> Callable[[], bool]:
    """A predicate: child ``cid`` runs again after exactly ``n`` restarts."""
    return lambda: children(ref)[cid]["status"] == "running" and restarts(ref, cid) == n


def test_children_start_in_order_and_stop_in_reverse() -> None:
    log: Log = []
    ref, _ = start_sup([spec("a", log), spec("b", log), spec("c", log)])
    assert log == [("start", "a"), ("start", "b"), ("start", "c")]
    ref.stop(block=True, timeout=10)
    assert log[3:] == [("stop", "c"), ("stop", "b"), ("stop", "a")]


def test_a_failed_start_stops_the_started_ones_and_fails() -> None:
    log: Log = []
    ref = Supervisor.start("sup", [spec("a", log), spec("b", log, fail_start=lambda: True),
                                   spec("c", log)], lambda _f: None,
                         intensity=Intensity(3, 5.0))
    with pytest.raises(pykka.ActorDeadError):
        ref.ask(Ping(), timeout=10)
    assert ("start", "c") not in log and ("stop", "a") in log


@pytest.mark.parametrize(("strategy", "restarted"), [
    (Strategy.ONE_FOR_ONE, {"b"}),
    (Strategy.ONE_FOR_ALL, {"a", "b", "c"}),
    (Strategy.REST_FOR_ONE, {"b", "c"}),
])
def test_strategies(strategy: Strategy, restarted: set[str]) -> None:
    log: Log = []
    ref, _ = start_sup([spec("a", log), spec("b", log), spec("c", log)], strategy=strategy)
    before = {c: child_ref(ref, c).actor_urn for c in "abc"}
    child_ref(ref, "b").tell("boom")
    eventually(lambda: restarts(ref, "b") == 1 and children(ref)["b"]["status"] == "running")
    eventually(lambda: all(children(ref)[c]["status"] == "running" for c in "abc"))
    after = {c: child_ref(ref, c).actor_urn for c in "abc"}
    assert {c for c in "abc" if before[c] != after[c]} == restarted
    # survivors that were restarted were stopped in reverse order, the crashed one not at all
    stops = [n for what, n in log if what == "stop"]
    assert stops == sorted(restarted - {"b"}, reverse=True)
    assert children(ref)["b"]["last_failure"]["type"] == "ValueError"
    assert "exploded" in children(ref)["b"]["last_failure"]["traceback"]


def test_a_crash_in_an_ask_handler_restarts_the_actor() -> None:
    log: Log = []
    ref, _ = start_sup([spec("a", log)])
    old = child_ref(ref, "a")
    with pytest.raises(Exception, match="exploded"):
        old.ask("boom", timeout=5)
    eventually(lambda: restarts(ref, "a") == 1)
    assert not old.is_alive()
    assert child_ref(ref, "a").ask("hi", timeout=5) == ("a", "hi")


def test_a_crash_in_on_start_is_caught_and_retried() -> None:
    log: Log = []
    starts = iter([False, True, True, False])  # first start fine, then two failed restarts
    ref, _ = start_sup([spec("a", log, fail_start=lambda: next(starts))],
                       intensity=Intensity(5, 10))
    child_ref(ref, "a").tell("boom")
    eventually(lambda: children(ref)["a"]["status"] == "running" and restarts(ref, "a") == 3)
    assert [w for w, n in log].count("start") == 4


def test_a_failure_in_on_start_is_reported_through_the_link() -> None:
    got: list[Failure] = []
    link = Link(got.append)
    ref = Worker.start("w", link, [], fail_start=lambda: True)
    eventually(lambda: not ref.is_alive())
    assert link.failure is not None and link.failure.phase == "start"
    assert [f.error_type for f in got] == ["RuntimeError"]


def test_base_exception_in_a_handler_stops_only_that_actor() -> None:
    log: Log = []
    ref, _ = start_sup([spec("a", log), spec("b", log)])
    b = child_ref(ref, "b")
    child_ref(ref, "a").tell("exit")
    eventually(lambda: restarts(ref, "a") == 1)
    assert b.is_alive() and b.ask("still", timeout=5) == ("b", "still")
    assert children(ref)["a"]["last_failure"]["type"] == "SystemExit"


@pytest.mark.parametrize(("restart", "after_crash", "after_exit"), [
    (Restart.PERMANENT, True, True),
    (Restart.TRANSIENT, True, False),
    (Restart.TEMPORARY, False, False),
])
def test_restart_types(restart: Restart, after_crash: bool, after_exit: bool) -> None:
    log: Log = []
    ref, _ = start_sup([spec("a", log, restart=restart)])
    child_ref(ref, "a").tell("boom")
    if after_crash:
        eventually(lambda: children(ref)["a"]["status"] == "running" and restarts(ref, "a") == 1)
        child_ref(ref, "a").tell("quit")
        expected = "running" if after_exit else "exited"
        eventually(lambda: children(ref)["a"]["status"] == expected
                   and (restarts(ref, "a") == 2) == after_exit)
    else:
        eventually(lambda: children(ref)["a"]["status"] == "crashed")
        time.sleep(0.1)
        assert children(ref)["a"]["restarts"] == 0 and ref.ask(RefOf("a")) is None


def test_shutdown_timeout_abandons_a_child_that_will_not_stop() -> None:
    log: Log = []
    hold = threading.Event()
    ref, _ = start_sup([spec("slow", log, shutdown=0.2, hold=hold), spec("b", log)],
                       strategy=Strategy.ONE_FOR_ALL)
    slow = child_ref(ref, "slow")
    child_ref(ref, "b").tell("boom")  # one_for_all: slow must be stopped too
    eventually(lambda: children(ref)["b"]["status"] == "running" and restarts(ref, "b") == 1
               and child_ref(ref, "slow").actor_urn != slow.actor_urn)
    # The successor runs while the old one is still blocked in on_stop: not waited for.
    assert ("stop", "slow") in log and ("stopped", "slow") not in log
    assert not slow.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        slow.tell("anything")  # abandoned: never sent to again
    hold.set()


def test_brutal_shutdown_does_not_wait() -> None:
    log: Log = []
    hold = threading.Event()
    ref, _ = start_sup([spec("slow", log, shutdown=BRUTAL, hold=hold)])
    slow = child_ref(ref, "slow")
    ref.stop(block=True, timeout=10)
    assert ("stopped", "slow") not in log  # the supervisor did not wait for its on_stop
    assert not slow.is_alive()
    hold.set()


def test_intensity_exceeded_stops_children_and_fails_upwards() -> None:
    log: Log = []
    ref, failures = start_sup([spec("a", log), spec("b", log)],
                              intensity=Intensity(2, 60))
    b = child_ref(ref, "b")
    for i in range(3):
        child_ref(ref, "a").tell("boom")
        if i < 2:
            eventually(running_after(ref, "a", i + 1))
    eventually(lambda: not ref.is_alive())
    assert [f.error_type for f in failures] == ["SupervisorGaveUp"]
    assert not b.is_alive() and ("stop", "b") in log


def test_escalation_reaches_the_root_and_the_application_fails() -> None:
    log: Log = []
    crashy = supervisor_child("handlers", [spec("a", log)], intensity=lambda: Intensity(1, 60))
    app = Application([crashy], intensity=Intensity(1, 60))
    app.start()
    assert app.root is not None

    def crash_a() -> None:
        handlers = app.root.ask(RefOf("handlers"), timeout=5)  # type: ignore[union-attr]
        if isinstance(handlers, pykka.ActorRef) and handlers.is_alive():
            a = handlers.ask(RefOf("a"), timeout=5)
            if isinstance(a, pykka.ActorRef):
                with contextlib.suppress(pykka.ActorDeadError):
                    a.tell("boom")

    deadline = time.monotonic() + 20
    while not app.failed.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            crash_a()
        time.sleep(0.05)
    assert app.failed.is_set()
    assert app.failure is not None and "root" in app.failure.message


def test_backoff_jitter_stays_within_bounds() -> None:
    b = Backoff(min=1.0, max=8.0, jitter=0.25)
    rng = random.Random(7)
    for attempt in range(1, 8):
        base = min(8.0, 2.0 ** (attempt - 1))
        for _ in range(50):
            assert 0.75 * base <= b.delay(attempt, rng) <= 1.25 * base


def test_introspection() -> None:
    log: Log = []
    inner = supervisor_child("inner", [spec("x", log)], intensity=lambda: Intensity(3, 5.0))
    ref, _ = start_sup([spec("a", log), inner])
    counts = ref.ask(CountChildren(), timeout=5)
    assert counts == {"specs": 2, "active": 2, "supervisors": 1, "workers": 1}
    rows = children(ref)
    assert rows["a"]["kind"] == "worker" and rows["a"]["mailbox"] == 0
    assert rows["inner"]["kind"] == "supervisor"


def test_uptime_counts_from_the_latest_start() -> None:
    """Uptime grows with the clock, and a restart sets the restarted child's back to 0."""
    log: Log = []
    now = [100.0]
    ref, _ = start_sup([spec("a", log), spec("b", log)], clock=lambda: now[0])

    def uptimes() -> dict[str, float]:
        return {cid: row["uptime"] for cid, row in children(ref).items()}

    assert uptimes() == {"a": 0.0, "b": 0.0}
    now[0] = 130.0
    assert uptimes() == {"a": 30.0, "b": 30.0}
    child_ref(ref, "a").tell("boom")
    eventually(running_after(ref, "a", 1))
    assert uptimes() == {"a": 0.0, "b": 30.0}
    now[0] = 135.5
    assert uptimes() == {"a": 5.5, "b": 35.5}


def test_concurrent_crashes_are_all_handled() -> None:
    log: Log = []
    specs = [spec(f"w{i}", log) for i in range(6)]
    ref, _ = start_sup(specs, intensity=Intensity(100, 60))
    refs = [child_ref(ref, f"w{i}") for i in range(6)]
    threads = [threading.Thread(target=r.tell, args=("boom",)) for r in refs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    eventually(lambda: all(restarts(ref, f"w{i}") == 1 for i in range(6)))


# --- ThreadService: the base of every service that owns a thread -------------------------
class Body(ThreadService):
    """A service whose body the test steers: it may ignore the stop, or crash."""

    def __init__(self, *, ignore_stop: threading.Event | None = None,
                 crash: threading.Event | None = None) -> None:
        super().__init__("body", thread_name="body-thread")
        self.ignore_stop = ignore_stop  # while unset, the body does not look at the stop
        self.crash_now = crash
        self.rounds = 0

    def run(self) -> None:
        while True:
            if self.ignore_stop is not None:
                self.ignore_stop.wait()
            if self.crash_now is not None and self.crash_now.is_set():
                raise RuntimeError("body broke")
            if self.pause(0.01):
                return
            self.rounds += 1

    def facts(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "backlog": 7}


def test_a_thread_service_starts_and_stops() -> None:
    body = Body()
    body.start()
    eventually(lambda: body.rounds > 0)
    assert body.is_alive() and "body-thread" in {t.name for t in threading.enumerate()}
    assert body.stop(5) is True
    assert not body.is_alive() and body.last_crash is None


def test_stop_is_bounded_when_the_body_ignores_it() -> None:
    held = threading.Event()
    body = Body(ignore_stop=held)
    body.start()
    try:
        began = time.monotonic()
        assert body.stop(0.2) is False  # reported, not waited for
        assert time.monotonic() - began < 5
        assert body.is_alive()
    finally:
        held.set()
    eventually(lambda: not body.is_alive())


def test_a_thread_left_behind_by_a_stop_ends_when_the_service_starts_again() -> None:
    """Each start's thread keeps its own stop: the old one does not run on beside the new."""
    held = threading.Event()
    body = Body(ignore_stop=held)
    body.start()
    assert body.stop(0.05) is False
    old = next(t for t in threading.enumerate() if t.name == "body-thread")
    body.start()
    held.set()
    old.join(5)
    assert not old.is_alive() and body.is_alive()
    assert body.stop(5) is True


def test_a_crashing_body_is_dead_with_its_error() -> None:
    crash = threading.Event()
    heard: list[Failure] = []
    body = Body(crash=crash)
    body.start(on_crash=heard.append)
    eventually(lambda: body.rounds > 0)
    assert body.health().error is None
    crash.set()
    eventually(lambda: not body.is_alive())
    assert body.last_crash is not None and heard == [body.last_crash]
    assert (body.last_crash.error_type, body.last_crash.message) == ("RuntimeError", "body broke")
    assert "body broke" in body.last_crash.traceback
    health = body.health()
    assert (health.alive, health.error) == (False, "RuntimeError: body broke")
    assert body.stop(1) is True


def test_health_carries_the_services_facts() -> None:
    body = Body()
    body.start()
    try:
        eventually(lambda: body.rounds > 0)
        row = body.health().row()
        assert (row["name"], row["alive"], row["error"], row["backlog"]) == (
            "body", True, None, 7)
        assert row["rounds"] > 0
    finally:
        body.stop()


def test_a_service_child_shows_its_health_and_its_crash() -> None:
    """The tree's row carries the service's facts; a crash is a crash, with its error."""
    crash = threading.Event()
    bodies: list[Body] = []

    def make() -> Body:
        bodies.append(Body(crash=crash if not bodies else None))
        return bodies[-1]

    ref, _ = start_sup([service_child("svc", make)])
    row = children(ref)["svc"]
    assert (row["kind"], row["name"], row["alive"], row["backlog"]) == (
        "service", "body", True, 7)
    crash.set()
    eventually(running_after(ref, "svc", 1))
    row = children(ref)["svc"]
    assert row["last_failure"]["type"] == "RuntimeError"
    assert row["last_failure"]["message"] == "body broke"
    assert (row["alive"], row["error"]) == (True, None)  # the restart made a new body
    assert not bodies[0].is_alive() and bodies[1].is_alive()
