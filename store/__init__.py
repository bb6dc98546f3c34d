"""Staybook's store: SQLModel tables, the group-committing writer, and reads."""

from store.db import make_engine
from store.eventstore import EventStore, Snapshot
from store.writer import (
    Commit,
    ConcurrencyError,
    DuplicateMessage,
    InboxEntry,
    StoreWriter,
    WriterStopped,
)

__all__ = [
    "Commit",
    "ConcurrencyError",
    "DuplicateMessage",
    "EventStore",
    "InboxEntry",
    "Snapshot",
    "StoreWriter",
    "WriterStopped",
    "make_engine",
]
