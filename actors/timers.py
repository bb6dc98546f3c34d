"""Durable timers: a pending request expires even if every node restarted meanwhile.

A timer is a row in ``timers``. It is written in the *same commit* as the
``ReservationRequested`` that starts it, and deleted in the commit that makes it
moot (the request was accepted, rejected, withdrawn, cancelled or expired), so it
exists exactly while its request is pending: no scan of the event store, nothing to
lose between a commit and a timer.

The :class:`TimerService` fires due timers by putting an ``ExpireReservation``
command in the outbox (the relay publishes it to the commands exchange, routed by
apartment like any producer's command). Its ``message_id`` is deterministic
(``expire:<reservation>:<attempt>``), so a crash between the outbox write and the
attempt count only re-sends the same message, which the apartment's inbox answers
once. A timer still present ``refire_after`` seconds later (its command was lost or
refused as early because of clock skew) fires again as a new attempt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, insert, or_, select, update

from messages import (
    Envelope,
    ExpireReservation,
    Message,
    RequestWithdrawn,
    ReservationAccepted,
    ReservationCancelled,
    ReservationExpired,
    ReservationRejected,
    ReservationRequested,
    spec_of,
)
from rules.clock import Clock, wall_clock
from store import Commit, StoreWriter
from store.tables import outbox_table, timers_table
from store.writer import DeleteRow, Effect, InsertRow
from supervisor import PollingService

log = logging.getLogger(__name__)

EXPIRE = "expire"

_ENDS_PENDING = (ReservationAccepted, ReservationRejected, RequestWithdrawn,
                 ReservationExpired, ReservationCancelled)


def as_utc(moment: datetime) -> datetime:
    """The same instant in UTC (naive times are taken as UTC already)."""
    if moment.utcoffset() is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def expiry_timer_id(reservation_id: str) -> str:
    """The id of a request's expiry timer."""
    return f"{EXPIRE}:{reservation_id}"


def timer_effects(events: Sequence[Envelope]) -> list[Effect]:
    """The timer rows a commit of ``events`` starts or clears. Pure (returns statements)."""
    effects: list[Effect] = []
    for env in events:
        p: Message = env.payload
        if isinstance(p, ReservationRequested) and p.expires_at is not None:
            effects.append(_start(expiry_timer_id(p.reservation_id), env.apartment_id or "",
                                  p.reservation_id, as_utc(p.expires_at)))
        elif isinstance(p, _ENDS_PENDING):
            effects.append(_clear(expiry_timer_id(p.reservation_id)))
    return effects


def _start(timer_id: str, apartment_id: str, rid: str, due: datetime) -> Effect:
    return InsertRow(timers_table, {
        "timer_id": timer_id, "apartment_id": apartment_id, "reservation_id": rid,
        "command": ExpireReservation.__name__, "due_at": due, "attempts": 0,
        "fired_at": None})


def _clear(timer_id: str) -> Effect:
    return DeleteRow(timers_table, timer_id)


def pending_timers(engine: Engine) -> list[dict[str, Any]]:
    """Every timer not yet moot, soonest first (for the operator and tests)."""
    with engine.connect() as conn:
        rows = conn.execute(select(timers_table).order_by(timers_table.c.due_at)).mappings().all()
    return [dict(r) for r in rows]


class TimerService(PollingService):
    """Fires due timers as commands through the outbox; a supervised service.

    Args:
        engine: the store (reads the timers).
        writer: the store's writer (outbox rows and attempt counts, in one commit).
        poll_interval: seconds between looks at the timers table.
        refire_after: seconds before a fired timer that is still there fires again.
        batch: most timers fired per look.
        clock: the current time (UTC); injectable for tests.
    """

    def __init__(self, engine: Engine, writer: StoreWriter, *, poll_interval: float,
                 refire_after: float, batch: int = 100,
                 clock: Clock = wall_clock) -> None:
        super().__init__("timers", poll_interval, dependency=writer.gate)
        self._engine = engine
        self._writer = writer
        self._refire = timedelta(seconds=refire_after)
        self._batch = batch
        self._clock = clock
        self.fired = 0

    def facts(self) -> dict[str, Any]:
        """Failed rounds and timers fired by this node."""
        return {**super().facts(), "fired": self.fired}

    def poll(self) -> bool:
        """Fire what is due; look again at once when a full batch fired."""
        return self.fire_due() >= self._batch

    def fire_due(self) -> int:
        """Fire every due timer once, durably; returns how many this node fired."""
        now = as_utc(self._clock())
        q = (select(timers_table)
             .where(timers_table.c.due_at <= now,
                    or_(timers_table.c.fired_at.is_(None),
                        timers_table.c.fired_at <= now - self._refire))
             .order_by(timers_table.c.due_at).limit(self._batch))
        with self._engine.connect() as conn:
            rows = conn.execute(q).all()
        if not rows:
            return 0
        effects: list[Effect] = []
        claimed: set[str] = set()
        for r in rows:
            attempt = r.attempts + 1
            mid = f"{r.timer_id}:{attempt}"
            env = Envelope(message_id=mid, correlation_id=mid, type=r.command, version=1,
                           apartment_id=r.apartment_id,
                           payload=ExpireReservation(reservation_id=r.reservation_id))
            effects.append(_fire(r.timer_id, env, r.attempts, now, claimed))
        done = threading.Event()
        failure: list[BaseException] = []

        def on_done(exc: BaseException | None) -> None:
            if exc is not None:
                failure.append(exc)
            done.set()

        self._writer.submit(Commit(stream_id=None, expected_version=0, effects=effects,
                                   adds_outbox=True,
                                   on_done=on_done))
        if not done.wait(30):
            raise TimeoutError("timers: the store did not commit in time")
        if failure:
            raise failure[0]
        self.fired += len(claimed)
        return len(claimed)


def _fire(timer_id: str, env: Envelope, seen_attempts: int, now: datetime,
          claimed: set[str]) -> Effect:
    """Claim the timer's next attempt, and only if this node won it, send the command.

    Every node's timer service reads the same due rows; the conditional UPDATE is the
    claim (the database serialises it: a second node finds ``attempts`` moved on and
    updates nothing), so a timer fires once across all nodes.
    """
    spec = spec_of(env.payload)

    def effect(conn: Connection) -> None:
        won = conn.execute(
            update(timers_table)
            .where(timers_table.c.timer_id == timer_id,
                   timers_table.c.attempts == seen_attempts)
            .values(attempts=seen_attempts + 1, fired_at=now)).rowcount
        if won:
            conn.execute(insert(outbox_table).values(
                event_id=env.message_id, type=env.type, exchange=spec.exchange,
                routing_key=env.apartment_id or "", body=env.to_json()))
            claimed.add(timer_id)
    return effect
