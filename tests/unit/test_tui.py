"""The live view with textual's headless pilot, on a fixed snapshot (and a text capture)."""

from __future__ import annotations

import asyncio
import difflib
import os
import threading
from pathlib import Path
from typing import Any

from console.tui import ConfirmScreen, ConsoleApp, Snapshot, add_flow, queue_flow, screen_text

SNAPSHOT = Path(__file__).parent / "snapshots" / "console.txt"
README = Path(__file__).resolve().parents[2] / "README.md"
SIZE = (132, 40)


def _failure() -> dict[str, Any]:
    return {"type": "InjectedCrash", "message": "apartment:apt-7: crash requested (drill)",
            "at": 0.0}


def fixed_snapshot() -> Snapshot:
    """A fixed picture of a two-node deployment (the README capture is made from it)."""
    def tree(restarts: int) -> list[dict[str, Any]]:
        def c(cid: str, kind: str = "service", **kw: Any) -> dict[str, Any]:
            return {"id": cid, "kind": kind, "restart": "permanent", "status": "running",
                    "restarts": 0, "last_failure": None, **kw}
        return [
            c("infrastructure", "supervisor", children=[c("store"), c("relay"), c("timers")]),
            c("entities", children=[
                c("apartment:apt-7", "apartment", restart="transient", restarts=restarts,
                  last_failure=_failure() if restarts else None),
                c("reservation:res-9", "reservation", restart="transient")],
              more=1202 if restarts else 985),
            c("handlers", "supervisor", children=[
                c("payment", "worker", restarts=restarts,
                  last_failure=_failure() if restarts else None),
                c("notifier", "worker"), c("search", "worker")]),
            c("intake", "supervisor", children=[c("consumer:intake")]),
            c("control"),
        ]

    def node(name: str, live: int, cps: float, p99: float, rpm: float) -> dict[str, Any]:
        return {"node": name, "tree_status": "running", "live_actors": live,
                "max_live": 10000, "commands_per_s": cps, "p99_ms": p99,
                "restarts_per_min": rpm, "dead_letters": 1, "outbox_backlog": 0,
                "partitions": list(range(8)) if name == "node-a" else list(range(8, 16))}

    def actor(aid: str, node: str, mailbox: int, handled: int, restarts: int) -> dict[str, Any]:
        return {"id": aid, "node": node, "status": "running", "mailbox": mailbox,
                "pending": mailbox, "handled": handled, "restarts": restarts,
                "last_failure": _failure() if restarts else None}

    return Snapshot(
        nodes=[node("node-a", 1204, 310.5, 8.2, 0.0), node("node-b", 987, 254.0, 9.7, 1.0)],
        trees={"node-a": tree(1), "node-b": tree(0)},
        actors=[actor("apartment:apt-7", "node-a", 12, 140, 1),
                actor("apartment:apt-3", "node-b", 4, 96, 0),
                actor("reservation:res-9", "node-a", 1, 7, 0)],
        queues=[{"queue": "staybook.intake", "messages": 17, "unacked": 8, "consumers": 2,
                 "in_per_s": 312.0, "out_per_s": 310.5},
                {"queue": "staybook.payment", "messages": 0, "unacked": 1, "consumers": 2,
                 "in_per_s": 20.0, "out_per_s": 20.0},
                {"queue": "staybook.dead-letters", "messages": 1, "unacked": 0,
                 "consumers": 0, "in_per_s": None, "out_per_s": None}],
        dead_letters=[{"id": "7f3c9a2e", "queue": "staybook.intake", "reason": "not_json",
                       "type": None}])


def fixed_detail(actor: str, node: str | None) -> dict[str, Any]:
    """What ``inspect`` with events tells of one actor of the fixed snapshot."""
    row = next((a for a in fixed_snapshot().actors
                if (a["id"], a["node"]) == (actor, node)), None)
    if row is None:
        return {"id": actor, "kind": "service", "status": "running", "restarts": 0,
                "last_failure": None}
    failure = row["last_failure"] and {
        **row["last_failure"], "at": 1767268800.0,  # 2026-01-01 12:00:00 UTC
        "traceback": 'Traceback (most recent call last):\n  File "actors/base.py", '
                     'line 120, in on_receive\n    raise InjectedCrash(...)\n'}
    kind, key = actor.split(":", 1)
    return {**row, "kind": kind, "live": True, "version": 3, "last_failure": failure,
            "state": {"apartment_id": key, "city": "Lisbon",
                      "listed": True},
            "events": [{"version": v, "type": t, "occurred_at": f"2026-01-01T1{v}:00:00",
                        "payload": {"n": v}}
                       for v, t in ((1, "ApartmentAdded"), (2, "ApartmentPriced"),
                                    (3, "ApartmentListed"))]}


