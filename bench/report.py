"""The benchmark's report: its exit status and the tables it prints.

The report itself is a plain dict (what ``--json-out`` writes); these functions only
read it, so a run and its presentation change separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def exit_code(report: dict[str, Any], *, skip_raw: bool) -> int:
    """0 when every command was answered and none with ``error``; 2 on setup; else 1."""
    if report["setup_error"]:
        return 2
    e2e, raw = report["end_to_end"], report["raw"]
    ok = (e2e is not None and not report["timed_out"] and report["error"] is None
          and e2e["missing"] == 0 and e2e["replies"] == e2e["commands"]
          and e2e["status"]["error"] == 0
          and e2e["status"]["ok"] + e2e["status"]["rejected"] == e2e["commands"]
          and report["node_exit_code"] == 0
          and (skip_raw or (raw is not None and raw["received"] == raw["messages"])))
    return 0 if ok else 1


def render(report: dict[str, Any]) -> str:
    """The report as a table."""
    cfg = report["config"]
    lines = [
        "Staybook throughput benchmark",
        f"  broker {cfg.get('broker', '?')}, prefix {cfg['prefix']}, seed {cfg['seed']}, "
        f"window {cfg['window']}, store {cfg['store']}, publisher confirms: no, "
        f"node: {cfg['node']}",
        "  workload: " + ", ".join(f"{n} {t}" for t, n in report["workload"].items()),
        "",
        f"  {'run':<28}{'msgs':>8}{'answered':>10}{'msgs/s':>10}{'p50 ms':>10}"
        f"{'p99 ms':>10}{'max ms':>10}",
    ]

    def row(name: str, r: dict[str, Any] | None, total_key: str, done_key: str) -> None:
        if r is None:
            lines.append(f"  {name:<28}{'-':>8}")
            return
        lat = r["latency_ms"]
        lines.append(f"  {name:<28}{r[total_key]:>8}{r[done_key]:>10}"
                     f"{_fmt(r['rate_per_s']):>10}{_fmt(lat['p50']):>10}{_fmt(lat['p99']):>10}"
                     f"{_fmt(lat['max']):>10}")

    e2e, raw = report["end_to_end"], report["raw"]
    row("end to end (node)", e2e, "commands", "replies")
    row("raw quorum queue (ceiling)", raw, "messages", "received")
    ratio = report["ratio"]
    lines.append(f"  ratio end-to-end / raw: {'-' if ratio is None else f'{ratio:.3f}'}"
                 + (" (partial: timed out)" if report["timed_out"] and ratio is not None
                    else ""))
    if e2e is not None:
        lines.append("")
        lines.append("  replies: " + ", ".join(f"{k} {v}" for k, v in e2e["status"].items())
                     + f"; missing {e2e['missing']}, unexpected {e2e['unexpected']}")
        for t, c in e2e["by_type"].items():
            lines.append(f"    {t:<22}" + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
        if e2e["reasons"]:
            lines.append("  reasons: " + ", ".join(f"{k} {v}" for k, v in e2e["reasons"].items()))
        backlog = e2e.get("backlog_after_last_reply") or {}
        lines.append("  queued when the last reply came: "
                     + ", ".join(f"{k.split('.', 1)[-1]} {v}" for k, v in backlog.items()))
    lines.append("")
    lines.append(f"  node exit code {report['node_exit_code']}, total {report['total_s']} s"
                 + (", TIMED OUT" if report["timed_out"] else "")
                 + (f", setup error: {report['setup_error']}" if report["setup_error"] else "")
                 + (f", error: {report['error']}" if report["error"] else ""))
    if report.get("node_log_tail"):
        lines.append(report["node_log_tail"])
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}"


def render_nodes(rows: Sequence[dict[str, Any]]) -> str:
    """The scale-out table."""
    head = (f"{'nodes':>5}  {'cmd/s':>8}  {'p50 ms':>8}  {'p99 ms':>8}  "
            f"{'CPU ms/cmd: nodes':>17}  {'broker':>7}  {'nodes+broker':>12}  "
            f"{'postgres':>8}  {'ratio to 1':>10}")
    lines = ["Scale-out on one machine (PostgreSQL, one broker; CPU from /proc)", head]
    for r in rows:
        c = r["cpu_ms_per_command"]
        lat = r["latency_ms"]
        lines.append(f"{r['nodes']:>5}  {r['rate_per_s'] or 0:>8.1f}  "
                     f"{lat['p50'] or 0:>8.1f}  {lat['p99'] or 0:>8.1f}  "
                     f"{c['nodes']:>17.3f}  {c['broker']:>7.3f}  {c['nodes+broker']:>12.3f}  "
                     f"{c['database']:>8.3f}  {r['cpu_ratio_to_1_node'] or 0:>10.2f}")
    return "\n".join(lines)
