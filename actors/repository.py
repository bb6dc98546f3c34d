"""An entity's repository: its memory of one stream, and the fence on what it appends.

The entity actor (:mod:`actors.base`) decides; the repository keeps what it decides
on. It rebuilds the memory from the store (the stream's snapshot and the events after
it), folds what the actor decides into it at once (so the next message sees it), and
gives the writer each commit with the version and the lineage it was decided on (see
:class:`store.Commit`), writing a snapshot every ``snapshot_every`` events. When the
writer refuses a commit, the memory it was decided on is stale: :meth:`catch_up`
rebuilds it behind everything already submitted.

A repository is used on its actor's thread only.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from config.lru import BoundedLRU
from messages.base import Envelope, Message
from store import Commit, EventStore, InboxEntry, StoreWriter
from store.eventstore import Snapshot
from store.writer import Done, Effect, snapshot_effects

log = logging.getLogger(__name__)

S = TypeVar("S")

_LINEAGES = itertools.count(1)  # one per rehydration, unique in the process
MAX_CONFLICTS = 20  # local re-decisions of one command before it goes back to the broker


class Fold(Protocol[S]):
    """What a repository needs of an entity: its first state, its fold, its snapshots."""

    @property
    def snapshot_tag(self) -> str | None:
        """The format of its snapshots (None: it takes none)."""

    def initial(self) -> S:
        """The state of a stream with no events."""

    def apply(self, state: S, event: Message) -> S:
        """``state`` with one more event."""

    def encode_state(self, state: S) -> tuple[bytes, S]:
        """A snapshot's body of ``state``, and the state read back from it."""

    def decode_state(self, body: bytes) -> S:
        """The state in a snapshot's body; raises if it is not one."""


@dataclass(frozen=True)
class Change(Generic[S]):
    """Events decided on one memory, and the state they make of it.

    Attributes:
        events: the events, in order.
        state: the memory with the events folded in.
        expected_version: the stream's version the events were decided on.
        lineage: the memory they were decided on (see :class:`store.Commit`).
    """

    events: Sequence[Envelope]
    state: S
    expected_version: int
    lineage: int


