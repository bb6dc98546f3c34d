"""The README's examples are what they claim: JSON blocks parse, commands validate."""

from __future__ import annotations

import json
import re
from pathlib import Path

from messages import Envelope, SearchApartments

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_json_block_in_the_readme_is_valid_json() -> None:
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        json.loads(block)


def test_the_producer_example_is_a_valid_command() -> None:
    block = re.findall(r"```json\n(.*?)```", README.read_text(), flags=re.S)[0]
    env = Envelope.from_json(block.encode())
    assert env.type == "RequestReservation" and env.apartment_id == "apt-42"


def test_the_read_your_write_example_is_a_valid_query() -> None:
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(), flags=re.S)
    queries = [Envelope.from_json(b.encode()) for b in blocks if "SearchApartments" in b]
    assert len(queries) == 1
    q = queries[0].payload
    assert isinstance(q, SearchApartments) and q.after is not None and q.wait_ms > 0


def test_the_ctl_table_lists_every_ctl_subcommand() -> None:
    import typer

    from console.ctl import ctl_app

    group = typer.main.get_command(ctl_app)
    names = set(getattr(group, "commands", {}))
    assert {"nodes", "history", "repair", "dlq"} <= names  # the group was read
    rows = set(re.findall(r"^\| `staybook ctl (\w+)", README.read_text(), flags=re.M))
    assert names - rows == set(), "README's ctl table misses these"
