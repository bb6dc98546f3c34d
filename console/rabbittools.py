"""RabbitMQ's own CLI tools aimed at a node on this machine: its name, its cookie, its plugins.

``rabbitmqctl`` and ``rabbitmq-plugins`` authenticate to a node with the Erlang cookie
in ``$HOME/.erlang.cookie``, which must be the node's own. Debian's service runs as the
``rabbitmq`` user with HOME ``/var/lib/rabbitmq``, so root's tools, with root's cookie,
are refused (exit status 69); Debian's wrappers in ``/usr/sbin`` run them with the
service's cookie. A node that epmd knows but that refuses a tool (exit status 69)
refused its cookie. :func:`ctl_for` tries, in turn: the wrapper (for the service's node),
the tool with the HOME of the process that serves the node (read from ``/proc``, as
root), with ours, and with the ``rabbitmq`` user's; the first that reaches the node wins.

:func:`enable_hash_exchange` enables the consistent-hash exchange on the local node
behind an AMQP URL: epmd names the node whose distribution port is the AMQP port +
20000 (RabbitMQ's default), the node tells its plugins file and directory (the tool
must write that file, not its own default), and ``rabbitmq-plugins enable`` applies it
online.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from broker.topology import HASH_PLUGIN

log = logging.getLogger(__name__)

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
DEBIAN_WRAPPERS = Path("/usr/sbin")  # Debian's: they run the tools as the rabbitmq user
SERVICE_USER = "rabbitmq"
EPMD_PORT = 4369
DIST_OFFSET = 20000  # a node's distribution port is its AMQP port + 20000 by default
UNAVAILABLE = 69  # what the tools exit with when they cannot reach or authenticate


class ToolUnusable(Exception):
    """No RabbitMQ CLI tool here can do it (one line saying what to run instead)."""


@dataclass(frozen=True)
class Tool:
    """One way to run a RabbitMQ CLI tool: its path, and the HOME whose cookie it uses
    (None: the caller's own)."""

    path: Path
    home: Path | None = None

    def __str__(self) -> str:
        return f"HOME={self.home} {self.path}" if self.home else str(self.path)

    def sibling(self, name: str) -> Tool:
        """Another tool of the same installation, run the same way (``rabbitmq-queues``)."""
        return Tool(self.path.with_name(name), self.home)

    def env(self, **extra: str) -> dict[str, str]:
        """Our environment with this HOME, and ``extra``."""
        return {**os.environ, **({"HOME": str(self.home)} if self.home else {}), **extra}

    def run(self, *args: str, timeout: float = 60.0,
            **extra_env: str) -> subprocess.CompletedProcess[str]:
        """Run it (no check); a timeout is exit status -1 (the output says so)."""
        try:
            return subprocess.run([str(self.path), *args], env=self.env(**extra_env),
                                  check=False, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([str(self.path), *args], -1, "",
                                               f"no answer in {timeout:.0f}s")
        except OSError as exc:
            return subprocess.CompletedProcess([str(self.path), *args], -1, "", str(exc))


def short_host() -> str:
    """This machine's short host name, the host part of RabbitMQ's default node names."""
    return socket.gethostname().split(".")[0]


ENV_CONF = Path("/etc/rabbitmq/rabbitmq-env.conf")


def default_node() -> str:
    """The node a RabbitMQ CLI tool reaches without ``-n``: ``RABBITMQ_NODENAME``, else
    ``NODENAME`` of rabbitmq-env.conf, else ``rabbit@<host>`` (Debian's service)."""
    name = os.environ.get("RABBITMQ_NODENAME") or _conf_nodename() or "rabbit"
    return name if "@" in name else f"{name}@{short_host()}"


def _conf_nodename() -> str | None:
    with contextlib.suppress(OSError):
        for line in ENV_CONF.read_text().splitlines():
            key, _, value = line.strip().partition("=")
            if key == "NODENAME" and value.strip("'\" "):
                return value.strip("'\" ")
    return None


def epmd_names(timeout: float = 2.0) -> dict[str, int]:
    """The node names registered with this machine's epmd and their distribution ports
    (empty when no epmd runs)."""
    try:
        with socket.create_connection(("127.0.0.1", EPMD_PORT), timeout=timeout) as s:
            s.sendall(struct.pack(">H", 1) + b"n")  # NAMES_REQ
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return {}
    names: dict[str, int] = {}
    for line in data[4:].decode(errors="replace").splitlines():
        parts = line.split()  # "name <name> at port <port>"
        if len(parts) == 5 and parts[0] == "name" and parts[4].isdigit():
            names[parts[1]] = int(parts[4])
    return names


@dataclass(frozen=True)
class NodeProcess:
    """What ``/proc`` tells of the Erlang VM that serves a node."""

    home: Path | None  # where its cookie is
    nodename: str | None  # its RABBITMQ_NODENAME, when it was given one
    ports: frozenset[int]  # every port it listens on


def _listening() -> dict[str, int]:
    """Listening TCP sockets here: ``socket:[inode]`` -> port."""
    out: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if len(f) > 9 and f[3] == "0A":  # LISTEN
                    out[f"socket:[{f[9]}]"] = int(f[1].rsplit(":", 1)[1], 16)
    return out


def node_process(port: int) -> NodeProcess | None:
    """The Erlang VM listening on ``port`` (AMQP or distribution), or None when ``/proc``
    does not tell (not root, another namespace)."""
    sockets = _listening()
    if port not in sockets.values():
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "comm").read_text().startswith("beam"):
                continue
            ports = frozenset(sockets[link] for fd in (proc / "fd").iterdir()
                              if (link := os.readlink(fd)) in sockets)
            if port not in ports:
                continue
            raw = (proc / "environ").read_bytes()
        except OSError:
            continue
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                   if "=" in item)
        return NodeProcess(Path(env["HOME"]) if env.get("HOME") else None,
                           env.get("RABBITMQ_NODENAME") or None, ports)
    return None


