"""The apartment's actor: it runs :mod:`rules.apartment` one command at a time.

The rules are pure (``decide`` / ``evolve`` over a frozen :class:`Apartment`); this
actor feeds them the clock, the configured lifecycle and what it must read from the
store (a failed payment), and commits what they decide.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

from actors.base import EntityActor, EntityContext, Refusal
from actors.timers import timer_effects
from messages import CancelUnpaidReservation, CommandRejected, Envelope, Message, PaymentFailed
from rules.apartment import UNAUTHORIZED, Apartment, Rules, decide, evolve, refusal_of
from rules.snapshot import SCHEMA, SnapshotError, from_snapshot, snapshot_of
from store.writer import Effect
from supervisor import ReportFailure

log = logging.getLogger(__name__)


class ApartmentActor(EntityActor[Apartment]):
    """One apartment's actor: its commands, one at a time, from the intake.

    Every commit also writes or clears the request's expiry timer (see
    :mod:`actors.timers`), so a timer exists exactly while its request is pending.
    An apartment's stream grows with every request it is sent, so it takes snapshots
    (:mod:`rules.snapshot`).
    """

    kind: ClassVar[str] = "apartment"
    consumer: ClassVar[str] = "intake"
    snapshot_tag: ClassVar[str | None] = SCHEMA

    def __init__(self, entity_id: str, key: str, ctx: EntityContext,
                 report: ReportFailure) -> None:
        super().__init__(entity_id, key, ctx, report)
        self.lifecycle = ctx.lifecycle

    def initial(self) -> Apartment:
        """An apartment not yet listed."""
        return Apartment(apartment_id=self.key)

    def decide_payloads(self, envelope: Envelope) -> list[Message]:
        """Apply the apartment rules with today's date and the configured lifecycle."""
        command = envelope.payload
        failed: frozenset[str] = frozenset()
        if isinstance(command, CancelUnpaidReservation):
            failed = self._failed_payment(command.reservation_id)
        now = self.ctx.clock()
        rules = Rules(today=now.date(), max_stay_nights=self.ctx.max_stay_nights,
                      now=now, request_ttl=self.lifecycle.request_ttl,
                      policy=self.lifecycle.policy, failed_payments=failed)
        events = decide(self.state, command, rules)
        for e in events:
            if isinstance(e, CommandRejected) and e.reason in UNAUTHORIZED:
                log.warning("refused %s on apartment %s by %r: %s (message %s)",
                            e.command_type, self.key, e.actor_id, e.reason.value,
                            envelope.message_id)
        return events

    def refusal(self, command: Message, events: Sequence[Message]) -> Refusal | None:
        """The rules' refusal of ``command`` (see :func:`rules.apartment.refusal_of`)."""
        return refusal_of(command, events)

    def vacant(self, state: Apartment) -> bool:
        """Never added: its commands are all refused, and nothing is kept for it."""
        return not state.listed

    def _failed_payment(self, reservation_id: str) -> frozenset[str]:
        """``{reservation_id}`` when its payment stream records ``PaymentFailed``."""
        stream = self.ctx.store.load(f"payment:{reservation_id}")
        if any(isinstance(e.payload, PaymentFailed) for e in stream):
            return frozenset({reservation_id})
        return frozenset()

    def effects_for(self, events: Sequence[Envelope]) -> Sequence[Effect]:
        """The request timers these events start or clear, in the same transaction."""
        return timer_effects(events)

    def apply(self, state: Apartment, event: Message) -> Apartment:
        """Fold one event."""
        return evolve(state, event)

    def encode_state(self, state: Apartment) -> tuple[bytes, Apartment]:
        """The apartment as a snapshot's body, and as read back from it."""
        return snapshot_of(state)

    def decode_state(self, body: bytes) -> Apartment:
        """The apartment in a snapshot's body, which must be this apartment's."""
        state = from_snapshot(body)
        if state.apartment_id != self.key:
            raise SnapshotError(f"a snapshot of apartment {state.apartment_id!r}")
        return state
