"""The entity directory: id -> actor, activation on demand, passivation, a cap.

It is also the dynamic supervisor of the entity actors (OTP's ``simple_one_for_one``):
children are added at run time and restarted as ``transient`` (only after a crash)
with their state rehydrated from the store, subject to a restart intensity and an
optional backoff. Around a crash:

* the messages (tickets) that were queued for the dead actor are told to its
  successor, in their original order (they stay unsettled meanwhile, so nothing is
  lost and no redelivery count is spent on them);
* the message that crashed it is retried up to ``poison_retries`` times, then
  dead-lettered as poison with a traceback summary, and its producer gets an error
  reply;
* an actor busy longer than ``handler_timeout`` in one message is abandoned (marked
  dead, never sent to again) and treated as crashed on that message;
* past the intensity, the directory stops every entity, requeues their unsettled
  messages and reports itself dead, so its parent decides.

A dict keyed by entity id (pykka's registry is a linear list) in LRU order: beyond
``max_live`` actors, the least recently used idle ones are passivated, and idle ones
are passivated after ``idle_seconds``. An actor with unsettled tickets is never
passivated, so a re-activation can never read the store behind its predecessor.

With every actor busy the cap is exceeded rather than a message held back; the
sweeper brings the directory back under it once they are idle.

The sweeper shares the dispatch lock, so what it does under it must not grow with
the live actors (10 000 by default): eviction walks the LRU order only up to the
first recently used entry (once under the cap), a bounded chunk at a time; stuck
detection looks only at the busy entries (those with unsettled tickets, kept in a set
on dispatch and settle), copied under the lock and checked outside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from actors.apartment import ApartmentActor
from actors.base import EntityActor, EntityContext, Handle
from actors.booking import ReservationActor
from actors.outcome import Ticket
from actors.poison import PoisonCounter
from config.lru import BoundedLRU
from messages import Envelope
from messages.replies import POISON
from supervisor import (
    Backoff,
    Failure,
    Intensity,
    Link,
    Scheduler,
    ThreadScheduler,
    abandon_actor,
    mailbox_size,
)

log = logging.getLogger(__name__)

KINDS: dict[str, type[EntityActor[Any]]] = {
    "apartment": ApartmentActor,
    "reservation": ReservationActor,
}

SWEEP_CHUNK = 256  # idle entries passivated per hold of the lock by the sweeper


@dataclass(eq=False)  # hashed by identity: the busy set holds entries, not ids
class _Entry:
    kind: str
    key: str
    ref: pykka.ActorRef[Any] | None = None
    link: Link | None = None
    unsettled: dict[Ticket, Envelope] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    restarts: int = 0
    handled: int = 0
    last_failure: Failure | None = None
    source: str | None = None  # the queue its messages come from (a command partition)


class Directory:
    """Finds, activates, passivates and restarts entity actors.

    Args:
        ctx: what entity actors share.
        max_live: the cap on live entity actors.
        idle_seconds: passivate actors idle this long.
        intensity: restart limit before the directory gives up.
        backoff: delay before an entity restarts (None: at once).
        poison_retries: how often a message that crashed its actor is retried.
        handler_timeout: abandon an actor stuck this long in one message (None: never).
        scheduler: runs delayed restarts.
        rng: jitter source for the backoff.
    """

    name = "entities"

    def __init__(self, ctx: EntityContext, *, max_live: int = 10_000,
                 idle_seconds: float = 300.0, intensity: Intensity | None = None,
                 backoff: Backoff | None = None, poison_retries: int = 3,
                 handler_timeout: float | None = 30.0, scheduler: Scheduler | None = None,
                 rng: random.Random | None = None) -> None:
        # Its own copy of the context: the actors it starts report to this directory.
        self.ctx = dataclasses.replace(ctx, on_vacant=self._vacant)
        self.max_live = max_live
        self.idle_seconds = idle_seconds
        self.intensity = intensity or Intensity(max_restarts=100, period=5.0)
        self.backoff = backoff
        self.poison_retries = poison_retries
        self.handler_timeout = handler_timeout
        self._scheduler = scheduler or ThreadScheduler()
        self._rng = rng or random.Random()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._busy: set[_Entry] = set()  # live entries with unsettled tickets
        self._lock = threading.RLock()
        self.swept = 0  # entries the sweeper looked at under the lock (tests read it)
        self._poison = PoisonCounter(poison_retries)
        self._history: BoundedLRU[str, tuple[int, Failure | None]] = BoundedLRU(10_000)
        self._alive = False
        self._stop = threading.Event()
        self.activations = 0
        self.passivations = 0
        self.restarts = 0
        self.poisoned = 0
        self.released = 0  # entities stopped because their queue went to another node
        self.gave_up: str | None = None

    # --- service ------------------------------------------------------------------
    def start(self, *, sweeper: bool = True) -> None:
        """Start the sweeper; entities start on demand.

        Without the sweeper thread (``sweeper=False``) nothing is passivated or
        abandoned but by a caller of :meth:`sweep_once`: tests sweep at a time they set.
        """
        self._alive = True
        self.gave_up = None
        self._stop.clear()
        if sweeper:
            threading.Thread(target=self._sweep, name="directory-sweeper",
                             daemon=True).start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every entity; what they had not handled is requeued."""
        self._alive = False
        self._stop.set()
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            self._busy.clear()
        _stop_all(entries, timeout)

    def release(self, source: str, timeout: float | None = 10.0) -> int:
        """Stop every entity fed from ``source``: this node no longer owns that queue.

        A node that gives a command partition back must not keep its actors: another
        node commits to their streams meanwhile, and memory kept across that time is
        stale when the partition comes back. Their unhandled messages are requeued
        (the broker redelivers them to the queue's next consumer); commits already
        submitted finish in the writer, and ``timeout`` (None: do not wait) bounds
        the wait for the actors to stop and for those commits.

        Returns:
            How many live entities were released.
        """
        with self._lock:
            victims = [(eid, e) for eid, e in self._entries.items() if e.source == source]
            for eid, e in victims:
                del self._entries[eid]
                self._busy.discard(e)
            self.released += len(victims)
        if victims:
            log.debug("released %d entities of %s", len(victims), source)
            _stop_all([e for _eid, e in victims], timeout)
        if victims and timeout is not None:
            with contextlib.suppress(Exception):
                self.ctx.writer.barrier(timeout)
        return len(victims)

    def is_alive(self) -> bool:
        """False after ``stop`` or after giving up."""
        return self._alive

    # --- routing ------------------------------------------------------------------
    def dispatch(self, kind: str, key: str, envelope: Envelope, ticket: Ticket,
                 source: str | None = None) -> None:
        """Tell the entity ``kind:key`` to handle a message, activating it if needed.

        ``source`` names the queue the message came from, so :meth:`release` finds the
        entities of a queue this node gives up.

        Raises:
            RuntimeError: when the directory is not running (the caller requeues).
        """
        eid = f"{kind}:{key}"
        with self._lock:
            if not self._alive:
                raise RuntimeError("the entity directory is not running")
            entry = self._entries.get(eid)
            new = entry is None
            if entry is None:
                entry = _Entry(kind=kind, key=key)
                restarts, last = self._history.get(eid, (0, None))
                entry.restarts, entry.last_failure = restarts, last
                self._entries[eid] = entry
                self._start_actor(eid, entry, after_crash=False)
            else:
                self._entries.move_to_end(eid)
            entry.unsettled[ticket] = envelope
            if source is not None:
                entry.source = source
            self._busy.add(entry)
            entry.last_used = time.monotonic()
            entry.handled += 1
            ref = entry.ref
            # Only now, with its ticket held: were every other entry busy, an eviction
            # before would have taken this new one, and its message with it.
            if new and len(self._entries) > self.max_live:
                self._evict(len(self._entries) - self.max_live)
        ticket.on_settled(self._settler(entry))
        if ref is None:
            return  # restarting: told when the successor starts
        # A dead actor here has crashed: its report re-tells what it left unsettled.
        with contextlib.suppress(pykka.ActorDeadError):
            ref.tell(Handle(envelope, ticket))

    def _start_actor(self, eid: str, entry: _Entry, *, after_crash: bool) -> None:
        cls = KINDS[entry.kind]
        entry.link = Link(self._report)
        entry.link.after_crash = after_crash
        entry.ref = cls.start(eid, entry.key, self.ctx, entry.link)
        entry.started_at = time.time()
        self.activations += 1

    def _evict(self, n: int) -> None:
        """Passivate up to ``n`` idle entries, least recently used first (under the lock)."""
        victims: list[str] = []
        for eid, e in self._entries.items():
            if len(victims) >= n:
                break
            if not (e.unsettled or e.ref is None):
                victims.append(eid)
        for ref in self._pop(victims):
            with contextlib.suppress(pykka.ActorDeadError):
                ref.stop(block=False)
        if len(self._entries) > self.max_live:
            log.debug("directory over its cap (%d live, all busy)", len(self._entries))

    def _pop(self, victims: list[str]) -> list[pykka.ActorRef[Any]]:
        """Remove idle entries (under the lock); the actors to stop."""
        refs = []
        for eid in victims:
            e = self._entries.pop(eid)
            self.passivations += 1
            if e.ref is not None:
                refs.append(e.ref)
        return refs

    def _sweep(self) -> None:
        interval = max(0.05, min(self.idle_seconds / 4, 1.0))
        while not self._stop.wait(interval):
            self.sweep_once(time.monotonic())

    def sweep_once(self, now: float) -> None:
        """One sweep at ``now``: passivate the entries idle too long, then abandon the
        actors stuck too long."""
        idle_before = now - self.idle_seconds
        more = True
        while more:
            with self._lock:
                victims, more = self._idle_victims(idle_before)
                refs = self._pop(victims)
            for idle in refs:
                with contextlib.suppress(pykka.ActorDeadError):
                    idle.stop(block=False)
        limit = self.handler_timeout
        if limit is None:
            return
        with self._lock:
            busy = list(self._busy)
            self.swept += len(busy)
        for e in busy:
            link, ref = e.link, e.ref
            if link is None or ref is None or link.busy_for(now) <= limit:
                continue
            with self._lock:  # rare: make sure it is still that actor, not a successor
                if e.link is not link or e.ref is not ref:
                    continue
            busy_s = link.busy_for(now)
            abandon_actor(ref)  # never sent to again
            link(Failure(f"{e.kind}:{e.key}", "receive", "Stuck",
                         f"busy {busy_s:.1f}s in one message (limit {limit}s)",
                         "", time.time(), ref.actor_urn, cause=link.current))

    def _idle_victims(self, idle_before: float) -> tuple[list[str], bool]:
        """Up to :data:`SWEEP_CHUNK` entries to passivate now; whether more may follow.

        Those over the cap (it is exceeded while every actor is busy, and dispatch
        trims it only when it starts another), then those idle since before
        ``idle_before``. Walks the LRU order and stops at the first entry used since
        once under the cap: the rest were used later. Only busy entries (bounded by
        what is in flight) are stepped over.
        """
        victims: list[str] = []
        excess = len(self._entries) - self.max_live
        for eid, e in self._entries.items():
            self.swept += 1
            if e.last_used > idle_before and len(victims) >= excess:
                return victims, False
            if e.unsettled or e.ref is None:
                continue
            victims.append(eid)
            if len(victims) >= SWEEP_CHUNK:
                return victims, True
        return victims, False

    def _settler(self, entry: _Entry) -> Callable[[Ticket], None]:
        def settled(t: Ticket) -> None:
            with self._lock:
                entry.unsettled.pop(t, None)
                if not entry.unsettled:
                    self._busy.discard(entry)
        return settled

    # --- supervision --------------------------------------------------------------
    def _report(self, failure: Failure) -> None:
        """An entity crashed (called on its thread): poison check, then restart or give up."""
        with self._lock:
            entry = self._entries.get(failure.name)
            if entry is None or entry.ref is None or entry.ref.actor_urn != failure.actor_urn:
                return
            log.warning("entity %s crashed in %s: %s: %s", failure.name, failure.phase,
                        failure.error_type, failure.message)
            log.debug("entity %s crashed here:\n%s", failure.name, failure.traceback)
            entry.ref = None
            entry.link = None
            entry.last_failure = failure
            entry.restarts += 1
            self.restarts += 1
            self._remember(failure.name, entry)
            cause = failure.cause
            if isinstance(cause, Handle) and not cause.ticket.submitted:
                self._count_attempt(cause, failure)
            if not self.intensity.allow():
                self._give_up(failure)
                return
            delay = 0.0 if self.backoff is None else self.backoff.delay(
                self.intensity.recent, self._rng)
        self._scheduler.call_later(delay, lambda: self._restart(failure.name, entry))

    def _count_attempt(self, cause: Handle, failure: Failure) -> None:
        letter = self._poison.attempt(cause.envelope, failure)
        if letter is not None:
            self.poisoned += 1
            log.error("dead-lettering poison message %s (%s)", cause.envelope.message_id,
                      cause.envelope.type)
            cause.ticket.refuse(POISON, *letter)

    def _restart(self, eid: str, entry: _Entry) -> None:
        with self._lock:
            if not self._alive or self._entries.get(eid) is not entry or entry.ref is not None:
                return
            self._start_actor(eid, entry, after_crash=True)
            ref = entry.ref
            assert ref is not None
            for t, env in list(entry.unsettled.items()):
                if not t.submitted and not t.settled:
                    with contextlib.suppress(pykka.ActorDeadError):
                        ref.tell(Handle(env, t))

    def _give_up(self, failure: Failure) -> None:
        self.gave_up = (f"more than {self.intensity.max_restarts} entity restarts in "
                        f"{self.intensity.period}s; last {failure.name}: {failure.error_type}")
        log.error("entities: %s; giving up", self.gave_up)
        self._alive = False
        threading.Thread(target=self.stop, name="directory-give-up", daemon=True).start()

    def _remember(self, eid: str, entry: _Entry) -> None:
        self._history.put(eid, (entry.restarts, entry.last_failure))

    # --- operator actions -----------------------------------------------------------
    def passivate(self, eid: str) -> bool:
        """Stop a live entity now (``ctl stop``); False while it has unsettled work.

        Raises:
            KeyError: if the entity is not live.
        """
        with self._lock:
            e = self._entries[eid]
            if e.unsettled or e.ref is None:
                return False
            del self._entries[eid]
            self.passivations += 1
            ref = e.ref
        with contextlib.suppress(pykka.ActorDeadError):
            ref.stop(block=False)
        return True

    def _vacant(self, eid: str) -> None:
        """An entity with nothing in memory answered: passivate it, if it is idle.

        Called on the writer's thread after its tickets were settled. The same check
        as any passivation keeps it safe: an entry with unsettled tickets (another
        command arrived meanwhile) or restarting is left alone.
        """
        with contextlib.suppress(KeyError):
            if self.passivate(eid):
                log.debug("passivated %s: nothing to keep", eid)

    def restart(self, eid: str, timeout: float = 5.0) -> bool:
        """Restart a live entity from the store (``ctl restart``); not counted as a crash.

        The old actor finishes its current message and skips the rest of its mailbox;
        the successor rehydrates after the writer flushed what the old one submitted,
        and is told the messages the old one left, in order.

        Raises:
            KeyError: if the entity is not live.
        """
        with self._lock:
            e = self._entries[eid]
            old, link = e.ref, e.link
            if old is None:
                return False  # already restarting
            e.ref = None  # new messages wait for the successor
            e.link = None
            e.restarts += 1
            if link is not None:
                link.closing = True
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            old.stop(block=True, timeout=timeout)
        self._restart(eid, e)
        return True

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

    def which_children(self) -> list[dict[str, Any]]:
        """Every live entity: status, mailbox, unsettled, handled, restarts, last failure."""
        now = time.time()
        with self._lock:
            items = list(self._entries.items())
        return [_row(eid, e, now) for eid, e in items]

    def describe(self, eid: str) -> dict[str, Any] | None:
        """One live entity's row (as in :meth:`which_children`), found without a scan."""
        with self._lock:
            e = self._entries.get(eid)
        return None if e is None else _row(eid, e, time.time())

    def remembered(self, eid: str) -> tuple[int, dict[str, Any] | None] | None:
        """Restarts and last failure of an entity that crashed and is no longer live.

        The directory keeps them (for the last 10 000 entities that crashed) so a
        successor starts with them; the operator can read them for a passivated one.
        """
        with self._lock:
            seen = self._history.get(eid)
        return None if seen is None else (seen[0], _failure_row(seen[1]))

    def count_children(self) -> dict[str, int]:
        """OTP's count_children for the dynamic supervisor."""
        n = self.live
        return {"specs": n, "active": n, "supervisors": 0, "workers": n}