def _service_home() -> Path | None:
    """The HOME of the ``rabbitmq`` user (Debian's service), when it exists."""
    try:
        return Path(pwd.getpwnam(SERVICE_USER).pw_dir)
    except KeyError:
        return None


def candidates(name: str, node: str) -> list[Tool]:
    """The ways to run the tool ``name`` against ``node``, the likeliest first."""
    dist_port = epmd_names().get(node.split("@", 1)[0])
    found = node_process(dist_port) if dist_port else None
    plain, wrapper, service = RABBIT_BIN / name, DEBIAN_WRAPPERS / name, _service_home()
    use_wrapper = wrapper.exists() and os.geteuid() == 0
    out: list[Tool] = []
    if use_wrapper and (found is None or found.home in (None, service)):
        out.append(Tool(wrapper))
    if found is not None and found.home is not None:
        out.append(Tool(plain, found.home))
    out.append(Tool(plain))
    if service is not None and (service / ".erlang.cookie").exists():
        out.append(Tool(plain, service))
    if use_wrapper:
        out.append(Tool(wrapper))
    ours = os.environ.get("HOME")
    unique: list[Tool] = []
    for t in out:
        tool = Tool(t.path) if t.home is not None and str(t.home) == ours else t
        if tool not in unique and tool.path.exists():
            unique.append(tool)
    return unique


def _why(done: subprocess.CompletedProcess[str]) -> str:
    """A tool's failure in a few words."""
    if done.returncode == -1:
        return (done.stderr.strip() or "did not run").splitlines()[0]
    for raw in (done.stderr + done.stdout).splitlines():
        line = raw.strip()
        if line and not line.lower().startswith("error"):
            return f"exit status {done.returncode}: {line}"
    return f"exit status {done.returncode}"


Failures = list[tuple[Tool, subprocess.CompletedProcess[str]]]


def _reach(tools: list[Tool], node: str, probe: tuple[str, ...]
           ) -> tuple[tuple[Tool, str] | None, Failures]:
    """The first tool whose ``probe`` succeeds on ``node`` with what it printed, and
    each failure before it."""
    failures: Failures = []
    for tool in tools:
        done = tool.run("-n", node, "-q", *probe, timeout=30)
        if done.returncode == 0:
            return (tool, done.stdout), failures
        log.debug("%s -n %s %s: %s %s", tool, node, " ".join(probe), done.returncode,
                  done.stdout + done.stderr)
        failures.append((tool, done))
    return None, failures


PING = ("ping",)


