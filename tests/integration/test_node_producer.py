"""A producer in another language: examples/node-producer (Node.js, amqplib) on a real node.

It knows Staybook only through docs/asyncapi.yaml and the README. Here it runs the
talk's scenario and the bad-input cases against a node on the private broker; the
test reads its one JSON line per step and checks in the store that each command
took effect exactly once and each bad input was dead-lettered with its reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from messages import ApartmentAdded
from node import Node
from tests.conftest import unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PRODUCER = ROOT / "examples" / "node-producer"
DOC = ROOT / "docs" / "asyncapi.yaml"

# Each step the producer prints, with the status and reason it must have got.
SCENARIO = {
    "add_apartment": ("ok", None),
    "request_reservation": ("ok", None),
    "accept_reservation": ("ok", None),
    "overlapping_request": ("rejected", "already_taken"),
    "search_after_add": ("found", "caught_up=true"),
    "search_booked_nights": ("not_found", "caught_up=true"),
    "resend_same_message_id": ("ok", None),
}
BAD_INPUT = {
    "not_json": ("error", "not_json"),
    "unknown_type": ("error", "unknown_type"),
    "unsupported_version": ("error", "unsupported_version"),
    "schema_error": ("error", "schema_error"),
    "wrong_routing_key": ("error", "wrong_routing_key"),
    "idempotency_conflict": ("error", "idempotency_conflict"),
}

# A valid AsyncAPI 3 document, and the same with an operation on a missing channel.
VALID_DOC = """\
asyncapi: 3.0.0
info: {title: tiny, version: 1.0.0}
channels:
  commands:
    address: commands
    messages:
      Ping: {payload: {type: object}}
operations:
  receivePing:
    action: receive
    channel: {$ref: '#/channels/commands'}
"""
BROKEN_DOC = VALID_DOC + """\
  receiveMissing:
    action: receive
    channel: {$ref: '#/channels/missing'}
"""


@pytest.fixture(scope="module")
def node_js() -> str:
    """The ``node`` executable, with the example's packages installed (``npm ci``)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("Node.js 20+ and npm are needed for examples/node-producer: install "
                    "them (e.g. apt-get install nodejs npm) and run this test again")
    # npm writes node_modules/.package-lock.json last: without it the install is partial.
    if not (PRODUCER / "node_modules" / ".package-lock.json").is_file():
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=PRODUCER,
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            pytest.fail(f"npm ci failed in {PRODUCER}:\n{done.stderr[-3000:]}")
    return node


def run_node(node_js: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run one of the example's scripts; its output as text."""
    return subprocess.run([node_js, *args], cwd=PRODUCER, capture_output=True, text=True,
                          timeout=timeout, check=False)


def dead_letter_reasons(node: Node, count: int, timeout: float = 15) -> list[str]:
    """The reasons in the node's book of dead letters, once it holds ``count`` of them."""
    deadline = time.monotonic() + timeout
    while node.dead_letters.count() < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return sorted(r.letter.reason or "" for r in node.dead_letters.page(limit=1000))


def test_the_node_producer_runs_the_scenario_and_each_bad_input_gets_its_reason(
        node: Node, amqp_url: str, node_js: str) -> None:
    suffix = unique("np")
    run = run_node(node_js, "producer.js", "--url", amqp_url, "--prefix", node.topology.prefix,
                   "--doc", str(DOC), "--apartment-suffix", suffix)
    steps: dict[str, dict[str, Any]] = {}
    for line in run.stdout.splitlines():
        step = json.loads(line)
        steps[step["step"]] = step
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr == ""

    got = {name: (s["status"], s["reason"]) for name, s in steps.items()}
    assert {k: got.get(k) for k in SCENARIO} == SCENARIO
    assert {k: got.get(k) for k in BAD_INPUT} == BAD_INPUT
    # The local validator refuses the wrong price before it is sent raw.
    assert got["schema_error_local"][0] == "invalid"
    assert "/payload/price_per_night" in str(got["schema_error_local"][1])
    # Every older AddApartment version the document lists is still accepted.
    older = sorted(k for k in steps if k.startswith("add_apartment_v"))
    assert "add_apartment_v1" in older
    assert all(got[k] == ("ok", None) for k in older)
    assert len(steps) == len(SCENARIO) + len(BAD_INPUT) + 1 + len(older)
    assert all(s["ok"] is True for s in steps.values())

    # Each command took effect once: the re-send and the conflicting re-use of its
    # message_id changed nothing; the wrong routing key's apartment was never added.
    apt = f"apt-{suffix}"
    events = node.store.load(f"apartment:{apt}")
    assert [e.type for e in events] == [
        "ApartmentAdded", "ReservationRequested", "ReservationAccepted", "DatesBooked",
        "ReservationRejected"]
    assert isinstance(events[0].payload, ApartmentAdded)
    assert events[0].payload.currency == "EUR"
    for name in older:
        version = name.removeprefix("add_apartment_v")
        added = node.store.load(f"apartment:{apt}-v{version}")
        assert [e.type for e in added] == ["ApartmentAdded"]
        assert isinstance(added[0].payload, ApartmentAdded)
        assert added[0].payload.currency == "EUR"  # version 1 is read as euro
    assert node.store.load(f"apartment:{apt}-bad") == []
    # Every bad input was dead-lettered with its reason, and nothing else was.
    assert dead_letter_reasons(node, len(BAD_INPUT)) == sorted(r for _, r in BAD_INPUT.values())


def test_the_producer_says_in_one_line_that_no_broker_answers(node_js: str) -> None:
    run = run_node(node_js, "producer.js", "--url", "amqp://guest:guest@127.0.0.1:1/%2F",
                   "--doc", str(DOC))
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1, run.stderr
    assert "cannot connect to amqp://guest:***@127.0.0.1:1/%2F" in run.stderr
    assert "make demo" in run.stderr


def test_the_producer_says_in_one_line_that_no_node_declared_the_prefix(
        amqp_url: str, node_js: str) -> None:
    prefix = unique("nobody")
    run = run_node(node_js, "producer.js", "--url", amqp_url, "--prefix", prefix,
                   "--doc", str(DOC))
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr == (f"producer: the exchange {prefix}.commands does not exist: is a "
                          "Staybook node running on this broker with that prefix (--prefix)?\n")


def test_check_doc_accepts_the_generated_document(node_js: str) -> None:
    run = run_node(node_js, "check-doc.js", str(DOC))
    assert run.returncode == 0, run.stderr
    assert "valid AsyncAPI 3." in run.stdout


def test_check_doc_fails_on_an_operation_on_a_missing_channel(
        node_js: str, tmp_path: Path) -> None:
    valid, broken = tmp_path / "valid.yaml", tmp_path / "broken.yaml"
    valid.write_text(VALID_DOC)
    broken.write_text(BROKEN_DOC)
    ok = run_node(node_js, "check-doc.js", str(valid))
    assert (ok.returncode, ok.stderr) == (0, "")
    assert "1 channels, 1 operations, 1 messages" in ok.stdout
    failed = run_node(node_js, "check-doc.js", str(broken))
    assert failed.returncode == 1
    assert "'#/channels/missing' does not exist" in failed.stderr
    assert failed.stdout == ""
