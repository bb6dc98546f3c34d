"""Provisioning's steps without a broker: which failures mean "exists", and what is said.

A node that refuses ``rabbitmqctl`` (its Erlang cookie) fails every step with exit
status 69; taking that for "the vhost exists" hid the cause behind a traceback.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.provision import Account, ProvisionError, apply, plan, rabbitmqctl

ACCOUNTS = [Account("n", "pw-s3cret", "node")]
REFUSED = "Failed to connect and authenticate to rabbit@vm in 60000 ms"


def _runner(fail: dict[str, tuple[int, str]]) -> tuple[list[str], Callable[..., str]]:
    ran: list[str] = []

    def run(*args: str) -> str:
        ran.append(args[0])
        if args[0] in fail:
            code, said = fail[args[0]]
            raise subprocess.CalledProcessError(code, ["rabbitmqctl", args[0]], "",
                                                f"Error:\n{said}\n")
        return ""
    return ran, run


def test_a_node_that_refuses_the_tool_stops_at_the_first_step_in_one_line() -> None:
    ran, run = _runner({cmd: (69, REFUSED) for cmd in ("add_vhost", "add_user",
                                                       "change_password")})
    with pytest.raises(ProvisionError) as caught:
        apply(plan("staybook", "v", ACCOUNTS), run)
    assert str(caught.value) == f"rabbitmqctl add_vhost v failed with exit status 69: {REFUSED}"
    assert ran == ["add_vhost"]


def test_an_existing_user_gets_the_new_password_and_a_refusal_there_is_one_line() -> None:
    ran, run = _runner({"add_user": (70, 'User "n" already exists')})
    assert apply(plan("staybook", "v", ACCOUNTS), run) == [
        "add_vhost v", "change_password n",
        r"set_permissions -p v n ^staybook\. ^(staybook\..*|amq\.default)$ ^staybook\."]
    assert ran == ["add_vhost", "add_user", "change_password", "set_permissions"]
    _ran, run = _runner({"add_user": (70, 'User "n" already exists'),
                        "change_password": (69, REFUSED)})
    with pytest.raises(ProvisionError) as caught:
        apply(plan("staybook", "v", ACCOUNTS), run)
    assert str(caught.value) == (
        f"rabbitmqctl change_password n failed with exit status 69: {REFUSED}")
    assert "s3cret" not in repr(caught.value.__cause__)


def test_the_runner_s_error_names_the_subcommand_but_never_its_arguments(
        tmp_path: Path) -> None:
    tool = tmp_path / "rabbitmqctl"
    tool.write_text(f"#!/bin/sh\necho Error: >&2\necho '{REFUSED}' >&2\nexit 69\n")
    tool.chmod(0o755)
    with pytest.raises(subprocess.CalledProcessError) as caught:
        rabbitmqctl(str(tool), node="rabbit@vm")("add_user", "n", "pw-s3cret")
    assert caught.value.returncode == 69 and caught.value.cmd == [str(tool), "add_user"]
    assert "s3cret" not in str(caught.value) and REFUSED in caught.value.stderr
