"""The short fault drill (CI): every must-be-zero count of the checker is zero.

``make drill`` runs the long one (``python -m tests.faults.drill``). Both SIGKILL the
node, restart the broker, close every connection, meet a faulty gateway and inject
malformed messages while producers send booking commands; see tests/faults/drill.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.checker import MUST_BE_ZERO
from tests.faults.drill import report, run_drill

pytestmark = [pytest.mark.drill, pytest.mark.integration]


@pytest.mark.timeout(420)
def test_short_drill_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    seconds = float(os.environ.get("DRILL_SECONDS", "30"))
    figures = run_drill(seconds=seconds, producers=4, seed=7, workdir=tmp_path)
    print(report(figures))
    print("\n".join(figures.get("evidence", [])))  # the offenders' streams, if any
    # The drill did what it claims: faults of each kind, traffic, poison, payments.
    assert figures["fault_kill_node"] >= 2
    assert figures["fault_close_connections"] >= 1
    assert figures["fault_restart_broker"] >= 1
    assert figures["confirmed"] > 100
    assert figures["poison_confirmed"] > 0
    assert figures["payments_failed"] > 0 and figures["charges"] > 0
    # Every end of a booking's life was reached, and the replay checks had work.
    assert figures["reservations_confirmed"] > 0 and figures["refunds_issued"] > 0
    assert figures["cancelled_by_guest"] > 0 and figures["cancelled_by_system"] > 0
    assert figures["snapshots_checked"] > 0 and figures["processes_checked"] > 0
    assert figures["quiet"] == 1
    assert figures["producers_stuck"] == 0
    assert {k: figures[k] for k in MUST_BE_ZERO} == dict.fromkeys(MUST_BE_ZERO, 0)
    # Every command the broker confirmed was answered, re-sends from the inbox.
    assert figures["confirmed_unanswered"] == 0
    assert figures["resends_answered_from_inbox"] == figures["resends"]
