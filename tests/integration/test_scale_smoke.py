"""The scale benchmark, tiny, on the private broker: structure and counts, never times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import scale

pytestmark = pytest.mark.integration


def test_the_scale_benchmark_answers_every_command_and_query(
        amqp_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scale.json"
    # A window below the cap: the directory can always passivate an idle actor.
    rc = scale.main(["--amqp-url", amqp_url, "--apartments", "2000", "--max-live", "100",
                     "--queries", "30", "--warmup", "2", "--window", "20",
                     "--workers", "2", "--json-out", str(out), "--timeout", "300"])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["setup_error"] is None and report["error"] is None, report
    assert rc == 0 and report["exit_code"] == 0 and report["node_exit_code"] == 0

    ld = report["load"]
    assert ld["apartments"] == 2000 and 0 < ld["booked"] < 2000
    assert ld["events"] == 2000 + 3 * ld["stays"]  # added; each stay requested, accepted
    assert ld["store_bytes"] > 0
    assert report["plan"]["city_by_index"] and report["plan"]["nights_by_key"]

    c = report["commands"]
    assert c["commands"] == c["replies"] == c["distinct_apartments"] == 300  # 3x the cap
    assert c["missing"] == 0 and c["status"]["error"] == 0
    assert c["status"]["ok"] + c["status"]["rejected"] == 300
    node = report["node"]
    assert node["max_live"] == 100 and node["live_actors"] == 100
    assert node["activations"] == 300 and node["passivations"] == 200
    assert node["threads_max"] >= node["threads_idle"] > 0
    assert node["rss_max_bytes"] >= node["rss_idle_bytes"] > 0

    q = report["queries"]
    assert q["queries"] == q["answered"] == 30 and q["missing"] == q["wrong"] == 0
    assert q["warmup"] == 2 and q["latency_ms"]["p99"] is not None
    assert report["store_queries"]["latency_ms"]["p99"] is not None

    assert "Staybook at scale: 2,000 apartments on sqlite" in printed
    for name, *_ in scale.targets(report):
        assert name in printed
