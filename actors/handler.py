"""Event handlers as actors: react to an event once, in one commit with the inbox row."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from actors.base import Handle, logged_as
from actors.outcome import Ticket
from messages import Envelope, Kind, Message
from store import Commit, ConcurrencyError, DuplicateMessage, EventStore, InboxEntry, StoreWriter
from store.writer import Effect
from supervisor import ReportFailure, SupervisedActor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reaction:
    """What a handler does about one event: events to record and rows to write.

    ``later`` says the event cannot be handled yet (it depends on another event not
    handled so far): nothing is written and the delivery goes back to the broker,
    which counts it toward the queue's delivery limit.
    """

    stream_id: str | None = None
    expected_version: int = 0
    events: Sequence[Message] = ()
    effects: Sequence[Effect] = field(default_factory=tuple)
    later: bool = False


class HandlerActor(SupervisedActor):
    """Base of the notifier, payment and search actors.

    A handled event's id goes in the inbox in the same transaction as the effect, so
    a redelivered event changes nothing. The ticket is acked only after the commit.

    Args:
        name: the supervisor's id for it.
        store: reads.
        writer: the group-committing writer.
        report: the supervisor's crash callback.
    """

    consumer: ClassVar[str] = "handler"

    def __init__(self, name: str, store: EventStore, writer: StoreWriter,
                 report: ReportFailure) -> None:
        super().__init__(name, report, writer.gate)
        self.store = store
        self.writer = writer

    def on_receive(self, message: Any) -> Any:
        """As the supervision runtime does, with the message's ids on its log lines."""
        with logged_as(message):
            return super().on_receive(message)

    def react(self, envelope: Envelope) -> Reaction:
        """Hook: the reaction to one event (may call outside systems; must be idempotent)."""
        raise NotImplementedError

    def answer(self, envelope: Envelope) -> Message:
        """Hook: the reply to a query."""
        raise TypeError(f"{self.name} answers no queries")

    def committed(self, exc: BaseException | None) -> None:
        """Hook, on the writer thread: a reaction's commit is done (None) or failed."""

    def receive(self, message: Any) -> Any:
        """Handle one message."""
        if not isinstance(message, Handle):
            raise ValueError(f"{self.name}: unexpected message {message!r}")
        env, ticket = message.envelope, message.ticket
        if env.kind is Kind.QUERY:
            ticket.ack(env.follow(self.answer(env)).to_json())
            return None
        if ticket.redelivered:  # otherwise the inbox row's key catches a duplicate
            seen, _ = self.store.seen(self.consumer, env.message_id)
            if seen:
                ticket.ack()
                return None
        reaction = self.react(env)
        if reaction.later:
            ticket.requeue()
            return None
        events = [env.follow(p) for p in reaction.events]
        ticket.submitted = True
        self.writer.submit(Commit(
            stream_id=reaction.stream_id,
            expected_version=reaction.expected_version,
            events=events,
            inbox=InboxEntry(self.consumer, env.message_id),
            effects=reaction.effects,
            on_done=lambda exc: self._done(ticket, exc),
        ))
        return None

    def _done(self, ticket: Ticket, exc: BaseException | None) -> None:
        _settle(ticket, exc)
        self.committed(exc)


def _settle(ticket: Ticket, exc: BaseException | None) -> None:
    if exc is None or isinstance(exc, DuplicateMessage):
        ticket.ack()  # done now, or done before
    elif isinstance(exc, ConcurrencyError):
        log.info("handler commit conflicted (%s); requeueing", exc)
        ticket.requeue()
    else:
        log.warning("handler commit failed (%r); requeueing", exc)
        ticket.requeue()
