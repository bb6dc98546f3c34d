"""The demo's scenarios, told through real messages on RabbitMQ.

``run_demo``, the talk's scenario: an owner adds an apartment; guest A asks for next
week and the owner accepts; guest B asks for next Friday and hears "already taken";
A's card is charged; A is notified; search no longer offers those dates.
``run_lifecycle_demo``: a cancellation with its refund, then a declined card and its
compensation. Every command, reply and event is printed; the events are read from a
tap queue bound to every event exchange.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import pika

from broker.client import Client
from broker.membership import NodeNameInUse, StoreMismatch
from broker.rabbitmq import connection_parameters
from broker.topology import Topology
from config import redact_url
from messages import (
    AcceptReservation,
    AddApartment,
    CancelReservation,
    Envelope,
    Message,
    RequestReservation,
    SearchApartments,
)
from messages.registry import event_exchanges
from supervisor import ThreadService


def refusal(exc: NodeNameInUse | StoreMismatch) -> str:
    """The one line the demo ends with when it meets a node it must not join: another
    node's name, or a cluster on another store (half its commands would land there)."""
    if isinstance(exc, NodeNameInUse):
        return (f"staybook demo: {exc}; stop that node first (or set STAYBOOK_NODE_NAME)")
    return (f"staybook demo: node {exc.node} already runs on this broker with another store "
            f"({redact_url(exc.store or '?')}, not the demo's {exc.own or '?'}); stop it "
            f"first, or run the demo on its store (STAYBOOK_DATABASE_URL)")


@dataclass
class DemoResult:
    """What the demo saw, for its end-to-end test."""

    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    search_before: int = 0
    search_after: int = 0
    notified_a: list[str] | None = None  # guest A's notification subjects, if readable

ACCEPTED_NOTICES = ("Your request was accepted", "Booking confirmed")


class EventTap(ThreadService):
    """An exclusive queue bound to every event exchange, read on its own thread."""

    def __init__(self, url: str, topology: Topology,
                 on_event: Callable[[dict[str, Any]], None]) -> None:
        super().__init__("event-tap")
        self._conn = pika.BlockingConnection(connection_parameters(url))
        ch = self._conn.channel()
        q = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        for ex in event_exchanges():
            ch.queue_bind(q, topology.exchange(ex))
        ch.basic_consume(q, lambda _c, _m, _p, body: on_event(json.loads(body)), auto_ack=True)
        self.start()

    def run(self) -> None:
        """Read events until stopped, then close the connection."""
        while not self.stopping():
            self._conn.process_data_events(time_limit=0.1)
        self._conn.close()

    def close(self) -> None:
        """Stop reading and close (waiting 5 s at most)."""
        self.stop(5)


def next_week(today: date) -> tuple[date, date, date]:
    """Next Monday, the Monday after, and the Friday in between."""
    monday = today + timedelta(days=7 - today.weekday())
    return monday, monday + timedelta(days=7), monday + timedelta(days=4)


