"""The reservation's actor: it runs :mod:`rules.reservation` on the events it is sent.

A reservation is a process: it records each event about it, then decides what to do
next (charge, confirm, refund, cancel). The rules are pure; this actor commits.
"""

from __future__ import annotations

from typing import ClassVar

from actors.base import EntityActor, EntityContext
from messages import Envelope, Message
from rules.reservation import Reservation, decide, evolve
from supervisor import ReportFailure


class ReservationActor(EntityActor[Reservation]):
    """One reservation's actor: consumes its events from the ``reservations`` queue."""

    kind: ClassVar[str] = "reservation"
    consumer: ClassVar[str] = "reservations"
    replies: ClassVar[bool] = False
    records_input: ClassVar[bool] = True

    def __init__(self, entity_id: str, key: str, ctx: EntityContext,
                 report: ReportFailure) -> None:
        super().__init__(entity_id, key, ctx, report)

    def initial(self) -> Reservation:
        """A reservation nothing has happened to."""
        return Reservation(reservation_id=self.key)

    def decide_payloads(self, envelope: Envelope) -> list[Message]:
        """Record the incoming event itself, then what the process does about it."""
        return [envelope.payload, *decide(self.state, envelope.payload)]

    def apply(self, state: Reservation, event: Message) -> Reservation:
        """Fold one event."""
        return evolve(state, event)
