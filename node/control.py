"""The node side of the operator console: answers control requests over RabbitMQ.

Every node declares the topic exchange ``<prefix>.control`` and its own exclusive
queue ``<prefix>.control.<node_name>`` bound with ``node.<node_name>`` and ``all``, so
one console reaches one node or every node through the broker alone (no extra port).
A request is a small JSON object ``{"op": ..., "args": {...}}`` with ``reply_to``
(direct reply-to) and ``correlation_id``; the reply is ``{"node", "ok", "result" |
"error"}``. Each op answers the model :data:`messages.control.RESULTS` names,
written with :func:`messages.control.to_wire`: the JSON consoles read is fixed.

The service sees the node through :class:`ControlTarget` (``Node`` is one): its
status, its supervision tree, the entity directory, the store and the dead-letter
book, and nothing else.

Only operators may ask: the request's AMQP ``user_id`` must be in
``settings.control.operators``. RabbitMQ refuses a ``user_id`` that differs from the
connection's user (unless that user is tagged ``impersonator``), so the property
cannot be forged; a request without one is refused too.

The service runs on its own thread with its own connection (pika is not
thread-safe) and reconnects with a bounded backoff, so a flapping broker never
counts against the root supervisor's restart intensity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any, Protocol

import pika
import pykka
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError
from pika.spec import Basic, BasicProperties
from pydantic import BaseModel

from actors.base import GetState, GetVersion
from actors.directory import Directory
from actors.lookup import resolve, stored_state
from broker.base import Broker
from broker.rabbitmq import RabbitConsumer, ReconnectingService, connection_parameters
from broker.topology import Topology, control_key
from config import Settings
from messages.control import (
    ChildInspect,
    ChildRow,
    ControlReply,
    DlqPage,
    EntityInspect,
    EntityRow,
    EventRow,
    FailureInfo,
    HistoryResult,
    InspectResult,
    Letter,
    LetterSummary,
    NodeOverview,
    NodeStatus,
    QueueFlow,
    RepairPage,
    ReplayOutcome,
    StoredInspect,
    ThreadCpu,
    to_wire,
)
from node.deadletters import replay
from node.repair import unpaid_bookings
from node.threads import thread_cpu
from rules.apartment import Apartment, Stay, StayStatus
from store import EventStore
from store.deadletters import DEAD, REPLAYED, REPLAYING, DeadLetterBook
from supervisor import Crash, RefOf, WhichChildren

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 1 << 20
MAX_TOP = 1000
ASK_TIMEOUT = 2.0
ENTITY_CHILDREN = 20  # live entities listed under `entities` in a tree (a node may hold 10 000)
MAX_EVENTS = 50  # recent events an inspect may carry
MUTATING = frozenset({"restart", "stop", "crash", "dlq_replay", "dlq_purge"})
MAX_LETTERS = 1000
MAX_STAYS = 100  # accepted and pending stays an apartment's inspect lists, soonest first


class ControlError(Exception):
    """A request that cannot be answered (told to the console as ``error``)."""


class Entities(Protocol):
    """The entity actors' directory, as far as an operator reads and steers it."""

    def which_children(self) -> list[dict[str, Any]]:
        """Every live entity's row."""
        ...

    def describe(self, eid: str) -> dict[str, Any] | None:
        """One live entity's row."""
        ...

    def ref(self, eid: str) -> pykka.ActorRef[Any] | None:
        """A live entity's actor (None while it restarts)."""
        ...

    def restart(self, eid: str) -> bool:
        """Restart a live entity from the store."""
        ...

    def passivate(self, eid: str) -> bool:
        """Stop an idle entity; False while it holds unsettled deliveries."""
        ...

    def remembered(self, eid: str) -> tuple[int, dict[str, Any] | None] | None:
        """Restarts and last failure of an entity that crashed and is live no more."""
        ...