def run_demo(url: str, topology: Topology | None = None, *,
             out: Callable[[str], None] = print, today: date | None = None,
             settle_timeout: float = 20.0,
             notified: Callable[[str], list[str]] | None = None) -> DemoResult:
    """Run the scenario against the node(s) behind ``url``.

    Args:
        notified: the subjects of a person's stored notifications, when the caller
            can read the store (the demo's own node); without it the demo does not
            claim anything about notifications.

    Raises:
        AssertionError: when the story does not end as it must.
    """
    topo = topology or Topology()
    result = DemoResult()
    lock = threading.Lock()
    suffix = uuid.uuid4().hex[:8]  # fresh per run, in any process
    apt, owner, guest_a, guest_b = f"apt-{suffix}", f"olivia-{suffix}", f"ana-{suffix}", \
        f"ben-{suffix}"
    mine: set[str] = set()

    def on_event(ev: dict[str, Any]) -> None:
        with lock:
            if ev.get("correlation_id") in mine:
                result.events.append(ev)
                out(f"    event  {ev['type']:<22} {_brief(ev['payload'])}")

    tap = EventTap(url, topo, on_event)
    client = Client(url, topo)
    try:
        def send(label: str, payload: Message, apartment: str | None = apt) -> dict[str, Any]:
            env = Envelope.new(payload, apartment_id=apartment)
            with lock:
                mine.add(env.correlation_id)
            sent = _brief(payload.model_dump(mode="json"))
            out(f"\n>>> {label}\n    send   {env.type:<22} {sent}")
            reply = client.request(env, timeout=10).payload.model_dump(mode="json")
            out(f"    reply  {_brief(reply)}")
            time.sleep(0.3)
            client.pump(0)
            return reply

        monday, next_monday, friday = next_week(today or date.today())
        result.replies["add"] = send("An owner adds an apartment", AddApartment(
            owner_id=owner, city="Lisbon", title="Sunny flat in Alfama",
            price_per_night=9500, currency="EUR", capacity=3))
        # Read your own write: the reply's position, given as ``after``, makes search
        # answer only once its copy includes the new apartment (no polling).
        added_at = result.replies["add"].get("position")
        result.search_before = _count(client, topo, monday, next_monday, apt, after=added_at)
        out(f"\n    search (after position {added_at}) for {monday}..{next_monday} in "
            f"Lisbon offers {apt}: {result.search_before == 1}")
        result.replies["request_a"] = send(
            f"Guest A asks for next week ({monday} to {next_monday})",
            RequestReservation(reservation_id=f"res-a-{suffix}", guest_id=guest_a,
                               start=monday, end=next_monday, guests=2))
        result.replies["accept_a"] = send("The owner accepts", AcceptReservation(
            reservation_id=f"res-a-{suffix}", owner_id=owner))
        result.replies["request_b"] = send(
            f"Guest B asks for next Friday ({friday})",
            RequestReservation(reservation_id=f"res-b-{suffix}", guest_id=guest_b,
                               start=friday, end=friday + timedelta(days=1)))

        def settled() -> bool:
            with lock:
                types = [e["type"] for e in result.events]
            if "ReservationConfirmed" not in types:
                return False
            if notified is not None:
                result.notified_a = notified(guest_a)
                return set(ACCEPTED_NOTICES) <= set(result.notified_a)
            return True
        _wait(settled, settle_timeout)
        _wait(lambda: _count(client, topo, monday, next_monday, apt) == 0, settle_timeout)
        result.search_after = _count(client, topo, monday, next_monday, apt)
        out(f"\n    search for {monday}..{next_monday} in Lisbon offers {apt}: "
            f"{result.search_after == 1}")
    finally:
        client.close()
        time.sleep(0.2)
        tap.close()
    _check(result)
    out(f"\nThe story holds: A booked and charged once, B told 'already taken', "
        f"{_told(result)}, the dates gone from search.")
    return result


def _told(r: DemoResult) -> str:
    """What the demo can say about guest A's notifications: only what it checked."""
    if r.notified_a is None:
        return "A's notifications not checked (no access to the store)"
    return "A notified (" + ", ".join(ACCEPTED_NOTICES) + ")"


def _count(client: Client, topo: Topology, start: date, end: date, apt: str,
           after: int | None = None) -> int:
    env = Envelope.new(SearchApartments(city="Lisbon", start=start, end=end, limit=100,
                                        after=after))
    reply = client.request(env, timeout=10).payload.model_dump(mode="json")
    return sum(1 for a in reply["apartments"] if a["apartment_id"] == apt)


