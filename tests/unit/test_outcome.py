"""The ticket an actor settles, and how the intake passes its outcome to the delivery.

A ticket takes one outcome, whoever gives it first (the actor's commit, a crash
handler, a shutdown); its observers see it before it is passed on, once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from actors.outcome import Outcome, Ticket
from broker.base import DETAIL_HEADER, REASON_HEADER, Delivery
from node.intake import ticket_for


def test_the_first_outcome_wins_and_is_passed_on_once() -> None:
    passed: list[Outcome] = []
    t = Ticket(passed.append, message_id="m1", redelivered=True)
    assert (t.message_id, t.redelivered, t.settled, t.submitted) == ("m1", True, False, False)
    t.refuse("poison", "it broke", b"sorry")
    t.ack(b"late")
    t.requeue()
    assert t.settled
    assert passed == [Outcome("refuse", b"sorry", "poison", "it broke")]
    assert t.outcome == passed[0]


def test_observers_see_the_outcome_before_it_is_passed_on() -> None:
    seen: list[str] = []
    t = Ticket(lambda o: seen.append(f"passed {o.kind}"))
    t.on_settled(lambda x: seen.append(f"observed {x.outcome and x.outcome.kind}"))
    t.ack(b"r")
    t.on_settled(lambda x: seen.append("late observer, at once"))
    assert seen == ["observed ack", "passed ack", "late observer, at once"]


def race(t: Ticket) -> None:
    """Give ``t`` all three outcomes at once, from three threads."""
    go = threading.Barrier(3)
    acts: list[Callable[[], None]] = [t.ack, t.requeue, lambda: t.refuse("r", "d")]

    def give(act: Callable[[], None]) -> None:
        go.wait()
        act()

    threads = [threading.Thread(target=give, args=(a,)) for a in acts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def test_racing_outcomes_settle_once() -> None:
    for _ in range(50):
        passed: list[Outcome] = []
        observed: list[Ticket] = []
        t = Ticket(passed.append)
        t.on_settled(observed.append)
        race(t)
        assert len(passed) == 1 and observed == [t] and t.outcome == passed[0]


class Recorded(Delivery):
    """A delivery that records what reached the broker."""

    def __init__(self) -> None:
        super().__init__(b"{}", queue="q", reply_to="amq.rabbitmq.reply-to",
                         message_id="m9", redelivered=True)
        self.sent: list[tuple[str, Any]] = []

    def _ack(self, reply: bytes | None) -> None:
        self.sent.append(("ack", reply))

    def _requeue(self) -> None:
        self.sent.append(("requeue", None))

    def _dead_letter(self, headers: dict[str, Any], reply: bytes | None) -> None:
        self.sent.append(("dead_letter", (headers[REASON_HEADER], headers[DETAIL_HEADER],
                                          reply)))


@pytest.mark.parametrize(("give", "sent"), [
    (lambda t: t.ack(b"ok"), ("ack", b"ok")),
    (lambda t: t.requeue(), ("requeue", None)),
    (lambda t: t.refuse("poison", "it broke", b"err"),
     ("dead_letter", ("poison", "it broke", b"err"))),
])
def test_the_intake_settles_the_delivery_with_the_tickets_outcome(
        give: Any, sent: tuple[str, Any]) -> None:
    d = Recorded()
    t = ticket_for(d)
    assert (t.message_id, t.redelivered) == ("m9", True)
    give(t)
    t.ack(b"again")  # ignored: the ticket is settled
    assert d.sent == [sent] and d.settled


def test_metrics_count_the_status_the_actor_gave_without_parsing_the_reply() -> None:
    """An ack with a status is counted by it (the reply is not read); one without is
    counted by the reply's own status."""
    from node.metrics import NodeMetrics
    m = NodeMetrics("n1")
    told = Ticket(lambda _o: None)
    m.measure("AddApartment", told)
    told.ack(b"not json at all", status="rejected")
    parsed = Ticket(lambda _o: None)
    m.measure("AddApartment", parsed)
    parsed.ack(b'{"payload": {"status": "rejected"}}')
    assert m.registry.get_sample_value(
        "staybook_commands_total", {"type": "AddApartment", "outcome": "rejected"}) == 2
