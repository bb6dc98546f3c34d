"""`staybook send` and `staybook search` against a node on a real RabbitMQ."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from console.cli import app
from node import Node
from tests.conftest import unique


@pytest.fixture
def env(node: Node, amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAYBOOK_BROKER__URL", amqp_url)
    monkeypatch.setenv("STAYBOOK_BROKER__PREFIX", node.topology.prefix)


def test_send_prints_the_reply_and_a_re_send_with_the_same_id_changes_nothing(
        node: Node, env: None) -> None:
    runner = CliRunner()
    payload = json.dumps({"owner_id": "o", "city": "Oslo", "title": "T",
                          "price_per_night": 100, "currency": "EUR", "capacity": 2})
    first = runner.invoke(app, ["send", "AddApartment", "cli-1", payload,
                                "--message-id", "cli-m1"])
    assert first.exit_code == 0, first.output
    assert '"status": "ok"' in first.output
    again = runner.invoke(app, ["send", "AddApartment", "cli-1", payload,
                                "--message-id", "cli-m1"])
    assert again.exit_code == 0, again.output  # the stored reply, not apartment_exists
    assert [e.type for e in node.store.load("apartment:cli-1")] == ["ApartmentAdded"]
    other = runner.invoke(app, ["send", "AddApartment", "cli-1", payload])
    assert other.exit_code == 1 and "apartment_exists" in other.output


def test_search_after_a_sent_command_includes_its_write(node: Node, env: None) -> None:
    runner = CliRunner()
    payload = json.dumps({"owner_id": "o", "city": "Bergen", "title": "T",
                          "price_per_night": 100, "currency": "EUR", "capacity": 2})
    sent = runner.invoke(app, ["send", "AddApartment", "cli-3", payload])
    assert sent.exit_code == 0, sent.output
    position = json.loads(sent.stdout)["position"]
    found = runner.invoke(app, ["search", "--city", "bergen", "--after", str(position)])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)
    assert hits["caught_up"] is True
    assert [h["apartment_id"] for h in hits["apartments"]] == ["cli-3"]


def test_send_refuses_a_bad_payload_before_publishing(env: None) -> None:
    result = CliRunner().invoke(app, ["send", "AddApartment", "cli-2", '{"owner_id": "o"}'])
    assert result.exit_code == 2 and "invalid AddApartment" in result.output


def test_serve_says_in_one_line_what_it_runs_and_stops_cleanly(
        amqp_url: str, tmp_path: Path) -> None:
    """Name, roles, broker and store without passwords, metrics; SIGTERM exits 0."""
    env = {**os.environ, "STAYBOOK_BROKER__URL": amqp_url, "PYTHONUNBUFFERED": "1",
           "STAYBOOK_BROKER__PREFIX": unique("t"), "STAYBOOK_NODE_NAME": "cli-n1",
           "STAYBOOK_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}",
           "STAYBOOK_METRICS__PORT": "0", "STAYBOOK_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "console.cli", "serve",
                             "--no-local-broker"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("staybook node cli-n1 serving on amqp://guest:***@"), line
        assert "roles commands+events" in line and "metrics off" in line, line
        assert "guest:guest" not in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


ADD = json.dumps({"owner_id": "o", "city": "Oslo", "title": "T", "price_per_night": 100,
                  "currency": "EUR", "capacity": 2})


@pytest.mark.parametrize("before", ["never", "stopped"])
def test_with_no_node_consuming_send_search_and_ctl_say_so_in_one_line(
        before: str, node_factory: Callable[..., Node], amqp_url: str) -> None:
    """Asked before anything is published: no reply timeout to wait out, no message id."""
    if before == "stopped":  # its queues are there, with nobody consuming them
        gone = node_factory()
        gone.stop()
        prefix = gone.settings.broker.prefix
    else:  # nothing of this prefix was ever declared
        prefix = unique("t")
    env = {"STAYBOOK_BROKER__URL": amqp_url, "STAYBOOK_BROKER__PREFIX": prefix}
    for args, line in (
            (["send", "AddApartment", "apt-1", ADD],
             f"staybook: no node is consuming {prefix}.intake.*; start one (make serve)"),
            (["search", "--city", "Oslo"],
             f"staybook: no node is consuming {prefix}.search; start one (make serve)"),
            (["ctl", "nodes"],
             f"error: no node is consuming {prefix}.control; start one (make serve)"),
            (["ctl", "--node", "n9", "tree"],
             f"error: no node named n9 is consuming {prefix}.control; is it running? "
             "(staybook ctl nodes lists those that are)")):
        r = CliRunner().invoke(app, args, env=env)
        assert (r.exit_code, r.stderr.splitlines()) == (1, [line]), (args, r.output)
        assert r.stdout == ""


def test_serve_with_a_wrong_password_says_so_at_once(amqp_url: str) -> None:
    """A refused login does not get better by waiting: one line, the password hidden."""
    bad = amqp_url.replace("guest:guest", "guest:not-the-pw")
    r = CliRunner().invoke(app, ["serve", "--no-local-broker", "--wait", "600"],
                           env={"STAYBOOK_BROKER__URL": bad})
    assert r.exit_code == 2, r.output
    assert r.stderr.splitlines() == [
        f"staybook: login refused by RabbitMQ at {bad.replace(':not-the-pw@', ':***@')}; "
        "check STAYBOOK_BROKER__URL's user and password"]
    assert "not-the-pw" not in r.output
