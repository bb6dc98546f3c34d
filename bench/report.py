"""The benchmark's report: its exit status and the tables it prints.

The report itself is a plain dict (what ``--json-out`` writes); these functions only
read it, so a run and its presentation change separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The performance targets: information next to the figures, never the exit status.
CPU_VS_RAW_MAX = 2.0  # Staybook CPU per command <= 2x the raw request/reply's
RATE_VS_RAW_MIN = 0.6  # Staybook commands/s >= 60% of the raw ceiling
PACED_P99_MAX_MS = 50.0  # reply p99 at the highest paced rate (500/s)
PACED_CPU_MAX = 1.5  # CPU per command at the lowest paced rate (150/s) <= 1.5x saturation
# Against the floor (bench.floor), Staybook over the floor: (name, target text, test).
FLOOR_TOTAL_MAX = 2.0  # CPU per command, processes + broker, at saturation
FLOOR_PROCS_MAX = 3.0  # CPU per command of the processes
FLOOR_BROKER_MAX = 1.25  # CPU per command of the broker
FLOOR_RATE_MIN = 0.75  # commands/s at saturation
FLOOR_PACED_P99_MAX = 3.0  # reply p99 at the lowest paced rate
FLOOR_PACED_CPU_MAX = 2.0  # CPU per command at the lowest paced rate
COUNTS_AGREE = 0.10  # Staybook's and the floor's messages per command: at most 10% apart


def exit_code(report: dict[str, Any], *, skip_raw: bool) -> int:
    """0 when every command was answered and none with ``error``; 2 on setup; else 1.

    Every run counts: the raw ones (unless skipped), saturation and each paced rate.
    """
    if report["setup_error"]:
        return 2
    e2e, raw, rpc = report["end_to_end"], report["raw"], report.get("raw_rpc") or []
    paced = report.get("paced") or []
    ok = (e2e is not None and not report["timed_out"] and report["error"] is None
          and all(_answered(r) for r in (e2e, *paced))
          and len(paced) == len(report["config"].get("paced_rates", []))
          and report["node_exit_code"] == 0
          and _floor_answered(report)
          and (skip_raw or (raw is not None and raw["received"] == raw["messages"]
                            and sum(not r.get("rate") for r in rpc)
                            == len(report["config"].get("responders", []))
                            and sum(bool(r.get("rate")) for r in rpc)
                            == len(report["config"].get("paced_rates", []))
                            and all(r["replies"] == r["commands"] for r in rpc))))
    return 0 if ok else 1


def _floor_answered(report: dict[str, Any]) -> bool:
    """The floor, when it ran: every command answered in each of its runs, as Staybook's."""
    floor = report.get("floor")
    if floor is None:
        return True
    runs = [floor["end_to_end"], *floor["paced"]]
    return (all(r is not None and _answered(r) for r in runs)
            and len(floor["paced"]) == len(report["config"].get("paced_rates", [])))


def _answered(r: dict[str, Any]) -> bool:
    """Every command of a Staybook run answered, ok or rejected, none missing."""
    return bool(r["missing"] == 0 and r["replies"] == r["commands"]
                and r["status"]["error"] == 0
                and r["status"]["ok"] + r["status"]["rejected"] == r["commands"])


