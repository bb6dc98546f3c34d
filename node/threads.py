"""Which of a node's threads use the CPU, read from ``/proc`` (Linux).

A node runs dozens of threads (a consumer per partition, an actor per live entity,
the writer, the relay ...). Process CPU says how much a command costs; this says
where. Threads are grouped by name with their numbers dropped (``consumer-p003``
and ``consumer-p011`` are ``consumer-pN``; every ``ApartmentActor-17`` is one row).
"""

from __future__ import annotations

import os
import re
import threading
from collections import defaultdict
from pathlib import Path

from messages.control import ThreadCpu

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_NUMBERS = re.compile(r"\d+")


def group_of(name: str) -> str:
    """A thread's group: its name with every number replaced by ``N``."""
    return _NUMBERS.sub("N", name)


def thread_cpu() -> list[ThreadCpu]:
    """CPU seconds (user + system) of this process's live threads, by group, busiest first.

    Threads that ended are not counted (their time is in the process's total only).
    Empty where ``/proc`` is not available.
    """
    cpu: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for t in threading.enumerate():
        if t.native_id is None:
            continue
        try:
            raw = Path(f"/proc/self/task/{t.native_id}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        g = group_of(t.name)
        cpu[g] += (int(fields[11]) + int(fields[12])) / _TICK
        count[g] += 1
    return [ThreadCpu(thread=g, threads=count[g], cpu_s=round(cpu[g], 2))
            for g in sorted(cpu, key=lambda k: -cpu[k])]
