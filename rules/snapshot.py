"""An apartment's state as bytes and back: what a snapshot stores.

The apartment's actor rehydrates from its latest snapshot and the events after it,
instead of folding its whole history (see ``actors/base.py``). The format is explicit
and versioned, never pickle: a snapshot records the ``SCHEMA`` it was written with,
and one written with any other is not read (the actor replays the events instead), so
a change to the state or to this format can never load a wrong state. Change
``SCHEMA`` whenever either changes.

The body, ``SCHEMA`` ``apartment/2`` (``/1`` had no ``currency``)::

    <crc32 of the rest, 8 hex digits><header: one line of JSON>\\n<the stays' lines>

The header holds the apartment's fields, its pending requests, its blocks and the
accepted stays' dates (all that an apartment reads on most commands, so decoded at once);
the lines are every other stay, one per line in the format of
:mod:`rules.stays`, left encoded until looked up. Loading thus costs the checksum (a
C loop over the bytes) and the header, not a Python object per stay of history.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import replace
from datetime import date
from typing import Any

import immutables

from rules.apartment import Apartment, Block
from rules.intervals import Intervals, from_sorted
from rules.stays import Stay, Stays, StayStatus, stay_of, stay_record

SCHEMA = "apartment/2"

_FIELDS = ("apartment_id", "listed", "delisted", "owner_id", "city", "title", "description",
           "price_per_night", "currency", "capacity")


class SnapshotError(ValueError):
    """The bytes are not a snapshot this code wrote."""


def to_snapshot(state: Apartment) -> bytes:
    """``state`` as a snapshot's body (see the module for the format)."""
    return snapshot_of(state)[0]


def snapshot_of(state: Apartment) -> tuple[bytes, Apartment]:
    """``state`` as a snapshot's body, and ``state`` as :func:`from_snapshot` would
    read it back: equal, but with every stay other than the pending ones left encoded.

    An actor keeps the latter, so its next snapshot encodes only what changed since.
    """
    lines, count = state.stays.lines(state.pending)
    booked = state.booked_dates
    header: dict[str, Any] = {name: getattr(state, name) for name in _FIELDS}
    header |= {
        "pending": [[s.reservation_id, *stay_record(s)] for s in state.pending_by_date()],
        "blocks": [[b.block_id, b.start.toordinal(), b.end.toordinal()]
                   for b in state.blocks.values()],
        # the accepted stays' dates as columns (lists of numbers and strings decode
        # fastest), sorted, with the count of each length
        "booked": {"start": [e[0] for e in booked], "end": [e[1] for e in booked],
                   "id": [e[2] for e in booked], "lengths": list(booked.lengths.items())},
        "stays": count,
    }
    rest = json.dumps(header, separators=(",", ":")).encode() + b"\n" + lines
    return (b"%08x" % zlib.crc32(rest) + rest,
            replace(state, stays=Stays(state.pending, lines, count)))


def from_snapshot(body: bytes) -> Apartment:
    """The state :func:`to_snapshot` made ``body`` of.

    Raises:
        SnapshotError: ``body`` is damaged, or not a snapshot of this format.
    """
    try:
        if int(body[:8], 16) != zlib.crc32(memoryview(body)[8:]):
            raise SnapshotError("the checksum does not match")
        newline = body.index(b"\n", 8)
        header = json.loads(body[8:newline])
        fields = {name: header[name] for name in _FIELDS}
        pending = {r[0]: stay_of(r[0], r[1:]) for r in header["pending"]}
        if any(s.status is not StayStatus.PENDING for s in pending.values()):
            raise SnapshotError("a pending request that is not pending")
        blocks = {r[0]: Block(r[0], date.fromordinal(r[1]), date.fromordinal(r[2]))
                  for r in header["blocks"]}
        dates = header["booked"]
        booked = list(zip(dates["start"], dates["end"], dates["id"], strict=True))
        lengths = {int(n): int(k) for n, k in dates["lengths"]}
        if sum(lengths.values()) != len(booked):
            raise SnapshotError("the accepted stays' lengths do not add up")
        pending_map: immutables.Map[str, Stay] = immutables.Map(pending)
        return Apartment(
            **fields,
            stays=Stays(pending_map, body[newline + 1:], int(header["stays"])),
            blocks=immutables.Map(blocks),
            pending=pending_map,
            booked_dates=from_sorted(booked, lengths),
            pending_dates=Intervals.of(
                (s.start.toordinal(), s.end.toordinal(), rid) for rid, s in pending.items()),
            blocked_dates=Intervals.of(
                (b.start.toordinal(), b.end.toordinal(), bid) for bid, b in blocks.items()),
        )
    except SnapshotError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise SnapshotError(f"not an {SCHEMA} snapshot: {exc!r}") from exc
