"""The short store drill (CI): PostgreSQL restarted, killed and cut off under traffic.

``make drill-store`` runs the whole one (``python -m tests.faults.store_drill``): an
immediate restart and outages of 5 and 30 s as well.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import postgresql_installed
from tests.faults.store_drill import STORE_MUST_BE_ZERO, faults, report, run_store_drill

pytestmark = [pytest.mark.drill, pytest.mark.integration, pytest.mark.postgresql]

# How long recovery took is printed, not asserted: CI machines are noisy.
TIMED = ("slow_recoveries",)


@pytest.mark.timeout(600)
def test_short_store_drill_rides_out_every_outage(tmp_path: Path) -> None:
    if not postgresql_installed():
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    figures = run_store_drill(workdir=tmp_path, short=True, producers=3, seed=5,
                              settle=2.0)
    print(report(figures))
    rows = figures["faults_table"]
    assert [r["fault"] for r in rows] == [f.name for f in faults(short=True)]
    assert all(r["without_service_s"] is not None for r in rows)  # service came back
    assert figures["confirmed"] > 100 and figures["accepted"] > 0
    assert figures["quiet"] == 1 and figures["producers_stuck"] == 0
    counts = [k for k in STORE_MUST_BE_ZERO if k not in TIMED]
    assert {k: figures[k] for k in counts} == dict.fromkeys(counts, 0)
