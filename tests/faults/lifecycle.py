"""The end of every booking's life, and every stored state, checked against the streams.

Counting commands lost or duplicated says nothing of whether each booking ended: a
stale actor once answered ``CancelUnpaidReservation`` with "nothing to do" and the
nights of a declined card stayed booked for good, with no count noticing. These counts
read only the store, once the drill has drained:

* ``failed_but_held``: a ``PaymentFailed`` in ``payment:<rid>`` whose stay the
  apartment (its stream folded with ``rules.apartment.evolve``) still holds ACCEPTED.
* ``accepted_unresolved``: an accepted reservation whose stay is neither CANCELLED
  (by the guest, the owner, or for the failed payment: the only ways an accepted stay
  ends) nor still ACCEPTED with its charge succeeded (``PaymentSucceeded``, no
  ``PaymentFailed``) and a ``ReservationConfirmed`` in ``reservation:<rid>``.
* ``cancelled_paid_without_refund``: a ``ReservationCancelled`` owing a refund
  (``refund_amount`` > 0; the payment actor refunds nothing otherwise) of a
  reservation the gateway charged, with no ``RefundIssued`` nor ``RefundFailed`` in
  ``refund:<rid>``.
* ``refunds_over_charge``: reservations refunded twice (gateway rows per charge, or
  ``RefundIssued`` events), or by more than their charge captured or their
  cancellation owed.
* ``replay_mismatch``: stored states that differ from a fresh replay of their stream:
  each apartment snapshot against the fold of its stream up to its version; the
  search read model (an apartment's row, its delisting, its taken nights) against
  the fold of each apartment stream; and each reservation process's recorded
  decisions against ``rules.reservation.decide`` re-run over the events it recorded.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import Connection, select

from messages import (
    Envelope,
    Message,
    PaymentFailed,
    PaymentSucceeded,
    RefundIssued,
    ReservationAccepted,
    ReservationCancelled,
    ReservationConfirmed,
)
from rules import reservation
from rules.apartment import Apartment, StayStatus, evolve
from rules.snapshot import SCHEMA, SnapshotError, from_snapshot
from store.tables import (
    gateway_charges_table,
    gateway_refunds_table,
    search_apartments_table,
    search_booked_table,
    search_delisted_table,
    snapshots_table,
)

LIFECYCLE_MUST_BE_ZERO = ("failed_but_held", "accepted_unresolved",
                          "cancelled_paid_without_refund", "refunds_over_charge",
                          "replay_mismatch")

# What the counts were taken over, reported beside them (a check of nothing is no check).
LIFECYCLE_FIGURES = ("reservations_confirmed", "cancelled", "cancelled_by_guest",
                     "cancelled_by_owner", "cancelled_by_system", "refunds_issued",
                     "refund_outcomes", "snapshots_checked", "search_checked",
                     "processes_checked", "replay_mismatch_snapshot",
                     "replay_mismatch_search", "replay_mismatch_process")

StoredEvent = tuple[str, int, Envelope]
Nights = tuple[str, date, date]  # (reservation id or "block:<id>", start, end)


@dataclass
class Tables:
    """The rows besides the events that the counts compare with them."""

    charges: dict[str, tuple[str, int]] = field(default_factory=dict)  # key: status, amount
    refunds: list[tuple[str, int]] = field(default_factory=list)  # (charge key, amount)
    snapshots: list[tuple[str, int, str, bytes]] = field(default_factory=list)
    search_rows: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    search_booked: dict[str, set[Nights]] = field(default_factory=dict)
    search_delisted: set[str] = field(default_factory=set)


def read_tables(conn: Connection) -> Tables:
    """The gateway's ledger, the snapshots and the search read model."""
    t = Tables()
    c = gateway_charges_table.c
    t.charges = {r.idempotency_key: (r.status, r.amount)
                 for r in conn.execute(select(c.idempotency_key, c.status, c.amount))}
    f = gateway_refunds_table.c
    t.refunds = [(r.charge_key, r.amount) for r in conn.execute(select(f.charge_key, f.amount))]
    s = snapshots_table.c
    t.snapshots = [(r.stream_id, r.version, r.schema_tag, bytes(r.body)) for r in
                   conn.execute(select(s.stream_id, s.version, s.schema_tag, s.body))]
    a = search_apartments_table.c
    t.search_rows = {r.apartment_id: (r.city, r.city_key, r.title, r.price_per_night,
                                      r.currency, r.capacity)
                     for r in conn.execute(select(a.apartment_id, a.city, a.city_key, a.title,
                                                  a.price_per_night, a.currency, a.capacity))}
    b = search_booked_table.c
    # A released stay's row is an empty range (a tombstone when its release came first):
    # it takes no night, so it is not part of what search holds as taken.
    for r in conn.execute(select(b.apartment_id, b.reservation_id, b.start, b.end)
                          .where(b.start < b.end)):
        t.search_booked.setdefault(r.apartment_id, set()).add((r.reservation_id, r.start, r.end))
    t.search_delisted = {r.apartment_id for r in conn.execute(
        select(search_delisted_table.c.apartment_id))}
    return t


