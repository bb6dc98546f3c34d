"""The processes a fault drill kills: a private RabbitMQ node and a Staybook node.

Both run as subprocesses so the drill can SIGKILL them. The broker keeps its data
directory across restarts (quorum queues keep their messages); the node keeps its
SQLite file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pika
from pika.exceptions import AMQPError

from broker.rabbitmq import all_consumed, connection_parameters, wait_for_broker
from broker.topology import Topology
from config import CONFIG_DIR, DEFAULT_PARTITIONS, RABBITMQ_PLUGINS_FILE
from console.localbroker import CTL, SERVER, port_open

REPO = Path(__file__).resolve().parents[2]


class DrillSetupFailed(Exception):
    """A process the drill needs did not start."""


def _free_port() -> int:
    """A port free now and with its distribution port (+20000) free too."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 40000 and not port_open("127.0.0.1", port + 20000):
            return port
    raise DrillSetupFailed("no free port pair")


def tail(path: Path, lines: int = 20) -> str:
    """The end of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} unreadable)"
    return f"{path}:\n" + "\n".join(text[-lines:])


class Rabbit:
    """A private RabbitMQ node whose data directory survives stop/start and SIGKILL."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = _free_port()
        self.node = f"drill-{os.getpid()}-{self.port}@localhost"
        for sub in ("log", "mnesia"):
            (state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "HOME": os.environ.get("HOME") or str(state_dir),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 20000),
            "RABBITMQ_MNESIA_BASE": str(state_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(state_dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(CONFIG_DIR / "rabbitmq" / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(RABBITMQ_PLUGINS_FILE),
        }
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        self.log_path = state_dir / "rabbitmq.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        """Start the node and wait until it accepts AMQP connections."""
        if not SERVER.exists():
            raise DrillSetupFailed(f"{SERVER} is missing (apt-get install rabbitmq-server)")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([str(SERVER)], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise DrillSetupFailed(f"RabbitMQ did not start: {tail(self.log_path)}")
            time.sleep(0.2)
        try:
            wait_for_broker(self.url, timeout=max(1.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            raise DrillSetupFailed(str(exc)) from exc

    def ctl(self, *args: str, timeout: float = 60.0) -> int:
        """Run rabbitmqctl against this node; its exit status."""
        try:
            return subprocess.run([str(CTL), "-n", self.node, *args], env=self.env,
                                  check=False, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return -1

    def close_all_connections(self) -> None:
        """Make the broker close every client connection (nodes, producers alike)."""
        self.ctl("close_all_connections", "fault drill")

    def stop(self) -> None:
        """A clean stop (rabbitmqctl stop), SIGKILL if it hangs."""
        if self.proc is None:
            return
        self.ctl("stop")
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the whole node (the Erlang VM and its helpers)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None
        # epmd and the port may linger an instant after a kill.
        deadline = time.monotonic() + 15
        while port_open("127.0.0.1", self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or SIGKILL) and start again on the same data."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()


class NodeProcess:
    """``staybook serve`` as a subprocess on the drill's broker and store."""

    def __init__(self, url: str, prefix: str, workdir: Path,
                 extra_env: dict[str, str] | None = None, *, name: str = "drill",
                 db_url: str | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.name = name
        self.db_path = workdir / "drill.db"
        self.db_url = db_url or f"sqlite:///{self.db_path}"
        self.log_path = workdir / ("node.log" if name == "drill" else f"{name}.log")
        self.env = {
            **os.environ,
            "STAYBOOK_BROKER__URL": url,
            "STAYBOOK_BROKER__PREFIX": prefix,
            "STAYBOOK_DATABASE_URL": self.db_url,
            "STAYBOOK_LOG_LEVEL": "WARNING",
            "STAYBOOK_NODE_NAME": name,
            "PYTHONUNBUFFERED": "1",
            "STAYBOOK_BROKER__RECONNECT_MAX_DELAY": "2.0",
            "STAYBOOK_PAYMENT__RETRY_DELAY": "0.05",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 120.0, *, wait_queues: bool = True) -> None:
        """Start the node and wait until each of its queues has a consumer.

        With ``wait_queues`` False (a node joining a cluster whose queues are consumed
        already) it waits for the node's own word that it serves instead.
        """
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}\n".encode())
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "console.cli", "serve", "--no-local-broker"],
                env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        queues = Topology(prefix=self.prefix, partitions=DEFAULT_PARTITIONS).work_queues()
        deadline = time.monotonic() + timeout
        start = self.starts
        while not (all_consumed(self.url, queues) if wait_queues
                   else self._serving(start)):
            if self.proc.poll() is not None:
                raise DrillSetupFailed(f"the node exited with {self.proc.returncode}: "
                                       f"{tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise DrillSetupFailed(f"the node did not come up: {tail(self.log_path)}")
            time.sleep(0.2)

    def _serving(self, start: int) -> bool:
        """The node printed that it serves, after the marker of start ``start``."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        return "serving on" in text.split(f"--- start {start}\n")[-1]

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no acks, no flush; whatever was in flight is cut."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL if it does not stop); the exit code."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self.proc = None
        return code


def queue_counts(url: str, queues: list[str]) -> dict[str, tuple[int, int]] | None:
    """(ready messages, consumers) per queue (None when the broker cannot be asked)."""
    try:
        conn = pika.BlockingConnection(connection_parameters(url))
    except (AMQPError, OSError):
        return None
    try:
        out: dict[str, tuple[int, int]] = {}
        for name in queues:
            ch = conn.channel()
            m = ch.queue_declare(name, passive=True).method
            out[name] = (int(m.message_count), int(m.consumer_count))
            ch.close()
        return out
    except AMQPError:
        return None
    finally:
        with contextlib.suppress(AMQPError, OSError):
            conn.close()


def queue_depths(url: str, queues: list[str]) -> dict[str, int] | None:
    """Ready messages per queue (None when the broker cannot be asked)."""
    counts = queue_counts(url, queues)
    return None if counts is None else {q: c[0] for q, c in counts.items()}
