"""An apartment never added is not kept live after its refusal.

A command for an unknown apartment activates its actor to be refused; kept, that
actor showed in ``ctl tree`` as if it ran something, and held a slot under the cap.
"""

from __future__ import annotations

from messages import AcceptReservation, AddApartment, RequestReservation
from node import Node
from tests.conftest import MemoryProducer, day, eventually


def test_an_unknown_apartments_actor_passivates_after_answering(
        memory_node: Node, producer: MemoryProducer) -> None:
    d = memory_node.directory
    before = d.passivations
    reply = producer.send(RequestReservation(reservation_id="r1", guest_id="g",
                                             start=day(3), end=day(5)), "nobody-1")
    assert (reply["status"], reply["reason"]) == ("rejected", "unknown_apartment")
    eventually(lambda: d.ref("apartment:nobody-1") is None)
    assert d.passivations == before + 1
    assert "apartment:nobody-1" not in [r["id"] for r in d.which_children()]
    # It comes back for its next command, and is refused the same way.
    again = producer.send(AcceptReservation(reservation_id="r1", owner_id="o"), "nobody-1")
    assert again["reason"] == "unknown_apartment"
    eventually(lambda: d.ref("apartment:nobody-1") is None)


def test_a_listed_apartment_stays_live(memory_node: Node, producer: MemoryProducer) -> None:
    d = memory_node.directory
    assert producer.send(AddApartment(owner_id="o", city="Oslo", title="T",
                                      price_per_night=100, currency="EUR", capacity=2),
                         "real-1")["status"] == "ok"
    refused = producer.send(AcceptReservation(reservation_id="r9", owner_id="o"), "real-1")
    assert refused["reason"] == "unknown_reservation"
    assert d.ref("apartment:real-1") is not None  # answered, and still live
    assert d.passivations == 0