def against_ceiling(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Staybook against the raw request/reply ceiling, each figure with its target.

    Rows of ``name``, ``value`` (None when a part is missing or its CPU unreadable),
    ``target`` (text) and ``met`` (None with no value). The paced targets take the
    lowest rate run for CPU and the highest for p99 (150 and 500/s by default).
    """
    e2e = report["end_to_end"] or {}
    rpc = [r for r in report.get("raw_rpc") or [] if r.get("rate") is None]
    raw_paced = {r["rate"]: r for r in report.get("raw_rpc") or [] if r.get("rate")}
    paced = sorted(report.get("paced") or [], key=lambda r: r["rate"])
    sat_cpu = _cpu(e2e)
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: str, met: bool | None) -> None:
        rows.append({"name": name, "value": value, "target": target,
                     "met": None if value is None else met})

    for r in rpc:
        v = _ratio(sat_cpu, _cpu(r))
        add(f"CPU/cmd saturation / raw, {_responders(r['responders'])}", v,
            f"<= {CPU_VS_RAW_MAX:g}", v is not None and v <= CPU_VS_RAW_MAX)
    best = max((r["rate_per_s"] for r in rpc if r.get("rate_per_s")), default=None)
    v = _ratio(e2e.get("rate_per_s"), best)
    add("cmd/s saturation / best raw cmd/s", v, f">= {RATE_VS_RAW_MIN:g}",
        v is not None and v >= RATE_VS_RAW_MIN)
    if paced:
        hi, lo = paced[-1], paced[0]
        p99 = hi["latency_ms"]["p99"]
        add(f"reply p99 ms at paced {hi['rate']:g}/s", p99, f"< {PACED_P99_MAX_MS:g} ms",
            p99 is not None and p99 < PACED_P99_MAX_MS)
        v = _ratio(_cpu(lo), sat_cpu)
        add(f"CPU/cmd paced {lo['rate']:g}/s / saturation", v, f"<= {PACED_CPU_MAX:g}",
            v is not None and v <= PACED_CPU_MAX)
        # The same figures of the bare responder: the floor's own low-rate factor and
        # latency, measured in this run (no target: they say what the targets ask of
        # pika and the broker alone).
        one = next((r for r in rpc if r["responders"] == 1), None)
        if (raw_lo := raw_paced.get(lo["rate"])) is not None and one is not None:
            add(f"raw: CPU/msg paced {lo['rate']:g}/s / saturation",
                _ratio(_cpu(raw_lo), _cpu(one)), "reference", None)
        if (raw_hi := raw_paced.get(hi["rate"])) is not None:
            add(f"raw: reply p99 ms at paced {hi['rate']:g}/s",
                raw_hi["latency_ms"]["p99"], "reference", None)
    return rows


def against_floor(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Staybook beside the floor, figure by figure: both values, the ratio, the target.

    Rows of ``name``, ``staybook``, ``floor``, ``ratio`` (Staybook over the floor;
    None when either is missing), ``target`` (text) and ``met`` (None with no ratio).
    The paced figures are the lowest paced rate's (150/s by default).
    """
    floor = report.get("floor") or {}
    f_sat, s_sat = floor.get("end_to_end") or {}, report.get("end_to_end") or {}
    rows: list[dict[str, Any]] = []

    def add(name: str, s: float | None, f: float | None, target: str, at_most: float | None,
            at_least: float | None = None) -> None:
        r = _ratio(s, f)
        met = None if r is None else (r <= at_most if at_most is not None
                                      else r >= (at_least or 0.0))
        rows.append({"name": name, "staybook": s, "floor": f, "ratio": r,
                     "target": target, "met": met})

    if not f_sat or not s_sat:
        return rows
    s_cpu, f_cpu = s_sat.get("cpu_ms_per_command") or {}, f_sat.get("cpu_ms_per_command") or {}
    add("CPU ms/cmd saturation, total", s_cpu.get("sum"), f_cpu.get("sum"),
        f"<= {FLOOR_TOTAL_MAX:g}x", FLOOR_TOTAL_MAX)
    add("CPU ms/cmd saturation, processes", s_cpu.get("nodes"), f_cpu.get("floor"),
        f"<= {FLOOR_PROCS_MAX:g}x", FLOOR_PROCS_MAX)
    add("CPU ms/cmd saturation, broker", s_cpu.get("broker"), f_cpu.get("broker"),
        f"<= {FLOOR_BROKER_MAX:g}x", FLOOR_BROKER_MAX)
    add("cmd/s saturation", s_sat.get("rate_per_s"), f_sat.get("rate_per_s"),
        f">= {FLOOR_RATE_MIN:.0%}", None, FLOOR_RATE_MIN)
    s_paced = min(report.get("paced") or [], key=lambda r: r["rate"], default=None)
    f_paced = {r["rate"]: r for r in floor.get("paced") or []}
    if s_paced is not None and (fp := f_paced.get(s_paced["rate"])) is not None:
        rate = f"{s_paced['rate']:g}/s"
        add(f"reply p99 ms paced {rate}", s_paced["latency_ms"]["p99"],
            fp["latency_ms"]["p99"], f"<= {FLOOR_PACED_P99_MAX:g}x", FLOOR_PACED_P99_MAX)
        add(f"CPU ms/cmd paced {rate}, total", _cpu(s_paced), _cpu(fp),
            f"<= {FLOOR_PACED_CPU_MAX:g}x", FLOOR_PACED_CPU_MAX)
    return rows


def message_counts(report: dict[str, Any]) -> dict[str, Any] | None:
    """Publishes, deliveries, acks and confirms per command at saturation, both sides.

    From the broker's management API when it was read (both sides), else the floor's
    own counters (Staybook's then unknown). ``agree``: every count of Staybook's within
    :data:`COUNTS_AGREE` of the floor's (None when Staybook's is unknown).
    """
    floor = (report.get("floor") or {}).get("end_to_end")
    if floor is None:
        return None
    staybook = (report.get("end_to_end") or {}).get("messages_per_command")
    mine = floor.get("messages_per_command")
    source = "management API"
    if mine is None or staybook is None:
        mine, staybook, source = floor.get("own_counts_per_command"), None, "own counters"
    if mine is None:
        return None
    diff = None if staybook is None else {
        k: round(staybook[k] / mine[k] - 1, 3) if mine[k] else None for k in mine}
    agree = None if diff is None else all(
        d is not None and abs(d) <= COUNTS_AGREE for d in diff.values())
    return {"source": source, "staybook": staybook, "floor": mine, "difference": diff,
            "agree": agree}


def _cpu(run: dict[str, Any]) -> float | None:
    """A run's CPU ms per message of its processes plus the broker."""
    cpu = run.get("cpu_ms_per_message") or run.get("cpu_ms_per_command") or {}
    value = cpu.get("sum")
    return float(value) if isinstance(value, int | float) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _responders(n: int) -> str:
    return f"{n} responder" + ("" if n == 1 else "s")


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
        f"  {'run':<34}{'msgs':>7}{'answered':>9}{'msgs/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'CPU ms/msg: procs':>20}{'broker':>8}{'sum':>7}",
    ]

    def row(name: str, r: dict[str, Any] | None, total_key: str, done_key: str,
            cpu: dict[str, Any] | None = None) -> None:
        if r is None:
            lines.append(f"  {name:<34}{'-':>7}")
            return
        lat, cpu = r["latency_ms"], cpu or {}
        lines.append(f"  {name:<34}{r[total_key]:>7}{r[done_key]:>9}"
                     f"{_fmt(r['rate_per_s']):>9}{_fmt(lat['p50']):>9}{_fmt(lat['p99']):>9}"
                     f"{_fmt(lat['max']):>9}{_fmt(cpu.get('procs')):>20}"
                     f"{_fmt(cpu.get('broker')):>8}{_fmt(cpu.get('sum')):>7}")

    e2e, raw = report["end_to_end"], report["raw"]
    if raw is not None:
        row("raw publish/consume (no reply)", raw, "messages", "received",
            raw.get("cpu_ms_per_message"))
    for r in report.get("raw_rpc") or []:
        name = (f"raw request/reply, {_responders(r['responders'])}" if not r.get("rate")
                else f"raw paced {r['rate']:g}/s, {_responders(r['responders'])}")
        row(name, r, "commands", "replies", _procs(r["cpu_ms_per_message"], "responders"))
    floor = report.get("floor") or {}
    if floor.get("end_to_end") is not None:
        row("floor at saturation", floor["end_to_end"], "commands", "replies",
            _procs(floor["end_to_end"]["cpu_ms_per_command"], "floor"))
    for r in floor.get("paced") or []:
        row(f"floor paced {r['rate']:g}/s", r, "commands", "replies",
            _procs(r["cpu_ms_per_command"], "floor"))
    row("Staybook at saturation", e2e, "commands", "replies",
        _procs(e2e["cpu_ms_per_command"], "nodes") if e2e and "cpu_ms_per_command" in e2e
        else None)
    for r in report.get("paced") or []:
        row(f"Staybook paced {r['rate']:g}/s", r, "commands", "replies",
            _procs(r["cpu_ms_per_command"], "nodes"))
    lines.append("  (CPU from /proc, user + system, per answered message. procs: the "
                 "responders, the floor's or the node processes, never this benchmark's;")
    lines.append("   Staybook's counted until its events are drained; '-': not visible, "
                 "e.g. an external broker)")
    ratio = report["ratio"]
    lines.append(f"  ratio end-to-end / raw publish/consume: "
                 f"{'-' if ratio is None else f'{ratio:.3f}'}"
                 + (" (partial: timed out)" if report["timed_out"] and ratio is not None
                    else ""))
    ceiling = report.get("against_ceiling") or []
    if ceiling:
        lines.append("")
        lines.append("  against the raw request/reply ceiling (targets, information only):")
        for c in ceiling:
            mark = {True: "✓", False: "✗", None: ""}[c["met"]]
            lines.append(f"    {c['name']:<46}{_fmt(c['value']):>9}   target "
                         f"{c['target']:<10}{mark}")
    lines.extend(_floor_lines(report))
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
        cpu = e2e.get("cpu_ms_per_command")
        if cpu:
            at_reply = (e2e.get("cpu_ms_per_command_at_last_reply") or {}).get("sum")
            lines.append("  saturation CPU ms/cmd by node process: "
                         + ", ".join(f"{k} {_fmt(v)}" for k, v in cpu["by_node"].items())
                         + f"; nodes+broker {_fmt(at_reply)} at the last reply, "
                         f"{_fmt(cpu['sum'])} once drained ({_fmt(e2e.get('drained_s'))} s)")
        lines.extend(_thread_lines("saturation", e2e))
    for r in report.get("paced") or []:
        pace = r["pacing"]
        lines.append(f"  paced {r['rate']:g}/s: "
                     + ", ".join(f"{k} {v}" for k, v in r["status"].items())
                     + f"; missing {r['missing']}; publisher stalls {pace['stalls']} "
                     f"(window {pace['bound']}), max lag {_fmt(pace['max_lag_ms'])} ms; "
                     f"drained in {_fmt(r.get('drained_s'))} s")
        lines.extend(_thread_lines(f"paced {r['rate']:g}/s", r))
    lines.append("")
    lines.append(f"  node exit code {report['node_exit_code']}, total {report['total_s']} s"
                 + (", TIMED OUT" if report["timed_out"] else "")
                 + (f", setup error: {report['setup_error']}" if report["setup_error"] else "")
                 + (f", error: {report['error']}" if report["error"] else ""))
    if report.get("node_log_tail"):
        lines.append(report["node_log_tail"])
    return "\n".join(lines)


