"""The intake: each delivery parsed, checked, counted and handed to its actor.

Commands go to their apartment's actor, reservation events to their reservation's,
other events to the handler that consumes them. A body that cannot be handled is
refused here, once: dead-lettered with its reason, and answered when the producer
asked. It runs on the consumers' threads; the actors take it from there.

Actors never see the delivery: each gets a :class:`actors.outcome.Ticket`
(:func:`ticket_for`), and the outcome it gives the ticket is what settles the
delivery, on that one path.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, assert_never

import pykka

from actors.base import Handle
from actors.directory import Directory
from actors.outcome import Outcome, Ticket
from broker.base import Delivery
from config.logs import handling
from messages import (
    BadInput,
    CommandResult,
    Consumer,
    Envelope,
    InvalidMessage,
    Kind,
    Status,
    new_id,
    spec_for,
)
from messages.base import ID_PATTERN
from node.metrics import NodeMetrics

log = logging.getLogger(__name__)

_ID = re.compile(ID_PATTERN)
COMMAND_KINDS = frozenset({Kind.COMMAND})
HANDLER_KINDS = frozenset({Kind.EVENT})
SEARCH_KINDS = frozenset({Kind.EVENT, Kind.QUERY})
HANDLERS = (Consumer.PAYMENT, Consumer.NOTIFIER, Consumer.SEARCH)  # a handler actor each


@dataclass
class _Route:
    """The current actor of a handler and the tickets told to it, unsettled."""

    ref: pykka.ActorRef[Any] | None = None
    pending: set[Ticket] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Counters:
    """What the node has seen, for the CLI, tests and benchmarks."""

    commands: int = 0
    refused: int = 0
    events_handled: int = 0


class Intake:
    """Routes deliveries to actors (the consumers' callbacks).

    Args:
        directory: the entity actors.
        metrics: counts each command's outcome when it is settled.
        counters: what the node has seen (commands, refusals, events).
        commands_exchange: where producers publish commands (the routing key is checked
            only for what came through it).
        queries_exchange: where producers publish queries; an event that came through
            it was posted by a producer, not by a node, and is refused.
        max_bytes: the largest body accepted.
    """

    def __init__(self, directory: Directory, metrics: NodeMetrics, counters: Counters, *,
                 commands_exchange: str, max_bytes: int, queries_exchange: str = "") -> None:
        self._directory = directory
        self._metrics = metrics
        self._commands_exchange = commands_exchange
        self._queries_exchange = queries_exchange
        self._max_bytes = max_bytes
        self.counters = counters
        self._routes: dict[Consumer, _Route] = {c: _Route() for c in HANDLERS}

    def handler_ref(self, consumer: Consumer) -> pykka.ActorRef[Any] | None:
        """The current actor of a handler (None until it first started).

        Raises:
            KeyError: if ``consumer`` has no handler actor.
        """
        return self._routes[consumer].ref

    def attach(self, consumer: Consumer, ref: pykka.ActorRef[Any]) -> None:
        """Make ``ref`` the handler's actor: deliveries from now on are told to it."""
        route = self._routes[consumer]
        with route.lock:
            route.ref = ref

    def give_back(self, consumer: Consumer) -> None:
        """Requeue what the handler's actor was told and never took up.

        Called before a new actor is attached: the previous one crashed, or skipped
        its mailbox while being stopped, and the broker redelivers what it left.
        """
        route = self._routes[consumer]
        with route.lock:
            pending = list(route.pending)
        for t in pending:
            if not t.submitted:
                t.requeue()

    def on_command(self, delivery: Delivery) -> None:
        try:
            env = Envelope.from_json(delivery.body,
                                     max_bytes=self._max_bytes,
                                     kinds=COMMAND_KINDS)
        except InvalidMessage as exc:
            self.refuse(delivery, exc)
            return
        assert env.apartment_id is not None
        if (delivery.exchange == self._commands_exchange
                and delivery.routing_key != env.apartment_id):
            # The routing key picks the partition: a command routed by anything else
            # lands where its apartment's other commands are not, out of order.
            self.refuse(delivery, InvalidMessage(
                BadInput.WRONG_ROUTING_KEY,
                f"routing key {delivery.routing_key[:100]!r} is not the apartment_id "
                f"{env.apartment_id!r}: publish commands with routing key = apartment_id",
                {"message_id": env.message_id, "correlation_id": env.correlation_id}))
            return
        self.counters.commands += 1
        ticket = ticket_for(delivery)
        self._metrics.measure(env.type, ticket)
        try:
            with handling(env.message_id, env.correlation_id):
                self._directory.dispatch("apartment", env.apartment_id, env, ticket,
                                         source=delivery.queue)
        except RuntimeError:
            ticket.requeue()

    def on_reservation_event(self, delivery: Delivery) -> None:
        env = self._parse(delivery, HANDLER_KINDS)
        if env is None:
            return
        rid = getattr(env.payload, "reservation_id", None)
        spec = spec_for(env.type)
        if rid is None or spec is None or Consumer.RESERVATIONS not in spec.consumers:
            delivery.ack()
            return
        ticket = ticket_for(delivery)
        try:
            self._directory.dispatch("reservation", rid, env, ticket)
        except RuntimeError:
            ticket.requeue()

    def handler_delivery(self, consumer: Consumer, kinds: frozenset[Kind] = HANDLER_KINDS
                          ) -> Callable[[Delivery], None]:
        route = self._routes[consumer]

        def on_delivery(delivery: Delivery) -> None:
            env = self._parse(delivery, kinds)
            if env is None:
                return
            if (env.kind is Kind.EVENT and self._queries_exchange
                    and delivery.exchange == self._queries_exchange):
                # Producers may write the queries exchange, and search binds it: an event
                # posted there would write the read model with what no history holds.
                self.refuse(delivery, InvalidMessage(
                    BadInput.WRONG_KIND,
                    f"{env.type} is an event, and only nodes publish events (they are "
                    f"facts an apartment's history recorded); send a command instead",
                    {"type": env.type, "message_id": env.message_id,
                     "correlation_id": env.correlation_id}))
                return
            spec = spec_for(env.type)
            if spec is None or consumer not in spec.consumers:
                delivery.ack()  # an event of a family this handler ignores
                return
            ticket = ticket_for(delivery)
            with route.lock:
                ref = route.ref
                route.pending.add(ticket)
            ticket.on_settled(lambda t: _discard(route, t))
            self.counters.events_handled += 1
            try:
                if ref is None:
                    raise pykka.ActorDeadError(consumer.value)
                ref.tell(Handle(env, ticket))
            except pykka.ActorDeadError:
                ticket.requeue()

        return on_delivery

    def _parse(self, delivery: Delivery, kinds: frozenset[Kind]) -> Envelope | None:
        try:
            return Envelope.from_json(delivery.body,
                                      max_bytes=self._max_bytes,
                                      kinds=kinds)
        except InvalidMessage as exc:
            self.refuse(delivery, exc)
            return None

    def refuse(self, delivery: Delivery, exc: InvalidMessage) -> None:
        """Dead-letter a body that cannot be handled, answering the producer if it asked."""
        mid = _safe_id(exc.partial.get("message_id")) or _safe_id(delivery.message_id)
        with handling(mid, _safe_id(exc.partial.get("correlation_id"))):
            self._refuse(delivery, exc)

    def _refuse(self, delivery: Delivery, exc: InvalidMessage) -> None:
        self.counters.refused += 1
        log.info("refused a message on %s: %s", delivery.queue, exc)
        # Counted by type only when it is a known one: the label set stays bounded
        # whatever producers send.
        kind = exc.partial.get("type")
        self._metrics.commands.labels(
            kind if isinstance(kind, str) and spec_for(kind) else "invalid", "error").inc()
        reply = None
        if delivery.reply_to:
            mid = _safe_id(exc.partial.get("message_id"))
            corr = _safe_id(exc.partial.get("correlation_id")) or mid or new_id()
            reply = Envelope(correlation_id=corr, causation_id=mid, type="CommandResult",
                             version=1, payload=CommandResult(
                                 status=Status.ERROR, reason=exc.reason.value,
                                 detail=exc.detail)).to_json()
        delivery.dead_letter(exc.reason.value, exc.detail, reply)


def ticket_for(delivery: Delivery) -> Ticket:
    """The ticket an actor gets for ``delivery``: its one outcome settles the delivery."""

    def settle(outcome: Outcome) -> None:
        match outcome.kind:
            case "ack":
                delivery.ack(outcome.reply)
            case "requeue":
                delivery.requeue()
            case "refuse":
                delivery.dead_letter(outcome.reason, outcome.detail, outcome.reply)
            case _:
                assert_never(outcome.kind)

    return Ticket(settle, message_id=delivery.message_id, redelivered=delivery.redelivered)


def _discard(route: _Route, t: Ticket) -> None:
    with route.lock:
        route.pending.discard(t)


def _safe_id(value: object) -> str | None:
    return value if isinstance(value, str) and _ID.match(value) else None
