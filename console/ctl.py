"""``staybook ctl``: the scriptable operator console.

Node facts (tree, actors, inspect, history, restart, stop, crash, the book of dead
letters in :mod:`console.ctl_dlq`, and the reservations :mod:`console.ctl_repair`
checks and repairs) come from the nodes over the control exchange
(:mod:`console.control_client`; the nodes' side is :mod:`node.control`); queue depths
are read directly from RabbitMQ with passive declares (:mod:`console.broker_reads`),
so they need neither a management plugin nor a node to be up. Every listing has
``--json``.

The console logs in as an operator broker user (``--url`` or
``STAYBOOK_CONSOLE_URL``) and stamps its requests with that user as AMQP ``user_id``;
RabbitMQ checks the stamp against the login, and the nodes check it against their
operator list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from pika.exceptions import AMQPError

from broker.rabbitmq import connection_parameters
from broker.topology import topology_of
from config import ConfigError, load_settings, redact_url
from console.broker_reads import queue_replicas, queue_stats
from console.control_client import ControlFailed
from console.ctl_context import CtlContext, ask, broker_failed, console_url, context_of
from console.ctl_dlq import dlq_app
from console.ctl_output import JsonOpt, dump, fail, plural, table
from console.ctl_repair import repair

MAX_HISTORY = 1000  # events a node sends for one history request (node.control.MAX_TOP)

ctl_app = typer.Typer(help="Operate running nodes: tree, actors, queues, dead letters.",
                      no_args_is_help=True)
ctl_app.add_typer(dlq_app, name="dlq")
ctl_app.command()(repair)


@ctl_app.callback()
def _main(ctx: typer.Context,
          url: Annotated[str | None, typer.Option(
              help="operator AMQP URL (default: $STAYBOOK_CONSOLE_URL, else the "
                   "node's broker URL)")] = None,
          node: Annotated[str | None, typer.Option(help="ask this node only")] = None,
          wait: Annotated[float | None, typer.Option(
              help="seconds to collect replies from every node")] = None) -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        typer.echo(f"staybook: {exc}", err=True)
        raise typer.Exit(2) from None
    ctx.obj = CtlContext(console_url(settings, url), topology_of(settings), node,
                         wait if wait is not None else settings.control.broadcast_wait_seconds,
                         settings.control.request_ttl_seconds,
                         settings.broker.management_url)


@ctl_app.command()
def nodes(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every node that answers: readiness (the store up?), live actors against the cap,
    counters, backlogs."""
    rows = [r["result"] for r in ask(ctx, "status") if r.get("ok")]
    if as_json:
        dump(rows)
        return
    for r in rows:
        r["live/cap"] = f"{r['live_actors']}/{r['max_live']}"
        held = r.get("partitions")
        r["partitions"] = "-" if held is None else f"{len(held)}: {_ranges(held)}"
    table(rows, ["node", "ready", "store", "tree_status", "uptime", "live/cap", "commands",
                 "p99_ms", "restarts", "dead_letters", "outbox_backlog", "partitions"])


