"""The live view with textual's headless pilot, on a fixed snapshot (and a text capture)."""

from __future__ import annotations

import asyncio
import difflib
import os
from pathlib import Path
from typing import Any

from console.tui import ConsoleApp, Snapshot, screen_text

SNAPSHOT = Path(__file__).parent / "snapshots" / "console.txt"
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
            c("entities"),
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
        queues=[{"queue": "staybook.intake", "messages": 17, "consumers": 2},
                {"queue": "staybook.payment", "messages": 0, "consumers": 2},
                {"queue": "staybook.dead-letters", "messages": 1, "consumers": 0}],
        dead_letters=[{"id": "7f3c9a2e", "queue": "staybook.intake", "reason": "not_json",
                       "type": None}])


class FixedSource:
    """Always the same snapshot; actions answer with what they would do."""

    def __init__(self) -> None:
        self.sorts: list[str] = []

    def snapshot(self, sort: str, top: int) -> Snapshot:
        self.sorts.append(sort)
        snap = fixed_snapshot()
        snap.actors.sort(key=lambda a: (-a[sort], a["id"]))
        snap.actors = snap.actors[:top]
        return snap

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
    for needle in ("node-a", "1204/10000", "310.5", "apartment:apt-7", "staybook.intake",
                   "7f3c9a2e", "payment [worker] running restarts=1"):
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