class Repository(Generic[S]):
    """One stream's memory: rehydrated, folded forward, committed behind a fence.

    Args:
        stream_id: the stream (the entity's id).
        fold: the entity's state and how events change it.
        store: what it rehydrates from.
        writer: what it commits through.
        snapshot_every: a snapshot when the stream has grown by this many events since
            the last one (0: never; nor when ``fold`` takes none).

    Attributes:
        state: the memory.
        version: the number of events ``state`` holds.
        snapshot_version: the version of the snapshot read or written last (0: none).
        lineage: which rehydration ``state`` descends from.
    """

    def __init__(self, stream_id: str, fold: Fold[S], store: EventStore, writer: StoreWriter,
                 snapshot_every: int) -> None:
        self.stream_id = stream_id
        self._fold = fold
        self._store = store
        self._writer = writer
        self._every = snapshot_every
        self.state: S = fold.initial()
        self.version = 0
        self.snapshot_version = 0
        self.lineage = 0
        self._stale = 0  # the newest lineage a commit of was refused
        self._conflicts: BoundedLRU[str, int] = BoundedLRU(10_000)  # message_id -> refusals

    def rehydrate(self) -> None:
        """Rebuild memory from the store: the stream's snapshot and the events after it.

        A snapshot is written in the commit of the events it covers, so it is the state
        of exactly those. One in another format (``snapshot_tag``: written by other
        code) or that does not decode is not used: a warning is logged and the whole
        stream folded, and the next commit writes a new snapshot. Whatever is in the
        snapshots table, rehydration never fails because of it.
        """
        tag = self._fold.snapshot_tag
        snapped = 0
        state = self._fold.initial()
        if tag is None:
            events = self._store.load(self.stream_id)
        else:
            snapshot, events = self._store.resume(self.stream_id)
            if snapshot is not None:
                try:
                    if snapshot.schema_tag != tag:
                        raise ValueError(f"its format is {snapshot.schema_tag!r}, "
                                         f"this code's {tag!r}")
                    state, snapped = self._fold.decode_state(snapshot.body), snapshot.version
                except Exception as exc:  # noqa: BLE001 - any bad snapshot: replay instead
                    log.warning("%s: not using the snapshot at version %d (%s); replaying "
                                "the stream", self.stream_id, snapshot.version, exc)
                    events = self._store.load(self.stream_id)
        for env in events:
            state = self._fold.apply(state, env.payload)
        self.state = state
        self.version = snapped + len(events)
        self.snapshot_version = snapped
        self.lineage = next(_LINEAGES)

    def change(self, events: Sequence[Envelope]) -> Change[S]:
        """``events``, decided on the memory as it is, and the state they make of it.

        Nothing changes until :meth:`commit`: a fold that raises leaves the memory whole.
        """
        state = self.state
        for e in events:
            state = self._fold.apply(state, e.payload)
        return Change(events, state, self.version, self.lineage)

    def commit(self, change: Change[S], *, inbox: InboxEntry, effects: Sequence[Effect] = (),
               keep_private: int = 0, on_done: Done) -> None:
        """Make ``change`` the memory and submit it, with ``inbox`` and ``effects``, as one
        commit fenced by the version and lineage it was decided on.

        Every ``snapshot_every`` events the commit also writes the state's snapshot, so
        a snapshot is never ahead of its stream and a refused commit writes none.
        """
        assert (change.expected_version, change.lineage) == (self.version, self.lineage)
        state, version = change.state, change.expected_version + len(change.events)
        every = self._every
        taken: list[Effect] = []
        if (change.events and self._fold.snapshot_tag and every
                and version - self.snapshot_version >= every):
            state, taken = self._snapshot(state, version)
        commit = Commit(stream_id=self.stream_id, expected_version=change.expected_version,
                        events=change.events, inbox=inbox, on_done=on_done,
                        keep_private=keep_private, lineage=change.lineage,
                        effects=[*effects, *taken])
        self.state, self.version = state, version
        self._writer.submit(commit)

    def refused(self, lineage: int) -> None:
        """The writer refused a commit decided on ``lineage``: that memory is stale."""
        self._stale = max(self._stale, lineage)

    def catch_up(self) -> bool:
        """Rebuild the memory if a commit of it was refused; True when it was rebuilt.

        The writer refuses every later commit of a refused lineage, so the memory is
        read again after a barrier: by then everything decided on the old memory has
        been answered or refused.
        """
        if not (self._stale and self._stale == self.lineage):
            return False
        self._writer.barrier()
        self.rehydrate()
        return True

    def again(self, message_id: str) -> bool:
        """Count a refusal of ``message_id``; False once it is to go back to the broker.

        A command refused ``MAX_CONFLICTS`` times here (its stream busy with another
        writer) is given back rather than decided again and again.
        """
        n = self._conflicts.get(message_id, 0) + 1
        self._conflicts.put(message_id, n)
        if n > MAX_CONFLICTS:
            log.warning("%s: %s refused %d times; back to the broker", self.stream_id,
                        message_id, n)
            return False
        return True

    def _snapshot(self, state: S, version: int) -> tuple[S, list[Effect]]:
        """``state`` as its snapshot at ``version`` holds it, and the rows that write it.

        The state as read back from the body equals ``state``; keeping it instead means
        what the snapshot holds stays encoded, so the next snapshot encodes only what
        changed since. A snapshot that cannot be made is skipped (it is only a
        shortcut), and tried again ``snapshot_every`` events later.
        """
        tag = self._fold.snapshot_tag
        assert tag is not None
        self.snapshot_version = version
        try:
            body, again = self._fold.encode_state(state)
        except Exception:
            log.exception("%s: no snapshot at version %d", self.stream_id, version)
            return state, []
        return again, snapshot_effects(Snapshot(self.stream_id, version, tag, body))
