"""Reads a drill's history, its store and its dead letters; counts what went wrong.

Each count is a promise of docs/guarantees.md that the drill tries to break:

* ``lost``: a command the broker confirmed that never took effect.
* ``duplicated``: a command that took effect more than once (its first event,
  identified by type and reservation, recorded twice).
* ``unexpected_replies``: a reply that disagrees with the one stored in the inbox
  (a re-send must be answered from the inbox, identically).
* ``double_charges``: more than one charge, or more than one ``PaymentSucceeded``,
  for one reservation; ``charged_but_failed``: the gateway kept the money of a
  reservation recorded as ``PaymentFailed``.
* ``double_notifications``: one person told twice of one event (stored rows or
  ``NotificationSent`` events).
* ``overlaps``: two accepted reservations sharing a night on one apartment, at any
  point of the apartment's history (folded with ``actors.apartment.evolve``).
* ``events_undelivered``: an event a consumer never acted on (a request without
  its owner's notification, an acceptance without a payment outcome).
* ``poison_missing`` / ``poison_wrong_reason``: a confirmed malformed message that is
  not in the dead-letter queue, or is there without the expected reason header.
* how each booking ended, and whether stored states match their streams:
  ``failed_but_held``, ``accepted_unresolved``, ``cancelled_paid_without_refund``,
  ``refunds_over_charge``, ``replay_mismatch`` (see :mod:`tests.faults.lifecycle`).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
from pika.exceptions import AMQPError
from sqlalchemy import create_engine, func, select

from broker.base import DEAD_ID_HEADER, REASON_HEADER
from broker.rabbitmq import connection_parameters
from messages import Envelope
from rules.apartment import Apartment, StayStatus, evolve
from store.tables import (
    dead_letters_table,
    events_table,
    gateway_charges_table,
    inbox_table,
    notifications_table,
    outbox_table,
)
from tests.faults.lifecycle import (
    LIFECYCLE_MUST_BE_ZERO,
    Replayed,
    evidence,
    lifecycle_counts,
    read_tables,
    replay_counts,
)
from tests.faults.workload import History

MUST_BE_ZERO = ("lost", "duplicated", "unexpected_replies", "double_charges",
                "charged_but_failed", "double_notifications", "overlaps",
                "events_undelivered", "outbox_backlog", "poison_missing",
                "poison_wrong_reason", "valid_dead_lettered", *LIFECYCLE_MUST_BE_ZERO)


@dataclass(frozen=True)
class DeadLetter:
    """One message read from the dead-letter queue."""

    message_id: str | None
    reason: str | None
    death_reason: str | None
    body: bytes


def drain_dead_letters(url: str, queue: str, db: Path | str,
                       limit: int = 100_000) -> list[DeadLetter]:
    """Every dead letter: those the nodes recorded in the store's book, and those still
    in the queue (a node killed before it recorded them), each once."""
    out: list[DeadLetter] = []
    engine = create_engine(store_url(db))
    try:
        with engine.connect() as c:
            recorded = list(c.execute(select(dead_letters_table.c.letter_key,
                                              dead_letters_table.c.message_id,
                                              dead_letters_table.c.headers,
                                              dead_letters_table.c.body)))
    finally:
        engine.dispose()
    keys = set()
    for key, mid, headers, body in recorded:
        keys.add(key)
        h = json.loads(headers)
        out.append(DeadLetter(mid, h.get(REASON_HEADER), h.get("x-first-death-reason"),
                              bytes(body)))
    conn = pika.BlockingConnection(connection_parameters(url))
    try:
        ch = conn.channel()
        while len(out) < limit:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            headers = dict(props.headers or {})
            if _text(headers.get(DEAD_ID_HEADER)) in keys:
                continue  # recorded; the node died before its ack
            out.append(DeadLetter(props.message_id, _text(headers.get(REASON_HEADER)),
                                  _text(headers.get("x-first-death-reason")), body))
    finally:
        with contextlib.suppress(AMQPError, OSError):
            conn.close()
    return out


def _text(v: Any) -> str | None:
    return v.decode(errors="replace") if isinstance(v, bytes) else v


def store_url(db: Path | str) -> str:
    """A SQLAlchemy URL for a store given as a SQLite file or as a URL already."""
    return db if isinstance(db, str) else f"sqlite:///{db}"


def stored_events(db: Path | str) -> list[tuple[str, int, Envelope]]:
    """Every event in the store, in store order: (stream, version, envelope)."""
    engine = create_engine(store_url(db))
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(events_table.c.stream_id, events_table.c.version,
                                       events_table.c.body)
                                .order_by(events_table.c.position)).all()
    finally:
        engine.dispose()
    return [(r.stream_id, r.version, Envelope.from_json(r.body, max_bytes=1 << 24))
            for r in rows]


def count_overlaps(events: list[tuple[str, int, Envelope]]) -> int:
    """Pairs of accepted stays sharing a night, checked at every acceptance.

    Every apartment stream is folded with the apartment's own ``evolve``, in store
    order, so an overlap that a later cancellation hid is still counted.
    """
    states: dict[str, Apartment] = {}
    n = 0
    for sid, _v, env in events:
        if not sid.startswith("apartment:"):
            continue
        apt = sid.split(":", 1)[1]
        state = evolve(states.get(apt) or Apartment(apartment_id=apt), env.payload)
        states[apt] = state
        if env.type == "ReservationAccepted":
            mine = state.stays[env.payload.reservation_id]  # type: ignore[attr-defined]
            n += sum(1 for s in state.stays.values()
                     if s.reservation_id != mine.reservation_id
                     and s.status is StayStatus.ACCEPTED and s.overlaps(mine.start, mine.end))
    return n


def lifecycles_open(db: Path | str) -> int:
    """Accepted bookings not yet at an end, and cancellations owing a refund outcome:
    a drained system has none, unless a lifecycle is stuck for good."""
    engine = create_engine(store_url(db))
    try:
        with engine.connect() as conn:
            tables = read_tables(conn)
    finally:
        engine.dispose()
    counts = lifecycle_counts(Replayed.of(stored_events(db)), tables)
    return counts["accepted_unresolved"] + counts["cancelled_paid_without_refund"]


def check(db: Path | str, history: History, dead: list[DeadLetter]) -> dict[str, Any]:
    """Every count the drill reports (see the module docstring)."""
    events = stored_events(db)
    engine = create_engine(store_url(db))
    try:
        with engine.connect() as conn:
            tables = read_tables(conn)
            inbox = {r.message_id: r.reply for r in conn.execute(
                select(inbox_table.c.message_id, inbox_table.c.reply)
                .where(inbox_table.c.consumer == "intake"))}
            charges = conn.execute(select(gateway_charges_table.c.idempotency_key,
                                          gateway_charges_table.c.status)).all()
            notes = conn.execute(select(notifications_table.c.event_id,
                                        notifications_table.c.recipient)).all()
            backlog = int(conn.execute(select(func.count()).select_from(outbox_table)).scalar_one())
    finally:
        engine.dispose()

    by_cause: dict[str, list[Envelope]] = defaultdict(list)
    for _sid, _v, env in events:
        if env.causation_id:
            by_cause[env.causation_id].append(env)

    r: Counter[str] = Counter()
    first_reply: dict[str, dict[str, Any]] = {}
    for op in history.ops:
        r["commands"] += 1
        r["resends"] += op.resend_of is not None
        r["confirmed"] += op.confirmed
        r["answered"] += bool(op.replies)
        r["confirmed_unanswered"] += op.confirmed and not op.replies
        r["not_confirmed"] += not op.confirmed
        caused = by_cause.get(op.message_id, [])
        if caused:
            head = caused[0]
            first_event = (head.type, getattr(head.payload, "reservation_id", None))
            times = sum(1 for e in caused
                        if (e.type, getattr(e.payload, "reservation_id", None)) == first_event)
        else:
            times = 0
        if op.resend_of is None:
            if op.confirmed and (times == 0 or op.message_id not in inbox):
                r["lost"] += 1
            if times > 1:
                r["duplicated"] += 1
            r["took_effect"] += times == 1
        stored = inbox.get(op.message_id)
        stored_outcome = None
        if stored:
            p = json.loads(stored)["payload"]
            stored_outcome = (p.get("status"), p.get("reason"))
        for reply in op.replies:
            outcome = (reply.get("status"), reply.get("reason"))
            if stored_outcome is not None and outcome != stored_outcome:
                r["unexpected_replies"] += 1
            first = first_reply.setdefault(op.message_id, reply)
            if (first.get("status"), first.get("reason")) != outcome:
                r["unexpected_replies"] += 1
            if op.resend_of is not None:
                r["resends_answered_from_inbox"] += stored_outcome == outcome

    # payments
    per_key = Counter(k for k, _s in charges)
    charged = {k for k, s in charges if s == "charged"}
    r["double_charges"] += sum(1 for n in per_key.values() if n > 1)
    succeeded: Counter[str] = Counter()
    failed: set[str] = set()
    accepted: list[Envelope] = []
    requested: list[Envelope] = []
    sent: Counter[tuple[str, str]] = Counter()
    payment_streams: Counter[str] = Counter()
    for sid, _v, env in events:
        rid = getattr(env.payload, "reservation_id", None)
        in_payment = sid.startswith("payment:")  # the process keeps private copies
        if env.type == "PaymentSucceeded" and rid and in_payment:
            succeeded[rid] += 1
        elif env.type == "PaymentFailed" and rid and in_payment:
            failed.add(rid)
        elif env.type == "ReservationAccepted":
            accepted.append(env)
        elif env.type == "ReservationRequested":
            requested.append(env)
        elif env.type == "NotificationSent":
            p = env.payload
            sent[(p.event_id, p.recipient)] += 1  # type: ignore[attr-defined]
        if sid.startswith("payment:") and env.type in ("PaymentSucceeded", "PaymentFailed"):
            payment_streams[sid] += 1
    r["charges"] = len(charged)
    r["payments_failed"] = len(failed)
    r["double_charges"] += sum(1 for n in succeeded.values() if n > 1)
    r["charged_but_failed"] = len(charged & failed)

    # notifications
    r["notifications"] = len(notes)
    r["double_notifications"] += sum(1 for n in Counter(
        (e, who) for e, who in notes).values() if n > 1)
    r["double_notifications"] += sum(1 for n in sent.values() if n > 1)

    r["overlaps"] += count_overlaps(events)
    r["accepted"] = len({getattr(e.payload, "reservation_id", "") for e in accepted})

    # events that some consumer must have acted on
    noted = {e for e, _who in notes}
    r["events_undelivered"] += sum(1 for e in requested if e.message_id not in noted)
    for e in accepted:
        rid = getattr(e.payload, "reservation_id", "")
        r["events_undelivered"] += payment_streams[f"payment:{rid}"] != 1
    r["outbox_backlog"] = backlog

    # dead letters
    by_mid: dict[str, list[DeadLetter]] = defaultdict(list)
    for d in dead:
        if d.message_id:
            by_mid[d.message_id].append(d)
    r["dead_letters"] = len(dead)
    for p in history.poison:
        r["poison_sent"] += 1
        r["poison_confirmed"] += p.confirmed
        found = by_mid.get(p.message_id, [])
        if p.confirmed and not found:
            r["poison_missing"] += 1
        if found and any(d.reason != p.reason for d in found):
            r["poison_wrong_reason"] += 1
        r["poison_dead_lettered_twice"] += len(found) > 1
    ops = {op.message_id for op in history.ops}
    r["valid_dead_lettered"] = sum(1 for d in dead if d.message_id in ops)

    replayed = Replayed.of(events)
    offenders: dict[str, list[str]] = {}
    r.update(lifecycle_counts(replayed, tables, offenders))
    r.update(replay_counts(replayed, tables, offenders))
    for name in MUST_BE_ZERO:
        r[name] += 0  # present in the report even when zero
    out: dict[str, Any] = dict(r)
    if offenders:
        # A few of each, with what the store holds about them: the report's evidence.
        out["offenders"] = {k: ids[:50] for k, ids in offenders.items()}
        out["evidence"] = [line for k, ids in offenders.items() for key in ids[:5]
                           for line in evidence(events, tables, replayed, k, key)]
    return out
