"""The restart benchmark runs and every crash is followed by a handled command."""

from __future__ import annotations

from pathlib import Path

from bench.restart import measure


def test_restart_benchmark_smoke(tmp_path: Path) -> None:
    figures = measure(crashes=5, history=5, tmp=tmp_path)
    assert figures["crash"]["n"] == 5 and figures["baseline"]["n"] == 5
