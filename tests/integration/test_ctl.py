"""``staybook ctl`` against running nodes on a real RabbitMQ."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker
from prometheus_client import generate_latest
from typer.testing import CliRunner

from broker.client import Client
from console.cli import app
from console.control_client import ControlClient
from console.ctl_repair import message_id_for
from messages import (
    AcceptReservation,
    AddApartment,
    ApartmentAdded,
    CancelUnpaidReservation,
    CommandResult,
    DatesBooked,
    DatesReleased,
    Envelope,
    Party,
    PaymentFailed,
    RequestReservation,
    ReservationAccepted,
    ReservationCancelled,
    ReservationRequested,
)
from node import Node
from rules.apartment import Apartment, StayStatus, evolve
from rules.clock import pinned
from store import Commit
from supervisor import RefOf
from tests.conftest import TODAY, day, eventually, make_settings, unique
from tests.integration.conftest import _delete_prefix


def ctl(node: Node, *args: str, url: str | None = None, code: int = 0) -> str:
    """Run ``staybook ctl ARGS`` for ``node``'s deployment; its stdout."""
    r = CliRunner().invoke(app, ["ctl", "--url", url or node.settings.broker.url,
                                 "--wait", "0.5", *args],
                           env={"STAYBOOK_BROKER__PREFIX": node.settings.broker.prefix})
    assert r.exit_code == code, (r.exit_code, r.output)
    return r.stdout


def ctl_json(node: Node, *args: str) -> Any:
    return json.loads(ctl(node, *args, "--json"))


