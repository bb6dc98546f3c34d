"""The settings model is the one source of defaults; the TOML operators read is made
from it, and the shipped copy is current."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from config import ConfigError, Settings, load_settings
from config.document import defaults_toml
from console.cli import app

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "staybook.toml"


def test_the_shipped_example_is_the_generated_one() -> None:
    assert SHIPPED.read_text() == defaults_toml(), (
        "deploy/staybook.toml is stale: staybook config defaults > deploy/staybook.toml")


def test_the_document_reads_back_as_the_defaults() -> None:
    text = defaults_toml()
    assert Settings.model_validate(tomllib.loads(text)) == Settings.model_construct()
    # Unset settings appear commented out, with an example.
    assert "# management_url = " in text and "# port = 9464" in text


def test_the_document_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAYBOOK_BROKER__PREFETCH", "7")
    assert Settings().broker.prefetch == 7
    assert "\nprefetch = 512\n" in defaults_toml()


def test_staybook_config_defaults_prints_it() -> None:
    result = CliRunner().invoke(app, ["config", "defaults"])
    assert result.exit_code == 0, result.output
    assert result.stdout == defaults_toml()


def test_only_the_model_gives_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no file and no variables, the settings are the field defaults."""
    monkeypatch.delenv("STAYBOOK_CONFIG", raising=False)
    assert load_settings({}) == Settings.model_construct()
    assert not (Path(__file__).resolve().parents[2] / "config" / "default.toml").exists()


def test_a_supervisor_given_in_part_keeps_its_other_defaults(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    file = tmp_path / "staybook.toml"
    file.write_text("[supervision.entities]\nmax_restarts = 50\n")
    monkeypatch.setenv("STAYBOOK_CONFIG", str(file))
    monkeypatch.setenv("STAYBOOK_SUPERVISION__INFRASTRUCTURE__MAX_RESTARTS", "7")
    sup = load_settings().supervision
    assert (sup.infrastructure.strategy, sup.infrastructure.max_restarts,
            sup.infrastructure.period_seconds, sup.infrastructure.backoff_min) == (
        "rest_for_one", 7, 10.0, 0.1)
    assert (sup.entities.max_restarts, sup.entities.backoff_min) == (50, 0.0)
    assert sup.root.max_restarts == 3


def test_a_file_and_the_environment_override_the_defaults(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    file = tmp_path / "staybook.toml"
    file.write_text('node_name = "from-file"\n[broker]\nprefetch = 64\nrelay_batch = 9\n')
    monkeypatch.setenv("STAYBOOK_CONFIG", str(file))
    monkeypatch.setenv("STAYBOOK_BROKER__PREFETCH", "32")
    s = load_settings()
    assert (s.node_name, s.broker.prefetch, s.broker.relay_batch, s.broker.heartbeat) == (
        "from-file", 32, 9, 30)


def test_a_bad_value_in_the_file_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    file = tmp_path / "staybook.toml"
    file.write_text("[broker]\nprefetch = 0\n")
    monkeypatch.setenv("STAYBOOK_CONFIG", str(file))
    with pytest.raises(ConfigError, match="bad setting STAYBOOK_BROKER__PREFETCH"):
        load_settings()
