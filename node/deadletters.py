"""Dead letters: recorded in the store as they land, replayed only when asked.

Every node consumes ``<prefix>.dead-letters`` and hands each delivery to its
:class:`DeadLetterRecorder`, which writes it to the :class:`~store.deadletters.DeadLetterBook`
and only then acks it. The queue is thus a landing place, normally empty, and an
operator browses the book, which no read can change. While the store is down or the
book is full the recorder holds the letter unacked and retries (it neither requeues,
which would raise the delivery count, nor drops it); the prefetch bounds how many it
holds.

:func:`replay` puts letters back on the queues they came from, confirmed, and marks
them replayed; a direct reply-to address is dropped (its producer stopped waiting long
ago).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import time
from collections.abc import Sequence
from typing import Any

from broker.base import (
    DEAD_ID_HEADER,
    DETAIL_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    Broker,
    Delivery,
    Outgoing,
)
from store.deadletters import DEAD, REPLAYED, REPLAYING, BookFull, DeadLetterBook, Letter
from supervisor import Gate, ThreadService

log = logging.getLogger(__name__)

REPLAYED_HEADER = "x-staybook-replayed"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
DELIVERY_LIMIT = "delivery_limit"  # the x-death reason of a quorum queue's limit
MAX_REPLAY = 10_000
REPLAY_BATCH = 100
_RETRY_MAX = 5.0


def _text(v: Any, limit: int) -> str | None:
    """A header value as text fit for a column: decoded, bounded, without NULs."""
    if v is None:
        return None
    s = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
    return s.replace("\x00", "\ufffd")[:limit] or None


def plain(v: Any) -> Any:
    """AMQP header values as JSON-safe values (bytes decoded, timestamps as text)."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [plain(x) for x in v]
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    return str(v)


def _first_death(headers: dict[str, Any]) -> dict[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[-1], dict):
        return deaths[-1]  # the broker prepends: the last entry is the first death
    return {}


def letter_of(d: Delivery) -> Letter:
    """What to record of one dead-letter delivery.

    The reason and origin come from Staybook's headers when a node refused the
    message, else from the broker's ``x-death`` (a quorum queue's delivery limit).
    The key is the id the dead-lettering node stamped, else a digest of the message
    and its deaths, so a redelivered letter is recorded once.
    """
    headers = plain(dict(d.headers))
    death = _first_death(headers)
    mtype: str | None = None
    with contextlib.suppress(ValueError, AttributeError, UnicodeDecodeError):
        mtype = _text(json.loads(d.body).get("type"), 100)
    key = _text(headers.get(DEAD_ID_HEADER), 64)
    if key is None:
        h = hashlib.sha256()
        for part in (d.message_id or "", json.dumps(headers.get("x-death"), default=str),
                     str(headers.get(REPLAYED_HEADER, 0))):
            h.update(part.encode(errors="replace") + b"\0")
        h.update(d.body)
        key = h.hexdigest()
    return Letter(
        key=key,
        queue=_text(headers.get(QUEUE_HEADER) or death.get("queue"), 200),
        reason=_text(headers.get(REASON_HEADER) or death.get("reason")
                     or headers.get("x-first-death-reason"), 100),
        detail=_text(headers.get(DETAIL_HEADER), 1000),
        type=mtype, message_id=_text(d.message_id, 200),
        correlation_id=_text(d.correlation_id, 200), reply_to=_text(d.reply_to, 200),
        headers=headers, body=d.body)


