"""The book of dead letters: each one recorded in the store as it lands.

The dead-letter queue is only the landing place: every node's recorder
(:mod:`node.deadletters`) moves each letter into ``dead_letters`` and acks it.
Reading the book is a ``SELECT``, so an operator may list and show as often as they
like without raising a delivery count or reordering anything; only replay and purge
write, and both are explicit.

Replay is at least once and safe between nodes: a letter is claimed (``dead`` ->
``replaying``) by one conditional ``UPDATE``, published, then marked ``replayed``. A
node that dies after the claim leaves it ``replaying``; after ``STALE_CLAIM`` it can
be claimed again (the consumers it goes back to are idempotent by ``message_id``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, RowMapping, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from messages.registry import Consumer
from store.tables import dead_letters_table as t
from store.tables import inbox_table as inbox

DEAD, REPLAYING, REPLAYED = "dead", "replaying", "replayed"
STALE_CLAIM = timedelta(seconds=60)
MAX_PAGE = 1000


class BookFull(Exception):
    """The book holds ``max_rows`` letters: purge some before more can be recorded."""


@dataclass(frozen=True)
class Letter:
    """One dead letter as it landed: why, from where, and the message itself.

    Attributes:
        key: what makes recording it idempotent (the id the dead-lettering gave it,
            else a digest of the message and its deaths).
        headers: the AMQP headers, made JSON-safe.
    """

    key: str
    queue: str | None
    reason: str | None
    detail: str | None
    type: str | None
    message_id: str | None
    correlation_id: str | None
    reply_to: str | None
    headers: dict[str, Any]
    body: bytes


@dataclass(frozen=True)
class Recorded:
    """A letter in the book, with its place (``seq``) and what became of it."""

    seq: int
    status: str
    recorded_at: datetime
    letter: Letter
    replays: int = 0
    replayed_at: datetime | None = None
    last_error: str | None = None

    def summary(self) -> dict[str, Any]:
        """The short form an operator lists (no headers, no body)."""
        lt = self.letter
        return {"id": self.seq, "status": self.status, "queue": lt.queue,
                "reason": lt.reason, "type": lt.type, "message_id": lt.message_id,
                "detail": lt.detail, "recorded_at": self.recorded_at.isoformat(),
                "replays": self.replays}

    def full(self) -> dict[str, Any]:
        """Everything, the body as text (bounded by the broker's message size)."""
        out = self.summary()
        out.update(correlation_id=self.letter.correlation_id,
                   reply_to=self.letter.reply_to, headers=self.letter.headers,
                   body=self.letter.body.decode(errors="replace"),
                   replayed_at=None if self.replayed_at is None
                   else self.replayed_at.isoformat(),
                   last_error=self.last_error)
        return out


def _aware(v: datetime) -> datetime:
    return v if v.tzinfo is not None else v.replace(tzinfo=UTC)


def _recorded(m: RowMapping) -> Recorded:
    letter = Letter(key=m["letter_key"], queue=m["queue"], reason=m["reason"],
                    detail=m["detail"], type=m["type"], message_id=m["message_id"],
                    correlation_id=m["correlation_id"], reply_to=m["reply_to"],
                    headers=json.loads(m["headers"]), body=bytes(m["body"]))
    return Recorded(seq=m["seq"], status=m["status"], recorded_at=_aware(m["recorded_at"]),
                    letter=letter, replays=m["replays"],
                    replayed_at=None if m["replayed_at"] is None else _aware(m["replayed_at"]),
                    last_error=m["last_error"])


class DeadLetterBook:
    """Record, read, claim for replay, and purge dead letters.

    Args:
        engine: the store (shared by every node).
        max_rows: letters kept at most; recording one more raises :class:`BookFull`,
            so the recorder holds it in the queue instead of dropping anything.
    """

    def __init__(self, engine: Engine, *, max_rows: int) -> None:
        self._engine = engine
        self.max_rows = max_rows

    def record(self, letter: Letter) -> bool:
        """Add ``letter``; False when it was already recorded (a redelivery).

        Raises:
            BookFull: the book holds ``max_rows`` letters.
        """
        with self._engine.begin() as c:
            if c.execute(select(t.c.seq).where(t.c.letter_key == letter.key)).first():
                return False
            if (c.execute(select(func.count()).select_from(t)).scalar_one()
                    >= self.max_rows):
                raise BookFull(f"the dead-letter book holds {self.max_rows} letters")
        row = asdict(letter)
        row["letter_key"] = row.pop("key")
        row["headers"] = json.dumps(letter.headers, default=str)
        try:
            with self._engine.begin() as c:
                c.execute(insert(t).values(status=DEAD, recorded_at=datetime.now(UTC),
                                           replays=0, **row))
        except IntegrityError:
            return False  # another node's recorder got the same redelivered letter first
        return True

    def handled(self, message_id: str) -> bool:
        """Whether a consumer's inbox holds ``message_id``: the message took effect.

        Keyed by the inbox's primary key ``(consumer, message_id)``, for every consumer.
        """
        q = (select(inbox.c.message_id)
             .where(inbox.c.consumer.in_([c.value for c in Consumer]),
                    inbox.c.message_id == message_id).limit(1))
        with self._engine.connect() as c:
            return c.execute(q).first() is not None

    def count(self, status: str | None = None) -> int:
        """Letters in the book (with ``status``, when given)."""
        q = select(func.count()).select_from(t)
        if status is not None:
            q = q.where(t.c.status == status)
        with self._engine.connect() as c:
            return int(c.execute(q).scalar_one())

    def page(self, *, limit: int = 100, after: int = 0,
             statuses: Sequence[str] = (DEAD, REPLAYING)) -> list[Recorded]:
        """Letters in the order they landed, from ``seq > after``; read-only."""
        limit = max(1, min(limit, MAX_PAGE))
        q = (select(t).where(t.c.seq > after, t.c.status.in_(list(statuses)))
             .order_by(t.c.seq).limit(limit))
        with self._engine.connect() as c:
            return [_recorded(r) for r in c.execute(q).mappings()]

    def find(self, ident: str) -> list[Recorded]:
        """The letter with id ``ident`` (its seq), or every letter with that message id."""
        q = select(t).order_by(t.c.seq)
        q = q.where(t.c.seq == int(ident)) if ident.isdigit() else q.where(
            t.c.message_id == ident)
        with self._engine.connect() as c:
            return [_recorded(r) for r in c.execute(q.limit(MAX_PAGE)).mappings()]

    def claim(self, seq: int) -> Recorded | None:
        """Take one letter for replay; None if it is replayed or another node holds it."""
        now = datetime.now(UTC)
        free = or_(t.c.status == DEAD,
                   and_(t.c.status == REPLAYING, t.c.claimed_at < now - STALE_CLAIM))
        with self._engine.begin() as c:
            got = c.execute(update(t).where(t.c.seq == seq, free)
                            .values(status=REPLAYING, claimed_at=now)).rowcount
            if got != 1:
                return None
            row = c.execute(select(t).where(t.c.seq == seq)).mappings().first()
        return None if row is None else _recorded(row)

    def replayed(self, seq: int) -> None:
        """A claimed letter was published (confirmed) back to its queue."""
        with self._engine.begin() as c:
            c.execute(update(t).where(t.c.seq == seq).values(
                status=REPLAYED, replayed_at=datetime.now(UTC), replays=t.c.replays + 1,
                last_error=None))

    def release(self, seq: int, error: str) -> None:
        """A claimed letter could not be published: it is dead again, with why."""
        with self._engine.begin() as c:
            c.execute(update(t).where(t.c.seq == seq, t.c.status == REPLAYING).values(
                status=DEAD, claimed_at=None, last_error=error[:1000]))

    def purge(self, *, replayed_only: bool = False) -> int:
        """Drop every letter (or only the replayed ones); how many were dropped."""
        q = delete(t)
        if replayed_only:
            q = q.where(t.c.status == REPLAYED)
        with self._engine.begin() as c:
            return int(c.execute(q).rowcount)