def _wait(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not pred():
        time.sleep(0.1)


def _check(r: DemoResult) -> None:
    types = [e["type"] for e in r.events]
    assert r.replies["add"]["status"] == "ok", r.replies["add"]
    assert r.replies["request_a"]["status"] == "ok", r.replies["request_a"]
    assert r.replies["accept_a"]["status"] == "ok", r.replies["accept_a"]
    assert r.replies["request_b"]["status"] == "rejected", r.replies["request_b"]
    assert r.replies["request_b"]["reason"] == "already_taken", r.replies["request_b"]
    assert types.count("PaymentSucceeded") == 1, types
    assert types.count("ReservationConfirmed") == 1, types
    assert r.search_before == 1 and r.search_after == 0, (r.search_before, r.search_after)
    if r.notified_a is not None:
        assert set(ACCEPTED_NOTICES) <= set(r.notified_a), r.notified_a


def _brief(data: dict[str, Any]) -> str:
    keep = {k: v for k, v in data.items() if k not in ("events", "card_token", "description")
            and v not in (None, "")}
    text = json.dumps(keep, default=str)
    return text if len(text) < 160 else text[:157] + "..."


@dataclass
class LifecycleResult:
    """What the second scenario saw, for its end-to-end test."""

    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    search_booked: int = 0
    search_after: int = 0


def run_lifecycle_demo(url: str, topology: Topology | None = None, *,
                       out: Callable[[str], None] = print, today: date | None = None,
                       settle_timeout: float = 20.0) -> LifecycleResult:
    """The second scenario: a cancellation with its refund, then a payment that fails.

    Guest A books the week after next and cancels (more than 7 days ahead: the full
    price comes back). Guest B asks for the same week with a card that is declined:
    the owner accepts, the charge fails, the reservation process cancels it and the
    week is free again.

    Raises:
        AssertionError: when the story does not end as it must.
    """
    topo = topology or Topology()
    result = LifecycleResult()
    lock = threading.Lock()
    suffix = uuid.uuid4().hex[:8]  # fresh per run, in any process
    apt, owner, guest_a, guest_b = (f"apt-{suffix}", f"olivia-{suffix}", f"ana-{suffix}",
                                    f"ben-{suffix}")
    rid_a, rid_b = f"res-a-{suffix}", f"res-b-{suffix}"
    mine: set[str] = set()

    def on_event(ev: dict[str, Any]) -> None:
        with lock:
            if ev.get("correlation_id") in mine:
                result.events.append(ev)
                out(f"    event  {ev['type']:<22} {_brief(ev['payload'])}")

    def seen(kind: str, n: int = 1) -> Callable[[], bool]:
        def check() -> bool:
            with lock:
                return [e["type"] for e in result.events].count(kind) >= n
        return check

    tap = EventTap(url, topo, on_event)
    client = Client(url, topo)
    try:
        def send(label: str, payload: Message) -> dict[str, Any]:
            env = Envelope.new(payload, apartment_id=apt)
            with lock:
                mine.add(env.correlation_id)
            out(f"\n>>> {label}\n    send   {env.type:<22} "
                f"{_brief(payload.model_dump(mode='json'))}")
            reply = client.request(env, timeout=10).payload.model_dump(mode="json")
            out(f"    reply  {_brief(reply)}")
            return reply

        monday, _next, _friday = next_week(today or date.today())
        start, end = monday + timedelta(days=7), monday + timedelta(days=14)
        result.replies["add"] = send("An owner adds an apartment", AddApartment(
            owner_id=owner, city="Lisbon", title="Quiet flat in Graça",
            price_per_night=8000, currency="EUR", capacity=2))
        result.replies["request_a"] = send(
            f"Guest A asks for the week after next ({start} to {end})",
            RequestReservation(reservation_id=rid_a, guest_id=guest_a, start=start, end=end))
        result.replies["accept_a"] = send("The owner accepts", AcceptReservation(
            reservation_id=rid_a, owner_id=owner))
        _wait(seen("ReservationConfirmed"), settle_timeout)
        _wait(lambda: _count(client, topo, start, end, apt) == 0, settle_timeout)
        result.search_booked = _count(client, topo, start, end, apt)
        result.replies["cancel_a"] = send(
            "Guest A cancels, more than 7 days ahead: a full refund",
            CancelReservation(reservation_id=rid_a, by=guest_a))
        _wait(seen("RefundIssued"), settle_timeout)
        result.replies["request_b"] = send(
            "Guest B asks for the same week, with a card that will be declined",
            RequestReservation(reservation_id=rid_b, guest_id=guest_b, start=start, end=end,
                               card_token="tok_decline_demo", card_last4="0002"))
        result.replies["accept_b"] = send("The owner accepts", AcceptReservation(
            reservation_id=rid_b, owner_id=owner))
        _wait(seen("ReservationCancelled", 2), settle_timeout)
        _wait(lambda: _count(client, topo, start, end, apt) == 1, settle_timeout)
        result.search_after = _count(client, topo, start, end, apt)
        out(f"\n    search for {start}..{end} in Lisbon offers {apt} again: "
            f"{result.search_after == 1}")
    finally:
        client.close()
        time.sleep(0.2)
        tap.close()
    _check_lifecycle(result)
    out("\nThe story holds: A cancelled and got the full price back, B's card was declined, "
        "B's booking was cancelled and the week is free again.")
    return result


def _check_lifecycle(r: LifecycleResult) -> None:
    types = [e["type"] for e in r.events]
    for step in ("add", "request_a", "accept_a", "cancel_a", "request_b", "accept_b"):
        assert r.replies[step]["status"] == "ok", (step, r.replies[step])
    cancelled = [e["payload"] for e in r.events if e["type"] == "ReservationCancelled"]
    assert [(c["cancelled_by"], c["reason"]) for c in cancelled] == [
        ("guest", "cancelled_by_guest"), ("system", "payment_failed")], cancelled
    refunds = [e["payload"]["amount"] for e in r.events if e["type"] == "RefundIssued"]
    assert refunds == [cancelled[0]["total_price"]], refunds
    assert types.count("PaymentFailed") == 1, types
    assert types.count("PaymentSucceeded") == 1, types
    assert r.search_booked == 0 and r.search_after == 1, (r.search_booked, r.search_after)
