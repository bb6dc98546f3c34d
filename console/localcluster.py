"""A RabbitMQ cluster on one machine, for development, tests and drills.

:class:`LocalCluster` runs three :class:`~console.localbroker.LocalRabbit` nodes with
their own names, ports and data directories and one Erlang cookie, and joins them
with ``rabbitmqctl join_cluster``. Quorum queues declared once they have joined get a
replica on every node, so the cluster keeps every confirmed message when one node is
lost. ``staybook broker cluster`` runs the development one (ports 5701-5703);
tests and drills take private ones on free ports (:meth:`LocalCluster.private`).

Restarting from existing data starts every node at once: a node that was not the
last to stop waits for its peers before it opens its port.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from config import RABBITMQ_CLUSTER_PLUGINS_FILE
from console.localbroker import (
    DIST_OFFSET,
    HOST,
    QUEUES_CTL,
    UPGRADE_CTL,
    BrokerUnavailable,
    LocalRabbit,
    ensure_installed,
    free_port_pair,
)

log = logging.getLogger(__name__)

CLUSTER_SIZE = 3
DEV_BASE_PORT = 5701  # the development cluster: AMQP on 5701-5703
DEV_MANAGEMENT_PORT = 15701  # and its management API on 15701-15703
DEV_NAME = "staybook-c"


class LocalCluster:
    """``len(ports)`` RabbitMQ nodes on 127.0.0.1 joined as one cluster.

    Args:
        state_dir: holds a directory per node and the shared ``HOME`` (the cookie).
        ports: each node's AMQP port (its distribution port is that + 20000).
        name: node ``i`` (from 1) is ``<name><i>@localhost``.
        install: install rabbitmq-server with apt-get when missing (as root).
    """

    def __init__(self, state_dir: Path, *, ports: Sequence[int],
                 management_ports: Sequence[int], name: str = DEV_NAME,
                 install: bool = False) -> None:
        self.state_dir = state_dir.resolve()
        self.home = self.state_dir / "home"
        self.nodes = [LocalRabbit(self.state_dir / f"n{i}", port=port,
                                  node_name=f"{name}{i}@localhost", install=install,
                                  home=self.home, plugins=RABBITMQ_CLUSTER_PLUGINS_FILE,
                                  management_port=mport)
                      for i, (port, mport) in enumerate(zip(ports, management_ports,
                                                            strict=True), start=1)]

    @classmethod
    def private(cls, state_dir: Path, name: str, *, size: int = CLUSTER_SIZE,
                install: bool = False) -> LocalCluster:
        """A cluster on free port pairs, its node names holding the first port.

        Raises:
            BrokerUnavailable: when no free port pairs were found.
        """
        # Each node's AMQP port and distribution port (+20000), then a management port
        # per node: all free now and all distinct.
        picked: list[int] = []
        taken: set[int] = set()
        while len(picked) < 2 * size:
            port = free_port_pair()
            if not {port, port + DIST_OFFSET} & taken:
                picked.append(port)
                taken |= {port, port + DIST_OFFSET}
        ports, management = picked[:size], picked[size:]
        return cls(state_dir, ports=ports, management_ports=management,
                   name=f"{name}-{ports[0]}-", install=install)

    @classmethod
    def dev(cls, state_dir: Path, *, install: bool = True) -> LocalCluster:
        """The development cluster (``staybook broker cluster``) on ports 5701-5703."""
        return cls(state_dir, ports=[DEV_BASE_PORT + i for i in range(CLUSTER_SIZE)],
                   management_ports=[DEV_MANAGEMENT_PORT + i for i in range(CLUSTER_SIZE)],
                   install=install)

    @property
    def url(self) -> str:
        """Every node's AMQP URL, comma-separated: what ``STAYBOOK_BROKER__URL`` takes."""
        return ",".join(n.url for n in self.nodes)

    @property
    def management_url(self) -> str:
        """Every node's management API: what ``STAYBOOK_BROKER__MANAGEMENT_URL`` takes."""
        return ",".join(f"http://guest:guest@{HOST}:{n.management_port}" for n in self.nodes)

    @property
    def seed(self) -> LocalRabbit:
        """The node the others join."""
        return self.nodes[0]

    # --- lifecycle ------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> None:
        """Start every node that is down, at once, then join those not yet members.

        Raises:
            BrokerUnavailable: when a node does not come up or join within ``timeout``.
        """
        ensure_installed(allow_install=self.seed.install)
        self._write_cookie()
        deadline = time.monotonic() + timeout
        launched = [n for n in self.nodes if not n.running()]
        for node in launched:
            node.launch()
        for node in launched:
            node.wait_started(max(1.0, deadline - time.monotonic()))
        joined = self.members(self.seed)
        for node in self.nodes[1:]:
            if node.node_name not in joined:
                self._join(node)
        self.wait_members(len(self.nodes), max(1.0, deadline - time.monotonic()))

    def _write_cookie(self) -> None:
        """One Erlang cookie for every node and for rabbitmqctl (kept across restarts)."""
        cookie = self.home / ".erlang.cookie"
        if cookie.exists():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        cookie.write_text("".join(secrets.choice(string.ascii_uppercase) for _ in range(20)))
        cookie.chmod(0o400)

    def _join(self, node: LocalRabbit) -> None:
        for step in (("stop_app",), ("join_cluster", self.seed.node_name), ("start_app",)):
            code, _ = node.ctl_output(*step, timeout=120)
            if code != 0:
                raise node.failure(f"could not {' '.join(step)} (rabbitmqctl status {code})")

    def members(self, via: LocalRabbit | None = None) -> list[str]:
        """The running members of the cluster, as seen by ``via`` (default: any node up).

        Empty when no node answers.
        """
        for node in [via] if via else [n for n in self.nodes if n.running()]:
            code, out = node.ctl_output("cluster_status", "--formatter", "json", timeout=30)
            if code == 0:
                try:
                    return sorted(json.loads(out).get("running_nodes", []))
                except ValueError:
                    log.debug("cluster_status of %s: not JSON: %r", node.node_name, out)
        return []

    def wait_members(self, count: int, timeout: float = 120.0) -> None:
        """Wait until ``count`` members run.

        Raises:
            BrokerUnavailable: when they do not within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while len(self.members()) < count:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"the cluster did not reach {count} running nodes "
                                        f"within {timeout:.0f}s (running: {self.members()})")
            time.sleep(0.5)

    def await_quorum_plus_one(self, node: LocalRabbit, timeout: float = 120.0) -> bool:
        """Wait until every quorum queue with a replica on ``node`` has one more online
        replica than it needs, so that ``node`` can stop without a queue losing its
        majority (``rabbitmq-upgrade await_online_quorum_plus_one``, the rolling
        restart's check). False when that did not happen within ``timeout``."""
        code = node.ctl("await_online_quorum_plus_one", "-t", str(int(timeout)),
                        tool=UPGRADE_CTL, timeout=timeout + 30)
        return code == 0

    def stop(self) -> bool:
        """Stop every node cleanly; False when none was running."""
        stopped = [n.stop() for n in reversed(self.nodes)]
        return any(stopped)

    def kill(self) -> None:
        """SIGKILL every node this object started."""
        for node in self.nodes:
            node.kill()

    # --- queues ---------------------------------------------------------------------
    def quorum_queues(self, via: LocalRabbit | None = None) -> dict[str, QueueReplicas]:
        """Each quorum queue's leader and members (``rabbitmqctl list_queues``).

        Raises:
            BrokerUnavailable: when no node answers.
        """
        for node in [via] if via else [n for n in self.nodes if n.running()]:
            code, out = node.ctl_output("list_queues", "name", "type", "leader", "members",
                                        "--formatter", "json", timeout=60)
            if code == 0:
                return {q["name"]: QueueReplicas(str(q["leader"]), sorted(q["members"]))
                        for q in json.loads(out) if q.get("type") == "quorum"}
        raise BrokerUnavailable("no node of the cluster answered list_queues")

    def rebalance(self) -> bool:
        """Spread quorum queue leaders evenly over the running nodes."""
        node = next((n for n in self.nodes if n.running()), None)
        return node is not None and node.ctl("rebalance", "quorum", tool=QUEUES_CTL,
                                             timeout=120) == 0


@dataclass(frozen=True)
class QueueReplicas:
    """Where a quorum queue runs: its leader and its members (node names)."""

    leader: str
    members: list[str]

