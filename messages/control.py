"""The control channel's answers: one model per op (``node/control.py`` answers them).

The operator's console (``staybook ctl``, the live view, the benchmarks) asks a node
``{"op": ..., "args": {...}}`` and gets ``{"node", "ok", "result" | "error"}``. Each
op's ``result`` is the model named in :data:`RESULTS`, so the node builds typed
answers and a console may read them back into the same models.

The JSON is fixed: consoles of other releases read it. A model is written with
:func:`to_wire`, which leaves out every field the node did not set, so an optional
key (``more``, ``path``, ``events``, a listing's ``traceback``) is absent rather
than null, exactly where it always was; fields are declared in the order the keys go
out. ``tests/integration/test_control_wire.py`` pins each op's JSON, and
docs/asyncapi.yaml publishes these schemas with the control channel.

Rows of the supervision tree and of entity actors allow extra keys: a child's own
facts (``describe``) pass through to the console as they are.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Row(BaseModel):
    """A row that carries whatever else its source reported, after its own fields."""

    model_config = ConfigDict(extra="allow")


class FailureInfo(BaseModel):
    """A child's last crash. Listings leave out ``traceback`` (``inspect`` has it)."""

    type: str
    message: str
    traceback: str | None = None
    at: float = Field(description="time.time() of the crash")

    def brief(self) -> FailureInfo:
        """The same failure without its traceback, for a listing."""
        return FailureInfo(type=self.type, message=self.message, at=self.at)


class EntityRow(_Row):
    """A live entity actor (apartment or reservation), as its directory reports it.

    ``node`` is set only in the ``actors`` listing, which merges every node's rows.
    """

    id: str
    kind: str
    restart: str
    source: str | None = Field(description="the queue its commands come from")
    status: str = Field(description="running or restarting")
    mailbox: int
    pending: int = Field(description="deliveries told to it, not yet settled")
    handled: int
    restarts: int
    uptime: float
    last_failure: FailureInfo | None
    node: str | None = None


class ChildRow(_Row):
    """A child of the supervision tree: a service, an actor or a nested supervisor.

    ``kind`` and ``mailbox`` come from the child itself (a service has no mailbox; a
    child that is not running has neither). A supervisor's children are nested; the
    ``entities`` row lists the live entity actors it chose and counts the rest in
    ``more``.
    """

    id: str
    restart: str
    status: str
    restarts: int
    uptime: float
    last_failure: FailureInfo | None
    kind: str | None = None
    mailbox: int | None = None
    children: list[EntityRow | ChildRow] | None = None
    more: int | None = None


class NodeStatus(BaseModel):
    """Counters and gauges of one node; the console turns them into rates."""

    node: str
    time: float
    uptime: float = Field(description="seconds since the node's control service started")
    live_actors: int
    max_live: int
    activations: int
    passivations: int
    restarts: int
    commands: int
    handled: int
    p99_ms: float | None
    dead_letters: int
    outbox_backlog: int
    writer_backlog: int
    tree_status: Literal["running", "failed"]
    ready: bool
    store: str = Field(description="up, or how long it has been down and why")
    store_outages: int
    partitions: list[int] | None
    members: list[str] | None


class QueueFlow(BaseModel):
    """What this node's consumers of one queue hold unacked and have taken off it."""

    queue: str
    unacked: int
    delivered: int
    acked: int


class ThreadCpu(BaseModel):
    """CPU seconds of one group of a node's threads (their names without numbers)."""

    thread: str
    threads: int
    cpu_s: float


class NodeOverview(BaseModel):
    """Status, tree, top actors and queues: one round trip per console refresh."""

    status: NodeStatus
    tree: list[ChildRow]
    actors: list[EntityRow]
    queues: list[QueueFlow]


class EventRow(BaseModel):
    """One recorded event of an entity, at its version in the stream."""

    version: int
    type: str
    message_id: str
    causation_id: str | None
    occurred_at: str
    payload: dict[str, Any]


class EntityInspect(EntityRow):
    """A live entity: its row, its state as an operator reads it, and (when asked)
    its last events. Without ``version`` when the actor did not answer."""

    version: int | None = None
    state: Any
    live: bool
    events: list[EventRow] | None = None


class ChildInspect(ChildRow):
    """A child of the supervision tree, found by id or path."""

    path: str


class StoredInspect(BaseModel):
    """An entity live nowhere here, folded from the store with what this node
    remembers of its restarts."""

    id: str
    kind: str
    live: bool
    version: int
    restarts: int
    last_failure: FailureInfo | None
    state: Any
    events: list[EventRow] | None = None


InspectResult = EntityInspect | ChildInspect | StoredInspect


class HistoryResult(BaseModel):
    """An entity's last events, newest last; ``version`` counts all of them."""

    id: str
    version: int
    events: list[EventRow]


class UnpaidBooking(BaseModel):
    """A reservation whose payment failed while its apartment still holds the nights."""

    reservation_id: str
    apartment_id: str
    guest_id: str
    start: str
    end: str
    amount: int
    currency: str
    reason: str


class RepairPage(BaseModel):
    """One bounded page of the scan for unpaid bookings; ``next`` is None at the end."""

    found: list[UnpaidBooking]
    scanned: int
    next: int | None


class LetterSummary(BaseModel):
    """A dead letter as an operator lists it: no headers, no body."""

    id: int
    status: str
    queue: str | None
    reason: str | None
    type: str | None
    message_id: str | None
    detail: str | None
    recorded_at: str
    replays: int


class Letter(LetterSummary):
    """A dead letter in full, its body as text."""

    correlation_id: str | None
    reply_to: str | None
    headers: dict[str, Any]
    body: str
    replayed_at: str | None
    last_error: str | None


class DlqPage(BaseModel):
    """A page of the dead-letter book, with the book's counts by status."""

    letters: list[LetterSummary]
    dead: int
    replaying: int
    replayed: int


class ReplayOutcome(BaseModel):
    """What became of one letter a replay looked at: ``queue`` if it went back,
    ``error`` if not."""

    id: int
    replayed: bool
    queue: str | None = None
    error: str | None = None


class ControlRequest(BaseModel):
    """An operator's request to a node."""

    op: str
    args: dict[str, Any] = Field(default_factory=dict)


class ControlReply(BaseModel):
    """A node's answer: ``result`` when ``ok``, else ``error``."""

    node: str
    ok: bool
    result: Any = None
    error: str | None = None


ActionResult = str  # restart, stop, crash: one line for the operator

RESULTS: dict[str, Any] = {
    "status": NodeStatus,
    "tree": list[ChildRow],
    "actors": list[EntityRow],
    "inspect": InspectResult,
    "history": HistoryResult,
    "overview": NodeOverview,
    "queues": list[QueueFlow],
    "threads": list[ThreadCpu],
    "repair_check": RepairPage,
    "dlq_list": DlqPage,
    "dlq_show": list[Letter],
    "dlq_replay": list[ReplayOutcome],
    "dlq_purge": int,
    "restart": ActionResult,
    "stop": ActionResult,
    "crash": ActionResult,
}
"""Each op and the type of its ``result``."""


def to_wire(value: Any) -> Any:
    """``value`` as the JSON-ready data the wire carries: models (in lists and dicts
    too) without the fields the node did not set."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    return value
