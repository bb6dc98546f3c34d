"""The booking lifecycle end to end over a real RabbitMQ: one test per flow."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from email.message import Message as EmailMessage
from typing import Any

import pika
import pytest
from aiosmtpd.controller import Controller

from actors.channels import SmtpChannel
from actors.notifier import notifications
from actors.payment import SimulatedGateway
from actors.timers import pending_timers
from broker.client import Client
from console.demo import run_lifecycle_demo
from messages import (
    AcceptReservation,
    AddApartment,
    CancelReservation,
    CancelUnpaidReservation,
    DelistApartment,
    Envelope,
    Message,
    RelistApartment,
    RequestReservation,
    SearchApartments,
    spec_of,
)
from node import Node
from tests.conftest import TODAY, day, eventually


def send(c: Client, payload: Message, apt: str | None = "a1") -> dict[str, Any]:
    data: dict[str, Any] = c.request(Envelope.new(payload, apartment_id=apt),
                                     timeout=20).payload.model_dump(mode="json")
    return data


def types(node: Node, stream: str) -> list[str]:
    return [e.type for e in node.store.load(stream)]


def subjects(node: Node, who: str) -> list[str]:
    return [str(n["subject"]) for n in notifications(node.engine, who)]


def offered(c: Client, start: int, end: int, apt: str = "a1") -> bool:
    r = send(c, SearchApartments(city="Porto", start=day(start), end=day(end)), None)
    return apt in [a["apartment_id"] for a in r["apartments"]]


def add(c: Client, apt: str = "a1") -> None:
    r = send(c, AddApartment(owner_id="olga", city="Porto", title="Loft",
                             price_per_night=5000, currency="EUR", capacity=2), apt)
    assert r["status"] == "ok", r


def req(rid: str, start: int, end: int, guest: str = "gil",
        token: str = "tok_visa") -> RequestReservation:
    return RequestReservation(reservation_id=rid, guest_id=guest, start=day(start),
                              end=day(end), card_token=token, card_last4="1111")


def test_cancel_and_refund(node: Node, client: Client) -> None:
    """Flaky gateway answers are retried: one charge, one refund, dates back in search."""
    add(client)
    eventually(lambda: offered(client, 20, 21))
    assert send(client, req("r1", 20, 23, token="tok_flaky_1"))["status"] == "ok"
    assert send(client, AcceptReservation(reservation_id="r1", owner_id="olga"))[
        "status"] == "ok"
    eventually(lambda: "ReservationConfirmed" in types(node, "reservation:r1"))
    eventually(lambda: not offered(client, 20, 21))

    r = send(client, CancelReservation(reservation_id="r1", by="gil"))
    assert r["status"] == "ok", r
    cancelled = r["events"][0]
    assert cancelled["type"] == "ReservationCancelled"
    assert cancelled["refund_amount"] == 15000  # 13 days ahead: the full price back

    eventually(lambda: types(node, "refund:r1") == ["RefundIssued"])
    assert isinstance(node.gateway, SimulatedGateway)
    assert node.gateway.charges_for("r1") == 1
    assert node.gateway.refunds_for("r1") == [15000]
    eventually(lambda: "Refund issued" in subjects(node, "gil"))
    eventually(lambda: "Reservation cancelled" in subjects(node, "olga"))
    eventually(lambda: offered(client, 20, 21))
    again = send(client, CancelReservation(reservation_id="r1", by="gil"))
    assert again["reason"] == "not_accepted"


def test_payment_failure_is_compensated(node: Node, client: Client) -> None:
    """A declined card cancels the booking, frees the dates and tells the guest."""
    add(client)
    eventually(lambda: offered(client, 5, 8))
    send(client, req("r1", 5, 8, token="tok_decline_x"))
    assert send(client, AcceptReservation(reservation_id="r1", owner_id="olga"))[
        "status"] == "ok"
    eventually(lambda: "ReservationCancelled" in types(node, "apartment:a1"))
    cancelled = [e.payload for e in node.store.load("apartment:a1")
                 if e.type == "ReservationCancelled"]
    assert [c.model_dump()["reason"] for c in cancelled] == ["payment_failed"]
    eventually(lambda: "Payment failed" in subjects(node, "gil"))
    eventually(lambda: "Reservation cancelled" in subjects(node, "olga"))
    assert "Booking confirmed" not in subjects(node, "gil")
    eventually(lambda: offered(client, 5, 8))
    # the dates can be booked again
    assert send(client, req("r2", 6, 7, guest="hal"))["status"] == "ok"
    assert send(client, AcceptReservation(reservation_id="r2", owner_id="olga"))[
        "status"] == "ok"
    eventually(lambda: "ReservationConfirmed" in types(node, "reservation:r2"))
    assert types(node, "refund:r1") == []  # nothing was taken, nothing given back


def test_expiry_survives_a_node_restart(node_factory: Callable[..., Node],
                                        amqp_url: str) -> None:
    """The timer is written with the request; a node that starts later fires it."""
    first = node_factory(lifecycle={"request_ttl_seconds": 0.2,
                                    "timer_poll_seconds": 3600})
    with Client(amqp_url, first.topology) as c:
        add(c)
        assert send(c, req("r1", 3, 5))["status"] == "ok"
        assert send(c, req("r2", 8, 9))["status"] == "ok"
        assert send(c, AcceptReservation(reservation_id="r2", owner_id="olga"))[
            "status"] == "ok"
    assert [t["timer_id"] for t in pending_timers(first.engine)] == ["expire:r1"]
    first.stop()  # its timer service never polled (once an hour)

    second = node_factory(lifecycle={"timer_poll_seconds": 0.05})
    eventually(lambda: "ReservationExpired" in types(second, "apartment:a1"))
    eventually(lambda: "Your request expired" in subjects(second, "gil"))
    assert pending_timers(second.engine) == []
    with Client(amqp_url, second.topology) as c:
        late = send(c, AcceptReservation(reservation_id="r1", owner_id="olga"))
        assert late["reason"] == "not_pending"
    expired = types(second, "apartment:a1").count("ReservationExpired")
    assert expired == 1


def test_delist_with_pending_requests(node: Node, client: Client) -> None:
    add(client)
    send(client, req("r1", 3, 5, guest="gil"))
    send(client, req("r2", 4, 6, guest="hal"))
    eventually(lambda: offered(client, 3, 5))
    r = send(client, DelistApartment(owner_id="olga"))
    assert r["status"] == "ok", r
    assert sorted((e.get("reservation_id"), e.get("reason")) for e in r["events"][1:]) == [
        ("r1", "apartment_delisted"), ("r2", "apartment_delisted")]
    eventually(lambda: not offered(client, 10, 11))
    eventually(lambda: "Your request was not accepted" in subjects(node, "hal"))
    assert send(client, req("r3", 10, 11))["reason"] == "apartment_delisted"
    assert send(client, AcceptReservation(reservation_id="r1", owner_id="olga"))[
        "reason"] == "not_pending"
    assert send(client, RelistApartment(owner_id="olga"))["status"] == "ok"
    eventually(lambda: offered(client, 10, 11))


def test_a_stranger_is_refused_logged_and_changes_nothing(
        node: Node, client: Client, caplog: pytest.LogCaptureFixture) -> None:
    add(client)
    send(client, req("r1", 3, 5))
    send(client, AcceptReservation(reservation_id="r1", owner_id="olga"))
    before = types(node, "apartment:a1")
    with caplog.at_level(logging.WARNING, logger="actors.apartment"):
        r = send(client, CancelReservation(reservation_id="r1", by="mallory"))
        d = send(client, DelistApartment(owner_id="mallory"))
        u = send(client, CancelUnpaidReservation(reservation_id="r1", reason="forged"))
    assert (r["reason"], d["reason"]) == ("not_guest", "not_owner")
    assert u["reason"] == "payment_not_failed"
    assert types(node, "apartment:a1") == [*before, *["CommandRejected"] * 3]
    assert sum("mallory" in m for m in caplog.messages) == 2
    assert sum("payment_not_failed" in m for m in caplog.messages) == 1
    eventually(lambda: offered(client, 10, 11))  # still listed


def body(m: EmailMessage) -> str:
    payload = m.get_payload(decode=True)
    return payload.decode() if isinstance(payload, bytes) else ""


class _Inbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
        import email

        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[_Inbox, int]]:
    """A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps what it receives."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def test_email_once_per_notification_even_on_redelivery(
        node: Node, client: Client, amqp_url: str,
        smtp_server: tuple[_Inbox, int]) -> None:
    inbox, port = smtp_server
    smtp = SmtpChannel(node.engine, node.writer, host="127.0.0.1", port=port,
                       sender="staybook@staybook.test",
                       address_of=lambda who: f"{who}@staybook.test", poll_interval=0.05)
    smtp.start()
    try:
        add(client)
        send(client, req("r1", 3, 5))
        eventually(lambda: len(inbox.messages) == 1)
        # the broker delivers the same event again, twice
        requested = next(e for e in node.store.load("apartment:a1")
                         if e.type == "ReservationRequested")
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            ch = conn.channel()
            for _ in range(2):
                ch.basic_publish(node.topology.exchange(spec_of(requested.payload).exchange),
                                 "a1", requested.to_json())
        finally:
            conn.close()
        send(client, req("r2", 6, 7, guest="hal"))  # queued behind the duplicates
        eventually(lambda: any("r2" in body(m) for m in inbox.messages))
        assert ["r1" in body(m) for m in inbox.messages] == [True, False]
        assert [m["To"] for m in inbox.messages] == ["olga@staybook.test"] * 2
        assert len({m["Message-ID"] for m in inbox.messages}) == 2
        assert [m["Subject"] for m in inbox.messages] == ["New booking request"] * 2
        assert len(notifications(node.engine, "olga")) == 2
    finally:
        smtp.stop()
    restarted = SmtpChannel(node.engine, node.writer, host="127.0.0.1", port=port,
                            sender="staybook@staybook.test",
                            address_of=lambda who: f"{who}@staybook.test", poll_interval=0.05)
    assert restarted.send_pending() == 0  # a restarted channel sends nothing again
    assert len(inbox.messages) == 2


def test_the_second_demo_shows_cancellation_and_payment_failure(
        node: Node, amqp_url: str) -> None:
    lines: list[str] = []
    result = run_lifecycle_demo(amqp_url, node.topology, out=lines.append, today=TODAY)
    text = "\n".join(lines)
    assert "The story holds" in text and "payment_failed" in text
    assert [e["type"] for e in result.events].count("RefundIssued") == 1
