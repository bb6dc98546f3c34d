"""The base of every service that owns a thread, and what it reports when it crashes.

It sits in the lowest layer, with the standard library only, so that every layer,
the store's writer included, builds its threads on it; the supervision runtime
(``supervisor.py``) watches them through it and re-exports it.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """What a supervisor learns about a crash.

    Attributes:
        name: the child's id (e.g. ``apartment:a1``).
        phase: ``start`` (in ``on_start``) or ``receive`` (in a tell or ask handler).
        error_type: the exception class name.
        message: ``str()`` of the exception.
        traceback: the formatted traceback, trimmed.
        at: ``time.time()`` of the crash.
        actor_urn: which incarnation crashed.
    """

    name: str
    phase: str
    error_type: str
    message: str
    traceback: str
    at: float
    actor_urn: str
    cause: Any = field(default=None, compare=False, repr=False)


ReportFailure = Callable[[Failure], None]


@dataclass(frozen=True)
class Health:
    """What the supervision tree shows of a service, besides its status and restarts.

    Attributes:
        name: the service's name.
        alive: whether its thread runs.
        error: how its thread last crashed, as ``Type: message`` (None: it never did).
        facts: the service's own, e.g. ``connected``, ``reconnects``, ``failures``,
            ``backlog`` (plain values: the tree is sent to operators as JSON).
    """

    name: str
    alive: bool
    error: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The service's facts, then its name, liveness and last error, as one flat row."""
        return {**self.facts, "name": self.name, "alive": self.alive, "error": self.error}


class ThreadService:
    """A service that owns one thread: the start, bounded stop and liveness of them all.

    A subclass implements :meth:`run`, the thread's body, which returns once
    :meth:`stopping` is true; waiting with :meth:`pause` ends at once on a stop, and a
    body that waits on anything else is woken by :meth:`interrupt`. :meth:`facts` adds
    the service's own facts to :meth:`health`.

    A body that raises has crashed: the error is logged and kept in :attr:`last_crash`
    before the thread ends, so whoever finds the service dead (the supervisor's
    liveness check) can also tell why; the callback given to :meth:`start` hears of it
    at once. Each start gives its thread a stop event of its own: a thread that
    outlived a stop's timeout still sees itself stopped when the service is started
    again, rather than running on beside its successor.

    Args:
        name: the service's name and, unless ``thread_name`` is given, its thread's.
        thread_name: the thread's name, where it differs (it groups CPU by thread).
    """

    def __init__(self, name: str, *, thread_name: str | None = None) -> None:
        self.name = name
        self.thread_name = thread_name or name
        self.last_crash: Failure | None = None  # the last crash of the body, kept across starts
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()  # the newest thread's; each thread keeps its own
        self._own = threading.local()  # on a service thread: ``stop``, that thread's event

    # --- hooks ----------------------------------------------------------------------
    def run(self) -> None:
        """Hook: the thread's body; return once :meth:`stopping` is true."""
        raise NotImplementedError

    def interrupt(self) -> None:
        """Hook: wake a body that waits on something other than :meth:`pause`.

        Called on the stopping thread, after the stop was asked for; it must not block.
        """

    def facts(self) -> dict[str, Any]:
        """Hook: the service's own facts for :meth:`health` (cheap: read on every look)."""
        return {}

    # --- lifecycle ------------------------------------------------------------------
    def start(self, on_crash: ReportFailure | None = None) -> None:
        """Start the thread.

        Args:
            on_crash: called on the thread with the :class:`Failure` if the body raises.
        """
        stop = threading.Event()
        self._stop = stop
        self._thread = threading.Thread(target=self._main, args=(stop, on_crash),
                                        name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the thread to stop and wait for it, at most ``timeout`` seconds.

        Returns:
            True once it has ended (or never ran); False while it still runs: it is
            left to end on its own (a service stopping itself is never waited for).
        """
        self._stop.set()
        self.interrupt()
        thread = self._thread
        if thread is None:
            return True
        if thread is not threading.current_thread():
            thread.join(max(0.0, timeout))
            if thread.is_alive() and timeout > 0:
                log.warning("%s did not stop within %.1fs; left to end on its own",
                            self.name, timeout)
        return not thread.is_alive()

    def is_alive(self) -> bool:
        """True while the thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def health(self) -> Health:
        """Name, liveness, last crash and the service's own facts."""
        crash = self.last_crash
        return Health(self.name, self.is_alive(),
                      None if crash is None else f"{crash.error_type}: {crash.message}",
                      self.facts())

    # --- for the body ---------------------------------------------------------------
    def stopping(self) -> bool:
        """True once a stop was asked for (on the service's thread: that thread's stop)."""
        return self._event().is_set()

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds``, or less when a stop is asked for; True when it was."""
        return self._event().wait(seconds)

    def on_thread(self) -> bool:
        """True when called on the service's current thread."""
        return threading.current_thread() is self._thread

    def _event(self) -> threading.Event:
        own: threading.Event | None = getattr(self._own, "stop", None)
        return self._stop if own is None else own

    def _main(self, stop: threading.Event, on_crash: ReportFailure | None) -> None:
        self._own.stop = stop
        try:
            self.run()
        except BaseException as exc:  # recorded below; the thread then ends, dead
            self.last_crash = Failure(
                name=self.name, phase="run", error_type=type(exc).__name__,
                message=str(exc)[:500], traceback="".join(traceback.format_exception(exc))[-4000:],
                at=time.time(), actor_urn=f"service:{self.name}")
            log.error("%s: its thread crashed", self.name, exc_info=exc)
            if on_crash is not None:
                try:
                    on_crash(self.last_crash)
                except Exception:
                    log.exception("reporting the crash of %s failed", self.name)