class FixedSource:
    """Always the same snapshot; actions answer with what they would do."""

    def __init__(self) -> None:
        self.sorts: list[str] = []
        self.details: list[tuple[str, str | None]] = []

    def snapshot(self, sort: str, top: int) -> Snapshot:
        self.sorts.append(sort)
        snap = fixed_snapshot()
        snap.actors.sort(key=lambda a: (-a[sort], a["id"]))
        snap.actors = snap.actors[:top]
        return snap

    def detail(self, actor: str, node: str | None) -> dict[str, Any]:
        self.details.append((actor, node))
        return fixed_detail(actor, node)

    def act(self, op: str, actor: str, node: str | None) -> str:
        return f"{node}: {actor}: {op} sent"

    def replay(self, letter: str) -> str:
        return f"{letter}: replayed"


async def _settle(app: ConsoleApp, pilot: Any) -> None:
    await app.workers.wait_for_complete()
    await pilot.pause()


def test_the_live_view_matches_its_text_snapshot() -> None:
    async def run() -> str:
        app = ConsoleApp(FixedSource(), refresh=0)
        async with app.run_test(size=SIZE) as pilot:
            await _settle(app, pilot)
            return screen_text(app)

    text = asyncio.run(run())
    if os.environ.get("STAYBOOK_UPDATE_SNAPSHOTS") or not SNAPSHOT.exists():
        SNAPSHOT.write_text(text)
    expected = SNAPSHOT.read_text()
    assert text == expected, "\n".join(difflib.unified_diff(
        expected.splitlines(), text.splitlines(), "stored", "now", lineterm=""))
    assert f"```\n{text}```" in README.read_text(), "README.md shows an older capture"
    for needle in ("node-a", "1204/10000", "310.5", "apartment:apt-7", "staybook.intake",
                   "7f3c9a2e", "payment [worker] running restarts=1",
                   "reservation:res-9 [reservation]", "… and 1202 more",  # entities
                   "ready  unacked  consumers  in/s   out/s", "312.0",  # queues
                   "last failure: InjectedCrash", "2026-01-01 12:00:00 UTC",  # drill-down
                   "v3 2026-01-01T13:00:00 ApartmentListed"):
        assert needle in text


def test_keys_confirm_before_acting_and_sort_cycles() -> None:
    source = FixedSource()

    async def run() -> list[str]:
        app = ConsoleApp(source, refresh=0)
        seen = []
        async with app.run_test(size=SIZE) as pilot:
            await _settle(app, pilot)
            await pilot.press("c")
            await pilot.pause()
            seen.append(screen_text(app))  # the question is on screen
            await pilot.press("n")
            await _settle(app, pilot)
            seen.append(str(app.query_one("#status").render()))
            await pilot.press("down", "s", "y")
            await _settle(app, pilot)
            seen.append(app.status_line)
            app.query_one("#dlq").focus()
            await pilot.press("p", "y")
            await _settle(app, pilot)
            seen.append(app.status_line)
            await pilot.press("o")
            await _settle(app, pilot)
            seen.append(str(app.snap.actors[0]["id"]))
        return seen

    question, cancelled, stopped, replayed, top_by_handled = asyncio.run(run())
    assert "crash apartment:apt-7 on node-a?  [y/n]" in question
    assert cancelled == "cancelled"
    assert stopped == "node-b: apartment:apt-3: stop sent"
    assert replayed == "7f3c9a2e: replayed"
    assert source.sorts[-1] == "handled" and top_by_handled == "apartment:apt-7"


def test_one_crash_reads_as_one_per_minute_for_a_minute() -> None:
    from collections import deque

    from console.tui import rates

    history: deque[dict[str, Any]] = deque()

    def at(t: float, restarts: int, commands: int = 0) -> dict[str, Any]:
        return rates(history, {"node": "n", "time": t, "restarts": restarts,
                               "commands": commands})

    assert at(0, 0)["restarts_per_min"] is None  # nothing to compare with yet
    assert at(2, 1, commands=20)["restarts_per_min"] == 1.0  # not 30/min
    assert at(4, 1, commands=30)["commands_per_s"] == 5.0
    assert [at(t, 1)["restarts_per_min"] for t in (30, 60)] == [1.0, 1.0]
    assert at(62, 1)["restarts_per_min"] == 0.0  # the crash left the window


def test_the_tree_keeps_what_the_operator_collapsed() -> None:
    async def run() -> tuple[bool, bool]:
        app = ConsoleApp(FixedSource(), refresh=0)
        async with app.run_test(size=SIZE) as pilot:
            await _settle(app, pilot)
            tree: Any = app.query_one("#tree")
            handlers = next(n for n in _nodes(tree.root) if n.data == "node-a/handlers")
            handlers.collapse()
            app.action_refresh()
            await _settle(app, pilot)
            again = {n.data: n for n in _nodes(tree.root)}
            return again["node-a/handlers"].is_expanded, again["node-b/handlers"].is_expanded

    a_handlers, b_handlers = asyncio.run(run())
    assert (a_handlers, b_handlers) == (False, True)


