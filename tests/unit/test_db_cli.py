"""``staybook db upgrade`` and ``staybook db current``, on SQLite and PostgreSQL.

The database comes from the settings (``STAYBOOK_DATABASE_URL``). Failures are one line
on stderr with exit code 1: no traceback, and never the password.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import make_url
from typer.testing import CliRunner

from console.cli import app
from store.db import head_revision, redact

ROOT = Path(__file__).resolve().parents[2]
HEAD = head_revision()


def staybook(url: str, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process with the store at ``url``: (exit code, stdout, stderr)."""
    result = CliRunner(env={"STAYBOOK_DATABASE_URL": url}).invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_upgrade_then_current(db_url: str) -> None:
    shown = redact(db_url)
    code, out, _ = staybook(db_url, "db", "current")
    if make_url(db_url).get_backend_name() == "sqlite":  # no file yet: not made by asking
        assert code == 1
        code, out, _ = staybook(db_url, "db", "upgrade")
    else:
        assert (code, out.strip()) == (0, f"{shown}: none (never migrated) "
                                          f"(behind {HEAD}: run staybook db upgrade)")
        code, out, _ = staybook(db_url, "db", "upgrade")
    assert (code, out.strip()) == (0, f"{shown}: upgraded from none to {HEAD}")
    code, out, _ = staybook(db_url, "db", "upgrade")
    assert (code, out.strip()) == (0, f"{shown}: already at {HEAD}")
    code, out, _ = staybook(db_url, "db", "current")
    assert (code, out.strip()) == (0, f"{shown}: {HEAD} (head)")


def test_a_missing_sqlite_file_is_reported_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.db"
    code, out, err = staybook(f"sqlite:///{path}", "db", "current")
    assert code == 1
    assert out == ""
    assert err.strip() == (f"error: cannot read the revision of sqlite:///{path}: "
                           f"no SQLite database at {path} (set STAYBOOK_DATABASE_URL, "
                           "or create it: staybook db upgrade)")
    assert not path.exists()


@pytest.mark.parametrize("command", ["upgrade", "current"])
def test_an_unreachable_server_is_one_line_without_the_password(command: str) -> None:
    url = "postgresql+psycopg://staybook:hunter2-secret@127.0.0.1:9/staybook"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAYBOOK_")}
    env["STAYBOOK_DATABASE_URL"] = url
    proc = subprocess.run([sys.executable, "-c", "from console.cli import main; main()",
                           "db", command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "error: cannot ") and "postgresql+psycopg://staybook:***@127.0.0.1:9/staybook" in lines[0]
    assert "hunter2" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unparseable_url_is_one_line() -> None:
    code, out, err = staybook("not a url :// at all", "db", "upgrade")
    assert code == 1
    assert out == ""
    assert err.strip() == ("error: cannot upgrade <unparseable database URL>: "
                           "Could not parse SQLAlchemy URL from given URL string")