def _ranges(ps: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2,5``."""
    out: list[str] = []
    for p in sorted(ps):
        if out and out[-1].split("-")[-1] == str(p - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{p}"
        else:
            out.append(str(p))
    return ",".join(out)


@ctl_app.command()
def partitions(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Each command partition: the node consuming it, its depth and consumers."""
    c = context_of(ctx)
    owner: dict[int, list[str]] = {}
    for r in ask(ctx, "status"):
        if r.get("ok"):
            for p in r["result"].get("partitions") or []:
                owner.setdefault(p, []).append(r["result"]["node"])
    try:
        conn = c.connection()
    except (AMQPError, OSError) as exc:
        broker_failed(ctx, exc)
    try:
        stats = {s["queue"]: s for s in queue_stats(conn, c.topology)}
    finally:
        conn.close()
    rows = []
    for p, q in enumerate(c.topology.intake_queues()):
        s = stats.get(q, {})
        rows.append({"partition": p, "queue": q, "node": ",".join(owner.get(p, [])) or "-",
                     "messages": s.get("messages"), "consumers": s.get("consumers")})
    if as_json:
        dump(rows)
        return
    table(rows, ["partition", "queue", "node", "messages", "consumers"])


def tree_lines(children: list[dict[str, Any]], depth: int = 0) -> Iterator[str]:
    """The supervision tree as indented lines: id, kind, status, restarts, last failure
    (and, under ``entities``, the first live entity actors and how many more there are)."""
    for c in children:
        lf = c.get("last_failure")
        last = f"  last: {lf['type']}: {lf['message']}" if lf else ""
        yield (f"{'  ' * depth}{'└─ ' if depth else ''}{c['id']} ({c.get('kind', '?')}, "
               f"{c.get('restart', '?')}) {c['status']} restarts={c['restarts']}{last}")
        yield from tree_lines(c.get("children", []), depth + 1)
        if c.get("more"):
            yield f"{'  ' * (depth + 1)}└─ … and {c['more']} more"


@ctl_app.command()
def tree(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The supervision tree of each node: status, restarts, last failure."""
    replies = [r for r in ask(ctx, "tree") if r.get("ok")]
    if as_json:
        dump({r["node"]: r["result"] for r in replies})
        return
    for r in replies:
        typer.echo(f"{r['node']}: root (supervisor)")
        for line in tree_lines(r["result"], 1):
            typer.echo(line)


@ctl_app.command()
def actors(ctx: typer.Context, as_json: JsonOpt = False,
           top: Annotated[int, typer.Option(help="how many")] = 20,
           sort: Annotated[str, typer.Option(
               help="mailbox | handled | restarts | pending")] = "mailbox",
           kind: Annotated[str | None, typer.Option(help="apartment | reservation")] = None
           ) -> None:
    """The busiest entity actors across every node."""
    if sort not in ("mailbox", "handled", "restarts", "pending"):
        raise typer.BadParameter("sort by mailbox, handled, restarts or pending")
    args = {"top": top, "sort": sort, "kind": kind}
    rows = [a for r in ask(ctx, "actors", args) if r.get("ok") for a in r["result"]]
    rows.sort(key=lambda a: (-a[sort], a["id"]))
    rows = rows[:top]
    if as_json:
        dump(rows)
        return
    table(rows, ["id", "node", "status", "mailbox", "pending", "handled", "restarts",
                 "uptime", "last_failure"])


@ctl_app.command()
def inspect(ctx: typer.Context, actor: str, as_json: JsonOpt = False) -> None:
    """One actor: state, mailbox, last error with its traceback.

    An entity that is live nowhere (passivated, or never loaded) shows the state its
    events fold to, read from the store (``live: false``). ``apt-1`` alone finds
    ``apartment:apt-1`` (or ``reservation:apt-1``).
    """
    answers = [r for r in ask(ctx, "inspect", {"id": actor}) if r.get("ok")]
    live = [r for r in answers if r["result"].get("live", True)]
    found = live or answers[:1]  # every node reads the same store: one copy is enough
    if not found:
        fail(f"{actor}: no such actor on any node, and no such entity in the store")
    if as_json:
        dump(found[0]["result"] if len(found) == 1 else found)
        return
    for r in found:
        info = dict(r["result"])
        lf = info.pop("last_failure", None)
        state = info.pop("state", None)
        typer.echo(f"{actor} on {r['node']}")
        for k, v in info.items():
            typer.echo(f"  {k}: {v}")
        if state is not None:
            for line in state_lines(state):
                typer.echo(f"  {line}")
        if lf:
            typer.echo(f"  last failure: {lf['type']}: {lf['message']}")
            typer.echo("    " + str(lf.get("traceback", "")).rstrip().replace("\n", "\n    "))


def state_lines(state: Any) -> Iterator[str]:
    """An entity's state for people: fields one per line, stays and blocks by date."""
    if not isinstance(state, dict) or not isinstance(state.get("stays"), list):
        yield "state: " + json.dumps(state, indent=2, default=str).replace("\n", "\n  ")
        return
    yield "state:"
    for k, v in state.items():
        if k not in ("stays", "blocks"):
            yield f"  {k}: {v}"
    stays, blocks = state["stays"], state.get("blocks") or []
    yield f"  stays ({plural(len(stays), 'accepted or pending stay')}):" if stays else \
        "  stays: none accepted or pending"
    for st in stays:
        yield (f"    {st['start']} to {st['end']} ({plural(st['nights'], 'night')})  "
               f"{st['status']:<8}  {st['reservation_id']}  guest {st['guest_id']}, "
               f"{plural(st['guests'], 'guest')}, {st['total_price']}"
               + (f", expires {st['expires_at'][:19]}" if st.get("expires_at") else ""))
    if state.get("stays_not_shown"):
        yield f"    … and {state['stays_not_shown']} more"
    yield "  blocks:" if blocks else "  blocks: none"
    for b in blocks:
        yield f"    {b['start']} to {b['end']}  {b['block_id']}"


@ctl_app.command()
def history(ctx: typer.Context, entity: str,
            limit: Annotated[int, typer.Option(help="the last N events")] = 50,
            full: Annotated[bool, typer.Option(
                "--full", help=f"every event (up to {MAX_HISTORY}), whole payloads and ids")]
            = False,
            as_json: JsonOpt = False) -> None:
    """An entity's recorded events, oldest first (``apt-1`` or ``reservation:r-1``).

    Without ``--full``: the last ``--limit`` events, each payload cut to one line.
    """
    if full:
        limit = MAX_HISTORY
    found = [r for r in ask(ctx, "history", {"id": entity, "limit": limit}, until_ok=True)
             if r.get("ok")]
    if not found:
        fail(f"{entity}: no such entity in the store")
    result = found[0]["result"]
    if as_json:
        dump(result)
        return
    total, events = int(result["version"]), result["events"]
    shown = "" if len(events) == total else f" (the last {len(events)} shown" + (
        ")" if full else "; --full for more)")
    typer.echo(f"{result['id']}: {plural(total, 'event')}{shown}")
    for e in events:
        payload = json.dumps(e["payload"], default=str)
        head = f"  {e['version']:>5}  {e['occurred_at'][:19]}  {e['type']:<24} "
        if not full:
            typer.echo(head + payload[:120])
            continue
        typer.echo(head + f"message {e['message_id']}"
                   + (f", caused by {e['causation_id']}" if e.get("causation_id") else ""))
        typer.echo(f"         {payload}")


def _act(ctx: typer.Context, op: str, actor: str) -> None:
    c = context_of(ctx)
    try:
        with c.client() as client:
            reply = client.act(op, actor, node=c.node, wait=c.wait)
    except (ControlFailed, AMQPError, OSError) as exc:
        broker_failed(ctx, exc)
    typer.echo(f"{reply['node']}: {reply['result']}")


@ctl_app.command()
def restart(ctx: typer.Context, actor: str) -> None:
    """Restart an actor through its supervisor (entities come back from the store)."""
    _act(ctx, "restart", actor)


@ctl_app.command()
def stop(ctx: typer.Context, actor: str) -> None:
    """Passivate an idle entity actor (it activates again on its next message)."""
    _act(ctx, "stop", actor)


@ctl_app.command()
def crash(ctx: typer.Context, actor: str) -> None:
    """A drill: make an actor crash, to watch its supervisor bring it back."""
    _act(ctx, "crash", actor)


@ctl_app.command()
def threads(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Each node's threads by group with the CPU seconds they used: where a node spends."""
    rows = [{"node": r["node"], **t} for r in ask(ctx, "threads") if r.get("ok")
            for t in r["result"]]
    if as_json:
        dump(rows)
        return
    table(rows, ["node", "thread", "threads", "cpu_s"])


@ctl_app.command()
def queues(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Depth and consumers of every Staybook queue (passive declares, no plugin).

    With ``STAYBOOK_BROKER__MANAGEMENT_URL`` set, also each quorum queue's leader and
    its replicas online out of its members (RabbitMQ's management API).
    """
    c = context_of(ctx)
    try:
        conn = c.connection()
    except (AMQPError, OSError) as exc:
        broker_failed(ctx, exc)
    try:
        rows = queue_stats(conn, c.topology)
    finally:
        conn.close()
    cols = ["queue", "messages", "consumers"]
    if c.management_url:
        vhost = connection_parameters(c.url)[0].virtual_host
        replicas = queue_replicas(c.management_url, vhost, c.topology.prefix)
        if replicas is None:
            fail("the management API did not answer at "
                 f"{redact_url(c.management_url)}; check STAYBOOK_BROKER__MANAGEMENT_URL")
            return
        for r in rows:
            q = replicas.get(r["queue"], {})
            r.update(leader=q.get("leader"), members=q.get("members", []),
                     online=q.get("online", []),
                     replicas=f"{len(q.get('online', []))}/{len(q.get('members', []))}")
        cols += ["leader", "replicas"]
    if as_json:
        dump(rows)
        return
    table(rows, cols)