class ControlTarget(Protocol):
    """What the control service reads and steers of a node (``Node`` is one).

    Narrow on purpose: the service answers from these alone, so what an operator can
    reach of a node is listed here.
    """

    @property
    def directory(self) -> Entities:
        """The entity actors."""
        ...

    @property
    def store(self) -> EventStore:
        """The event store, read to fold entities and list their history."""
        ...

    @property
    def dead_letters(self) -> DeadLetterBook:
        """The book of dead letters."""
        ...

    @property
    def broker(self) -> Broker:
        """Where a replayed letter is published."""
        ...

    def node_status(self, since: float) -> NodeStatus:
        """The node's counters and gauges, its uptime counted from ``since``."""
        ...

    def supervision_tree(self) -> list[dict[str, Any]]:
        """The supervision tree's rows, nested supervisors expanded ([] while stopping)."""
        ...

    def supervision_root(self) -> pykka.ActorRef[Any] | None:
        """The root supervisor while it runs."""
        ...

    def running_consumers(self) -> list[Any]:
        """The consumers the node runs now: its queues' and its partitions'."""
        ...


class ControlService(ReconnectingService):
    """Answers operator requests for one node (a service child of the root).

    Args:
        target: the node whose state it reports and steers.
        settings: the node's settings (its name, the broker, the operators).
        topology: the deployment's names (the control exchange and queue).
    """

    def __init__(self, target: ControlTarget, settings: Settings, topology: Topology) -> None:
        super().__init__("control", settings.broker.reconnect_max_delay)
        self._target = target
        self._settings = settings
        self._operators = frozenset(settings.control.operators)
        self._exchange = topology.control_exchange
        self._queue = topology.control_queue(settings.node_name)
        self.started_at = time.time()
        self.answered = 0
        self.refused = 0

    # --- service ------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        """The connection's facts, and the requests answered and refused."""
        return {**super().facts(), "answered": self.answered, "refused": self.refused}

    def session(self) -> None:
        """One connection's life: answer requests until stopped or the link fails."""
        self._serve()

    def _serve(self) -> None:
        b = self._settings.broker
        conn = pika.BlockingConnection(connection_parameters(b.url, heartbeat=b.heartbeat))
        try:
            ch = conn.channel()
            ch.exchange_declare(self._exchange, exchange_type="topic", durable=True)
            ch.queue_declare(self._queue, exclusive=True, auto_delete=True,
                             arguments={"x-max-length": 1000, "x-overflow": "drop-head"})
            for key in (control_key(self._settings.node_name), control_key(None)):
                ch.queue_bind(self._queue, self._exchange, routing_key=key)
            ch.basic_qos(prefetch_count=16)
            ch.basic_consume(self._queue, self._on_request, auto_ack=True)
            self.connected.set()
            while not self.stopping():
                conn.process_data_events(time_limit=0.2)
        finally:
            if conn.is_open:
                with contextlib.suppress(AMQPError, OSError):
                    conn.close()

    def _on_request(self, ch: BlockingChannel, _method: Basic.Deliver,
                    props: BasicProperties, body: bytes) -> None:
        if not props.reply_to:
            return
        reply = self.answer(body, props.user_id)
        data = json.dumps(to_wire(reply), default=str).encode()
        if len(data) > MAX_REPLY_BYTES:
            data = json.dumps(to_wire(ControlReply(
                node=reply.node, ok=False,
                error=f"reply too large ({len(data)} bytes)"))).encode()
        ch.basic_publish("", props.reply_to, data, BasicProperties(
            correlation_id=props.correlation_id, content_type="application/json"))

    # --- requests -----------------------------------------------------------------
    def answer(self, body: bytes, user_id: str | None) -> ControlReply:
        """The reply to one request from ``user_id`` (the broker-validated AMQP user)."""
        name = self._settings.node_name
        if user_id is None or user_id not in self._operators:
            self.refused += 1
            log.warning("control: refused a request from %r (not an operator)", user_id)
            return ControlReply(node=name, ok=False,
                                error=f"forbidden: {user_id or 'anonymous'} is not an operator")
        try:
            req = json.loads(body)
            op = str(req["op"])
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise ControlError("args must be an object")
            handler = self.ops().get(op)
            if handler is None:
                raise ControlError(f"unknown op {op!r}")
            if op in MUTATING:
                log.warning("control: %s %s requested by %s", op, args.get("id"), user_id)
            result = handler(args)
        except ControlError as exc:
            return ControlReply(node=name, ok=False, error=str(exc))
        except (ValueError, KeyError, TypeError) as exc:
            return ControlReply(node=name, ok=False, error=f"bad request: {exc!r}")
        except Exception as exc:  # a failed answer must not kill the control channel
            log.exception("control: %s failed", body[:200])
            return ControlReply(node=name, ok=False, error=f"failed: {exc!r}")
        self.answered += 1
        return ControlReply(node=name, ok=True, result=result)

    def ops(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """Each op and its handler (the ops of :data:`messages.control.RESULTS`)."""
        return {"status": lambda _a: self.status(), "tree": self.tree,
                "actors": self.actors, "inspect": self.inspect, "restart": self.restart,
                "stop": self.passivate, "crash": self.crash, "overview": self.overview,
                "history": self.history, "queues": lambda _a: self.queues(),
                "dlq_list": self.dlq_list, "dlq_show": self.dlq_show,
                "dlq_replay": self.dlq_replay, "dlq_purge": self.dlq_purge,
                "threads": lambda _a: self.threads(), "repair_check": self.repair_check}

    def overview(self, args: dict[str, Any]) -> NodeOverview:
        """Status, tree, top actors and consumer counts in one reply: one round trip per
        console refresh."""
        return NodeOverview(status=self.status(), tree=self.tree(args),
                            actors=self.actors(args), queues=self.queues())

    def queues(self) -> list[QueueFlow]:
        """What this node's consumers hold and took, per queue."""
        return consumer_counts(self._target.running_consumers())

    def threads(self) -> list[ThreadCpu]:
        """Where this node spends its CPU, by thread group."""
        return thread_cpu()

    def tree(self, args: dict[str, Any]) -> list[ChildRow]:
        """The supervision tree with the live entity actors under ``entities``.

        At most ``entities`` of them (default ``ENTITY_CHILDREN``, at most ``MAX_TOP``),
        the ones an operator looks for first: restarting, then the fullest mailboxes,
        then the most restarts; ``more`` on the ``entities`` node counts the rest.
        """
        limit = max(0, min(int(args.get("entities", ENTITY_CHILDREN)), MAX_TOP))
        tree = [ChildRow.model_validate(c) for c in self._target.supervision_tree()]
        for c in tree:
            if c.id == Directory.ID:
                rows = self._target.directory.which_children()
                rows.sort(key=lambda r: (r["status"] == "running", -r["mailbox"],
                                         -r["restarts"], r["id"]))
                listed: list[EntityRow | ChildRow] = [_listed(r) for r in rows[:limit]]
                c.children = listed
                c.more = max(0, len(rows) - limit)
        return tree

    def status(self) -> NodeStatus:
        """Counters and gauges the console turns into rates."""
        return self._target.node_status(since=self.started_at)

    def actors(self, args: dict[str, Any]) -> list[EntityRow]:
        """The top entity actors by ``sort`` (mailbox, handled, restarts, pending)."""
        kind = args.get("kind")
        sort = str(args.get("sort", "mailbox"))
        top = max(1, min(int(args.get("top", 20)), MAX_TOP))
        rows = [r for r in self._target.directory.which_children()
                if kind is None or r["kind"] == kind]
        if rows and sort not in rows[0]:
            raise ControlError(f"cannot sort by {sort!r}")
        rows.sort(key=lambda r: (-r.get(sort, 0), r["id"]))
        return [_listed(r, node=self._settings.node_name) for r in rows[:top]]

    def inspect(self, args: dict[str, Any]) -> InspectResult:
        """One actor: its facts, last failure with traceback, and (entities) its state.

        An entity that is not live here (passivated, never loaded, or live on another
        node) is folded from the store with its own rules, read-only, and marked
        ``live: false``, with the restarts and last failure this node remembers of it;
        an id without its kind is looked up as an apartment, then as a reservation.
        With ``events: N`` (at most ``MAX_EVENTS``) an entity's answer also carries
        its last N events, so the console's drill-down is one round trip.
        """
        aid = _actor_id(args)
        if ":" not in aid:
            aid = resolve(self._target.store, aid) or aid
        info = self._inspect(aid)
        n = max(0, min(int(args.get("events", 0)), MAX_EVENTS))
        if (n and isinstance(info, EntityInspect | StoredInspect)
                and info.kind in ("apartment", "reservation")):
            info.events = self._events(info.id, n).events
        return info

    def _inspect(self, aid: str) -> InspectResult:
        directory = self._target.directory
        entity = directory.describe(aid)
        if entity is not None:
            ref = directory.ref(aid)
            state: Any = None
            version: dict[str, Any] = {}  # absent when the actor did not answer
            if ref is not None:
                try:
                    state = state_view(ref.ask(GetState(), timeout=ASK_TIMEOUT))
                    version["version"] = ref.ask(GetVersion(), timeout=ASK_TIMEOUT)
                except Exception as exc:  # noqa: BLE001 - dead, stuck or crashed: say so
                    state = {"unavailable": repr(exc)}
            return EntityInspect.model_validate({**entity, **version, "state": state,
                                                 "live": True})
        found = self._tree_child(aid)
        if found is not None:
            return ChildInspect.model_validate(found[0])
        eid = resolve(self._target.store, aid)
        if eid is None:
            raise ControlError(f"{aid}: no such actor on this node, and no such entity")
        state, events = stored_state(self._target.store, eid)
        if not events:
            raise ControlError(f"{aid}: no such actor on this node, and no such entity")
        restarts, last_failure = directory.remembered(eid) or (0, None)
        return StoredInspect(
            id=eid, kind=eid.split(":", 1)[0], live=False, version=len(events),
            restarts=restarts, state=state_view(state),
            last_failure=None if last_failure is None else FailureInfo.model_validate(
                last_failure))

    def history(self, args: dict[str, Any]) -> HistoryResult:
        """An entity's recorded events, newest last (the last ``limit``, at most 1000)."""
        aid = _actor_id(args)
        limit = max(1, min(int(args.get("limit", 50)), MAX_TOP))
        eid = resolve(self._target.store, aid)
        if eid is None:
            raise ControlError(f"{aid}: no such entity in the store")
        return self._events(eid, limit)

    def _events(self, eid: str, limit: int) -> HistoryResult:
        events = self._target.store.load(eid)
        first = len(events) - min(limit, len(events)) + 1
        return HistoryResult(id=eid, version=len(events), events=[
            EventRow(version=v, type=e.type, message_id=e.message_id,
                     causation_id=e.causation_id, occurred_at=e.occurred_at.isoformat(),
                     payload=e.payload.model_dump(mode="json"))
            for v, e in enumerate(events[-limit:], start=first)])

    def restart(self, args: dict[str, Any]) -> str:
        """Restart through the supervisor, so state comes back from the store."""
        aid = _actor_id(args)
        directory = self._target.directory
        if directory.ref(aid) is not None:
            # Not a crash: no InjectedCrash in its history, no restart intensity spent.
            threading.Thread(target=directory.restart, args=(aid,),
                             name=f"ctl-restart-{aid}", daemon=True).start()
            return f"{aid}: restarting (from the store)"
        found = self._tree_child(aid)
        if found is None:
            raise ControlError(f"{aid}: no such live actor on this node")
        _info, child = found
        if isinstance(child, pykka.ActorRef):
            child.tell(Crash("restart requested by an operator"))
        elif child is not None and hasattr(child, "stop"):
            # A stopped permanent service is restarted by its supervisor's liveness check.
            threading.Thread(target=child.stop, name=f"ctl-restart-{aid}", daemon=True).start()
        else:
            raise ControlError(f"{aid}: not running")
        return f"{aid}: restarting"

    def crash(self, args: dict[str, Any]) -> str:
        """A drill: make an actor crash as if its handler had raised."""
        aid = _actor_id(args)
        ref = self._target.directory.ref(aid)
        if ref is None:
            found = self._tree_child(aid)
            child = None if found is None else found[1]
            if not isinstance(child, pykka.ActorRef):
                raise ControlError(f"{aid}: no such live actor on this node "
                                   "(services cannot crash; restart them)")
            ref = child
        ref.tell(Crash("drill"))
        return f"{aid}: crash requested"

    def passivate(self, args: dict[str, Any]) -> str:
        """Stop an idle entity actor; it activates again on its next message."""
        aid = _actor_id(args)
        try:
            stopped = self._target.directory.passivate(aid)
        except KeyError:
            if self._tree_child(aid) is not None:
                raise ControlError(f"{aid}: a supervised child; its supervisor would "
                                   "restart it (use restart)") from None
            raise ControlError(f"{aid}: not live on this node") from None
        if not stopped:
            raise ControlError(f"{aid}: busy (unsettled deliveries); try again")
        return f"{aid}: passivated"

    def repair_check(self, args: dict[str, Any]) -> RepairPage:
        """Reservations whose payment failed while their apartment still holds the
        nights (:mod:`node.repair`): one bounded page, ``after`` a store position, at
        most ``limit`` (at most ``MAX_TOP``). A read: the console sends the repairs."""
        limit = max(1, min(int(args.get("limit", 100)), MAX_TOP))
        return unpaid_bookings(self._target.store, after=max(0, int(args.get("after", 0))),
                               limit=limit)

    # --- dead letters: read from the book in the store, never from the queue ----------
    def dlq_list(self, args: dict[str, Any]) -> DlqPage:
        """Dead letters in the order they landed (``after`` a seq, at most ``limit``).

        A read of the store: however often it is asked, no letter moves or changes.
        ``all`` includes the replayed ones.
        """
        book = self._target.dead_letters
        limit = max(1, min(int(args.get("limit", 100)), MAX_LETTERS))
        statuses = (DEAD, REPLAYING, REPLAYED) if args.get("all") else (DEAD, REPLAYING)
        page = book.page(limit=limit, after=int(args.get("after", 0)), statuses=statuses)
        return DlqPage(letters=[LetterSummary.model_validate(r.summary()) for r in page],
                       dead=book.count(DEAD), replaying=book.count(REPLAYING),
                       replayed=book.count(REPLAYED))

    def dlq_show(self, args: dict[str, Any]) -> list[Letter]:
        """The letter with id ``id`` (or every one with that message id), in full."""
        return [Letter.model_validate(r.full())
                for r in self._target.dead_letters.find(_letter_id(args))]

    def dlq_replay(self, args: dict[str, Any]) -> list[ReplayOutcome]:
        """Put one letter (``id``) or every dead one (``all``) back on its queue."""
        ident = None if args.get("all") else _letter_id(args)
        return [ReplayOutcome.model_validate(r)
                for r in replay(self._target.dead_letters, self._target.broker, ident)]

    def dlq_purge(self, args: dict[str, Any]) -> int:
        """Drop every letter from the book (``replayed_only``: the replayed ones)."""
        return self._target.dead_letters.purge(replayed_only=bool(args.get("replayed_only")))

    def _tree_child(self, aid: str) -> tuple[dict[str, Any], Any] | None:
        """A child of the supervision tree by id (``payment``) or path (``handlers/payment``)."""
        root = self._target.supervision_root()
        if root is None:
            return None
        return _find(root, aid.split("/"), "")


def _find(sup: pykka.ActorRef[Any], path: list[str], at: str
          ) -> tuple[dict[str, Any], Any] | None:
    children: list[dict[str, Any]] = sup.ask(WhichChildren(), timeout=ASK_TIMEOUT)  # type: ignore[assignment]
    for c in children:
        here = f"{at}/{c['id']}" if at else c["id"]
        if c["id"] == path[-1] and (len(path) == 1 or here.endswith("/".join(path))):
            c["path"] = here
            return c, sup.ask(RefOf(c["id"]), timeout=ASK_TIMEOUT)
        if c.get("kind") == "supervisor":
            sub = sup.ask(RefOf(c["id"]), timeout=ASK_TIMEOUT)
            if isinstance(sub, pykka.ActorRef):
                found = _find(sub, path, here)
                if found is not None:
                    return found
    return None


def _letter_id(args: dict[str, Any]) -> str:
    ident = args.get("id")
    if not isinstance(ident, str | int) or not str(ident) or len(str(ident)) > 200:
        raise ControlError("a dead letter id (or message id) is required")
    return str(ident)


def _actor_id(args: dict[str, Any]) -> str:
    aid = args.get("id")
    if not isinstance(aid, str) or not aid or len(aid) > 300:
        raise ControlError("an actor id is required, e.g. apartment:apt-1")
    return aid


def tree_restarts(tree: list[dict[str, Any]]) -> int:
    """Restarts counted by every supervisor of a tree (entities are counted apart, by the
    directory, so the entity actors listed under ``entities`` are not added again)."""
    return sum(int(c.get("restarts", 0))
               + (0 if c["id"] == Directory.ID else tree_restarts(c.get("children", [])))
               for c in tree)


def consumer_counts(consumers: list[Any]) -> list[QueueFlow]:
    """Per queue, what this node's ``consumers`` hold unacked and have taken off it.

    The broker's passive declare tells only ready messages and consumers; each node
    knows its own in-flight deliveries and acks, and the console sums them over the
    nodes (see ``console.tui.queue_flow``). Counters start at 0 with each consumer.
    """
    out: dict[str, QueueFlow] = {}
    for c in consumers:
        if not isinstance(c, RabbitConsumer):
            continue
        row = out.setdefault(c.queue, QueueFlow(queue=c.queue, unacked=0, delivered=0,
                                                acked=0))
        row.unacked += c.unacked
        row.delivered += c.delivered
        row.acked += c.acked
    return sorted(out.values(), key=lambda r: r.queue)


def _listed(row: dict[str, Any], node: str | None = None) -> EntityRow:
    """An entity's row in a listing: the last failure without its traceback (inspect
    has that), and the node it is on when the listing merges nodes."""
    out = EntityRow.model_validate(row if node is None else {**row, "node": node})
    if out.last_failure is not None:
        out.last_failure = out.last_failure.brief()
    return out


def state_view(state: Any) -> Any:
    """An entity's state as an operator reads it: an apartment's by its dates.

    An apartment's state also holds the indexes that keep its commands cheap (nights
    as day numbers, chunked); shown as they are they bury the calendar. Its view is
    the apartment's fields, the accepted and pending stays with their dates (the
    soonest ``MAX_STAYS``), its blocks, and how many requests it was ever sent (the
    answered ones are in its history: ``ctl history``).
    """
    if not isinstance(state, Apartment):
        return jsonable(state)
    live = [*state.pending.values(),
            *(s for _start, _end, rid in state.booked_dates
              if (s := state.stays.get(rid)) is not None)]
    live.sort(key=lambda s: (s.start, s.reservation_id))
    return {
        **{f: jsonable(getattr(state, f)) for f in (
            "apartment_id", "listed", "delisted", "owner_id", "city", "title",
            "description", "price_per_night", "currency", "capacity")},
        "stays": [_stay_view(s) for s in live[:MAX_STAYS]],
        **({"stays_not_shown": len(live) - MAX_STAYS} if len(live) > MAX_STAYS else {}),
        "blocks": [{"block_id": b.block_id, "start": b.start.isoformat(),
                    "end": b.end.isoformat()}
                   for b in sorted(state.blocks.values(), key=lambda b: b.start)],
        "requests": len(state.stays),
    }


def _stay_view(s: Stay) -> dict[str, Any]:
    """A stay by its dates (the card only by its last four digits; a deadline only while
    it is pending: an answered request keeps the one it had)."""
    return {"reservation_id": s.reservation_id, "status": s.status.value,
            "guest_id": s.guest_id, "start": s.start.isoformat(), "end": s.end.isoformat(),
            "nights": (s.end - s.start).days, "guests": s.guests,
            "total_price": s.total_price, "card_last4": s.card_last4,
            **({"expires_at": s.expires_at.isoformat()}
               if s.expires_at and s.status is StayStatus.PENDING else {})}


def jsonable(obj: Any, depth: int = 0) -> Any:
    """Actor state as JSON-ready data (pydantic models, dataclasses, dates, enums)."""
    if depth > 20:
        return repr(obj)
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name), depth + 1)
                for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return jsonable(obj.value, depth + 1)
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, Mapping):  # dicts and immutable maps alike
        return {str(k): jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [jsonable(v, depth + 1) for v in obj]
    return repr(obj)
