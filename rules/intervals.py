"""A persistent index of date intervals, for the calendar's overlap queries.

The apartment asks, for every request, acceptance and block, which accepted stays,
pending requests or blocks share a night with some nights [start, end). Scanning
them all would make every command cost as much as the apartment's whole history; this
index answers in O(log n + k).

The entries ``(start, end, key)`` (dates as ordinals) are kept sorted by start, in
chunks of at most ``2 * CHUNK``. An update copies one chunk and the tuple of chunk
heads, O(CHUNK + n / CHUNK) pointer copies (a C ``memcpy``), where a balanced tree would
allocate O(log n) Python nodes. A query bisects to the first entry that could reach
``start``: no interval is longer than ``longest`` nights (kept exact by counting the
lengths present), so nothing starting ``longest`` nights or more before ``start``
overlaps. Accepted stays never overlap each other, so at most ``longest`` of them are
read past the answer; pending requests and blocks only as many as start in that window.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date

import immutables

Entry = tuple[int, int, str]
"""``(first night, night after the last, key)``, the nights as ``date.toordinal()``."""

CHUNK = 64

_NO_LENGTHS: immutables.Map[int, int] = immutables.Map()


@dataclass(frozen=True, eq=False)
class Intervals:
    """Keyed date intervals [start, end), sorted by start; every update is a new value.

    Equal when they hold the same entries (however they are chunked).
    """

    chunks: tuple[tuple[Entry, ...], ...] = ()
    heads: tuple[Entry, ...] = ()  # the first entry of each chunk
    lengths: immutables.Map[int, int] = field(default_factory=lambda: _NO_LENGTHS)
    longest: int = 0  # the longest interval, in nights (0 when empty)
    size: int = 0

    @classmethod
    def of(cls, entries: Iterable[Entry]) -> Intervals:
        """The index of ``entries``, in any order (duplicates kept once)."""
        return from_sorted(sorted(set(entries)))

    def add(self, start: date, end: date, key: str) -> Intervals:
        """With the interval [start, end) of ``key`` (unchanged if it is there)."""
        entry = (start.toordinal(), end.toordinal(), key)
        if not self.chunks:
            return replace(self, chunks=((entry,),), heads=(entry,),
                           lengths=self.lengths.set(entry[1] - entry[0], 1),
                           longest=max(0, entry[1] - entry[0]), size=1)
        i = max(0, bisect_right(self.heads, entry) - 1)
        chunk = self.chunks[i]
        pos = bisect_left(chunk, entry)
        if pos < len(chunk) and chunk[pos] == entry:
            return self
        grown = (*chunk[:pos], entry, *chunk[pos:])
        if len(grown) > 2 * CHUNK:
            parts: tuple[tuple[Entry, ...], ...] = (grown[:CHUNK], grown[CHUNK:])
        else:
            parts = (grown,)
        n = entry[1] - entry[0]
        return Intervals(self.chunks[:i] + parts + self.chunks[i + 1:],
                         self.heads[:i] + tuple(p[0] for p in parts) + self.heads[i + 1:],
                         self.lengths.set(n, self.lengths.get(n, 0) + 1),
                         max(self.longest, n), self.size + 1)

    def remove(self, start: date, end: date, key: str) -> Intervals:
        """Without the interval [start, end) of ``key`` (unchanged if it is not there)."""
        entry = (start.toordinal(), end.toordinal(), key)
        i = bisect_right(self.heads, entry) - 1
        if i < 0:
            return self
        chunk = self.chunks[i]
        pos = bisect_left(chunk, entry)
        if pos == len(chunk) or chunk[pos] != entry:
            return self
        shrunk = chunk[:pos] + chunk[pos + 1:]
        parts = (shrunk,) if shrunk else ()
        n = entry[1] - entry[0]
        left = self.lengths.get(n, 0) - 1
        lengths = self.lengths.set(n, left) if left > 0 else self.lengths.delete(n)
        longest = self.longest
        if left <= 0 and n >= longest:
            longest = max(0, max(lengths, default=0))  # distinct lengths: a few
        return Intervals(self.chunks[:i] + parts + self.chunks[i + 1:],
                         self.heads[:i] + tuple(p[0] for p in parts) + self.heads[i + 1:],
                         lengths, longest, self.size - 1)

    def overlapping(self, start: date, end: date) -> Iterator[str]:
        """The keys of the intervals that share a night with [start, end), by start."""
        first, last = start.toordinal(), end.toordinal()
        # Nothing that starts ``longest`` nights or more before ``start`` reaches it.
        low = (first - self.longest + 1,)
        chunks = self.chunks
        i = max(0, bisect_right(self.heads, low) - 1)
        pos = bisect_left(chunks[i], low) if chunks else 0
        for chunk in chunks[i:]:
            for s, e, key in chunk[pos:]:
                if s >= last:
                    return
                if first < e:
                    yield key
            pos = 0

    def __iter__(self) -> Iterator[Entry]:
        for chunk in self.chunks:
            yield from chunk

    def __len__(self) -> int:
        return self.size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Intervals):
            return NotImplemented
        return self is other or (self.size == other.size and list(self) == list(other))

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Intervals({list(self)!r})"


def from_sorted(entries: Sequence[Entry],
                lengths: Mapping[int, int] | None = None) -> Intervals:
    """The index of ``entries``, already sorted and distinct: no sort.

    ``lengths`` (from :attr:`Intervals.lengths`), when given, spares counting them.
    """
    chunks = tuple(tuple(entries[i:i + CHUNK]) for i in range(0, len(entries), CHUNK))
    counted = immutables.Map(
        Counter(e - s for s, e, _ in entries) if lengths is None else lengths)
    return Intervals(chunks, tuple(c[0] for c in chunks), counted,
                     max(0, max(counted, default=0)), len(entries))
