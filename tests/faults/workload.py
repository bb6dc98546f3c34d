"""The drill's producers: booking traffic and poison, each recording a history.

Every producer thread has its own :class:`broker.client.Client` and its own
apartments (so it knows their owner), and sends, one at a time, AddApartment,
RequestReservation (overlapping dates on purpose), AcceptReservation,
RejectReservation and CancelReservation (mostly by the guest, of stays it accepted,
whatever their payment's outcome so far), and now and then re-sends an answered
command with the same ``message_id``. A fifth of the requests carry a card token the
simulated gateway treats as faulty (declined, answer lost once, never answered, or a
refund never answered), so every end of a booking's life is reached: confirmed,
cancelled for a failed payment, cancelled with a refund. For each command the history
records whether the broker confirmed it and every reply that came back.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from pika.exceptions import AMQPError

from broker.client import Client, NoReply, NotConfirmed
from broker.topology import Topology
from messages import (
    AcceptReservation,
    AddApartment,
    CancelReservation,
    Envelope,
    Message,
    RejectReservation,
    RequestReservation,
    new_id,
)

# A fifth of the charges meet a faulty gateway (see actors.payment.SimulatedGateway).
FAULTY_TOKENS = ("tok_decline_drill", "tok_flaky_drill", "tok_timeout_drill",
                 "tok_norefund_drill")


@dataclass
class Op:
    """One command as the producer saw it."""

    message_id: str
    type: str
    apartment_id: str
    reservation_id: str | None
    body: bytes
    confirmed: bool = False
    replies: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    resend_of: str | None = None


@dataclass
class Poison:
    """One malformed message and the reason the intake must give for it."""

    message_id: str
    reason: str
    confirmed: bool = False


@dataclass
class History:
    """Everything the producers sent and heard; appended to from many threads."""

    ops: list[Op] = field(default_factory=list)
    poison: list[Poison] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: Op) -> None:
        """Record an operation."""
        with self.lock:
            self.ops.append(op)


class Producer(threading.Thread):
    """One booking producer; stops starting commands when ``stop`` is set."""

    def __init__(self, index: int, url: str, topology: Topology, history: History,
                 stop: threading.Event, *, seed: int, attempts: int = 25,
                 attempt_timeout: float = 5.0, hot: tuple[str, ...] = ()) -> None:
        super().__init__(name=f"producer-{index}", daemon=True)
        self.index = index
        self.url = url
        self.topology = topology
        self.history = history
        self.stop_event = stop
        self.rng = random.Random(seed * 1000 + index)
        self.attempts = attempts
        self.attempt_timeout = attempt_timeout
        self.apartments = [f"d{index}-a{k}" for k in range(3)]
        # Apartments every producer books (and accepts on): their accepts race.
        self.hot = hot
        # (apartment, reservation, guest): requests answered ok, then stays accepted
        self.pending: list[tuple[str, str, str]] = []
        self.accepted: list[tuple[str, str, str]] = []
        self.answered: list[Op] = []
        self.client: Client | None = None
        self.base = date.today() + timedelta(days=10)

    def owner(self, apartment: str) -> str:
        """The owner of one of this producer's apartments."""
        return f"owner-{apartment}"

    def run(self) -> None:
        """Add the apartments, then book until stopped."""
        try:
            for apt in self.apartments + (list(self.hot) if self.index == 0 else []):
                self.send(AddApartment(owner_id=self.owner(apt), city="Lisbon",
                                       title=f"Flat {apt}", price_per_night=10_000,
                                       currency="EUR", capacity=4), apt)
            n = 0
            while not self.stop_event.is_set() and n < 1_000_000:
                n += 1
                self.step()
        finally:
            if self.client is not None:
                self.client.close()

    def step(self) -> None:
        """One random command."""
        r = self.rng.random()
        if r < 0.01:  # a new apartment now and then, so long drills keep booking
            apt = f"d{self.index}-a{len(self.apartments)}"
            self.send(AddApartment(owner_id=self.owner(apt), city="Lisbon",
                                   title=f"Flat {apt}", price_per_night=10_000,
                                   currency="EUR", capacity=4), apt)
            self.apartments.append(apt)
        elif r < 0.05 and self.answered:
            op = self.rng.choice(self.answered)
            self.resend(op)
        elif r < 0.35 and self.pending:
            apt, rid, guest = self.pending.pop(self.rng.randrange(len(self.pending)))
            cls = AcceptReservation if self.rng.random() < 0.75 else RejectReservation
            op = self.send(cls(reservation_id=rid, owner_id=self.owner(apt)), apt)
            if cls is AcceptReservation and _ok(op):
                self.accepted.append((apt, rid, guest))
        elif r < 0.40 and self.accepted:
            # Cancel a stay (a guest's mostly), sometimes before its payment's outcome.
            apt, rid, guest = self.accepted.pop(self.rng.randrange(len(self.accepted)))
            by = guest if self.rng.random() < 0.8 else self.owner(apt)
            self.send(CancelReservation(reservation_id=rid, by=by), apt)
        else:
            hot = bool(self.hot) and self.rng.random() < 0.5
            apt = self.rng.choice(self.hot if hot else self.apartments[-3:])
            start = self.base + timedelta(days=self.rng.randint(0, 40))
            token = (self.rng.choice(FAULTY_TOKENS) if self.rng.random() < 0.2
                     else "tok_visa")
            rid = f"r-{new_id()}"
            guest = f"guest-{self.index}-{self.rng.randint(0, 9)}"
            op = self.send(RequestReservation(
                reservation_id=rid, guest_id=guest,
                start=start, end=start + timedelta(days=self.rng.randint(1, 5)),
                guests=1, card_token=token), apt)
            if _ok(op):
                self.pending.append((apt, rid, guest))

    def _client(self) -> Client | None:
        if self.client is not None:
            return self.client
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                self.client = Client(self.url, self.topology)
                return self.client
            except (AMQPError, OSError):
                time.sleep(0.5)
        return None

    def send(self, payload: Message, apartment_id: str) -> Op:
        """Send a new command and record it."""
        env = Envelope.new(payload, apartment_id=apartment_id)
        op = Op(env.message_id, env.type, apartment_id,
                getattr(payload, "reservation_id", None), env.to_json())
        self.history.add(op)
        self._request(env, op)
        if op.replies:
            self.answered.append(op)
        return op

    def resend(self, original: Op) -> None:
        """Send an answered command again, same message id: the inbox must answer."""
        env = Envelope.from_json(original.body)
        op = Op(env.message_id, env.type, original.apartment_id, original.reservation_id,
                original.body, resend_of=original.message_id)
        self.history.add(op)
        self._request(env, op)

    def _request(self, env: Envelope, op: Op) -> None:
        client = self._client()
        if client is None:
            op.error = "no connection"
            return

        def confirmed() -> None:
            op.confirmed = True

        try:
            reply = client.request(env, timeout=self.attempt_timeout,
                                   retries=self.attempts - 1, on_confirmed=confirmed)
            op.replies.append(reply.payload.model_dump(mode="json"))
        except (NoReply, NotConfirmed) as exc:
            op.error = repr(exc)[:300]


