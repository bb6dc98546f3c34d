"""The entity actor: an apartment or a reservation, deciding one message at a time.

Crash reporting (:class:`supervisor.SupervisedActor`) is the supervision runtime's;
the memory, its snapshots and the commit fence are the repository's
(:mod:`actors.repository`); what the store writer's thread touches is in
:mod:`actors.inflight`. This module adds the mailbox: the messages (:class:`Handle`,
:class:`Reload`) that drive an entity, the requests (:class:`GetState`,
:class:`GetVersion`) that read it, its replies, and the hooks an entity implements.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import pykka

from actors.inflight import Outcomes, Pending, Reply
from actors.outcome import Ticket
from actors.repository import Repository
from config import ActorSettings
from config.logs import handling
from messages.base import Envelope, Message
from messages.replies import IDEMPOTENCY_CONFLICT, CommandResult, Status
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
    """Tell an entity that a commit of ``lineage`` was refused: take the refusal back
    (handed over by the writer) and rebuild its memory.

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


_ACTORS = ActorSettings()  # the defaults of what a node sets from its settings


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
    max_stay_nights: int = field(default_factory=lambda: _ACTORS.max_stay_nights)
    clock: Clock = wall_clock
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    inject: Callable[[str, Envelope], None] | None = None
    snapshot_every: int = field(default_factory=lambda: _ACTORS.snapshot_every)
    # Told an entity's id when it has nothing worth keeping in memory (see
    # EntityActor.vacant); the directory passivates it if it is idle.
    on_vacant: Callable[[str], None] | None = None


S = TypeVar("S")