def ctl_for(node: str, explicit: str | None = None, name: str = "rabbitmqctl",
            probe: tuple[str, ...] = PING) -> Tool:
    """The first way to run ``name`` that reaches ``node`` (``probe`` succeeds), or
    ``explicit`` alone when given.

    Raises:
        ToolUnusable: when none does; its line says what to pass or run instead.
    """
    tools = [Tool(Path(explicit))] if explicit else candidates(name, node)
    if not tools:
        raise ToolUnusable(f"no {name} found (is rabbitmq-server installed?); pass --ctl PATH")
    short, _, host = node.partition("@")
    if is_local(host) and short not in epmd_names():
        raise ToolUnusable(f"RabbitMQ node {node} is not running here; start it, or set "
                           f"RABBITMQ_NODENAME to the node to provision")
    reached, failures = _reach(tools, node, probe)
    if reached is not None:
        return reached[0]
    first, done = failures[0]
    # The node runs (epmd knows it), so a tool it does not answer has the wrong cookie.
    refused = [t for t, d in failures if d.returncode == UNAVAILABLE]
    if explicit and refused:
        # Say which one would do, having checked that it does.
        others, _ = _reach([t for t in candidates(name, node) if t != first], node, probe)
        if others is None:
            hint = "run it as the user RabbitMQ runs as"
        elif others[0].home is None:
            hint = f"pass --ctl {others[0].path}"
        else:
            hint = f"leave out --ctl: {others[0]} is accepted"
        raise ToolUnusable(f"{first} cannot reach RabbitMQ node {node}: the node refuses "
                           f"its Erlang cookie; {hint}")
    if refused:
        raise ToolUnusable(f"no {name} here has RabbitMQ node {node}'s Erlang cookie (tried "
                           f"{', '.join(str(t) for t in refused)}); run this as root or as "
                           f"the user RabbitMQ runs as, or pass --ctl PATH")
    raise ToolUnusable(f"{first} cannot reach RabbitMQ node {node} ({_why(done)}); pass "
                       f"--ctl another rabbitmqctl")


# --- the consistent-hash exchange on a local node ------------------------------------
def is_local(host: str) -> bool:
    """Whether ``host`` names this machine (an address one can bind here)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for family, _type, _proto, _name, addr in infos:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((addr[0], 0))
            except OSError:
                continue
            return True
    return False


def node_behind(host: str, port: int) -> list[str]:
    """The names the local node serving AMQP on ``port`` may have (empty: none found).

    epmd knows node names and distribution ports; the VM's sockets in ``/proc`` tie
    one to the AMQP port, else RabbitMQ's default (the AMQP port + 20000) does.
    """
    if not is_local(host):
        return []
    found = node_process(port)
    dist_ports = found.ports if found is not None else {port + DIST_OFFSET}
    shorts = [n for n, p in epmd_names().items() if p in dist_ports]
    if not shorts:
        return []
    if found is not None and found.nodename:
        name = found.nodename
        return [name if "@" in name else f"{name}@{short_host()}"]
    return [f"{shorts[0]}@{short_host()}", f"{shorts[0]}@localhost"]


# The node's own plugins file and directory; answering it proves the tool reaches it.
DIRECTORIES = ("directories", "--online", "--formatter", "json")


def enable_command(node: str | None) -> str:
    """The command that enables the plugin (what the user runs when we cannot)."""
    sudo = "sudo " if os.geteuid() != 0 else ""
    target = f" -n {node}" if node and node != default_node() else ""
    return f"{sudo}rabbitmq-plugins{target} enable {HASH_PLUGIN}"


def enable_hash_exchange(url: str) -> str:
    """Enable the consistent-hash exchange on the local node serving ``url``.

    Returns:
        The node's name.

    Raises:
        ToolUnusable: when that is not possible from here; the line names the command
            to run instead.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 5672
    nodes = node_behind(host, port)
    if not nodes:
        where = "its host" if not is_local(host) else f"the node on port {port}"
        raise ToolUnusable(f"it is not a RabbitMQ node of this machine that can be found; "
                           f"run on {where}: rabbitmq-plugins enable {HASH_PLUGIN}")
    for node in nodes:
        reached, _failures = _reach(candidates("rabbitmq-plugins", node), node, DIRECTORIES)
        if reached is None:
            continue
        tool, out = reached
        try:
            dirs = json.loads(out)
            plugins_file, plugins_dir = dirs["enabled_plugins_file"], dirs["plugins_dir"]
        except (ValueError, KeyError, TypeError):
            log.debug("%s directories: %s", tool, out)
            raise ToolUnusable(f"{tool} could not tell node {node}'s plugins file; run: "
                               f"{enable_command(node)}") from None
        # The tool writes its own default file unless told the node's: it must be told.
        done = tool.run("-n", node, "enable", HASH_PLUGIN, timeout=120,
                        RABBITMQ_ENABLED_PLUGINS_FILE=plugins_file,
                        RABBITMQ_PLUGINS_DIR=plugins_dir)
        if done.returncode != 0:
            log.debug("%s enable: %s %s", tool, done.returncode, done.stdout + done.stderr)
            raise ToolUnusable(f"{tool} could not enable it on node {node} ({_why(done)}); "
                               f"run: {enable_command(node)}")
        return node
    raise ToolUnusable(f"no rabbitmq-plugins here reaches node {nodes[0]} with its Erlang "
                       f"cookie; run: {enable_command(nodes[0])}")