@dataclass(frozen=True)
class Replayed:
    """The store's streams, each in version order, and every apartment folded from its
    stream alone, as a fresh actor with no snapshot would."""

    streams: dict[str, list[tuple[int, Message]]]
    apartments: dict[str, Apartment]

    @classmethod
    def of(cls, events: Iterable[StoredEvent]) -> Replayed:
        """Group ``events`` by stream and fold the apartments."""
        streams: dict[str, list[tuple[int, Message]]] = defaultdict(list)
        for sid, version, env in events:
            streams[sid].append((version, env.payload))
        for evs in streams.values():
            evs.sort(key=lambda e: e[0])
        apartments = {sid.split(":", 1)[1]: fold_apartment(sid.split(":", 1)[1],
                                                           (e for _v, e in evs))
                      for sid, evs in streams.items() if sid.startswith("apartment:")}
        return cls(dict(streams), apartments)


def fold_apartment(apartment_id: str, events: Iterable[Message]) -> Apartment:
    """An apartment's state replayed from nothing."""
    state = Apartment(apartment_id=apartment_id)
    for e in events:
        state = evolve(state, e)
    return state


Offenders = dict[str, list[str]]
"""Count name -> the reservation or apartment ids it counted (for the evidence)."""


def lifecycle_counts(replayed: Replayed, tables: Tables,
                     offenders: Offenders | None = None) -> Counter[str]:
    """The lifecycle counts of the module docstring, and what they were taken over;
    ``offenders`` gets the ids each count counted."""
    streams, apartments = replayed.streams, replayed.apartments
    bad: Offenders = offenders if offenders is not None else {}
    where: dict[str, str] = {}  # accepted reservation -> its apartment
    cancellations: dict[str, ReservationCancelled] = {}
    for apt in apartments:
        for _v, e in streams[f"apartment:{apt}"]:
            if isinstance(e, ReservationAccepted):
                where[e.reservation_id] = apt
            elif isinstance(e, ReservationCancelled):
                cancellations[e.reservation_id] = e

    def kinds(sid: str) -> set[type[Message]]:
        return {type(e) for _v, e in streams.get(sid, [])}

    r: Counter[str] = Counter()
    for rid, apt in where.items():
        stay = apartments[apt].stays[rid]
        payment = kinds(f"payment:{rid}")
        confirmed = ReservationConfirmed in kinds(f"reservation:{rid}")
        r["reservations_confirmed"] += confirmed
        if PaymentFailed in payment and stay.status is StayStatus.ACCEPTED:
            r["failed_but_held"] += 1
            bad.setdefault("failed_but_held", []).append(rid)
        paid = PaymentSucceeded in payment and PaymentFailed not in payment
        ended = stay.status is StayStatus.CANCELLED or (
            stay.status is StayStatus.ACCEPTED and paid and confirmed)
        if not ended:
            r["accepted_unresolved"] += 1
            bad.setdefault("accepted_unresolved", []).append(rid)

    for rid, c in cancellations.items():
        r["cancelled"] += 1
        r[f"cancelled_by_{c.cancelled_by.value}"] += 1
        refund = streams.get(f"refund:{rid}", [])
        r["refund_outcomes"] += bool(refund)
        charged = tables.charges.get(rid, ("", 0))[0] == "charged"
        if c.refund_amount > 0 and charged and not refund:
            r["cancelled_paid_without_refund"] += 1
            bad.setdefault("cancelled_paid_without_refund", []).append(rid)

    over: set[str] = set()
    per_charge = Counter(key for key, _a in tables.refunds)
    over |= {key for key, n in per_charge.items() if n > 1}
    for key, amount in tables.refunds:
        status, captured = tables.charges.get(key, ("", 0))
        if status != "charged" or amount > captured:
            over.add(key)
    for sid, evs in streams.items():
        if not sid.startswith("refund:"):
            continue
        rid = sid.split(":", 1)[1]
        issued = [e for _v, e in evs if isinstance(e, RefundIssued)]
        r["refunds_issued"] += len(issued)
        owed = cancellations[rid].refund_amount if rid in cancellations else 0
        captured = tables.charges.get(rid, ("", 0))[1]
        if len(issued) > 1 or any(e.amount > min(owed, captured) for e in issued):
            over.add(rid)
    r["refunds_over_charge"] = len(over)
    if over:
        bad["refunds_over_charge"] = sorted(over)
    return r


