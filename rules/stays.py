"""An apartment's requests (stays), by reservation id, as a persistent mapping.

An apartment keeps every request it was ever sent: a reservation id is never taken
twice, and a late answer to an old request must still say what became of it. So a
busy apartment's stays grow with its history, and loading them all from a snapshot
would cost as much as the history did. :class:`Stays` has two parts:

* the stays that changed since the state was loaded from a snapshot (all of them, for
  a state folded from events alone), in a persistent map;
* the stays the snapshot held, left as the snapshot's lines (one per stay, sorted by
  its encoded id) and decoded one at a time when looked up, by a binary search over
  the bytes.

Loading costs nothing per stay (a signpost every 4 KiB of lines: one ``find`` each)
and a lookup O(log n): a C ``bisect`` over the signposts, then a binary search of a
few dozen lines. Each line is
``<id as a JSON string>\\t<the stay's other fields as a JSON array>``; a JSON string
has no raw tab or newline and ends at its only unescaped quote, so no id's line is a
prefix of another's, and sorting the lines sorts the ids.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any, TypeVar, overload

import immutables


class StayStatus(StrEnum):
    """Where a request stands, as the apartment sees it."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Stay:
    """A request for the nights [start, end)."""

    reservation_id: str
    guest_id: str
    start: date
    end: date
    guests: int
    total_price: int
    card_token: str
    card_last4: str
    status: StayStatus = StayStatus.PENDING
    expires_at: datetime | None = None

    def overlaps(self, start: date, end: date) -> bool:
        """True when the nights [start, end) share a night with this stay."""
        return self.start < end and start < self.end

    def with_status(self, status: StayStatus) -> Stay:
        """This stay with ``status`` (``replace`` without re-running ``__init__``)."""
        new = object.__new__(Stay)
        new.__dict__.update(self.__dict__, status=status)
        return new


def stay_record(stay: Stay) -> list[Any]:
    """A stay as JSON-able data, its id left out (it is the key)."""
    return [stay.guest_id, stay.start.toordinal(), stay.end.toordinal(), stay.guests,
            stay.total_price, stay.card_token, stay.card_last4, stay.status.value,
            None if stay.expires_at is None else stay.expires_at.isoformat()]


def stay_of(reservation_id: str, record: list[Any]) -> Stay:
    """The stay :func:`stay_record` made ``record`` of.

    Raises:
        ValueError, TypeError: ``record`` is not one.
    """
    guest, start, end, guests, price, token, last4, status, expires = record
    if not all(isinstance(v, int) for v in (start, end, guests, price)):
        raise TypeError(f"not a stay record: {record!r}")
    return Stay(reservation_id, str(guest), date.fromordinal(start), date.fromordinal(end),
                guests, price, str(token), str(last4), StayStatus(status),
                None if expires is None else datetime.fromisoformat(expires))


def _key(reservation_id: str) -> bytes:
    return json.dumps(reservation_id).encode()


def _line(reservation_id: str, stay: Stay) -> bytes:
    return _key(reservation_id) + b"\t" + json.dumps(
        stay_record(stay), separators=(",", ":")).encode()


_STRIDE = 4096  # bytes between signposts


def _signposts(lines: bytes) -> tuple[list[bytes], list[int]]:
    """The key and start of a line every ``_STRIDE`` bytes or so: a coarse index that
    narrows each search to one stretch (a few dozen lines) with one C ``bisect``."""
    keys: list[bytes] = []
    starts: list[int] = []
    at = 0
    while at < len(lines):
        keys.append(lines[at:lines.find(b"\t", at)])
        starts.append(at)
        newline = lines.find(b"\n", at + _STRIDE)
        if newline < 0:
            break
        at = newline + 1
    return keys, starts


