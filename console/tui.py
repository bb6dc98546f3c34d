"""``staybook console``: the live terminal view (textual), like ``observer_cli``.

It shows, refreshed every ``--refresh`` seconds: per node the live actors against
the cap, commands/s, p99 latency, restarts per minute and the outbox backlog; each
node's supervision tree, with the live entity actors under ``entities``; the top
actors sorted by a chosen column; per queue the ready and unacked messages, consumers
and rates; the dead-letter queue. Selecting an actor (in the tree or the table) shows
its state, mailbox, last failure and recent events below the table. Keys restart,
stop or crash the selected actor and replay the selected dead letter, each after a
confirmation.

An error, in an action or while fetching, is a line in the status bar; the view
never exits on one.

The view reads a :class:`Source`, so it is the same against live nodes
(:class:`LiveSource`, over the control channel) and against a fixed
:class:`Snapshot` (the README capture and the snapshot test).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Concatenate, ParamSpec, Protocol, TypeVar

import pika
from pika.exceptions import AMQPError
from rich.console import Console
from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label, Static, Tree
from textual.widgets.tree import TreeNode

from broker.rabbitmq import connection_parameters
from broker.topology import Topology
from console.broker_reads import queue_stats
from console.control_client import REPLAY_WAIT, ControlClient, ControlFailed

SORTS = ("mailbox", "handled", "restarts", "pending")
TREE_ENTITIES = 20  # entity actors listed under each node's `entities`
DETAIL_EVENTS = 5  # recent events in the drill-down
P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class Snapshot:
    """Everything one refresh shows."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    trees: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    actors: list[dict[str, Any]] = field(default_factory=list)
    queues: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


class Source(Protocol):
    """Where the view gets its data and sends its actions.

    Every call blocks and comes from a worker thread, one at a time: the view never
    overlaps two (the live source's pika connections are not thread-safe).
    """

    def snapshot(self, sort: str, top: int) -> Snapshot:
        """The current state."""

    def detail(self, actor: str, node: str | None) -> dict[str, Any]:
        """One actor as ``inspect`` tells it, with its recent ``events``; or ``error``."""

    def act(self, op: str, actor: str, node: str | None) -> str:
        """restart / stop / crash an actor; a line for the status bar."""

    def replay(self, letter: str) -> str:
        """Replay one dead letter; a line for the status bar."""


RATE_WINDOW = 60.0  # seconds of counters the restart rate is averaged over


def rates(history: deque[dict[str, Any]], status: dict[str, Any]) -> dict[str, Any]:
    """``status`` with commands/s (last interval) and restarts/min (over the window).

    Args:
        history: this node's earlier statuses, oldest first (trimmed to the window).
        status: the node's newest status (its ``time``, ``commands``, ``restarts``).
    """
    prev = history[-1] if history else None
    history.append(status)
    while len(history) > 2 and status["time"] - history[1]["time"] >= RATE_WINDOW:
        history.popleft()
    out = dict(status)
    dt = status["time"] - prev["time"] if prev else 0.0
    out["commands_per_s"] = (round((status["commands"] - prev["commands"]) / dt, 1)
                             if prev and dt > 0 else None)
    first = history[0]
    span = max(status["time"] - first["time"], RATE_WINDOW)
    out["restarts_per_min"] = (round((status["restarts"] - first["restarts"]) * 60 / span, 1)
                               if first is not status else None)
    return out


