"""The ``staybook`` command: run a node, send commands, search, run the demo."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from datetime import date
from enum import StrEnum
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from config import Settings
from config.logs import LogFormat

if TYPE_CHECKING:
    from console.rabbittools import Tool

app = typer.Typer(help="Staybook: an actor-based apartment booking backend.",
                  no_args_is_help=True, add_completion=False)
broker_app = typer.Typer(help="The local development RabbitMQ node.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
db_app = typer.Typer(help="The store's schema (Alembic migrations; STAYBOOK_DATABASE_URL).",
                     no_args_is_help=True)
app.add_typer(db_app, name="db")
config_app = typer.Typer(help="The settings (config/__init__.py).", no_args_is_help=True)
app.add_typer(config_app, name="config")

# --- operator console (console/ctl.py, console/tui.py) ---------------------------------
from console.ctl import ctl_app  # noqa: E402 - grouped with the console block

app.add_typer(ctl_app, name="ctl")


@app.command()
def console(
    url: Annotated[str | None, typer.Option(
        help="operator AMQP URL (default: $STAYBOOK_CONSOLE_URL, else the node's)")] = None,
    refresh: Annotated[float | None, typer.Option(
        help="seconds between refreshes (default: control.console_refresh_seconds)")] = None,
    top: Annotated[int, typer.Option(help="actors listed")] = 20,
) -> None:
    """The live terminal view: tree, top actors, rates, queues, dead letters."""
    from broker.topology import topology_of
    from console.ctl_context import console_url
    from console.tui import run_console

    settings = _settings()
    _reachable(console_url(settings, url), "check --url or STAYBOOK_CONSOLE_URL")
    run_console(console_url(settings, url), topology_of(settings),
                refresh=refresh if refresh is not None else
                settings.control.console_refresh_seconds, top=top)
# --- end operator console ------------------------------------------------------------

STATE_DIR = Path(".staybook")


def _settings() -> Settings:
    """The settings; a bad one ends the command with one line (exit 2)."""
    from config import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        typer.echo(f"staybook: {exc}", err=True)
        raise typer.Exit(2) from None


def _reachable(url: str, advice: str) -> None:
    """Connect once, or end the command with one line saying why not (exit 2)."""
    import pika
    from pika.exceptions import AMQPError

    from broker.rabbitmq import connection_parameters, connection_problem

    try:
        pika.BlockingConnection(connection_parameters(url)).close()
    except (AMQPError, OSError) as exc:
        logging.getLogger(__name__).debug("connecting failed", exc_info=True)
        typer.echo(f"staybook: cannot reach RabbitMQ at {_redact(url)} "
                   f"({connection_problem(exc)}); {advice}", err=True)
        raise typer.Exit(2) from None


def _broker_url(settings: Settings, local: bool) -> str:
    """The configured broker, or a local one started (and installed) on demand."""
    if "STAYBOOK_BROKER__URL" in os.environ or not local:
        return settings.broker.url
    from console.localbroker import BrokerUnavailable, start_local_broker
    try:
        return start_local_broker(STATE_DIR / "rabbitmq")
    except BrokerUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _topology_ready(settings: Settings, url: str) -> None:
    """Declare the topology; on a local broker without the consistent-hash exchange,
    enable its plugin there first (and say so). Otherwise one line and exit 1.

    RabbitMQ as a distribution packages it (Debian's service) has the plugin but not
    enabled; a node cannot start without it.
    """
    from broker.rabbitmq import HashExchangeMissing, broker_urls
    from console.rabbittools import ToolUnusable, enable_hash_exchange

    try:
        _declare(settings, url)
        return
    except HashExchangeMissing:
        logging.getLogger(__name__).debug("declaring failed", exc_info=True)
    for one in broker_urls(url):
        try:
            node = enable_hash_exchange(one)
        except ToolUnusable as exc:
            typer.echo(f"staybook: RabbitMQ at {_redact(one)} has no consistent-hash "
                       f"exchange and {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"RabbitMQ at {_redact(one)} had no consistent-hash exchange: enabled "
                   f"its plugin on node {node}")
    try:
        _declare(settings, url)
    except HashExchangeMissing as exc:
        typer.echo(f"staybook: {exc}", err=True)
        raise typer.Exit(1) from None


def _declare(settings: Settings, url: str) -> None:
    """Declare the topology on ``url``; a refusal other than the missing consistent-hash
    exchange is one line (exit 1), an unreachable broker too (exit 2)."""
    from pika.exceptions import AMQPError

    from broker.rabbitmq import (
        BrokerSetupError,
        HashExchangeMissing,
        RabbitBroker,
        connection_problem,
    )

    try:
        RabbitBroker.from_settings(settings, url).declare()
    except HashExchangeMissing:
        raise
    except BrokerSetupError as exc:
        typer.echo(f"staybook: {exc}", err=True)
        raise typer.Exit(1) from None
    except (AMQPError, OSError) as exc:
        logging.getLogger(__name__).debug("declaring failed", exc_info=True)
        typer.echo(f"staybook: cannot declare the topology on RabbitMQ at {_redact(url)} "
                   f"({connection_problem(exc)})", err=True)
        raise typer.Exit(2) from None


def _logging(level: str, fmt: LogFormat = "text", node: str = "-") -> None:
    """Log to stderr at ``level`` in ``fmt`` (config.logs says what it quiets and why)."""
    from config.logs import configure

    configure(level, fmt, node)


LocalOpt = Annotated[bool, typer.Option(
    "--local-broker/--no-local-broker",
    help="Start (and if needed install) a local RabbitMQ when STAYBOOK_BROKER__URL is unset.")]


@app.command()
def serve(local_broker: LocalOpt = True, wait: Annotated[float, typer.Option(
        "--wait", help="seconds to wait for RabbitMQ to answer")] = 60.0) -> None:
    """Run a node until SIGINT/SIGTERM; exit 1 if its supervision tree gives up."""
    from node import Node

    settings = _settings()
    _logging(settings.log_level, settings.log_format, settings.node_name)
    url = _broker_url(settings, local_broker)
    settings.broker.url = url
    _wait_for_broker(url, wait)
    _topology_ready(settings, url)
    from broker.membership import NodeNameInUse, StoreMismatch
    from broker.rabbitmq import BrokerSetupError

    node = Node(settings)
    try:
        node.start()
    except (NodeNameInUse, StoreMismatch, BrokerSetupError) as exc:
        node.broker.close()
        node.engine.dispose()
        typer.echo(f"staybook: {exc}", err=True)
        raise typer.Exit(1) from None
    # Trap the signals before saying it serves: whoever reads that line may stop it.
    stop = _trap_stop(node.app.failed.set)
    m = settings.metrics
    metrics = f"http://{m.address}:{m.port}/metrics" if m.port else "off"
    typer.echo(f"staybook node {settings.node_name} serving on {_redact(url)}: roles "
               f"{'+'.join(settings.roles)}, store {_redact_store(settings.database_url)}, "
               f"metrics {metrics}")
    # Wake now and then: a signal the kernel delivers to another thread runs its
    # Python handler only when the main thread runs, and an untimed wait never does.
    while not node.wait(0.5):
        pass
    failed = not stop["sig"]
    why = f"on {stop['name']}" if not failed else "the supervision tree gave up"
    if failed and node.app.failure is not None:
        f = node.app.failure
        if f.phase == "dependency":
            why = (f"{f.message}; check that the database at STAYBOOK_DATABASE_URL "
                   f"answers, then start the node again")
        else:
            why = f"the supervision tree gave up: {f.error_type}: {f.message}"
    node.stop()
    # One line either way: what stopped it, on stderr when that was a failure.
    typer.echo(f"staybook node {settings.node_name} stopped {why}" if not failed else
               f"staybook node {settings.node_name} stopped: {why}", err=failed)
    raise typer.Exit(1 if failed else 0)


@app.command()
def cluster(
    nodes: Annotated[int, typer.Option(min=1, max=16, help="node processes to run")] = 3,
    local_broker: LocalOpt = True,
) -> None:
    """Run several nodes on one broker and one store until SIGINT/SIGTERM.

    Each is ``staybook serve`` with its own name (``node-1`` ...); they share the
    store of ``STAYBOOK_DATABASE_URL`` (SQLite by default; the fence keeps several
    writers on one file safe) and split the command partitions among themselves.
    Stopping stops them all, gracefully: each hands its partitions over first.
    """
    import subprocess
    import sys
    import time


    settings = _settings()
    url = _broker_url(settings, local_broker)
    _wait_for_broker(url)
    _topology_ready(settings, url)
    stop = _trap_stop()
    env = {**os.environ, "STAYBOOK_BROKER__URL": url, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "console.cli", "serve",
                               "--no-local-broker"],
                              env={**env, "STAYBOOK_NODE_NAME": f"node-{i + 1}"})
             for i in range(nodes)]
    typer.echo(f"staybook cluster: {nodes} nodes on {_redact(url)} (store "
               f"{_redact_store(settings.database_url)}); `staybook ctl partitions` shows "
               f"who holds what")
    while not stop["sig"] and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes = [p.wait() for p in procs]
    raise typer.Exit(0 if stop["sig"] and not any(codes) else 1)


@app.command()
def send(
    command_type: Annotated[str, typer.Argument(help="e.g. AddApartment")],
    apartment_id: Annotated[str, typer.Argument(help="the partition key")],
    payload: Annotated[str, typer.Argument(help="the payload as JSON")],
    timeout: Annotated[float, typer.Option(help="seconds to wait for each reply")] = 10.0,
    message_id: Annotated[str | None, typer.Option(
        help="re-send an earlier command with its id (safe: it takes effect once)")] = None,
    retries: Annotated[int, typer.Option(help="re-sends with the same id on no reply")] = 2,
) -> None:
    """Post a command and print its reply (events are the nodes' to publish).

    Exit 0 when ok, 1 when rejected or no node consumes commands, 2 when it was never
    confirmed by the broker, 3 when it was confirmed but no reply came (it will still
    take effect once: re-send with ``--message-id``).
    """
    from broker.client import NoReply, NotConfirmed
    from messages import Envelope, InvalidMessage, new_id

    settings = _settings()
    spec = _command_spec(command_type)
    try:
        fields = json.loads(payload)
    except ValueError as exc:
        typer.echo(f"staybook: the payload is not JSON ({exc}); e.g. "
                   f"'{{\"owner_id\": \"o\"}}'", err=True)
        raise typer.Exit(2) from None
    mid = message_id or new_id()
    body = json.dumps({"message_id": mid, "correlation_id": mid, "type": command_type,
                       "version": spec.version, "apartment_id": apartment_id,
                       "payload": fields}).encode()
    try:
        env = Envelope.from_json(body)
    except InvalidMessage as exc:
        typer.echo(f"invalid {command_type}: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    try:
        with _client(settings) as client:
            _consumed(client, client.topology.intake_queues(),
                      _queues_named(client.topology.intake_queues()))
            # The id is worth printing only once the broker holds the command.
            reply = client.request(env, timeout=timeout, retries=retries, on_confirmed=(
                lambda: typer.echo(f"message_id {mid}", err=True)))
    except NotConfirmed as exc:
        typer.echo(f"not confirmed by the broker: {exc}", err=True)
        raise typer.Exit(2) from None
    except NoReply as exc:
        typer.echo(f"confirmed, but no reply yet ({exc}); re-send with --message-id {mid}",
                   err=True)
        raise typer.Exit(3) from None
    data = reply.payload.model_dump(mode="json")
    typer.echo(json.dumps(data, indent=2))
    raise typer.Exit(0 if data.get("status") == "ok" else 1)


def _command_spec(type_name: str) -> Any:
    """The spec of a command ``send`` may post, or one line saying why not (exit 2).

    Only nodes publish events: one posted by hand would write the read models with
    what no apartment's history holds (a listing search offers and nobody can book).
    """
    import difflib

    from messages import Kind, spec_for
    from messages.registry import types_of

    spec = spec_for(type_name)
    if spec is not None and spec.kind is Kind.COMMAND:
        return spec
    commands = types_of(Kind.COMMAND)
    offer = f"send posts commands: {', '.join(commands)}"
    if spec is None:
        close = difflib.get_close_matches(type_name, commands, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        typer.echo(f"staybook: unknown message type {type_name}{hint}; {offer}", err=True)
    elif spec.kind is Kind.QUERY:
        typer.echo(f"staybook: {type_name} is a query (staybook search asks it); {offer}",
                   err=True)
    else:
        article = "an" if spec.kind is Kind.EVENT else "a"
        typer.echo(f"staybook: {type_name} is {article} {spec.kind.value}; {offer}", err=True)
    raise typer.Exit(2)


def _queues_named(queues: list[str]) -> str:
    """``staybook.intake.*`` for the partition queues, the queue's name for one."""
    if len(queues) == 1:
        return queues[0]
    return queues[0].rsplit(".", 1)[0] + ".*"


def _consumed(client: Any, queues: list[str], what: str, grace: float = 1.5) -> None:
    """End the command with one line (exit 1) when no node consumes ``queues``: what
    is published there would wait for a reply that no node is up to give.

    A node that just started takes its partitions after listening for its peers (two
    beats), so an empty answer is asked again for ``grace`` seconds.
    """
    import time

    deadline = time.monotonic() + grace
    while client.consumers(queues) == 0:
        if time.monotonic() >= deadline:
            typer.echo(f"staybook: no node is consuming {what}; start one (make serve)",
                       err=True)
            raise typer.Exit(1)
        client.pump(0.1)


@app.command()
def search(
    city: Annotated[str | None, typer.Option()] = None,
    start: Annotated[str | None, typer.Option(help="YYYY-MM-DD")] = None,
    end: Annotated[str | None, typer.Option(help="YYYY-MM-DD")] = None,
    guests: Annotated[int, typer.Option()] = 1,
    min_price: Annotated[int | None, typer.Option(help="cents per night")] = None,
    max_price: Annotated[int | None, typer.Option(help="cents per night")] = None,
    limit: Annotated[int, typer.Option()] = 20,
    after: Annotated[int | None, typer.Option(
        help="a CommandResult's position: wait until search includes that write")] = None,
    wait_ms: Annotated[int, typer.Option(help="how long search may wait for --after")] = 5000,
) -> None:
    """Search apartments by request/reply over RabbitMQ.

    With ``--after`` the reply says ``caught_up``: false when search had not applied
    that write within ``--wait-ms`` (the results may then miss it).
    """
    from pydantic import ValidationError

    from broker.client import NoReply, NotConfirmed
    from messages import Consumer, Envelope, SearchApartments

    settings = _settings()
    try:
        first, last = _day(start, "--start"), _day(end, "--end")
        if first and last and last <= first:
            raise ValueError(f"--end {last} is not after --start {first}")
        q = SearchApartments(city=city, guests=guests, min_price=min_price,
                             max_price=max_price, start=first, end=last, limit=limit,
                             after=after, wait_ms=wait_ms)
    except (ValueError, ValidationError) as exc:
        message = (exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc))
        typer.echo(f"staybook: {message}", err=True)
        raise typer.Exit(2) from None
    try:
        with _client(settings) as client:
            searches = client.topology.queue(Consumer.SEARCH)
            _consumed(client, [searches], searches)
            # the reply may wait wait_ms for the read model: give it that much longer
            timeout = 10.0 + (q.wait_ms / 1000 if q.after is not None else 0.0)
            reply = client.request(Envelope.new(q), timeout=timeout)
    except (NoReply, NotConfirmed) as exc:
        typer.echo(f"staybook: no answer to the search ({exc}); is a node running?",
                   err=True)
        raise typer.Exit(3) from None
    typer.echo(json.dumps(reply.payload.model_dump(mode="json"), indent=2))


@app.command()
def demo(local_broker: LocalOpt = True,
         database: Annotated[str, typer.Option(help="the demo node's store")] =
         f"sqlite:///{STATE_DIR}/demo.db",
         scenario: Annotated[str, typer.Option(
             help="booking (the talk's story) or lifecycle (cancellation, refund, "
                  "payment failure)")] = "booking") -> None:
    """Start a node (and a local RabbitMQ if none is configured) and tell the story."""
    from actors.notifier import notifications
    from console.demo import run_demo, run_lifecycle_demo
    from node import Node

    if scenario not in ("booking", "lifecycle"):
        raise typer.BadParameter("scenario is booking or lifecycle")
    settings = _settings()
    _logging("WARNING")
    STATE_DIR.mkdir(exist_ok=True)
    url = _broker_url(settings, local_broker)
    settings.broker.url = url
    if "STAYBOOK_DATABASE_URL" not in os.environ:
        settings.database_url = database
    _wait_for_broker(url)
    _topology_ready(settings, url)
    from broker.membership import NodeNameInUse, StoreMismatch
    from broker.rabbitmq import BrokerSetupError
    from console.demo import refusal

    node = Node(settings)
    try:
        node.start()
    except BrokerSetupError as exc:
        node.engine.dispose()
        typer.echo(f"staybook: {exc}", err=True)
        raise typer.Exit(1) from None
    except (NodeNameInUse, StoreMismatch) as exc:
        node.broker.close()
        node.engine.dispose()
        typer.echo(refusal(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"node {settings.node_name} up on {_redact(url)}, "
               f"store {_redact_store(settings.database_url)}")
    try:
        if scenario == "lifecycle":
            run_lifecycle_demo(url, node.topology)
        else:
            engine = node.engine
            run_demo(url, node.topology, notified=lambda who: [
                str(n["subject"]) for n in notifications(engine, who)])
    except AssertionError as exc:
        typer.echo(f"the demo went wrong: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        node.stop()


@app.command()
def catalog(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    asyncapi: Annotated[bool, typer.Option(
        "--asyncapi", help="The AsyncAPI 3.0 document (YAML), as in docs/asyncapi.yaml.")] = False,
    markdown: Annotated[bool, typer.Option(
        "--markdown", help="The README's table of messages, from that document.")] = False,
) -> None:
    """Print every message: kind, exchange, consumers, fields."""
    from messages.registry import catalog as rows

    if asyncapi or markdown:
        from broker.asyncapi import document, markdown_catalog, to_yaml
        doc = document(package_version("staybook"))
        typer.echo(to_yaml(doc) if asyncapi else markdown_catalog(doc), nl=False)
        return
    data = rows()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for r in data:
        props = r["schema"].get("properties", {})
        typer.echo(f"{r['type']} v{r['version']} ({r['kind']}) -> {r['exchange']} "
                   f"[{', '.join(r['consumers']) or '-'}]\n    {r['doc']}\n    fields: "
                   f"{', '.join(props)}")


@broker_app.command("start")
def broker_start() -> None:
    """Start the local development RabbitMQ (installing it if missing and permitted)."""
    from console.localbroker import BrokerUnavailable, start_local_broker
    try:
        typer.echo(start_local_broker(STATE_DIR / "rabbitmq"))
    except BrokerUnavailable as exc:
        typer.echo(f"staybook: {exc}", err=True)
        raise typer.Exit(2) from None


@broker_app.command("stop")
def broker_stop() -> None:
    """Stop the local development RabbitMQ."""
    from console.localbroker import stop_local_broker
    if stop_local_broker(STATE_DIR / "rabbitmq"):
        typer.echo("stopped the local RabbitMQ (staybook-dev@localhost)")
    else:
        typer.echo("no local RabbitMQ was running (staybook-dev@localhost): nothing to stop")


class ClusterAction(StrEnum):
    """What ``staybook broker cluster`` does."""

    START = "start"
    STOP = "stop"
    STATUS = "status"
    REBALANCE = "rebalance"


@broker_app.command("cluster")
def broker_cluster(action: Annotated[ClusterAction, typer.Argument(
        help="start (the default), stop, status (members, queue leaders and replicas), "
             "or rebalance (spread queue leaders over the nodes)")]
        = ClusterAction.START) -> None:
    """A 3-node RabbitMQ cluster on this machine (ports 5701-5703), for development.

    Every quorum queue declared once it runs has a replica on all three nodes.
    """
    from console.localbroker import BrokerUnavailable
    from console.localcluster import LocalCluster
    cluster = LocalCluster.dev(STATE_DIR / "cluster")
    try:
        if action is ClusterAction.STOP:
            stopped = cluster.stop()
            typer.echo("stopped the local cluster" if stopped
                       else "no node of the local cluster was running: nothing to stop")
            return
        if action is ClusterAction.START:
            typer.echo(f"starting a 3-node RabbitMQ cluster (data in {cluster.state_dir}) ...")
            cluster.start()
        if action is ClusterAction.REBALANCE and not cluster.rebalance():
            typer.echo("staybook: rebalancing failed; is the local cluster running? "
                       "(staybook broker cluster status)", err=True)
            raise typer.Exit(1)
        members = cluster.members()
        if not members:
            typer.echo("staybook: no node of the local cluster is running; start it with: "
                       "staybook broker cluster start", err=True)
            raise typer.Exit(2)
        typer.echo(f"running: {', '.join(members)}")
        for name, q in sorted(cluster.quorum_queues().items()):
            typer.echo(f"  {name}: leader {q.leader}, {len(q.members)} replicas")
        typer.echo(f"export STAYBOOK_BROKER__URL='{cluster.url}'")
        typer.echo(f"export STAYBOOK_BROKER__MANAGEMENT_URL='{cluster.management_url}'")
    except BrokerUnavailable as exc:
        typer.echo(f"staybook: {str(exc).splitlines()[0]}", err=True)
        raise typer.Exit(2) from None


@broker_app.command("teardown")
def broker_teardown(
    prefix: Annotated[str, typer.Option(help="the deployment's prefix (STAYBOOK_BROKER__PREFIX)")],
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Delete a prefix's queues (and their messages) and exchanges from the broker.

    Refused while a queue of the prefix has consumers (stop its nodes first). The
    broker is STAYBOOK_BROKER__URL's; the partition queues are those of
    STAYBOOK_BROKER__PARTITIONS.
    """
    import pika
    from pika.exceptions import AMQPError

    from broker.rabbitmq import connection_parameters, connection_problem
    from broker.teardown import remove, survey
    from broker.topology import topology_of
    from console.ctl_output import plural

    settings = _settings()
    settings.broker.prefix = prefix
    url = settings.broker.url

    def connect() -> pika.BlockingConnection:
        return pika.BlockingConnection(connection_parameters(url))

    try:
        found = survey(connect, topology_of(settings))
    except (AMQPError, OSError) as exc:
        typer.echo(f"staybook: cannot reach RabbitMQ at {_redact(url)} "
                   f"({connection_problem(exc)}); check STAYBOOK_BROKER__URL", err=True)
        raise typer.Exit(2) from None
    if not found.queues and not found.exchanges:
        typer.echo(f"nothing of {prefix} on {_redact(url)}: nothing to delete")
        return
    busy = found.in_use()
    if busy:
        typer.echo(f"staybook: {busy[0]}{f' and {len(busy) - 1} more' if len(busy) > 1 else ''}"
                   f" still consumed: stop the nodes of {prefix} first", err=True)
        raise typer.Exit(1)
    what = (f"{plural(len(found.queues), 'queue')} ({plural(found.messages, 'message')}) "
            f"and {plural(len(found.exchanges), 'exchange')} of {prefix} on {_redact(url)}")
    if not yes and not sys.stdin.isatty():
        typer.echo(f"staybook: deleting {what} asks first: pass --yes (there is no "
                   "terminal to ask on)", err=True)
        raise typer.Exit(1)
    if not yes and not typer.confirm(f"delete {what}?"):
        raise typer.Exit(1)
    try:
        errors = remove(connect, found)
    except (AMQPError, OSError) as exc:
        typer.echo(f"staybook: lost RabbitMQ at {_redact(url)} ({connection_problem(exc)});"
                   " run it again to delete the rest", err=True)
        raise typer.Exit(1) from None
    for line in errors:
        typer.echo(f"staybook: {line}", err=True)
    typer.echo(f"deleted {what}" if not errors else
               f"deleted {len(found.queues) + len(found.exchanges) - len(errors)} of "
               f"{len(found.queues) + len(found.exchanges)}")
    raise typer.Exit(1 if errors else 0)


# --- operator console: broker provisioning (broker/provision.py) ---------------------
def _password(role: str) -> str:
    env = f"STAYBOOK_PROVISION_{role.upper()}_PASSWORD"
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        typer.echo(f"staybook: no password for the {role} user: set {env} (there is no "
                   "terminal to ask on)", err=True)
        raise typer.Exit(2)
    return str(typer.prompt(f"password for the {role} user", hide_input=True))


@broker_app.command("provision")
def broker_provision(
    vhost: Annotated[str, typer.Option(help="the vhost to create")] = "staybook",
    node_user: Annotated[str, typer.Option()] = "staybook-node",
    operator_user: Annotated[str, typer.Option()] = "staybook-operator",
    producer_user: Annotated[str, typer.Option()] = "staybook-producer",
    ctl: Annotated[str | None, typer.Option(
        help="the rabbitmqctl to run (default: the first here that the node accepts: "
             "Debian's /usr/sbin/rabbitmqctl, or /usr/lib/rabbitmq/bin/rabbitmqctl with the "
             "node's HOME, hence its Erlang cookie)")] = None,
    definitions: Annotated[Path | None, typer.Option(
        help="write a definitions file instead (load: rabbitmqctl import_definitions FILE)")]
    = None,
    replicate: Annotated[bool, typer.Option(
        help="give every quorum queue a replica on each cluster node (rabbitmq-queues grow)")]
    = True,
) -> None:
    """Create the vhost, the node / operator / producer users and their permissions.

    On a cluster, also give every Staybook quorum queue a replica on each running node.
    Passwords come from STAYBOOK_PROVISION_{NODE,OPERATOR,PRODUCER}_PASSWORD or a prompt.
    The node is RABBITMQ_NODENAME's (default rabbit@<host>, Debian's service).
    """
    from broker.provision import Account, ProvisionError, apply, plan
    from broker.provision import definitions as make_definitions
    from console.rabbittools import ToolUnusable, ctl_for, default_node

    prefix = _settings().broker.prefix
    accounts = [Account(node_user, _password("node"), "node"),
                Account(operator_user, _password("operator"), "operator"),
                Account(producer_user, _password("producer"), "producer")]
    if definitions is not None:
        definitions.write_text(json.dumps(make_definitions(prefix, vhost, accounts), indent=2))
        definitions.chmod(0o600)
        typer.echo(f"wrote {definitions}; load it with: rabbitmqctl import_definitions "
                   f"{definitions}")
        return
    node = default_node()
    try:
        tool = ctl_for(node, ctl)
    except ToolUnusable as exc:
        typer.echo(f"staybook: {exc}", err=True)
        raise typer.Exit(1) from None
    if ctl is None:
        typer.echo(f"using {tool} for RabbitMQ node {node}")
    try:
        for line in apply(plan(prefix, vhost, accounts), _runner(tool, node)):
            typer.echo(line)
    except ProvisionError as exc:
        logging.getLogger(__name__).debug("provisioning failed", exc_info=True)
        typer.echo(f"staybook: {exc}", err=True)
        raise typer.Exit(1) from None
    if replicate:
        _replicate(prefix, vhost, tool, node)
    typer.echo(f"add {operator_user} to control.operators on every node")


def _runner(tool: Tool, node: str) -> Callable[..., str]:
    """``tool`` as a runner for broker.provision."""
    from broker.provision import rabbitmqctl
    return rabbitmqctl(str(tool.path), env=tool.env(), node=node)


def _replicate(prefix: str, vhost: str, tool: Tool, node: str) -> None:
    """Grow every Staybook quorum queue onto each running cluster node (a line each)."""
    import subprocess

    from broker.provision import cluster_nodes, replication_plan, tool_said
    try:
        nodes = cluster_nodes(_runner(tool, node))
    except (subprocess.CalledProcessError, OSError, ValueError) as exc:
        logging.getLogger(__name__).debug("cluster_status failed", exc_info=True)
        typer.echo(f"staybook: cannot read the cluster's members ({type(exc).__name__}); "
                   "run rabbitmqctl cluster_status to see why", err=True)
        raise typer.Exit(1) from None
    if len(nodes) < 2:
        typer.echo("one broker node: no replicas to add")
        return
    run = _runner(tool.sibling("rabbitmq-queues"), node)
    for step in replication_plan(prefix, vhost, nodes):
        try:
            run(*step)
        except (subprocess.CalledProcessError, OSError) as exc:
            logging.getLogger(__name__).debug("rabbitmq-queues grow failed", exc_info=True)
            said = tool_said(exc) if isinstance(exc, subprocess.CalledProcessError) else exc
            typer.echo(f"staybook: rabbitmq-queues grow {step[1]} failed ({said}); "
                       "run it again once that node is up", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"replicas of {prefix}.* on {step[1]}")
# --- end broker provisioning ---------------------------------------------------------


# --- the store's schema (store/db.py, store/migrations) ------------------------------
def _db_error(action: str, url: str, exc: BaseException) -> typer.Exit:
    """Say what failed on one stderr line (no traceback, no password); exit code 1."""
    from sqlalchemy.exc import DBAPIError

    from store.db import redact
    cause: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
    lines = str(cause).strip().splitlines()
    detail = lines[0] if lines else type(cause).__name__
    try:
        from sqlalchemy import make_url
        password = make_url(url).password
    except Exception:  # noqa: BLE001 - unparseable: redact() says so
        password = None
    if password:
        detail = detail.replace(str(password), "***")
    typer.echo(f"error: cannot {action} {redact(url)}: {detail}", err=True)
    return typer.Exit(1)


def _store_url() -> str:
    return _settings().database_url


def _existing_sqlite(url: str) -> None:
    """Refuse a SQLite file that is not there: connecting would create an empty one."""
    from sqlalchemy import make_url
    parsed = make_url(url)
    if (parsed.get_backend_name() == "sqlite" and parsed.database
            and parsed.database != ":memory:" and not Path(parsed.database).exists()):
        raise FileNotFoundError(f"no SQLite database at {parsed.database} (set "
                                "STAYBOOK_DATABASE_URL, or create it: staybook db upgrade)")


@config_app.command("defaults")
def config_defaults() -> None:
    """Print every setting at its default, with what it means, as TOML.

    A starting point for the file STAYBOOK_CONFIG names; deploy/staybook.toml is this
    output.
    """
    from config.document import defaults_toml

    typer.echo(defaults_toml(), nl=False)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the store to the newest schema (a node does this at start too); idempotent."""
    from store.db import current_revision, make_engine, redact, upgrade

    url = _store_url()
    try:
        engine = make_engine(url, migrate=False)
        try:
            before = current_revision(engine)
            after = upgrade(engine)
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - reported in one line
        raise _db_error("upgrade", url, exc) from None
    if before == after:
        typer.echo(f"{redact(url)}: already at {after}")
    else:
        typer.echo(f"{redact(url)}: upgraded from {before or 'none'} to {after}")


@db_app.command("current")
def db_current() -> None:
    """Print the store's schema revision, and whether it is the newest this code knows."""
    from store.db import current_revision, head_revision, known_revisions, make_engine, redact

    url = _store_url()
    try:
        _existing_sqlite(url)
        engine = make_engine(url, migrate=False)
        try:
            rev = current_revision(engine)
        finally:
            engine.dispose()
        head, known = head_revision(), known_revisions()
    except Exception as exc:  # noqa: BLE001 - reported in one line
        raise _db_error("read the revision of", url, exc) from None
    if rev == head:
        state = "head"
    elif rev is not None and rev not in known:
        state = f"unknown to this code, whose head is {head}"
    else:
        state = f"behind {head}: run staybook db upgrade"
    typer.echo(f"{redact(url)}: {rev or 'none (never migrated)'} ({state})")
# --- end store schema ----------------------------------------------------------------


def _topology(settings: Settings) -> Any:
    from broker.topology import topology_of
    return topology_of(settings)


def _trap_stop(then: Callable[[], None] | None = None) -> dict[str, Any]:
    """SIGINT and SIGTERM set ``["sig"]`` and ``["name"]`` (and call ``then``): a clean
    way out."""
    stop: dict[str, Any] = {"sig": False, "name": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["sig"] = True
        stop["name"] = signal.Signals(signum).name
        if then is not None:
            then()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def _wait_for_broker(url: str, timeout: float = 60.0) -> None:
    """Wait for RabbitMQ (a node may start before it); one line if it never answers,
    or at once if it answers with a refusal (a wrong password stays wrong)."""
    from broker.rabbitmq import LoginRefused, wait_for_broker

    try:
        try:
            wait_for_broker(url, timeout=1.0)
            return
        except TimeoutError:
            typer.echo(f"waiting up to {timeout:.0f}s for RabbitMQ at {_redact(url)} ...",
                       err=True)
        try:
            wait_for_broker(url, timeout=timeout)
        except TimeoutError:
            typer.echo(f"staybook: RabbitMQ at {_redact(url)} did not answer in "
                       f"{timeout:.0f}s; start one (staybook broker start) or set "
                       f"STAYBOOK_BROKER__URL", err=True)
            raise typer.Exit(2) from None
    except LoginRefused as exc:
        what = ("access refused", "vhost and that user's permissions on it") if exc.access \
            else ("login refused", "user and password")
        typer.echo(f"staybook: {what[0]} by RabbitMQ at {_redact(url)}; check "
                   f"STAYBOOK_BROKER__URL's {what[1]}", err=True)
        raise typer.Exit(2) from None


def _day(text: str | None, option: str) -> date | None:
    """A YYYY-MM-DD option, or a one-line complaint about it."""
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a date: use YYYY-MM-DD") from None


@contextlib.contextmanager
def _client(settings: Settings) -> Iterator[Any]:
    """A producer client, or one line saying the broker cannot be reached (exit 2)."""
    from pika.exceptions import AMQPError

    from broker.client import Client
    from broker.rabbitmq import connection_problem

    try:
        client = Client(settings.broker.url, _topology(settings))
    except (AMQPError, OSError) as exc:
        logging.getLogger(__name__).debug("connecting failed", exc_info=True)
        typer.echo(f"staybook: cannot reach RabbitMQ at {_redact(settings.broker.url)} "
                   f"({connection_problem(exc)}); start one (staybook broker start) or set "
                   f"STAYBOOK_BROKER__URL", err=True)
        raise typer.Exit(2) from None
    with client:
        yield client


def _redact_store(url: str) -> str:
    from store.db import redact

    return redact(url)


def _redact(url: str) -> str:
    from config import redact_url

    return redact_url(url)


def run(args: list[str] | None = None) -> int:
    """Run the CLI and return its exit status; a usage error is one line (status 2).

    Click prints a usage error as a boxed block; a user should read one line that
    names the mistake and where help is.
    """
    # Typer vendors click; its exceptions are what a non-standalone run raises.
    from typer import Abort
    from typer._click.exceptions import ClickException, UsageError

    try:
        rv: Any = app(args=args, prog_name="staybook", standalone_mode=False)
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "staybook"
        typer.echo(f"{where}: {exc.format_message()} (see {where} --help)", err=True)
        return 2
    except ClickException as exc:
        typer.echo(f"staybook: {exc.format_message()}", err=True)
        return int(exc.exit_code)
    except Abort:
        typer.echo("staybook: aborted", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
