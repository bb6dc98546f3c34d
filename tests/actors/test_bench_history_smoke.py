"""The history benchmark runs, tiny: its histories have the sizes asked, and it prints
every figure for every size (never a measured time in an assertion)."""

from __future__ import annotations

from functools import reduce
from pathlib import Path

import pytest

from bench.history import RULES, TIMED, commands, main, measure, render
from rules.apartment import Apartment, decide, evolve


@pytest.mark.parametrize("n", [5, 6, 13, 14, 40])
def test_a_history_has_exactly_the_events_asked(n: int) -> None:
    state, made = Apartment(apartment_id="a"), 0
    for c in commands(n, "a."):
        events = decide(state, c, RULES)
        state = reduce(evolve, events, state)
        made += len(events)
    assert made == n
    assert len(state.pending) == 4


def test_the_benchmark_measures_every_figure_for_every_size(tmp_path: Path) -> None:
    figures = measure([5, 40], every=5, tmp=tmp_path, budget=0.0)
    assert sorted(figures) == [5, 40]
    assert figures[40]["events"] == 40 and 0 < figures[40]["snapshot at"] <= 40
    assert figures[40]["tail"] < 5
    for n in (5, 40):
        assert all(figures[n][key] > 0 for key in TIMED)
    table = render(figures, every=5)
    assert all(key in table for key in TIMED) and "40 events" in table


def test_the_command_line_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sizes", "5,20", "--snapshot-every", "5", "--budget", "0"]) == 0
    out = capsys.readouterr().out
    assert "rehydrate" in out and "20 events" in out
