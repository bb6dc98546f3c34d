"""The short cluster drill (CI): three nodes on PostgreSQL, killed, added and removed.

``make drill-cluster`` runs the long one (``python -m tests.faults.cluster_drill``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import drop_postgresql_database, postgresql_url
from tests.faults.cluster_drill import CLUSTER_MUST_BE_ZERO, report, run_cluster_drill

pytestmark = [pytest.mark.drill, pytest.mark.integration, pytest.mark.postgresql]


@pytest.mark.timeout(600)
def test_short_cluster_drill_loses_duplicates_and_overlaps_nothing(
        tmp_path: Path, postgresql_proc: Any) -> None:
    seconds = float(os.environ.get("CLUSTER_DRILL_SECONDS", "35"))
    url = postgresql_url(postgresql_proc)
    try:
        figures = run_cluster_drill(seconds=seconds, db_url=url, producers=4, seed=11,
                                    workdir=tmp_path)
    finally:
        drop_postgresql_database(postgresql_proc, url)
    print(report(figures))
    print("\n".join(figures.get("evidence", [])))  # the offenders' streams, if any
    assert figures["fault_kill_node"] >= 2
    assert figures["fault_add_node"] >= 1 and figures["fault_remove_node"] >= 1
    assert figures["confirmed"] > 100 and figures["accepted"] > 0
    assert figures["cancelled_by_guest"] > 0 and figures["cancelled_by_system"] > 0
    assert figures["reservations_confirmed"] > 0 and figures["snapshots_checked"] > 0
    # Each kill hands the victim's partitions (16 over three nodes) to the others.
    assert figures["partition_moves"] >= figures["fault_kill_node"]
    assert figures["quiet"] == 1 and figures["producers_stuck"] == 0
    assert {k: figures[k] for k in CLUSTER_MUST_BE_ZERO} == dict.fromkeys(
        CLUSTER_MUST_BE_ZERO, 0)
    assert figures["confirmed_unanswered"] == 0
    assert len(figures["failovers"]) == figures["fault_kill_node"]  # each one measured
