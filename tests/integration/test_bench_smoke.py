"""The throughput benchmark, tiny, on the private broker: correctness only, never timing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import throughput, workload

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("split", [False, True], ids=["one-process", "two-roles"])
def test_the_benchmark_gets_a_reply_for_every_command(
        amqp_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], split: bool) -> None:
    out = tmp_path / "bench.json"
    rc = throughput.main(["--amqp-url", amqp_url, "--apartments", "10", "--hot", "2",
                          "--commands", "300", "--window", "64", "--timeout", "90",
                          "--paced", "200", "--paced-seconds", "2",
                          "--json-out", str(out),
                          # The floor runs beside the split node only: the smoke stays short.
                          *(["--split"] if split else ["--skip-floor"])])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["setup_error"] is None and report["error"] is None, report
    assert not report["timed_out"]
    e2e = report["end_to_end"]
    assert e2e["commands"] == 300
    assert e2e["replies"] == 300 and e2e["missing"] == 0 and e2e["unexpected"] == 0
    assert e2e["status"]["error"] == 0
    assert e2e["status"]["ok"] + e2e["status"]["rejected"] == 300
    assert e2e["by_type"]["AddApartment"] == {"ok": 10}
    assert report["raw"]["received"] == 300
    assert report["ratio"] is not None
    assert "ratio end-to-end / raw" in printed
    assert report["node_exit_code"] == 0
    assert rc == 0
    _assert_ceiling_and_paced(report, printed, split)
    if split:
        _assert_floor(report, printed)
    else:
        assert report["floor"] is None and report["against_floor"] == []


def _assert_floor(report: dict[str, Any], printed: str) -> None:
    """The floor answered every command as Staybook did, and did the work it planned."""
    floor = report["floor"]
    runs = [floor["end_to_end"], *floor["paced"]]
    assert [r["commands"] for r in runs] == [300, 400]
    for run in runs:
        assert run["replies"] == run["commands"] and run["missing"] == 0
        assert run["unexpected"] == 0 and run["status"]["error"] == 0
        assert run["drained_s"] is not None
        assert {p["exit_code"] for p in run["processes"].values()} == {0}
        n = run["commands"]
        own = run["own_counts_per_command"]
        # Every command and every handler delivery once, each acked; each published
        # event confirmed (nothing nacked or returned).
        assert own["deliver"] == round(run["expected_deliveries"] / n, 3)
        assert own["ack"] == own["deliver"]
        counters = [p["counters"] for p in run["processes"].values()]
        assert sum(c["nacks"] + c["returns"] for c in counters) == 0
        assert own["confirm"] > 1.0
    # The same decisions as Staybook's: the plan is the rules'.
    assert floor["end_to_end"]["by_type"] == report["end_to_end"]["by_type"]
    counts = report["message_counts"]
    assert counts["source"] == "own counters" and counts["staybook"] is None
    assert [r["name"] for r in report["against_floor"]] == [
        "CPU ms/cmd saturation, total", "CPU ms/cmd saturation, processes",
        "CPU ms/cmd saturation, broker", "cmd/s saturation", "reply p99 ms paced 200/s",
        "CPU ms/cmd paced 200/s, total"]
    for label in ("floor at saturation", "floor paced 200/s", "Staybook against the floor",
                  "messages per command at saturation (own counters)"):
        assert label in printed


def _assert_ceiling_and_paced(report: dict[str, Any], printed: str, split: bool) -> None:
    """The raw request/reply runs, the CPU figures and the paced run, by structure."""
    rpc = report["raw_rpc"]
    assert [(r["responders"], r.get("rate")) for r in rpc] == [(1, None), (2, None), (1, 200)]
    for r in rpc:
        n = 400 if r.get("rate") else 300  # the paced run: 2 s at 200/s
        assert r["replies"] == r["commands"] == n and r["missing"] == 0
        assert r["status"] == {"ok": n, "rejected": 0, "error": 0}
        cpu = r["cpu_ms_per_message"]
        assert isinstance(cpu["responders"], float) and cpu["responders"] >= 0
        assert cpu["broker"] is None and cpu["sum"] is None  # an external broker: unseen
    e2e = report["end_to_end"]
    names = ["bench-events", "bench-commands"] if split else ["bench-commands-events"]
    for run in [e2e, *report["paced"]]:
        cpu = run["cpu_ms_per_command"]
        assert isinstance(cpu["nodes"], float) and cpu["nodes"] >= 0
        assert cpu["broker"] is None and cpu["sum"] is None
        assert sorted(cpu["by_node"]) == sorted(names)
        assert run["drained_s"] is not None
    [paced] = report["paced"]
    assert paced["rate"] == 200 and paced["commands"] == 400
    assert paced["replies"] == 400 and paced["missing"] == 0 and paced["unexpected"] == 0
    assert paced["status"]["error"] == 0
    assert paced["status"]["ok"] + paced["status"]["rejected"] == 400
    assert paced["by_type"]["AddApartment"] == {"ok": 10}  # its own apartments: all new
    assert paced["pacing"]["rate_per_s"] == 200 and paced["pacing"]["bound"] >= 64
    ceiling = report["against_ceiling"]
    assert [c["name"] for c in ceiling] == [
        "CPU/cmd saturation / raw, 1 responder", "CPU/cmd saturation / raw, 2 responders",
        "cmd/s saturation / best raw cmd/s", "reply p99 ms at paced 200/s",
        "CPU/cmd paced 200/s / saturation", "raw: CPU/msg paced 200/s / saturation",
        "raw: reply p99 ms at paced 200/s"]
    assert ceiling[0]["value"] is None and ceiling[0]["met"] is None  # no broker CPU
    for label in ("raw request/reply, 1 responder", "raw request/reply, 2 responders",
                  "raw paced 200/s, 1 responder",
                  "Staybook at saturation", "Staybook paced 200/s",
                  "against the raw request/reply ceiling"):
        assert label in printed


def test_the_workload_is_seeded_and_in_the_future() -> None:
    from datetime import date

    today = date(2030, 1, 7)
    a = workload.build_workload(apartments=10, hot=2, commands=300, seed=7, today=today)
    b = workload.build_workload(apartments=10, hot=2, commands=300, seed=7, today=today)
    assert len(a) == 300
    assert [(c.type, c.apartment_id) for c in a] == [(c.type, c.apartment_id) for c in b]
    assert [c.type for c in a[:10]] == ["AddApartment"] * 10
    for c in a:
        payload = json.loads(c.body)["payload"]
        if c.type == "RequestReservation":
            assert date.fromisoformat(payload["start"]) > today
