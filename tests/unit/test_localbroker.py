"""The private-RabbitMQ launcher without a RabbitMQ: names, ports, reuse, failures.

A fake ``rabbitmq-server`` (a shell script) stands in where a start must fail; the
real node's start, SIGKILL and restart are in tests/integration/test_localbroker.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import RABBITMQ_PLUGINS_FILE
from console import localbroker
from console.localbroker import BrokerUnavailable, LocalRabbit, start_local_broker


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on (standing in for a running broker)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _fake_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    server = tmp_path / "rabbitmq-server"
    server.write_text("#!/bin/sh\n" + script + "\n")
    server.chmod(0o755)
    monkeypatch.setattr(localbroker, "SERVER", server)


def test_two_private_nodes_share_no_name_and_no_port(tmp_path: Path) -> None:
    a = LocalRabbit.private(tmp_path / "a", "t")
    b = LocalRabbit.private(tmp_path / "b", "t")
    assert a.node_name != b.node_name
    ports = {a.port, a.port + 20000, b.port, b.port + 20000}
    assert len(ports) == 4
    env = a.env()
    assert env["RABBITMQ_NODENAME"] == a.node_name
    assert (env["RABBITMQ_NODE_PORT"], env["RABBITMQ_DIST_PORT"]) == (
        str(a.port), str(a.port + 20000))
    assert env["RABBITMQ_ENABLED_PLUGINS_FILE"] == str(RABBITMQ_PLUGINS_FILE)
    assert "rabbitmq_consistent_hash_exchange" in RABBITMQ_PLUGINS_FILE.read_text()
    assert Path(env["RABBITMQ_MNESIA_BASE"]).is_dir() and Path(env["RABBITMQ_LOG_BASE"]).is_dir()
    assert a.url == f"amqp://guest:guest@127.0.0.1:{a.port}/%2F"


def test_the_dev_broker_reuses_one_already_listening_and_says_so(
        tmp_path: Path, listening: int, capsys: pytest.CaptureFixture[str]) -> None:
    url = start_local_broker(tmp_path, port=listening, allow_install=False)
    assert url == f"amqp://guest:guest@127.0.0.1:{listening}/%2F"
    assert capsys.readouterr().out == (
        f"found a RabbitMQ listening on port {listening}; using it\n")
    assert not (tmp_path / "rabbitmq.out").exists()  # nothing was started


def test_stopping_a_dev_broker_that_is_not_running_reports_nothing_stopped(
        tmp_path: Path) -> None:
    rabbit = LocalRabbit.private(tmp_path, "t")  # a free port: nothing listens there
    assert localbroker.stop_local_broker(tmp_path, port=rabbit.port) is False


def test_a_node_does_not_start_on_a_port_already_taken(
        tmp_path: Path, listening: int, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_server(tmp_path, monkeypatch, "exit 0")
    rabbit = LocalRabbit(tmp_path / "state", port=listening, node_name="t@localhost")
    with pytest.raises(BrokerUnavailable, match=f"port {listening} is taken"):
        rabbit.start(timeout=5)
    assert rabbit.proc is None


def test_a_node_that_exits_at_once_is_a_one_line_error_with_its_output_in_the_notes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_server(tmp_path, monkeypatch, "echo 'boot failed: no mnesia'; exit 3")
    rabbit = LocalRabbit.private(tmp_path / "state", "t")
    with pytest.raises(BrokerUnavailable) as caught:
        rabbit.start(timeout=30)
    assert str(caught.value).splitlines() == [
        f"RabbitMQ {rabbit.node_name} on port {rabbit.port} exited with status 3; "
        f"see {rabbit.log_path}"]
    assert "boot failed: no mnesia" in "\n".join(caught.value.__notes__)
    assert rabbit.proc is None  # cleaned up


def test_a_missing_rabbitmq_server_is_one_line_that_says_how_to_install_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localbroker, "SERVER", tmp_path / "absent")
    rabbit = LocalRabbit.private(tmp_path / "state", "t")
    with pytest.raises(BrokerUnavailable) as caught:
        rabbit.start(timeout=5)
    assert str(caught.value).splitlines() == [
        "rabbitmq-server is not installed; run: sudo apt-get install -y rabbitmq-server "
        "(or set STAYBOOK_BROKER__URL to a running broker)"]
