"""The benchmark's pure parts: the paced schedule, CPU arithmetic, the ceiling ratios
and their targets, the table, the exit status. Never a measured time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from bench import cpu, report
from bench.measure import Pacer
from bench.throughput import parse_args
from bench.workload import build_workload


# --- the paced schedule -------------------------------------------------------------
def test_message_i_is_due_at_t0_plus_i_over_rate() -> None:
    p = Pacer(rate=100.0, bound=1000)
    assert p.take(10.0, 0, 50) == 1  # the first goes at once and starts the schedule
    assert p.take(10.005, 1, 50) == 0
    assert p.due_at() == pytest.approx(10.01)
    assert p.take(10.01, 1, 50) == 1
    assert p.take(10.0399, 2, 50) == 2  # #2 at 10.02, #3 at 10.03
    assert p.due_at() == pytest.approx(10.04)
    assert p.sent == 4


def test_a_late_publisher_sends_what_is_overdue_and_keeps_the_schedule() -> None:
    p = Pacer(rate=100.0, bound=1000)
    p.take(0.0, 0, 1000)
    assert p.take(0.1, 1, 1000) == 10  # #1..#10, due 0.01..0.10
    assert p.max_lag_s == pytest.approx(0.09)
    assert p.take(0.11, 11, 1000) == 1  # back on the original schedule
    assert p.stalls == 0


def test_never_more_than_the_total() -> None:
    p = Pacer(rate=1000.0, bound=1000)
    p.take(0.0, 0, 5)
    assert p.take(1.0, 0, 5) == 4
    assert p.take(2.0, 0, 5) == 0 and p.sent == 5


def test_a_full_window_holds_the_schedule_back_instead_of_bursting_after() -> None:
    p = Pacer(rate=100.0, bound=3)
    p.take(0.0, 0, 1000)
    assert p.take(0.05, 1, 1000) == 2  # room for two more only: #1, #2
    assert p.take(0.06, 3, 1000) == 0  # full while #3 is due: a stall
    assert p.take(0.5, 3, 1000) == 0
    assert p.stalls == 1
    # Room again at 1.0: one message now, then one per 10 ms, not the 95 owed.
    assert p.take(1.0, 0, 1000) == 1
    assert p.stalled_s == pytest.approx(0.94)
    assert p.take(1.005, 0, 1000) == 0
    assert p.take(1.01, 1, 1000) == 1
    assert p.stalls == 1


def test_a_full_window_with_nothing_due_is_no_stall() -> None:
    p = Pacer(rate=10.0, bound=1)
    p.take(0.0, 0, 100)
    assert p.take(0.05, 1, 100) == 0
    assert p.stalls == 0
    assert p.take(0.1, 0, 100) == 1  # on schedule: #1 at 0.1
    assert p.figures() == {"rate_per_s": 10.0, "bound": 1, "stalls": 0, "stalled_s": 0.0,
                           "max_lag_ms": 0.0}


# --- the command line and the workload ----------------------------------------------
def test_paced_rates_parse_and_an_empty_value_skips_them() -> None:
    assert parse_args([]).paced == [150.0, 500.0]
    assert parse_args([]).paced_seconds == 15.0
    assert parse_args(["--paced", ""]).paced == []
    assert parse_args(["--paced", "200, 50.5"]).paced == [200.0, 50.5]


@pytest.mark.parametrize("bad", ["0", "-5", "fast", "150,nan"])
def test_a_paced_rate_must_be_a_positive_number(bad: str) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--paced", bad])


def test_an_id_prefix_gives_a_workload_entities_of_its_own() -> None:
    today = date(2030, 1, 7)
    a = build_workload(apartments=5, hot=1, commands=60, seed=1, today=today)
    b = build_workload(apartments=5, hot=1, commands=60, seed=1, today=today,
                       id_prefix="p1-")
    assert {c.apartment_id for c in a}.isdisjoint({c.apartment_id for c in b})
    assert {c.message_id for c in a}.isdisjoint({c.message_id for c in b})
    assert all(c.apartment_id.startswith("p1-apt-") for c in b)
    assert all(b"p1-res-" in c.body for c in b if c.type != "AddApartment")
    assert [c.type for c in a] == [c.type for c in b]


# --- CPU from /proc -----------------------------------------------------------------
def test_cpu_per_message_by_part_and_unavailable_parts() -> None:
    before = {"nodes": 1.0, "broker": None, "db": 2.0}
    after = {"nodes": 1.5, "broker": None, "db": 2.25}
    per = cpu.ms_per(before, after, 250)
    assert per == {"nodes": 2.0, "broker": None, "db": 1.0}
    assert cpu.total(per, ("nodes", "db")) == 3.0
    assert cpu.total(per, ("nodes", "broker")) is None
    assert cpu.ms_per({"x": 1.0}, {"x": 1.0}, 0) == {"x": 0.0}


def test_a_process_is_found_by_its_environment_and_its_tree_read() -> None:
    needle = f"BENCH_TEST_MARK={os.getpid()}-{time.time_ns()}"
    key, value = needle.split("=")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                             env={**os.environ, key: value})
    try:
        found: list[int] = []
        for _ in range(50):  # until the child has exec'd
            if found := cpu.pids_matching(needle):
                break
            time.sleep(0.05)
        assert found == [child.pid]
        reading = cpu.Meter({"child": found, "external": None}).read()
        assert reading["external"] is None
        assert isinstance(reading["child"], float) and reading["child"] >= 0
    finally:
        child.kill()
        child.wait()
    assert cpu.broker_pids(None) is None
    assert cpu.broker_pids(f"no-such-node-{time.time_ns()}@localhost") is None


# --- the ratios and their targets ---------------------------------------------------
def _lat(p50: float, p99: float) -> dict[str, float]:
    return {"p50": p50, "p99": p99, "max": p99 * 2, "mean": p50}


def _staybook(n: int, rate: float, p99: float, cpu_sum: float | None,
              **extra: Any) -> dict[str, Any]:
    return {"commands": n, "replies": n, "missing": 0, "unexpected": 0, "returned": 0,
            "completed_in_time": True, "rate_per_s": rate, "latency_ms": _lat(p99 / 4, p99),
            "status": {"ok": n - 10, "rejected": 10, "error": 0},
            "by_type": {"AddApartment": {"ok": 10}}, "reasons": {"rejected:full": 10},
            "cpu_ms_per_command": {"nodes": None if cpu_sum is None else cpu_sum - 1,
                                   "broker": None if cpu_sum is None else 1.0,
                                   "sum": cpu_sum, "by_node": {"bench-a": cpu_sum}},
            "cpu_ms_per_command_at_last_reply": {"sum": cpu_sum},
            "drained_s": 0.4, **extra}


def _report(*, sat_cpu: float | None = 4.0, raw_cpu: tuple[float | None, ...] = (1.0, 2.5),
            paced: tuple[tuple[float, float, float | None], ...] = ((150, 12.0, 5.0),
                                                                   (500, 80.0, 4.0)),
            raw_paced: tuple[tuple[float, float, float], ...] = ((150, 20.0, 3.0),
                                                                 (500, 30.0, 2.0))
            ) -> dict[str, Any]:
    rpc = [{"responders": i + 1, "commands": 1000, "replies": 1000, "missing": 0,
            "completed_in_time": True, "rate_per_s": 2000.0 * (i + 1),
            "latency_ms": _lat(5, 9),
            "cpu_ms_per_message": {"responders": c, "broker": c, "sum": c}}
           for i, c in enumerate(raw_cpu)]
    rpc += [{"responders": 1, "rate": r, "commands": int(r * 15), "replies": int(r * 15),
             "missing": 0, "completed_in_time": True, "rate_per_s": r,
             "latency_ms": _lat(p99 / 4, p99),
             "cpu_ms_per_message": {"responders": c / 2, "broker": c / 2, "sum": c}}
            for r, p99, c in raw_paced]
    pacing = {"rate_per_s": 0, "bound": 1500, "stalls": 0, "stalled_s": 0.0,
              "max_lag_ms": 1.5}
    return {
        "config": {"broker": "amqp://guest@x", "prefix": "benchX", "seed": 1, "window": 64,
                   "store": "sqlite", "node": "one process", "responders": [1, 2][:len(rpc)],
                   "paced_rates": [p[0] for p in paced], "paced_seconds": 15},
        "workload": {"AddApartment": 10, "RequestReservation": 990},
        "raw": {"messages": 1000, "received": 1000, "completed_in_time": True,
                "rate_per_s": 5000.0, "latency_ms": _lat(3, 6),
                "cpu_ms_per_message": {"broker": None}},
        "raw_rpc": rpc,
        "end_to_end": _staybook(1000, 1500.0, 900.0, sat_cpu,
                                backlog_after_last_reply={"benchX.search": 3}),
        "paced": [{"rate": r, **_staybook(int(r * 15), r, p99, c, pacing=pacing)}
                  for r, p99, c in paced],
        "ratio": 0.3, "timed_out": False, "node_exit_code": 0, "setup_error": None,
        "error": None, "total_s": 12.0,
    }


def test_staybook_against_the_ceiling_with_the_targets() -> None:
    rows = {r["name"]: r for r in report.against_ceiling(_report())}
    assert list(rows) == [
        "CPU/cmd saturation / raw, 1 responder", "CPU/cmd saturation / raw, 2 responders",
        "cmd/s saturation / best raw cmd/s", "reply p99 ms at paced 500/s",
        "CPU/cmd paced 150/s / saturation", "raw: CPU/msg paced 150/s / saturation",
        "raw: reply p99 ms at paced 500/s"]
    one, two = rows["CPU/cmd saturation / raw, 1 responder"], \
        rows["CPU/cmd saturation / raw, 2 responders"]
    assert (one["value"], one["met"]) == (4.0, False)
    assert (two["value"], two["met"]) == (1.6, True)
    rate = rows["cmd/s saturation / best raw cmd/s"]
    assert (rate["value"], rate["met"]) == (0.375, False)  # best raw: 4000/s, 2 responders
    p99 = rows["reply p99 ms at paced 500/s"]
    assert (p99["value"], p99["met"], p99["target"]) == (80.0, False, "< 50 ms")
    paced = rows["CPU/cmd paced 150/s / saturation"]
    assert (paced["value"], paced["met"]) == (1.25, True)
    # The bare responder's own figures at the paced rates: a reference, no verdict.
    floor = rows["raw: CPU/msg paced 150/s / saturation"]
    assert (floor["value"], floor["met"], floor["target"]) == (3.0, None, "reference")
    assert rows["raw: reply p99 ms at paced 500/s"]["value"] == 30.0


def test_no_ratio_and_no_verdict_where_a_cpu_is_unavailable() -> None:
    rows = {r["name"]: r for r in report.against_ceiling(_report(sat_cpu=None))}
    for name in ("CPU/cmd saturation / raw, 1 responder", "CPU/cmd paced 150/s / saturation"):
        assert rows[name]["value"] is None and rows[name]["met"] is None
    assert rows["cmd/s saturation / best raw cmd/s"]["met"] is False  # rates still compare


def test_without_raw_or_paced_runs_only_what_can_be_compared() -> None:
    rows = report.against_ceiling(_report(raw_cpu=(), paced=(), raw_paced=()))
    assert [(r["name"], r["value"], r["met"]) for r in rows] == [
        ("cmd/s saturation / best raw cmd/s", None, None)]


def test_the_table_shows_every_run_the_ratios_and_their_markers() -> None:
    r = _report()
    r["against_ceiling"] = report.against_ceiling(r)
    text = report.render(r)
    lines = text.splitlines()
    for name in ("raw publish/consume (no reply)", "raw request/reply, 1 responder",
                 "raw request/reply, 2 responders", "raw paced 150/s, 1 responder",
                 "raw paced 500/s, 1 responder", "Staybook at saturation",
                 "Staybook paced 150/s", "Staybook paced 500/s"):
        assert sum(line.strip().startswith(name) for line in lines) == 1, name
    raw = next(line for line in lines if "raw publish/consume" in line)
    assert raw.split()[-3:] == ["-", "-", "-"]  # no procs, an unreadable broker, no sum
    sat = next(line for line in lines if line.strip().startswith("Staybook at saturation"))
    assert sat.split()[-3:] == ["3.00", "1.00", "4.00"]
    marks = [line for line in lines if "target" in line and line.startswith("    ")]
    assert len(marks) == 7
    assert [m.split()[-1] for m in marks] == ["✗", "✓", "✗", "✗", "✓", "reference",
                                              "reference"]
    assert "paced 500/s: ok 7490, rejected 10, error 0; missing 0" in text


def test_the_exit_status_is_about_answers_not_targets() -> None:
    assert report.exit_code(_report(), skip_raw=False) == 0  # every target but two missed
    missing = _report()
    missing["paced"][0]["replies"] -= 1
    missing["paced"][0]["missing"] = 1
    assert report.exit_code(missing, skip_raw=False) == 1
    erred = _report()
    erred["paced"][1]["status"]["error"] = 1
    assert report.exit_code(erred, skip_raw=False) == 1
    short_rpc = _report()
    short_rpc["raw_rpc"][1]["replies"] = 999
    assert report.exit_code(short_rpc, skip_raw=False) == 1
    assert report.exit_code(short_rpc, skip_raw=True) == 0
    no_raw_paced = _report()
    no_raw_paced["raw_rpc"].pop()
    assert report.exit_code(no_raw_paced, skip_raw=False) == 1  # a raw paced rate never ran
    skipped = _report()
    skipped["paced"].pop()
    assert report.exit_code(skipped, skip_raw=False) == 1  # a paced rate never ran


def test_thread_shares_are_the_busiest_groups_per_command() -> None:
    from bench.throughput import thread_shares
    before = {"n1": {"store-writer": 1.0, "consumer-pN": 2.0, "idle": 0.5}}
    after = {"n1": {"store-writer": 1.5, "consumer-pN": 3.0, "idle": 0.5, "new-N": 0.1},
             "n2": {"relay": 0.2}}
    shares = thread_shares(before, after, 1000, top=2)
    assert shares == {"n1": [("consumer-pN", 1.0), ("store-writer", 0.5)],
                      "n2": [("relay", 0.2)]}


def test_the_fence_bench_measures_each_kind_of_commit(tmp_path: Path) -> None:
    from bench.fence import measure

    figures = measure(streams=40, burst=16, workdir=tmp_path)
    assert list(figures) == ["events", "no-op, unfenced", "no-op, fenced",
                             "mixed (append + fenced no-op)"]
    assert all(wall > 0 and cpu >= 0 for wall, cpu in figures.values())


# --- the floor: its plan, its files, Staybook beside it ------------------------------
def _floor_run(n: int, rate: float, p99: float, procs: float, broker: float,
               **extra: Any) -> dict[str, Any]:
    return {"commands": n, "replies": n, "missing": 0, "unexpected": 0, "returned": 0,
            "completed_in_time": True, "rate_per_s": rate, "latency_ms": _lat(p99 / 4, p99),
            "status": {"ok": n - 10, "rejected": 10, "error": 0},
            "cpu_ms_per_command": {"floor": procs, "broker": broker, "sum": procs + broker,
                                   "by_process": {"commands": procs, "events": 0.0}},
            **extra}


STAYBOOK_COUNTS = {"publish": 3.45, "deliver": 2.72, "ack": 2.71, "confirm": 1.44}
FLOOR_COUNTS = {"publish": 3.49, "deliver": 2.65, "ack": 2.65, "confirm": 1.49}


def _with_floor(r: dict[str, Any], floor_counts: dict[str, float] | None = FLOOR_COUNTS,
                staybook_counts: dict[str, float] | None = STAYBOOK_COUNTS) -> dict[str, Any]:
    """``r`` (Staybook: 3 + 1 ms/cmd, 1500/s; paced 150/s: p99 12 ms, 5 ms/cmd) with a floor
    of 1 + 1 ms/cmd at 3000/s, and at 150/s p99 6 ms and 1 + 1 ms/cmd."""
    r["end_to_end"]["messages_per_command"] = staybook_counts
    r["floor"] = {"prefix": "benchX-floor",
                  "end_to_end": _floor_run(1000, 3000.0, 20.0, 1.0, 1.0,
                                           messages_per_command=floor_counts,
                                           own_counts_per_command=FLOOR_COUNTS),
                  "paced": [{"rate": rate, **_floor_run(int(rate * 15), rate, 6.0, 1.0, 1.0)}
                            for rate in (150, 500)]}
    return r


def test_staybook_beside_the_floor_with_the_targets() -> None:
    rows = {r["name"]: r for r in report.against_floor(_with_floor(_report()))}
    assert {n: (r["staybook"], r["floor"], r["ratio"], r["met"]) for n, r in rows.items()} == {
        "CPU ms/cmd saturation, total": (4.0, 2.0, 2.0, True),
        "CPU ms/cmd saturation, processes": (3.0, 1.0, 3.0, True),
        "CPU ms/cmd saturation, broker": (1.0, 1.0, 1.0, True),
        "cmd/s saturation": (1500.0, 3000.0, 0.5, False),
        "reply p99 ms paced 150/s": (12.0, 6.0, 2.0, True),
        "CPU ms/cmd paced 150/s, total": (5.0, 2.0, 2.5, False)}
    assert rows["cmd/s saturation"]["target"] == ">= 75%"
    assert report.against_floor(_report()) == []  # no floor run, no rows


def test_messages_per_command_agree_within_ten_percent_or_not() -> None:
    counts = report.message_counts(_with_floor(_report()))
    assert counts is not None
    assert counts["source"] == "management API" and counts["agree"] is True
    assert counts["difference"] == {"publish": -0.011, "deliver": 0.026, "ack": 0.023,
                                    "confirm": -0.034}
    one_confirm = {**FLOOR_COUNTS, "confirm": 1.0}
    counts = report.message_counts(_with_floor(_report(), floor_counts=one_confirm))
    assert counts is not None and counts["agree"] is False
    # No management API: the floor's own counters, Staybook's unknown, no verdict.
    counts = report.message_counts(_with_floor(_report(), None, None))
    assert counts == {"source": "own counters", "staybook": None, "floor": FLOOR_COUNTS,
                      "difference": None, "agree": None}


def test_the_table_shows_the_floor_its_ratios_and_the_counts() -> None:
    r = _with_floor(_report())
    r["against_ceiling"] = report.against_ceiling(r)
    r["against_floor"] = report.against_floor(r)
    r["message_counts"] = report.message_counts(r)
    lines = report.render(r).splitlines()
    for name in ("floor at saturation", "floor paced 150/s", "floor paced 500/s"):
        assert sum(line.strip().startswith(name) for line in lines) == 1, name
    total = next(line for line in lines if "CPU ms/cmd saturation, total" in line)
    assert total.split()[-6:] == ["4.00", "2.00", "2.00", "<=", "2x", "✓"]
    apart = next(line for line in lines if line.strip().startswith("apart"))
    assert apart.split()[1:5] == ["-1%", "+3%", "+2%", "-3%"] and apart.endswith("yes")
    assert report.exit_code(r, skip_raw=False) == 0
    r["floor"]["paced"][0]["missing"] = 1
    assert report.exit_code(r, skip_raw=False) == 1  # the floor must answer every command


def test_the_plan_decides_as_the_apartments_would_and_counts_the_deliveries() -> None:
    from bench.floorplan import FOLLOW_ONS, Step, deliveries, fanout, plan

    routes = fanout()
    assert sorted(routes["ReservationAccepted"]) == ["notifier", "payment", "reservations"]
    assert "CommandRejected" not in routes and "NotificationSent" not in routes
    accepted = {"m": Step("ok", "", ("ReservationAccepted", "DatesBooked"), ())}
    # 3 + 1 for the acceptance and the dates, payment's charge to the reservation
    # process, whose confirmation goes to the notifier: 6.
    assert FOLLOW_ONS["payment"] == {"ReservationAccepted": "PaymentSucceeded"}
    assert deliveries(accepted, routes) == 6
    today = date(2030, 1, 7)
    commands = build_workload(apartments=3, hot=1, commands=60, seed=1, today=today)
    steps = plan(commands, today)
    assert list(steps) == [c.message_id for c in commands]
    adds = [steps[c.message_id] for c in commands if c.type == "AddApartment"]
    assert adds == [Step("ok", "", ("ApartmentAdded",), ())] * 3
    refused = [s for s in steps.values() if s.status == "rejected"]
    assert refused and all(s.reason for s in refused)
    assert any(s.published[:2] == ("ReservationAccepted", "DatesBooked")
               for s in steps.values())


def test_the_floor_reads_its_plan_and_slices_payloads(tmp_path: Path) -> None:
    from bench.floor import payload_of, read_plan
    from bench.floorplan import Step, write_plan

    write_plan({"a": Step("ok", "", ("X", "Y"), ("Z",)),
                "b": Step("rejected", "not_pending", (), ("CommandRejected",))},
               tmp_path / "plan.tsv")
    assert read_plan(tmp_path / "plan.tsv") == {
        "a": (b"ok", b"null", [b"X", b"Y"], [b"Z"]),
        "b": (b"rejected", b'"not_pending"', [], [b"CommandRejected"])}
    [c] = build_workload(apartments=1, hot=0, commands=1, seed=1, today=date(2030, 1, 7))
    assert payload_of(c.body).startswith(b'{"owner_id":"owner-00000"')
    assert payload_of(c.body).endswith(b"}")


def test_a_sigterm_unwinds_a_benchmark_so_its_broker_is_stopped() -> None:
    import signal

    from bench.procs import unwound_by_sigterm

    before = signal.getsignal(signal.SIGTERM)
    stopped: list[str] = []
    with pytest.raises(SystemExit) as exc:
        try:
            with unwound_by_sigterm():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this ends
        finally:
            stopped.append("broker")
    assert exc.value.code == 128 + signal.SIGTERM
    assert stopped == ["broker"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_scale_out_table_shows_each_nodes_share() -> None:
    from bench.nodes import node_shares

    shares = node_shares({"node-1": 0.6, "node-2": 0.3, "node-3": 0.3})
    assert shares == {"node-1": 0.5, "node-2": 0.25, "node-3": 0.25}
    assert node_shares({"node-1": 0.6, "node-2": None}) is None  # not visible: no share
    row = {"nodes": 3, "rate_per_s": 500.0, "latency_ms": {"p50": 1.0, "p99": 2.0},
           "cpu_ms_per_command": {"nodes": 1.2, "broker": 0.5, "nodes+broker": 1.7,
                                  "database": 0.3},
           "cpu_ratio_to_1_node": 1.2, "node_share": shares}
    line = report.render_nodes([row]).splitlines()[-1]
    assert line.endswith("1.20  50% 25% 25%"), line
