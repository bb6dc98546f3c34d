"""OTP-style supervisors for pykka actors and threads, and Staybook's tree.

A :class:`Supervisor` is itself a pykka actor. It starts its children in order (each
start must succeed before the next), restarts them by its strategy when they crash,
and gives up when more than ``max_restarts`` happen within ``period`` seconds: it
stops its children in reverse order and fails, so its own parent decides (escalation).
When the root gives up, :class:`Application` logs why and the node exits non-zero,
so the service manager restarts it.

Children are pykka actors (crashes arrive as reports from
:class:`actors.base.SupervisedActor`) or services (threads with start/stop/is_alive,
watched by a periodic liveness check).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import pykka

from actors.base import Failure, ReportFailure, SupervisedActor, mailbox_size
from broker.base import Service

log = logging.getLogger(__name__)


class Strategy(StrEnum):
    """Which siblings restart with a crashed child."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class Restart(StrEnum):
    """When a child is restarted: always, only after a crash, or never."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Child(Protocol):
    """A running child as its supervisor sees it."""

    urn: str

    def stop(self, timeout: float) -> None:
        """Stop it, waiting up to ``timeout``."""

    def is_alive(self) -> bool:
        """True while it runs."""

    def describe(self) -> dict[str, Any]:
        """Facts for introspection."""


class ActorChild:
    """A pykka actor child; ``ping`` is asked once to prove it started."""

    def __init__(self, ref: pykka.ActorRef[Any], *, start_timeout: float = 10.0) -> None:
        self.ref = ref
        self.urn = ref.actor_urn
        try:
            ref.ask("ping", timeout=start_timeout)
        except Exception as exc:
            with contextlib.suppress(Exception):
                ref.stop(block=False)
            raise RuntimeError(f"child {self.urn} did not start: {exc!r}") from exc

    def stop(self, timeout: float) -> None:
        """Ask it to stop; abandon it after ``timeout``."""
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            self.ref.stop(block=True, timeout=timeout)

    def is_alive(self) -> bool:
        """True while the actor runs."""
        return self.ref.is_alive()

    def describe(self) -> dict[str, Any]:
        """Mailbox size, for introspection."""
        return {"kind": "actor", "mailbox": mailbox_size(self.ref)}


class ServiceChild:
    """A thread-based service child; its death is noticed by the liveness check."""

    _seq = 0

    def __init__(self, service: Service) -> None:
        self.service = service
        ServiceChild._seq += 1
        self.urn = f"service:{service.name}:{ServiceChild._seq}"
        service.start()

    def stop(self, timeout: float) -> None:
        """Stop the service."""
        self.service.stop(timeout)

    def is_alive(self) -> bool:
        """True while its thread runs."""
        return self.service.is_alive()

    def describe(self) -> dict[str, Any]:
        """What kind of child this is."""
        return {"kind": "service"}


StartFn = Callable[[ReportFailure], Child]


@dataclass
class ChildSpec:
    """How to start, restart and stop one child.

    Attributes:
        id: unique among its siblings.
        start: starts the child, given the callback it must report crashes to.
        restart: permanent, transient or temporary.
        shutdown: seconds to wait for a clean stop before abandoning the child.
    """

    id: str
    start: StartFn
    restart: Restart = Restart.PERMANENT
    shutdown: float = 10.0


@dataclass
class _State:
    spec: ChildSpec
    child: Child | None = None
    restarts: int = 0
    last_failure: Failure | None = None
    started_at: float = 0.0
    status: str = "stopped"


@dataclass(frozen=True)
class _ChildExited:
    failure: Failure


@dataclass(frozen=True)
class _Tick:
    pass


@dataclass
class Intensity:
    """At most ``max_restarts`` restarts within ``period`` seconds."""

    max_restarts: int = 3
    period: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _times: deque[float] = field(default_factory=deque)

    def allow(self) -> bool:
        """Record a restart; False when the limit is exceeded."""
        now = self.clock()
        self._times.append(now)
        while self._times and now - self._times[0] > self.period:
            self._times.popleft()
        return len(self._times) <= self.max_restarts


class SupervisorGaveUp(Exception):
    """Too many restarts: the supervisor stopped its children and failed."""


class Supervisor(SupervisedActor):
    """An OTP-style supervisor (one_for_one, one_for_all, rest_for_one).

    Args:
        name: its id in its parent.
        specs: children, in start order.
        report: its parent's crash callback.
        strategy: what restarts with a crashed child.
        intensity: the restart limit before giving up.
        check_interval: seconds between liveness checks of service children.
    """

    def __init__(
        self,
        name: str,
        specs: list[ChildSpec],
        report: ReportFailure,
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: Intensity | None = None,
        check_interval: float = 0.5,
    ) -> None:
        super().__init__(name, report)
        self.strategy = strategy
        self.intensity = intensity or Intensity()
        self._children = [_State(s) for s in specs]
        self._check_interval = check_interval
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()

    # --- lifecycle ------------------------------------------------------------------
    def started(self) -> None:
        """Start every child in order; the first failure stops those started and fails."""
        for i, st in enumerate(self._children):
            try:
                self._start(st)
            except Exception:
                self._stop_range(0, i)
                raise
        self._ticker = threading.Thread(target=self._tick, name=f"{self.name}-ticker",
                                        daemon=True)
        self._ticker.start()

    def on_stop(self) -> None:
        """Stop children in reverse start order."""
        self._stopping.set()
        self._stop_range(0, len(self._children))

    def on_failure(self, *_exc: object) -> None:
        """A crashed supervisor leaves no orphans."""
        self._stopping.set()
        self._stop_range(0, len(self._children))

    def _tick(self) -> None:
        while not self._stopping.wait(self._check_interval):
            try:
                self.actor_ref.tell(_Tick())
            except pykka.ActorDeadError:
                return

    def _report_to_me(self, failure: Failure) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_ChildExited(failure))

    def _start(self, st: _State) -> None:
        st.child = st.spec.start(self._report_to_me)
        st.started_at = time.time()
        st.status = "running"

    def _stop_range(self, lo: int, hi: int) -> None:
        for st in reversed(self._children[lo:hi]):
            if st.child is not None:
                try:
                    st.child.stop(st.spec.shutdown)
                except Exception:
                    log.exception("%s: stopping %s failed", self.name, st.spec.id)
                st.child = None
                st.status = "stopped"

    # --- messages -------------------------------------------------------------------
    def receive(self, message: Any) -> Any:
        """Crash reports, liveness ticks, and introspection."""
        if message == "ping":
            return "pong"
        if isinstance(message, _ChildExited):
            self._on_exit(message.failure)
            return None
        if isinstance(message, _Tick):
            for st in self._children:
                if st.child is not None and st.status == "running" and not st.child.is_alive():
                    self._on_exit(Failure(st.spec.id, "receive", "Exited", "child exited",
                                          "", time.time(), st.child.urn))
            return None
        if message == "which_children":
            return self.which_children()
        if isinstance(message, tuple) and message and message[0] == "ref_of":
            return self.ref_of(message[1])
        raise ValueError(f"{self.name}: unexpected message {message!r}")

    def _on_exit(self, failure: Failure) -> None:
        idx = next((i for i, st in enumerate(self._children)
                    if st.child is not None and st.child.urn == failure.actor_urn), None)
        if idx is None:
            return  # a report from an incarnation already replaced
        st = self._children[idx]
        st.last_failure = failure
        st.status = "crashed"
        log.warning("%s: child %s crashed: %s: %s", self.name, st.spec.id,
                    failure.error_type, failure.message)
        if st.spec.restart is Restart.TEMPORARY:
            st.child = None
            return
        if not self.intensity.allow():
            self._stopping.set()
            self._stop_range(0, len(self._children))
            raise SupervisorGaveUp(
                f"{self.name}: more than {self.intensity.max_restarts} restarts in "
                f"{self.intensity.period}s; last: {st.spec.id}: {failure.error_type}: "
                f"{failure.message}")
        lo, hi = {Strategy.ONE_FOR_ONE: (idx, idx + 1),
                  Strategy.ONE_FOR_ALL: (0, len(self._children)),
                  Strategy.REST_FOR_ONE: (idx, len(self._children))}[self.strategy]
        st.child = None  # already dead
        self._stop_range(lo, hi)
        for other in self._children[lo:hi]:
            other.restarts += 1 if other is st else 0
            self._start(other)

    # --- introspection --------------------------------------------------------------
    def ref_of(self, child_id: str) -> Any:
        """The running child with ``child_id`` (an ActorRef or a service), or None."""
        for st in self._children:
            if st.spec.id == child_id and st.child is not None:
                if isinstance(st.child, ActorChild):
                    return st.child.ref
                if isinstance(st.child, ServiceChild):
                    return st.child.service
        return None

    def which_children(self) -> list[dict[str, Any]]:
        """Each child: id, status, restarts, last failure, uptime, and its own facts."""
        out = []
        for st in self._children:
            info: dict[str, Any] = {
                "id": st.spec.id,
                "restart": st.spec.restart.value,
                "status": st.status,
                "restarts": st.restarts,
                "uptime": round(time.time() - st.started_at, 1) if st.child else 0.0,
                "last_failure": None if st.last_failure is None else {
                    "type": st.last_failure.error_type,
                    "message": st.last_failure.message,
                    "traceback": st.last_failure.traceback,
                },
            }
            if st.child is not None:
                info.update(st.child.describe())
            out.append(info)
        return out


def supervisor_child(
    name: str,
    specs: list[ChildSpec],
    *,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    intensity: Callable[[], Intensity] = Intensity,
) -> ChildSpec:
    """A child spec for a nested supervisor."""
    def start(report: ReportFailure) -> Child:
        ref = Supervisor.start(name, specs, report, strategy=strategy, intensity=intensity())
        return ActorChild(ref, start_timeout=60)
    return ChildSpec(id=name, start=start, restart=Restart.PERMANENT, shutdown=30)


def service_child(id_: str, make: Callable[[], Service], *,
                  restart: Restart = Restart.PERMANENT, shutdown: float = 10.0) -> ChildSpec:
    """A child spec for a thread-based service."""
    return ChildSpec(id=id_, start=lambda _report: ServiceChild(make()), restart=restart,
                     shutdown=shutdown)


class Application:
    """The root of a supervision tree: starts it, and knows when it gave up.

    Args:
        specs: the root's children.
        strategy: the root's strategy.
        intensity: the root's restart limit.
    """

    def __init__(self, specs: list[ChildSpec], *, strategy: Strategy = Strategy.ONE_FOR_ONE,
                 intensity: Intensity | None = None) -> None:
        self._specs = specs
        self._strategy = strategy
        self._intensity = intensity or Intensity(max_restarts=3, period=30)
        self.root: pykka.ActorRef[Supervisor] | None = None
        self.failed = threading.Event()
        self.failure: Failure | None = None

    def start(self) -> None:
        """Start the tree, children first to last.

        Raises:
            RuntimeError: when a child could not start.
        """
        self.root = Supervisor.start("root", self._specs, self._on_root_failure,
                                     strategy=self._strategy, intensity=self._intensity)
        try:
            self.root.ask("ping", timeout=120)
        except Exception as exc:
            raise RuntimeError(f"the supervision tree did not start: {exc}") from exc

    def _on_root_failure(self, failure: Failure) -> None:
        self.failure = failure
        log.critical("the root supervisor gave up: %s: %s", failure.error_type, failure.message)
        self.failed.set()

    def tree(self) -> list[dict[str, Any]]:
        """The root's children, with nested supervisors expanded."""
        if self.root is None or not self.root.is_alive():
            return []
        return _expand(self.root)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the tree, last child first."""
        if self.root is not None:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                self.root.stop(block=True, timeout=timeout)


def _expand(ref: pykka.ActorRef[Any]) -> list[dict[str, Any]]:
    children: list[dict[str, Any]] = ref.ask("which_children", timeout=5)  # type: ignore[assignment]
    for c in children:
        sub = ref.ask(("ref_of", c["id"]), timeout=5)
        if isinstance(sub, pykka.ActorRef) and issubclass(sub.actor_class, Supervisor):
            with contextlib.suppress(Exception):
                c["children"] = _expand(sub)
    return children