def _nodes(node: Any) -> list[Any]:
    out = [node]
    for child in node.children:
        out += _nodes(child)
    return out


class OneConnectionSource(FixedSource):
    """Like the live source: one connection that two threads must never use at once.

    After the first snapshot each call waits for ``gate`` (a slow broker), so a
    refresh can be in flight while keys are pressed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.busy = threading.Lock()
        self.overlaps = 0

    def snapshot(self, sort: str, top: int) -> Snapshot:
        if not self.busy.acquire(blocking=False):
            self.overlaps += 1  # pika would fail here in some unexpected way
            raise RuntimeError("one connection used by two threads")
        try:
            if self.sorts:
                self.gate.wait(10)
            return super().snapshot(sort, top)
        finally:
            self.busy.release()


def test_o_tab_down_c_while_a_refresh_is_in_flight_keeps_the_console_running() -> None:
    """The exit once seen: ``o`` refreshed while the periodic refresh was still asking
    the nodes; both used the one (not thread-safe) connection, the second raised, and a
    worker's exception ended the app. Refreshes now queue up, and no error exits."""
    source = OneConnectionSource()

    async def run() -> tuple[bool, str, bool, str]:
        app = ConsoleApp(source, refresh=0)
        async with app.run_test(size=SIZE) as pilot:
            await _settle(app, pilot)
            app.action_refresh()  # the periodic refresh, slow this time
            await pilot.pause()
            await pilot.press("o", "tab", "down", "c")
            await pilot.pause()
            asking = isinstance(app.screen, ConfirmScreen)
            question = screen_text(app)
            source.gate.set()
            await _settle(app, pilot)
            await pilot.press("n")
            await _settle(app, pilot)
            return asking, question, app.is_running, screen_text(app)

    asking, question, running, after = asyncio.run(run())
    assert source.overlaps == 0
    assert running and asking
    assert "crash apartment:apt-7 on node-a?  [y/n]" in question
    assert source.sorts == ["mailbox", "mailbox", "handled"]  # o's refresh ran after
    assert "actors by handled" in after and "cancelled" in after


class BrokenSource(FixedSource):
    """A source whose calls raise what nobody expected."""

    def __init__(self, broken: set[str]) -> None:
        super().__init__()
        self.broken = broken

    def snapshot(self, sort: str, top: int) -> Snapshot:
        if "snapshot" in self.broken:
            raise KeyError("status")
        snap = super().snapshot(sort, top)
        if "reply" in self.broken:
            snap.actors[0] = {"id": "apartment:apt-7"}  # a reply without its fields
        return snap

    def detail(self, actor: str, node: str | None) -> dict[str, Any]:
        if "detail" in self.broken:
            raise ValueError("bad json")
        return super().detail(actor, node)

    def act(self, op: str, actor: str, node: str | None) -> str:
        raise RuntimeError("connection reset")


def test_an_error_in_a_fetch_a_reply_or_an_action_is_one_status_line() -> None:
    async def run(broken: set[str], keys: tuple[str, ...]) -> tuple[bool, str]:
        app = ConsoleApp(BrokenSource(broken), refresh=0)
        async with app.run_test(size=SIZE) as pilot:
            await _settle(app, pilot)
            await pilot.press(*keys)
            await _settle(app, pilot)
            return app.is_running, str(app.query_one("#status").render())

    assert asyncio.run(run({"snapshot"}, ("g",))) == (
        True, "refresh failed: KeyError: 'status'")
    assert asyncio.run(run({"reply"}, ())) == (True, "refresh failed: KeyError: 'status'")
    assert asyncio.run(run({"detail"}, ())) == (True, "inspect failed: ValueError: bad json")
    assert asyncio.run(run(set(), ("c", "y"))) == (
        True, "act failed: RuntimeError: connection reset")


