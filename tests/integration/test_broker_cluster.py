"""Staybook on a 3-node RabbitMQ cluster: every quorum queue has a replica on each node,
and losing the node that leads most of them loses nothing.

The cluster is real (three ``rabbitmq-server`` processes joined with
``rabbitmqctl join_cluster``) and the fault is a SIGKILL of a broker node.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from broker.client import Client
from broker.rabbitmq import RabbitBroker
from console.cli import app
from console.localbroker import CTL, QUEUES_CTL
from console.localcluster import LocalCluster
from messages import AddApartment, Envelope, SearchApartments
from node import Node
from store.tables import events_table
from tests.conftest import eventually, unique
from tests.integration.conftest import nodes_on


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster.private(tmp_path_factory.mktemp("cluster"), "t-cluster")
    try:
        c.start()
        yield c
    finally:
        c.kill()


@pytest.fixture
def on_cluster(cluster: LocalCluster, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Nodes on the whole cluster (its URL list), with a prefix of their own."""
    with nodes_on(cluster.url, tmp_path, reconnect_max_delay=1.0) as make:
        yield make


def _mine(cluster: LocalCluster, prefix: str) -> dict[str, Any]:
    return {name: q for name, q in cluster.quorum_queues().items()
            if name.startswith(f"{prefix}.")}


def test_every_quorum_queue_has_a_replica_on_every_node(
        cluster: LocalCluster, on_cluster: Callable[..., Node]) -> None:
    node = on_cluster()
    members = sorted(n.node_name for n in cluster.nodes)
    assert cluster.members() == members
    queues = _mine(cluster, node.topology.prefix)
    assert set(queues) == {q.name for q in node.topology.queues()}
    assert {name: q.members for name, q in queues.items()} == {
        name: members for name in queues}


def test_ctl_queues_shows_each_queues_leader_and_replicas(
        cluster: LocalCluster, on_cluster: Callable[..., Node]) -> None:
    node = on_cluster()
    env = {"STAYBOOK_BROKER__PREFIX": node.topology.prefix,
           "STAYBOOK_BROKER__MANAGEMENT_URL": cluster.management_url}
    r = CliRunner().invoke(app, ["ctl", "--url", cluster.url, "queues", "--json"], env=env)
    assert r.exit_code == 0, r.output
    rows = {row["queue"]: row for row in json.loads(r.stdout)}
    names = sorted(n.node_name for n in cluster.nodes)
    assert set(rows) == {q.name for q in node.topology.queues()}
    for row in rows.values():
        assert (row["members"], row["online"], row["replicas"]) == (names, names, "3/3")
        assert row["leader"] in names
    # A management URL that answers nowhere: one line saying what to check.
    env["STAYBOOK_BROKER__MANAGEMENT_URL"] = "http://guest:s3cret@127.0.0.1:9"
    r = CliRunner().invoke(app, ["ctl", "--url", cluster.url, "queues"], env=env)
    assert r.exit_code == 1
    assert "STAYBOOK_BROKER__MANAGEMENT_URL" in r.output and "s3cret" not in r.output


def test_provision_gives_every_queue_a_replica_on_each_node(
        cluster: LocalCluster, on_cluster: Callable[..., Node]) -> None:
    node = on_cluster()
    prefix, third = node.topology.prefix, cluster.nodes[2].node_name
    # As if the third node joined after the declare (every queue of the cluster loses
    # its replica there; provision gives this deployment's back).
    assert cluster.seed.ctl("shrink", third, tool=QUEUES_CTL) == 0
    assert all(third not in q.members for q in _mine(cluster, prefix).values())
    env = {**cluster.seed.env(), "STAYBOOK_BROKER__PREFIX": prefix,
           **{f"STAYBOOK_PROVISION_{role}_PASSWORD": unique("pw")
              for role in ("NODE", "OPERATOR", "PRODUCER")}}
    users = [f"--{role}-user={unique(role)}" for role in ("node", "operator", "producer")]
    try:
        r = CliRunner().invoke(app, ["broker", "provision", "--vhost", "/", *users,
                                     "--ctl", str(CTL)], env=env)
    finally:  # the other tests' queues too, or no node could stop with quorum + 1
        assert cluster.seed.ctl("grow", third, "all", tool=QUEUES_CTL) == 0
    assert r.exit_code == 0, r.output
    assert f"replicas of {prefix}.* on {third}" in r.output
    members = sorted(n.node_name for n in cluster.nodes)
    assert all(q.members == members for q in _mine(cluster, prefix).values())


@pytest.mark.timeout(300)
def test_losing_any_broker_node_loses_nothing(
        cluster: LocalCluster, on_cluster: Callable[..., Node]) -> None:
    """SIGKILL the node leading most queues first, then each other one in turn (each
    restarted before the next): the Staybook node's own connection is certainly lost
    once, and queues elect new leaders. Every command is answered, once."""
    node = on_cluster()
    client = Client(cluster.url, node.topology)
    sent = 0

    def add(i: int) -> dict[str, Any]:
        env = Envelope.new(AddApartment(owner_id="o", city="Porto", title=f"Flat {i}",
                                        price_per_night=100 + i, currency="EUR", capacity=2),
                           apartment_id=f"apt-{i}")
        reply = client.request(env, timeout=5, retries=8, backoff=0.5).to_dict()
        return dict(reply["payload"])

    def send(n: int) -> None:
        nonlocal sent
        assert all(add(i)["status"] == "ok" for i in range(sent, sent + n))
        sent += n

    try:
        send(20)
        leaders = [q.leader for q in _mine(cluster, node.topology.prefix).values()]
        busiest = max(set(leaders), key=leaders.count)
        order = sorted(cluster.nodes, key=lambda n: n.node_name != busiest)
        for victim in order:
            # As a rolling restart does: stop a node only when no queue needs it for
            # its majority (the last one restarted may still be catching up).
            assert cluster.await_quorum_plus_one(victim)
            victim.kill()
            send(15)  # answered during the election and after it
            victim.start()
            cluster.wait_members(3)
        send(10)
        # Its own broker node went away at least once, and it moved to another.
        assert isinstance(node.broker, RabbitBroker) and node.broker.reconnects >= 1
        # Each apartment was added once: adding it again is refused.
        assert all(add(i)["reason"] == "apartment_exists" for i in range(5))
        with node.store.engine.connect() as conn:
            added = conn.execute(select(func.count()).select_from(events_table).where(
                events_table.c.type == "ApartmentAdded")).scalar_one()
        assert added == sent
        eventually(lambda: client.request(Envelope.new(SearchApartments(
            city="Porto", limit=1)), timeout=5, retries=3).to_dict()["payload"]["total"]
            == sent, timeout=60)
        members = sorted(n.node_name for n in cluster.nodes)
        assert all(q.members == members
                   for q in _mine(cluster, node.topology.prefix).values())
        # After recovery the leaders are spread again over the three.
        assert cluster.rebalance()
        leaders = [q.leader for q in cluster.quorum_queues().values()]
        assert {n: leaders.count(n) > 0 for n in members} == dict.fromkeys(members, True)
    finally:
        client.close()