def _floor_lines(report: dict[str, Any]) -> list[str]:
    """Staybook beside the floor (ratios, targets), and both sides' messages per command."""
    rows = report.get("against_floor") or []
    lines: list[str] = []
    if rows:
        lines += ["", "  Staybook against the floor (bench.floor; targets, information only):",
                  f"    {'':<36}{'Staybook':>10}{'floor':>10}{'ratio':>8}   target"]
        for c in rows:
            mark = {True: "✓", False: "✗", None: ""}[c["met"]]
            lines.append(f"    {c['name']:<36}{_fmt(c['staybook']):>10}{_fmt(c['floor']):>10}"
                         f"{_fmt(c['ratio']):>8}   {c['target']:<10}{mark}")
    counts = report.get("message_counts")
    if counts:
        lines += ["", f"  messages per command at saturation ({counts['source']}):",
                  f"    {'':<10}{'publish':>9}{'deliver':>9}{'ack':>9}{'confirm':>9}"]
        for side in ("staybook", "floor"):
            figures = counts[side]
            lines.append(f"    {side:<10}" + "".join(
                f"{_fmt(figures[k] if figures else None):>9}"
                for k in ("publish", "deliver", "ack", "confirm")))
        diff = counts.get("difference")
        if diff:
            lines.append(f"    {'apart':<10}" + "".join(
                f"{'-' if diff[k] is None else f'{diff[k]:+.0%}':>9}"
                for k in ("publish", "deliver", "ack", "confirm"))
                + f"   within {COUNTS_AGREE:.0%}: " + ("yes" if counts["agree"] else "NO"))
    return lines


