"""The configurable parts of a booking's life, as plain frozen values.

Kept apart from the actors (this module imports only messages), so settings,
the entity context and the pure rules can all share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from messages.events import Party


@dataclass(frozen=True)
class CancellationPolicy:
    """How much of the price goes back when an accepted reservation is cancelled.

    The guest gets ``early_refund_percent`` when cancelling at least
    ``full_refund_days`` before the first night, ``late_refund_percent`` after that;
    an owner's cancellation refunds ``owner_refund_percent``; a cancellation for a
    failed payment offers back everything (the gateway refunds only what it took).
    """

    full_refund_days: int = 7
    early_refund_percent: int = 100
    late_refund_percent: int = 50
    owner_refund_percent: int = 100

    def refund(self, total: int, *, by: Party, days_before: int) -> int:
        """The amount owed back, in cents (rounded down)."""
        if by is Party.GUEST:
            pct = (self.early_refund_percent if days_before >= self.full_refund_days
                   else self.late_refund_percent)
        elif by is Party.OWNER:
            pct = self.owner_refund_percent
        else:
            pct = 100
        return total * pct // 100


@dataclass(frozen=True)
class Lifecycle:
    """The configurable parts of a booking's life: answer deadline and refunds."""

    request_ttl: timedelta = timedelta(hours=24)
    policy: CancellationPolicy = field(default_factory=CancellationPolicy)
