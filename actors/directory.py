"""The entity directory: entity id -> actor, over the runtime's dynamic supervisor.

The supervision (restart type ``transient``, intensity, backoff, stuck detection,
the live cap and passivation) is :class:`supervisor.DynamicSupervisor`'s. What the
directory adds is what an entity's work is:

* an entity id is ``kind:key``, and its kind names its actor class;
* its work is a message with its :class:`Ticket`; a ticket is pending until settled
  (acked, rejected or requeued), so an entity with unsettled tickets is never
  passivated, and a re-activation never reads the store behind its predecessor;
* at a crash, the tickets queued for the dead actor go to its successor in their
  original order (unsettled meanwhile, so nothing is lost and no redelivery count
  is spent on them); the message that crashed it is retried up to
  ``poison_retries`` times, then dead-lettered as poison, and its producer gets an
  error reply;
* an entity stopped for good (node stop, a released partition, giving up)
  requeues what it had not submitted to the store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from typing import Any

import pykka

from actors.apartment import ApartmentActor
from actors.base import EntityActor, EntityContext, Handle
from actors.booking import ReservationActor
from actors.outcome import Ticket
from actors.poison import PoisonCounter
from config.lru import BoundedLRU
from messages import Envelope
from messages.replies import POISON
from supervisor import (
    Backoff,
    DynamicChild,
    DynamicSupervisor,
    Failure,
    Intensity,
    Link,
    Scheduler,
)

log = logging.getLogger(__name__)

KINDS: dict[str, type[EntityActor[Any]]] = {
    "apartment": ApartmentActor,
    "reservation": ReservationActor,
}

REMEMBERED = 10_000  # entities whose restarts and last failure outlive their actor


class Directory(DynamicSupervisor):
    """Finds, activates, passivates and restarts entity actors.

    Args:
        ctx: what entity actors share.
        max_live: the cap on live entity actors.
        idle_seconds: passivate actors idle this long.
        intensity: restart limit before the directory gives up.
        backoff: delay before an entity restarts (None: at once).
        poison_retries: how often a message that crashed its actor is retried.
        handler_timeout: abandon an actor stuck this long in one message (None: never).
        scheduler: runs delayed restarts.
        rng: jitter source for the backoff.
    """

    ID = "entities"  # its id in the node's supervision tree

    def __init__(self, ctx: EntityContext, *, max_live: int, idle_seconds: float,
                 intensity: Intensity, backoff: Backoff | None, poison_retries: int,
                 handler_timeout: float | None, scheduler: Scheduler | None = None,
                 rng: random.Random | None = None) -> None:
        super().__init__(self.ID, max_live=max_live, idle_seconds=idle_seconds,
                         intensity=intensity, backoff=backoff,
                         handler_timeout=handler_timeout,
                         history=BoundedLRU(REMEMBERED), scheduler=scheduler, rng=rng)
        # Its own copy of the context: the actors it starts report to this directory.
        self.ctx = dataclasses.replace(ctx, on_vacant=self._vacant)
        self.poison_retries = poison_retries
        self._poison = PoisonCounter(poison_retries)
        self.poisoned = 0

    def dispatch(self, kind: str, key: str, envelope: Envelope, ticket: Ticket,
                 source: str | None = None) -> None:
        """Tell the entity ``kind:key`` to handle a message, activating it if needed.

        ``source`` names the queue the message came from, so :meth:`release` finds the
        entities of a queue this node gives up.

        Raises:
            RuntimeError: when the directory is not running (the caller requeues).
        """
        eid = f"{kind}:{key}"
        ref = self.enlist(eid, ticket, envelope, source)
        ticket.on_settled(lambda t: self.settle(eid, t))
        if ref is None:
            return  # restarting: told when the successor starts
        # A dead actor here has crashed: its report re-tells what it left unsettled.
        with contextlib.suppress(pykka.ActorDeadError):
            ref.tell(Handle(envelope, ticket))

    def release(self, tag: str, timeout: float | None = 10.0) -> int:
        """Stop every entity fed from the queue ``tag``: this node no longer owns it.

        A node that gives a command partition back must not keep its actors: another
        node commits to their streams meanwhile, and memory kept across that time is
        stale when the partition comes back. Their unhandled messages are requeued
        (the broker redelivers them to the queue's next consumer); commits already
        submitted finish in the writer, and ``timeout`` (None: do not wait) bounds
        the wait for the actors to stop and for those commits.

        Returns:
            How many live entities were released.
        """
        n = super().release(tag, timeout)
        if n and timeout is not None:
            try:
                self.ctx.writer.barrier(timeout)
            except Exception as exc:  # noqa: BLE001 - their tickets settle by themselves
                log.warning("released %d entities of %s; their commits did not finish "
                            "within %ss (%s)", n, tag, timeout, exc)
        return n

    # --- the supervisor's hooks -------------------------------------------------------
    def start_child(self, child: DynamicChild, link: Link) -> pykka.ActorRef[Any]:
        """Start the entity's actor of its kind."""
        kind, key = child.id.split(":", 1)
        return KINDS[kind].start(child.id, key, self.ctx, link)

    def resume(self, child: DynamicChild, ref: pykka.ActorRef[Any]) -> None:
        """Tell the successor the messages its predecessor had not submitted, in order."""
        for t, env in list(child.pending.items()):
            if not t.submitted and not t.settled:
                with contextlib.suppress(pykka.ActorDeadError):
                    ref.tell(Handle(env, t))

    def crashed(self, child: DynamicChild, failure: Failure) -> None:
        """Count the message that crashed it; dead-letter it past ``poison_retries``."""
        cause = failure.cause
        if not (isinstance(cause, Handle) and not cause.ticket.submitted):
            return
        letter = self._poison.attempt(cause.envelope, failure)
        if letter is not None:
            self.poisoned += 1
            log.error("dead-lettering poison message %s (%s)", cause.envelope.message_id,
                      cause.envelope.type)
            cause.ticket.refuse(POISON, *letter)

    def dropped(self, child: DynamicChild) -> None:
        """Requeue what the entity had not submitted to the store."""
        for t in list(child.pending):
            if not t.submitted:
                t.requeue()

    def _vacant(self, eid: str) -> None:
        """An entity with nothing in memory answered: passivate it, if it is idle.

        Called on the writer's thread after its tickets were settled. The same check
        as any passivation keeps it safe: an entity with unsettled tickets (another
        command arrived meanwhile) or restarting is left alone.
        """
        with contextlib.suppress(KeyError):
            if self.passivate(eid):
                log.debug("passivated %s: nothing to keep", eid)

    def row(self, c: DynamicChild, now: float) -> dict[str, Any]:
        """An entity's row: the supervisor's, with its kind."""
        return {"id": c.id, "kind": c.id.split(":", 1)[0], **super().row(c, now)}
