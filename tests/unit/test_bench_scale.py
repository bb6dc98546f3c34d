"""The scale benchmark's pure parts: its seeded catalogue, targets and exit status."""

from __future__ import annotations

from typing import Any

from bench.dataset import APARTMENTS_PER_CITY, catalog
from bench.scale import exit_code, parse_args, percentiles, render, targets


def _report(**changes: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "config": {"apartments": 1000, "max_live": 100, "seed": 1, "store": "sqlite"},
        "load": None, "plan": {"lines": [], "city_by_index": True, "nights_by_key": True},
        "node": {"rss_idle_bytes": 1, "threads_idle": 40, "rss_max_bytes": 900 << 20,
                 "threads_max": 150, "samples": 3, "max_live": 100, "live_actors": 100,
                 "activations": 300, "passivations": 200},
        "commands": _commands(error=0),
        "queries": _queries(answered=10, p99=49.9),
        "store_queries": None, "node_exit_code": 0, "setup_error": None, "error": None}
    report.update(changes)
    return report


def _commands(*, error: int) -> dict[str, Any]:
    return {"commands": 300, "replies": 300, "distinct_apartments": 300, "rate_per_s": 9.0,
            "drained_s": 1.0, "latency_ms": {"p50": 1.0, "p99": 2.0},
            "status": {"ok": 300 - error, "rejected": 0, "error": error}}


def _queries(*, answered: int, p99: float) -> dict[str, Any]:
    return {"queries": 10, "answered": answered, "warmup": 2, "hits_mean": 3.0,
            "latency_ms": {"p50": 1.0, "p99": p99, "max": p99}}


def _met(report: dict[str, Any]) -> dict[str, bool | None]:
    return {name: met for name, _value, _target, met in targets(report)}


def test_the_targets_and_their_bounds() -> None:
    met = _met(_report())
    assert all(met.values()), met  # 150 threads: 40 idle + 100 cap + 10 exiting
    node = {**_report()["node"], "threads_max": 151, "rss_max_bytes": 1 << 30}
    met = _met(_report(node=node, queries=_queries(answered=9, p99=50.0)))
    assert met == {"node RSS max": False, "node threads max": False,
                   "search p99 (city + dates)": False, "search plan": True,
                   "commands answered": True, "queries answered": False}


def test_the_exit_status_is_about_answers_not_targets() -> None:
    slow = _report(queries=_queries(answered=10, p99=900.0))
    assert exit_code(slow) == 0
    assert exit_code(_report(queries=_queries(answered=9, p99=1.0))) == 1
    assert exit_code(_report(commands=_commands(error=1))) == 1
    assert exit_code(_report(node_exit_code=1)) == 1
    assert exit_code(_report(setup_error="no broker")) == 2
    assert "✗" in render(slow) and "search p99 (city + dates)" in render(slow)


def test_the_catalogue_is_seeded_with_a_long_tail_of_cities() -> None:
    a, b = catalog(20_000, seed=3), catalog(20_000, seed=3)
    assert a == b and len(a) == 20_000
    assert len(a.cities) == 20_000 // APARTMENTS_PER_CITY
    sizes = sorted((list(a.city_of).count(c) for c in range(len(a.cities))), reverse=True)
    assert sizes[0] < 20_000 * 0.05 and sizes[-1] > 0  # no city holds a large share
    assert set(a.capacity) <= set(range(1, 7))


def test_defaults_and_percentiles() -> None:
    args = parse_args(["--max-live", "7"])
    assert args.apartments == 1_000_000 and args.commands == 21
    assert percentiles([0.001 * i for i in range(1, 101)]) == {"p50": 50.0, "p99": 99.0,
                                                               "max": 100.0}
    assert percentiles([]) == {"p50": None, "p99": None, "max": None}
