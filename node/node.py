"""A Staybook node: the store, the broker, the actors, under one supervision tree.

Root (one_for_one) children, started in this order and stopped in reverse:

* ``infrastructure`` (rest_for_one): ``store`` (the group-committing writer) ->
  ``relay`` (outbox -> event exchanges) -> ``timers`` [-> ``smtp``] -> ``dead-letters``
  (records each dead letter in the store).
* ``entities``: the directory, a dynamic supervisor of apartment and reservation
  actors.
* ``handlers`` (one_for_one): ``payment``, ``notifier``, ``search`` actors.
* ``intake`` (one_for_one): one consumer per queue (the dead-letter queue's too). It
  starts last and stops first, so no message arrives before the actor that handles it
  exists, or after it stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pykka

from actors.base import EntityContext
from actors.channels import SmtpChannel
from actors.directory import Directory
from actors.notifier import NotifierActor
from actors.payment import PaymentActor, PaymentGateway, SimulatedGateway
from actors.search import MAX_WAITING, SearchActor
from actors.timers import TimerService
from broker.base import Broker, Delivery
from broker.membership import Membership, PartitionIntake
from broker.rabbitmq import RabbitBroker
from config import Settings, SupervisorSettings
from messages import (
    Consumer,
    Envelope,
)
from messages.control import NodeStatus
from node.control import ControlService, tree_restarts
from node.deadletters import DeadLetterRecorder
from node.intake import SEARCH_KINDS, Counters, Intake
from node.metrics import MetricsServer, NodeGauges, NodeMetrics
from node.relay import Relay
from rules.clock import Clock, wall_clock
from rules.policy import CancellationPolicy, Lifecycle
from store import EventStore, StoreWriter, make_engine
from store.db import store_id, store_name
from store.deadletters import DeadLetterBook
from store.health import describe, is_outage, probe
from supervisor import (
    ActorChild,
    Application,
    Backoff,
    Child,
    ChildSpec,
    Dependency,
    DependencyDown,
    Intensity,
    Ping,
    ReportFailure,
    Restart,
    Strategy,
    service_child,
    supervisor_child,
)

log = logging.getLogger(__name__)

# Dead letters the recorder may hold unacked at once (while the store is down, say).
DEAD_LETTER_PREFETCH = 50
LIVENESS_TIMEOUT = 2.0  # the root supervisor answers a ping within this, or is stuck


def intensity_of(s: SupervisorSettings) -> Intensity:
    """The restart intensity a supervisor's settings ask for."""
    return Intensity(s.max_restarts, s.period_seconds)


def backoff_of(s: SupervisorSettings) -> Backoff | None:
    """The restart backoff a supervisor's settings ask for (None: restart at once)."""
    if s.backoff_min is None:
        return None
    return Backoff(min=s.backoff_min, max=s.backoff_max, jitter=s.backoff_jitter)


