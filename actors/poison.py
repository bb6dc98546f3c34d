"""Poison: a message that keeps crashing its actor is dead-lettered, not retried forever.

The directory restarts a crashed entity and hands it its unsettled messages again;
the message that was in hand when it crashed counts one attempt. Past
``retries`` attempts it is dead-lettered with reason ``poison``, a short traceback,
and an error reply for its producer, so one bad message cannot hold its apartment.
"""

from __future__ import annotations

from config.lru import BoundedLRU
from messages import CommandResult, Envelope, Status
from messages.replies import POISON
from supervisor import Failure

MAX_TRACKED = 10_000


class PoisonCounter:
    """Counts crash attempts per message id (bounded, oldest forgotten first).

    Args:
        retries: attempts allowed before a message is poison.
    """

    def __init__(self, retries: int) -> None:
        self.retries = retries
        self._attempts: BoundedLRU[str, int] = BoundedLRU(MAX_TRACKED)

    def attempt(self, envelope: Envelope, failure: Failure) -> tuple[str, bytes] | None:
        """Count one crash on ``envelope``; past the limit, its dead letter.

        Returns:
            None while it may be retried, else ``(detail, reply)`` to dead-letter it
            with.
        """
        mid = envelope.message_id
        n = self._attempts.get(mid, 0) + 1
        self._attempts.put(mid, n)
        if n <= self.retries:
            return None
        detail = (f"crashed {failure.name} {n} times: {failure.error_type}: {failure.message}"
                  f"\n{_summary(failure.traceback)}")
        reply = envelope.follow(CommandResult(
            status=Status.ERROR, reason=POISON,
            detail=f"{failure.error_type}: {failure.message}")).to_json()
        return detail, reply


def _summary(tb: str, lines: int = 6) -> str:
    """The last lines of a traceback: where it broke and why."""
    return "\n".join(tb.strip().splitlines()[-lines:])
