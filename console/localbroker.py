"""Start a private RabbitMQ node for development, installing it when permitted.

``staybook demo`` and ``staybook serve --local-broker`` use this when no broker is
configured (no ``STAYBOOK_BROKER__URL``): a node named ``staybook-dev`` on port 5672
(or the next free one), with its data under ``.staybook/rabbitmq``. If Debian's
``rabbitmq-server`` is missing and we run as root, it is installed with apt-get
(the package's own service is not started; we start our own node).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from config import CONFIG_DIR, RABBITMQ_PLUGINS_FILE

log = logging.getLogger(__name__)

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
SERVER = RABBIT_BIN / "rabbitmq-server"
CTL = RABBIT_BIN / "rabbitmqctl"


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


def start_local_broker(state_dir: Path, *, port: int = 5672, allow_install: bool = True,
                       timeout: float = 90.0) -> str:
    """Make sure a broker answers on localhost and return its AMQP URL.

    Reuses one already listening on ``port``; otherwise starts ``staybook-dev``
    detached (it keeps running for the next command; ``staybook broker stop`` ends it).

    Raises:
        BrokerUnavailable: if it cannot be installed or does not come up in time.
    """
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    if port_open("127.0.0.1", port):
        print(f"found a RabbitMQ listening on port {port}; using it", flush=True)
        return url
    ensure_installed(allow_install=allow_install)
    env = _env(state_dir, port)
    log = state_dir / "rabbitmq.out"
    print(f"starting a local RabbitMQ on port {port} (data in {state_dir}) ...", flush=True)
    with log.open("ab") as out:
        subprocess.Popen([str(SERVER)], env=env, stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open("127.0.0.1", port):
            return url
        time.sleep(0.5)
    raise BrokerUnavailable(f"RabbitMQ did not start within {timeout:.0f}s; see {log}")


def stop_local_broker(state_dir: Path, *, port: int = 5672) -> bool:
    """Stop the ``staybook-dev`` node started by :func:`start_local_broker`.

    Returns:
        False when there was none to stop (no RabbitMQ installed, or the node is down).
    """
    if not CTL.exists():
        return False
    done = subprocess.run([str(CTL), "stop"], env=_env(state_dir, port), check=False,
                          capture_output=True, text=True)
    if done.returncode != 0:
        log.debug("rabbitmqctl stop: %s", done.stdout + done.stderr)
    return done.returncode == 0


def _env(state_dir: Path, port: int) -> dict[str, str]:
    state_dir = state_dir.resolve()
    (state_dir / "log").mkdir(parents=True, exist_ok=True)
    (state_dir / "mnesia").mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "HOME": os.environ.get("HOME") or str(state_dir),
        "RABBITMQ_NODENAME": "staybook-dev@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(port + 20000),
        "RABBITMQ_MNESIA_BASE": str(state_dir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(state_dir / "log"),
        "RABBITMQ_CONFIG_FILE": str(CONFIG_DIR / "rabbitmq" / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(RABBITMQ_PLUGINS_FILE),
    }
