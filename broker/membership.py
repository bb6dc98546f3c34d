"""Cluster membership over the broker, and which node consumes which command partition.

Every node that runs the ``commands`` role:

* holds an exclusive queue ``<prefix>.members.<node_name>`` for as long as its
  membership connection lives. RabbitMQ lets one connection at a time hold an
  exclusive queue, so a second node with the same name is refused at start
  (:class:`NodeNameInUse`); the queue vanishes with the connection, so a SIGKILLed
  node's name is free again at once.
* publishes a beat every ``interval`` seconds on the fanout exchange
  ``<prefix>.members``: its name, the partitions it holds (consuming, or draining
  after a release), and whether it is leaving. Every member's queue receives every
  beat.
* counts as live the members whose last beat is younger than ``timeout`` and not
  leaving, and computes the same assignment as every other member from that set
  alone (:func:`assign`: balanced rendezvous hashing, so each node gets floor(P/N) or
  ceil(P/N) partitions and a change of members moves few partitions).
* consumes an assigned partition only once no other live member claims it, and
  releases (cancel, then settle what is in flight) every partition it holds but is no
  longer assigned. A handoff is thus: the old owner drains and stops claiming, the
  new owner subscribes. Single-active-consumer keeps it exclusive even when views
  differ for a moment (a node paused past ``timeout``): a second subscriber waits
  until the first one's consumer is gone.

Detection: a node that dies stops beating; the others drop it ``timeout`` seconds
after its last beat and take its partitions. A node that stops gracefully drains,
then sends a leaving beat, so the others take over at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
from pika.exceptions import AMQPError, ChannelClosedByBroker

from broker.rabbitmq import RabbitBroker, ReconnectingService
from config import redact_url

log = logging.getLogger(__name__)

RESOURCE_LOCKED = 405
MAX_BEAT_BYTES = 64 * 1024
MAX_STORE_CHARS = 300  # what of another node's store description a message shows


class NodeNameInUse(Exception):
    """Another live node already uses this node name on this broker."""


class StoreMismatch(Exception):
    """A live member writes to another store than this node's: joining would split
    every apartment's history over two stores.

    Attributes:
        node: the member that announced the other store.
        store_id: that store's id; ``store``: where it is, as that member announced it.
        own_id: this node's store id; ``own``: where this node's store is.
    """

    def __init__(self, node: str, store_id: str, store: str | None, own_id: str,
                 own: str | None) -> None:
        self.node, self.store_id, self.store = node, store_id, store
        self.own_id, self.own = own_id, own
        super().__init__(
            f"this node's store {own or '?'} (id {own_id[:8]}) is not the cluster's: "
            f"{node} runs on {redact_url(store or '?')} (id {store_id[:8]}); one cluster "
            f"needs one store: set STAYBOOK_DATABASE_URL to the cluster's, or give this "
            f"node a cluster of its own (STAYBOOK_BROKER__PREFIX)")


def _score(partition: int, member: str) -> int:
    digest = hashlib.blake2b(f"{partition}/{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(partitions: int, members: Iterable[str]) -> dict[str, list[int]]:
    """Which partitions each member consumes: balanced rendezvous hashing.

    Every partition ranks the members by a hash of (partition, member) and goes to
    the best-ranked member that still has room. Room is ceil(P/N) for at most P mod N
    members and floor(P/N) for the rest, so the spread is as even as it can be.
    Every member computes the same answer from the same set, whatever the order.

    Args:
        partitions: P, the number of partitions.
        members: the live members' names.
    """
    names = sorted(set(members))
    out: dict[str, list[int]] = {m: [] for m in names}
    if not names:
        return out
    low, extra = divmod(partitions, len(names))
    at_high = 0
    for p in range(partitions):
        for m in sorted(names, key=lambda m: _score(p, m), reverse=True):
            n = len(out[m])
            if n < low or (n == low and at_high < extra):
                if n == low:
                    at_high += 1
                out[m].append(p)
                break
    return out


@dataclass(frozen=True)
class Beat:
    """One member's announcement.

    ``store_id`` and ``store`` (where it is, without a password) say which store the
    member writes to; beats of nodes older than that field carry neither (None).
    """

    node: str
    held: tuple[int, ...]
    leaving: bool = False
    store_id: str | None = None
    store: str | None = None

    def to_json(self) -> bytes:
        """The wire form."""
        d: dict[str, Any] = {"node": self.node, "held": list(self.held),
                             "leaving": self.leaving}
        if self.store_id is not None:
            d["store_id"] = self.store_id
            d["store"] = self.store
        return json.dumps(d).encode()

    @classmethod
    def from_json(cls, body: bytes) -> Beat | None:
        """Parse a beat; None for anything malformed (never raises)."""
        if len(body) > MAX_BEAT_BYTES:
            return None
        try:
            d = json.loads(body)
            held = tuple(int(p) for p in d["held"])
            sid, where = d.get("store_id"), d.get("store")
            return cls(node=str(d["node"]), held=held, leaving=bool(d.get("leaving")),
                       store_id=None if sid is None else str(sid)[:MAX_STORE_CHARS],
                       store=None if where is None else str(where)[:MAX_STORE_CHARS])
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass
class _Seen:
    beat: Beat
    at: float = field(default_factory=time.monotonic)


class Membership(ReconnectingService):
    """Beats, the view of live members, and this node's share of the partitions.

    Args:
        broker: the RabbitMQ broker (its URL and topology).
        node_name: this node's unique name.
        partitions: P.
        held: the partitions this node holds now (consuming or draining).
        want: called on this service's thread with the partitions to consume now.
        interval: seconds between beats.
        timeout: a member silent this long is taken for dead.
        leave_seconds: how long a stopping node waits for its partitions to drain
            before it leaves anyway (the broker then redelivers what was unsettled).
        store_id: the id of the store this node writes to, announced in every beat
            (None: announce none, and compare none).
        store: where that store is, without a password (for others' messages).
    """

    def __init__(self, broker: RabbitBroker, node_name: str, partitions: int, *,
                 held: Callable[[], set[int]], want: Callable[[set[int]], None],
                 interval: float, timeout: float, leave_seconds: float,
                 store_id: str | None = None,
                 store: str | None = None) -> None:
        super().__init__("membership", broker.reconnect_max_delay)
        self.leave_seconds = leave_seconds
        self._broker = broker
        self.node_name = node_name
        self.partitions = partitions
        self._held = held
        self._want = want
        self.interval = interval
        self.timeout = timeout
        topo = broker.topology
        self.exchange = f"{topo.prefix}.members"
        self.queue = f"{topo.prefix}.members.{node_name}"
        self._conn: pika.BlockingConnection | None = None
        self._lock = threading.Lock()
        self._seen: dict[str, _Seen] = {}
        self._leaving = threading.Event()
        self._last_view: tuple[str, ...] = ()
        self._listening_since = 0.0
        self._listened_from: float | None = None
        self.store_id = store_id
        self.store = store
        self._warned: set[str] = set()

    # --- the name ----------------------------------------------------------------
    def claim_name(self) -> None:
        """Take the node name on the broker (call before :meth:`start`).

        Raises:
            NodeNameInUse: when a live node holds the name.
            pika.exceptions.AMQPError: when the broker cannot be reached.
        """
        self._conn = self._open()

    def check_store(self) -> None:
        """Listen for the members' beats for two intervals (after :meth:`claim_name`,
        before :meth:`start`) and refuse to join a cluster that runs on another store.

        What it hears counts towards the first view, so the session does not listen
        for those intervals again before its first choice of partitions.

        Raises:
            StoreMismatch: when a live member announces another store id (the name's
                hold on the broker is let go first).
        """
        conn = self._conn
        if conn is None or self.store_id is None:
            return
        self._listened_from = time.monotonic()
        deadline = self._listened_from + 2 * self.interval
        ch = conn.channel()
        try:
            # Polled, not consumed: cancelling a consumer would auto-delete the queue.
            while (left := deadline - time.monotonic()) > 0:
                method, props, body = ch.basic_get(self.queue, auto_ack=True)
                if method is None:
                    conn.sleep(min(left, 0.05))
                    continue
                self._on_beat(ch, method, props, body)
                other = self._other_store()
                if other is not None:
                    self._conn = None
                    with contextlib.suppress(AMQPError, OSError):
                        conn.close()
                    raise StoreMismatch(other.node, str(other.store_id), other.store,
                                        self.store_id, self.store)
        finally:
            if ch.is_open:
                with contextlib.suppress(AMQPError, OSError):
                    ch.close()

    def _other_store(self) -> Beat | None:
        """A live member's beat that names another store than this node's, if any."""
        now = time.monotonic()
        with self._lock:
            for n, seen in sorted(self._seen.items()):
                b = seen.beat
                if (n != self.node_name and not b.leaving and now - seen.at < self.timeout
                        and b.store_id is not None and b.store_id != self.store_id):
                    return b
        return None

    def _open(self) -> pika.BlockingConnection:
        conn = pika.BlockingConnection(self._broker.params())
        try:
            ch = conn.channel()
            ch.exchange_declare(self.exchange, exchange_type="fanout", durable=True)
            ch.queue_declare(self.queue, exclusive=True, auto_delete=True,
                             arguments={"x-max-length": 10_000})
            ch.queue_bind(self.queue, self.exchange)
            ch.close()
        except ChannelClosedByBroker as exc:
            with contextlib.suppress(AMQPError, OSError):
                conn.close()
            if exc.reply_code == RESOURCE_LOCKED:
                raise NodeNameInUse(
                    f"node name {self.node_name!r} is already in use on this broker; "
                    f"give each node its own STAYBOOK_NODE_NAME") from exc
            raise
        except BaseException:
            with contextlib.suppress(AMQPError, OSError):
                conn.close()
            raise
        return conn

    # --- the view ----------------------------------------------------------------
    def members(self) -> list[str]:
        """The live members (this node included while it runs and is not leaving)."""
        now = time.monotonic()
        with self._lock:
            live = [n for n, s in self._seen.items()
                    if not s.beat.leaving and now - s.at < self.timeout]
        if not self._leaving.is_set():
            live.append(self.node_name)
        return sorted(set(live))

    def claims(self) -> dict[int, str]:
        """Partition -> the other live member that says it holds it."""
        now = time.monotonic()
        out: dict[int, str] = {}
        with self._lock:
            for n, s in self._seen.items():
                if n != self.node_name and now - s.at < self.timeout:
                    for p in s.beat.held:
                        out[p] = n
        return out

    def assigned(self) -> list[int]:
        """This node's share under the current view."""
        return assign(self.partitions, self.members()).get(self.node_name, [])

    # --- the loop ----------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        """The connection's facts, and the live members this node sees."""
        return {**super().facts(), "members": len(self.members())}

    def session(self) -> None:
        """Beat, listen and reconcile until stopped; announce leaving on the way out."""
        conn = self._conn or self._open()
        self._conn = None
        try:
            ch = conn.channel()
            ch.basic_consume(self.queue, self._on_beat, auto_ack=True)
            self.connected.set()
            # The first session counts what :meth:`check_store` already heard.
            self._listening_since = self._listened_from or time.monotonic()
            self._listened_from = None
            next_beat = 0.0
            while not self.stopping():
                now = time.monotonic()
                if now >= next_beat:
                    # Listen for two beats before the first choice, so a node that
                    # joins does not first reach for every partition.
                    if now - self._listening_since >= 2 * self.interval:
                        self._reconcile()
                    self._publish(ch, leaving=False)
                    next_beat = now + self.interval
                conn.process_data_events(time_limit=min(0.1, self.interval))
            # Leaving: stop claiming an assignment, let the partitions drain, then
            # tell the others they may take everything at once.
            self._leaving.set()
            self._want(set())
            deadline = time.monotonic() + self.leave_seconds
            while self._held() and time.monotonic() < deadline:
                self._publish(ch, leaving=True)
                conn.process_data_events(time_limit=0.1)
            self._publish(ch, leaving=True)
        finally:
            with contextlib.suppress(AMQPError, OSError):
                conn.close()

    def _publish(self, ch: Any, *, leaving: bool) -> None:
        beat = Beat(self.node_name, tuple(sorted(self._held())), leaving,
                    store_id=self.store_id, store=self.store)
        ch.basic_publish(self.exchange, "", beat.to_json(), pika.BasicProperties(
            delivery_mode=1, expiration=str(int(self.timeout * 1000))))

    def _on_beat(self, _ch: Any, _method: Any, _props: Any, body: bytes) -> None:
        beat = Beat.from_json(body)
        if beat is None or beat.node == self.node_name:
            return
        if (self.connected.is_set() and beat.store_id is not None
                and self.store_id is not None and beat.store_id != self.store_id
                and beat.node not in self._warned):
            # Joined after this node's check (both started at once): say so, once a member.
            self._warned.add(beat.node)
            log.error("member %s runs on another store (%s, id %s) than this node (%s, "
                      "id %s): one cluster needs one store", beat.node,
                      redact_url(beat.store or "?"), beat.store_id[:8], self.store,
                      self.store_id[:8])
        with self._lock:
            self._seen[beat.node] = _Seen(beat)
            # Bounded: forget members silent for far longer than the timeout.
            cutoff = time.monotonic() - 10 * self.timeout
            for n in [n for n, s in self._seen.items() if s.at < cutoff]:
                del self._seen[n]

    def _reconcile(self) -> None:
        members = tuple(self.members())
        if members != self._last_view:
            # The first view is what the node's start line implies; changes are news.
            log.log(logging.INFO if self._last_view else logging.DEBUG,
                    "cluster view: %s", ", ".join(members))
            self._last_view = members
        mine = set(self.assigned())
        claimed = self.claims()
        held = self._held()
        want = {p for p in mine if p in held or p not in claimed}
        self._want(want)


