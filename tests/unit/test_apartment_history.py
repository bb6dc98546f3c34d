"""What keeps an apartment's costs from growing with its history: its snapshot format,
its lazily decoded stays, its date index and its pending requests by id.

States are built by folding what ``decide`` makes of random commands, so they are
states the rules can reach. A snapshot taken anywhere, plus the events after it,
must give the state (and the decisions) of the full replay.
"""

from __future__ import annotations

import json
import zlib
from datetime import UTC, date, datetime, timedelta
from functools import reduce

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messages import (
    AcceptReservation,
    AddApartment,
    ApartmentAdded,
    BlockDates,
    CancelReservation,
    CancelUnpaidReservation,
    DelistApartment,
    ExpireReservation,
    Message,
    RejectReservation,
    RelistApartment,
    RequestReservation,
    ReservationRequested,
    UnblockDates,
    UpdateApartment,
    WithdrawRequest,
)
from rules.apartment import Apartment, Rules, Stay, StayStatus, decide, evolve
from rules.intervals import Intervals
from rules.snapshot import SnapshotError, from_snapshot, snapshot_of, to_snapshot
from rules.stays import Stays
from tests.conftest import TODAY, day

NOW = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)
TTL = timedelta(hours=24)
ADDED = ApartmentAdded(owner_id="o1", city="Lisbon", title="Flat", price_per_night=100,
                       currency="EUR", capacity=2)

_rid = st.sampled_from([f"r{i}" for i in range(12)] + ["r.1:@-"])
_block = st.sampled_from(["b1", "b2", "b3"])


@st.composite
def commands(draw: st.DrawFn) -> Message:
    """A command an apartment may be sent; most of them are accepted."""
    start = day(draw(st.integers(min_value=-2, max_value=40)))
    end = start + timedelta(days=draw(st.integers(min_value=0, max_value=9)))
    rid, who = draw(_rid), draw(st.sampled_from(["o1", "o1", "g1", "mallory"]))
    kind = draw(st.sampled_from(["request"] * 5 + ["accept"] * 3 + [
        "reject", "withdraw", "cancel", "unpaid", "expire", "block", "unblock", "delist",
        "relist", "update"]))
    match kind:
        case "request":
            return RequestReservation(reservation_id=rid, guest_id=who, start=start, end=end)
        case "accept":
            return AcceptReservation(reservation_id=rid, owner_id=who)
        case "reject":
            return RejectReservation(reservation_id=rid, owner_id=who)
        case "withdraw":
            return WithdrawRequest(reservation_id=rid, guest_id=who)
        case "cancel":
            return CancelReservation(reservation_id=rid, by=who)
        case "unpaid":
            return CancelUnpaidReservation(reservation_id=rid, reason="declined")
        case "expire":
            return ExpireReservation(reservation_id=rid)
        case "block":
            return BlockDates(owner_id=who, block_id=draw(_block), start=start, end=end)
        case "unblock":
            return UnblockDates(owner_id=who, block_id=draw(_block))
        case "delist":
            return DelistApartment(owner_id=who)
        case "relist":
            return RelistApartment(owner_id=who)
    return UpdateApartment(owner_id=who, price_per_night=draw(st.integers(1, 300)))


def rules_for(late: bool) -> Rules:
    return Rules(today=TODAY, now=NOW + (2 * TTL if late else timedelta(0)), request_ttl=TTL,
                 failed_payments=frozenset({"r2", "r5"}))


def history(cmds: list[Message], late: bool) -> list[Message]:
    """The events ``cmds`` make, each decided on the state before it."""
    rules = rules_for(late)
    state = evolve(Apartment(apartment_id="a1"), ADDED)
    events: list[Message] = [ADDED]
    for c in cmds:
        made = decide(state, c, rules)
        state = reduce(evolve, made, state)
        events += made
    return events


def fold(events: list[Message], state: Apartment | None = None) -> Apartment:
    return reduce(evolve, events, state or Apartment(apartment_id="a1"))


def assert_indexes_agree(state: Apartment) -> None:
    """The indexes are what the stays and blocks say."""
    stays = dict(state.stays.items())
    assert len(state.stays) == len(stays)
    assert dict(state.pending) == {r: s for r, s in stays.items()
                                   if s.status is StayStatus.PENDING}
    assert state.booked_dates == Intervals.of(
        (s.start.toordinal(), s.end.toordinal(), r) for r, s in stays.items()
        if s.status is StayStatus.ACCEPTED)
    assert state.pending_dates == Intervals.of(
        (s.start.toordinal(), s.end.toordinal(), r) for r, s in state.pending.items())
    assert state.blocked_dates == Intervals.of(
        (b.start.toordinal(), b.end.toordinal(), i) for i, b in state.blocks.items())


