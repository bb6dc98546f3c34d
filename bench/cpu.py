"""CPU time of process trees (and a process's memory), read from ``/proc``.

Wall throughput on a shared 2-core machine moves with whatever else runs; CPU time
spent per message by the processes doing the work does much less, so the benchmarks
report it: a :class:`Meter` reads named process trees (user + system time of each root
and its live descendants) before and after a run, and :func:`ms_per` turns two
readings into milliseconds per message. A part whose processes cannot be seen (an
external broker) reads None, shown as "-", never as 0. :func:`memory_and_threads`
reads a node's resident memory and thread count (the scale benchmark's bounds).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

Reading = dict[str, float | None]


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of one process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after ')' are fixed.
    fields = raw[raw.rindex(")") + 2:].split()
    ppid, utime, stime = int(fields[1]), int(fields[11]), int(fields[12])
    return ppid, (utime + stime) / CLK_TCK


def memory_and_threads(pid: int) -> tuple[int, int] | None:
    """Resident memory (bytes) and thread count of one process; None if it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    try:  # "VmRSS:     12345 kB", "Threads:  17"
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["Threads"])
    except (KeyError, ValueError, IndexError):
        return None  # a zombie has no VmRSS


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def tree_cpu(roots: Sequence[int]) -> float:
    """CPU seconds of ``roots`` and all their live descendants."""
    stats = {pid: s for pid in _pids() if (s := _stat(pid)) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _cpu) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


def pids_matching(needle: str) -> list[int]:
    """Processes whose environment contains ``needle`` (e.g. a RabbitMQ node name).

    RabbitMQ 3.10 takes its node name from the environment, not the command line.
    """
    me = os.getpid()
    return [p for p in _pids() if p != me and needle.encode() in _environ(p)]


def broker_pids(node_name: str | None) -> list[int] | None:
    """The processes of the private RabbitMQ node ``node_name``; None when unknown.

    None (an external broker, or no process found) makes its CPU read as unavailable
    rather than as a free broker.
    """
    if node_name is None:
        return None
    # NUL ends each entry of /proc/<pid>/environ: no node whose name merely starts so.
    return pids_matching(f"RABBITMQ_NODENAME={node_name}\0") or None


def postmaster_pid(datadir: Path) -> list[int]:
    """The PostgreSQL server's main pid, from its ``postmaster.pid``."""
    try:
        return [int((datadir / "postmaster.pid").read_text().split()[0])]
    except (OSError, ValueError, IndexError):
        return []


@dataclass
class Meter:
    """CPU seconds of named process trees, by snapshot; None for a part not visible."""

    parts: Mapping[str, Sequence[int] | None]

    def read(self) -> Reading:
        """The current totals, by part."""
        return {name: None if roots is None else tree_cpu(roots)
                for name, roots in self.parts.items()}


def ms_per(before: Reading, after: Reading, count: int) -> Reading:
    """CPU milliseconds per unit of work (message, command) by part, 3 decimals."""
    n = max(1, count)
    return {k: None if (a := after[k]) is None or (b := before.get(k)) is None
            else round((a - b) * 1000 / n, 3) for k in after}


def total(parts: Mapping[str, float | None], names: Iterable[str]) -> float | None:
    """The sum of ``names``; None if any of them is unavailable."""
    values = [parts.get(n) for n in names]
    if any(v is None for v in values):
        return None
    return round(sum(v for v in values if v is not None), 3)
