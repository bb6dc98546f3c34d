"""Payment: charge once on acceptance, refund once on cancellation, with bounded retries.

The reservation id is the gateway's idempotency key for the charge (``refund:<id>``
for the refund), and each outcome goes in its own stream at version 1
(``payment:<id>``, ``refund:<id>``), so a redelivered event, a crash between the
gateway call and the commit, or two nodes racing can never charge or refund twice.

A gateway that times out is asked again with the same key, at most
``max_attempts`` times with a doubling pause; a charge that still has no answer is
recorded as ``PaymentFailed`` (``gateway_timeout``), which the reservation process
compensates. A refund is capped by what the gateway actually captured, so cancelling
a reservation whose charge failed refunds nothing. Cards are never stored: only a
token and the last four digits travel or are kept.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Protocol, TypeVar

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from actors.handler import HandlerActor, Reaction
from messages import (
    Envelope,
    Message,
    PaymentFailed,
    PaymentSucceeded,
    RefundFailed,
    RefundIssued,
    ReservationAccepted,
    ReservationCancelled,
)
from store import EventStore, StoreWriter
from store.tables import gateway_charges_table, gateway_refunds_table
from supervisor import ReportFailure

log = logging.getLogger(__name__)

GATEWAY_TIMEOUT = "gateway_timeout"


class GatewayTimeout(Exception):
    """The gateway did not answer; the operation may or may not have happened."""


@dataclass(frozen=True)
class ChargeResult:
    """A gateway's answer: charged (with its id) or declined (with the reason)."""

    ok: bool
    charge_id: str = ""
    reason: str = ""


@dataclass(frozen=True)
class RefundResult:
    """A gateway's answer to a refund: how much went back (0 when nothing was charged)."""

    ok: bool
    refund_id: str = ""
    amount: int = 0
    reason: str = ""


class PaymentGateway(Protocol):
    """Charges and refunds a card token; the same idempotency key never acts twice."""

    def charge(self, *, idempotency_key: str, amount: int, card_token: str) -> ChargeResult:
        """Charge ``amount`` cents, or return the earlier result for this key.

        Raises:
            GatewayTimeout: no answer; asking again with the same key is safe.
        """
        ...

    def refund(self, *, idempotency_key: str, charge_key: str, amount: int) -> RefundResult:
        """Give back up to ``amount`` of the charge made with ``charge_key``, once per key.

        Raises:
            GatewayTimeout: no answer; asking again with the same key is safe.
        """
        ...


class SimulatedGateway:
    """A gateway with its own durable ledger (tables), like a remote one would have.

    Deterministic by card token, so tests and demos are repeatable: tokens starting
    with ``decline_token_prefix`` are declined; ``tok_timeout...`` never answers a
    charge; ``tok_norefund...`` is charged but never answers a refund; ``tok_flaky...``
    loses the answer of its first charge and first refund (the ledger
    has them, the caller sees a timeout), which only a retry with the same key fixes.
    A ``decline_rate`` share of keys (by hash) is declined too.

    Args:
        engine: where the ledger lives.
        decline_rate: share of idempotency keys declined, 0..1.
        decline_token_prefix: tokens that always decline.
    """

    def __init__(self, engine: Engine, *, decline_rate: float,
                 decline_token_prefix: str) -> None:
        self.engine = engine
        self.decline_rate = decline_rate
        self.decline_token_prefix = decline_token_prefix
        self.calls = 0
        self._lost: set[str] = set()  # keys whose first answer was already lost
        self._lock = threading.Lock()

    def _lose_first_answer(self, key: str, card_token: str) -> bool:
        if not card_token.startswith("tok_flaky"):
            return False
        with self._lock:
            if key in self._lost:
                return False
            self._lost.add(key)
            return True

    def charge(self, *, idempotency_key: str, amount: int, card_token: str) -> ChargeResult:
        """Charge once per key; repeat calls return the recorded outcome."""
        self.calls += 1
        if card_token.startswith("tok_timeout"):
            raise GatewayTimeout(f"no answer charging {idempotency_key}")
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
        if self._lose_first_answer(idempotency_key, card_token):
            raise GatewayTimeout(f"the answer to charging {idempotency_key} was lost")
        return _result(status, charge_id)

    def refund(self, *, idempotency_key: str, charge_key: str, amount: int) -> RefundResult:
        """Refund once per key, at most what the charge captured."""
        self.calls += 1
        with self.engine.begin() as conn:
            done = conn.execute(select(gateway_refunds_table).where(
                gateway_refunds_table.c.idempotency_key == idempotency_key)).first()
            if done is not None:
                return RefundResult(ok=True, refund_id=done.refund_id, amount=done.amount)
            charge = conn.execute(select(gateway_charges_table).where(
                gateway_charges_table.c.idempotency_key == charge_key)).first()
            if charge is None or charge.status != "charged":
                return RefundResult(ok=False, reason="no_charge")
            if charge.card_token.startswith("tok_norefund"):
                raise GatewayTimeout(f"no answer refunding {idempotency_key}")
            give = min(amount, charge.amount)
            refund_id = "re_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]
            try:
                conn.execute(insert(gateway_refunds_table).values(
                    idempotency_key=idempotency_key, charge_key=charge_key,
                    refund_id=refund_id, amount=give, created_at=datetime.now(UTC)))
            except IntegrityError:
                conn.rollback()
                return self.refund(idempotency_key=idempotency_key, charge_key=charge_key,
                                   amount=amount)
            token = charge.card_token
        if self._lose_first_answer(idempotency_key, token):
            raise GatewayTimeout(f"the answer to refunding {idempotency_key} was lost")
        return RefundResult(ok=True, refund_id=refund_id, amount=give)

    def charges_for(self, idempotency_key: str) -> int:
        """How many charges the ledger holds for a key (0 or 1)."""
        with self.engine.connect() as conn:
            return len(conn.execute(select(gateway_charges_table.c.charge_id).where(
                gateway_charges_table.c.idempotency_key == idempotency_key)).all())

    def refunds_for(self, charge_key: str) -> list[int]:
        """The amounts refunded against a charge (at most one per refund key)."""
        with self.engine.connect() as conn:
            return [r.amount for r in conn.execute(select(gateway_refunds_table.c.amount).where(
                gateway_refunds_table.c.charge_key == charge_key))]