class Node:
    """One Staybook node.

    Args:
        settings: configuration.
        broker: the broker (RabbitMQ from ``settings`` when None).
        gateway: the payment gateway (the simulated one when None).
        clock: the rules' one clock (tests pin its date with ``rules.clock.pinned``).
        inject: a fault-injection hook for entity actors (drills and tests only).
    """

    def __init__(self, settings: Settings, *, broker: Broker | None = None,
                 gateway: PaymentGateway | None = None,
                 clock: Clock = wall_clock,
                 inject: Callable[[str, Envelope], None] | None = None) -> None:
        self.settings = settings
        self.broker = broker or RabbitBroker.from_settings(settings)
        self.topology = self.broker.topology
        self.engine = make_engine(settings.database_url, synchronous=settings.store.synchronous)
        self.store = EventStore(self.engine)
        # Everything that uses the store rides out its outages on this one gate.
        self.store_gate = Dependency("store", lambda: probe(self.engine), is_outage,
                                     limit=settings.store.outage_limit_seconds,
                                     max_delay=settings.store.probe_max_seconds,
                                     on_give_up=self._store_gave_up, describe=describe)
        self.writer = StoreWriter(self.engine, batch_max=settings.store.batch_max,
                                  queue_max=settings.store.queue_max, gate=self.store_gate)
        self.relay = Relay(self.engine, self.writer, self.broker,
                           batch=settings.broker.relay_batch,
                           max_delay=settings.broker.reconnect_max_delay)
        self.writer.set_on_committed(self.relay.wake)
        self.dead_letters = DeadLetterBook(
            self.engine, max_rows=settings.broker.dead_letter_max_length)
        self.recorder = DeadLetterRecorder(self.dead_letters, self.store_gate)
        self.gateway = gateway or SimulatedGateway(
            self.engine, decline_rate=settings.payment.decline_rate,
            decline_token_prefix=settings.payment.decline_token_prefix)
        a = settings.actors
        lc = settings.lifecycle
        lifecycle = Lifecycle(
            request_ttl=timedelta(seconds=lc.request_ttl_seconds),
            policy=CancellationPolicy(
                full_refund_days=lc.full_refund_days,
                early_refund_percent=lc.early_refund_percent,
                late_refund_percent=lc.late_refund_percent,
                owner_refund_percent=lc.owner_refund_percent))
        sup = settings.supervision
        self.directory = Directory(
            EntityContext(self.store, self.writer, max_stay_nights=a.max_stay_nights,
                          clock=clock, inject=inject, lifecycle=lifecycle,
                          snapshot_every=a.snapshot_every),
            max_live=a.max_live, idle_seconds=a.idle_seconds,
            intensity=intensity_of(sup.entities), backoff=backoff_of(sup.entities),
            poison_retries=sup.poison_retries, handler_timeout=sup.handler_timeout_seconds)
        self.timers = TimerService(self.engine, self.writer,
                                   poll_interval=lc.timer_poll_seconds,
                                   refire_after=lc.timer_refire_seconds, clock=clock)
        n = settings.notify
        domain = n.email_domain
        self.smtp: SmtpChannel | None = None if n.smtp_host is None else SmtpChannel(
            self.engine, self.writer, host=n.smtp_host, port=n.smtp_port, sender=n.sender,
            address_of=lambda who: f"{who}@{domain}", poll_interval=n.poll_seconds)
        self.consumers: dict[str, Any] = {}
        self.counters = Counters()  # before the metrics: registering them reads the gauges
        self.metrics = NodeMetrics(settings.node_name, self._gauges)
        self.intake = Intake(self.directory, self.metrics, self.counters,
                             commands_exchange=self.topology.commands_exchange,
                             queries_exchange=self.topology.queries_exchange,
                             max_bytes=settings.broker.max_message_bytes)
        self.partitions: PartitionIntake | None = None
        self.membership: Membership | None = None
        if ("commands" in settings.roles and isinstance(self.broker, RabbitBroker)
                and self.topology.partitions):
            c = settings.cluster
            self.partitions = PartitionIntake(self.broker,
                                              self.intake.on_command,
                                              prefetch=settings.broker.prefetch,
                                              release_seconds=c.drain_seconds + 2,
                                              release=self.directory.release)
            self.membership = Membership(
                self.broker, settings.node_name, self.topology.partitions,
                held=self.partitions.held, want=self._want_partitions,
                interval=c.heartbeat_seconds, timeout=c.member_timeout_seconds,
                leave_seconds=c.drain_seconds + 2, store_id=store_id(self.engine),
                store=store_name(settings.database_url))
        # Set once membership first said which partitions to consume (ready needs it).
        self.partitions_chosen = threading.Event()
        self.metrics_server: MetricsServer | None = None
        self.app = Application(self._tree(), strategy=Strategy(sup.root.strategy),
                               intensity=intensity_of(sup.root),
                               handler_timeout=sup.handler_timeout_seconds)

    # --- the tree -------------------------------------------------------------------
    def _tree(self) -> list[ChildSpec]:
        sup = self.settings.supervision

        def nested(name: str, specs: list[ChildSpec]) -> ChildSpec:
            s: SupervisorSettings = getattr(sup, name)
            return supervisor_child(name, specs, strategy=Strategy(s.strategy),
                                    intensity=lambda: intensity_of(s),
                                    handler_timeout=sup.handler_timeout_seconds)

        infra = sup.infrastructure
        commands, events = "commands" in self.settings.roles, "events" in self.settings.roles
        intake: list[ChildSpec] = []
        parts, members = self.partitions, self.membership
        if commands and parts is not None and members is not None:
            # Partitions start empty; membership (started after, stopped first) says
            # which to consume, and on the way out hands them all over.
            drain = self.settings.cluster.drain_seconds
            intake += [service_child("partitions", lambda: parts, shutdown=5),
                       service_child("membership", lambda: members, shutdown=drain + 5,
                                     backoff=backoff_of(self.settings.supervision.intake))]
        elif commands:
            intake.append(self._consumer_spec(Consumer.INTAKE, self.intake.on_command,
                                              self.settings.broker.prefetch))
        if events:
            intake += [
                self._consumer_spec(Consumer.SEARCH,
                                    self.intake.handler_delivery(Consumer.SEARCH, SEARCH_KINDS)),
                self._consumer_spec(Consumer.PAYMENT,
                                    self.intake.handler_delivery(Consumer.PAYMENT)),
                self._consumer_spec(Consumer.NOTIFIER,
                                    self.intake.handler_delivery(Consumer.NOTIFIER)),
                self._consumer_spec(Consumer.RESERVATIONS, self.intake.on_reservation_event),
            ]
        # Every node records dead letters: the queue is only where they land.
        intake.append(self._dead_letter_spec())
        handlers = [
            self._handler_spec(Consumer.PAYMENT, lambda r: PaymentActor.start(
                "payment", self.store, self.writer, r, self.gateway,
                max_attempts=self.settings.payment.max_attempts,
                retry_delay=self.settings.payment.retry_delay,
                charge_wait=self.settings.payment.charge_wait_seconds)),
            self._handler_spec(Consumer.NOTIFIER, lambda r: NotifierActor.start(
                "notifier", self.store, self.writer, r)),
            # Parked queries hold unacked deliveries: leave most of the prefetch to the
            # events they wait for.
            self._handler_spec(Consumer.SEARCH, lambda r: SearchActor.start(
                "search", self.store, self.writer, r, max_waiting=min(
                    MAX_WAITING, self.settings.broker.handler_prefetch // 2))),
        ]
        return [
            nested("infrastructure", [
                service_child("store-gate", lambda: self.store_gate, backoff=backoff_of(infra)),
                service_child("store", lambda: self.writer, backoff=backoff_of(infra)),
                # The relay publishes the whole (shared) outbox, the events role's too.
                *([service_child("relay", lambda: self.relay, backoff=backoff_of(infra)),
                   service_child("timers", lambda: self.timers, backoff=backoff_of(infra))]
                  if commands else []),
                *(self._smtp_spec(backoff_of(infra)) if events else []),
                service_child("dead-letters", lambda: self.recorder,
                              backoff=backoff_of(infra)),
            ]),
            service_child("entities", lambda: self.directory, shutdown=30,
                          backoff=backoff_of(sup.root)),
            *([nested("handlers", handlers)] if events else []),
            nested("intake", intake),
            *self._console_specs(),
        ]

    # --- operator console: control channel and metrics (console/) -----------------
    def _console_specs(self) -> list[ChildSpec]:
        """The control child (RabbitMQ only) and the metrics endpoint (when a port is set)."""
        specs: list[ChildSpec] = []
        m = self.settings.metrics
        if m.port:
            def server() -> MetricsServer:
                self.metrics_server = MetricsServer(self.metrics, m.port or 0, m.address,
                                                    ready=self.readiness, alive=self.liveness)
                return self.metrics_server
            specs.append(service_child("metrics", server))
        if self.settings.control.enabled and isinstance(self.broker, RabbitBroker):
            specs.append(service_child("control",
                                       lambda: ControlService(self, self.settings, self.topology),
                                       backoff=backoff_of(self.settings.supervision.root)))
        return specs

    def _gauges(self) -> NodeGauges:
        """The node's own counters, read when Prometheus scrapes."""
        d = self.directory
        return NodeGauges(live_actors=d.live, max_live=d.max_live, activations=d.activations,
                          passivations=d.passivations,
                          restarts=d.restarts + tree_restarts(self.supervision_tree()),
                          dead_letters=self.counters.refused + d.poisoned,
                          outbox_backlog=self.relay.backlog(), writer_backlog=self.writer.backlog,
                          store_up=self.store_gate.up, store_outages=self.store_gate.outages)

    def node_status(self, since: float) -> NodeStatus:
        """Counters and gauges for the control channel's ``status``, the uptime counted
        from ``since`` (when the control service started)."""
        d = self.directory
        p99 = self.metrics.p99()
        now = time.time()
        return NodeStatus(
            node=self.settings.node_name, time=now, uptime=round(now - since, 1),
            live_actors=d.live, max_live=d.max_live, activations=d.activations,
            passivations=d.passivations,
            restarts=d.restarts + tree_restarts(self.supervision_tree()),
            commands=self.counters.commands, handled=self.metrics.handled,
            p99_ms=None if p99 is None else round(p99 * 1000, 2),
            dead_letters=self.counters.refused + d.poisoned,
            outbox_backlog=self.relay.backlog(), writer_backlog=self.writer.backlog,
            tree_status="failed" if self.app.failed.is_set() else "running",
            **self.store_status(),
            partitions=None if self.partitions is None else sorted(self.partitions.held()),
            members=None if self.membership is None else self.membership.members())

    def supervision_tree(self) -> list[dict[str, Any]]:
        """The supervision tree, or [] while it is stopping (asks can time out)."""
        try:
            return self.app.tree()
        except Exception:  # noqa: BLE001 - introspection must never fail its caller
            return []

    def supervision_root(self) -> pykka.ActorRef[Any] | None:
        """The root supervisor while it runs."""
        root = self.app.root
        return root if root is not None and root.is_alive() else None
    # --- end operator console ---------------------------------------------------------

    def _smtp_spec(self, backoff: Backoff | None) -> list[ChildSpec]:
        """The e-mail channel's child, when one is configured."""
        smtp = self.smtp
        if smtp is None:
            return []
        return [service_child("smtp", lambda: smtp, backoff=backoff)]

    def _handler_spec(self, consumer: Consumer,
                      start: Callable[[ReportFailure], pykka.ActorRef[Any]]
                      ) -> ChildSpec:
        def start_child(report: ReportFailure) -> Child:
            # What the previous incarnation left unhandled (it crashed, or skipped its
            # mailbox while being stopped) goes back to the broker.
            self.intake.give_back(consumer)
            ref = start(report)
            child = ActorChild(ref)
            self.intake.attach(consumer, ref)
            return child

        return ChildSpec(id=consumer.value, start=start_child, restart=Restart.PERMANENT,
                         backoff=backoff_of(self.settings.supervision.handlers))

    def _consumer_spec(self, consumer: Consumer, on_delivery: Callable[[Delivery], None],
                       prefetch: int | None = None) -> ChildSpec:
        def make() -> Any:
            # Event handlers are idempotent and nothing waits on their order: on the way
            # out they settle briefly, then the broker redelivers the rest, so a slow
            # gateway cannot hold a node's shutdown for the whole drain time.
            c = self.broker.consumer(self.topology.queue(consumer), on_delivery,
                                     prefetch=prefetch or self.settings.broker.handler_prefetch,
                                     name=f"consumer-{consumer}",
                                     drain_seconds=min(2.0, self.settings.cluster.drain_seconds))
            self.consumers[consumer.value] = c
            return c
        return service_child(f"consumer:{consumer}", make,
                             backoff=backoff_of(self.settings.supervision.intake))

    def _dead_letter_spec(self) -> ChildSpec:
        def make() -> Any:
            c = self.broker.consumer(self.topology.dead_letter_queue,
                                     self.recorder.on_delivery,
                                     prefetch=DEAD_LETTER_PREFETCH, name="consumer-dead-letters",
                                     drain_seconds=min(2.0, self.settings.cluster.drain_seconds))
            self.consumers["dead-letters"] = c
            return c
        return service_child("consumer:dead-letters", make,
                             backoff=backoff_of(self.settings.supervision.intake))

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        """Declare the topology, take the node's name, check that the cluster runs on
        this node's store, and start the supervision tree.

        Raises:
            broker.membership.NodeNameInUse: when a live node already has this name.
            broker.membership.StoreMismatch: when a live member runs on another store.
            broker.rabbitmq.BrokerSetupError: when the broker cannot hold the topology.
        """
        self.broker.declare()
        if self.membership is not None:
            self.membership.claim_name()
            self.membership.check_store()
        self.app.start()

    def stop(self) -> None:
        """Stop the tree (intake first, store last) and release the store."""
        self.app.stop()
        self.broker.close()
        self.engine.dispose()

    def _want_partitions(self, partitions: set[int]) -> None:
        """Membership's choice, passed on; the first one makes partitions count for ready."""
        assert self.partitions is not None
        self.partitions.want(partitions)
        self.partitions_chosen.set()

    def readiness(self) -> tuple[bool, str]:
        """Whether the node can do its work now, and why not (``/ready``, ``ctl nodes``).

        Ready: the store answers, the tree runs, and the node consumes what it should.
        A commands node consumes the partitions membership chose for it; one that holds
        none (more nodes than partitions, or it just joined and waits for a handoff) is
        ready once that choice was made, since nothing it would be sent is left
        unconsumed because of it. Every consumer it wants must be subscribed: while the
        broker is away nothing reaches this node.
        """
        gate = self.store_gate
        if not gate.up:
            return False, (f"store unavailable for {gate.down_for():.1f}s "
                           f"({gate.last_error}); holding work until it answers")
        if self.app.failed.is_set():
            return False, "the supervision tree gave up"
        if self.partitions is not None and not self.partitions_chosen.is_set():
            return False, "waiting for the cluster to assign partitions"
        idle = sorted(getattr(c, "queue", c.name) for c in self.running_consumers()
                      if not getattr(c, "consuming", c.is_alive()))
        if idle:
            more = f" and {len(idle) - 3} more" if len(idle) > 3 else ""
            return False, f"not consuming {', '.join(idle[:3])}{more}"
        return True, "ready"

    def running_consumers(self) -> list[Any]:
        """The consumers this node runs now: its queues' and its partitions'."""
        consumers = list(self.consumers.values())
        if self.partitions is not None:
            consumers += self.partitions.consumers().values()
        return consumers

    def liveness(self) -> tuple[bool, str]:
        """Whether the process and its supervision tree run (``/healthz``).

        Not whether it can work (that is :meth:`readiness`): a node riding out a store
        or broker outage is alive, and restarting it would only lose its place.
        """
        if self.app.failed.is_set():
            return False, "the supervision tree gave up"
        root = self.app.root
        if root is None or not root.is_alive():
            return False, "the supervision tree is not running"
        try:
            root.ask(Ping(), timeout=LIVENESS_TIMEOUT)
        except Exception:  # noqa: BLE001 - stuck or dead: either way not alive
            return False, f"the root supervisor did not answer in {LIVENESS_TIMEOUT:.0f}s"
        return True, "alive"

    def store_status(self) -> dict[str, Any]:
        """Readiness and the store's state, for ``status`` and ``ctl nodes``."""
        gate = self.store_gate
        return {"ready": self.readiness()[0],
                "store": "up" if gate.up else f"down {gate.down_for():.0f}s: {gate.last_error}",
                "store_outages": gate.outages}

    def _store_gave_up(self, reason: str) -> None:
        """The store stayed down past its limit: end the node with that one line."""
        self.app.fail("store", DependencyDown(reason))

    def handler(self, name: Consumer | str) -> pykka.ActorRef[Any] | None:
        """The current actor of a handler (``payment``, ``notifier``, ``search``).

        Raises:
            ValueError: if ``name`` is no consumer.
            KeyError: if it is a consumer without a handler actor.
        """
        return self.intake.handler_ref(Consumer(name))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the tree gives up (True) or ``timeout`` passes (False)."""
        return self.app.failed.wait(timeout)

    def status(self) -> dict[str, Any]:
        """A snapshot for the operator: tree, live actors, counters, backlogs."""
        return {
            "node": self.settings.node_name,
            "tree": self.app.tree(),
            "live_actors": self.directory.live,
            "activations": self.directory.activations,
            "passivations": self.directory.passivations,
            "restarts": self.directory.restarts,
            "commands": self.counters.commands,
            "refused": self.counters.refused,
            "commits": self.writer.commits,
            "batches": self.writer.batches,
            "published": self.relay.published,
            "partitions": sorted(self.partitions.held()) if self.partitions else None,
            "timers_fired": self.timers.fired,
            "emails_sent": 0 if self.smtp is None else self.smtp.sent,
            **self.store_status(),
        }
