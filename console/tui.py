"""``staybook console``: the live terminal view (textual), like ``observer_cli``.

It shows, refreshed every ``--refresh`` seconds: per node the live actors against
the cap, commands/s, p99 latency, restarts per minute and the outbox backlog; each
node's supervision tree; the top actors sorted by a chosen column; queue depths; the
dead-letter queue. Keys restart, stop or crash the selected actor and replay the
selected dead letter, each after a confirmation.

The view reads a :class:`Source`, so it is the same against live nodes
(:class:`LiveSource`, over the control channel) and against a fixed
:class:`Snapshot` (the README capture and the snapshot test).
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import pika
from pika.exceptions import AMQPError
from rich.console import Console
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label, Static, Tree
from textual.widgets.tree import TreeNode

from broker.rabbitmq import connection_parameters
from broker.topology import Topology
from console.ctl import REPLAY_WAIT, ControlClient, ControlFailed, queue_stats

SORTS = ("mailbox", "handled", "restarts", "pending")


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
    """Where the view gets its data and sends its actions."""

    def snapshot(self, sort: str, top: int) -> Snapshot:
        """The current state (blocking; called on a worker thread)."""

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


class LiveSource:
    """Running nodes over the control channel, and the broker's queues.

    Rates come from each node's counters over the node's own clock: commands/s
    between the last two refreshes, restarts/min over the last ``RATE_WINDOW``
    seconds (one crash reads as 1/min for a minute, not 30/min for one refresh).

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

    def snapshot(self, sort: str, top: int) -> Snapshot:
        """Ask every node and read the queues; a broken connection is retried next time."""
        try:
            client, conn = self._connect()
            replies = client.request("overview", {"sort": sort, "top": top}, wait=self._wait)
            queues = queue_stats(conn, self._topology)
            ok = [r["result"] for r in replies if r.get("ok")]
            self._nodes = sorted(o["status"]["node"] for o in ok)
            letters = self._letters(client)
        except (ControlFailed, AMQPError, OSError) as exc:
            self.close()
            return Snapshot(error=str(exc) or repr(exc))
        rows = [a for o in ok for a in o["actors"]]
        rows.sort(key=lambda a: (-a.get(sort, 0), a["id"]))
        return Snapshot(nodes=[self._rates(o["status"]) for o in ok],
                        trees={o["status"]["node"]: o["tree"] for o in ok},
                        actors=rows[:top], queues=queues, dead_letters=letters)

    def _letters(self, client: ControlClient) -> list[dict[str, Any]]:
        """The first dead letters, read from the book by one node (a read: changes nothing)."""
        if not self._nodes:
            return []
        replies = client.request("dlq_list", {"limit": 50}, node=self._nodes[0],
                                 wait=self._wait)
        return replies[0]["result"]["letters"] if replies and replies[0].get("ok") else []

    def _rates(self, s: dict[str, Any]) -> dict[str, Any]:
        return rates(self._history.setdefault(s["node"], deque()), s)

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


