"""A node's thread CPU, by group, from /proc."""

from __future__ import annotations

import threading
import time

from messages.control import ThreadCpu
from node.threads import group_of, thread_cpu


def test_numbers_in_names_are_grouped() -> None:
    assert group_of("consumer-p003") == group_of("consumer-p011") == "consumer-pN"
    assert group_of("ApartmentActor-17") == "ApartmentActor-N"
    assert group_of("store-writer") == "store-writer"


def test_a_busy_thread_shows_its_cpu() -> None:
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            x += 1

    spinners = [threading.Thread(target=spin, name=f"spinner-{i}") for i in range(2)]
    for t in spinners:
        t.start()
    try:
        deadline = time.monotonic() + 30
        rows: dict[str, ThreadCpu] = {}
        while time.monotonic() < deadline:
            rows = {r.thread: r for r in thread_cpu()}
            spinners_row = rows.get("spinner-N")
            if spinners_row is not None and spinners_row.cpu_s >= 0.05:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for t in spinners:
            t.join()
    assert rows["spinner-N"].threads == 2
    cpu = [r.cpu_s for r in rows.values()]
    assert cpu == sorted(cpu, reverse=True)  # busiest first
