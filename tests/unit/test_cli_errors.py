"""Every CLI mistake or outage is one line on stderr: no traceback, no password."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from console.cli import app, run

DOWN = {"STAYBOOK_BROKER__URL": "amqp://user:s3cret@127.0.0.1:1/%2F"}


@pytest.mark.parametrize(("args", "needle"), [
    (["send", "AddApartment", "a1", '{"owner_id": "o", "city": "Oslo", "title": "T", '
      '"price_per_night": 100, "currency": "EUR", "capacity": 2}'], "cannot reach RabbitMQ at"),
    (["send", "AddApartment", "a1", '{"owner_id": "o"}'], "invalid AddApartment: city"),
    (["search", "--city", "Oslo"], "cannot reach RabbitMQ at"),
    (["serve", "--no-local-broker", "--wait", "1"], "did not answer in 1s"),
    (["send", "AddApartment", "a1", "{bad"], "the payload is not JSON"),
    (["send", "Nope", "a1", "{}"], "unknown message type Nope; send posts commands: "),
    (["send", "AddApartmnt", "a1", "{}"], "unknown message type AddApartmnt (did you mean "
     "AddApartment?); send posts commands: AddApartment, "),
    (["send", "ApartmentAdded", "apt-3", "{}"], "staybook: ApartmentAdded is an event; send "
     "posts commands: AddApartment, "),
    (["send", "CommandResult", "a1", "{}"], "staybook: CommandResult is a reply; send posts "
     "commands: AddApartment, "),
    (["send", "SearchApartments", "a1", "{}"], "SearchApartments is a query (staybook search "
     "asks it)"),
    (["search", "--start", "tomorrow"], "--start 'tomorrow' is not a date"),
    (["search", "--start", "2030-01-10", "--end", "2030-01-05"],
     "--end 2030-01-05 is not after --start 2030-01-10"),
    (["search", "--guests", "0"], "greater than or equal to 1"),
    (["search", "--after", "1", "--wait-ms", "30001"], "less than or equal to 30000"),
    (["search", "--after", "0"], "greater than or equal to 1"),
])
def test_one_clear_line(args: list[str], needle: str) -> None:
    """Mistakes and outages before anything is sent: one line, exit 2."""
    result = CliRunner().invoke(app, args, env=DOWN)
    assert result.exit_code == 2, result.output
    # No message_id line either: none of these was sent.
    lines = [line for line in result.stderr.splitlines() if not line.startswith("waiting up to")]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.output and "s3cret" not in result.output


# --- every command of the operator's ctl, with the broker out of reach ----------------
CTL_DOWN = ["cannot reach RabbitMQ at amqp://user:***@127.0.0.1:1/%2F (connection refused)",
            "check --url or STAYBOOK_CONSOLE_URL"]


@pytest.mark.parametrize("args", [
    ["nodes"], ["partitions"], ["tree"], ["actors"], ["inspect", "apt-1"],
    ["history", "apt-1"], ["restart", "apt-1"], ["stop", "apt-1"], ["crash", "apt-1"],
    ["queues"], ["threads"], ["dlq", "list"], ["dlq", "show", "1"], ["dlq", "replay", "1"],
    ["dlq", "replay", "--all"], ["dlq", "purge", "--yes"], ["repair", "--check"],
    ["repair", "--apply"],
])
def test_every_ctl_command_says_in_one_line_that_the_broker_is_out_of_reach(
        args: list[str]) -> None:
    result = CliRunner().invoke(app, ["ctl", "--wait", "0.2", *args], env=DOWN)
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and all(n in lines[0] for n in CTL_DOWN), result.stderr
    assert "Traceback" not in result.output and "s3cret" not in result.output


@pytest.mark.parametrize(("args", "needle"), [
    (["dlq", "replay"], "give a dead letter ID or --all"),
    (["dlq", "purge"], "pass --yes (there is no terminal to ask on)"),
    (["dlq", "list", "--limit", "0"], "--limit must be between 1 and 1000"),
    (["repair"], "give --check or --apply"),
    (["repair", "--check", "--apply"], "give --check or --apply"),
    (["repair", "--check", "--limit", "1001"], "--limit must be between 1 and 1000"),
])
def test_ctl_mistakes_are_one_line_before_any_connection(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(app, ["ctl", *args], env=DOWN)
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_the_console_does_not_open_on_a_broker_it_cannot_reach() -> None:
    result = CliRunner().invoke(app, ["console"], env=DOWN)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and CTL_DOWN[0] in lines[0], result.stderr


def test_provisioning_without_a_terminal_names_the_missing_password() -> None:
    env = {k: "" for k in ("STAYBOOK_PROVISION_NODE_PASSWORD",
                           "STAYBOOK_PROVISION_OPERATOR_PASSWORD",
                           "STAYBOOK_PROVISION_PRODUCER_PASSWORD")}
    result = CliRunner().invoke(app, ["broker", "provision", "--definitions", "/dev/null"],
                                env=env)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        "staybook: no password for the node user: set STAYBOOK_PROVISION_NODE_PASSWORD "
        "(there is no terminal to ask on)"]


# --- usage mistakes, as the installed command prints them -----------------------------
@pytest.mark.parametrize(("args", "line"), [
    (["cluster", "--nodes", "0"], "staybook cluster: Invalid value for '--nodes': Input "
     "should be greater than or equal to 1 (see staybook cluster --help)"),
    (["catalog", "--bogus"], "staybook catalog: No such option: --bogus "
     "(see staybook catalog --help)"),
    (["ctl", "bogus"], "staybook ctl: No such command 'bogus'. (see staybook ctl --help)"),
    (["send"], "staybook send: Missing argument 'command_type'. (see staybook send --help)"),
    (["demo", "--scenario", "nope"], "staybook demo: Invalid value: scenario is booking or "
     "lifecycle (see staybook demo --help)"),
    (["db", "upgrade", "--bogus"], "staybook db upgrade: No such option: --bogus "
     "(see staybook db upgrade --help)"),
    (["broker", "start", "now"], "staybook broker start: Got unexpected extra argument(s) "
     "(now) (see staybook broker start --help)"),
])
def test_a_usage_mistake_is_one_line_that_says_where_help_is(
        args: list[str], line: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(args) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [line], err


def test_send_lists_every_command_it_posts_and_no_other_kind() -> None:
    from messages import Kind
    from messages.registry import types_of

    result = CliRunner().invoke(app, ["send", "ApartmentAdded", "apt-3", "{}"], env=DOWN)
    offered = result.stderr.strip().split("send posts commands: ", 1)[1].split(", ")
    assert offered == types_of(Kind.COMMAND)
    assert "ApartmentAdded" not in offered and "SearchApartments" not in offered