class DeadLetterRecorder(ThreadService):
    """Records each delivery of the dead-letter queue in the book, then acks it.

    A service of the node's tree (one thread). Deliveries wait in a queue that the
    consumer's prefetch bounds; what is still unrecorded when it stops goes back to
    the broker.

    Args:
        book: where letters are recorded.
        gate: the store's availability: while the store cannot be reached the
            recorder waits for it to come back rather than retrying on its own.
    """

    def __init__(self, book: DeadLetterBook, gate: Gate | None = None) -> None:
        super().__init__("dead-letters")
        self.book = book
        self._gate = gate
        self._q: queue.Queue[Delivery] = queue.Queue()
        self.recorded = 0
        self.duplicates = 0
        self.spare_copies = 0
        self.failures = 0

    def on_delivery(self, delivery: Delivery) -> None:
        """The consumer's callback: queue it for the recording thread."""
        self._q.put(delivery)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop recording; unrecorded deliveries are requeued.

        Returns:
            False when the thread still runs after ``timeout`` (see ThreadService.stop).
        """
        stopped = super().stop(timeout)
        while True:
            try:
                self._q.get_nowait().requeue()
            except queue.Empty:
                break
        return stopped

    def facts(self) -> dict[str, Any]:
        """Letters recorded, duplicates, failed attempts, deliveries waiting."""
        return {"recorded": self.recorded, "duplicates": self.duplicates,
                "spare_copies": self.spare_copies, "failures": self.failures,
                "backlog": self._q.qsize()}

    def run(self) -> None:
        """Record each delivery, then ack it, until stopped."""
        while not self.stopping():
            try:
                d = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            if self._record(d):
                d.ack()
            else:
                d.requeue()  # stopping: the broker keeps it for the next recorder

    def _record(self, d: Delivery) -> bool:
        """Record ``d``, retrying until it is in the book or the recorder stops.

        A copy the broker dead-lettered at its delivery limit, of a message a consumer
        already handled, is dropped instead (counted in ``spare_copies``). Each lost
        connection returns a consumer's unacked deliveries with their count raised, and
        an ack can be lost with its connection after the commit: in a broker cluster,
        where connections are lost more often, a handled command can reach the limit.
        It took effect once and was answered, so it is not a dead letter.
        """
        letter = letter_of(d)
        delay, warned = 0.1, 0.0
        while not self.stopping():
            try:
                # The reason is a node's own when it refused the message, so only the
                # broker's delivery limit gives this one.
                if (letter.reason == DELIVERY_LIMIT and letter.message_id
                        and self.book.handled(letter.message_id)):
                    self.spare_copies += 1
                    log.info("dropped a spare copy of handled message %s from the "
                             "dead-letter queue (%s)", letter.message_id, letter.reason)
                    return True
                if self.book.record(letter):
                    self.recorded += 1
                else:
                    self.duplicates += 1
                return True
            except BookFull as exc:
                why = f"{exc}: purge replayed or old letters (ctl dlq purge)"
            except Exception as exc:
                if self._gate is not None and self._gate.ride_out(exc, self.stopping):
                    continue
                why = f"cannot record a dead letter ({exc!r}); retrying"
                log.debug("recording dead letter %s failed", letter.key, exc_info=True)
            self.failures += 1
            if time.monotonic() - warned > 60:
                log.warning("%s", why)
                warned = time.monotonic()
            self.pause(delay)
            delay = min(delay * 2, _RETRY_MAX)
        return False


def outgoing_of(letter: Letter) -> Outgoing:
    """The message a replay publishes: the original back on its queue, counted."""
    assert letter.queue is not None
    headers = {k: v for k, v in letter.headers.items()
               if k not in (DEAD_ID_HEADER, "x-delivery-count")}
    headers[REPLAYED_HEADER] = int(headers.get(REPLAYED_HEADER, 0) or 0) + 1
    reply_to = letter.reply_to
    if reply_to and reply_to.startswith(DIRECT_REPLY_TO):
        reply_to = None
    return Outgoing(exchange="", routing_key=letter.queue, body=letter.body,
                    message_id=letter.message_id, correlation_id=letter.correlation_id,
                    reply_to=reply_to, headers=headers, persistent=True)


def replay(book: DeadLetterBook, broker: Broker, ident: str | None = None, *,
           limit: int = MAX_REPLAY, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Put one letter (``ident``: its id or message id) or every dead one back.

    Each is claimed first (so two operators never both replay it), published with a
    confirm in batches of ``REPLAY_BATCH``, and only then marked replayed. A batch
    that fails is released (dead again, with the error). At most ``limit`` letters.

    Returns:
        One result per letter looked at: ``id``, ``replayed``, and ``queue`` or
        ``error``.
    """
    if ident is not None:
        todo = book.find(ident)[:limit]
    else:
        todo, after = [], 0
        while len(todo) < limit:
            page = book.page(limit=min(1000, limit - len(todo)), after=after,
                             statuses=(DEAD, REPLAYING))
            if not page:
                break
            todo += page
            after = page[-1].seq
    results: list[dict[str, Any]] = []
    claimed = []
    for rec in todo:
        if rec.status == REPLAYED:
            results.append({"id": rec.seq, "replayed": False, "error": "already replayed"})
        elif rec.letter.queue is None:
            results.append({"id": rec.seq, "replayed": False, "error": "origin unknown"})
        elif (got := book.claim(rec.seq)) is None:
            results.append({"id": rec.seq, "replayed": False,
                            "error": "being replayed by another request"})
        else:
            claimed.append(got)
    if not claimed:
        return results
    publisher = broker.publisher()
    try:
        for i in range(0, len(claimed), REPLAY_BATCH):
            results += _publish(book, publisher, claimed[i:i + REPLAY_BATCH], timeout)
    finally:
        publisher.close()
    return sorted(results, key=lambda r: int(r["id"]))


def _publish(book: DeadLetterBook, publisher: Any, batch: Sequence[Any],
             timeout: float) -> list[dict[str, Any]]:
    try:
        publisher.publish_confirmed([outgoing_of(r.letter) for r in batch], timeout=timeout)
    except Exception as exc:
        log.debug("replay failed", exc_info=True)
        for r in batch:
            book.release(r.seq, repr(exc))
        return [{"id": r.seq, "replayed": False, "error": repr(exc)[:300]} for r in batch]
    for r in batch:
        book.replayed(r.seq)
    return [{"id": r.seq, "replayed": True, "queue": r.letter.queue} for r in batch]
