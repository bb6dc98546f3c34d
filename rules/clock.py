"""The one clock the rules read: ``now`` (aware, UTC), and ``today`` is its date.

An apartment's rules need both: today's date (no request starts in the past) and
the instant (a request expires ``request_ttl`` after it was made). Reading them from
one injectable function keeps them consistent, and lets tests and drills pin the
date while timers still run in real time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    """The real instant, in UTC."""
    return datetime.now(UTC)


def pinned(day: date) -> Clock:
    """A clock whose date is always ``day``, whose time of day is the real one (UTC)."""

    def now() -> datetime:
        return datetime.combine(day, datetime.now(UTC).timetz())

    return now
