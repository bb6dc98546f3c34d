"""Every service in a node's supervision tree shows its name, liveness and facts.

What ``ctl tree --json`` and the console show of a service: its row names it, says
whether its thread runs and how it last crashed, and carries its own counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from node import Node


def rows(children: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for c in children:
        yield c
        yield from rows(c.get("children", []))


def test_every_service_row_names_the_service_and_carries_its_facts(memory_node: Node) -> None:
    services = {r["id"]: r for r in rows(memory_node.app.tree()) if r["kind"] == "service"}
    assert {"store-gate", "store", "relay", "timers", "dead-letters", "entities",
            "consumer:dead-letters"} <= set(services)
    assert all(r["name"] and r["alive"] for r in services.values()), services
    assert (services["store-gate"]["up"], services["store-gate"]["error"]) == (True, None)
    assert {"failures", "published"} <= set(services["relay"])
    assert {"failures", "fired"} <= set(services["timers"])
    assert {"recorded", "backlog"} <= set(services["dead-letters"])
    assert services["consumer:dead-letters"]["queue"].endswith("dead-letters")