# --- snapshots ------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(commands(), min_size=1, max_size=60), st.booleans(), st.data())
def test_a_snapshot_gives_back_the_state_and_its_tail_gives_the_full_replay(
        cmds: list[Message], late: bool, data: st.DataObject) -> None:
    events = history(cmds, late)
    full = fold(events)
    assert from_snapshot(to_snapshot(full)) == full
    # snapshots taken along the way, each resumed from the one before (stays encoded
    # in a snapshot, then changed after it, then encoded again)
    # (read back, or kept as the actor keeps it)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=4)))
    state, at = Apartment(apartment_id="a1"), 0
    for cut in [*cuts, len(events)]:
        body, kept = snapshot_of(fold(events[at:cut], state))
        state = from_snapshot(body) if data.draw(st.booleans()) else kept
        at = cut
        assert state == kept == fold(events[:cut])
        assert_indexes_agree(state)
    assert state == full
    rules = rules_for(late)
    for c in cmds:  # and every command is decided alike on both
        assert decide(state, c, rules) == decide(full, c, rules)


def test_folding_keeps_the_indexes() -> None:
    events = history([RequestReservation(reservation_id=f"r{i}", guest_id="g",
                                         start=day(i % 5), end=day(i % 5 + 2))
                      for i in range(12)]
                     + [AcceptReservation(reservation_id="r3", owner_id="o1"),
                        BlockDates(owner_id="o1", block_id="b1", start=day(20), end=day(22)),
                        WithdrawRequest(reservation_id="r4", guest_id="g")], late=False)
    state = fold(events)
    assert_indexes_agree(state)
    assert state.stays["r3"].status is StayStatus.ACCEPTED
    assert [s.reservation_id for s in state.accepted_overlapping(day(2), day(4))] == ["r3"]
    # r3 took [3, 5): the requests that started on days 2 to 4 were turned down
    assert sorted(state.pending) == ["r0", "r1", "r10", "r11", "r5", "r6"]


def snapshot_of_history() -> bytes:
    cmds: list[Message] = [RequestReservation(reservation_id=f"r{i}", guest_id="g",
                                              start=day(i), end=day(i + 1))
                           for i in range(5)]
    cmds.append(AcceptReservation(reservation_id="r1", owner_id="o1"))
    return to_snapshot(fold(history(cmds, late=False)))


@pytest.mark.parametrize("damage", [
    lambda b: b[:-3],
    lambda b: b[:9],
    lambda b: b"",
    lambda b: b"not a snapshot",
    lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:],
    lambda b: b"00000000" + b[8:],
])
def test_a_damaged_snapshot_is_refused(damage: object) -> None:
    assert callable(damage)
    with pytest.raises(SnapshotError):
        from_snapshot(damage(snapshot_of_history()))


def with_crc(rest: bytes) -> bytes:
    return b"%08x" % zlib.crc32(rest) + rest


@pytest.mark.parametrize("header", [
    {},
    {"apartment_id": "a1"},
    [],
])
def test_a_snapshot_of_another_shape_is_refused(header: object) -> None:
    with pytest.raises(SnapshotError):
        from_snapshot(with_crc(json.dumps(header).encode() + b"\n"))


def test_a_pending_request_that_is_not_pending_is_refused() -> None:
    body = snapshot_of_history()
    rest = body[8:].replace(b'"pending",', b'"accepted",', 1)
    assert rest != body[8:]
    with pytest.raises(SnapshotError, match="pending"):
        from_snapshot(with_crc(rest))


# --- the stays left encoded ------------------------------------------------------------
def stay(rid: str, status: StayStatus = StayStatus.REJECTED, nights: int = 1) -> Stay:
    return Stay(rid, "g", day(1), day(1 + nights), 1, 100, "tok_visa", "4242", status,
                NOW + TTL)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=6), st.integers(1, 5), max_size=30),
       st.dictionaries(st.text(min_size=1, max_size=6), st.integers(1, 5), max_size=10),
       st.lists(st.text(max_size=6), max_size=10))
