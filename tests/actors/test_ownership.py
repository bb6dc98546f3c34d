"""A property of ownership: wherever an apartment's commands go, the answers are serial.

Three nodes share one store (a SQLite file), as intake nodes do. Each apartment is
owned by one node at a time (its partition); hypothesis moves it between nodes, with
or without a release of the old owner's actors, so a node may keep an actor whose
memory another node's commits made stale, and get the apartment back later (a pause:
it received nothing meanwhile, and the timers of what was recorded elsewhere may fire
at it first). It also kills nodes, crashes and restarts actors, records failed
payments, and sends random lifecycle commands from owners, guests and strangers, many
of them no-ops on some state (an expiry, an unpaid cancellation: no events).

The model is serial: the pure ``decide`` / ``evolve`` of :mod:`rules.apartment`,
applied in the order the commands were answered (each is sent and its reply awaited
before the next). Every reply must be what the model decides, every stream must
replay to the model's state, and the owner's actor, once it has handled a command
since it got the apartment, must hold what the stream replays to. Nothing is mocked;
commands are dispatched to the directory with a source per apartment, as the
partition intake does, so a release stops exactly that partition's actors.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from dataclasses import dataclass, field, replace
from functools import reduce
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from actors.base import GetState
from actors.outcome import Outcome, Ticket
from broker.memory import MemoryBroker
from messages import (
    AcceptReservation,
    AddApartment,
    BlockDates,
    CancelReservation,
    CancelUnpaidReservation,
    CommandRejected,
    CommandResult,
    Envelope,
    ExpireReservation,
    Message,
    PaymentFailed,
    RejectReservation,
    RequestReservation,
    ReservationRejected,
    UnblockDates,
    WithdrawRequest,
)
from node import Node
from rules.apartment import Apartment, Rules, decide, evolve
from rules.clock import pinned
from rules.stays import Stays
from store import Commit
from supervisor import Crash, InjectedCrash
from tests.conftest import TODAY, day, eventually, make_settings

# A pass takes about half a minute; a failure is shrunk for minutes before it is shown.
pytestmark = pytest.mark.timeout(600)

NODES = 3
MAX_KILLS = 2  # an example: each costs a node's stop and start (most of a step's time)
APTS = ("a0", "a1")
RIDS = 2  # reservation ids per apartment
BLOCKS = 2  # block ids per apartment
STRANGER = "mallory"
RID = st.integers(0, RIDS - 1)
APT = st.sampled_from(APTS)
# The no-ops (expire, cancel_unpaid) and requests, twice as often as the others.
KIND = st.sampled_from(["request", "request", "accept", "reject", "withdraw", "cancel",
                        "expire", "expire", "cancel_unpaid", "cancel_unpaid", "add", "block",
                        "unblock"])
PARTY = st.sampled_from(["owner", "guest", "stranger"])
START = st.integers(-1, 6)  # days after today: the past, today, overlapping stays
NIGHTS = st.integers(1, 3)
CRASH = st.sampled_from([False, False, False, True])


def owner_of(apt: str) -> str:
    return f"owner-{apt}"


def rid_of(apt: str, i: int) -> str:
    return f"{apt}-r{i}"


def guest_of(i: int) -> str:
    return f"guest-{i}"


def source_of(apt: str) -> str:
    """The queue an apartment's commands come from: one partition per apartment."""
    return f"partition.{apt}"


def timeless(state: Apartment) -> Apartment:
    """``state`` without its requests' expiry deadlines, which the node's clock dates
    to the microsecond (the model decides without a clock: every request is open)."""
    stays: Stays = state.stays
    for rid, stay in state.stays.items():
        stays = stays.set(rid, replace(stay, expires_at=None))
    pending = state.pending
    for rid, stay in state.pending.items():
        pending = pending.set(rid, replace(stay, expires_at=None))
    return replace(state, stays=stays, pending=pending)


@dataclass
class Faults:
    """The entity actors' fault hook: crash before deciding the listed messages, once."""

    once: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, entity_id: str, env: Envelope) -> None:
        with self.lock:
            if env.message_id not in self.once:
                return
            self.once.discard(env.message_id)
        raise InjectedCrash(f"injected crash on {env.type} in {entity_id}")


def expected_reply(command: Message, events: list[Message]) -> tuple[str, str | None,
                                                                      list[str]]:
    """(status, reason, event types) the model's events make of ``command``'s reply:
    its first event a refusal (for an owner's RejectReservation, the success)."""
    first = events[0] if events else None
    types = [type(e).__name__ for e in events]
    if isinstance(first, CommandRejected) or (
            isinstance(first, ReservationRejected)
            and not isinstance(command, RejectReservation)):
        return "rejected", first.reason.value, types
    return "ok", None, types