class PartitionIntake:
    """Consumers for the partitions this node is told to consume; a supervised service.

    :meth:`want` starts a consumer for each newly wanted partition and releases the
    others: a release cancels the consumer and lets its deliveries settle (on a thread
    of its own, so the membership loop never waits), and the partition counts as held
    until that is done. It is called at every beat, so it also restarts a consumer
    that stopped or whose hub's thread died (the hub reconnects by itself; this is for
    the rest). Every partition is a channel on the broker's one consumer connection.

    What was built from a partition's commands (the node's live entity actors) must
    not outlive this node's hold on it: another node commits to those streams while
    it owns the partition. ``release`` is called with the partition's queue once its
    consumer drained, before the partition stops counting as held (so no other node
    takes it while the actors still run), and again, without waiting, whenever a
    consumer subscribes (a lost channel or connection may have let another node
    consume the queue meanwhile).

    Args:
        broker: the RabbitMQ broker.
        on_delivery: what every partition's deliveries go to (the node's intake).
        prefetch: unacked deliveries per partition.
        release_seconds: the most a release waits for its consumer to drain and stop.
        release: forgets what was built from a queue's deliveries; called with the
            queue and how long it may wait (None: not at all).
    """

    name = "partitions"

    def __init__(self, broker: RabbitBroker, on_delivery: Callable[[Any], None], *,
                 prefetch: int, release_seconds: float,
                 release: Callable[[str, float | None], object] | None = None) -> None:
        self._broker = broker
        self._release = release
        self._release_seconds = release_seconds
        self._on_delivery = on_delivery
        self._prefetch = prefetch
        self._lock = threading.Lock()
        self._active: dict[int, Any] = {}
        self._releasing: dict[int, threading.Thread] = {}
        self._alive = False
        self.taken = 0
        self.released = 0
        self.restarted = 0

    def start(self) -> None:
        """Nothing is consumed until :meth:`want` says what."""
        self._alive = True

    def stop(self, timeout: float = 10.0) -> None:
        """Release every partition, all at once, and wait for them to drain."""
        self._alive = False
        self.want(set())
        deadline = time.monotonic() + timeout
        for t in list(self._releasing.values()):
            t.join(max(0.0, deadline - time.monotonic()))

    def is_alive(self) -> bool:
        """True until stopped."""
        return self._alive

    def held(self) -> set[int]:
        """Partitions consumed now or still draining."""
        with self._lock:
            self._releasing = {p: t for p, t in self._releasing.items() if t.is_alive()}
            return set(self._active) | set(self._releasing)

    def consumers(self) -> dict[int, Any]:
        """The live consumer of each partition consumed now."""
        with self._lock:
            return dict(self._active)

    def want(self, partitions: set[int]) -> None:
        """Consume exactly ``partitions`` from now on."""
        topo = self._broker.topology
        with self._lock:
            if not self._alive:
                partitions = set()
            for p in sorted(set(self._active) - partitions):
                consumer = self._active.pop(p)
                t = threading.Thread(target=self._hand_back, args=(consumer,),
                                     name=f"release-p{p}", daemon=True)
                self._releasing[p] = t
                self.released += 1
                log.debug("releasing partition %d", p)
                t.start()
            for p in sorted(partitions & set(self._active)):
                if not self._active[p].is_alive():  # it stopped, or the hub died: start it again
                    log.warning("partition %d: consumer died; restarting it", p)
                    self._active[p].start()
                    self.restarted += 1
            for p in sorted(partitions - set(self._active)):
                if p in self._releasing and self._releasing[p].is_alive():
                    continue  # still draining from an earlier release: next round
                queue = topo.partition_queue(p)
                consumer = self._broker.consumer(queue, self._on_delivery,
                                                 prefetch=self._prefetch,
                                                 name=f"consumer-p{p:03d}",
                                                 on_subscribed=self._forgetter(queue))
                consumer.start()
                self._active[p] = consumer
                self.taken += 1
                log.debug("consuming partition %d", p)


    def _hand_back(self, consumer: Any) -> None:
        """A release thread: drain the consumer, then stop what its deliveries built."""
        consumer.stop(self._release_seconds)
        if self._release is not None:
            try:
                self._release(consumer.queue, self._release_seconds)
            except Exception:
                log.exception("releasing what %s built failed", consumer.queue)

    def _forgetter(self, queue: str) -> Callable[[], None] | None:
        """What a consumer of ``queue`` calls as it subscribes: release, without waiting."""
        release = self._release
        if release is None:
            return None

        def forget() -> None:
            release(queue, None)
        return forget


def balanced(shares: Sequence[int], partitions: int) -> bool:
    """Whether a spread of partition counts is floor(P/N) or ceil(P/N) everywhere."""
    if not shares:
        return False
    low, extra = divmod(partitions, len(shares))
    return (all(s in (low, low + 1) for s in shares)
            and sum(shares) == partitions and sum(s == low + 1 for s in shares) == extra)