def _seek(lines: bytes, key: bytes, signposts: tuple[list[bytes], list[int]]
          ) -> tuple[int, int, int]:
    """Binary search of sorted ``lines`` for ``key``'s line.

    Returns its start, end (its newline, or the end) and the offset of its fields; when
    there is none, the start of the first line after ``key`` (where it would go), that
    again, and -1.
    """
    keys, starts = signposts
    i = bisect_right(keys, key)
    if i == 0:
        return 0, 0, -1
    lo = starts[i - 1]
    hi = starts[i] if i < len(starts) else len(lines)  # both at line starts (or the end)
    while lo < hi:
        nl = lines.rfind(b"\n", lo, (lo + hi) // 2)
        start = lo if nl < 0 else nl + 1
        tab = lines.find(b"\t", start)
        end = lines.find(b"\n", tab)
        if end < 0:
            end = len(lines)
        found = lines[start:tab]
        if found == key:
            return start, end, tab + 1
        if found < key:
            lo = end + 1
        else:
            hi = start
    lo = min(lo, len(lines))
    return lo, lo, -1


_NO_STAYS: immutables.Map[str, Stay] = immutables.Map()
_NO_SIGNPOSTS: tuple[list[bytes], list[int]] = ([], [])
T = TypeVar("T")


class Stays(Mapping[str, Stay]):
    """Stays by reservation id; :meth:`set` returns a new value.

    Args:
        recent: the stays changed since ``lines`` were written (they win over them).
        lines: a snapshot's sorted lines (see the module), ``count`` of them.
        count: how many stays ``lines`` hold.
    """

    __slots__ = ("_count", "_lines", "_recent", "_signposts")

    def __init__(self, recent: immutables.Map[str, Stay] = _NO_STAYS, lines: bytes = b"",
                 count: int = 0) -> None:
        self._recent = recent
        self._lines = lines
        self._count = count
        self._signposts = _signposts(lines) if lines else _NO_SIGNPOSTS

    def _find(self, reservation_id: str) -> tuple[int, int, int]:
        return _seek(self._lines, _key(reservation_id), self._signposts)

    @overload
    def get(self, reservation_id: str, /) -> Stay | None: ...

    @overload
    def get(self, reservation_id: str, /, default: Stay | T) -> Stay | T: ...

    def get(self, reservation_id: str, /, default: object = None) -> object:
        """The stay, or ``default``."""
        stay = self._recent.get(reservation_id)
        if stay is not None:
            return stay
        if self._lines:
            _start, end, fields = self._find(reservation_id)
            if fields >= 0:
                return stay_of(reservation_id, json.loads(self._lines[fields:end]))
        return default

    def __getitem__(self, reservation_id: str) -> Stay:
        stay = self.get(reservation_id)
        if stay is None:
            raise KeyError(reservation_id)
        return stay

    def __contains__(self, reservation_id: object) -> bool:
        if not isinstance(reservation_id, str):
            return False
        return reservation_id in self._recent or (
            bool(self._lines) and self._find(reservation_id)[2] >= 0)

    def __len__(self) -> int:
        # O(r log n) for r recent stays: on no command's path (tests, the benchmark)
        replaced = sum(1 for rid in self._recent if self._lines and self._find(rid)[2] >= 0)
        return len(self._recent) + self._count - replaced

    def __iter__(self) -> Iterator[str]:
        yield from self._recent
        if self._lines:
            for line in self._lines.split(b"\n"):
                rid: str = json.loads(line[:line.index(b"\t")])
                if rid not in self._recent:
                    yield rid

    def set(self, reservation_id: str, stay: Stay) -> Stays:
        """With ``stay`` for ``reservation_id``."""
        new = object.__new__(Stays)  # the same lines: no signposts to find again
        new._recent = self._recent.set(reservation_id, stay)
        new._lines, new._count, new._signposts = self._lines, self._count, self._signposts
        return new

    def lines(self, leave_out: Container[str]) -> tuple[bytes, int]:
        """Every stay but ``leave_out`` as sorted lines, and how many: for a snapshot.

        ``leave_out`` must name recent stays only (the apartment leaves out its pending
        requests, which are always recent: a snapshot's lines hold none). Only the
        recent stays are encoded, and the old lines are copied around them in slices,
        never split: O(r log n) steps and a copy of the bytes, for r recent stays.
        """
        edits = sorted((_key(rid), None if rid in leave_out else _line(rid, s))
                       for rid, s in self._recent.items())
        if not self._lines:
            new = [line for _key_, line in edits if line is not None]
            return b"\n".join(new), len(new)
        old = self._lines + b"\n"  # every line ends with a newline
        pieces: list[bytes] = []
        at, count = 0, self._count
        for key, line in edits:
            start, end, fields = _seek(old, key, self._signposts)
            pieces.append(old[at:start])
            if line is not None:
                pieces.append(line + b"\n")
                count += 1
            at = start
            if fields >= 0:  # replaced: its old line goes
                at = end + 1
                count -= 1
        pieces.append(old[at:])
        return b"".join(pieces)[:-1], count

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Mapping):
            return NotImplemented
        return len(self) == len(other) and dict(self.items()) == dict(other.items())

    def __hash__(self) -> int:
        return hash(frozenset(self.items()))

    def __repr__(self) -> str:
        return f"Stays({dict(self.items())!r})"


NO_STAYS = Stays()