def _procs(cpu: dict[str, Any], part: str) -> dict[str, Any]:
    """A run's CPU row with its own processes (``part``) under the common name."""
    return {"procs": cpu.get(part), "broker": cpu.get("broker"), "sum": cpu.get("sum")}


def _thread_lines(run: str, r: dict[str, Any]) -> list[str]:
    """The busiest thread groups of each node in one run (``ctl threads``)."""
    return [f"    {run}, {node} threads, CPU ms/cmd: "
            + ", ".join(f"{g} {v:.3f}" for g, v in groups)
            for node, groups in (r.get("cpu_ms_per_command_by_thread") or {}).items()]


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}"


def render_nodes(rows: Sequence[dict[str, Any]]) -> str:
    """The scale-out table."""
    head = (f"{'nodes':>5}  {'cmd/s':>8}  {'p50 ms':>8}  {'p99 ms':>8}  "
            f"{'CPU ms/cmd: nodes':>17}  {'broker':>7}  {'nodes+broker':>12}  "
            f"{'postgres':>8}  {'ratio to 1':>10}  share of the nodes' CPU, by node")
    lines = ["Scale-out on one machine (PostgreSQL, one broker; CPU from /proc)", head]
    for r in rows:
        c = r["cpu_ms_per_command"]
        lat = r["latency_ms"]
        lines.append(f"{r['nodes']:>5}  {r['rate_per_s'] or 0:>8.1f}  "
                     f"{lat['p50'] or 0:>8.1f}  {lat['p99'] or 0:>8.1f}  "
                     f"{c['nodes']:>17.3f}  {c['broker']:>7.3f}  {c['nodes+broker']:>12.3f}  "
                     f"{c['database']:>8.3f}  {r['cpu_ratio_to_1_node'] or 0:>10.2f}  "
                     + " ".join(f"{v:.0%}" for v in (r.get("node_share") or {}).values()))
    return "\n".join(lines)
