"""`staybook serve` as an operator sees it: one line to start, one to stop, probes up.

A first run migrates a fresh store and takes every partition: none of that is news
worth a line at INFO (Alembic's context and each migration, each partition taken and
released); the summary line says what runs, and the last line what stopped it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import port_for

from tests.conftest import eventually, unique


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def test_a_first_run_prints_one_line_to_start_and_one_to_stop(
        amqp_url: str, tmp_path: Path) -> None:
    port = port_for.select_random()
    env = {**os.environ, "STAYBOOK_BROKER__URL": amqp_url, "PYTHONUNBUFFERED": "1",
           "STAYBOOK_BROKER__PREFIX": unique("t"), "STAYBOOK_NODE_NAME": "serve-n1",
           "STAYBOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}",
           "STAYBOOK_METRICS__PORT": str(port), "STAYBOOK_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen([sys.executable, "-m", "console.cli", "serve",
                             "--no-local-broker"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("staybook node serve-n1 serving on amqp://guest:***@"), first
        assert f"metrics http://127.0.0.1:{port}/metrics" in first, first
        eventually(lambda: _status(port, "/ready") == 200)
        assert _status(port, "/healthz") == 200
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0
        assert rest.splitlines() == ["staybook node serve-n1 stopped on SIGTERM"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
