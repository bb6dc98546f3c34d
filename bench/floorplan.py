"""What the floor (:mod:`bench.floor`) must do for each command: Staybook's decisions, made here.

The floor measures the pipeline, not the rules: it must publish, deliver, store and
acknowledge what Staybook does for the same commands, without deciding anything. So
the benchmark decides for it, before the run, with the real rules
(:func:`rules.apartment.decide` on each apartment's state, as its actor would): per
command, the reply's status and reason and the events recorded, of which those some
consumer is registered for go to the outbox and the broker. The floor's commands
process reads that :class:`Step` by message id (a file, :func:`write_plan`).

What the handlers do in turn comes from the registry too: each published event type
reaches the queues of its consumers (:func:`fanout`); :data:`FOLLOW_ONS` are the
events a handler publishes about one it received (payment charges an acceptance, the
reservation process confirms a charge), and :data:`RECORDED` the handlers that record
an event row for each delivery (the notifier's ``NotificationSent``, the reservation
process's copy of its input). :func:`deliveries` counts what the handler queues get,
so a run knows when the floor is done.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from bench.workload import Command
from messages import Consumer, Envelope
from messages.registry import Kind, all_specs, spec_of
from rules.apartment import Apartment, Rules, decide, evolve, refusal_of

# The handler queue, and the event type it reacts to -> the event it publishes.
FOLLOW_ONS: dict[str, dict[str, str]] = {
    Consumer.PAYMENT.value: {"ReservationAccepted": "PaymentSucceeded"},
    Consumer.RESERVATIONS.value: {"PaymentSucceeded": "ReservationConfirmed"},
}
# Handlers that record one unpublished event row per delivery.
RECORDED: frozenset[str] = frozenset({Consumer.NOTIFIER.value, Consumer.RESERVATIONS.value})


@dataclass(frozen=True)
class Step:
    """One command's outcome: the reply's status and reason, the events it records.

    ``published`` are the events with consumers (outbox and broker), ``private`` the
    others (event rows only, e.g. ``CommandRejected``).
    """

    status: str
    reason: str
    published: tuple[str, ...]
    private: tuple[str, ...]


def fanout() -> dict[str, list[str]]:
    """Each event type with consumers -> its consumers' queue names (unprefixed)."""
    return {s.type: [c.value for c in s.consumers] for s in all_specs()
            if s.kind is Kind.EVENT and s.consumers}


def plan(commands: Sequence[Command], today: date) -> dict[str, Step]:
    """Each command's :class:`Step` by message id, decided as the apartments' actors would."""
    rules = Rules(today=today)
    states: dict[str, Apartment] = {}
    out: dict[str, Step] = {}
    for c in commands:
        env = Envelope.from_json(c.body, max_bytes=1 << 20)
        state = states.get(c.apartment_id) or Apartment(apartment_id=c.apartment_id)
        events = decide(state, env.payload, rules)
        for e in events:
            state = evolve(state, e)
        states[c.apartment_id] = state
        refusal = refusal_of(env.payload, events)
        published = tuple(type(e).__name__ for e in events if spec_of(e).consumers)
        private = tuple(type(e).__name__ for e in events if not spec_of(e).consumers)
        out[c.message_id] = Step("ok" if refusal is None else "rejected",
                                 "" if refusal is None else refusal.reason.value,
                                 published, private)
    return out


def deliveries(steps: Mapping[str, Step], routes: Mapping[str, Sequence[str]]) -> int:
    """How many deliveries the handler queues get for ``steps``, follow-ons included."""
    by_type: dict[str, int] = defaultdict(int)
    for s in steps.values():
        for t in s.published:
            by_type[t] += 1
    total = 0
    while by_type:
        nxt: dict[str, int] = defaultdict(int)
        for t, n in by_type.items():
            for queue in routes.get(t, ()):
                total += n
                if (follow := FOLLOW_ONS.get(queue, {}).get(t)) is not None:
                    nxt[follow] += n
        by_type = nxt
    return total


def write_plan(steps: Mapping[str, Step], path: Path) -> None:
    """One line per command: message id, status, reason, published and private types."""
    path.write_text("".join(f"{mid}\t{s.status}\t{s.reason}\t{','.join(s.published)}\t"
                            f"{','.join(s.private)}\n" for mid, s in steps.items()))
