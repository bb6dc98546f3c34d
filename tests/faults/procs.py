"""The processes a fault drill kills: a private RabbitMQ node and a Staybook node.

Both run as subprocesses so the drill can SIGKILL them. The broker is
:class:`console.localbroker.LocalRabbit`, which keeps its data directory across
restarts (quorum queues keep their messages); the node keeps its SQLite file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pika
from pika.exceptions import AMQPError

from broker.rabbitmq import all_consumed, connection_parameters
from broker.topology import Topology
from config import DEFAULT_PARTITIONS
from console.localbroker import LocalRabbit, log_tail

REPO = Path(__file__).resolve().parents[2]


class DrillSetupFailed(Exception):
    """A process the drill needs did not start."""


def private_rabbit(state_dir: Path) -> LocalRabbit:
    """The drill's broker: a private node (free ports, a name of its own) on ``state_dir``.

    Its data directory survives stop, restart and SIGKILL, so quorum queues keep
    their messages across the broker faults the drill injects.
    """
    return LocalRabbit.private(state_dir, "drill")


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
                                       f"{log_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise DrillSetupFailed(f"the node did not come up: {log_tail(self.log_path)}")
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