def eventually_value(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """The first truthy result of ``check`` (bounded; unlike conftest.eventually it returns it)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, "condition never held"
            return result
        time.sleep(0.1)


def add_apartment(client: Client, apt: str) -> dict[str, Any]:
    env = Envelope.new(AddApartment(owner_id="olga", city="Lisbon", title="Flat",
                                    price_per_night=9500,
                                    currency="EUR", capacity=2), apartment_id=apt)
    data: dict[str, Any] = client.request(env, timeout=20).payload.model_dump(mode="json")
    return data


def wait_control(node: Node) -> None:
    assert node.app.root is not None
    control: Any = node.app.root.ask(RefOf("control"), timeout=5)
    assert control.connected.wait(15)


def test_ctl_lists_nodes_tree_actors_and_inspects(node: Node, client: Client) -> None:
    wait_control(node)
    assert add_apartment(client, "apt-1")["status"] == "ok"
    nodes = ctl_json(node, "nodes")
    assert [n["node"] for n in nodes] == [node.settings.node_name]
    assert nodes[0]["live_actors"] == 1 and nodes[0]["commands"] == 1
    tree = ctl_json(node, "tree")[node.settings.node_name]
    assert [c["id"] for c in tree][-1] == "control"
    assert "└─ payment" in ctl(node, "tree")
    actors = ctl_json(node, "actors", "--sort", "handled", "--kind", "apartment")
    assert [(a["id"], a["handled"]) for a in actors] == [("apartment:apt-1", 1)]
    assert ctl_json(node, "actors", "--kind", "reservation") == []
    info = ctl_json(node, "inspect", "apartment:apt-1")
    assert info["state"]["city"] == "Lisbon" and info["version"] == 1
    assert "apartment:apt-1 on" in ctl(node, "inspect", "apartment:apt-1")
    groups = {t["thread"]: t for t in ctl_json(node, "threads")}
    assert groups["store-writer"]["threads"] == 1 and groups["consumers"]["threads"] == 1
    assert all(t["cpu_s"] >= 0 for t in groups.values())
    ctl(node, "inspect", "apartment:nowhere", code=1)


def test_crash_restart_and_stop_through_ctl(node: Node, client: Client) -> None:
    wait_control(node)
    assert add_apartment(client, "apt-2")["status"] == "ok"
    assert "crash requested" in ctl(node, "crash", "apartment:apt-2")

    def restarted() -> dict[str, Any] | None:
        info = ctl_json(node, "inspect", "apartment:apt-2")
        return info if info["restarts"] == 1 and info["status"] == "running" else None

    info = eventually_value(restarted)

    def restarted_again(info: dict[str, Any]) -> bool:
        return bool(info["restarts"] == 2 and info["status"] == "running")
    assert info["last_failure"]["type"] == "InjectedCrash"
    assert "InjectedCrash" in info["last_failure"]["traceback"]
    assert info["state"]["city"] == "Lisbon"  # back from the store
    ctl(node, "restart", "apartment:apt-2")
    eventually_value(lambda: restarted_again(ctl_json(node, "inspect", "apartment:apt-2")))
    assert "passivated" in ctl(node, "stop", "apartment:apt-2")
    assert ctl_json(node, "actors") == []
    assert ctl_json(node, "nodes")[0]["passivations"] == 1
    ctl(node, "stop", "apartment:apt-2", code=1)  # no longer live
    # A supervised service restarts through its supervisor's liveness check.
    ctl(node, "restart", "timers")
    eventually_value(lambda: _child(ctl_json(node, "tree")[node.settings.node_name],
                              "timers")["restarts"] == 1)
    # A permanent actor child crashes and comes back too.
    ctl(node, "crash", "payment")
    eventually_value(lambda: _child(ctl_json(node, "tree")[node.settings.node_name],
                              "payment")["restarts"] == 1)


def _child(tree: list[dict[str, Any]], cid: str) -> dict[str, Any]:
    for c in tree:
        if c["id"] == cid:
            return c
        with contextlib.suppress(KeyError):
            return _child(c.get("children", []), cid)
    raise KeyError(cid)


def test_queues_shows_depth_and_consumers(node: Node) -> None:
    def rows() -> dict[str, dict[str, Any]]:
        return {r["queue"]: r for r in ctl_json(node, "queues")}

    intake = node.topology.intake_queues()[0]
    # The consumers connect on their own threads, just after the node started.
    eventually_value(lambda: rows()[intake]["consumers"] == 1)
    now = rows()
    assert now[intake]["messages"] == 0
    # Every node records dead letters as they land: it consumes the queue.
    assert now[node.topology.dead_letter_queue]["consumers"] == 1


def test_one_console_sees_every_node(node_factory: Callable[..., Node]) -> None:
    a = node_factory(node_name="node-a")
    b = node_factory(node_name="node-b")
    wait_control(a)
    wait_control(b)
    assert [n["node"] for n in ctl_json(a, "nodes")] == ["node-a", "node-b"]
    # Each partition: one node, one consumer; the two nodes share them evenly.
    def parts() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = ctl_json(a, "partitions")
        ok = all(r["consumers"] == 1 and r["node"] in {"node-a", "node-b"} for r in rows)
        return rows if ok and {r["node"] for r in rows} == {"node-a", "node-b"} else []
    rows = eventually_value(parts, timeout=30)
    assert len(rows) == a.topology.partitions
    per = [sum(r["node"] == n for r in rows) for n in ("node-a", "node-b")]
    assert per == [a.topology.partitions // 2] * 2
    assert "PARTITIONS" in ctl(a, "nodes")
    only_b = json.loads(ctl(a, "--node", "node-b", "nodes", "--json"))
    assert [n["node"] for n in only_b] == ["node-b"]
    # payment runs on both: an action on it must name the node
    ctl(a, "crash", "payment", code=1)


def test_a_non_operator_cannot_restart_an_actor(node: Node, client: Client,
                                                rabbitmq_proc: Any, amqp_url: str) -> None:
    wait_control(node)
    assert add_apartment(client, "apt-3")["status"] == "ok"
    user = unique("intruder-")
    rabbitmq_proc.rabbitctl_output("add_user", user, "pw")
    # Full broker rights: only the node's operator check stands in the way.
    rabbitmq_proc.rabbitctl_output("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    try:
        url = amqp_url.replace("guest:guest", f"{user}:pw")
        with ControlClient(url, node.topology) as c:
            replies = c.request("restart", {"id": "apartment:apt-3"}, wait=1.0)
        assert [(r["ok"], r["error"]) for r in replies] == [
            (False, f"forbidden: {user} is not an operator")]
        ctl(node, "restart", "apartment:apt-3", url=url, code=1)
        # A forged user_id is refused by the broker itself.
        conn = pika.BlockingConnection(pika.URLParameters(url))
        try:
            ch = conn.channel()
            ch.basic_publish(f"{node.settings.broker.prefix}.control", "all", b"{}",
                             pika.BasicProperties(user_id="guest", reply_to="x"))
            with pytest.raises(ChannelClosedByBroker):
                ch.queue_declare("", exclusive=True)  # a round trip surfaces the close
        finally:
            if conn.is_open:
                conn.close()
    finally:
        rabbitmq_proc.rabbitctl_output("delete_user", user)
    assert ctl_json(node, "inspect", "apartment:apt-3")["restarts"] == 0


def test_metrics_count_commands_and_gauges(node_factory: Callable[..., Node],
                                           amqp_url: str) -> None:
    import socket
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = node_factory(metrics={"port": port})
    with Client(amqp_url, node.topology) as c:
        assert add_apartment(c, "apt-m")["status"] == "ok"
        assert add_apartment(c, "apt-m")["status"] == "rejected"
    text = generate_latest(node.metrics.registry).decode()
    assert 'staybook_commands_total{outcome="ok",type="AddApartment"} 1.0' in text
    assert 'staybook_commands_total{outcome="rejected",type="AddApartment"} 1.0' in text
    assert "staybook_live_actors 1.0" in text
    assert 'staybook_command_latency_seconds_count{type="AddApartment"} 2.0' in text
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert "staybook_activations_total 1.0" in r.read().decode()


@pytest.fixture
def flaky(amqp_url: str, tmp_path: Path) -> Iterator[tuple[Node, threading.Event]]:
    """A node whose AddApartment handler is broken until the event is cleared."""
    broken = threading.Event()
    broken.set()

    def inject(_eid: str, env: Envelope) -> None:
        if broken.is_set() and env.type == "AddApartment":
            raise RuntimeError("a bug, fixed later")

    settings = make_settings(tmp_path, supervision={"poison_retries": 0})
    settings.broker.url = amqp_url
    settings.broker.prefix = unique("t")
    node = Node(settings, clock=pinned(TODAY), inject=inject)
    node.start()
    try:
        yield node, broken
    finally:
        node.stop()
        _delete_prefix(amqp_url, [node])


def test_dlq_replay_of_a_fixed_message_is_handled(flaky: tuple[Node, threading.Event],
                                                  amqp_url: str) -> None:
    node, broken = flaky
    with Client(amqp_url, node.topology) as c:
        reply = add_apartment(c, "apt-9")
    assert (reply["status"], reply["reason"]) == ("error", "poison")
    letters = eventually_value(lambda: ctl_json(node, "dlq", "list"))
    assert len(letters) == 1
    letter = letters[0]
    assert (letter["reason"], letter["type"], letter["status"]) == (
        "poison", "AddApartment", "dead")
    assert letter["queue"] in node.topology.intake_queues()  # apt-9's partition
    shown = ctl_json(node, "dlq", "show", str(letter["id"]))
    assert "RuntimeError" in shown["detail"] and '"apt-9"' in shown["body"]
    assert ctl_json(node, "dlq", "show", shown["message_id"]) == shown  # by message id
    assert ctl_json(node, "dlq", "list") == letters  # browsing changes nothing
    # Replayed while still broken: it dies again, a new letter marked as a replay.
    assert "replayed to" in ctl(node, "dlq", "replay", "--all")
    again = eventually_value(lambda: [x for x in ctl_json(node, "dlq", "list")
                                      if x["id"] != letter["id"]])
    assert [x["id"] for x in ctl_json(node, "dlq", "list")] == [again[0]["id"]]
    second = ctl_json(node, "dlq", "show", str(again[0]["id"]))
    assert second["headers"]["x-staybook-replayed"] == 1 and second["replays"] == 0
    assert "already replayed" in ctl(node, "dlq", "replay", str(letter["id"]), code=1)
    broken.clear()  # the fix is deployed
    assert "replayed to" in ctl(node, "dlq", "replay", str(again[0]["id"]))
    eventually_value(lambda: len(node.store.load("apartment:apt-9")) == 1)
    assert ctl_json(node, "dlq", "list") == []
    kept = ctl_json(node, "dlq", "list", "--all")  # the replayed ones stay on record
    assert [(x["id"], x["status"], x["replays"]) for x in kept] == [
        (letter["id"], "replayed", 1), (again[0]["id"], "replayed", 1)]
    ctl(node, "dlq", "replay", "999999", code=1)  # no such letter


def test_a_hundred_browses_change_nothing(node: Node, amqp_url: str) -> None:
    """Listing reads the store: no letter is redelivered, recounted or reordered."""
    wait_control(node)
    with Client(amqp_url, node.topology) as c:
        for i, body in enumerate((b"not json", b"[]", b'{"type": "Nope"}')):
            c.publish_raw(node.topology.commands_exchange, "x", body, message_id=f"bad-{i}")
    first = eventually_value(lambda: (rows := ctl_json(node, "dlq", "list"))
                             and len(rows) == 3 and rows)
    shown = [ctl_json(node, "dlq", "show", str(x["id"])) for x in first]
    assert [x["message_id"] for x in first] == ["bad-0", "bad-1", "bad-2"]
    for _ in range(100):
        assert ctl_json(node, "dlq", "list") == first
    assert [ctl_json(node, "dlq", "show", str(x["id"])) for x in first] == shown
    assert all("x-delivery-count" not in s["headers"] or s["headers"]["x-delivery-count"]
               == shown[0]["headers"].get("x-delivery-count") for s in shown)
    depth = {r["queue"]: r for r in ctl_json(node, "queues")}[node.topology.dead_letter_queue]
    assert depth["messages"] == 0  # recorded and acked: nothing waits to be redelivered
    assert node.recorder.recorded == 3 and node.recorder.duplicates == 0


def test_dlq_purge(node: Node, amqp_url: str) -> None:
    with Client(amqp_url, node.topology) as c:
        c.publish_raw(node.topology.commands_exchange, "x", b"not json", message_id="bad-1")
    eventually_value(lambda: ctl_json(node, "dlq", "list"))
    ctl(node, "dlq", "purge", code=1)  # asks, and the runner answers nothing
    assert "purged 1" in ctl(node, "dlq", "purge", "--yes")
    assert ctl_json(node, "dlq", "list") == []


def test_provisioned_roles_run_a_node_and_keep_producers_off_control_and_events(
        rabbitmq_proc: Any, amqp_url: str, tmp_path: Path) -> None:
    from broker.provision import Account, apply, plan
    from console.tui import ConsoleApp, LiveSource, screen_text

    tag = unique("")
    prefix = unique("t")
    nd, op, prod = (Account(f"nd-{tag}", "nd-pw", "node"),
                    Account(f"op-{tag}", "op-pw", "operator"),
                    Account(f"pr-{tag}", "pr-pw", "producer"))
    apply(plan(prefix, "/", [nd, op, prod], create_vhost=False),
          rabbitmq_proc.rabbitctl_output)
    settings = make_settings(tmp_path, control={"operators": [op.user]})
    settings.broker.url = amqp_url.replace("guest:guest", f"{nd.user}:nd-pw")
    settings.broker.prefix = prefix
    node = Node(settings, clock=pinned(TODAY))  # runs as the provisioned node user
    node.start()
    wait_control(node)
    try:
        prod_url = amqp_url.replace("guest:guest", f"{prod.user}:pr-pw")
        op_url = amqp_url.replace("guest:guest", f"{op.user}:op-pw")
        with Client(prod_url, node.topology) as c:  # producers may send commands
            # ... and may ask whether a node reads them (passive declares)
            eventually_value(lambda: c.consumers(node.topology.intake_queues()) >= 1)
            assert add_apartment(c, "apt-p")["status"] == "ok"
        for exchange in (f"{prefix}.control", node.topology.exchange("events.apartment")):
            conn = pika.BlockingConnection(pika.URLParameters(prod_url))
            try:
                ch = conn.channel()
                ch.basic_publish(exchange, "all", b"{}")
                with pytest.raises(ChannelClosedByBroker) as refused:
                    ch.queue_declare("", passive=False, exclusive=True)
                assert refused.value.reply_code in (403, 404)
            finally:
                if conn.is_open:
                    conn.close()
        # The operator sees the node, the queues and the dead letters...
        assert [n["node"] for n in json.loads(ctl(node, "nodes", "--json", url=op_url))] == [
            node.settings.node_name]
        assert json.loads(ctl(node, "queues", "--json", url=op_url))[0]["consumers"] == 1
        assert json.loads(ctl(node, "dlq", "list", "--json", url=op_url)) == []
        # ... and drives the live view: crash the apartment with c, y.
        source = LiveSource(op_url, node.topology, wait=0.5)

        async def drill() -> str:
            app = ConsoleApp(source, refresh=0)
            async with app.run_test(size=(132, 40)) as pilot:
                await app.workers.wait_for_complete()
                await pilot.pause()
                await pilot.press("c", "y")
                await app.workers.wait_for_complete()
                await pilot.pause()
                return screen_text(app) + app.status_line

        import asyncio
        try:
            text = asyncio.run(drill())
        finally:
            source.close()
        assert "apartment:apt-p: crash requested" in text and node.settings.node_name in text
        eventually_value(lambda: json.loads(ctl(node, "inspect", "apartment:apt-p", "--json",
                                          url=op_url))["restarts"] == 1)
        # The node user's events reached the search handler (events exchange, queue).
        # The node user published the events (relay) and the handlers consumed them.
        eventually_value(lambda: node.relay.published >= 1 and node.relay.backlog() == 0)
        eventually_value(lambda: node.counters.events_handled >= 1)
    finally:
        node.stop()
        _delete_prefix(amqp_url, [node])
        for a in (nd, op, prod):
            rabbitmq_proc.rabbitctl_output("delete_user", a.user)


def test_a_definitions_file_loads_and_its_passwords_work(rabbitmq_proc: Any, amqp_url: str,
                                                          tmp_path: Path) -> None:
    from broker.provision import Account, definitions

    user = unique("def-")
    prefix = unique("t")
    path = tmp_path / "definitions.json"
    path.write_text(json.dumps(definitions(prefix, "/", [Account(user, "s3cret", "producer")])))
    rabbitmq_proc.rabbitctl_output("import_definitions", str(path))
    try:
        conn = pika.BlockingConnection(pika.URLParameters(
            amqp_url.replace("guest:guest", f"{user}:s3cret")))
        try:
            ch = conn.channel()
            with pytest.raises(ChannelClosedByBroker) as refused:
                ch.exchange_declare(f"{prefix}.control", exchange_type="topic")
            assert refused.value.reply_code == 403  # a producer configures nothing
        finally:
            if conn.is_open:
                conn.close()
    finally:
        rabbitmq_proc.rabbitctl_output("delete_user", user)


def test_an_entity_live_nowhere_is_inspected_from_the_store_with_its_history(
        node: Node, client: Client) -> None:
    wait_control(node)
    assert add_apartment(client, "apt-h")["status"] == "ok"
    eventually_value(lambda: node.directory.ref("apartment:apt-h") is not None)
    eventually_value(lambda: node.directory.passivate("apartment:apt-h"))
    assert node.directory.ref("apartment:apt-h") is None  # live on no node now
    shown = ctl_json(node, "inspect", "apt-h")  # no kind: the apartment is found
    assert (shown["id"], shown["live"], shown["version"]) == ("apartment:apt-h", False, 1)
    assert shown["state"]["owner_id"] == "olga" and shown["state"]["listed"] is True
    assert "not live" not in ctl(node, "inspect", "apt-h")
    past = ctl_json(node, "history", "apt-h")
    assert past["id"] == "apartment:apt-h"
    assert [e["type"] for e in past["events"]] == ["ApartmentAdded"]
    assert "ApartmentAdded" in ctl(node, "history", "apartment:apt-h")
    missing = ctl(node, "inspect", "no-such-apt", code=1)
    assert missing == ""  # the one line goes to stderr


def test_an_entity_action_finds_the_one_node_it_is_live_on(
        node_factory: Callable[..., Node], amqp_url: str) -> None:
    """Every node can read an entity from the store; only the live one is acted on."""
    a = node_factory(node_name="node-a")
    b = node_factory(node_name="node-b")
    wait_control(a)
    wait_control(b)
    # Once the partitions are split: a node gives a partition's actors up with it.
    assert a.partitions is not None and b.partitions is not None
    every = list(range(a.topology.partitions))

    def split() -> bool:
        held_a, held_b = a.partitions.held(), b.partitions.held()  # type: ignore[union-attr]
        return bool(held_a) and bool(held_b) and sorted([*held_a, *held_b]) == every

    eventually(split, timeout=30)
    with Client(amqp_url, a.topology) as c:
        assert add_apartment(c, "apt-r")["status"] == "ok"
    assert "restarting" in ctl(a, "restart", "apartment:apt-r")  # no --node needed


def test_the_tree_lists_live_entities_and_inspect_carries_failure_and_events(
        node: Node, client: Client) -> None:
    """The console's tree and drill-down: entities under ``entities`` (bounded), one
    inspect with the last failure, mailbox and recent events, and consumer counts."""
    wait_control(node)
    name = node.settings.node_name
    for apt in ("apt-e1", "apt-e2", "apt-e3"):
        assert add_apartment(client, apt)["status"] == "ok"
    ctl(node, "crash", "apartment:apt-e2")
    eventually_value(lambda: ctl_json(node, "inspect", "apartment:apt-e2")["restarts"] == 1)
    with ControlClient(node.settings.broker.url, node.topology) as cc:
        def ask(op: str, args: dict[str, Any]) -> Any:
            (reply,) = cc.request(op, args, node=name, wait=2.0)
            assert reply["ok"], reply
            return reply["result"]

        entities = _child(ask("tree", {"entities": 2}), "entities")
        # The one that crashed comes first; the third is counted, not listed.
        assert [c["id"] for c in entities["children"]] == ["apartment:apt-e2",
                                                          "apartment:apt-e1"]
        assert entities["more"] == 1
        assert "traceback" not in entities["children"][0]["last_failure"]
        # Listed under entities, an entity's restart is still counted once.
        assert ask("status", {})["restarts"] == 1
        info = ask("inspect", {"id": "apartment:apt-e2", "events": 5})
        assert (info["live"], info["mailbox"], info["last_failure"]["type"]) == (
            True, 0, "InjectedCrash")
        assert [e["type"] for e in info["events"]] == ["ApartmentAdded"]
        assert "events" not in ask("inspect", {"id": "apartment:apt-e2"})
        # Passivated, it is folded from the store and keeps what this node remembers.
        eventually_value(lambda: node.directory.passivate("apartment:apt-e2"))
        gone = ask("inspect", {"id": "apartment:apt-e2", "events": 5})
        assert (gone["live"], gone["restarts"], gone["last_failure"]["type"]) == (
            False, 1, "InjectedCrash")
        assert len(gone["events"]) == 1

        def intake() -> dict[str, Any] | None:
            rows = [r for r in ask("queues", {}) if r["queue"] in node.topology.intake_queues()]
            acked = sum(r["acked"] for r in rows)
            return {"acked": acked, "unacked": sum(r["unacked"] for r in rows)} \
                if acked >= 3 else None
        # Three commands taken off the intake for good, none held any more.
        assert eventually_value(intake) == {"acked": 3, "unacked": 0}
    text = ctl(node, "tree")  # 20 by default: both live ones, and nothing more
    assert "└─ apartment:apt-e1 (apartment, transient) running" in text
    assert "apartment:apt-e2" not in text and "more" not in text


def test_the_live_view_lists_entities_drills_down_and_shows_queue_flow(
        node: Node, client: Client) -> None:
    import asyncio

    from console.tui import ConsoleApp, LiveSource, screen_text

    wait_control(node)
    name = node.settings.node_name
    intake = set(node.topology.intake_queues())
    for apt in ("apt-v1", "apt-v2"):
        assert add_apartment(client, apt)["status"] == "ok"
    source = LiveSource(node.settings.broker.url, node.topology, wait=0.5)
    try:
        first = source.snapshot("mailbox", 20)
        assert first.error is None
        entities = _child(first.trees[name], "entities")
        assert {c["id"] for c in entities["children"]} == {"apartment:apt-v1",
                                                           "apartment:apt-v2"}
        assert all(isinstance(q["unacked"], int) for q in first.queues if q["queue"] in intake)
        assert add_apartment(client, "apt-v3")["status"] == "ok"
        # It arrived between the two samples (queued, held or acked by now: in either way).
        rows = [q for q in source.snapshot("mailbox", 20).queues if q["queue"] in intake]
        assert sum(q["in_per_s"] or 0 for q in rows) > 0
        outs = [sum(q["out_per_s"] or 0 for q in rows)]
        while outs[-1] == 0 and len(outs) < 20:  # its ack may come just after the reply
            outs.append(sum(q["out_per_s"] or 0 for q in source.snapshot("mailbox", 20).queues
                            if q["queue"] in intake))
        assert outs[-1] > 0
        info = source.detail("apartment:apt-v1", name)
        assert info["live"] and [e["type"] for e in info["events"]] == ["ApartmentAdded"]
        assert "no such actor" in source.detail("apartment:nowhere", name)["error"]

        async def view() -> str:
            app = ConsoleApp(source, refresh=0)
            async with app.run_test(size=(132, 40)) as pilot:
                for _ in range(100):  # the drill-down is fetched after the first refresh
                    await app.workers.wait_for_complete()
                    await pilot.pause(0.05)
                    if app.detail is not None:
                        break
                return screen_text(app)

        text = asyncio.run(view())
    finally:
        source.close()
    assert f"apartment:apt-v1 on {name}" in text  # the table's first row, drilled down
    assert "last failure: none" in text and "ApartmentAdded" in text
    assert "├── apartment:apt-v2 [apartment] running" in text


def test_a_wrong_password_is_one_line_that_never_shows_it(node: Node, amqp_url: str) -> None:
    bad = amqp_url.replace("guest:guest", "guest:not-the-pw")
    for args in (["ctl", "--url", bad, "nodes"], ["ctl", "--url", bad, "dlq", "list"],
                 ["console", "--url", bad]):
        r = CliRunner().invoke(app, args,
                               env={"STAYBOOK_BROKER__PREFIX": node.settings.broker.prefix})
        assert r.exit_code in (1, 2), (args, r.output)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and "login refused: check the user and password" in lines[0], (
            args, r.stderr)
        assert "guest:***@" in lines[0] and "not-the-pw" not in r.output


# --- ctl repair: reservations left booked after their payment failed ------------------
def _commit(node: Node, stream: str, expected: int, events: list[Any], apt: str) -> None:
    """Append to ``stream`` directly, unpublished: the store as an old release left it."""
    envs = [Envelope.new(e, apartment_id=apt) for e in events]
    node.writer.submit(Commit(stream_id=stream, expected_version=expected, events=envs,
                              publish=False))
    node.writer.barrier()


def _booked(rid: str, start: int, end: int) -> list[Any]:
    """A request for nights [day(start), day(end)) of apt-x, accepted and booked."""
    return [
        ReservationRequested(reservation_id=rid, guest_id="gina", owner_id="olga",
                             start=day(start), end=day(end), guests=1,
                             total_price=9500 * (end - start), card_token="tok_decline",
                             card_last4="0002"),
        ReservationAccepted(reservation_id=rid, guest_id="gina", owner_id="olga",
                            start=day(start), end=day(end), total_price=9500 * (end - start),
                            card_token="tok_decline", card_last4="0002"),
        DatesBooked(reservation_id=rid, start=day(start), end=day(end)),
    ]


def _declined(rid: str, amount: int) -> PaymentFailed:
    return PaymentFailed(reservation_id=rid, guest_id="gina", amount=amount,
                         reason="card_declined")


def test_repair_finds_a_declined_stay_still_booked_and_releases_it_once(
        node: Node, amqp_url: str) -> None:
    """The state a stale actor left: res-stuck's card was declined, yet its nights are
    booked. res-done was declined too, but its apartment released it: not listed."""
    wait_control(node)
    apt = "apt-x"
    added = ApartmentAdded(owner_id="olga", city="Lisbon", title="Flat", price_per_night=9500,
                           currency="EUR", capacity=2)
    released = [ReservationCancelled(
        reservation_id="res-done", guest_id="gina", owner_id="olga", cancelled_by=Party.SYSTEM,
        reason="payment_failed", start=day(10), end=day(12), total_price=19000,
        refund_amount=0, card_last4="0002"),
        DatesReleased(reservation_id="res-done", start=day(10), end=day(12))]
    _commit(node, f"apartment:{apt}", 0,
            [added, *_booked("res-stuck", 3, 6), *_booked("res-done", 10, 12), *released], apt)
    _commit(node, "payment:res-stuck", 0, [_declined("res-stuck", 28500)], apt)
    _commit(node, "payment:res-done", 0, [_declined("res-done", 19000)], apt)

    found = json.loads(ctl(node, "repair", "--check", "--json", code=3))
    assert found == {"capped": False, "scanned": 2, "found": [{
        "reservation_id": "res-stuck", "apartment_id": apt, "guest_id": "gina",
        "start": day(3).isoformat(), "end": day(6).isoformat(), "amount": 28500,
        "currency": "EUR", "reason": "card_declined"}]}
    text = ctl(node, "repair", "--check", code=3).splitlines()
    assert text[0].split() == ["RESERVATION_ID", "APARTMENT_ID", "GUEST_ID", "START", "END",
                               "AMOUNT", "CURRENCY", "REASON"]
    assert text[1].split() == ["res-stuck", apt, "gina", day(3).isoformat(),
                               day(6).isoformat(), "28500", "EUR", "card_declined"]
    assert text[2].startswith("1 reservation holds nights after a failed payment "
                              "(2 failed payments examined)")

    out = ctl(node, "repair", "--apply").splitlines()
    assert out == [f"res-stuck on {apt}: ok: ReservationCancelled, DatesReleased",
                   "repaired 1 of 1 (examined 2 failed payments)"]
    state, events = _apartment(node, apt)
    assert state.stays["res-stuck"].status is StayStatus.CANCELLED
    assert not list(state.booked_dates.overlapping(day(0), day(30)))
    cancelled = events[-2].payload
    assert isinstance(cancelled, ReservationCancelled)
    assert (cancelled.reason, cancelled.cancelled_by) == ("payment_failed", Party.SYSTEM)

    assert "no reservation holds nights" in ctl(node, "repair", "--check")
    again = json.loads(ctl(node, "repair", "--apply", "--json"))
    assert (again["found"], again["outcomes"]) == ([], [])
    # The same repair sent again is answered from the apartment's inbox: no new event.
    mid = message_id_for("res-stuck")
    env = Envelope.new(CancelUnpaidReservation(reservation_id="res-stuck",
                                               reason="card_declined"),
                       apartment_id=apt, correlation_id=mid).model_copy(
        update={"message_id": mid})
    with Client(amqp_url, node.topology) as c:
        reply = c.request(env, timeout=20).payload
    assert isinstance(reply, CommandResult) and reply.status.value == "ok"
    assert [e["type"] for e in reply.events] == ["ReservationCancelled", "DatesReleased"]
    assert len(_apartment(node, apt)[1]) == len(events)


def _apartment(node: Node, apt: str) -> tuple[Apartment, list[Envelope]]:
    events = node.store.load(f"apartment:{apt}")
    state = Apartment(apartment_id=apt)
    for e in events:
        state = evolve(state, e.payload)
    return state, events


def test_repair_pages_and_caps_what_it_lists(node: Node) -> None:
    wait_control(node)
    apt = "apt-y"
    added = ApartmentAdded(owner_id="olga", city="Lisbon", title="Flat", price_per_night=9500,
                           currency="EUR", capacity=2)
    stays = [e for i in range(3) for e in _booked(f"res-{i}", 2 * i + 1, 2 * i + 2)]
    _commit(node, f"apartment:{apt}", 0, [added, *stays], apt)
    for i in range(3):
        _commit(node, f"payment:res-{i}", 0, [_declined(f"res-{i}", 9500)], apt)
    capped = json.loads(ctl(node, "repair", "--check", "--limit", "2", "--json", code=3))
    assert [r["reservation_id"] for r in capped["found"]] == ["res-0", "res-1"]
    assert capped["capped"] is True
    assert "showing the first 2, more exist" in ctl(node, "repair", "--check", "--limit", "2",
                                                    code=3)
    whole = json.loads(ctl(node, "repair", "--check", "--limit", "3", "--json", code=3))
    assert ([r["reservation_id"] for r in whole["found"]], whole["capped"]) == (
        ["res-0", "res-1", "res-2"], False)


def test_repair_with_no_node_is_one_line(node: Node) -> None:
    wait_control(node)
    node.stop()
    for mode in ("--check", "--apply"):
        r = CliRunner().invoke(app, ["ctl", "--url", node.settings.broker.url, "--wait", "0.5",
                                     "repair", mode],
                               env={"STAYBOOK_BROKER__PREFIX": node.settings.broker.prefix})
        assert r.exit_code == 1, r.output
        assert r.stderr.splitlines() == [
            f"error: no node is consuming {node.topology.control_exchange}; start one "
            "(make serve)"], r.stderr
        assert r.stdout == ""


def test_inspect_shows_stays_by_their_dates_and_history_counts_its_events(
        node: Node, client: Client) -> None:
    """Not the indexes an apartment keeps (day numbers in chunks): its calendar."""
    wait_control(node)

    def send(payload: Any) -> str:
        env = Envelope.new(payload, apartment_id="apt-d")
        return str(client.request(env, timeout=20).payload.model_dump()["status"])

    assert add_apartment(client, "apt-d")["status"] == "ok"
    assert ctl(node, "history", "apt-d").splitlines()[0] == "apartment:apt-d: 1 event"
    assert send(RequestReservation(reservation_id="r-d1", guest_id="gina", start=day(10),
                                   end=day(12), guests=2)) == "ok"
    assert send(AcceptReservation(reservation_id="r-d1", owner_id="olga")) == "ok"
    assert send(RequestReservation(reservation_id="r-d2", guest_id="hugo", start=day(20),
                                   end=day(21))) == "ok"
    state = ctl_json(node, "inspect", "apartment:apt-d")["state"]
    assert [(s["reservation_id"], s["status"], s["start"], s["end"], s["nights"])
            for s in state["stays"]] == [
        ("r-d1", "accepted", day(10).isoformat(), day(12).isoformat(), 2),
        ("r-d2", "pending", day(20).isoformat(), day(21).isoformat(), 1)]
    assert not {"booked_dates", "pending_dates", "blocked_dates", "pending"} & set(state)
    text = ctl(node, "inspect", "apartment:apt-d")
    assert "chunks" not in text and "741" not in text  # no day numbers
    assert f"{day(10)} to {day(12)} (2 nights)  accepted  r-d1  guest gina, 2 guests" in text
    assert f"{day(20)} to {day(21)} (1 night)  pending" in text
    history = ctl(node, "history", "apt-d", "--limit", "2").splitlines()
    assert history[0] == ("apartment:apt-d: 5 events (the last 2 shown; --full for "
                          "more)"), history
    full = ctl(node, "history", "apt-d", "--full").splitlines()
    assert full[0] == "apartment:apt-d: 5 events"
    requested = full.index(next(line for line in full if "ReservationRequested" in line))
    assert "message " in full[requested]
    payload = json.loads(full[requested + 1])  # whole, uncut
    assert payload["reservation_id"] == "r-d1" and payload["card_last4"] is not None
