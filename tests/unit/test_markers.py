"""The ``integration`` marker really is on every test that needs a broker.

``pytest -m "not integration"`` is how a run without RabbitMQ skips them; a test the
marker misses would be collected and fail for want of a broker.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_not_integration_selects_nothing_under_integration_and_faults() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/integration", "tests/faults",
         "-m", "not integration", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 5, run.stdout + run.stderr  # 5: no tests collected
    assert "no tests collected" in run.stdout
    assert " deselected" in run.stdout  # there were tests, all of them deselected
