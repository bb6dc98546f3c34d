"""``staybook ctl repair``: reservations a stale actor left booked after a failed payment.

An apartment actor deciding ``CancelUnpaidReservation`` from stale memory, on nodes
that did not fence decisions with no events, answered "nothing to do", so a declined
card's nights stayed booked. ``--check`` asks a node to find them
(the node reads the store: :mod:`node.repair`), page by page; ``--apply`` then sends
each one, as a producer, the command the reservation process meant to send. The
command's message id is derived from the reservation id, so re-running ``--apply`` is
answered from the apartment's inbox and changes nothing twice.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Any

import typer
from pika.exceptions import AMQPError

from broker.client import Client, NoReply, NotConfirmed
from broker.rabbitmq import connection_problem
from config import redact_url
from console.control_client import ControlClient, ControlFailed
from console.ctl_context import broker_failed, context_of
from console.ctl_output import JsonOpt, dump, fail, plural, table
from messages import CancelUnpaidReservation, CommandResult, Envelope

FOUND = 3  # --check's exit status when it found some (1 stays "an error")
SCAN_WAIT = 30.0  # a page folds up to a few hundred apartments: give a node time
MAX_ROWS = 1000
COLUMNS = ["reservation_id", "apartment_id", "guest_id", "start", "end", "amount",
           "currency", "reason"]


def repair(ctx: typer.Context,
           check: Annotated[bool, typer.Option(
               "--check", help="list the reservations to repair (exit 3 when any)")] = False,
           apply: Annotated[bool, typer.Option(
               "--apply", help="check, then cancel each one found and release its nights")
           ] = False,
           limit: Annotated[int, typer.Option(help=f"at most this many (<= {MAX_ROWS})")] = 100,
           producer_url: Annotated[str | None, typer.Option(
               help="AMQP URL --apply sends the commands with (default: --url); the "
                    "operator role may not send commands")] = None,
           timeout: Annotated[float, typer.Option(
               help="--apply: seconds to wait for each reply")] = 10.0,
           as_json: JsonOpt = False) -> None:
    """Reservations whose payment failed while their apartment still holds the nights.

    ``--check`` lists them (exit 0: none; 3: some; 1: an error). ``--apply`` sends each
    one ``CancelUnpaidReservation`` with the payment's reason and prints each reply
    (exit 1 if any was not done); running it again is harmless.
    """
    if check == apply:
        fail("give --check or --apply")
    if not 1 <= limit <= MAX_ROWS:
        fail(f"--limit must be between 1 and {MAX_ROWS}")
    found = scan(ctx, limit)
    rows = found["found"]
    if check:
        if as_json:
            dump(found)
        else:
            if rows:
                table(rows, COLUMNS)
            typer.echo(summary(found))
        raise typer.Exit(FOUND if rows else 0)
    outcomes = send_repairs(ctx, rows, producer_url, timeout, echo=not as_json)
    if as_json:
        dump({**found, "outcomes": outcomes})
    else:
        done = sum(o["status"] == "ok" for o in outcomes)
        more = "; more remain: run it again" if found["capped"] else ""
        typer.echo(f"repaired {done} of {len(rows)} (examined "
                   f"{plural(found['scanned'], 'failed payment')}){more}")
    raise typer.Exit(0 if all(o["status"] == "ok" for o in outcomes) else 1)


def scan(ctx: typer.Context, limit: int) -> dict[str, Any]:
    """Every reservation to repair, up to ``limit``: the node's pages, followed.

    Each page is one bounded request; ``capped`` says there are more than ``limit``.
    """
    c = context_of(ctx)
    rows: list[dict[str, Any]] = []
    scanned = 0
    after = 0
    try:
        with c.client() as client:
            while True:
                page = _ask(client, c.node, {"after": after, "limit": limit + 1 - len(rows)},
                            max(c.wait, SCAN_WAIT))
                rows += page["found"]
                scanned += int(page["scanned"])
                if page["next"] is None or len(rows) > limit:
                    break
                after = int(page["next"])
    except (ControlFailed, AMQPError, OSError) as exc:
        broker_failed(ctx, exc)
    return {"found": rows[:limit], "capped": len(rows) > limit, "scanned": scanned}


def _ask(client: ControlClient, node: str | None, args: dict[str, Any],
         wait: float) -> dict[str, Any]:
    """One page from ``node``, else from the first node to answer (all read one store)."""
    replies = client.request("repair_check", args, node=node, wait=wait, until_ok=True)
    ok = [r for r in replies if r.get("ok")]
    if not ok:
        fail(f"{replies[0].get('node')}: {replies[0].get('error')}" if replies
             else f"no node answered within {wait:g} s")
    result: dict[str, Any] = ok[0]["result"]
    return result


def summary(found: dict[str, Any]) -> str:
    """The check's last line: how many, how much was examined, what to do."""
    n = len(found["found"])
    examined = f"{plural(found['scanned'], 'failed payment')} examined"
    if not n:
        return f"no reservation holds nights after a failed payment ({examined})"
    shown = f"; showing the first {n}, more exist" if found["capped"] else ""
    return (f"{n} reservation{'s hold' if n > 1 else ' holds'} nights after a failed "
            f"payment ({examined}{shown}); `staybook ctl repair --apply` releases them")