def test_encoded_stays_are_found_by_id(old: dict[str, int], new: dict[str, int],
                                       asked: list[str]) -> None:
    lines, count = Stays().lines(set())
    assert (lines, count) == (b"", 0)
    base = Stays()
    for rid, n in old.items():
        base = base.set(rid, stay(rid, nights=n))
    lines, count = base.lines(set())
    loaded = Stays(lines=lines, count=count)
    assert loaded == base and len(loaded) == len(old) and set(loaded) == set(old)
    changed = loaded
    for rid, n in new.items():
        changed = changed.set(rid, stay(rid, StayStatus.ACCEPTED, n))
    expected = {**{r: stay(r, nights=n) for r, n in old.items()},
                **{r: stay(r, StayStatus.ACCEPTED, n) for r, n in new.items()}}
    assert dict(changed.items()) == expected and len(changed) == len(expected)
    for rid in [*asked, *old, *new]:
        assert changed.get(rid) == expected.get(rid)
        assert (rid in changed) == (rid in expected)
    again = Stays(lines=changed.lines(set())[0], count=changed.lines(set())[1])
    assert again == changed


def test_many_encoded_stays_are_found_past_the_signposts() -> None:
    """Enough lines for many signposts: every stay is found, and no id between them."""
    stays = Stays()
    for i in range(0, 3000, 2):
        stays = stays.set(f"r{i:05}", stay(f"r{i:05}"))
    lines, count = stays.lines(set())
    assert len(lines) > 20 * 4096
    loaded = Stays(lines=lines, count=count)
    for i in range(-1, 3001):
        rid = f"r{i:05}"
        assert (rid in loaded) == (i % 2 == 0 and 0 <= i < 3000)
        assert loaded.get(rid) == (stay(rid) if rid in loaded else None)
    changed = loaded.set("r00001", stay("r00001")).set("r02998", stay("r02998", nights=3))
    again = Stays(lines=changed.lines(set())[0], count=changed.lines(set())[1])
    assert again == changed and len(again) == 1501


def test_left_out_stays_are_not_encoded() -> None:
    stays = Stays().set("r1", stay("r1", StayStatus.PENDING)).set("r2", stay("r2"))
    lines, count = stays.lines({"r1"})
    assert count == 1 and b'"r2"' in lines and b'"r1"' not in lines


# --- the date index --------------------------------------------------------------------
_interval = st.tuples(st.integers(0, 60), st.integers(-2, 40), st.sampled_from("abcdefgh"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), _interval), max_size=400),
       st.integers(-5, 70), st.integers(0, 30))
def test_the_index_finds_exactly_the_overlapping_intervals(
        steps: list[tuple[bool, tuple[int, int, str]]], at: int, nights: int) -> None:
    def d(n: int) -> date:
        return TODAY + timedelta(days=n)

    index, present = Intervals(), set()
    for add, (start, length, key) in steps:
        entry = (d(start).toordinal(), d(start + length).toordinal(), key)
        if add:
            index = index.add(d(start), d(start + length), key)
            present.add(entry)
        else:
            index = index.remove(d(start), d(start + length), key)
            present.discard(entry)
    assert index == Intervals.of(present) and list(index) == sorted(present)
    assert len(index) == len(present)
    first, last = d(at).toordinal(), d(at + nights).toordinal()
    # the rule of Stay.overlaps, for every interval, degenerate ones included
    expected = sorted(e for e in present if e[0] < last and first < e[1])
    assert list(index.overlapping(d(at), d(at + nights))) == [e[2] for e in expected]


def test_the_longest_interval_is_forgotten_when_it_goes() -> None:
    index = Intervals().add(day(0), day(30), "long").add(day(40), day(41), "short")
    assert index.longest == 30
    assert index.remove(day(0), day(30), "long").longest == 1


def test_requests_are_indexed_by_date_not_scanned() -> None:
    """Answered requests leave the pending index; accepted ones enter the booked one."""
    state = fold([ADDED, *[ReservationRequested(
        reservation_id=f"r{i}", guest_id="g", owner_id="o1", start=day(i), end=day(i + 1),
        guests=1, total_price=100, card_token="tok_visa", card_last4="4242")
        for i in range(300)]])
    assert len(state.pending_dates) == 300
    rules = rules_for(late=False)
    events = decide(state, AcceptReservation(reservation_id="r7", owner_id="o1"), rules)
    state = reduce(evolve, events, state)
    assert len(state.pending_dates) == 299 and list(state.booked_dates) == [
        (day(7).toordinal(), day(8).toordinal(), "r7")]
    assert decide(state, AddApartment(owner_id="o", city="c", title="t", price_per_night=1,
                                      currency="EUR", capacity=1), rules)
