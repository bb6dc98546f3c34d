"""OTP-style supervisors for pykka actors and threads, and the application root.

A :class:`Supervisor` is itself a pykka actor. It starts its children in order (each
start must succeed before the next), restarts them by its strategy when they crash,
and gives up when more than ``max_restarts`` restarts happen within ``period``
seconds: it stops its children in reverse order and fails, so its own parent decides
(escalation). When the root gives up, :class:`Application` records why; the node
logs it and exits non-zero so the service manager restarts it.

Children are pykka actors (a :class:`SupervisedActor` reports its crash through a
:class:`Link`: pykka's three failure paths become one report) or services (threads
with start/stop/is_alive, watched by a periodic liveness check).
The same check notices actors stuck in one handler longer than ``handler_timeout``:
they are abandoned (marked dead, never sent to again) and restarted.

Children started on demand by id are a :class:`DynamicSupervisor`'s (OTP's
``simple_one_for_one``): capped, passivated when idle, restarted after a crash. Both
kinds decide a restart with the same :class:`RestartPolicy` and find stuck children
with the same :func:`stuck`.

OTP semantics kept: strategies one_for_one / one_for_all / rest_for_one; restart
types permanent / transient / temporary; shutdown as a timeout (then the child is
abandoned) or ``brutal``; start in order, stop in reverse; optional restart backoff
with jitter.

This module is the supervision runtime: it imports pykka, the standard library and
the thread base (``config/service.py``, itself standard library only), and knows
nothing of apartments, brokers or stores (a unit test holds it to
that; see ``docs/architecture.md``).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal, Protocol, TypeVar

import pykka

# The thread base and its crash report belong to the runtime too: re-exported.
from config.service import Failure as Failure  # noqa: PLC0414 - a re-export
from config.service import Health as Health  # noqa: PLC0414 - a re-export
from config.service import ReportFailure as ReportFailure  # noqa: PLC0414 - a re-export
from config.service import ThreadService as ThreadService  # noqa: PLC0414 - a re-export

log = logging.getLogger(__name__)

BRUTAL: Literal["brutal"] = "brutal"
_T = TypeVar("_T")
_K_contra = TypeVar("_K_contra", contravariant=True)
_V = TypeVar("_V")
class ActorCrashed(Exception):
    """Raised out of a handler after the crash was reported (wraps the cause)."""




class Link:
    """What ties a child to its supervisor: the crash callback plus a heartbeat.

    The failure is recorded here synchronously, on the child's thread, before the
    child is marked stopped, so a supervisor that finds a dead child can always tell
    a crash from a normal exit. ``busy_since`` (monotonic seconds, or None when idle)
    lets it notice a child stuck in one handler. ``closing`` tells the child to skip
    what is left in its mailbox: on shutdown the consumers have already closed their
    connections, so the broker redelivers those messages anyway. ``after_crash``
    tells a restarted child that its predecessor may have left work in flight.

    Args:
        forward: where the failure goes next (usually the supervisor's mailbox).
    """

    def __init__(self, forward: ReportFailure) -> None:
        self._forward = forward
        self.failure: Failure | None = None
        self.busy_since: float | None = None
        self.current: Any = None
        self.closing = False
        self.after_crash = False

    def __call__(self, failure: Failure) -> None:
        """Record and forward a crash."""
        self.failure = failure
        self._forward(failure)

    def busy_for(self, now: float | None = None) -> float:
        """Seconds the child has spent in its current handler (0 when idle)."""
        since = self.busy_since
        return 0.0 if since is None else (now or time.monotonic()) - since


class InjectedCrash(Exception):
    """A crash asked for on purpose (operator drill or test)."""


@dataclass(frozen=True)
class Crash:
    """Tell any supervised actor to crash (a drill: ``staybook ctl crash``)."""

    reason: str = "drill"


@dataclass(frozen=True)
class Ping:
    """Ask any supervised actor whether it runs; it answers ``"pong"``."""


class Gate(Protocol):
    """What a child needs of a shared dependency to ride out its outages."""

    def ride_out(self, exc: BaseException, stop: Callable[[], bool] = ...) -> bool:
        """True once the outage ``exc`` shows is over (see :meth:`Dependency.ride_out`)."""


class DependencyDown(Exception):
    """A shared dependency stayed unreachable past its limit: the node cannot go on."""


class Dependency(ThreadService):
    """A dependency the children share (the store): up, or down until a probe answers.

    "Let it crash" is for faults of the child, not of what it depends on. A child
    that meets an error ``is_outage`` recognises calls :meth:`trip` and waits for
    :meth:`wait_up` instead of crashing: the failure is not counted toward any
    supervisor's intensity, and the work it was doing stays where it was (in the
    child's hands, or unacked at the broker). Meanwhile this service's thread calls
    ``probe`` with capped exponential backoff and reopens the gate when it answers
    (Akka's ``CircuitBreaker`` and backoff supervisor, Erlang's ``fuse``). Down for
    longer than ``limit`` seconds, it gives up: ``on_give_up`` is called once with
    one line that says so, and waiters get :class:`DependencyDown`. Its row in the
    tree says whether it is up, how long it has been down and why.

    Args:
        name: the service's child id and thread name.
        probe: raises while the dependency cannot be used; returns when it can.
        is_outage: whether an error means the dependency is unreachable (as opposed
            to a fault of the caller, which is still a crash).
        describe: an error as one line for the log and the operator (default: its
            text, whitespace folded).
        limit: seconds down before giving up (None: never).
        min_delay: the first probe's delay; doubled up to ``max_delay``.
    """

    def __init__(self, name: str, probe: Callable[[], None],
                 is_outage: Callable[[BaseException], bool], *, limit: float | None,
                 max_delay: float, min_delay: float = 0.05,
                 on_give_up: Callable[[str], None] | None = None,
                 describe: Callable[[BaseException], str] | None = None) -> None:
        super().__init__(name)
        self._describe = describe or _one_line
        self._probe = probe
        self._is_outage = is_outage
        self.limit = limit
        self._min_delay = min_delay
        self._max_delay = max_delay
        self.on_give_up = on_give_up
        self._up = threading.Event()
        self._up.set()
        self._tripped = threading.Event()
        self._lock = threading.Lock()
        self.down_since: float | None = None  # monotonic, while down
        self.last_error = ""
        self.outages = 0
        self.gave_up: str | None = None
        self.last_outage_seconds = 0.0

    # --- callers ------------------------------------------------------------------
    @property
    def up(self) -> bool:
        """False from a trip until a probe answers."""
        return self._up.is_set()

    def down_for(self, now: float | None = None) -> float:
        """Seconds since the dependency went down (0 while up)."""
        since = self.down_since
        return 0.0 if since is None else (now or time.monotonic()) - since

    def is_outage(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the dependency is unreachable.

        A timeout met while it is down (waiting behind someone who waits for it) is
        the outage's too.
        """
        if isinstance(exc, DependencyDown):
            return False
        return self._is_outage(exc) or (isinstance(exc, TimeoutError) and not self.up)

    def trip(self, exc: BaseException | None = None) -> None:
        """Mark the dependency down (once per outage) and start probing it."""
        with self._lock:
            if exc is not None:
                self.last_error = self._describe(exc)
            if not self._up.is_set():
                return
            self._up.clear()
            self.down_since = time.monotonic()
            self.outages += 1
        log.warning("%s unavailable (%s); holding work until it answers", self.name,
                    self.last_error or "tripped")
        self._tripped.set()

    def wait_up(self, timeout: float | None = None) -> bool:
        """Block until the dependency is up; False when ``timeout`` passed first.

        Raises:
            DependencyDown: once the dependency was down past its limit.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._up.wait(0.5 if deadline is None else
                                max(0.0, min(0.5, deadline - time.monotonic()))):
            if self.gave_up is not None:
                raise DependencyDown(self.gave_up)
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def ride_out(self, exc: BaseException, stop: Callable[[], bool] = lambda: False
                 ) -> bool:
        """Wait out the outage ``exc`` shows: True once the dependency is back, so the
        caller does its work again.

        False at once when ``exc`` is no outage (the caller's own fault), and False when
        ``stop()`` turns true while waiting or the dependency was given up on: the
        caller then fails as it would have without this dependency.
        """
        if not self.is_outage(exc):
            return False
        self.trip(exc)
        try:
            while not self.wait_up(0.5):
                if stop():
                    return False
        except DependencyDown:
            return False
        return True

    # --- the service --------------------------------------------------------------
    def start(self, on_crash: ReportFailure | None = None) -> None:
        """Start the probing thread (it sleeps while the dependency is up)."""
        super().start(on_crash)
        if not self.up:
            self._tripped.set()

    def interrupt(self) -> None:
        """Wake the thread sleeping while the dependency is up, so it sees the stop."""
        self._tripped.set()

    def facts(self) -> dict[str, Any]:
        """Up or down (and for how long), outages so far, the last error."""
        return {"up": self.up, "down_for": round(self.down_for(), 1),
                "outages": self.outages, "last_error": self.last_error or None}

    def run(self) -> None:
        """Sleep while up; while down, probe with backoff until it answers."""
        while not self.stopping():
            self._tripped.wait()
            self._tripped.clear()
            delay = self._min_delay
            while not self.up and not self.stopping():
                if self.pause(delay):
                    return
                try:
                    self._probe()
                except Exception as exc:  # noqa: BLE001 - any failure: still down
                    self.last_error = self._describe(exc)
                    delay = min(delay * 2, self._max_delay)
                    self._check_limit()
                    continue
                self._reopen()

    def _reopen(self) -> None:
        with self._lock:
            down = self.down_for()
            self.last_outage_seconds = down
            self.down_since = None
            self._up.set()
        log.warning("%s available again after %.1fs", self.name, down)

    def _check_limit(self) -> None:
        if self.limit is None or self.gave_up is not None or self.down_for() < self.limit:
            return
        self.gave_up = (f"{self.name} unreachable for {self.down_for():.0f}s (limit "
                        f"{self.limit:.0f}s; last error: {self.last_error})")
        log.critical("%s; giving up", self.gave_up)
        if self.on_give_up is not None:
            self.on_give_up(self.gave_up)


def _one_line(exc: BaseException) -> str:
    """An error as one short line (drivers' messages span several)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


class SupervisedActor(pykka.ThreadingActor):
    """A pykka actor that reports every crash to its supervisor, once.

    Subclasses implement :meth:`started` and :meth:`receive` instead of pykka's
    ``on_start`` and ``on_receive``. An error that means ``dependency`` is down is
    no crash: the actor waits until it is back and runs the same hook again, so its
    mailbox keeps its order and nothing counts toward a restart intensity. (The hooks
    must be safe to run again when they fail on the dependency: they change their
    state only after the calls that can fail.) While it waits it does not count as
    busy, so it is not taken for stuck.

    Args:
        name: the child id the supervisor knows it by.
        report: called (on the actor's thread) with the :class:`Failure`.
        dependency: what the actor waits for instead of crashing (None: nothing).
    """

    use_daemon_thread = True  # an abandoned actor must never keep the process alive

    def __init__(self, name: str, report: ReportFailure,
                 dependency: Gate | None = None) -> None:
        super().__init__()
        self.name = name
        self.dependency = dependency
        self._report = report
        self._link = report if isinstance(report, Link) else None
        self._reported = False
        self._current: Any = None
        self.handled = 0
        self.waiting = False  # for its dependency to come back

    def started(self) -> None:
        """Hook: initialise state (runs on the actor's thread)."""

    def receive(self, message: Any) -> Any:
        """Hook: handle one message."""
        raise NotImplementedError

    def on_start(self) -> None:
        """Run :meth:`started`, reporting any failure."""
        try:
            self._riding_outages(self.started)
        except BaseException as exc:
            self._crash("start", exc)
            raise ActorCrashed(f"{self.name} failed to start: {exc!r}") from exc

    def on_receive(self, message: Any) -> Any:
        """Run :meth:`receive`, reporting any failure and stopping the actor."""
        if isinstance(message, Ping):
            return "pong"
        if self._link is not None and self._link.closing:
            return None  # shutting down: the broker redelivers what is skipped
        self._current = message
        if self._link is not None:
            self._link.current = message
            self._link.busy_since = time.monotonic()
        try:
            if isinstance(message, Crash):
                raise InjectedCrash(f"{self.name}: crash requested ({message.reason})")
            result = self._riding_outages(lambda: self.receive(message))
        except BaseException as exc:
            self._crash("receive", exc)
            # For an ask, pykka would only fail the future: stop here as well.
            pykka.ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
            raise ActorCrashed(f"{self.name} crashed: {exc!r}") from exc
        finally:
            self._current = None
            if self._link is not None:
                self._link.busy_since = None
                self._link.current = None
        self.handled += 1
        return result

    def _riding_outages(self, hook: Callable[[], _T]) -> _T:
        """``hook()``, run again after each outage of the dependency it meets."""
        dep = self.dependency
        if dep is None:
            return hook()
        link = self._link

        def closing() -> bool:
            return link is not None and link.closing

        while True:
            try:
                return hook()
            except Exception as exc:
                if closing():
                    raise
                busy, self.waiting = (None if link is None else link.busy_since), True
                if link is not None:
                    link.busy_since = None  # waiting is not being stuck
                try:
                    back = dep.ride_out(exc, closing)
                finally:
                    self.waiting = False
                    if link is not None and busy is not None:
                        link.busy_since = time.monotonic()
                if not back:
                    raise

    def _crash(self, phase: str, exc: BaseException) -> None:
        if self._reported:
            return
        self._reported = True
        tb = "".join(traceback.format_exception(exc))[-4000:]
        failure = Failure(
            name=self.name,
            phase=phase,
            error_type=type(exc).__name__,
            message=str(exc)[:500],
            traceback=tb,
            at=time.time(),
            actor_urn=self.actor_urn,
            cause=self._current,
        )
        try:
            self._on_crash(failure)
        finally:
            try:
                self._report(failure)
            except Exception:
                log.exception("reporting the crash of %s failed", self.name)

    def _on_crash(self, failure: Failure) -> None:
        """Hook: release what the dead actor holds (called before the report)."""


def mailbox_size(ref: pykka.ActorRef[Any]) -> int:
    """Messages waiting in an actor's mailbox (pykka's threading inbox is a Queue)."""
    qsize = getattr(ref.actor_inbox, "qsize", None)
    return int(qsize()) if callable(qsize) else 0


class Service(Protocol):
    """Something a supervisor can start, stop and watch (a thread with a job).

    :class:`ThreadService` is the one implementation that owns a thread; the others
    (a consumer on a shared connection, a set of consumers) drive threads they share.
    """

    name: str

    def start(self) -> None:
        """Start; raise if it cannot."""

    def stop(self, timeout: float = 10.0) -> bool | None:
        """Stop and wait up to ``timeout`` seconds; False if it still runs (None: unknown)."""

    def is_alive(self) -> bool:
        """True while it runs."""


Shutdown = float | Literal["brutal"]


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


class Scheduler(Protocol):
    """Runs a function later (a real timer in production, a fake clock in tests)."""

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` after ``delay`` seconds, on any thread."""


class ThreadScheduler:
    """A :class:`Scheduler` on daemon ``threading.Timer`` threads."""

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` after ``delay`` seconds."""
        if delay <= 0:
            fn()
            return
        t = threading.Timer(delay, fn)
        t.daemon = True
        t.start()


@dataclass(frozen=True)
class Backoff:
    """Exponential restart delay: ``min * 2**(n-1)`` capped at ``max``, +/- ``jitter``.

    Attributes:
        min: the first delay, seconds.
        max: the cap, seconds.
        jitter: relative spread, 0..1 (0.1 means +/-10 %), so restarts do not align.
    """

    min: float
    max: float
    jitter: float

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The delay before restart number ``attempt`` (1-based) in the current window."""
        base = min(self.max, self.min * 2 ** max(0, attempt - 1))
        return float(max(0.0, base * (1 + rng.uniform(-self.jitter, self.jitter))))


@dataclass
class Intensity:
    """At most ``max_restarts`` restarts within ``period`` seconds (OTP's MaxR/MaxT)."""

    max_restarts: int
    period: float
    clock: Callable[[], float] = time.monotonic
    _times: deque[float] = field(default_factory=deque)

    def allow(self) -> bool:
        """Record a restart; False when the limit is exceeded."""
        now = self.clock()
        self._times.append(now)
        while self._times and now - self._times[0] > self.period:
            self._times.popleft()
        return len(self._times) <= self.max_restarts

    @property
    def recent(self) -> int:
        """Restarts inside the current window (the backoff attempt number)."""
        return len(self._times)


class Child(Protocol):
    """A running child as its supervisor sees it."""

    urn: str

    def stop(self, shutdown: Shutdown) -> bool:
        """Stop it; False if it had to be abandoned."""

    def abandon(self) -> None:
        """Mark it dead without waiting; it is never sent to again."""

    def is_alive(self) -> bool:
        """True while it runs."""

    def describe(self) -> dict[str, Any]:
        """Facts for introspection."""


class ActorChild:
    """A pykka actor child; :class:`Ping` is asked once to prove it started.

    Raises:
        RuntimeError: if the actor did not answer :class:`Ping` in ``start_timeout``.
    """

    def __init__(self, ref: pykka.ActorRef[Any], *, start_timeout: float = 10.0,
                 kind: str = "worker") -> None:
        self.ref = ref
        self.urn = ref.actor_urn
        self.kind = kind
        try:
            ref.ask(Ping(), timeout=start_timeout)
        except Exception as exc:
            self.abandon()
            raise RuntimeError(f"child {self.urn} did not start: {exc!r}") from exc

    def stop(self, shutdown: Shutdown) -> bool:
        """Stop after its current message; abandon it after ``shutdown`` seconds."""
        if shutdown == BRUTAL:
            self.abandon()
            return True
        try:
            self.ref.stop(block=True, timeout=shutdown)
        except pykka.ActorDeadError:
            return True
        except pykka.Timeout:
            log.warning("%s did not stop within %ss; abandoned", self.urn, shutdown)
            self.abandon()
            return False
        return True

    def abandon(self) -> None:
        """Mark the actor stopped so every later tell fails; its thread ends when free."""
        abandon_actor(self.ref)

    def is_alive(self) -> bool:
        """True while the actor runs."""
        return self.ref.is_alive()

    def describe(self) -> dict[str, Any]:
        """Kind and mailbox size."""
        return {"kind": self.kind, "mailbox": mailbox_size(self.ref)}


def abandon_actor(ref: pykka.ActorRef[Any]) -> None:
    """Mark an actor dead at once; its thread exits after its current message.

    A stop message is queued first (it wakes an idle thread blocked on its inbox),
    then the actor is marked stopped, so every later ``tell`` raises ActorDeadError.
    """
    with contextlib.suppress(pykka.ActorDeadError):
        ref.stop(block=False)
    pykka.ActorRegistry.unregister(ref)
    ref.actor_stopped.set()


class ServiceChild:
    """A thread-based service child; its death is noticed by the liveness check.

    A :class:`ThreadService` whose thread crashes also reports the crash, through
    ``report``, so the supervisor sees it as a crash (with its error) rather than an exit.

    Args:
        service: the service, started here.
        report: the supervisor's crash callback (None: only the liveness check).
    """

    _seq = 0

    def __init__(self, service: Service, report: ReportFailure | None = None) -> None:
        self.service = service
        ServiceChild._seq += 1
        self.urn = f"service:{service.name}:{ServiceChild._seq}"
        self._report = report
        if isinstance(service, ThreadService):
            service.start(on_crash=None if report is None else self._crashed)
        else:
            service.start()

    def _crashed(self, failure: Failure) -> None:
        if self._report is not None:
            self._report(replace(failure, actor_urn=self.urn))

    def stop(self, shutdown: Shutdown) -> bool:
        """Stop the service; False if its thread outlived the timeout."""
        self.service.stop(0.0 if shutdown == BRUTAL else shutdown)
        return not self.service.is_alive()

    def abandon(self) -> None:
        """Ask it to stop without waiting."""
        self.service.stop(0.0)

    def is_alive(self) -> bool:
        """True while its thread runs."""
        return self.service.is_alive()

    def describe(self) -> dict[str, Any]:
        """Kind, the service's name and liveness, and a thread service's health."""
        s = self.service
        if isinstance(s, ThreadService):
            return {"kind": "service", **s.health().row()}
        return {"kind": "service", "name": s.name, "alive": s.is_alive()}


class PollingService(ThreadService):
    """A supervised thread that calls :meth:`poll` until stopped.

    ``poll`` returns True when there may be more to do at once; otherwise the thread
    sleeps ``interval`` seconds or until :meth:`wake`. A failing poll is logged and
    retried with exponential backoff up to ``max_delay``: what it was working on stays
    where it was (in the store), so the next poll picks it up.

    Args:
        name: the child id and thread name.
        interval: seconds between polls when idle.
        max_delay: the cap on the retry backoff.
        retry_delay: the first retry delay (default: ``interval``).
        dependency: a round that fails because it is down waits until it is back
            (then polls at once) instead of backing off.
    """

    def __init__(self, name: str, interval: float, *, max_delay: float = 30.0,
                 retry_delay: float | None = None, dependency: Gate | None = None) -> None:
        super().__init__(name)
        self.dependency = dependency
        self._interval = interval
        self._max_delay = max_delay
        self._retry_delay = interval if retry_delay is None else retry_delay
        self._wake = threading.Event()
        self.failures = 0

    def poll(self) -> bool:
        """Hook: do one round of work; True if another round should follow at once."""
        raise NotImplementedError

    def failed(self, exc: Exception) -> None:
        """Hook: a round raised ``exc`` (release what it held); the default does nothing."""

    def finished(self) -> None:
        """Hook: the thread is about to end; the default does nothing."""

    def wake(self) -> None:
        """There is work now: poll without waiting for the interval."""
        self._wake.set()

    def interrupt(self) -> None:
        """Cut the idle wait short, so a stop takes effect after the current round."""
        self._wake.set()

    def facts(self) -> dict[str, Any]:
        """Rounds that failed (outages of the dependency are not counted)."""
        return {"failures": self.failures}

    def run(self) -> None:
        """Poll, sleep or back off, until stopped; then :meth:`finished`."""
        retry = self._retry_delay
        while not self.stopping():
            wait = self._interval
            try:
                more = self.poll()
                retry = self._retry_delay
            except Exception as exc:  # noqa: BLE001 - the work stays; the next poll retries
                self.failed(exc)
                if self.dependency is not None and self.dependency.ride_out(
                        exc, self.stopping):
                    continue
                self.failures += 1
                log.warning("%s: round failed (%r); retrying in %.1fs", self.name, exc, retry)
                more, wait = False, retry
                retry = min(retry * 2, self._max_delay)
            if not more:
                self._wake.wait(wait)
                self._wake.clear()
        self.finished()


class SupervisorGaveUp(Exception):
    """Too many restarts: the supervisor stopped its children and failed."""


class RestartPolicy:
    """What follows a child's exit: the one decision fixed and dynamic children share.

    A crash of a ``temporary`` child, and a normal exit of any child but a
    ``permanent`` one, ends it. Any other exit is a restart, counted against the
    intensity; past it the supervisor gives up. The delay before the restart comes
    from the child's backoff, by the number of restarts in the current window.

    Args:
        name: the supervisor's name, for the log and the give-up message.
        intensity: the restart limit.
        rng: jitter source for the backoff.
    """

    def __init__(self, name: str, intensity: Intensity,
                 rng: random.Random | None = None) -> None:
        self.name = name
        self.intensity = intensity
        self._rng = rng or random.Random()

    def after_exit(self, child_id: str, restart: Restart, failure: Failure | None,
                   backoff: Backoff | None) -> float | None:
        """Log the exit; the seconds to wait before restarting, or None: not restarted.

        Raises:
            SupervisorGaveUp: the restart would exceed the intensity.
        """
        if failure is None:
            log.info("%s: child %s exited", self.name, child_id)
            if restart is not Restart.PERMANENT:
                return None
        else:
            log.warning("%s: child %s crashed in %s: %s: %s", self.name, child_id,
                        failure.phase, failure.error_type, failure.message)
            log.debug("%s: child %s crashed here:\n%s", self.name, child_id,
                      failure.traceback)
            if restart is Restart.TEMPORARY:
                return None
        if not self.intensity.allow():
            last = f"{failure.error_type}: {failure.message}" if failure else "exited"
            raise SupervisorGaveUp(
                f"{self.name}: more than {self.intensity.max_restarts} restarts in "
                f"{self.intensity.period}s; last: {child_id}: {last}")
        return 0.0 if backoff is None else backoff.delay(self.intensity.recent, self._rng)


def stuck(child_id: str, link: Link, urn: str, limit: float | None,
          now: float) -> Failure | None:
    """The failure of a child busy in one message longer than ``limit`` (None: not stuck).

    Its supervisor abandons it (marks it dead, never sends to it again) and treats
    it as crashed on that message.
    """
    if limit is None:
        return None
    busy = link.busy_for(now)
    if busy <= limit:
        return None
    return Failure(child_id, "receive", "Stuck",
                   f"busy {busy:.1f}s in one message (limit {limit}s)",
                   "", time.time(), urn, cause=link.current)


def failure_row(failure: Failure | None) -> dict[str, Any] | None:
    """A failure as a row of the supervision tree shows it."""
    return None if failure is None else {
        "type": failure.error_type, "message": failure.message,
        "traceback": failure.traceback, "at": failure.at}


StartFn = Callable[[ReportFailure], Child]


@dataclass
class ChildSpec:
    """How to start, restart and stop one child.

    Attributes:
        id: unique among its siblings.
        start: starts the child, given the callback (a :class:`Link`) for its crashes.
        restart: permanent, transient or temporary.
        shutdown: seconds to wait for a clean stop before abandoning, or ``"brutal"``.
        backoff: delay restarts (None: restart at once).
    """

    id: str
    start: StartFn
    restart: Restart = Restart.PERMANENT
    shutdown: Shutdown = 10.0
    backoff: Backoff | None = None


@dataclass
class _State:
    spec: ChildSpec
    child: Child | None = None
    link: Link | None = None
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


@dataclass(frozen=True)
class _Restart:
    indices: tuple[int, ...]
    generation: int


class _Ticker(ThreadService):
    """Tells its supervisor to look at its children every ``interval`` seconds."""

    def __init__(self, name: str, supervisor: pykka.ActorRef[Any], interval: float) -> None:
        super().__init__(name)
        self._supervisor = supervisor
        self._interval = interval

    def run(self) -> None:
        """Tick until stopped or the supervisor is gone."""
        while not self.pause(self._interval):
            try:
                self._supervisor.tell(_Tick())
            except pykka.ActorDeadError:
                return


@dataclass(frozen=True)
class WhichChildren:
    """Ask a supervisor for its children's rows (:meth:`Supervisor.which_children`)."""


@dataclass(frozen=True)
class CountChildren:
    """Ask a supervisor for its counts (:meth:`Supervisor.count_children`)."""


@dataclass(frozen=True)
class RefOf:
    """Ask a supervisor for its running child ``child_id`` (:meth:`Supervisor.ref_of`)."""

    child_id: str


class Supervisor(SupervisedActor):
    """An OTP-style supervisor.

    Args:
        name: its id in its parent.
        specs: children, in start order.
        report: its parent's crash callback.
        strategy: what restarts with a crashed child.
        intensity: the restart limit before giving up.
        check_interval: seconds between liveness checks.
        handler_timeout: an actor child busy longer than this in one message is
            abandoned and restarted (None: never).
        scheduler: runs delayed restarts (backoff).
        rng: jitter source.
        clock: seconds, for each child's uptime (monotonic: a wall-clock step does not
            make an uptime jump or go negative).
    """

    def __init__(
        self,
        name: str,
        specs: list[ChildSpec],
        report: ReportFailure,
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: Intensity,
        check_interval: float = 0.5,
        handler_timeout: float | None = None,
        scheduler: Scheduler | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, report)
        self.strategy = strategy
        self.policy = RestartPolicy(name, intensity, rng)
        self._children = [_State(s) for s in specs]
        self._check_interval = check_interval
        self._handler_timeout = handler_timeout
        self._scheduler = scheduler or ThreadScheduler()
        self._clock = clock
        self._generation = 0
        self._ticker = _Ticker(f"{name}-ticker", self.actor_ref, check_interval)

    # --- lifecycle ------------------------------------------------------------------
    def started(self) -> None:
        """Start every child in order; the first failure stops those started and fails."""
        for i, st in enumerate(self._children):
            try:
                self._start(st)
            except Exception:
                self._stop_range(0, i)
                raise
        self._ticker.start()

    def on_stop(self) -> None:
        """Stop children in reverse start order."""
        self._ticker.stop(0.0)
        self._stop_range(0, len(self._children))

    def on_failure(self, *_exc: object) -> None:
        """A crashed supervisor leaves no orphans."""
        self._ticker.stop(0.0)
        self._stop_range(0, len(self._children))

    def _report_to_me(self, failure: Failure) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_ChildExited(failure))

    def _start(self, st: _State) -> None:
        st.link = Link(self._report_to_me)
        st.child = st.spec.start(st.link)
        st.started_at = self._clock()
        st.status = "running"

    def _stop_range(self, lo: int, hi: int) -> None:
        for st in reversed(self._children[lo:hi]):
            if st.child is not None:
                if st.link is not None:
                    st.link.closing = True
                try:
                    clean = st.child.stop(st.spec.shutdown)
                except Exception:
                    log.exception("%s: stopping %s failed", self.name, st.spec.id)
                    clean = False
                st.child = None
                st.status = "stopped" if clean else "abandoned"

    # --- messages -------------------------------------------------------------------
    def receive(self, message: Any) -> Any:
        """Crash reports, liveness ticks, delayed restarts, introspection."""
        if isinstance(message, _ChildExited):
            st = self._find(message.failure.actor_urn)
            if st is not None:
                self._on_exit(st, message.failure)
            return None
        if isinstance(message, _Tick):
            self._check()
            return None
        if isinstance(message, _Restart):
            if message.generation == self._generation:
                self._restart_now(message.indices)
            return None
        if isinstance(message, WhichChildren):
            return self.which_children()
        if isinstance(message, CountChildren):
            return self.count_children()
        if isinstance(message, RefOf):
            return self.ref_of(message.child_id)
        raise ValueError(f"{self.name}: unexpected message {message!r}")

    def _find(self, urn: str) -> _State | None:
        return next((st for st in self._children
                     if st.child is not None and st.child.urn == urn), None)

    def _check(self) -> None:
        now = time.monotonic()
        for st in self._children:
            if st.child is None or st.status != "running" or st.link is None:
                continue
            if not st.child.is_alive():
                # A crash is recorded on the Link before the child is marked stopped.
                self._on_exit(st, st.link.failure)
                continue
            failure = stuck(st.spec.id, st.link, st.child.urn, self._handler_timeout, now)
            if failure is not None:
                st.child.abandon()
                self._on_exit(st, failure)

    def _on_exit(self, st: _State, failure: Failure | None) -> None:
        if st.child is None:
            return
        st.child = None
        st.status = "exited" if failure is None else "crashed"
        if failure is not None:
            st.last_failure = failure
        try:
            delay = self.policy.after_exit(st.spec.id, st.spec.restart, failure,
                                           st.spec.backoff)
        except SupervisorGaveUp:
            self._ticker.stop(0.0)
            self._stop_range(0, len(self._children))
            raise
        if delay is None:
            return
        idx = self._children.index(st)
        lo, hi = {Strategy.ONE_FOR_ONE: (idx, idx + 1),
                  Strategy.ONE_FOR_ALL: (0, len(self._children)),
                  Strategy.REST_FOR_ONE: (idx, len(self._children))}[self.strategy]
        self._stop_range(lo, hi)
        st.restarts += 1
        indices = tuple(i for i in range(lo, hi)
                        if i == idx or self._children[i].spec.restart is not Restart.TEMPORARY)
        if st.spec.backoff is None:
            self._restart_now(indices)
            return
        self._generation += 1
        for i in indices:
            self._children[i].status = "restarting"
        gen = self._generation
        self._scheduler.call_later(delay, lambda: self._tell_restart(indices, gen))

    def _tell_restart(self, indices: tuple[int, ...], generation: int) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_Restart(indices, generation))

    def _restart_now(self, indices: tuple[int, ...]) -> None:
        for i in indices:
            st = self._children[i]
            if st.child is not None:
                continue
            try:
                self._start(st)
            except Exception as exc:  # noqa: BLE001 - counted as a crash below
                failure = Failure(st.spec.id, "start", type(exc).__name__, str(exc)[:500],
                                  "", time.time(), "")
                st.last_failure = failure
                st.status = "crashed"
                log.warning("%s: restarting %s failed: %r", self.name, st.spec.id, exc)
                # Count it like a crash; keep trying until the intensity says stop.
                st.child = _DeadChild()
                self._on_exit(st, failure)
                return

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
                "uptime": round(self._clock() - st.started_at, 1) if st.child else 0.0,
                "last_failure": failure_row(st.last_failure),
            }
            if st.child is not None:
                info.update(st.child.describe())
            out.append(info)
        return out

    def count_children(self) -> dict[str, int]:
        """OTP's count_children: specs, active, supervisors, workers."""
        active = [st for st in self._children if st.child is not None and st.child.is_alive()]
        sups = sum(1 for st in self._children if isinstance(st.child, ActorChild)
                   and st.child.kind == "supervisor")
        return {"specs": len(self._children), "active": len(active), "supervisors": sups,
                "workers": len(self._children) - sups}


