"""Crashes around commands: poison isolation, retries, and a property test.

Crashes are injected through the entity context's fault hook (``Node(inject=...)``),
which raises inside the actor just before ``decide``: the same place a bug in the
rules would blow up. Nothing is mocked: the real directory, actors, writer, SQLite
file and in-memory broker run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from broker.memory import MemoryBroker
from messages import (
    AcceptReservation,
    AddApartment,
    Consumer,
    Envelope,
    Message,
    RejectReservation,
    RequestReservation,
    ReservationRequested,
)
from node import Node
from rules.apartment import Apartment, evolve
from rules.clock import pinned
from store.tables import inbox_table
from supervisor import Crash, InjectedCrash
from tests.conftest import TODAY, MemoryProducer, day, make_settings, recorded_dead_letters

RETRIES = 2
POISON = RETRIES + 1  # crashes more often than it is retried


@dataclass
class FaultPlan:
    """How many times each message id crashes its actor before it may pass."""

    crashes: dict[str, int] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, entity_id: str, env: Envelope) -> None:
        with self.lock:
            n = self.seen.get(env.message_id, 0)
            self.seen[env.message_id] = n + 1
        if n < self.crashes.get(env.message_id, 0):
            raise InjectedCrash(f"injected crash {n + 1} on {env.type} in {entity_id}")


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[Node, MemoryProducer, FaultPlan]]:
    plan = FaultPlan()
    settings_ = make_settings(tmp_path)
    settings_.supervision.poison_retries = RETRIES
    node = Node(settings_, broker=MemoryBroker(), clock=pinned(TODAY), inject=plan)
    node.start()
    assert isinstance(node.broker, MemoryBroker)
    yield node, MemoryProducer(node.broker), plan
    node.stop()


def add(apt: str) -> AddApartment:
    return AddApartment(owner_id=f"owner-{apt}", city="Rome", title="T", price_per_night=100,
                        currency="EUR", capacity=4)


def test_a_poison_command_is_dead_lettered_and_nothing_else_is_disturbed(
        faulty: tuple[Node, MemoryProducer, FaultPlan]) -> None:
    node, p, plan = faulty
    assert p.send(add("a1"), "a1")["status"] == "ok"
    assert p.send(add("a2"), "a2")["status"] == "ok"
    poison = Envelope.new(RequestReservation(reservation_id="bad", guest_id="g", start=day(3),
                                             end=day(5)), apartment_id="a1")
    plan.crashes[poison.message_id] = 1_000
    p.publish(poison)
    reply = p.reply()
    assert reply["status"] == "error" and reply["reason"] == "poison"
    assert "InjectedCrash" in reply["detail"]

    broker = node.broker
    assert isinstance(broker, MemoryBroker)
    [recorded] = recorded_dead_letters(node, 1)
    letter = recorded.letter
    assert letter.reason == "poison" and letter.queue == broker.topology.queue(
        Consumer.INTAKE)
    assert letter.detail is not None and "InjectedCrash" in letter.detail
    assert "Traceback" in letter.detail or "line" in letter.detail
    assert letter.body == poison.to_json()
    assert letter.message_id == poison.message_id
    assert node.directory.poisoned == 1
    assert plan.seen[poison.message_id] == RETRIES + 1

    # the same apartment and the other one go on as if nothing happened
    ok = p.send(RequestReservation(reservation_id="good", guest_id="g", start=day(3),
                                   end=day(5)), "a1")
    assert ok["status"] == "ok"
    assert p.send(RequestReservation(reservation_id="x", guest_id="g", start=day(3), end=day(5)),
                  "a2")["status"] == "ok"
    assert [e.type for e in node.store.load("apartment:a1")] == [
        "ApartmentAdded", "ReservationRequested"]


def test_a_command_that_crashes_fewer_times_than_the_retries_takes_effect_once(
        faulty: tuple[Node, MemoryProducer, FaultPlan]) -> None:
    node, p, plan = faulty
    p.send(add("a1"), "a1")
    env = Envelope.new(RequestReservation(reservation_id="r", guest_id="g", start=day(3),
                                          end=day(5)), apartment_id="a1")
    plan.crashes[env.message_id] = RETRIES
    p.publish(env)
    assert p.reply()["status"] == "ok"
    assert node.directory.restarts == RETRIES
    assert [e.type for e in node.store.load("apartment:a1")].count("ReservationRequested") == 1


def test_commands_queued_behind_a_crash_are_all_handled_in_order(
        faulty: tuple[Node, MemoryProducer, FaultPlan]) -> None:
    node, p, plan = faulty
    p.send(add("a1"), "a1")
    envs = [Envelope.new(RequestReservation(reservation_id=f"r{i}", guest_id="g",
                                            start=day(3 + 2 * i), end=day(4 + 2 * i)),
                         apartment_id="a1") for i in range(10)]
    plan.crashes[envs[0].message_id] = 1
    for e in envs:
        p.publish(e)
    replies = [p.reply() for _ in envs]
    assert all(r["status"] == "ok" for r in replies)
    requested = [e.payload for e in node.store.load("apartment:a1")
                 if e.type == "ReservationRequested"]
    assert [getattr(r, "reservation_id", None) for r in requested] == [f"r{i}" for i in range(10)]


# --- property: random crashes never change the outcome ---------------------------------

APTS = ("a0", "a1")


@st.composite
def workloads(draw: st.DrawFn) -> list[tuple[Message, str, int, bool]]:
    """(command, apartment, crashes before it passes, crash the actor before it)."""
    steps: list[tuple[Message, str, int, bool]] = [(add(a), a, 0, False) for a in APTS]
    rids: list[tuple[str, str]] = []
    for i in range(draw(st.integers(3, 14))):
        apt = draw(st.sampled_from(APTS))
        kind = draw(st.sampled_from(["request", "request", "accept", "reject"]))
        cmd: Message
        if kind == "request" or not rids:
            start = draw(st.integers(1, 12))
            rid = f"r{i}"
            rids.append((rid, apt))
            cmd = RequestReservation(reservation_id=rid, guest_id=f"g{i}", start=day(start),
                                     end=day(start + draw(st.integers(1, 4))))
        else:
            rid, apt = draw(st.sampled_from(rids))
            owner = draw(st.sampled_from([f"owner-{apt}", f"owner-{apt}", "mallory"]))
            cls = AcceptReservation if kind == "accept" else RejectReservation
            cmd = cls(reservation_id=rid, owner_id=owner)
        crashes = draw(st.sampled_from([0, 0, 0, 1, RETRIES, POISON]))
        steps.append((cmd, apt, crashes, draw(st.booleans())))
    return steps


def run(tmp: Path, steps: list[tuple[Envelope, str, int, bool]], *, faults: bool
        ) -> tuple[list[dict[str, Any]], dict[str, Apartment], list[str]]:
    plan = FaultPlan()
    s = make_settings(tmp)
    s.supervision.poison_retries = RETRIES
    node = Node(s, broker=MemoryBroker(), clock=pinned(TODAY), inject=plan if faults else None)
    node.start()
    try:
        assert isinstance(node.broker, MemoryBroker)
        p = MemoryProducer(node.broker)
        replies = []
        for env, apt, crashes, crash_before in steps:
            if not faults and crashes >= POISON:
                continue  # the crash-free run never sees the poison commands
            if faults:
                plan.crashes[env.message_id] = crashes
                ref = node.directory.ref(f"apartment:{apt}")
                if crash_before and ref is not None:
                    ref.tell(Crash("property test"))
            p.publish(env)
            reply = p.reply(timeout=20)
            if crashes < POISON or not faults:
                replies.append({k: reply[k] for k in ("status", "reason")})
            else:
                assert reply["status"] == "error" and reply["reason"] == "poison"
        states = {a: reduce(evolve, [timeless(e.payload) for e in node.store.load(
            f"apartment:{a}")], Apartment(apartment_id=a)) for a in APTS}
        with node.engine.connect() as c:
            handled = [r[0] for r in c.execute(select(inbox_table.c.message_id).where(
                inbox_table.c.consumer == "intake"))]
        return replies, states, handled
    finally:
        node.stop()


def timeless(event: Message) -> Message:
    """The event without its expiry deadline, which is dated by the wall clock."""
    if isinstance(event, ReservationRequested):
        return event.model_copy(update={"expires_at": None})
    return event


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(workloads())
def test_random_crashes_change_nothing_but_poison(
        tmp_path_factory: pytest.TempPathFactory,
        steps: list[tuple[Message, str, int, bool]]) -> None:
    envs = [(Envelope.new(cmd, apartment_id=apt), apt, crashes, before)
            for cmd, apt, crashes, before in steps]
    with_faults = run(tmp_path_factory.mktemp("faults"), envs, faults=True)
    without = run(tmp_path_factory.mktemp("clean"), envs, faults=False)
    assert with_faults[0] == without[0]  # same outcome for every non-poison command
    assert with_faults[1] == without[1]  # same final state of every apartment
    expected = sorted(e.message_id for e, _a, c, _b in envs if c < POISON)
    assert sorted(with_faults[2]) == expected  # each took effect exactly once