def _stop_all(entries: list[_Entry], timeout: float | None) -> None:
    """Stop the entries' actors all at once; requeue what they had not submitted.

    Each actor finishes its current message and skips the rest of its mailbox.
    """
    for e in entries:
        if e.link is not None:
            e.link.closing = True
        if e.ref is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                e.ref.stop(block=False)
    deadline = None if timeout is None else time.monotonic() + timeout
    for e in entries:
        if e.ref is not None and deadline is not None:
            e.ref.actor_stopped.wait(max(0.0, deadline - time.monotonic()))
        for t in list(e.unsettled):
            if not t.submitted:
                t.requeue()


def _failure_row(lf: Failure | None) -> dict[str, Any] | None:
    return None if lf is None else {"type": lf.error_type, "message": lf.message,
                                    "traceback": lf.traceback, "at": lf.at}


def _row(eid: str, e: _Entry, now: float) -> dict[str, Any]:
    return {"id": eid, "kind": e.kind, "restart": "transient", "source": e.source,
            "status": "running" if e.ref is not None else "restarting",
            "mailbox": mailbox_size(e.ref) if e.ref is not None else 0,
            "pending": len(e.unsettled), "handled": e.handled, "restarts": e.restarts,
            "uptime": round(now - e.started_at, 1), "last_failure": _failure_row(e.last_failure)}