def _ok(op: Op) -> bool:
    """Whether the command's last reply says it was done (not refused)."""
    return bool(op.replies) and op.replies[-1].get("status") == "ok"


# --- poison -------------------------------------------------------------------------
def poison_bodies(rng: random.Random) -> list[tuple[bytes, str]]:
    """Malformed bodies and the dead-letter reason each must get."""
    mid = new_id()
    good: dict[str, Any] = {"message_id": mid, "correlation_id": mid,
                            "type": "AddApartment", "version": 2, "apartment_id": "p1",
                            "payload": {"owner_id": "o", "city": "X", "title": "T",
                                        "price_per_night": 1, "currency": "EUR",
                                        "capacity": 1}}
    return [
        (bytes(rng.randrange(256) for _ in range(40)) + b"\xff", "not_json"),
        (b'"just a string"', "not_object"),
        (json.dumps({**good, "type": "Teleport"}).encode(), "unknown_type"),
        (json.dumps({**good, "version": 99}).encode(), "unsupported_version"),
        (json.dumps({**good, "payload": {"owner_id": 5}}).encode(), "schema_error"),
        (json.dumps({k: v for k, v in good.items() if k != "message_id"}).encode(),
         "bad_envelope"),
        (json.dumps({**good, "type": "ApartmentAdded"}).encode(), "wrong_kind"),
        (b'{"pad":"' + b"x" * 70_000 + b'"}', "too_large"),
    ]


class PoisonInjector(threading.Thread):
    """Publishes a malformed message every ``interval`` seconds until stopped."""

    def __init__(self, url: str, topology: Topology, history: History,
                 stop: threading.Event, *, seed: int, interval: float = 1.0) -> None:
        super().__init__(name="poison", daemon=True)
        self.url = url
        self.topology = topology
        self.history = history
        self.stop_event = stop
        self.rng = random.Random(seed)
        self.interval = interval

    def run(self) -> None:
        """Inject until stopped (bounded by the stop event and a count)."""
        client: Client | None = None
        n = 0
        while not self.stop_event.wait(self.interval) and n < 100_000:
            n += 1
            body, reason = self.rng.choice(poison_bodies(self.rng))
            p = Poison(f"poison-{n}-{new_id()}", reason)
            with self.history.lock:
                self.history.poison.append(p)
            try:
                if client is None:
                    client = Client(self.url, self.topology)
                client.publish_raw(self.topology.commands_exchange, "p1", body,
                                   message_id=p.message_id, reply=False)
                p.confirmed = True
            except (AMQPError, OSError):
                if client is not None:
                    client.close()
                client = None
        if client is not None:
            client.close()
