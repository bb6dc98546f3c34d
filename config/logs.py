"""How a node logs: text or one JSON object per line, with the ids of what it handles.

An operator following one command across a node's log (the intake that took or
refused it, the actor that decided it, its crash and its poison letter) searches for
its ``message_id`` or ``correlation_id``. Those are known only while the command is
handled, on whichever thread handles it, so they live in a context variable that the
intake and the actors set around each message (:func:`handling`), and a filter
copies them onto every record logged meanwhile. The JSON format writes them out with
the node's name; the text format stays as people read it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_ids: ContextVar[tuple[str | None, str | None]] = ContextVar("staybook_ids",
                                                             default=(None, None))


@contextlib.contextmanager
def handling(message_id: str | None, correlation_id: str | None = None) -> Iterator[None]:
    """Tag the lines logged in this block (on this thread) with a message's ids."""
    token = _ids.set((message_id, correlation_id or message_id))
    try:
        yield
    finally:
        _ids.reset(token)


class MessageIds(logging.Filter):
    """Puts the ids of the message being handled (None outside one) on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always passes; adds ``message_id`` and ``correlation_id``."""
        record.message_id, record.correlation_id = _ids.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, node, message, the message's ids.

    A traceback goes in ``exception`` as one string, so a line stays one line.
    """

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "node": self.node,
            "message": record.getMessage(),
        }
        mid = getattr(record, "message_id", None)
        if mid is not None:
            out["message_id"] = mid
            out["correlation_id"] = getattr(record, "correlation_id", None)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def handler_for(fmt: LogFormat, node: str, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing ``fmt``, with the ids filter."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(node) if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(MessageIds())
    return handler


def configure(level: str, fmt: LogFormat = "text", node: str = "-") -> None:
    """Log at ``level`` to stderr in ``fmt``, and quiet the libraries' routine lines.

    Alembic says at INFO what every start does (its context, each migration applied);
    ``staybook db upgrade`` and the node's summary line say what matters. pika logs
    every failed connection attempt (at ERROR, with a traceback) and pykka every crash
    it sees as a 20-line ERROR, where the consumers and supervisors log one line each;
    their detail is for DEBUG. psycopg logs a group commit's aborted pipeline at
    WARNING when it meets another node's append; the writer retries it: expected.
    """
    debug = level.upper() == "DEBUG"
    logging.basicConfig(level=level.upper(), handlers=[handler_for(fmt, node)])
    logging.getLogger("alembic").setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("pika").setLevel(logging.DEBUG if debug else logging.CRITICAL)
    logging.getLogger("pykka").setLevel(logging.DEBUG if debug else logging.CRITICAL)
    logging.getLogger("psycopg").setLevel(logging.ERROR)
