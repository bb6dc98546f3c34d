"""The one launcher of private RabbitMQ nodes run with Debian's binaries.

:class:`LocalRabbit` starts, stops, SIGKILLs and restarts one node whose data lives
in a directory of ours, with the Staybook config and plugins (the consistent-hash
exchange). Everything that needs a broker of its own uses it:

* the development broker (``staybook broker start/stop``, ``staybook demo``,
  ``staybook serve --local-broker``): :func:`start_local_broker` runs the node
  ``staybook-dev`` on port 5672, detached so that it outlives the command, and
  reuses a broker already listening there; :func:`stop_local_broker` ends it;
* the fault drills (``tests/faults``), which SIGKILL and restart it on the same data;
* the benchmark (``bench/``), which starts one in a temporary directory.

Private nodes (:meth:`LocalRabbit.private`) take a free port pair and a node name
holding this process's id and the port, so two launchers never share a node name,
a port or a distribution port (the AMQP port + 20000, as RabbitMQ's default).

If Debian's ``rabbitmq-server`` is missing and we run as root, a launcher built with
``install=True`` installs it with apt-get (the package's own service is not started;
we start our own node).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from broker.rabbitmq import LoginRefused, wait_for_broker
from config import CONFIG_DIR, RABBITMQ_PLUGINS_FILE

log = logging.getLogger(__name__)

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
SERVER = RABBIT_BIN / "rabbitmq-server"
CTL = RABBIT_BIN / "rabbitmqctl"
QUEUES_CTL = RABBIT_BIN / "rabbitmq-queues"
UPGRADE_CTL = RABBIT_BIN / "rabbitmq-upgrade"
DEV_NODE = "staybook-dev@localhost"
DIST_OFFSET = 20000  # RabbitMQ's distribution port is the AMQP port + 20000
HOST = "127.0.0.1"


class BrokerUnavailable(Exception):
    """No RabbitMQ could be found, installed or started."""


def port_open(host: str, port: int) -> bool:
    """True if something accepts TCP connections on host:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def ensure_installed(*, allow_install: bool = True) -> None:
    """Install Debian's rabbitmq-server when missing and permitted.

    Raises:
        BrokerUnavailable: when it is missing and cannot be installed here.
    """
    if SERVER.exists():
        return
    if not allow_install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BrokerUnavailable(
            "rabbitmq-server is not installed; run: sudo apt-get install -y rabbitmq-server "
            "(or set STAYBOOK_BROKER__URL to a running broker)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
    print("installing rabbitmq-server from Debian packages ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                    "rabbitmq-server"], check=True, env=env)


def free_port_pair(attempts: int = 200) -> int:
    """A port p in 20000..40000 with p and p + 20000 both free on 127.0.0.1 now.

    Random rather than the kernel's next ephemeral port, so that two processes
    looking at once are unlikely to pick the same one.

    Raises:
        BrokerUnavailable: when none was found.
    """
    rng = random.SystemRandom()
    for _ in range(attempts):
        port = rng.randint(20000, 40000)
        if _bindable(port) and _bindable(port + DIST_OFFSET):
            return port
    raise BrokerUnavailable("no free port pair for a private RabbitMQ")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def log_tail(path: Path, lines: int = 20) -> str:
    """The end of a log file, for the notes of an error."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} unreadable)"
    return f"{path}:\n" + "\n".join(text[-lines:])


class LocalRabbit:
    """One RabbitMQ node on 127.0.0.1 with its data, logs and output under ``state_dir``.

    The data directory survives :meth:`stop`, :meth:`kill` and :meth:`restart`
    (durable and quorum queues keep their messages). :meth:`kill` and waiting for
    the process apply to a node this object started; :meth:`stop` also ends one
    started by another process (``rabbitmqctl stop`` finds it by its name).
    """

    def __init__(self, state_dir: Path, *, port: int, node_name: str,
                 install: bool = False, home: Path | None = None,
                 plugins: Path = RABBITMQ_PLUGINS_FILE, management_port: int | None = None
                 ) -> None:
        """A launcher; nothing starts until :meth:`start`.

        Args:
            port: the AMQP port; the distribution port is ``port + 20000``.
            node_name: ``name@localhost``, unique among the nodes on this machine.
            install: install rabbitmq-server with apt-get when missing (as root).
            home: the ``HOME`` of the server and of rabbitmqctl, whose
                ``.erlang.cookie`` they use (a cluster's nodes share one); default: ours.
            plugins: the enabled-plugins file.
            management_port: the management API's port, when ``plugins`` enables it.
        """
        self.state_dir = state_dir.resolve()
        self.port = port
        self.node_name = node_name
        self.install = install
        self.home = home
        self.plugins = plugins
        self.management_port = management_port
        self.url = f"amqp://guest:guest@{HOST}:{port}/%2F"
        self.log_path = self.state_dir / "rabbitmq.out"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def private(cls, state_dir: Path, name: str, *, install: bool = False,
                home: Path | None = None, plugins: Path = RABBITMQ_PLUGINS_FILE
                ) -> Self:
        """A node on a free port pair named ``<name>-<pid>-<port>@localhost``.

        Raises:
            BrokerUnavailable: when no free port pair was found.
        """
        port = free_port_pair()
        return cls(state_dir, port=port, node_name=f"{name}-{os.getpid()}-{port}@localhost",
                   install=install, home=home, plugins=plugins)

    def env(self) -> dict[str, str]:
        """The environment of rabbitmq-server and rabbitmqctl for this node.

        Creates the data and log directories, which the server expects to exist.
        """
        for sub in ("log", "mnesia"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        return {
            **os.environ,
            "HOME": str(self.home) if self.home else (os.environ.get("HOME")
                                                      or str(self.state_dir)),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + DIST_OFFSET),
            "RABBITMQ_MNESIA_BASE": str(self.state_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.state_dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(CONFIG_DIR / "rabbitmq" / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.plugins),
            **({"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                f"-rabbitmq_management tcp_config [{{port,{self.management_port}}}]"}
               if self.management_port else {}),
        }

    def running(self) -> bool:
        """True if something accepts connections on this node's port."""
        return port_open(HOST, self.port)

    def start(self, timeout: float = 120.0) -> None:
        """Start the node and wait until it answers AMQP.

        The server runs in a session of its own, so it outlives this process unless
        stopped; a node that fails to come up in time is killed.

        Raises:
            BrokerUnavailable: when rabbitmq-server is missing, the port is taken, or
                the node exits or does not answer within ``timeout`` seconds (the
                error's notes hold the end of its output).
        """
        self.launch()
        self.wait_started(timeout)

    def launch(self) -> None:
        """Start the server process and return at once (:meth:`wait_started` waits).

        Raises:
            BrokerUnavailable: when rabbitmq-server is missing or the port is taken.
        """
        ensure_installed(allow_install=self.install)
        if self.running():
            raise BrokerUnavailable(f"port {self.port} is taken; RabbitMQ {self.node_name} "
                                    "cannot listen on it")
        env = self.env()
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(self.command(), env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def command(self) -> list[str]:
        """What runs the server (a subclass may run it as another user)."""
        return [str(SERVER)]

    def wait_started(self, timeout: float = 120.0) -> None:
        """Wait until the launched node answers AMQP; kill it if it does not in time.

        Raises:
            BrokerUnavailable: when it exits or does not answer within ``timeout``.
        """
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        try:
            while not self.running():
                if (code := self.proc.poll()) is not None:
                    raise self.failure(f"exited with status {code}")
                if time.monotonic() > deadline:
                    raise self.failure(f"did not start within {timeout:.0f}s")
                time.sleep(0.2)
            try:
                wait_for_broker(self.url, timeout=max(1.0, deadline - time.monotonic()))
            except TimeoutError as exc:
                raise self.failure(f"did not answer AMQP within {timeout:.0f}s") from exc
            except LoginRefused as exc:
                raise self.failure(f"refused its own login ({exc})") from exc
        except BrokerUnavailable:
            self.kill()
            raise

    def failure(self, what: str) -> BrokerUnavailable:
        """A :class:`BrokerUnavailable` saying this node ``what`` ("exited with status
        1"), with the tails of its logs attached."""
        exc = BrokerUnavailable(f"RabbitMQ {self.node_name} on port {self.port} {what}; "
                                f"see {self.log_path}")
        exc.add_note(log_tail(self.log_path))
        exc.add_note(log_tail(self.state_dir / "log" / f"{self.node_name}.log"))
        return exc

    def ctl(self, *args: str, timeout: float = 60.0, tool: Path = CTL) -> int:
        """Run ``rabbitmqctl`` (or another CLI ``tool``) against this node; its exit
        status (-1 on timeout)."""
        return self.ctl_output(*args, timeout=timeout, tool=tool)[0]

    def ctl_output(self, *args: str, timeout: float = 60.0,
                   tool: Path = CTL) -> tuple[int, str]:
        """Like :meth:`ctl`, with what the tool printed on stdout."""
        if not tool.exists():
            return -1, ""
        try:
            done = subprocess.run([str(tool), "-n", self.node_name, *args], env=self.env(),
                                  check=False, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            log.debug("%s %s: no answer in %ss", tool.name, " ".join(args), timeout)
            return -1, ""
        if done.returncode != 0:
            log.debug("%s %s: %s", tool.name, " ".join(args), done.stdout + done.stderr)
        return done.returncode, done.stdout

    def close_all_connections(self, reason: str) -> None:
        """Make the node close every client connection (nodes and producers alike)."""
        self.ctl("close_all_connections", reason)

    def stop(self, timeout: float = 30.0) -> bool:
        """A clean stop (``rabbitmqctl stop``); SIGKILL if our process does not end.

        Returns:
            False when the node did not acknowledge the stop (it was not running).
        """
        if self.proc is None and not self.running():
            return False  # nothing listens: asking rabbitmqctl would only wait for it
        stopped = self.ctl("stop") == 0
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
                self.proc = None
            except subprocess.TimeoutExpired:
                self.kill()
        return stopped

    def kill(self) -> None:
        """SIGKILL the node this object started (the Erlang VM and its helpers).

        Waits for the port to close: the VM may hold it an instant after the kill.
        """
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None
        deadline = time.monotonic() + 15
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self, *, kill: bool = False, timeout: float = 120.0) -> None:
        """Stop (or SIGKILL, with ``kill``) and start again on the same data."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start(timeout)


def dev_broker(state_dir: Path, *, port: int = 5672, allow_install: bool = True) -> LocalRabbit:
    """The development node ``staybook-dev`` with its data in ``state_dir``."""
    return LocalRabbit(state_dir, port=port, node_name=DEV_NODE, install=allow_install)


def start_local_broker(state_dir: Path, *, port: int = 5672, allow_install: bool = True,
                       timeout: float = 90.0) -> str:
    """Make sure a broker answers on localhost and return its AMQP URL.

    Reuses one already listening on ``port`` (and says so); otherwise starts
    ``staybook-dev``, which keeps running for the next command until
    ``staybook broker stop``.

    Raises:
        BrokerUnavailable: if it cannot be installed or does not come up in time.
    """
    rabbit = dev_broker(state_dir, port=port, allow_install=allow_install)
    if rabbit.running():
        print(f"found a RabbitMQ listening on port {port}; using it", flush=True)
        return rabbit.url
    ensure_installed(allow_install=allow_install)
    print(f"starting a local RabbitMQ on port {port} (data in {state_dir}) ...", flush=True)
    rabbit.start(timeout)
    return rabbit.url


def stop_local_broker(state_dir: Path, *, port: int = 5672) -> bool:
    """Stop the ``staybook-dev`` node started by :func:`start_local_broker`.

    Returns:
        False when there was none to stop (no RabbitMQ installed, or the node is down).
    """
    return dev_broker(state_dir, port=port, allow_install=False).stop()
