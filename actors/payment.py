"""Payment: charge the card once per accepted reservation, through a gateway.

The reservation id is the gateway's idempotency key, and the payment stream
``payment:<reservation id>`` takes exactly one outcome (version 1), so a redelivered
``ReservationAccepted``, a crash between charge and commit, or two nodes racing can
never charge a card twice. Cards are never stored: only a token and the last four.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Protocol

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from actors.base import ReportFailure
from actors.handler import HandlerActor, Reaction
from messages import Envelope, Message, PaymentFailed, PaymentSucceeded, ReservationAccepted
from store import EventStore, StoreWriter
from store.tables import gateway_charges_table


@dataclass(frozen=True)
class ChargeResult:
    """A gateway's answer: charged (with its id) or declined (with the reason)."""

    ok: bool
    charge_id: str = ""
    reason: str = ""


class PaymentGateway(Protocol):
    """Charges a card token; the same idempotency key never charges twice."""

    def charge(self, *, idempotency_key: str, amount: int, card_token: str) -> ChargeResult:
        """Charge ``amount`` cents, or return the earlier result for this key."""
        ...


class SimulatedGateway:
    """A gateway with its own durable ledger (a table), like a remote one would have.

    Declines tokens starting with ``decline_token_prefix``, and a deterministic
    ``decline_rate`` share of keys (by hash), so tests and demos are repeatable.

    Args:
        engine: where the ledger lives.
        decline_rate: share of idempotency keys declined, 0..1.
        decline_token_prefix: tokens that always decline.
    """

    def __init__(self, engine: Engine, *, decline_rate: float = 0.0,
                 decline_token_prefix: str = "tok_decline") -> None:
        self.engine = engine
        self.decline_rate = decline_rate
        self.decline_token_prefix = decline_token_prefix
        self.calls = 0

    def charge(self, *, idempotency_key: str, amount: int, card_token: str) -> ChargeResult:
        """Charge once per key; repeat calls return the recorded outcome."""
        self.calls += 1
        with self.engine.begin() as conn:
            row = conn.execute(select(gateway_charges_table).where(
                gateway_charges_table.c.idempotency_key == idempotency_key)).first()
            if row is not None:
                return _result(row.status, row.charge_id)
            declined = card_token.startswith(self.decline_token_prefix) or (
                _fraction(idempotency_key) < self.decline_rate)
            status = "declined" if declined else "charged"
            charge_id = "ch_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]
            try:
                conn.execute(insert(gateway_charges_table).values(
                    idempotency_key=idempotency_key, charge_id=charge_id, amount=amount,
                    card_token=card_token, status=status, created_at=datetime.now(UTC)))
            except IntegrityError:  # a concurrent call won; use its outcome
                conn.rollback()
                return self.charge(idempotency_key=idempotency_key, amount=amount,
                                   card_token=card_token)
        return _result(status, charge_id)

    def charges_for(self, idempotency_key: str) -> int:
        """How many charges the ledger holds for a key (0 or 1)."""
        with self.engine.connect() as conn:
            return len(conn.execute(select(gateway_charges_table.c.charge_id).where(
                gateway_charges_table.c.idempotency_key == idempotency_key)).all())


def _result(status: str, charge_id: str) -> ChargeResult:
    if status == "charged":
        return ChargeResult(ok=True, charge_id=charge_id)
    return ChargeResult(ok=False, reason="card_declined")


def _fraction(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


class PaymentActor(HandlerActor):
    """Charges on ``ReservationAccepted``; records ``PaymentSucceeded`` or ``PaymentFailed``."""

    consumer: ClassVar[str] = "payment"

    def __init__(self, name: str, store: EventStore, writer: StoreWriter,
                 report: ReportFailure, gateway: PaymentGateway) -> None:
        super().__init__(name, store, writer, report)
        self.gateway = gateway

    def react(self, envelope: Envelope) -> Reaction:
        """Charge once per reservation."""
        event = envelope.payload
        if not isinstance(event, ReservationAccepted):
            return Reaction()
        stream = f"payment:{event.reservation_id}"
        if self.store.load(stream):
            return Reaction()  # already decided by an earlier delivery
        result = self.gateway.charge(idempotency_key=event.reservation_id,
                                     amount=event.total_price, card_token=event.card_token)
        outcome: Message
        if result.ok:
            outcome = PaymentSucceeded(reservation_id=event.reservation_id,
                                       guest_id=event.guest_id, amount=event.total_price,
                                       charge_id=result.charge_id, card_last4=event.card_last4)
        else:
            outcome = PaymentFailed(reservation_id=event.reservation_id,
                                    guest_id=event.guest_id, amount=event.total_price,
                                    reason=result.reason)
        return Reaction(stream_id=stream, expected_version=0, events=[outcome])