def replay_counts(replayed: Replayed, tables: Tables,
                  offenders: Offenders | None = None) -> Counter[str]:
    """``replay_mismatch`` (and its parts) of the module docstring; ``offenders`` gets
    the streams (snapshots, processes) and apartments (search) that differ."""
    streams, apartments = replayed.streams, replayed.apartments
    bad: Offenders = offenders if offenders is not None else {}
    r: Counter[str] = Counter()
    for sid, version, tag, body in tables.snapshots:
        if not sid.startswith("apartment:") or tag != SCHEMA:
            r["snapshots_unchecked"] += 1  # another format: the actor does not read it
            continue
        r["snapshots_checked"] += 1
        upto = [e for v, e in streams.get(sid, []) if v <= version]
        try:
            stored = from_snapshot(body)
        except SnapshotError:
            stored = None
        if len(upto) != version or stored != fold_apartment(sid.split(":", 1)[1], upto):
            r["replay_mismatch_snapshot"] += 1
            bad.setdefault("replay_mismatch_snapshot", []).append(sid)

    for apt in (apartments.keys() | tables.search_rows.keys() | tables.search_booked.keys()
                | tables.search_delisted):
        state = apartments.get(apt, Apartment(apartment_id=apt))
        r["search_checked"] += 1
        if _search_view(state) != (tables.search_rows.get(apt),
                                   apt in tables.search_delisted,
                                   tables.search_booked.get(apt, set())):
            r["replay_mismatch_search"] += 1
            bad.setdefault("replay_mismatch_search", []).append(apt)

    for sid, evs in streams.items():
        if sid.startswith("reservation:"):
            r["processes_checked"] += 1
            if not _decisions_replay(sid.split(":", 1)[1], [e for _v, e in evs]):
                r["replay_mismatch_process"] += 1
                bad.setdefault("replay_mismatch_process", []).append(sid)
    r["replay_mismatch"] = (r["replay_mismatch_snapshot"] + r["replay_mismatch_search"]
                            + r["replay_mismatch_process"])
    return r


def _search_view(state: Apartment) -> tuple[tuple[Any, ...] | None, bool, set[Nights]]:
    """What search must hold for an apartment: its row, whether delisted, taken nights."""
    if not state.listed:
        return None, False, set()
    row = (state.city, state.city.casefold(), state.title, state.price_per_night,
           state.currency, state.capacity)
    taken = {(rid, state.stays[rid].start, state.stays[rid].end)
             for _s, _e, rid in state.booked_dates}
    taken |= {(f"block:{b.block_id}", b.start, b.end) for b in state.blocks.values()}
    return row, state.delisted, taken


def _decisions_replay(rid: str, events: list[Message]) -> bool:
    """Whether a reservation's stream is what its process decides from its own inputs.

    Each commit of the process is the event it reacted to followed by what
    ``decide`` made of it on the state before (``actors.booking``); re-running that
    over the recorded inputs must give the recorded decisions, one commit after
    another, to the end of the stream.
    """
    state = reservation.Reservation(reservation_id=rid)
    i = 0
    while i < len(events):
        seen = events[i]
        decided = reservation.decide(state, seen)
        recorded = events[i + 1:i + 1 + len(decided)]
        if [_fields(e) for e in recorded] != [_fields(e) for e in decided]:
            return False
        for e in (seen, *decided):
            state = reservation.evolve(state, e)
        i += 1 + len(decided)
    return True


def _fields(m: Message) -> tuple[str, dict[str, Any]]:
    return type(m).__name__, m.model_dump(mode="json")


def evidence(events: list[StoredEvent], tables: Tables, replayed: Replayed, count: str,
             key: str) -> list[str]:
    """What the store holds about one offender of ``count``, as lines to print.

    A reservation: its events in every stream (store order first: ``#`` is the index in
    position order, so the order across streams shows) and the gateway's rows. An
    apartment whose search differs: what search holds against what the replay says.
    """
    if count == "replay_mismatch_search":
        state = replayed.apartments.get(key, Apartment(apartment_id=key))
        row, delisted, taken = _search_view(state)
        held = tables.search_booked.get(key, set())
        return [f"search of {key}:",
                f"  row   replay {row} / search {tables.search_rows.get(key)}",
                f"  delisted replay {delisted} / search {key in tables.search_delisted}",
                f"  nights only in search: {sorted(held - taken)}",
                f"  nights only in the replay: {sorted(taken - held)}",
                *_lines(events, lambda sid, env: sid == f"apartment:{key}" and any(
                    getattr(env.payload, "reservation_id", None) == rid
                    for rid, _s, _e in held ^ taken))]
    rid = key.split(":", 1)[1] if ":" in key else key
    return [f"{count} {key}:",
            *_lines(events, lambda _sid, env: getattr(env.payload, "reservation_id",
                                                      None) == rid),
            f"  gateway charge {tables.charges.get(rid)}, refunds "
            f"{[a for k, a in tables.refunds if k == rid]}"]


def _lines(events: list[StoredEvent], keep: Callable[[str, Envelope], bool]) -> list[str]:
    out = []
    for i, (sid, version, env) in enumerate(events):
        if keep(sid, env):
            p = env.payload
            extra = {k: v for k, v in p.model_dump(mode="json").items()
                     if k in ("reason", "cancelled_by", "refund_amount", "amount", "start",
                              "end")}
            out.append(f"  #{i} {sid} v{version} {env.type} at {env.occurred_at:%H:%M:%S.%f}"
                       f" {extra}")
    return out
