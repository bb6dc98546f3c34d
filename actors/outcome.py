"""What an actor may know about a message in flight, and the one outcome it gives it.

Actors never hold a broker's delivery: the intake wraps each one in a :class:`Ticket`
and settles the delivery when the ticket gets its outcome. So the actors depend on no
broker, and what they may do to a message is exactly the three outcomes below.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

OutcomeKind = Literal["ack", "requeue", "refuse"]


@dataclass(frozen=True)
class Outcome:
    """How a message ended.

    Attributes:
        kind: ``ack`` (done; the reply, if any, goes to the producer first),
            ``requeue`` (give it back for redelivery) or ``refuse`` (dead-letter it
            with ``reason`` and ``detail``, answering with the reply).
        reply: the answer for the producer (sent only if it asked for one).
        status: the reply's status when the actor knows it (``ok``, ``rejected``), so
            an observer need not parse the reply; None: unknown.
    """

    kind: OutcomeKind
    reply: bytes | None = None
    reason: str = ""
    detail: str = ""
    status: str | None = None


class Ticket:
    """One message in flight; it accepts exactly one outcome, from any thread.

    The first of :meth:`ack`, :meth:`requeue` and :meth:`refuse` wins; later calls are
    ignored, so an actor's commit may race a crash handler or a shutdown safely. The
    ``on_settled`` observers run once, with ``outcome`` set, before ``settle`` passes
    the outcome on (to the broker, in the intake).

    Args:
        settle: carries the outcome out, called once, on the settling thread.
        message_id: the message's id as the broker knows it, if any.
        redelivered: the broker delivered it before (it may have been handled).

    Attributes:
        submitted: an actor handed its effect to the writer: the commit's callback
            settles it, so a crash must neither retry nor give it back.
        outcome: how it was settled (None until then).
    """

    def __init__(self, settle: Callable[[Outcome], None], *, message_id: str | None = None,
                 redelivered: bool = False) -> None:
        self.message_id = message_id
        self.redelivered = redelivered
        self.submitted = False
        self.outcome: Outcome | None = None
        self._settle = settle
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Ticket], None]] = []

    @property
    def settled(self) -> bool:
        """Whether an outcome was already given."""
        return self.outcome is not None

    def on_settled(self, callback: Callable[[Ticket], None]) -> None:
        """Call ``callback(self)`` once this ticket is settled (now, if it is)."""
        with self._lock:
            if self.outcome is None:
                self._callbacks.append(callback)
                return
        callback(self)

    def ack(self, reply: bytes | None = None, status: str | None = None) -> None:
        """Done: answer with ``reply`` (when the producer asked), then acknowledge.

        Args:
            status: the reply's status, if the caller knows it (see :class:`Outcome`).
        """
        self._give(Outcome("ack", reply, status=status))

    def requeue(self) -> None:
        """Not done here: give the message back for redelivery."""
        self._give(Outcome("requeue"))

    def refuse(self, reason: str, detail: str, reply: bytes | None = None) -> None:
        """Never to be done: dead-letter it with ``reason``, answering with ``reply``."""
        self._give(Outcome("refuse", reply, reason, detail))

    def _give(self, outcome: Outcome) -> None:
        with self._lock:
            if self.outcome is not None:
                return
            self.outcome = outcome
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)
        self._settle(outcome)
