"""Configuration mistakes end a command with one line that says what to fix."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from config import ConfigError, load_settings, unknown_variables
from console.cli import app


def test_a_misspelled_setting_is_named_with_the_real_one() -> None:
    env = {"STAYBOOK_BROKER__PREFECH": "64", "STAYBOOK_BROKER__PREFETCH": "64",
           "STAYBOOK_CONFIG": "x.toml", "STAYBOOK_PROVISION_NODE_PASSWORD": "s",
           "PATH": "/bin"}
    assert unknown_variables(env) == ["STAYBOOK_BROKER__PREFECH"]
    with pytest.raises(ConfigError, match="did you mean STAYBOOK_BROKER__PREFETCH"):
        load_settings(env)


def test_nested_and_top_level_settings_are_known() -> None:
    env = {"STAYBOOK_DATABASE_URL": "sqlite://", "STAYBOOK_CLUSTER__DRAIN_SECONDS": "1",
           "STAYBOOK_SUPERVISION__ROOT__MAX_RESTARTS": "3", "staybook_log_level": "INFO"}
    assert unknown_variables(env) == []
    assert unknown_variables({"STAYBOOK_DATABASE_URL__X": "1"}) == [
        "STAYBOOK_DATABASE_URL__X"]


@pytest.mark.parametrize(("env", "needle"), [
    ({"STAYBOOK_BROKER__PREFECH": "64"},
     "unknown setting STAYBOOK_BROKER__PREFECH (did you mean STAYBOOK_BROKER__PREFETCH?)"),
    ({"STAYBOOK_BROKER__PREFETCH": "lots"}, "bad setting STAYBOOK_BROKER__PREFETCH"),
    ({"STAYBOOK_BROKER__PARTITIONS": "-1"}, "bad setting STAYBOOK_BROKER__PARTITIONS"),
])
@pytest.mark.parametrize("command", [["search", "--city", "Oslo"], ["ctl", "nodes"],
                                     ["db", "current"]])
def test_every_command_says_it_in_one_line(env: dict[str, str], needle: str,
                                           command: list[str]) -> None:
    result = CliRunner().invoke(app, command, env=env)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_a_cluster_is_a_comma_separated_list_of_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    urls = "amqp://u:p@h1:5672/%2F, amqp://u:p@h2:5672/%2F ,amqp://u:p@h3:5672/%2F"
    monkeypatch.setenv("STAYBOOK_BROKER__URL", urls)
    settings = load_settings()
    assert settings.broker.url.split(",") == [u.strip() for u in urls.split(",")]
    from broker.rabbitmq import connection_parameters
    hosts = [p.host for p in connection_parameters(settings.broker.url)]
    assert sorted(hosts) == ["h1", "h2", "h3"]
    assert " ".join(hosts) in " ".join(["h1", "h2", "h3"] * 2)  # a rotation of the list


@pytest.mark.parametrize("bad", ["http://u:s3cret@h1/", "amqp://u:s3cret@h1/,ftp://u:s3cret@h2",
                                 " , "])
def test_a_bad_broker_url_is_named_without_its_password(bad: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAYBOOK_BROKER__URL", bad)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "bad setting STAYBOOK_BROKER__URL" in str(err.value)
    assert "s3cret" not in str(err.value)


def test_redacted_urls_keep_users_and_hosts() -> None:
    from config import redact_url
    assert redact_url("amqp://u:pw@h1/%2F,amqp://v:pw@h2/%2F") == (
        "amqp://u:***@h1/%2F,amqp://v:***@h2/%2F")
    assert redact_url("amqp://h/%2F") == "amqp://h/%2F"