def test_the_drill_down_follows_the_selection_and_fetches_only_when_it_changes() -> None:
    source = FixedSource()

    async def run() -> dict[str, Any]:
        app = ConsoleApp(source, refresh=0)
        seen: dict[str, Any] = {}
        async with app.run_test(size=SIZE) as pilot:
            await _settle(app, pilot)
            seen["first"] = list(source.details)
            app.action_refresh()
            app.action_refresh()
            await _settle(app, pilot)
            seen["after refreshes"] = list(source.details)
            await pilot.press("i")  # ask again on purpose
            await _settle(app, pilot)
            seen["after i"] = len(source.details)
            tree: Any = app.query_one("#tree")
            tree.focus()
            nodes = {n.data: n for n in _nodes(tree.root)}
            tree.move_cursor(nodes["node-a/entities/reservation:res-9"])
            await _settle(app, pilot)
            seen["entity"] = source.details[-1]
            seen["panel"] = str(app.query_one("#detail").render())
            app.action_refresh()  # the rebuilt tree keeps its cursor, and the selection
            await _settle(app, pilot)
            seen["kept"] = (app.selected, len(source.details))
            tree.move_cursor(nodes["node-a/entities/…"])  # '… and 1202 more' is no actor
            await _settle(app, pilot)
            seen["more"] = app.selected
            tree.move_cursor(nodes["node-a/handlers/payment"])
            await _settle(app, pilot)
            seen["service"] = source.details[-1]
            await pilot.press("r")
            await pilot.pause()
            seen["question"] = screen_text(app)
            await pilot.press("n")
            await _settle(app, pilot)
        return seen

    seen = asyncio.run(run())
    assert seen["first"] == [("apartment:apt-7", "node-a")]
    assert seen["after refreshes"] == seen["first"]  # same actor, same counters
    assert seen["after i"] == 2
    assert seen["entity"] == ("reservation:res-9", "node-a")
    assert "reservation:res-9 on node-a" in seen["panel"]
    assert "status running · mailbox 1 · pending 1 · handled 7" in seen["panel"]
    assert seen["kept"] == (("reservation:res-9", "node-a"), 3)
    assert seen["more"] == ("reservation:res-9", "node-a")
    assert seen["service"] == ("handlers/payment", "node-a")
    assert "restart handlers/payment on node-a?  [y/n]" in seen["question"]


def test_queue_rates_come_from_successive_samples_and_the_nodes_counts() -> None:
    def sample(t: float, ready: int, unacked: int | None, acked: int | None
               ) -> dict[str, Any]:
        return {"time": t, "messages": ready, "unacked": unacked, "acked": acked}

    assert queue_flow(None, sample(0, 5, 0, 0)) == (None, None)  # nothing to compare
    # 2 s: 40 acked, depth 5+0 -> 10+5: 40 out and 50 in, per 2 s.
    assert queue_flow(sample(0, 5, 0, 0), sample(2, 10, 5, 40)) == (25.0, 20.0)
    # A consumer restarted (its acks start again at 0): no rate, not a negative one.
    assert queue_flow(sample(2, 10, 5, 40), sample(4, 10, 5, 3)) == (None, None)
    # Dropped by the queue (overflow): fewer in, never below 0.
    assert queue_flow(sample(0, 100, 0, 0), sample(1, 50, 0, 0)) == (0.0, 0.0)
    assert queue_flow(sample(0, 5, None, None), sample(1, 6, None, None)) == (None, None)

    last: dict[str, dict[str, Any]] = {}
    queues = [{"queue": "q.intake", "messages": 4, "consumers": 2},
              {"queue": "q.dead", "messages": 1, "consumers": 0},
              {"queue": "q.other", "messages": 0, "consumers": 1}]
    counts = [{"queue": "q.intake", "unacked": 3, "acked": 10},  # node-a
              {"queue": "q.intake", "unacked": 2, "acked": 20}]  # node-b
    first = add_flow(queues, counts, 10.0, last)
    assert [(r["unacked"], r["in_per_s"]) for r in first] == [(5, None), (0, None),
                                                              (None, None)]
    counts = [{"queue": "q.intake", "unacked": 0, "acked": 40},
              {"queue": "q.intake", "unacked": 1, "acked": 30}]
    queues[1]["messages"] = 3
    again = {r["queue"]: r for r in add_flow(queues, counts, 12.0, last)}
    # 40 acked in 2 s, and the depth went from 4+5 to 4+1: 36 arrived.
    assert (again["q.intake"]["in_per_s"], again["q.intake"]["out_per_s"]) == (18.0, 20.0)
    assert (again["q.dead"]["in_per_s"], again["q.dead"]["out_per_s"]) == (1.0, 0.0)
    assert again["q.other"]["unacked"] is None  # consumed, but by no node: unknown


def test_the_footer_shows_the_keys_and_question_mark_opens_the_help() -> None:
    async def run() -> tuple[str, str, str]:
        app = ConsoleApp(FixedSource(), refresh=0)
        async with app.run_test(size=SIZE) as pilot:
            await _settle(app, pilot)
            footer = screen_text(app).splitlines()[-1]
            await pilot.press("question_mark")
            await pilot.pause()
            shown = screen_text(app)
            await pilot.press("escape")
            await pilot.pause()
            return footer, shown, screen_text(app)

    footer, shown, after = asyncio.run(run())
    assert "tab next pane" in footer and "? help" in footer and "q quit" in footer
    assert "Staybook console: keys" in shown
    assert "tab / shift+tab   next / previous pane" in shown
    assert "Staybook console: keys" not in after  # escape closed it
