"""The throughput benchmark, tiny, on the private broker: correctness only, never timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import throughput, workload

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("split", [False, True], ids=["one-process", "two-roles"])
def test_the_benchmark_gets_a_reply_for_every_command(
        amqp_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], split: bool) -> None:
    out = tmp_path / "bench.json"
    rc = throughput.main(["--amqp-url", amqp_url, "--apartments", "10", "--hot", "2",
                          "--commands", "300", "--window", "64", "--timeout", "90",
                          "--json-out", str(out), *(["--split"] if split else [])])
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
