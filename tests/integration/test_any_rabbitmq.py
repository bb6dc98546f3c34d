"""RabbitMQ as a distribution installs it: no consistent-hash plugin, a service user's cookie.

Each test starts a private node of its own (not the session's pytest-rabbitmq node,
which has the plugin): one whose plugins file lacks the consistent-hash exchange,
one whose plugins directory lacks it (so it cannot be enabled), and one run as the
``rabbitmq`` user with a HOME and Erlang cookie of its own, as Debian's service runs.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.rabbitmq import HashExchangeMissing, RabbitBroker
from broker.topology import HASH_PLUGIN
from config import Settings
from console.localbroker import RABBIT_BIN, LocalRabbit
from tests.conftest import unique

SHIPPED_PLUGINS = Path("/usr/lib/rabbitmq/lib")
ENABLE_LINE = "had no consistent-hash exchange: enabled its plugin on node"


def _no_plugins(where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    plugins = where / "enabled_plugins"
    plugins.write_text("[].\n")
    return plugins


@pytest.fixture
def bare_rabbit(tmp_path: Path) -> Iterator[LocalRabbit]:
    """A node started with no plugin enabled (its plugins file is ours to change)."""
    rabbit = LocalRabbit.private(tmp_path / "rabbit", "nohash",
                                 plugins=_no_plugins(tmp_path / "etc"))
    rabbit.start()
    try:
        yield rabbit
    finally:
        rabbit.stop()


class _NoHashDir(LocalRabbit):
    """A node whose plugins directory holds every shipped plugin but the consistent-hash
    exchange: no ``rabbitmq-plugins`` can enable it there."""

    plugins_dir: Path

    def env(self) -> dict[str, str]:
        return {**super().env(), "RABBITMQ_PLUGINS_DIR": str(self.plugins_dir)}


@pytest.fixture
def rabbit_that_cannot(tmp_path: Path) -> Iterator[LocalRabbit]:
    """A node without the plugin, which cannot have it."""
    plugins_dir = tmp_path / "plugins-dir"
    plugins_dir.mkdir()
    (shipped,) = SHIPPED_PLUGINS.glob("rabbitmq_server-*/plugins")
    for entry in shipped.iterdir():
        if not entry.name.startswith(HASH_PLUGIN):
            (plugins_dir / entry.name).symlink_to(entry)
    rabbit = _NoHashDir.private(tmp_path / "rabbit", "nohashdir",
                                plugins=_no_plugins(tmp_path / "etc"))
    rabbit.plugins_dir = plugins_dir
    rabbit.start()
    try:
        yield rabbit
    finally:
        rabbit.stop()


def _cli_env(url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "STAYBOOK_BROKER__URL": url, "PYTHONUNBUFFERED": "1",
            "STAYBOOK_BROKER__PREFIX": unique("t"), "STAYBOOK_NODE_NAME": "any-n1",
            "STAYBOOK_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}",
            "STAYBOOK_METRICS__PORT": "0", "STAYBOOK_LOG_LEVEL": "WARNING"}


@pytest.mark.timeout(240)
def test_serve_enables_the_missing_plugin_on_a_local_node_and_says_so(
        bare_rabbit: LocalRabbit, tmp_path: Path) -> None:
    with pytest.raises(HashExchangeMissing) as missing:  # the connection-level 503
        RabbitBroker.from_settings(Settings(broker={
            "url": bare_rabbit.url, "prefix": unique("t"), "partitions": 2})).declare()
    assert str(missing.value).splitlines() == [
        f"RabbitMQ has no consistent-hash exchange: enable it with "
        f"'rabbitmq-plugins enable {HASH_PLUGIN}'"]
    proc = subprocess.Popen([sys.executable, "-m", "console.cli", "serve",
                             "--no-local-broker"], env=_cli_env(bare_rabbit.url, tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        said = proc.stdout.readline()
        assert said == (f"RabbitMQ at amqp://guest:***@127.0.0.1:{bare_rabbit.port}/%2F "
                        f"{ENABLE_LINE} {bare_rabbit.node_name}\n")
        assert proc.stdout.readline().startswith("staybook node any-n1 serving on ")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    # The node's own plugins file, which it keeps across restarts.
    assert HASH_PLUGIN in bare_rabbit.plugins.read_text()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("command", ["serve", "demo"])
def test_serve_and_demo_name_the_command_when_the_plugin_cannot_be_enabled(
        rabbit_that_cannot: LocalRabbit, tmp_path: Path, command: str) -> None:
    done = subprocess.run([sys.executable, "-m", "console.cli", command, "--no-local-broker"],
                          env=_cli_env(rabbit_that_cannot.url, tmp_path), capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"staybook: RabbitMQ at amqp://guest:***@127.0.0.1:"
                               f"{rabbit_that_cannot.port}/%2F has no consistent-hash "
                               f"exchange and "), lines[0]
    assert lines[0].endswith(f"run: rabbitmq-plugins -n {rabbit_that_cannot.node_name} "
                             f"enable {HASH_PLUGIN}"), lines[0]
    assert HASH_PLUGIN not in rabbit_that_cannot.plugins.read_text()


def test_a_broker_on_another_host_is_one_line_naming_the_command() -> None:
    from console.rabbittools import ToolUnusable, enable_hash_exchange

    with pytest.raises(ToolUnusable) as caught:  # a TEST-NET address: never this machine
        enable_hash_exchange("amqp://u:p@192.0.2.1:5672/%2F")
    assert str(caught.value).splitlines() == [
        f"it is not a RabbitMQ node of this machine that can be found; run on its host: "
        f"rabbitmq-plugins enable {HASH_PLUGIN}"]


# --- a node run as the rabbitmq user, with its own HOME and cookie ---------------------
SERVICE_USER = "rabbitmq"


class _AsServiceUser(LocalRabbit):
    """A node run as the ``rabbitmq`` user, as Debian's service runs."""

    def command(self) -> list[str]:
        return ["setpriv", f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}",
                "--init-groups", str(RABBIT_BIN / "rabbitmq-server")]


