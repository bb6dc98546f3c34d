"""``staybook ctl dlq``: the book of dead letters (list, show, replay, purge).

Every node records the letters that land in the dead-letter queue in the store, so
each action is asked of one node only (``--node``, else the first to answer): every
node reads the same book, and replaying on two at once would publish twice.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Annotated, Any

import typer
from pika.exceptions import AMQPError

from console.broker_reads import dead_letter_depth
from console.control_client import REPLAY_WAIT, ControlFailed
from console.ctl_context import ask, broker_failed, context_of
from console.ctl_output import JsonOpt, dump, fail, plural, table

MAX_LETTERS = 1000

dlq_app = typer.Typer(help="The dead-letter queue: list, show, replay, purge.",
                      no_args_is_help=True)


def _one_node(ctx: typer.Context) -> str:
    """The node that carries out a dead-letter action: ``--node``, else the first to answer.

    Every node reads the same book, and replaying on two at once would publish twice.
    """
    c = context_of(ctx)
    if c.node:
        return c.node
    names = [str(r["node"]) for r in ask(ctx, "status", until_ok=True) if r.get("ok")]
    if not names:
        fail("no node answered")
    return names[0]


def _ask_one(ctx: typer.Context, op: str, args: dict[str, Any], wait: float) -> Any:
    """``op`` on one node; its result, or one error line."""
    c = context_of(ctx)
    node = _one_node(ctx)
    try:
        with c.client() as client:
            replies = client.request(op, args, node=node, wait=wait)
    except (ControlFailed, AMQPError, OSError) as exc:
        broker_failed(ctx, exc)
    if not replies:
        fail(f"{node} did not answer within {wait:g} s")
    if not replies[0].get("ok"):
        fail(f"{node}: {replies[0].get('error')}")
    return replies[0]["result"]


def _unrecorded(ctx: typer.Context) -> int | None:
    """Letters still in the dead-letter queue, not in the book yet (``None``: unknown)."""
    c = context_of(ctx)
    try:
        conn = c.connection()
    except (AMQPError, OSError):
        return None
    try:
        return dead_letter_depth(conn, c.topology)
    finally:
        with contextlib.suppress(AMQPError, OSError):
            conn.close()


@dlq_app.command("list")
def dlq_list(ctx: typer.Context, as_json: JsonOpt = False,
             limit: Annotated[int, typer.Option(help="at most this many")] = 100,
             after: Annotated[int, typer.Option(help="only ids after this one")] = 0,
             show_all: Annotated[bool, typer.Option("--all", help="replayed ones too")]
             = False) -> None:
    """Dead letters in the order they landed: id, origin queue, reason, type.

    Read from the store, where every node records them as they land: listing never
    moves, reorders or redelivers a letter.
    """
    if not 1 <= limit <= MAX_LETTERS:
        fail(f"--limit must be between 1 and {MAX_LETTERS}")
    result = _ask_one(ctx, "dlq_list", {"limit": limit, "after": after, "all": show_all},
                      context_of(ctx).wait)
    rows = result["letters"]
    if as_json:
        dump(rows)
        return
    table(rows, ["id", "status", "queue", "reason", "type", "message_id", "detail"])
    typer.echo(f"{result['dead']} dead, {result['replaying']} being replayed, "
               f"{result['replayed']} replayed")
    waiting = _unrecorded(ctx)
    if waiting:
        typer.echo(f"{waiting} more in {context_of(ctx).topology.dead_letter_queue}, "
                   "not recorded yet (is a node running?)")


@dlq_app.command("show")
def dlq_show(ctx: typer.Context, letter: Annotated[str, typer.Argument(metavar="ID")],
             as_json: JsonOpt = False) -> None:
    """One dead letter (by id, or every one with that message id) with headers and body."""
    found = _ask_one(ctx, "dlq_show", {"id": letter}, context_of(ctx).wait)
    if not found:
        fail(f"no dead letter {letter}")
    if as_json:
        dump(found[0] if len(found) == 1 else found)
        return
    for one in found:
        for k, v in one.items():
            typer.echo(f"{k}: {json.dumps(v, default=str) if isinstance(v, dict) else v}")


@dlq_app.command("replay")
def dlq_replay(ctx: typer.Context,
               letter: Annotated[str | None, typer.Argument(metavar="[ID]")] = None,
               replay_all: Annotated[bool, typer.Option("--all")] = False,
               as_json: JsonOpt = False) -> None:
    """Put a dead letter (or all) back on its original queue, headers included."""
    if (letter is None) == (not replay_all):
        fail("give a dead letter ID or --all")
    args: dict[str, Any] = {"all": True} if replay_all else {"id": letter}
    results = _ask_one(ctx, "dlq_replay", args, max(context_of(ctx).wait, REPLAY_WAIT))
    if as_json:
        dump(results)
    else:
        for r in results:
            typer.echo(f"{r['id']}: " + (f"replayed to {r['queue']}" if r["replayed"]
                                         else f"kept ({r.get('error')})"))
        if replay_all and not results:
            typer.echo("no dead letters to replay")
    if letter is not None and not any(r["replayed"] for r in results):
        fail(f"{letter}: not replayed" + ("" if results else " (no such dead letter)"))


@dlq_app.command("purge")
def dlq_purge(ctx: typer.Context,
              yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
              replayed: Annotated[bool, typer.Option("--replayed",
                                                     help="only the replayed ones")]
              = False) -> None:
    """Drop every dead letter (or only those already replayed) from the book."""
    what = "replayed dead letters" if replayed else "dead letters"
    if not yes and not sys.stdin.isatty():
        fail(f"purging {what} asks first: pass --yes (there is no terminal to ask on)")
    if not yes and not typer.confirm(f"drop all {what}?"):
        raise typer.Exit(1)
    n = _ask_one(ctx, "dlq_purge", {"replayed_only": replayed}, context_of(ctx).wait)
    typer.echo(f"purged {plural(int(n), what[:-1])}")