class EntityActor(SupervisedActor, Generic[S]):
    """An entity (one event stream) as an actor: its mailbox, its decisions, its replies.

    Its memory is its :attr:`repository`'s (:mod:`actors.repository`): rehydrated
    from the store, folded forward by every decision, and committed behind a fence.
    For each message: a message id already in the inbox gets its stored reply and
    changes nothing (the inbox is read first for redeliveries; for anything else the
    inbox row's primary key catches the duplicate at commit, and the actor reloads);
    a re-send of a message whose commit is in flight waits on that commit; otherwise
    ``decide`` yields events, the repository folds them into memory at once (so the
    next message sees them), and the events, the inbox row and the reply go to the
    writer as one commit. The ticket is acked and the reply sent only after that
    commit is durable. A commit refused for a duplicate or a stale version means
    memory ran ahead of the store: the actor reloads it (producers retrying are normal
    and must not spend the restart intensity), answers a duplicate from the inbox and
    decides a stale command again; any other failed commit crashes the actor and its
    supervisor restarts it from the store. What the writer's thread touches is in
    :mod:`actors.inflight`.

    A process entity (``records_input``) records a private copy of the fact it
    reacts to as its first event, so it can be rehydrated; only what it decides is
    published.

    An entity whose stream grows without bound (an apartment) sets ``snapshot_tag``
    and implements :meth:`encode_state` and :meth:`decode_state`: every
    ``snapshot_every`` events its state is written in the same commit as the events.

    Subclasses set ``kind`` and implement :meth:`initial`, :meth:`decide_payloads`
    and :meth:`apply`; one that replies implements :meth:`refusal`.
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
        self._inflight: dict[str, Pending] = {}  # message_id -> its commit, not yet read back
        self._outcomes = Outcomes()  # the writer's thread hands them to this one
        self._retry: deque[tuple[Envelope, Ticket]] = deque()  # refused, to decide again

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

    def vacant(self, state: S) -> bool:
        """Whether ``state`` is worth nothing in memory (e.g. an apartment never added).

        A command for an id nobody created is refused, but the actor it activated
        would otherwise stay live, shown in the tree as if it ran something.
        """
        return False

    def refusal(self, command: Message, events: Sequence[Message]) -> Refusal | None:
        """The event among ``events`` that turned ``command`` down (None: done).

        What counts as a refusal is the entity's rules' to say; by default none does.
        """
        return None

    def effects_for(self, events: Sequence[Envelope]) -> Sequence[Effect]:
        """Extra statements a commit of ``events`` runs in its transaction (none)."""
        return ()

    def key_apartment(self, env: Envelope) -> str | None:
        """The partition key of the events (the command's apartment)."""
        return env.apartment_id

    # --- life ---------------------------------------------------------------
    @property
    def state(self) -> S:
        """The memory ``decide`` runs on (the repository's)."""
        return self.repository.state

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

    def on_receive(self, message: Any) -> Any:
        """As the supervision runtime does, with the message's ids on its log lines."""
        with logged_as(message):
            return super().on_receive(message)

    def on_stop(self) -> None:
        """Give back the refused commands a stopped actor will not decide again."""
        self._give_back()

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
        pending = self._inflight.get(mid)
        if pending is not None:  # a re-send of a message not yet committed
            if pending.asked != asked:
                self._refuse_conflict(env, ticket)
            else:
                pending.join(ticket)
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
        reply = Reply(*self._reply_for(env, events)) if self.replies else None
        pending = Pending(env, asked, change.lineage, reply, self.vacant(change.state), ticket)
        self._inflight[mid] = pending
        ticket.submitted = True
        self.repository.commit(
            change,
            inbox=InboxEntry(self.consumer, mid, None if reply is None else reply.finish,
                             asked),
            effects=self.effects_for(events),
            keep_private=1 if self.records_input else 0,
            on_done=functools.partial(self._committed, pending),
        )

    def _reply_for(self, env: Envelope, events: Sequence[Envelope]) -> tuple[bytes, str]:
        """The CommandResult for a command and the events it produced, and its status."""
        result = command_result(events, self.refusal(env.payload, [e.payload for e in events]))
        return env.follow(result).to_json(), result.status.value

    def _committed(self, pending: Pending, exc: BaseException | None) -> None:
        """Writer thread: answer a durable commit's tickets; hand its outcome over.

        Only ``pending`` and the handoff are used here (see :mod:`actors.inflight`):
        the actor learns every outcome on its own thread (:meth:`_read_outcomes`),
        where a refused commit's tickets are answered or decided again. Any other
        failure gives the tickets back and crashes the actor, which restarts from
        the store.
        """
        if exc is None:
            pending.answer()
            self._outcomes.put(pending, None)
            on_vacant = self.ctx.on_vacant
            if on_vacant is not None and pending.vacant:
                on_vacant(self.entity_id)  # refused when anything is still in flight
            return
        if not isinstance(exc, ConcurrencyError | DuplicateMessage):
            log.warning("%s: commit failed (%r); restarting from the store", self.name, exc)
            for t in pending.take():
                t.requeue()
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(CommitFailed(exc))
            return
        if not self._outcomes.put(pending, exc):  # stopped: nobody here decides them again
            for t in pending.take():
                t.requeue()
            return
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(Reload(pending.lineage))

    def _catch_up(self) -> None:
        """Read the commits' outcomes; after a refusal, reload, then decide the refused again.

        The writer refuses every later commit of a refused lineage, so once the memory
        is rebuilt (after a barrier: everything decided on the old memory has been
        refused by then, and is read back here) the refused commands are decided
        afresh, in their original order, before anything newer. Each is dropped only
        once decided: a store outage met on the way runs this again from it.
        """
        self._read_outcomes()
        if self.repository.catch_up():
            self._read_outcomes()
        while self._retry:
            env, ticket = self._retry[0]
            if not ticket.settled:
                self._handle(env, ticket)
            self._retry.popleft()

    def _read_outcomes(self) -> None:
        """Forget the commits the writer answered; take back the ones it refused.

        A duplicate is answered from the inbox (or refused as a re-used id), and the
        memory that applied it a second time is rebuilt; a commit decided on memory
        the store does not share (another writer appended, or an earlier commit of
        that memory was refused) is decided again, up to the repository's limit. An
        outcome is dropped only once read: a store outage met on the way reads it again.
        """
        outcomes = self._outcomes
        while outcomes:
            pending, error = outcomes.first()
            env = pending.envelope
            found = None
            if isinstance(error, DuplicateMessage):
                found = self.ctx.store.handled(self.consumer, env.message_id)
            outcomes.drop_first()
            if self._inflight.get(env.message_id) is pending:
                del self._inflight[env.message_id]
            if error is None:
                continue
            self.repository.refused(pending.lineage)
            tickets = pending.take()
            if isinstance(error, DuplicateMessage):
                for t in tickets:
                    self._answer_again(env, pending.asked, found or (None, None), t)
            elif self.repository.again(env.message_id):
                log.debug("%s: %s; reloading from the store", self.name, error)
                for t in tickets:
                    t.submitted = False  # a crash before the retry re-tells it
                    self._retry.append((env, t))
            else:
                for t in tickets:
                    t.requeue()

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
        """Requeue the refused commands this actor will not decide again.

        Closing the handoff makes the writer requeue what it refuses from now on.
        """
        for pending, error in self._outcomes.close():
            if error is not None:
                for t in pending.take():
                    t.requeue()
        while self._retry:
            self._retry.popleft()[1].requeue()

    def _on_crash(self, failure: Failure) -> None:
        self._give_back()


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
