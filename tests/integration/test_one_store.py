"""One cluster, one store: a node started on another store than the running members'
is refused before it claims a partition (two stores behind one set of partitions
would each hold part of every apartment's history)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.membership import StoreMismatch
from console.cli import app
from node import Node
from rules.clock import pinned
from store.db import store_id
from tests.conftest import TODAY, eventually, make_settings

FAST = {"heartbeat_seconds": 0.2, "member_timeout_seconds": 1.0, "drain_seconds": 5.0}


def test_a_node_on_another_store_is_refused_and_one_on_the_same_store_joins(
        node_factory: Callable[..., Node], amqp_url: str, tmp_path: Path) -> None:
    m1 = node_factory(node_name="m1", roles=["commands"], cluster=FAST)
    other = tmp_path / "other.db"
    settings = make_settings(tmp_path, node_name="node-2", roles=["commands"], cluster=FAST,
                             database_url=f"sqlite:///{other}")
    settings.broker.url = amqp_url
    settings.broker.prefix = m1.settings.broker.prefix
    stray = Node(settings, clock=pinned(TODAY))
    try:
        with pytest.raises(StoreMismatch) as refused:
            stray.start()
        theirs, ours = store_id(m1.engine), store_id(stray.engine)
    finally:
        stray.broker.close()
        stray.engine.dispose()
    assert (refused.value.node, refused.value.store_id) == ("m1", theirs)
    assert str(refused.value) == (
        f"this node's store sqlite:///{other} (id {ours[:8]}) is not the cluster's: m1 runs "
        f"on sqlite:///{tmp_path / 'staybook.db'} (id {theirs[:8]}); one cluster needs one "
        "store: set STAYBOOK_DATABASE_URL to the cluster's, or give this node a cluster of "
        "its own (STAYBOOK_BROKER__PREFIX)")
    assert m1.membership is not None and m1.membership.members() == ["m1"]
    # The same store (the factory's file): it joins, and the two share the partitions.
    m2 = node_factory(node_name="m2", roles=["commands"], cluster=FAST)
    assert m2.membership is not None
    eventually(lambda: m2.membership is not None and m2.membership.members() == ["m1", "m2"])
    assert m1.partitions is not None and m2.partitions is not None
    eventually(lambda: m1.partitions is not None and m2.partitions is not None
               and len(m1.partitions.held()) + len(m2.partitions.held())
               == m1.topology.partitions and bool(m2.partitions.held()), timeout=30)


def test_serve_on_another_store_exits_1_with_one_line(
        node_factory: Callable[..., Node], amqp_url: str, tmp_path: Path) -> None:
    m1 = node_factory(node_name="m1", cluster=FAST)
    other = tmp_path / "other.db"
    env = {**os.environ, "STAYBOOK_BROKER__URL": amqp_url, "PYTHONUNBUFFERED": "1",
           "STAYBOOK_BROKER__PREFIX": m1.settings.broker.prefix,
           "STAYBOOK_NODE_NAME": "node-2", "STAYBOOK_DATABASE_URL": f"sqlite:///{other}",
           "STAYBOOK_METRICS__PORT": "0", "STAYBOOK_LOG_LEVEL": "WARNING"}
    proc = subprocess.run([sys.executable, "-m", "console.cli", "serve", "--no-local-broker"],
                          env=env, capture_output=True, text=True, timeout=90,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"staybook: this node's store sqlite:///{other} (id "), line
    assert f"m1 runs on sqlite:///{tmp_path / 'staybook.db'} (id " in line, line
    assert proc.stdout == ""


def test_the_demo_says_it_met_a_node_on_another_store(
        node_factory: Callable[..., Node], amqp_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    m1 = node_factory(node_name="m1", cluster=FAST)
    monkeypatch.chdir(tmp_path)  # the demo keeps its state in ./.staybook
    demo_db = tmp_path / "demo.db"
    result = CliRunner().invoke(
        app, ["demo", "--no-local-broker", "--database", f"sqlite:///{demo_db}"],
        env={"STAYBOOK_BROKER__URL": amqp_url,
             "STAYBOOK_BROKER__PREFIX": m1.settings.broker.prefix,
             "STAYBOOK_DATABASE_URL": None})
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"staybook demo: node m1 already runs on this broker with another store "
        f"(sqlite:///{tmp_path / 'staybook.db'}, not the demo's sqlite:///{demo_db}); stop it "
        "first, or run the demo on its store (STAYBOOK_DATABASE_URL)"]
    assert m1.membership is not None and m1.membership.members() == ["m1"]