def _result(status: str, charge_id: str) -> ChargeResult:
    if status == "charged":
        return ChargeResult(ok=True, charge_id=charge_id)
    return ChargeResult(ok=False, reason="card_declined")


def _fraction(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


T = TypeVar("T")


def with_retries(call: Callable[[], T], *, attempts: int, delay: float,
                 sleep: Callable[[float], None] = time.sleep) -> T | None:
    """``call()`` until it answers, at most ``attempts`` times; None if it never did."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except GatewayTimeout as exc:
            log.info("payment gateway timed out (attempt %d of %d): %s", attempt, attempts, exc)
            if attempt < attempts:
                sleep(delay * 2 ** (attempt - 1))
    return None


class PaymentActor(HandlerActor):
    """Charges on ``ReservationAccepted``, refunds on ``ReservationCancelled``.

    Args:
        gateway: the payment gateway.
        max_attempts: gateway calls per operation before giving up (bounded retries).
        retry_delay: the first pause between attempts, doubled each time.
        charge_wait: how long a cancellation waits for its charge's outcome before
            it goes back to the broker (see :meth:`_charge_decided`).
    """

    consumer: ClassVar[str] = "payment"

    def __init__(self, name: str, store: EventStore, writer: StoreWriter,
                 report: ReportFailure, gateway: PaymentGateway, *, max_attempts: int,
                 retry_delay: float, charge_wait: float) -> None:
        super().__init__(name, store, writer, report)
        self.gateway = gateway
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.charge_wait = charge_wait

    def react(self, envelope: Envelope) -> Reaction:
        """Charge or refund once per reservation."""
        event = envelope.payload
        if isinstance(event, ReservationAccepted):
            return self._charge(event)
        if isinstance(event, ReservationCancelled) and event.refund_amount > 0:
            return self._refund(event)
        return Reaction()

    def _charge_decided(self, reservation_id: str) -> bool:
        """Whether the charge of a reservation has its outcome, waiting up to
        ``charge_wait`` seconds for it.

        The acceptance and the cancellation reach payment as two events, which
        competing consumers on several nodes may handle in either order. A refund
        decided before the charge's outcome would find nothing to give back, and the
        charge would then stand: so the cancellation waits for the outcome (another
        node is usually recording it), and goes back to the broker if it does not
        come in time (this node may hold the acceptance behind it).
        """
        stream = f"payment:{reservation_id}"
        deadline = time.monotonic() + self.charge_wait
        while not self.store.load(stream):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _charge(self, event: ReservationAccepted) -> Reaction:
        stream = f"payment:{event.reservation_id}"
        if self.store.load(stream):
            return Reaction()  # already decided by an earlier delivery
        result = with_retries(
            lambda: self.gateway.charge(idempotency_key=event.reservation_id,
                                        amount=event.total_price, card_token=event.card_token),
            attempts=self.max_attempts, delay=self.retry_delay)
        outcome: Message
        if result is not None and result.ok:
            outcome = PaymentSucceeded(reservation_id=event.reservation_id,
                                       guest_id=event.guest_id, amount=event.total_price,
                                       charge_id=result.charge_id, card_last4=event.card_last4)
        else:
            outcome = PaymentFailed(reservation_id=event.reservation_id,
                                    guest_id=event.guest_id, amount=event.total_price,
                                    reason=GATEWAY_TIMEOUT if result is None else result.reason)
        return Reaction(stream_id=stream, expected_version=0, events=[outcome])

    def _refund(self, event: ReservationCancelled) -> Reaction:
        stream = f"refund:{event.reservation_id}"
        if self.store.load(stream):
            return Reaction()
        if not self._charge_decided(event.reservation_id):
            log.info("refund of %s waits for its charge; back to the broker",
                     event.reservation_id)
            return Reaction(later=True)
        result = with_retries(
            lambda: self.gateway.refund(idempotency_key=stream, charge_key=event.reservation_id,
                                        amount=event.refund_amount),
            attempts=self.max_attempts, delay=self.retry_delay)
        outcome: Message
        if result is None:
            outcome = RefundFailed(reservation_id=event.reservation_id, guest_id=event.guest_id,
                                   amount=event.refund_amount, reason=GATEWAY_TIMEOUT)
            log.error("refund of %s failed after %d attempts; an operator must act",
                      event.reservation_id, self.max_attempts)
        elif not result.ok:
            return Reaction()  # nothing was captured: nothing to give back
        else:
            outcome = RefundIssued(reservation_id=event.reservation_id, guest_id=event.guest_id,
                                   amount=result.amount, refund_id=result.refund_id,
                                   card_last4=event.card_last4)
        return Reaction(stream_id=stream, expected_version=0, events=[outcome])
