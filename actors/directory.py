"""The entity directory: id -> actor, activation on demand, passivation, a cap.

It is also the dynamic supervisor of the entity actors (OTP's ``simple_one_for_one``):
children are added at run time, restarted as ``transient`` (only after a crash) with
their state rehydrated from the store, and counted against a restart intensity; when
that is exceeded the directory stops every entity and reports itself dead, so its
parent decides.

A dict keyed by entity id (pykka's registry is a linear list) with LRU order: when
more than ``max_live`` actors are live, the least recently used idle ones are
passivated; idle actors are passivated after ``idle_seconds`` too. An actor with
unsettled deliveries is never passivated, so a re-activation can never read the
store behind its predecessor.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from actors.apartment import ApartmentActor
from actors.base import EntityActor, EntityContext, Failure, Handle, mailbox_size
from actors.booking import ReservationActor
from broker.base import Delivery
from messages import Envelope

log = logging.getLogger(__name__)

KINDS: dict[str, type[EntityActor[Any]]] = {
    "apartment": ApartmentActor,
    "reservation": ReservationActor,
}


@dataclass
class _Entry:
    ref: pykka.ActorRef[Any]
    kind: str
    deliveries: set[Delivery] = field(default_factory=set)
    last_used: float = field(default_factory=time.monotonic)
    restarts: int = 0
    handled: int = 0
    last_failure: Failure | None = None


class Directory:
    """Finds, activates, passivates and restarts entity actors.

    Args:
        ctx: what entity actors share.
        max_live: the cap on live entity actors.
        idle_seconds: passivate actors idle this long.
        max_restarts: restart intensity: at most this many ...
        period: ... within this many seconds.
    """

    name = "entities"

    def __init__(self, ctx: EntityContext, *, max_live: int = 10_000,
                 idle_seconds: float = 300.0, max_restarts: int = 10,
                 period: float = 5.0) -> None:
        self.ctx = ctx
        self.max_live = max_live
        self.idle_seconds = idle_seconds
        self.max_restarts = max_restarts
        self.period = period
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self._restart_times: list[float] = []
        self._history: dict[str, tuple[int, Failure | None]] = {}
        self._alive = False
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.activations = 0
        self.passivations = 0
        self.restarts = 0

    # --- service ------------------------------------------------------------------
    def start(self) -> None:
        """Start the idle sweeper; entities start on demand."""
        self._alive = True
        self._stop.clear()
        self._sweeper = threading.Thread(target=self._sweep, name="directory-sweeper",
                                         daemon=True)
        self._sweeper.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every entity actor (their unsettled deliveries are redelivered)."""
        self._alive = False
        self._stop.set()
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        deadline = time.monotonic() + timeout
        for e in entries:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                e.ref.stop(block=True, timeout=max(0.1, deadline - time.monotonic()))

    def is_alive(self) -> bool:
        """False after ``stop`` or after giving up."""
        return self._alive

    # --- routing ------------------------------------------------------------------
    def dispatch(self, kind: str, key: str, envelope: Envelope, delivery: Delivery) -> None:
        """Tell the entity ``kind:key`` to handle a delivery, activating it if needed.

        Raises:
            RuntimeError: when the directory is not running (the caller requeues).
        """
        eid = f"{kind}:{key}"
        for _attempt in range(3):
            with self._lock:
                if not self._alive:
                    raise RuntimeError("the entity directory is not running")
                entry = self._entries.get(eid)
                if entry is None:
                    entry = self._activate(kind, key, eid)
                else:
                    self._entries.move_to_end(eid)
                entry.deliveries.add(delivery)
                delivery.on_settled(self._settler(eid))
                entry.last_used = time.monotonic()
                entry.handled += 1
                ref = entry.ref
            try:
                ref.tell(Handle(envelope, delivery))
                return
            except pykka.ActorDeadError:
                with self._lock:
                    if self._entries.get(eid) is entry:
                        del self._entries[eid]
                    entry.deliveries.discard(delivery)
        raise RuntimeError(f"could not reach {eid}")

    def _activate(self, kind: str, key: str, eid: str) -> _Entry:
        cls = KINDS[kind]
        ref = cls.start(eid, key, self.ctx, self._report)
        restarts, last = self._history.get(eid, (0, None))
        entry = _Entry(ref=ref, kind=kind, restarts=restarts, last_failure=last)
        self._entries[eid] = entry
        self.activations += 1
        if len(self._entries) > self.max_live:
            self._evict(len(self._entries) - self.max_live)
        return entry

    def _evict(self, n: int, *, idle_before: float | None = None) -> None:
        victims: list[str] = []
        for eid, e in self._entries.items():
            if len(victims) >= n:
                break
            if e.deliveries:
                continue
            if idle_before is not None and e.last_used > idle_before:
                break  # LRU order: the rest were used later
            victims.append(eid)
        for eid in victims:
            e = self._entries.pop(eid)
            self.passivations += 1
            with contextlib.suppress(pykka.ActorDeadError):
                e.ref.tell(pykka.messages._ActorStop())
        if len(self._entries) > self.max_live:
            log.debug("directory over its cap (%d live, all busy)", len(self._entries))

    def _sweep(self) -> None:
        interval = max(0.05, min(self.idle_seconds / 4, 5.0))
        while not self._stop.wait(interval):
            with self._lock:
                self._evict(len(self._entries),
                            idle_before=time.monotonic() - self.idle_seconds)

    def _settler(self, eid: str) -> Callable[[Delivery], None]:
        return lambda d: self._settled(eid, d)

    def _settled(self, eid: str, delivery: Delivery) -> None:
        with self._lock:
            entry = self._entries.get(eid)
            if entry is not None:
                entry.deliveries.discard(delivery)

    # --- supervision --------------------------------------------------------------
    def _report(self, failure: Failure) -> None:
        """An entity crashed (called on its thread): requeue, restart or give up."""
        with self._lock:
            entry = self._entries.get(failure.name)
            if entry is None or entry.ref.actor_urn != failure.actor_urn:
                return
            del self._entries[failure.name]
            log.warning("entity %s crashed in %s: %s: %s", failure.name, failure.phase,
                        failure.error_type, failure.message)
            for d in list(entry.deliveries):
                if not d.submitted:
                    d.requeue()
            self.restarts += 1
            self._history[failure.name] = (entry.restarts + 1, failure)
            if len(self._history) > 1000:
                self._history.pop(next(iter(self._history)))
            now = time.monotonic()
            self._restart_times = [t for t in self._restart_times if now - t <= self.period]
            self._restart_times.append(now)
            if len(self._restart_times) > self.max_restarts:
                log.error("entities: more than %d restarts in %.1fs; giving up",
                          self.max_restarts, self.period)
                threading.Thread(target=self.stop, name="directory-give-up", daemon=True).start()
                self._alive = False
                return
            if self._alive:
                kind, key = failure.name.split(":", 1)
                self._activate(kind, key, failure.name)

    # --- introspection ------------------------------------------------------------
    @property
    def live(self) -> int:
        """Live entity actors."""
        with self._lock:
            return len(self._entries)

    def ref(self, eid: str) -> pykka.ActorRef[Any] | None:
        """The live actor of an entity, if any."""
        with self._lock:
            e = self._entries.get(eid)
            return e.ref if e else None

    def actors(self) -> list[dict[str, Any]]:
        """Every live entity: id, kind, mailbox, unsettled deliveries, handled, restarts."""
        with self._lock:
            items = list(self._entries.items())
        return [{"id": eid, "kind": e.kind, "mailbox": mailbox_size(e.ref),
                 "pending": len(e.deliveries), "handled": e.handled, "restarts": e.restarts,
                 "last_failure": None if e.last_failure is None else
                 f"{e.last_failure.error_type}: {e.last_failure.message}"}
                for eid, e in items]