def message_id_for(reservation_id: str) -> str:
    """The repair's message id: the same on every run, so a re-run is answered from the
    apartment's inbox (a digest when ``repair:<id>`` would pass the 100-character limit)."""
    mid = f"repair:{reservation_id}"
    if len(mid) <= 100:
        return mid
    return "repair:" + hashlib.sha256(reservation_id.encode()).hexdigest()[:40]


def send_repairs(ctx: typer.Context, rows: list[dict[str, Any]], producer_url: str | None,
                 timeout: float, *, echo: bool) -> list[dict[str, Any]]:
    """``CancelUnpaidReservation`` to each row's apartment, one at a time, each reply
    awaited; each outcome printed as it comes (``echo``) and returned."""
    if not rows:
        return []
    url = producer_url or context_of(ctx).url
    try:
        client = Client(url, context_of(ctx).topology)
    except (AMQPError, OSError) as exc:
        logging.getLogger(__name__).debug("repair: connecting failed", exc_info=True)
        fail(f"cannot reach RabbitMQ at {redact_url(url)} ({connection_problem(exc)}); "
             "check --producer-url, --url or STAYBOOK_CONSOLE_URL")
    outcomes: list[dict[str, Any]] = []
    with client:
        for row in rows:
            outcome = _send(client, row, timeout)
            outcomes.append(outcome)
            if echo:
                typer.echo(_line(outcome))
    return outcomes


def _send(client: Client, row: dict[str, Any], timeout: float) -> dict[str, Any]:
    mid = message_id_for(row["reservation_id"])
    env = Envelope.new(CancelUnpaidReservation(reservation_id=row["reservation_id"],
                                               reason=row["reason"]),
                       apartment_id=row["apartment_id"], correlation_id=mid
                       ).model_copy(update={"message_id": mid})
    out: dict[str, Any] = {"reservation_id": row["reservation_id"],
                           "apartment_id": row["apartment_id"], "message_id": mid,
                           "status": None, "reason": None, "detail": None, "events": []}
    try:
        reply = client.request(env, timeout=timeout)
    except NotConfirmed as exc:
        return {**out, "status": "not_confirmed", "detail": str(exc)}
    except NoReply as exc:
        return {**out, "status": "no_reply", "detail": str(exc)}
    result = reply.payload
    if not isinstance(result, CommandResult):
        return {**out, "status": "error", "detail": f"unexpected reply {reply.type}"}
    return {**out, "status": result.status.value, "reason": result.reason,
            "detail": result.detail, "events": [str(e.get("type")) for e in result.events]}


def _line(o: dict[str, Any]) -> str:
    """One outcome: ``res-1 on apt-1: ok: ReservationCancelled, DatesReleased``."""
    what = ", ".join(o["events"]) or "nothing to do"
    if o["status"] != "ok":
        what = ": ".join(str(x) for x in (o["reason"], o["detail"]) if x) or "-"
    return f"{o['reservation_id']} on {o['apartment_id']}: {o['status']}: {what}"
