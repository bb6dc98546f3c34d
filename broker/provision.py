"""``staybook broker provision``: the vhost, users and permissions of a deployment.

Three roles, least privilege by RabbitMQ's resource regexes (configure, write, read):

* **node**: everything under ``<prefix>.``, and the default exchange (replies).
* **operator** (the console): writes control requests only (nodes browse, replay and
  purge dead letters for it, from the store), reads every ``<prefix>.`` queue
  (depths); declares nothing. Nodes also check its name against
  ``control.operators``.
* **producer**: writes commands and queries only: it cannot publish to the control
  exchange nor to an event exchange. (The search queue is bound to the queries
  exchange too, so the nodes refuse an event that came through it: only nodes
  publish events.)

No user is tagged ``impersonator``, so RabbitMQ checks every message's ``user_id``
against its connection's user, which is what makes the nodes' operator check hold.

It runs ``rabbitmqctl`` (one that the broker node accepts: console.rabbittools finds
it), or writes a definitions file to load with ``rabbitmqctl import_definitions FILE``
(or the ``load_definitions`` setting in ``rabbitmq.conf``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ROLES = ("node", "operator", "producer")


class ProvisionError(Exception):
    """A step failed (one line, no password)."""


@dataclass(frozen=True)
class Account:
    """A broker user for one role."""

    user: str
    password: str
    role: str


def permissions(prefix: str, role: str) -> tuple[str, str, str]:
    """The (configure, write, read) regexes of a role."""
    p = re.escape(prefix)
    if role == "node":
        return rf"^{p}\.", rf"^({p}\..*|amq\.default)$", rf"^{p}\."
    if role == "operator":
        return "^$", rf"^{p}\.control$", rf"^{p}\."
    if role == "producer":
        return "^$", rf"^{p}\.(commands|queries)$", "^$"
    raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")


def plan(prefix: str, vhost: str, accounts: list[Account], *,
         create_vhost: bool = True) -> list[list[str]]:
    """The ``rabbitmqctl`` argument lists that provision a deployment, in order."""
    steps: list[list[str]] = [["add_vhost", vhost]] if create_vhost else []
    for a in accounts:
        steps.append(["add_user", a.user, a.password])
        steps.append(["set_permissions", "-p", vhost, a.user, *permissions(prefix, a.role)])
    return steps


def replication_plan(prefix: str, vhost: str, nodes: list[str]) -> list[list[str]]:
    """The ``rabbitmq-queues`` argument lists that give every ``<prefix>.`` quorum queue
    of ``vhost`` a replica on each of ``nodes`` (a cluster's members).

    Queues declared after a cluster formed already have one on every member; this
    is for those declared before a node joined (run it again after adding one).
    """
    return [["grow", node, "all", "--vhost-pattern", f"^{re.escape(vhost)}$",
             "--queue-pattern", rf"^{re.escape(prefix)}\."] for node in sorted(nodes)]


def cluster_nodes(run: Callable[..., str]) -> list[str]:
    """The running members of the cluster ``run`` (a ``rabbitmqctl`` runner) reaches."""
    status = json.loads(run("cluster_status", "--formatter", "json"))
    return sorted(status.get("running_nodes", []))


def apply(steps: list[list[str]], run: Callable[..., str]) -> list[str]:
    """Run the steps with ``run(*args)``; an existing vhost is kept, an existing user
    gets the new password. Returns what was done, one line a step (no passwords).

    Only a failure that says the vhost or user exists is taken for that: any other
    (a node that refuses the tool, say) ends the run.

    Raises:
        ProvisionError: when a step fails otherwise.
    """
    done: list[str] = []
    for step in steps:
        try:
            run(*step)
            done.append(" ".join(step[:2]) if step[0] == "add_user" else " ".join(step))
        except subprocess.CalledProcessError as exc:
            exists = "already" in tool_said(exc).lower()
            if step[0] == "add_user" and exists:
                try:
                    run("change_password", step[1], step[2])
                except subprocess.CalledProcessError as again:
                    raise _failed(["change_password", step[1]], again) from again
                done.append(f"change_password {step[1]}")
            elif step[0] == "add_vhost" and exists:
                done.append(f"add_vhost {step[1]} (exists)")
            else:
                raise _failed(step[:2], exc) from exc
    return done


def _failed(what: list[str], exc: subprocess.CalledProcessError) -> ProvisionError:
    return ProvisionError(f"rabbitmqctl {' '.join(what)} failed with exit status "
                          f"{exc.returncode}: {tool_said(exc)}")


def tool_said(exc: subprocess.CalledProcessError) -> str:
    """The first line a failed tool printed that says something (not "Error:")."""
    for raw in f"{exc.stderr or ''}\n{exc.stdout or ''}".splitlines():
        line = raw.strip()
        if line and line.rstrip(":").lower() != "error":
            return line.removeprefix("Error: ")
    return "no message"


def rabbitmqctl(path: str, *, env: dict[str, str] | None = None,
                node: str | None = None) -> Callable[..., str]:
    """A runner for ``apply`` that calls the ``rabbitmqctl`` at ``path`` (with ``env``,
    against ``node``).

    Its ``CalledProcessError`` names the subcommand only: the arguments may hold a
    password, and the error may reach a log.
    """
    target = ["-n", node] if node else []

    def run(*args: str) -> str:
        try:
            out = subprocess.run([path, *target, *args], check=True, capture_output=True,
                                 text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
        except subprocess.CalledProcessError as exc:
            raise subprocess.CalledProcessError(exc.returncode, [path, args[0]], exc.stdout,
                                                exc.stderr) from None
        except subprocess.TimeoutExpired:
            raise subprocess.CalledProcessError(-1, [path, args[0]], "",
                                                "no answer within 60s") from None
        return out.stdout
    return run


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + pw))."""
    salt = salt if salt is not None else secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(prefix: str, vhost: str, accounts: list[Account]) -> dict[str, Any]:
    """A definitions document with the vhost, users (hashed passwords) and permissions."""
    return {
        "vhosts": [{"name": vhost}],
        "users": [{"name": a.user, "password_hash": password_hash(a.password),
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}
                  for a in accounts],
        "permissions": [dict(zip(("configure", "write", "read"),
                                 permissions(prefix, a.role), strict=True),
                             user=a.user, vhost=vhost) for a in accounts],
    }