class Ownership(RuleBasedStateMachine):
    """Nodes on one store; apartments moving between them; a serial model."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="staybook-ownership-"))
        self.url = f"sqlite:///{self.tmp / 'store.db'}"
        self.faults = Faults()
        self.nodes: list[Node] = []
        for i in range(NODES):
            self.nodes.append(self._start(i))
        self.model = {apt: Apartment(apartment_id=apt) for apt in APTS}
        self.failed: set[str] = set()  # reservations with a PaymentFailed on record
        self.owner = {apt: i % NODES for i, apt in enumerate(APTS)}
        # The owner's actor has handled a command (or rehydrated) since it got the
        # apartment: from then on its memory must be the stream's.
        self.warm = dict.fromkeys(APTS, False)
        self.kills = 0

    def _start(self, i: int) -> Node:
        s = make_settings(self.tmp, database_url=self.url, node_name=f"n{i}",
                          roles=["commands"])
        s.actors.snapshot_every = 5  # rehydrations start from snapshots too
        node = Node(s, broker=MemoryBroker(), clock=pinned(TODAY), inject=self.faults)
        node.start()
        return node

    def teardown(self) -> None:
        """Stop the nodes and remove the store."""
        try:
            # At once: each waits mostly for its threads to end.
            stops = [threading.Thread(target=n.stop) for n in self.nodes]
            for t in stops:
                t.start()
            for t in stops:
                t.join()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- the model ---------------------------------------------------------------------
    def _rules(self, command: Message) -> Rules:
        """The rules the actor decides with, but no clock (requests never expire)."""
        failed: frozenset[str] = frozenset()
        if isinstance(command, CancelUnpaidReservation) and command.reservation_id in self.failed:
            failed = frozenset({command.reservation_id})
        ctx = self.nodes[0].directory.ctx
        return Rules(today=TODAY, max_stay_nights=ctx.max_stay_nights,
                     policy=ctx.lifecycle.policy, failed_payments=failed)

    def _replayed(self, apt: str) -> Apartment:
        events = self.nodes[0].store.load(f"apartment:{apt}")
        return reduce(evolve, [e.payload for e in events], Apartment(apartment_id=apt))

    def _send(self, apt: str, command: Message, *, crash: bool = False) -> None:
        """Dispatch ``command`` to the apartment's owner; its reply must be the model's."""
        events = decide(self.model[apt], command, self._rules(command))
        node = self.nodes[self.owner[apt]]
        env = Envelope.new(command, apartment_id=apt)
        if crash:
            with self.faults.lock:
                self.faults.once.add(env.message_id)
        outcomes: queue.Queue[Outcome] = queue.Queue()
        ticket = Ticket(outcomes.put, message_id=env.message_id)
        node.directory.dispatch("apartment", apt, env, ticket, source=source_of(apt))
        outcome = outcomes.get(timeout=20)
        assert outcome.kind == "ack" and outcome.reply is not None, outcome
        reply = Envelope.from_json(outcome.reply).payload
        assert isinstance(reply, CommandResult)
        got = (reply.status.value, reply.reason, [e["type"] for e in reply.events])
        assert got == expected_reply(command, events), (command, got)
        self.model[apt] = reduce(evolve, events, self.model[apt])
        self.warm[apt] = True

    @staticmethod
    def _command(apt: str, kind: str, i: int, party: str, start: int,
                 nights: int) -> Message:
        """A lifecycle command of ``kind``, by ``party`` (guest ``i`` asks for
        reservation ``i``); ``start`` and ``nights`` date requests and blocks."""
        rid, block = rid_of(apt, i), f"b{i % BLOCKS}"
        who = {"owner": owner_of(apt), "guest": guest_of(i), "stranger": STRANGER}[party]
        match kind:
            case "request":
                return RequestReservation(reservation_id=rid, guest_id=guest_of(i),
                                          start=day(start), end=day(start + nights))
            case "accept":
                return AcceptReservation(reservation_id=rid, owner_id=who)
            case "reject":
                return RejectReservation(reservation_id=rid, owner_id=who)
            case "withdraw":
                return WithdrawRequest(reservation_id=rid, guest_id=who)
            case "cancel":
                return CancelReservation(reservation_id=rid, by=who)
            case "expire":
                return ExpireReservation(reservation_id=rid)
            case "cancel_unpaid":
                return CancelUnpaidReservation(reservation_id=rid, reason="card_declined")
            case "add":
                return AddApartment(owner_id=who, city="Oslo", title="U", price_per_night=90,
                                    currency="EUR", capacity=3)
            case "block":
                return BlockDates(owner_id=who, block_id=block, start=day(start),
                                  end=day(start + nights))
        return UnblockDates(owner_id=who, block_id=block)

    # --- rules: commands ---------------------------------------------------------------
    @initialize()
    def add_apartments(self) -> None:
        """Each apartment listed on its first owner, which keeps an actor of it."""
        for apt in APTS:
            self._send(apt, AddApartment(owner_id=owner_of(apt), city="Rome", title="T",
                                         price_per_night=100, currency="EUR", capacity=2))

    @rule(apt=APT, kind=KIND, i=RID, party=PARTY, start=START, nights=NIGHTS, crash=CRASH)
    def command(self, apt: str, kind: str, i: int, party: str, start: int, nights: int,
                crash: bool) -> None:
        """One lifecycle command to the apartment's owner; ``crash``: its actor crashes
        once before deciding it. Expiries and unpaid cancellations are no-ops (no
        events) on many states."""
        self._send(apt, self._command(apt, kind, i, party, start, nights), crash=crash)

    @rule(apt=APT, i=RID, writer=st.integers(0, NODES - 1))
    def payment_failed(self, apt: str, i: int, writer: int) -> None:
        """What the payment handler records when a card is declined (on any node)."""
        rid = rid_of(apt, i)
        if rid in self.failed:
            return
        failed = Envelope.new(PaymentFailed(reservation_id=rid, guest_id=guest_of(i),
                                            amount=100, reason="card_declined"),
                              apartment_id=apt)
        done: list[BaseException | None] = []
        node = self.nodes[writer]
        node.writer.submit(Commit(stream_id=f"payment:{rid}", expected_version=0,
                                  events=[failed], on_done=done.append))
        node.writer.barrier()
        assert done == [None]
        self.failed.add(rid)

    # --- rules: ownership --------------------------------------------------------------
    @rule(apt=APT, shift=st.integers(1, NODES - 1), release=st.booleans())
    def move(self, apt: str, shift: int, release: bool) -> None:
        """The apartment's partition goes to another node for good (until it moves
        again); the old owner releases its actors, or keeps them, stale from now on."""
        old = self.owner[apt]
        if release:
            self.nodes[old].directory.release(source_of(apt))
            assert self.nodes[old].directory.ref(f"apartment:{apt}") is None
        self.owner[apt] = (old + shift) % NODES
        self.warm[apt] = False

    @rule(apt=APT, shift=st.integers(1, NODES - 1),
          away=st.lists(st.tuples(KIND, RID, PARTY, START, NIGHTS), min_size=1, max_size=3),
          fire=st.booleans())
    def pause(self, apt: str, shift: int, away: list[tuple[str, int, str, int, int]],
              fire: bool) -> None:
        """The owner keeps its actors but hears nothing for a while: the partition goes
        to another node for the ``away`` commands, then comes back unreleased. With
        ``fire``, what the reservations named away have pending fires at the owner
        first: their expiry timers, and the unpaid cancellation of those whose card
        was declined. From the owner's old memory these are often "nothing to do"."""
        home = self.owner[apt]
        self.owner[apt] = (home + shift) % NODES
        self.warm[apt] = False
        for step in away:
            self._send(apt, self._command(apt, *step))
        self.owner[apt] = home
        self.warm[apt] = False
        if fire:
            for i in dict.fromkeys(i for _kind, i, *_rest in away):
                rid = rid_of(apt, i)
                self._send(apt, ExpireReservation(reservation_id=rid))
                if rid in self.failed:
                    self._send(apt, CancelUnpaidReservation(reservation_id=rid,
                                                            reason="card_declined"))

    @precondition(lambda self: self.kills < MAX_KILLS)
    @rule(i=st.integers(0, NODES - 1))
    def kill(self, i: int) -> None:
        """Node ``i`` stops, and a fresh one takes its place on the same store."""
        self.kills += 1
        self.nodes[i].stop()
        self.nodes[i] = self._start(i)
        for apt in APTS:
            if self.owner[apt] == i:
                self.warm[apt] = False

    @rule(crash=st.booleans(), i=st.integers(0, NODES - 1), apt=APT)
    def restart(self, crash: bool, i: int, apt: str) -> None:
        """Node ``i``'s actor of ``apt``, if live, crashes (its supervisor restarts it)
        or is restarted (``ctl restart``); its successor rehydrates behind nothing,
        every command having been answered."""
        d = self.nodes[i].directory
        eid = f"apartment:{apt}"
        old = d.ref(eid)
        if old is None:
            return
        if crash:
            old.tell(Crash("property test"))
            eventually(lambda: d.ref(eid) not in (None, old))
        else:
            assert d.restart(eid)
        new = d.ref(eid)
        assert new is not None
        assert new.ask(GetState()) == self._replayed(apt)
        if self.owner[apt] == i:
            self.warm[apt] = True

    # --- invariants --------------------------------------------------------------------
    @invariant()
    def streams_replay_to_the_model(self) -> None:
        """What the store holds is what the serial model decided, in reply order."""
        for apt in APTS:
            assert timeless(self._replayed(apt)) == self.model[apt], apt

    @invariant()
    def a_warm_owner_remembers_the_stream(self) -> None:
        """An owner that has decided since it got the apartment decided from the stream
        (an idle stale actor elsewhere may lag: it reloads when asked to decide)."""
        for apt in APTS:
            ref = self.nodes[self.owner[apt]].directory.ref(f"apartment:{apt}")
            if not self.warm[apt] or ref is None:
                continue
            assert ref.ask(GetState()) == self._replayed(apt), apt


Ownership.TestCase.settings = settings(
    max_examples=15, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestOwnership = Ownership.TestCase