def queue_flow(prev: dict[str, Any] | None, now: dict[str, Any]
               ) -> tuple[float | None, float | None]:
    """Messages per second into and out of one queue between two samples.

    Without the management plugin the broker tells only ready messages and consumers
    (passive declare). The nodes add what they know (the control op ``queues``, summed
    over the nodes): ``unacked``, held by their consumers now, and ``acked``, taken
    off the queue for good since each consumer started. Then between two samples:

    * out = Δacked / Δt (a requeue is not out: it neither acks nor leaves);
    * in = (Δ(ready + unacked) + Δacked) / Δt, what must have arrived to explain the
      new depth.

    Messages dropped by the queue (overflow, expiry) or taken by a consumer that is
    not a node read as less in; in is never shown below 0. Without a previous sample,
    with an unknown count, or when ``acked`` went down (a consumer restarted, a node
    left) there is no rate for that interval: None.

    Args:
        prev: the queue's previous sample, or None.
        now: this sample: ``time`` (the console's monotonic clock), ``messages``
            (ready), ``unacked`` and ``acked`` (None when unknown).
    """
    keys = ("messages", "unacked", "acked")
    if prev is None or any(s.get(k) is None for s in (prev, now) for k in keys):
        return None, None
    dt = now["time"] - prev["time"]
    removed = now["acked"] - prev["acked"]
    if dt <= 0 or removed < 0:
        return None, None
    grown = now["messages"] + now["unacked"] - prev["messages"] - prev["unacked"]
    return round(max(0.0, (grown + removed) / dt), 1), round(removed / dt, 1)


