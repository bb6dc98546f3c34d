"""The entity actor: an apartment or a reservation, rehydrated from its events.

Crash reporting (:class:`supervisor.SupervisedActor`) is the supervision runtime's;
this module adds what an entity needs on top: its memory, the commit fence, the
inbox replies, its snapshots, the messages (:class:`Handle`, :class:`Reload`)
that drive it and the requests (:class:`GetState`, :class:`GetVersion`) that read it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import pykka

from actors.outcome import Ticket
from actors.repository import Repository
from config.logs import handling
from messages.base import Envelope, Message
from messages.replies import IDEMPOTENCY_CONFLICT, CommandResult, Status, with_position
from rules.clock import Clock, wall_clock
from rules.policy import Lifecycle
from store import (
    ConcurrencyError,
    DuplicateMessage,
    EventStore,
    InboxEntry,
    StoreWriter,
)
from store.writer import Effect
from supervisor import Failure, ReportFailure, SupervisedActor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Handle:
    """Tell an actor to handle one validated message; its ticket takes the outcome."""

    envelope: Envelope
    ticket: Ticket


def logged_as(message: Any) -> contextlib.AbstractContextManager[None]:
    """While handling ``message``: its ids on every line logged (crashes included)."""
    if isinstance(message, Handle):
        return handling(message.envelope.message_id, message.envelope.correlation_id)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Reload:
    """Tell an entity that a commit of ``lineage`` was refused: rebuild its memory.

    Attributes:
        lineage: the memory the refused commit was decided from; an actor that has
            rehydrated since only re-handles the refused commands.
    """

    lineage: int = 0


@dataclass(frozen=True)
class GetState:
    """Ask an entity for its state in memory."""


@dataclass(frozen=True)
class GetVersion:
    """Ask an entity for its version: the number of events its state holds."""


@dataclass(frozen=True)
class CommitFailed:
    """Tell an entity that one of its commits failed: its memory is now wrong."""

    error: BaseException


@dataclass
class EntityContext:
    """What every entity actor shares on a node.

    Attributes:
        store: reads (rehydration, inbox).
        writer: the group-committing writer.
        max_stay_nights: a rule parameter.
        clock: the rules' one clock (``now``; today is its date), injectable.
        inject: a fault-injection hook called before ``decide`` (drills and tests
            make it raise to crash the actor on chosen messages); None in production.
        snapshot_every: an entity that takes snapshots writes one when its stream
            has grown by this many events since its last (0: never).
    """

    store: EventStore
    writer: StoreWriter
    max_stay_nights: int = 30
    clock: Clock = wall_clock
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    inject: Callable[[str, Envelope], None] | None = None
    snapshot_every: int = 50
    # Told an entity's id when it has nothing worth keeping in memory (see
    # EntityActor.vacant); the directory passivates it if it is idle.
    on_vacant: Callable[[str], None] | None = None


S = TypeVar("S")


class EntityActor(SupervisedActor, Generic[S]):
    """An entity (one event stream) as an actor: rehydrate, decide, commit, reply.

    For each message: a message id already in the inbox gets its stored reply and
    changes nothing (the inbox is read first for redeliveries; for anything else the
    inbox row's primary key catches the duplicate at commit, and the actor reloads);
    otherwise ``decide`` yields events, ``evolve`` folds them into
    the state at once (so the next message sees them), and the events, the inbox row
    and the reply go to the writer as one commit. The ticket is acked and the reply
    sent only after that commit is durable. A commit refused for a duplicate or a stale
    version means memory ran ahead of the store: the actor reloads it (producers
    retrying are normal and must not spend the restart intensity); any other failed
    commit crashes the actor and its supervisor restarts it from the store.

    A process entity (``records_input``) records a private copy of the fact it
    reacts to as its first event, so it can be rehydrated; only what it decides is
    published.

    An entity whose stream grows without bound (an apartment) sets ``snapshot_tag``
    and implements :meth:`encode_state` and :meth:`decode_state`: every
    ``snapshot_every`` events it writes its state in the same commit as the events
    (see :class:`actors.repository.Repository`).

    Subclasses set ``kind`` and implement :meth:`initial`, :meth:`decide_payloads`
    and :meth:`apply`.
    """

    kind: ClassVar[str] = "entity"
    consumer: ClassVar[str] = "entity"
    replies: ClassVar[bool] = True
    records_input: ClassVar[bool] = False
    snapshot_tag: ClassVar[str | None] = None  # the format of its snapshots; None: none

    def __init__(self, entity_id: str, key: str, ctx: EntityContext,
                 report: ReportFailure) -> None:
        super().__init__(entity_id, report, ctx.writer.gate)
        self.entity_id = entity_id
        self.key = key
        self.ctx = ctx
        self.repository: Repository[S] = Repository(entity_id, self, ctx.store, ctx.writer,
                                                    ctx.snapshot_every)
        self._lock = threading.Lock()
        self._inflight: dict[str, list[Ticket]] = {}
        self._asked: dict[str, str | None] = {}  # in flight: message_id -> content hash
        self._retry: list[tuple[Envelope, Ticket]] = []  # refused, to decide again

    # --- to implement -------------------------------------------------------
    def initial(self) -> S:
        """The state of a stream with no events."""
        raise NotImplementedError

    def decide_payloads(self, envelope: Envelope) -> list[Message]:
        """Run the pure ``decide`` for this entity."""
        raise NotImplementedError

    def apply(self, state: S, event: Message) -> S:
        """Run the pure ``evolve`` for this entity."""
        raise NotImplementedError

    def encode_state(self, state: S) -> tuple[bytes, S]:
        """A snapshot's body of ``state`` in the ``snapshot_tag`` format, and the state
        :meth:`decode_state` would read back from it (equal to ``state``)."""
        raise NotImplementedError

    def decode_state(self, body: bytes) -> S:
        """The state :meth:`encode_state` made ``body`` of; raises if it is not one."""
        raise NotImplementedError

    def vacant(self) -> bool:
        """Whether this entity's memory is worth nothing (e.g. an apartment never added).

        A command for an id nobody created is refused, but the actor it activated
        would otherwise stay live, shown in the tree as if it ran something.
        """
        return False

    # --- life ---------------------------------------------------------------
    def started(self) -> None:
        """Rehydrate from the store.

        After a crash, commits of the dead incarnation may still be queued in the
        writer: wait for them first (a barrier), so the store is not read behind them.
        A first activation (or one after passivation, which only happens with nothing
        in flight) reads at once.
        """
        if self._link is None or self._link.after_crash:
            self.ctx.writer.barrier()
        self.repository.rehydrate()

    @property
    def state(self) -> S:
        """The memory ``decide`` runs on (the repository's)."""
        return self.repository.state

    def on_receive(self, message: Any) -> Any:
        """As the supervision runtime does, with the message's ids on its log lines."""
        with logged_as(message):
            return super().on_receive(message)

    def receive(self, message: Any) -> Any:
        """Handle :class:`Handle` and :class:`CommitFailed`; answer the ``Get*`` requests."""
        if isinstance(message, Handle):
            self._catch_up()
            self._handle(message.envelope, message.ticket)
            return None
        if isinstance(message, CommitFailed):
            raise message.error
        if isinstance(message, Reload):
            self._catch_up()
            return None
        if isinstance(message, GetState):
            return self.repository.state
        if isinstance(message, GetVersion):
            return self.repository.version
        raise ValueError(f"{self.name}: unexpected message {message!r}")

    def _handle(self, env: Envelope, ticket: Ticket) -> None:
        mid = env.message_id
        # Producers' commands carry an idempotency key (their message_id): what they
        # asked is hashed, so a key re-used for another request is refused.
        asked = env.content_hash() if self.replies else None
        with self._lock:
            if mid in self._inflight:  # a duplicate of a message not yet committed
                if self._asked.get(mid) != asked:
                    conflict = True
                else:
                    conflict = False
                    ticket.submitted = True
                    self._inflight[mid].append(ticket)
            else:
                conflict = None
        if conflict:
            self._refuse_conflict(env, ticket)
        if conflict is not None:
            return
        if ticket.redelivered:  # most likely handled before: ask the inbox first
            found = self.ctx.store.handled(self.consumer, mid)
            if found is not None:
                self._answer_again(env, asked, found, ticket)
                return
        if self.ctx.inject is not None:
            self.ctx.inject(self.entity_id, env)
        payloads = self.decide_payloads(env)
        events = [env.follow(p, apartment_id=self.key_apartment(env)) for p in payloads]
        change = self.repository.change(events)
        reply = _Reply(*self.reply_for(env, events)) if self.replies else None
        lineage = change.lineage
        with self._lock:
            self._inflight[mid] = [ticket]
            self._asked[mid] = asked
        ticket.submitted = True
        self.repository.commit(
            change,
            inbox=InboxEntry(self.consumer, mid, None if reply is None else reply.finish,
                             asked),
            effects=self.effects_for(events),
            keep_private=1 if self.records_input else 0,
            on_done=lambda exc: self._committed(env, lineage, reply, exc),
        )

    def _catch_up(self) -> None:
        """After a refused commit: reload from the store, then decide the refused again.

        The writer refuses every later commit of a refused lineage, so once the memory
        is rebuilt (after a barrier: everything decided on the old memory has been
        refused by then, and its tickets are in ``_retry``) the refused commands are
        decided afresh, in their original order, before anything newer. A command
        refused ``MAX_CONFLICTS`` times goes back to the broker instead.
        """
        self.repository.catch_up()
        with self._lock:
            retry, self._retry = self._retry, []
        for env, ticket in retry:
            if ticket.settled:
                continue
            if not self.repository.again(env.message_id):
                ticket.requeue()
                continue
            self._handle(env, ticket)

    def _answer_again(self, env: Envelope, asked: str | None,
                      found: tuple[bytes | None, str | None], ticket: Ticket) -> None:
        """A message handled before: its stored reply, unless the id asked otherwise."""
        stored_reply, stored_hash = found
        if asked is not None and stored_hash is not None and stored_hash != asked:
            self._refuse_conflict(env, ticket)
        else:
            ticket.ack(stored_reply)

    def _refuse_conflict(self, env: Envelope, ticket: Ticket) -> None:
        """Dead-letter a message_id re-used for a different request, and say so."""
        detail = (f"message_id {env.message_id} was already used for a different "
                  f"request; send a new request with a new message_id")
        log.info("%s: %s", self.name, detail)
        reply = env.follow(CommandResult(status=Status.ERROR, reason=IDEMPOTENCY_CONFLICT,
                                         detail=detail)).to_json()
        ticket.refuse(IDEMPOTENCY_CONFLICT, detail, reply)

    def _give_back(self) -> None:
        """Requeue the refused commands this actor will not decide again."""
        with self._lock:
            retry, self._retry = self._retry, []
        for _env, t in retry:
            t.requeue()

    def _on_crash(self, failure: Failure) -> None:
        self._give_back()

    def effects_for(self, events: Sequence[Envelope]) -> Sequence[Effect]:
        """Hook: extra statements a commit of ``events`` runs in its transaction (none)."""
        return ()

    def key_apartment(self, env: Envelope) -> str | None:
        """The partition key of the events (the command's apartment)."""
        return env.apartment_id

    def reply_for(self, env: Envelope, events: Sequence[Envelope]) -> tuple[bytes, str]:
        """The CommandResult for a command and the events it produced, and its status."""
        result = command_result(events, self.refusal(env.payload, [e.payload for e in events]))
        return env.follow(result).to_json(), result.status.value

    def refusal(self, command: Message, events: Sequence[Message]) -> Refusal | None:
        """Hook: the event among ``events`` that turned ``command`` down (None: done).

        What counts as a refusal is the entity's rules' to say; by default none does.
        """
        return None

    def _committed(self, env: Envelope, lineage: int, reply: _Reply | None,
                   exc: BaseException | None) -> None:
        """Writer thread: settle the tickets of a commit."""
        mid = env.message_id
        with self._lock:
            tickets = self._inflight.pop(mid, [])
            asked = self._asked.pop(mid, None)
        if exc is None:
            for t in tickets:
                if reply is None:
                    t.ack()
                else:
                    t.ack(reply.stored, reply.status)
            on_vacant = self.ctx.on_vacant
            if on_vacant is not None and self.vacant():
                on_vacant(self.entity_id)  # refused when anything is still in flight
            return
        if isinstance(exc, DuplicateMessage):
            # A re-send that was not flagged redelivered: the inbox answers it (or
            # refuses a re-used id), and this actor, whose memory applied it a second
            # time, reloads (no crash: a producer retrying is normal, and must not
            # spend the restart intensity).
            found = self.ctx.store.handled(self.consumer, mid)
            for t in tickets:
                self._answer_again(env, asked, found or (None, None), t)
            self.repository.refused(lineage)
        elif isinstance(exc, ConcurrencyError):
            # Decided on memory the store does not share (another writer appended, or
            # an earlier commit of this memory was refused): reload and decide again.
            log.debug("%s: %s; reloading from the store", self.name, exc)
            with self._lock:
                for t in tickets:
                    t.submitted = False  # a crash before the retry re-tells it
                    self._retry.append((env, t))
            self.repository.refused(lineage)
            if self._reported:  # this incarnation crashed: nobody would retry them
                self._give_back()
                return
        else:
            log.warning("%s: commit failed (%r); restarting from the store", self.name, exc)
            for t in tickets:
                t.requeue()
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(CommitFailed(exc))
            return
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(Reload(lineage))


class _Reply:
    """A command's reply, finished by the writer with the position of its events.

    Only the writer learns the positions (inside the transaction); ``stored`` is what
    its last call made, the reply the inbox holds once the commit succeeded.
    """

    def __init__(self, template: bytes, status: str) -> None:
        self.template = template
        self.stored = template
        self.status = status

    def finish(self, position: int | None) -> bytes:
        """Writer thread: the reply with ``position``, remembered as ``stored``."""
        self.stored = with_position(self.template, position)
        return self.stored


class Refusal(Protocol):
    """An event that turned a command down: why (a reason code) and in words."""

    @property
    def reason(self) -> StrEnum:
        """The reason code the reply carries."""

    @property
    def detail(self) -> str:
        """The explanation the reply carries (empty: none)."""


def command_result(events: Sequence[Envelope], refusal: Refusal | None = None) -> CommandResult:
    """Summarise a command's events as its reply.

    ``refusal`` is the event that turned the command down (see
    :meth:`EntityActor.refusal`): the reply is then ``rejected`` with its reason, and
    ``ok`` without one.
    """
    summary = [{"type": e.type, "version": e.version, "message_id": e.message_id,
                **e.payload.model_dump(mode="json")} for e in events]
    if refusal is not None:
        return CommandResult(status=Status.REJECTED, reason=refusal.reason.value,
                             detail=refusal.detail or None, events=summary)
    return CommandResult(status=Status.OK, events=summary)