class ConsoleApp(App[None]):
    """The live view.

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
    #actors { width: 3fr; }
    #middle > *, #bottom > * { height: 100%; }
    #queues { width: 2fr; }
    #dlq { width: 3fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "act('restart')", "restart"), Binding("s", "act('stop')", "stop"),
        Binding("c", "act('crash')", "crash"), Binding("p", "replay", "replay DLQ"),
        Binding("o", "sort", "sort"), Binding("g", "refresh", "refresh"),
        Binding("q", "quit", "quit")]

    def __init__(self, source: Source, *, refresh: float = 2.0, top: int = 20) -> None:
        super().__init__()
        self.source = source
        self.refresh_seconds = refresh
        self.top = top
        self.sort = SORTS[0]
        self.snap = Snapshot()
        self.status_line = ""

    def compose(self) -> ComposeResult:
        yield Static(id="nodes")
        with Horizontal(id="middle"):
            yield Tree("nodes", id="tree")
            yield DataTable(id="actors", cursor_type="row", zebra_stripes=False)
        with Horizontal(id="bottom"):
            yield DataTable(id="queues", cursor_type="none")
            yield DataTable(id="dlq", cursor_type="row")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        """Lay out the tables and start refreshing."""
        self.query_one("#actors", DataTable).add_columns(
            "actor", "node", "status", "mailbox", "pending", "handled", "restarts", "last failure")
        self.query_one("#queues", DataTable).add_columns("queue", "messages", "consumers")
        self.query_one("#dlq", DataTable).add_columns("dead letter", "queue", "reason", "type")
        self.query_one("#tree", Tree).show_root = False
        self.query_one("#actors", DataTable).focus()
        self.action_refresh()
        if self.refresh_seconds > 0:
            self.set_interval(self.refresh_seconds, self.action_refresh)

    # --- data -----------------------------------------------------------------------
    def action_refresh(self) -> None:
        """Fetch on a worker thread (pika blocks), show on the UI thread."""
        self.run_worker(self._fetch, thread=True, exclusive=True, group="fetch")

    def _fetch(self) -> None:
        snap = self.source.snapshot(self.sort, self.top)
        self.call_from_thread(self.show, snap)

    def show(self, snap: Snapshot) -> None:
        """Render one snapshot."""
        self.snap = snap
        self.query_one("#nodes", Static).update(nodes_text(snap, self.sort))
        self._show_tree(snap)
        self._fill("#actors", [[a["id"], a.get("node", "-"), a["status"], a["mailbox"],
                                a["pending"], a["handled"], a["restarts"],
                                _failure(a.get("last_failure"))] for a in snap.actors])
        self._fill("#queues", [[q["queue"], _dash(q["messages"]), _dash(q["consumers"])]
                               for q in snap.queues])
        self._fill("#dlq", [[d["id"], d.get("queue") or "-", d.get("reason") or "-",
                             d.get("type") or "-"] for d in snap.dead_letters])
        self._set_status(f"error: {snap.error}" if snap.error else self.status_line)

    def _fill(self, selector: str, rows: list[list[Any]]) -> None:
        table = self.query_one(selector, DataTable)
        row = table.cursor_row
        table.clear()
        for r in rows:
            table.add_row(*[str(v) for v in r])
        if rows and table.cursor_type != "none":
            table.move_cursor(row=min(row, len(rows) - 1))

    def _show_tree(self, snap: Snapshot) -> None:
        """Rebuild the tree, keeping what the operator collapsed collapsed."""
        tree: Tree[str] = self.query_one("#tree", Tree)
        collapsed = {n.data for n in _walk(tree.root) if n.data and not n.is_expanded
                     and n.allow_expand}
        tree.clear()
        for name, children in sorted(snap.trees.items()):
            top = tree.root.add(Text(f"{name} root"), data=name,
                                expand=name not in collapsed)
            _add_children(top, children, name, collapsed)

    def _set_status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    # --- actions --------------------------------------------------------------------
    def selected_actor(self) -> dict[str, Any] | None:
        """The actor under the cursor, if any."""
        table = self.query_one("#actors", DataTable)
        if not self.snap.actors or table.cursor_row < 0:
            return None
        return self.snap.actors[min(table.cursor_row, len(self.snap.actors) - 1)]

    def action_act(self, op: str) -> None:
        """Restart, stop or crash the selected actor, after a confirmation."""
        actor = self.selected_actor()
        if actor is None:
            self._set_status(f"{op}: no actor selected")
            return
        aid, node = str(actor["id"]), actor.get("node")
        self.push_screen(ConfirmScreen(f"{op} {aid} on {node}?"),
                         self._then(lambda: self.source.act(op, aid, node)))

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
        def after(yes: bool | None) -> None:
            if not yes:
                self._set_status("cancelled")
                return
            self.run_worker(lambda: self._run_action(action), thread=True, group="act")
        return after

    def _run_action(self, action: Callable[[], str]) -> None:
        line = action()
        self.call_from_thread(self._done, line)

    def _done(self, line: str) -> None:
        self.status_line = line
        self._set_status(line)
        self.action_refresh()

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


def _add_children(parent: TreeNode[str], children: list[dict[str, Any]], at: str,
                  collapsed: set[str]) -> None:
    for c in children:
        lf = c.get("last_failure")
        label = (f"{c['id']} [{c.get('kind', '?')}] {c['status']} "
                 f"restarts={c['restarts']}" + (f" last={lf['type']}" if lf else ""))
        path = f"{at}/{c['id']}"
        sub = c.get("children", [])
        if sub:
            node = parent.add(Text(label), data=path, expand=path not in collapsed)
            _add_children(node, sub, path, collapsed)
        else:
            parent.add_leaf(Text(label), data=path)  # Text: ids like [worker] are not markup


def _failure(lf: dict[str, Any] | None) -> str:
    return "-" if not lf else f"{lf['type']}: {lf['message']}"[:40]


def _parts(held: list[int] | None) -> str:
    """How many command partitions a node consumes ('-': not a commands node)."""
    return "-" if held is None else str(len(held))


def _dash(v: Any) -> str:
    return "-" if v is None else str(v)


def nodes_text(snap: Snapshot, sort: str) -> str:
    """The per-node summary lines at the top of the view."""
    lines = [f"{'NODE':<12} {'TREE':<8} {'LIVE/CAP':>14} {'CMD/S':>8} {'P99 MS':>8} "
             f"{'RESTARTS/MIN':>12} {'DEAD':>6} {'OUTBOX':>7} {'PARTS':>5}   actors by {sort}"]
    for n in snap.nodes:
        lines.append(
            f"{n['node']:<12} {n.get('tree_status', '-'):<8} "
            f"{str(n['live_actors']) + '/' + str(n['max_live']):>14} "
            f"{_dash(n.get('commands_per_s')):>8} {_dash(n.get('p99_ms')):>8} "
            f"{_dash(n.get('restarts_per_min')):>12} {n['dead_letters']:>6} "
            f"{n['outbox_backlog']:>7} {_parts(n.get('partitions')):>5}")
    if not snap.nodes:
        lines.append("(no node answered yet)")
    return "\n".join(lines)


def screen_text(app: App[Any]) -> str:
    """The current screen as plain text (a text capture; textual itself exports SVG).

    It renders the screen the way ``App.export_screenshot`` does (textual's
    compositor) but records text, so snapshots are readable and diffable.
    """
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens))
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