@pytest.fixture
def service_rabbit() -> Iterator[LocalRabbit]:
    if os.geteuid() != 0:
        pytest.skip("runs a node as the rabbitmq user: needs root")
    user = pwd.getpwnam(SERVICE_USER)
    # Not under pytest's tmp tree, which is private to root.
    base = Path(tempfile.mkdtemp(prefix="staybook-service-"))
    home = base / "home"
    home.mkdir()
    cookie = home / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(16).upper())
    cookie.chmod(0o400)
    plugins = base / "enabled_plugins"
    plugins.write_text(f"[{HASH_PLUGIN}].\n")
    rabbit = _AsServiceUser.private(base / "state", "svc", home=home, plugins=plugins)
    rabbit.env()  # makes its data and log directories
    base.chmod(0o755)
    for path in [base, *base.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)
    try:
        rabbit.start()
        yield rabbit
    finally:
        try:
            rabbit.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _provision(rabbit: LocalRabbit, *args: str) -> subprocess.CompletedProcess[str]:
    passwords = {f"STAYBOOK_PROVISION_{role}_PASSWORD": f"pw-{role.lower()}-s3cret"
                 for role in ("NODE", "OPERATOR", "PRODUCER")}
    env = {**os.environ, **passwords, "RABBITMQ_NODENAME": rabbit.node_name}
    return subprocess.run([sys.executable, "-m", "console.cli", "broker", "provision",
                           "--vhost", "svc", *args], env=env, capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL, check=False)


@pytest.mark.timeout(300)
def test_provision_finds_the_rabbitmqctl_the_service_users_node_accepts(
        service_rabbit: LocalRabbit) -> None:
    assert service_rabbit.home is not None
    # Root's own rabbitmqctl (root's cookie) is refused: one line, saying what works.
    ours = _provision(service_rabbit, "--ctl", str(RABBIT_BIN / "rabbitmqctl"))
    assert ours.returncode == 1, ours.stdout + ours.stderr
    assert ours.stderr.splitlines() == [
        f"staybook: {RABBIT_BIN / 'rabbitmqctl'} cannot reach RabbitMQ node "
        f"{service_rabbit.node_name}: the node refuses its Erlang cookie; leave out --ctl: "
        f"HOME={service_rabbit.home} {RABBIT_BIN / 'rabbitmqctl'} is accepted"]
    # Without --ctl it finds that one itself (the HOME of the node's process).
    done = _provision(service_rabbit)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (f"using HOME={service_rabbit.home} {RABBIT_BIN / 'rabbitmqctl'} "
                        f"for RabbitMQ node {service_rabbit.node_name}")
    assert "add_user staybook-node" in lines
    assert "s3cret" not in done.stdout + done.stderr + ours.stdout + ours.stderr
    code, users = service_rabbit.ctl_output("-q", "list_users")
    assert code == 0 and "staybook-producer" in users