def add_flow(queues: list[dict[str, Any]], counts: list[dict[str, Any]], at: float,
             last: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The queue rows with the nodes' summed ``unacked``/``acked`` and in/out rates.

    Args:
        queues: rows from ``queue_stats`` (ready ``messages``, ``consumers``).
        counts: every node's ``queues`` rows (``queue``, ``unacked``, ``acked``).
        at: the sample's time (monotonic seconds).
        last: the previous sample per queue; updated in place.
    """
    summed: dict[str, dict[str, int]] = {}
    for c in counts:
        s = summed.setdefault(str(c["queue"]), {"unacked": 0, "acked": 0})
        s["unacked"] += int(c["unacked"])
        s["acked"] += int(c["acked"])
    out = []
    for q in queues:
        known = summed.get(q["queue"])
        # A queue no node consumes holds nothing unacked, unless someone else consumes it.
        none = 0 if q.get("consumers") == 0 else None
        row = {**q, "time": at, "unacked": known["unacked"] if known else none,
               "acked": known["acked"] if known else none}
        row["in_per_s"], row["out_per_s"] = queue_flow(last.get(q["queue"]), row)
        last[q["queue"]] = row
        out.append(row)
    return out


def _resets(method: Callable[Concatenate[LiveSource, P], T]
            ) -> Callable[Concatenate[LiveSource, P], T]:
    """After an unexpected error the connections are in doubt: drop them, so the next
    call reconnects (the view tells the error)."""
    @functools.wraps(method)
    def run(source: LiveSource, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(source, *args, **kwargs)
        except Exception:
            with contextlib.suppress(Exception):
                source.close()
            raise
    return run


class LiveSource:
    """Running nodes over the control channel, and the broker's queues.

    Rates come from each node's counters over the node's own clock: commands/s
    between the last two refreshes, restarts/min over the last ``RATE_WINDOW``
    seconds (one crash reads as 1/min for a minute, not 30/min for one refresh).
    Queue rates come from successive samples (see :func:`queue_flow`).

    Args:
        url: the operator's AMQP URL.
        topology: the deployment's names.
        wait: seconds to collect the nodes' replies.
    """

    def __init__(self, url: str, topology: Topology, *, wait: float = 0.5) -> None:
        self._url = url
        self._topology = topology
        self._wait = wait
        self._client: ControlClient | None = None
        self._conn: pika.BlockingConnection | None = None
        self._history: dict[str, deque[dict[str, Any]]] = {}
        self._nodes: list[str] = []
        self._queues: dict[str, dict[str, Any]] = {}

    def _connect(self) -> tuple[ControlClient, pika.BlockingConnection]:
        if self._client is None or self._conn is None or not self._conn.is_open:
            self.close()
            self._client = ControlClient(self._url, self._topology)
            self._conn = pika.BlockingConnection(connection_parameters(self._url))
        return self._client, self._conn

    def close(self) -> None:
        """Close both connections."""
        if self._client is not None:
            self._client.close()
        if self._conn is not None and self._conn.is_open:
            self._conn.close()
        self._client = self._conn = None

    @_resets
    def snapshot(self, sort: str, top: int) -> Snapshot:
        """Ask every node and read the queues; a broken connection is retried next time."""
        try:
            client, conn = self._connect()
            replies = client.request("overview", {"sort": sort, "top": top,
                                                  "entities": TREE_ENTITIES}, wait=self._wait)
            queues = queue_stats(conn, self._topology)
            at = time.monotonic()
            ok = [r["result"] for r in replies if r.get("ok")]
            self._nodes = sorted(o["status"]["node"] for o in ok)
            letters = self._letters(client)
        except (ControlFailed, AMQPError, OSError) as exc:
            self.close()
            return Snapshot(error=str(exc) or repr(exc))
        rows = [a for o in ok for a in o["actors"]]
        rows.sort(key=lambda a: (-a.get(sort, 0), a["id"]))
        counts = [c for o in ok for c in o.get("queues", [])]
        return Snapshot(nodes=[self._rates(o["status"]) for o in ok],
                        trees={o["status"]["node"]: o["tree"] for o in ok},
                        actors=rows[:top], queues=add_flow(queues, counts, at, self._queues),
                        dead_letters=letters)

    def _letters(self, client: ControlClient) -> list[dict[str, Any]]:
        """The first dead letters, read from the book by one node (a read: changes nothing)."""
        if not self._nodes:
            return []
        replies = client.request("dlq_list", {"limit": 50}, node=self._nodes[0],
                                 wait=self._wait)
        return replies[0]["result"]["letters"] if replies and replies[0].get("ok") else []

    def _rates(self, s: dict[str, Any]) -> dict[str, Any]:
        return rates(self._history.setdefault(s["node"], deque()), s)

    @_resets
    def detail(self, actor: str, node: str | None) -> dict[str, Any]:
        """Inspect one actor on its node, with its last ``DETAIL_EVENTS`` events."""
        try:
            client, _conn = self._connect()
            replies = client.request("inspect", {"id": actor, "events": DETAIL_EVENTS},
                                     node=node, wait=self._wait, until_ok=True)
        except (ControlFailed, AMQPError, OSError) as exc:
            return {"error": str(exc) or repr(exc)}
        ok = [r for r in replies if r.get("ok")]
        if ok:
            result: dict[str, Any] = ok[0]["result"]
            return result
        return {"error": replies[0].get("error") if replies
                else f"{node or 'no node'} did not answer"}

    @_resets
    def act(self, op: str, actor: str, node: str | None) -> str:
        """Send one actor operation."""
        try:
            client, _conn = self._connect()
            reply = client.act(op, actor, node=node, wait=self._wait)
        except (ControlFailed, AMQPError, OSError) as exc:
            return f"{op} {actor}: {exc}"
        return f"{reply['node']}: {reply['result']}"

    def replay(self, letter: str) -> str:
        """Replay one dead letter."""
        if not self._nodes:
            return f"replay {letter}: no node answered"
        try:
            client, _conn = self._connect()
            replies = client.request("dlq_replay", {"id": letter}, node=self._nodes[0],
                                     wait=REPLAY_WAIT)
        except (ControlFailed, AMQPError, OSError) as exc:
            return f"replay {letter}: {exc}"
        if not replies:
            return f"replay {letter}: {self._nodes[0]} did not answer"
        if not replies[0].get("ok"):
            return f"replay {letter}: {replies[0].get('error')}"
        results = replies[0]["result"]
        if not results:
            return f"{letter}: no such dead letter"
        r = results[0]
        return f"{letter}: replayed to {r['queue']}" if r["replayed"] else \
            f"{letter}: kept ({r.get('error')})"


class ConfirmScreen(ModalScreen[bool]):
    """Asks before a destructive action."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "yes"), Binding("n", "answer(False)", "no"),
        Binding("escape", "answer(False)", "no")]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Label { border: thick $warning; padding: 1 2; background: $panel; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self._question = question

    def compose(self) -> ComposeResult:
        yield Label(f"{self._question}  [y/n]", id="question")

    def action_answer(self, yes: bool) -> None:
        """Close with the answer."""
        self.dismiss(yes)


HELP = """\
Staybook console: keys

  tab / shift+tab   next / previous pane (tree, actors, queues, dead letters)
  up / down         move the selection in the pane
  enter             open or close a branch of the tree
  r  restart        the selected actor, through its supervisor   (asks y/n)
  s  stop           passivate the selected entity actor          (asks y/n)
  c  crash          a drill: the selected actor crashes          (asks y/n)
  p  replay DLQ     the selected dead letter, to its queue       (asks y/n)
  i  inspect        fetch the selected actor's details again
  o  sort           cycle the actors by mailbox, handled, restarts, pending
  g  refresh        now
  ?  help           this; escape or ? closes it
  q  quit"""


class HelpScreen(ModalScreen[None]):
    """The keys, all of them: the footer has room only for the common ones."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "close"), Binding("question_mark", "close", "close"),
        Binding("q", "close", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: auto; border: thick $primary; padding: 1 2;
                          background: $panel; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    def action_close(self) -> None:
        """Back to the view."""
        self.dismiss(None)


def _guarded(method: Callable[Concatenate[ConsoleApp, P], None]
             ) -> Callable[Concatenate[ConsoleApp, P], None]:
    """An action or handler whose exception becomes a status line, not the app's exit."""
    @functools.wraps(method)
    def run(app: ConsoleApp, /, *args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(app, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the operator sees one line, the view stays
            app.failed(method.__name__.removeprefix("action_"), exc)
    return run


class ConsoleApp(App[None]):
    """The live view.

    The selected actor is the one under the cursor of the tree or of the actors table,
    whichever the operator moved last; the panel below the table shows it (fetched
    when the selection or the actor's counters change, not at every refresh) and the
    keys act on it.

    Args:
        source: where data comes from and actions go.
        refresh: seconds between refreshes (0: only on ``g``).
        top: how many actors to list.
    """

    TITLE = "Staybook console"
    CSS = """
    #nodes { height: auto; padding: 0 1; }
    #status { height: 1; padding: 0 1; color: $warning; }
    #middle { height: 1fr; }
    #bottom { height: 12; }
    Tree { width: 2fr; border: round $primary; }
    DataTable { border: round $primary; }
    #right { width: 3fr; }
    #actors { height: 1fr; }
    #detail { height: 13; border: round $primary; padding: 0 1; text-wrap: nowrap;
              text-overflow: ellipsis; }
    #middle > *, #bottom > * { height: 100%; }
    #queues { width: 3fr; }
    #dlq { width: 3fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "act('restart')", "restart"), Binding("s", "act('stop')", "stop"),
        Binding("c", "act('crash')", "crash"), Binding("p", "replay", "replay DLQ"),
        Binding("i", "inspect", "inspect"), Binding("o", "sort", "sort"),
        Binding("g", "refresh", "refresh"), Binding("q", "quit", "quit"),
        Binding("tab", "focus_next", "next pane", priority=True),
        Binding("question_mark", "help", "help", key_display="?")]

    def __init__(self, source: Source, *, refresh: float = 2.0, top: int = 20) -> None:
        super().__init__()
        self.source = source
        self.refresh_seconds = refresh
        self.top = top
        self.sort = SORTS[0]
        self.snap = Snapshot()
        self.status_line = ""
        self.selected: tuple[str, str | None] | None = None  # (actor id, node)
        self.detail: dict[str, Any] | None = None
        self._source_lock = threading.Lock()  # one source call at a time
        self._fetching = self._fetch_again = False
        self._detail_busy = False
        self._detail_key: tuple[Any, ...] | None = None  # what the panel shows or awaits
        self._selecting = "actors"  # the widget whose cursor selects: actors or tree
        self._tree_actors: dict[str, tuple[str, str]] = {}  # tree node data -> actor
        self._facts: dict[tuple[str, str | None], dict[str, Any]] = {}  # listed rows

    def compose(self) -> ComposeResult:
        yield Static(id="nodes")
        with Horizontal(id="middle"):
            yield Tree("nodes", id="tree")
            with Vertical(id="right"):
                yield DataTable(id="actors", cursor_type="row", zebra_stripes=False)
                yield Static(id="detail")
        with Horizontal(id="bottom"):
            yield DataTable(id="queues", cursor_type="none")
            yield DataTable(id="dlq", cursor_type="row")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        """Lay out the tables and start refreshing."""
        self.query_one("#actors", DataTable).add_columns(
            "actor", "node", "status", "mailbox", "pending", "handled", "restarts", "last failure")
        self.query_one("#queues", DataTable).add_columns(
            "queue", "ready", "unacked", "consumers", "in/s", "out/s")
        self.query_one("#dlq", DataTable).add_columns("dead letter", "queue", "reason", "type")
        self.query_one("#tree", Tree).show_root = False
        self.query_one("#actors", DataTable).focus()
        self._show_detail()
        self.action_refresh()
        if self.refresh_seconds > 0:
            self.set_interval(self.refresh_seconds, self.action_refresh)

    # --- work off the UI thread -------------------------------------------------------
    def _work(self, name: str, call: Callable[[], T], done: Callable[[T | None], None]
              ) -> None:
        """Run ``call`` on a worker thread, then ``done`` with its result on the UI thread.

        Source calls never overlap (one lock). An exception in either is a status
        line and ``done`` gets None, so a busy flag it clears is always cleared.
        """
        def finish(result: T | None, error: Exception | None) -> None:
            if error is not None:
                self.failed(name, error)
            try:
                done(result)
            except Exception as exc:  # noqa: BLE001 - a bad reply must not end the view
                self.failed(name, exc)

        def run() -> None:
            result: T | None = None
            error: Exception | None = None
            try:
                with self._source_lock:
                    result = call()
            except Exception as exc:  # noqa: BLE001 - told on the UI thread
                error = exc
            with contextlib.suppress(RuntimeError):  # the app closed meanwhile
                self.call_from_thread(finish, result, error)

        self.run_worker(run, thread=True, group=name, exit_on_error=False)

    def failed(self, what: str, exc: Exception) -> None:
        """Tell an unexpected error as one status line (the view carries on)."""
        self.status_line = f"{what} failed: {type(exc).__name__}: {exc}"[:200]
        self._set_status(self.status_line)

    # --- data -----------------------------------------------------------------------
    def action_help(self) -> None:
        """Every key, on a screen of its own."""
        self.push_screen(HelpScreen())

    def action_refresh(self) -> None:
        """Fetch a snapshot; one at a time (a request meanwhile runs right after)."""
        if self._fetching:
            self._fetch_again = True
            return
        self._fetching = True
        sort, top = self.sort, self.top
        self._work("refresh", lambda: self.source.snapshot(sort, top), self._fetched)

    def _fetched(self, snap: Snapshot | None) -> None:
        self._fetching = False
        if self._fetch_again:
            self._fetch_again = False
            self.action_refresh()
        if snap is not None:
            self.show(snap)

    def show(self, snap: Snapshot) -> None:
        """Render one snapshot."""
        self.snap = snap
        self._facts = {(str(a["id"]), a.get("node")): a for a in snap.actors}
        self.query_one("#nodes", Static).update(nodes_text(snap, self.sort))
        self._show_tree(snap)
        self._fill("#actors", [[a["id"], a.get("node", "-"), a["status"], a["mailbox"],
                                a["pending"], a["handled"], a["restarts"],
                                _failure(a.get("last_failure"))] for a in snap.actors],
                   keep=self.selected)
        self._fill("#queues", [[q["queue"], _dash(q["messages"]), _dash(q.get("unacked")),
                                _dash(q["consumers"]), _dash(q.get("in_per_s")),
                                _dash(q.get("out_per_s"))] for q in snap.queues])
        self._fill("#dlq", [[d["id"], d.get("queue") or "-", d.get("reason") or "-",
                             d.get("type") or "-"] for d in snap.dead_letters])
        self._set_status(f"error: {snap.error}" if snap.error else self.status_line)
        self._sync_selection()

    def _fill(self, selector: str, rows: list[list[Any]],
              keep: tuple[str, str | None] | None = None) -> None:
        """Refill a table; the cursor stays on the row whose first two cells are ``keep``
        (the same actor, wherever the new sort put it), else at its index."""
        table = self.query_one(selector, DataTable)
        row = table.cursor_row
        table.clear()
        for r in rows:
            table.add_row(*[str(v) for v in r])
        if keep is not None:
            row = next((i for i, r in enumerate(rows)
                        if (str(r[0]), str(r[1])) == (keep[0], str(keep[1]))), row)
        if rows and table.cursor_type != "none":
            table.move_cursor(row=min(max(row, 0), len(rows) - 1))

    def _show_tree(self, snap: Snapshot) -> None:
        """Rebuild the tree, keeping what the operator collapsed collapsed and the cursor
        on the same node."""
        tree: Tree[str] = self.query_one("#tree", Tree)
        collapsed = {n.data for n in _walk(tree.root) if n.data and not n.is_expanded
                     and n.allow_expand}
        at = tree.cursor_node.data if tree.cursor_node is not None else None
        tree.clear()
        self._tree_actors = {}
        for name, children in sorted(snap.trees.items()):
            top = tree.root.add(Text(f"{name} root"), data=name,
                                expand=name not in collapsed)
            _add_children(top, children, name, collapsed, self._tree_actors)
            for c in _walk_rows(children):
                if c.get("kind") in ("apartment", "reservation"):
                    self._facts.setdefault((str(c["id"]), name), c)
        if at is not None:
            _ = tree.last_line  # lays the new nodes out, so they have lines
            tree.move_cursor(next((n for n in _walk(tree.root) if n.data == at), None))

    def _set_status(self, text: str) -> None:
        self.query_one("#status", Static).update(Text(text))

    # --- selection and drill-down ----------------------------------------------------
    @_guarded
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The operator moved in the actors table: it selects now."""
        if event.data_table.id == "actors" and event.data_table.has_focus:
            self._selecting = "actors"
            self._sync_selection()

    @_guarded
    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[str]) -> None:
        """The operator moved in the tree: it selects now."""
        if event.control is not None and event.control.has_focus:
            self._selecting = "tree"
            self._sync_selection()

    @_guarded
    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """Focus on the tree or the table selects what is under its cursor (if any)."""
        if event.widget.id in ("actors", "tree"):
            self._selecting = str(event.widget.id)
            self._sync_selection()

    def _under_cursor(self) -> tuple[str, str | None] | None:
        if self._selecting == "tree":
            node = self.query_one("#tree", Tree).cursor_node
            return None if node is None or node.data is None else \
                self._tree_actors.get(node.data)
        table = self.query_one("#actors", DataTable)
        if not self.snap.actors or table.cursor_row < 0:
            return None
        a = self.snap.actors[min(table.cursor_row, len(self.snap.actors) - 1)]
        return str(a["id"]), a.get("node")

    def _sync_selection(self, *, force: bool = False) -> None:
        """Select what is under the selecting cursor (keeping the last selection when
        nothing is), and fetch its details if it, or its counters, changed."""
        sel = self._under_cursor() or self.selected
        self.selected = sel
        if sel is None:
            self._detail_key = None
            self._show_detail()
            return
        facts = self._facts.get(sel, {})
        key = (sel, facts.get("status"), facts.get("restarts"), facts.get("handled"))
        if key == self._detail_key and not force:
            return
        if self._detail_key is None or self._detail_key[0] != sel:
            self.detail = None  # another actor: do not show the last one's details
        self._detail_key = key
        self._show_detail()
        if not self._detail_busy:
            self._detail_busy = True
            self._work("inspect", lambda: self.source.detail(sel[0], sel[1]),
                       functools.partial(self._detail_done, key))

    def _detail_done(self, key: tuple[Any, ...], info: dict[str, Any] | None) -> None:
        self._detail_busy = False
        if key == self._detail_key:
            self.detail = info or {"error": "no answer"}
            self._show_detail()
        elif self._detail_key is not None:  # the selection moved meanwhile: fetch that
            self._sync_selection(force=True)

    def _show_detail(self) -> None:
        self.query_one("#detail", Static).update(detail_text(self.selected, self.detail))

    @_guarded
    def action_inspect(self) -> None:
        """Fetch the selected actor's details again."""
        self._sync_selection(force=True)

    # --- actions --------------------------------------------------------------------
    def selected_actor(self) -> tuple[str, str | None] | None:
        """The selected actor (id, node), if any."""
        return self.selected

    @_guarded
    def action_act(self, op: str) -> None:
        """Restart, stop or crash the selected actor, after a confirmation."""
        actor = self.selected_actor()
        if actor is None:
            self._set_status(f"{op}: no actor selected")
            return
        aid, node = actor
        self.push_screen(ConfirmScreen(f"{op} {aid} on {node}?"),
                         self._then(lambda: self.source.act(op, aid, node)))

    @_guarded
    def action_replay(self) -> None:
        """Replay the selected dead letter, after a confirmation."""
        table = self.query_one("#dlq", DataTable)
        if not self.snap.dead_letters:
            self._set_status("replay: the dead-letter queue is empty")
            return
        letter = self.snap.dead_letters[min(max(table.cursor_row, 0),
                                            len(self.snap.dead_letters) - 1)]
        lid = str(letter["id"])
        self.push_screen(ConfirmScreen(f"replay {lid} to {letter.get('queue')}?"),
                         self._then(lambda: self.source.replay(lid)))

    def _then(self, action: Callable[[], str]) -> Callable[[bool | None], None]:
        return functools.partial(self._confirmed, action)

    @_guarded
    def _confirmed(self, action: Callable[[], str], yes: bool | None) -> None:
        if not yes:
            self._set_status("cancelled")
            return
        self._work("act", action, self._done)

    def _done(self, line: str | None) -> None:
        if line is not None:
            self.status_line = line
            self._set_status(line)
        self.action_refresh()

    @_guarded
    def action_sort(self) -> None:
        """Sort the actors by the next column."""
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self._set_status(f"actors sorted by {self.sort}")
        self.action_refresh()


def _walk(node: TreeNode[str]) -> list[TreeNode[str]]:
    out = [node]
    for child in node.children:
        out += _walk(child)
    return out


def _walk_rows(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in children:
        out += [c, *_walk_rows(c.get("children", []))]
    return out


def _add_children(parent: TreeNode[str], children: list[dict[str, Any]], at: str,
                  collapsed: set[str], actors: dict[str, tuple[str, str]]) -> None:
    """Add a node's rows under ``parent``; ``actors`` maps each node's data to the actor
    it selects (entity actors by id, other children by their path in the tree)."""
    node_name = at.split("/", 1)[0]
    for c in children:
        lf = c.get("last_failure")
        label = (f"{c['id']} [{c.get('kind', '?')}] {c['status']} "
                 f"restarts={c['restarts']}" + (f" last={lf['type']}" if lf else ""))
        path = f"{at}/{c['id']}"
        entity = c.get("kind") in ("apartment", "reservation")
        actors[path] = (str(c["id"]), node_name) if entity else \
            (path.split("/", 1)[1], node_name)
        sub = c.get("children", [])
        if sub or c.get("more"):
            node = parent.add(Text(label), data=path, expand=path not in collapsed)
            _add_children(node, sub, path, collapsed, actors)
            if c.get("more"):
                node.add_leaf(Text(f"… and {c['more']} more"), data=f"{path}/…")
        else:
            parent.add_leaf(Text(label), data=path)  # Text: ids like [worker] are not markup


def _failure(lf: dict[str, Any] | None) -> str:
    return "-" if not lf else f"{lf['type']}: {lf['message']}"[:40]


def _when(at: Any) -> str:
    """A failure's time, in UTC (the operator's and the nodes' clocks may differ)."""
    try:
        return datetime.fromtimestamp(float(at), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _where(tb: str | None) -> str | None:
    """The innermost ``File ..., line ..., in ...`` of a traceback: where it broke."""
    frames = [ln.strip() for ln in (tb or "").splitlines() if ln.strip().startswith("File ")]
    return frames[-1] if frames else None


def _short(v: Any, n: int = 400) -> str:
    s = json.dumps(v, default=str, separators=(",", ":"))
    return s if len(s) <= n else s[:n] + "…"


def detail_text(selected: tuple[str, str | None] | None, info: dict[str, Any] | None
                ) -> Text:
    """The drill-down panel: facts, last failure (when, where), state, recent events.

    One line each, cut at the panel's width, so a large state or payload never
    pushes the rest out.
    """
    if selected is None:
        return Text("select an actor in the tree or the table")
    aid, node = selected
    lines = [f"{aid} on {node or '?'}"]
    if info is None:
        lines.append("loading…")
    elif "error" in info:
        lines.append(f"inspect: {info['error']}")
    else:
        if "version" in info:
            lines[0] += f"  version {info['version']}"
        if info.get("live") is False:
            lines[0] += "  not live: state folded from the store"
        lines.append(" · ".join(f"{k} {info[k]}" for k in (
            "status", "mailbox", "pending", "handled", "restarts") if k in info))
        lf = info.get("last_failure")
        if lf:
            lines.append(f"last failure: {lf.get('type')}: {lf.get('message')}")
            where = _where(lf.get("traceback"))
            lines.append(f"  at {_when(lf.get('at'))}" + (f" · {where}" if where else ""))
        else:
            lines.append("last failure: none")
        if info.get("state") is not None:
            lines.append(f"state {_short(info['state'])}")
        evs = info.get("events")
        if evs:
            lines.append(f"last {len(evs)} events:")
            lines += [f"  v{e.get('version')} {str(e.get('occurred_at'))[:19]} "
                      f"{e.get('type')} {_short(e.get('payload'), 200)}" for e in evs]
    return Text("\n".join(lines), no_wrap=True, overflow="ellipsis")


def _parts(held: list[int] | None) -> str:
    """How many command partitions a node consumes ('-': not a commands node)."""
    return "-" if held is None else str(len(held))


def _dash(v: Any) -> str:
    return "-" if v is None else str(v)


def _tree(node: dict[str, Any]) -> str:
    """The tree's status, or ``no-store`` while the node waits for its store."""
    if node.get("ready") is False and node.get("store", "up") != "up":
        return "no-store"
    return str(node.get("tree_status", "-"))


def nodes_text(snap: Snapshot, sort: str) -> str:
    """The per-node summary lines at the top of the view."""
    lines = [f"{'NODE':<12} {'TREE':<8} {'LIVE/CAP':>14} {'CMD/S':>8} {'P99 MS':>8} "
             f"{'RESTARTS/MIN':>12} {'DEAD':>6} {'OUTBOX':>7} {'PARTS':>5}   actors by {sort}"]
    for n in snap.nodes:
        lines.append(
            f"{n['node']:<12} {_tree(n):<8} "
            f"{str(n['live_actors']) + '/' + str(n['max_live']):>14} "
            f"{_dash(n.get('commands_per_s')):>8} {_dash(n.get('p99_ms')):>8} "
            f"{_dash(n.get('restarts_per_min')):>12} {n['dead_letters']:>6} "
            f"{n['outbox_backlog']:>7} {_parts(n.get('partitions')):>5}")
    if not snap.nodes:
        lines.append("(no node answered yet)")
    return "\n".join(lines)


def _textual_screen_render(app: App[Any]) -> Any:
    """Adapter to textual's internals: the current screen as one rich renderable.

    textual exports a screen only as SVG (``App.export_screenshot``); the renderable
    that method draws, from the screen's compositor and the screens visible under
    it, has no public accessor. This is the one place that reaches them, the way
    ``export_screenshot`` itself does.
    """
    compositor, under = app.screen._compositor, app._background_screens  # noqa: SLF001
    return compositor.render_update(full=True, screen_stack=under)


def screen_text(app: App[Any]) -> str:
    """The current screen as plain text (a text capture; textual itself exports SVG).

    It renders the screen the way ``App.export_screenshot`` does but records text,
    so snapshots are readable and diffable.
    """
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False, safe_box=False)
    console.print(_textual_screen_render(app))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def run_console(url: str, topology: Topology, *, refresh: float, top: int = 20) -> None:
    """Run the live view until the operator quits."""
    source = LiveSource(url, topology)
    try:
        ConsoleApp(source, refresh=refresh, top=top).run()
    finally:
        source.close()


__all__ = ["ConsoleApp", "LiveSource", "Snapshot", "Source", "nodes_text", "run_console",
           "screen_text"]