class Memory(Protocol[_K_contra, _V]):
    """A bounded map (an LRU): what a dynamic supervisor remembers of gone children."""

    def get(self, key: _K_contra) -> _V | None:
        """The value, or None."""

    def put(self, key: _K_contra, value: _V) -> None:
        """Keep ``value``, forgetting the oldest entry when full."""


@dataclass(eq=False)  # hashed by identity: the busy set holds children, not ids
class DynamicChild:
    """One dynamic child as its supervisor keeps it, across its incarnations.

    Attributes:
        id: its id among its siblings (e.g. ``apartment:a1``).
        ref: the running incarnation; None while it restarts.
        link: the running incarnation's link.
        pending: work handed to it and not yet settled, in the order it was handed
            (token -> item, both the adapter's). A child with pending work is busy:
            never passivated, watched for being stuck, and what it leaves at a crash
            goes to its successor.
        tag: where its work comes from (the adapter's; :meth:`DynamicSupervisor.release`
            stops the children of one tag).
    """

    id: str
    ref: pykka.ActorRef[Any] | None = None
    link: Link | None = None
    pending: dict[Any, Any] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    restarts: int = 0
    handled: int = 0
    last_failure: Failure | None = None
    tag: str | None = None


class DynamicSupervisor(ThreadService):
    """OTP's ``simple_one_for_one``: children started on demand by id, capped, passivated.

    Each child is a pykka actor started by :meth:`start_child` on the first work for
    its id. The restart decision (restart type, intensity, backoff) is the
    :class:`RestartPolicy` every :class:`Supervisor` uses, and stuck detection is the
    same :func:`stuck`; past the intensity, it stops every child and reports itself
    dead (``is_alive`` False), so its parent decides. Around a crash the work a dead
    child left pending goes, in order, to its successor (:meth:`resume`).

    Children live in a dict in LRU order, under one lock that every hand-over of work
    takes: beyond ``max_live``, the least recently used idle ones are passivated,
    and idle ones are passivated after ``idle_seconds``. A child with pending work is
    never passivated, so a successor never starts behind its predecessor. With every
    child busy the cap is exceeded rather than work held back; the sweep brings it
    back under once they are idle.

    The sweep holds the same lock, so what it does under it must not grow with the
    live children: eviction walks the LRU order only up to the first recently used
    child (once under the cap), a bounded chunk at a time; stuck detection looks only
    at the busy children, copied under the lock and checked outside it.

    It is a :class:`ThreadService`: its thread sweeps. Subclasses (adapters)
    implement :meth:`start_child`, and may implement the hooks :meth:`resume`,
    :meth:`crashed` and :meth:`dropped`, whose defaults do nothing.

    Args:
        name: its id in its parent, and its thread's name prefix.
        max_live: the cap on live children.
        idle_seconds: passivate children idle this long.
        intensity: the restart limit before it gives up.
        backoff: delay before a child restarts (None: at once).
        handler_timeout: abandon a child stuck this long in one message (None: never).
        history: remembers the restarts and last failure of children no longer live.
        restart: the children's restart type (a normal exit is a passivation).
        scheduler: runs delayed restarts.
        rng: jitter source for the backoff.
    """

    chunk = 256  # idle children passivated per hold of the lock by the sweep

    def __init__(self, name: str, *, max_live: int, idle_seconds: float,
                 intensity: Intensity, backoff: Backoff | None,
                 handler_timeout: float | None,
                 history: Memory[str, tuple[int, Failure | None]],
                 restart: Restart = Restart.TRANSIENT,
                 scheduler: Scheduler | None = None,
                 rng: random.Random | None = None) -> None:
        super().__init__(name, thread_name=f"{name}-sweeper")
        self.max_live = max_live
        self.idle_seconds = idle_seconds
        self.backoff = backoff
        self.handler_timeout = handler_timeout
        self.restart_type = restart
        self.policy = RestartPolicy(name, intensity, rng)
        self._history = history
        self._scheduler = scheduler or ThreadScheduler()
        self._children: OrderedDict[str, DynamicChild] = OrderedDict()
        self._busy: set[DynamicChild] = set()
        self._lock = threading.RLock()
        self._alive = False
        self._sweeping = False
        self.swept = 0  # children the sweep looked at under the lock (tests read it)
        self.activations = 0
        self.passivations = 0
        self.restarts = 0
        self.released = 0
        self.gave_up: str | None = None

    # --- hooks ----------------------------------------------------------------------
    def start_child(self, child: DynamicChild, link: Link) -> pykka.ActorRef[Any]:
        """Hook: start an incarnation of ``child`` that reports through ``link``."""
        raise NotImplementedError

    def resume(self, child: DynamicChild, ref: pykka.ActorRef[Any]) -> None:
        """Hook: a successor started (under the lock): hand it the pending work."""

    def crashed(self, child: DynamicChild, failure: Failure) -> None:
        """Hook: ``child`` crashed (under the lock, before the restart is decided)."""

    def dropped(self, child: DynamicChild) -> None:
        """Hook: ``child`` stopped for good with its pending work (give it back)."""

    # --- service ----------------------------------------------------------------------
    def start(self, on_crash: ReportFailure | None = None, *, sweeper: bool = True) -> None:
        """Start the sweep thread; children start on demand.

        Without it (``sweeper=False``) nothing is passivated or abandoned but by a
        caller of :meth:`sweep_once`: tests sweep at a time they set.
        """
        self._alive = True
        self.gave_up = None
        self._sweeping = sweeper
        if sweeper:
            super().start(on_crash)

    def run(self) -> None:
        """Sweep every quarter of ``idle_seconds`` (0.05 s to 1 s)."""
        interval = max(0.05, min(self.idle_seconds / 4, 1.0))
        while not self.pause(interval):
            self.sweep_once(time.monotonic())

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop sweeping and stop every child, within ``timeout`` in all; their pending
        work is dropped."""
        self._alive = False
        deadline = time.monotonic() + timeout
        stopped = super().stop(timeout)
        with self._lock:
            children = list(self._children.values())
            self._children.clear()
            self._busy.clear()
        self._stop_all(children, max(0.0, deadline - time.monotonic()))
        return stopped

    def is_alive(self) -> bool:
        """False after ``stop``, after giving up, or once its sweep thread died."""
        return self._alive and (not self._sweeping or super().is_alive())

    def facts(self) -> dict[str, Any]:
        """Live children, and the counts of their lives."""
        return {"live_children": self.live, "activations": self.activations,
                "passivations": self.passivations, "child_restarts": self.restarts,
                "released": self.released, "gave_up": self.gave_up}

    # --- work -------------------------------------------------------------------------
    def enlist(self, child_id: str, token: Any, item: Any,
               tag: str | None = None) -> pykka.ActorRef[Any] | None:
        """Hand work to ``child_id``, starting it if it is not live; its running actor.

        The caller tells the actor the work, and calls :meth:`settle` once it is
        done. None: the child is restarting, and :meth:`resume` will hand the work to
        its successor.

        Raises:
            RuntimeError: when the supervisor is not running (the caller gives the
                work back).
        """
        with self._lock:
            if not self._alive:
                raise RuntimeError(f"{self.name}: not running")
            child = self._children.get(child_id)
            new = child is None
            if child is None:
                child = DynamicChild(child_id)
                restarts, last = self._history.get(child_id) or (0, None)
                child.restarts, child.last_failure = restarts, last
                self._children[child_id] = child
                self._start(child, after_crash=False)
            else:
                self._children.move_to_end(child_id)
            child.pending[token] = item
            if tag is not None:
                child.tag = tag
            self._busy.add(child)
            child.last_used = time.monotonic()
            child.handled += 1
            # Only now, with its work pending: were every other child busy, an
            # eviction before would have taken this new one, and its work with it.
            if new and len(self._children) > self.max_live:
                self._evict(len(self._children) - self.max_live)
            return child.ref

    def settle(self, child_id: str, token: Any) -> None:
        """The work ``token`` of ``child_id`` is done."""
        with self._lock:
            child = self._children.get(child_id)
            if child is None:
                return
            child.pending.pop(token, None)
            if not child.pending:
                self._busy.discard(child)

    def release(self, tag: str, timeout: float | None = 10.0) -> int:
        """Stop every child whose work comes from ``tag``; their pending work is dropped.

        ``timeout`` (None: do not wait) bounds the wait for them to stop.

        Returns:
            How many live children were released.
        """
        with self._lock:
            victims = [c for c in self._children.values() if c.tag == tag]
            for c in victims:
                del self._children[c.id]
                self._busy.discard(c)
            self.released += len(victims)
        if victims:
            log.debug("%s: released %d children of %s", self.name, len(victims), tag)
            self._stop_all(victims, timeout)
        return len(victims)

    def _start(self, child: DynamicChild, *, after_crash: bool) -> None:
        child.link = Link(self._report)
        child.link.after_crash = after_crash
        child.ref = self.start_child(child, child.link)
        child.started_at = time.time()
        self.activations += 1

    def _stop_all(self, children: list[DynamicChild], timeout: float | None) -> None:
        """Stop the children all at once; then drop what they left pending.

        Each actor finishes its current message and skips the rest of its mailbox.
        """
        for c in children:
            if c.link is not None:
                c.link.closing = True
            if c.ref is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    c.ref.stop(block=False)
        deadline = None if timeout is None else time.monotonic() + timeout
        for c in children:
            if c.ref is not None and deadline is not None:
                c.ref.actor_stopped.wait(max(0.0, deadline - time.monotonic()))
            self.dropped(c)

    # --- passivation ------------------------------------------------------------------
    def _evict(self, n: int) -> None:
        """Passivate up to ``n`` idle children, least recently used first (under the lock)."""
        victims: list[str] = []
        for cid, c in self._children.items():
            if len(victims) >= n:
                break
            if not (c.pending or c.ref is None):
                victims.append(cid)
        for ref in self._pop(victims):
            with contextlib.suppress(pykka.ActorDeadError):
                ref.stop(block=False)
        if len(self._children) > self.max_live:
            log.debug("%s over its cap (%d live, all busy)", self.name, len(self._children))

    def _pop(self, victims: list[str]) -> list[pykka.ActorRef[Any]]:
        """Remove idle children (under the lock); the actors to stop."""
        refs = []
        for cid in victims:
            c = self._children.pop(cid)
            self.passivations += 1
            if c.ref is not None:
                refs.append(c.ref)
        return refs

    def sweep_once(self, now: float) -> None:
        """One sweep at ``now``: passivate the children idle too long, then abandon
        those stuck too long."""
        idle_before = now - self.idle_seconds
        more = True
        while more:
            with self._lock:
                victims, more = self._idle_victims(idle_before)
                refs = self._pop(victims)
            for idle in refs:
                with contextlib.suppress(pykka.ActorDeadError):
                    idle.stop(block=False)
        if self.handler_timeout is None:
            return
        with self._lock:
            busy = list(self._busy)
            self.swept += len(busy)
        for c in busy:
            link, ref = c.link, c.ref
            if link is None or ref is None:
                continue
            failure = stuck(c.id, link, ref.actor_urn, self.handler_timeout, now)
            if failure is None:
                continue
            with self._lock:  # rare: make sure it is still that actor, not a successor
                if c.link is not link or c.ref is not ref:
                    continue
            abandon_actor(ref)  # never sent to again
            link(failure)

    def _idle_victims(self, idle_before: float) -> tuple[list[str], bool]:
        """Up to :attr:`chunk` children to passivate now; whether more may follow.

        Those over the cap (it is exceeded while every child is busy, and
        :meth:`enlist` trims it only when it starts another), then those idle since
        before ``idle_before``. Walks the LRU order and stops at the first child used
        since, once under the cap: the rest were used later. Only busy children
        (bounded by the work in flight) are stepped over.
        """
        victims: list[str] = []
        excess = len(self._children) - self.max_live
        for cid, c in self._children.items():
            self.swept += 1
            if c.last_used > idle_before and len(victims) >= excess:
                return victims, False
            if c.pending or c.ref is None:
                continue
            victims.append(cid)
            if len(victims) >= self.chunk:
                return victims, True
        return victims, False

    # --- supervision ------------------------------------------------------------------
    def _report(self, failure: Failure) -> None:
        """A child crashed (called on its thread): restart it, end it, or give up."""
        with self._lock:
            child = self._children.get(failure.name)
            if child is None or child.ref is None or child.ref.actor_urn != failure.actor_urn:
                return
            child.ref = None
            child.link = None
            child.last_failure = failure
            self.crashed(child, failure)
            try:
                delay = self.policy.after_exit(child.id, self.restart_type, failure,
                                               self.backoff)
            except SupervisorGaveUp as exc:
                self._give_up(str(exc))
                return
            if delay is None:
                del self._children[child.id]
                self._busy.discard(child)
            else:
                child.restarts += 1
                self.restarts += 1
            self._history.put(child.id, (child.restarts, child.last_failure))
        if delay is None:
            self.dropped(child)
        elif self.backoff is None:
            self._restart(child)
        else:
            self._scheduler.call_later(delay, lambda: self._restart(child))

    def _restart(self, child: DynamicChild) -> None:
        with self._lock:
            if (not self._alive or self._children.get(child.id) is not child
                    or child.ref is not None):
                return
            self._start(child, after_crash=True)
            assert child.ref is not None
            self.resume(child, child.ref)

    def _give_up(self, reason: str) -> None:
        self.gave_up = reason
        log.error("%s; giving up", reason)
        self._alive = False
        threading.Thread(target=self.stop, name=f"{self.name}-give-up", daemon=True).start()

    # --- operator actions ---------------------------------------------------------------
    def passivate(self, child_id: str) -> bool:
        """Stop a live child now; False while it has pending work.

        Raises:
            KeyError: if the child is not live.
        """
        with self._lock:
            c = self._children[child_id]
            if c.pending or c.ref is None:
                return False
            del self._children[child_id]
            self.passivations += 1
            ref = c.ref
        with contextlib.suppress(pykka.ActorDeadError):
            ref.stop(block=False)
        return True

    def restart(self, child_id: str, timeout: float = 5.0) -> bool:
        """Restart a live child (an operator's restart, not counted as a crash).

        The old actor finishes its current message and skips the rest of its
        mailbox; the successor is handed the work the old one left, in order.
        False: it is already restarting.

        Raises:
            KeyError: if the child is not live.
        """
        with self._lock:
            c = self._children[child_id]
            old, link = c.ref, c.link
            if old is None:
                return False
            c.ref = None  # new work waits for the successor
            c.link = None
            c.restarts += 1
            if link is not None:
                link.closing = True
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            old.stop(block=True, timeout=timeout)
        self._restart(c)
        return True

    # --- introspection ------------------------------------------------------------------
    @property
    def live(self) -> int:
        """Live children."""
        with self._lock:
            return len(self._children)

    def ref(self, child_id: str) -> pykka.ActorRef[Any] | None:
        """The running actor of a child, if any."""
        with self._lock:
            c = self._children.get(child_id)
            return c.ref if c else None

    def which_children(self) -> list[dict[str, Any]]:
        """Every live child's row."""
        now = time.time()
        with self._lock:
            children = list(self._children.values())
        return [self.row(c, now) for c in children]

    def describe(self, child_id: str) -> dict[str, Any] | None:
        """One live child's row (as in :meth:`which_children`), found without a scan."""
        with self._lock:
            c = self._children.get(child_id)
        return None if c is None else self.row(c, time.time())

    def remembered(self, child_id: str) -> tuple[int, dict[str, Any] | None] | None:
        """Restarts and last failure of a child that crashed and is no longer live."""
        with self._lock:
            seen = self._history.get(child_id)
        return None if seen is None else (seen[0], failure_row(seen[1]))

    def count_children(self) -> dict[str, int]:
        """OTP's count_children."""
        n = self.live
        return {"specs": n, "active": n, "supervisors": 0, "workers": n}

    def row(self, c: DynamicChild, now: float) -> dict[str, Any]:
        """A child's row in the supervision tree."""
        return {"id": c.id, "restart": self.restart_type.value, "source": c.tag,
                "status": "running" if c.ref is not None else "restarting",
                "mailbox": mailbox_size(c.ref) if c.ref is not None else 0,
                "pending": len(c.pending), "handled": c.handled, "restarts": c.restarts,
                "uptime": round(now - c.started_at, 1),
                "last_failure": failure_row(c.last_failure)}


class _DeadChild:
    """Placeholder for a child whose restart failed (so _on_exit can count it)."""

    urn = ""

    def stop(self, shutdown: Shutdown) -> bool:
        return True

    def abandon(self) -> None:
        return None

    def is_alive(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        return {"kind": "none"}


def supervisor_child(
    name: str,
    specs: list[ChildSpec],
    *,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    intensity: Callable[[], Intensity],
    handler_timeout: float | None = None,
    backoff: Backoff | None = None,
) -> ChildSpec:
    """A child spec for a nested supervisor."""
    def start(report: ReportFailure) -> Child:
        ref = Supervisor.start(name, specs, report, strategy=strategy, intensity=intensity(),
                               handler_timeout=handler_timeout)
        return ActorChild(ref, start_timeout=60, kind="supervisor")
    return ChildSpec(id=name, start=start, restart=Restart.PERMANENT, shutdown=60,
                     backoff=backoff)


def service_child(id_: str, make: Callable[[], Service], *,
                  restart: Restart = Restart.PERMANENT, shutdown: Shutdown = 10.0,
                  backoff: Backoff | None = None) -> ChildSpec:
    """A child spec for a thread-based service."""
    return ChildSpec(id=id_, start=lambda report: ServiceChild(make(), report),
                     restart=restart, shutdown=shutdown, backoff=backoff)


class Application:
    """The root of a supervision tree: starts it, and knows when it gave up.

    Args:
        specs: the root's children.
        strategy: the root's strategy.
        intensity: the root's restart limit.
        handler_timeout: passed to the root supervisor.
    """

    def __init__(self, specs: list[ChildSpec], *, strategy: Strategy = Strategy.ONE_FOR_ONE,
                 intensity: Intensity,
                 handler_timeout: float | None = None) -> None:
        self._specs = specs
        self._strategy = strategy
        self._intensity = intensity
        self._handler_timeout = handler_timeout
        self.root: pykka.ActorRef[Supervisor] | None = None
        self.failed = threading.Event()
        self.failure: Failure | None = None

    def start(self) -> None:
        """Start the tree, first child to last.

        Raises:
            RuntimeError: when a child could not start.
        """
        self.root = Supervisor.start("root", self._specs, self._on_root_failure,
                                     strategy=self._strategy, intensity=self._intensity,
                                     handler_timeout=self._handler_timeout)
        try:
            self.root.ask(Ping(), timeout=120)
        except Exception as exc:
            raise RuntimeError(f"the supervision tree did not start: {exc}") from exc

    def fail(self, name: str, error: BaseException) -> None:
        """End the application from outside the tree (a dependency gave up on)."""
        self._on_root_failure(Failure(name, "dependency", type(error).__name__,
                                      str(error)[:500], "", time.time(), ""))

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
    children: list[dict[str, Any]] = ref.ask(WhichChildren(), timeout=5)  # type: ignore[assignment]
    for c in children:
        if c.get("kind") != "supervisor":
            continue
        sub = ref.ask(RefOf(c["id"]), timeout=5)
        if isinstance(sub, pykka.ActorRef):
            with contextlib.suppress(Exception):
                c["children"] = _expand(sub)
    return children
