"""What an entity actor shares with the store writer's thread while a commit is in flight.

An actor submits a commit and goes on with its next message; the writer calls the
commit's ``on_done`` on its own thread. That callback touches only what this module
holds, each safe to use from both threads: the commit's :class:`Reply` (finished by the
writer), its :class:`Pending` tickets (answered by the writer once the commit is
durable, so the reply does not wait for the actor) and the actor's :class:`Outcomes`,
through which every outcome is handed to the actor, which reads it on its own thread.
The actor's own fields are never written from the writer's thread.
"""

from __future__ import annotations

import threading
from collections import deque

from actors.outcome import Ticket
from messages.base import Envelope
from messages.replies import with_position


class Reply:
    """A command's reply, finished by the writer with the position of its events.

    Only the writer learns the positions (inside the transaction, and again if it is
    retried); ``stored`` is what its last call made, the reply the inbox holds once
    the commit succeeded. Read and written on the writer's thread only.
    """

    __slots__ = ("status", "stored", "template")

    def __init__(self, template: bytes, status: str) -> None:
        self.template = template
        self.stored = template
        self.status = status

    def finish(self, position: int | None) -> bytes:
        """The reply with ``position``, remembered as ``stored``."""
        self.stored = with_position(self.template, position)
        return self.stored


class Pending:
    """One message whose commit is in flight, and the tickets waiting on it.

    A re-send that arrives meanwhile waits on the same commit instead of being
    decided again. The commit's outcome closes it once: :meth:`answer` when the commit
    is durable, :meth:`take` when the tickets are to be settled otherwise. A ticket
    that comes after it closed gets the same answer, or is given back.

    Attributes:
        envelope: the message.
        asked: its content hash (None: not checked).
        lineage: the memory the commit was decided on.
        reply: its reply (None: the entity does not reply).
        vacant: whether the entity's memory was worth nothing after the decision.
    """

    __slots__ = ("_answer", "_lock", "_open", "_tickets", "asked", "envelope", "lineage",
                 "reply", "vacant")

    def __init__(self, envelope: Envelope, asked: str | None, lineage: int,
                 reply: Reply | None, vacant: bool, ticket: Ticket) -> None:
        self.envelope = envelope
        self.asked = asked
        self.lineage = lineage
        self.reply = reply
        self.vacant = vacant
        self._lock = threading.Lock()
        self._tickets = [ticket]
        self._open = True
        self._answer: tuple[bytes | None, str | None] | None = None

    def join(self, ticket: Ticket) -> None:
        """Wait on this commit too; settled at once if the commit has its outcome."""
        with self._lock:
            if self._open:
                ticket.submitted = True
                self._tickets.append(ticket)
                return
            answer = self._answer
        if answer is None:
            ticket.requeue()
        else:
            ticket.ack(*answer)

    def answer(self) -> None:
        """Writer thread: the commit is durable; ack every ticket with the reply."""
        reply = self.reply
        answer = (None, None) if reply is None else (reply.stored, reply.status)
        with self._lock:
            self._open, self._answer = False, answer
            tickets, self._tickets = self._tickets, []
        for t in tickets:
            t.ack(*answer)

    def take(self) -> list[Ticket]:
        """Close it without an answer; the tickets, for the caller to settle."""
        with self._lock:
            self._open = False
            tickets, self._tickets = self._tickets, []
        return tickets


Outcome = tuple[Pending, BaseException | None]
"""A commit's outcome: its pending message, and None or the error it was refused with."""


class Outcomes:
    """The outcomes of an actor's commits, handed from the writer's thread to the actor's.

    The writer puts; the actor reads them in order, on its own thread. Once the actor
    has stopped, :meth:`close` ends the handoff: a later put fails, and the writer
    settles itself what it would have handed over.
    """

    __slots__ = ("_items", "_lock", "_open")

    def __init__(self) -> None:
        self._items: deque[Outcome] = deque()
        self._lock = threading.Lock()
        self._open = True

    def put(self, pending: Pending, error: BaseException | None) -> bool:
        """Writer thread: hand an outcome over; False once the actor has stopped."""
        with self._lock:
            if self._open:
                self._items.append((pending, error))
            return self._open

    def __bool__(self) -> bool:
        return bool(self._items)

    def first(self) -> Outcome:
        """The oldest outcome not yet dropped (raises IndexError when there is none)."""
        return self._items[0]

    def drop_first(self) -> None:
        """Done with :meth:`first`."""
        self._items.popleft()

    def close(self) -> list[Outcome]:
        """End the handoff: the outcomes not yet read."""
        with self._lock:
            self._open = False
            items = list(self._items)
            self._items.clear()
        return items
