"""What crosses from the store writer's thread to an entity actor's (actors/inflight.py).

A commit's tickets are answered on the writer's thread the moment it is durable; a
re-send that joins too late gets the same answer; everything else reaches the actor
as an outcome it reads on its own thread, or is given back once the actor stopped.
"""

from __future__ import annotations

import threading

from actors.inflight import Outcomes, Pending, Reply
from actors.outcome import Outcome, Ticket
from messages import AddApartment, Envelope
from messages.replies import CommandResult, Status
from store import ConcurrencyError


def ticket(outcomes: list[Outcome]) -> Ticket:
    return Ticket(outcomes.append, message_id="m1")


def pending(first: Ticket, *, replies: bool = True) -> Pending:
    env = Envelope.new(AddApartment(owner_id="o1", city="Porto", title="Loft",
                                    price_per_night=100, currency="EUR", capacity=2),
                       apartment_id="a1")
    reply = Reply(env.follow(CommandResult(status=Status.OK)).to_json(), "ok")
    return Pending(env, "hash", 7, reply if replies else None, False, first)


def test_a_durable_commit_answers_every_ticket_with_the_finished_reply() -> None:
    settled: list[Outcome] = []
    p = pending(ticket(settled))
    again = ticket(settled)
    p.join(again)
    assert again.submitted and not settled
    assert p.reply is not None
    stored = p.reply.finish(42)
    p.answer()
    assert [(o.kind, o.reply, o.status) for o in settled] == [("ack", stored, "ok")] * 2
    assert b'"position":42' in stored


def test_a_re_send_joining_after_the_answer_gets_the_same_one() -> None:
    settled: list[Outcome] = []
    p = pending(ticket(settled), replies=False)
    p.answer()
    p.join(late := ticket(settled))
    assert late.outcome is not None and late.outcome.kind == "ack"
    assert [(o.kind, o.reply) for o in settled] == [("ack", None)] * 2


def test_tickets_taken_back_are_the_takers_and_a_late_one_is_given_back() -> None:
    settled: list[Outcome] = []
    first = ticket(settled)
    p = pending(first)
    p.join(second := ticket(settled))
    assert p.take() == [first, second] and not settled
    p.join(late := ticket(settled))
    assert late.outcome is not None and late.outcome.kind == "requeue"
    assert p.take() == []


def test_outcomes_are_read_in_order_and_refused_once_closed() -> None:
    outcomes = Outcomes()
    a, b = pending(ticket([])), pending(ticket([]))
    refused = ConcurrencyError("stale")
    assert not outcomes
    assert outcomes.put(a, None) and outcomes.put(b, refused)
    assert outcomes.first() == (a, None)
    outcomes.drop_first()
    assert outcomes.close() == [(b, refused)]
    assert not outcomes.put(a, None) and not outcomes


def test_outcomes_put_from_another_thread_are_all_read() -> None:
    outcomes = Outcomes()
    items = [pending(ticket([])) for _ in range(200)]
    writer = threading.Thread(target=lambda: [outcomes.put(p, None) for p in items])
    writer.start()
    read: list[Pending] = []
    while writer.is_alive() or outcomes:
        if outcomes:
            read.append(outcomes.first()[0])
            outcomes.drop_first()
    writer.join()
    assert read == items
