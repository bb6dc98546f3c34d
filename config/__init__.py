"""Staybook settings: one pydantic-settings model, whose field defaults are the defaults.

Precedence (lowest first): field defaults < a TOML file named by ``STAYBOOK_CONFIG`` <
environment variables ``STAYBOOK_*`` (nested with ``__``, e.g.
``STAYBOOK_BROKER__PREFETCH=64``) < keyword arguments. ``staybook config defaults``
prints every setting at its default with its docstring, as TOML (config/document.py).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_DIR = Path(__file__).resolve().parent
# The plugins every RabbitMQ node Staybook starts enables (the consistent-hash exchange).
RABBITMQ_PLUGINS_FILE = CONFIG_DIR / "rabbitmq" / "plugins"
# A local cluster's nodes add the management API (ctl queues reads leaders from it).
RABBITMQ_CLUSTER_PLUGINS_FILE = CONFIG_DIR / "rabbitmq" / "plugins-cluster"


DEFAULT_PARTITIONS = 16

Role = Literal["commands", "events"]
ROLES: tuple[Role, ...] = ("commands", "events")


class Section(BaseModel):
    """A group of settings; each field's docstring is its description (and its comment
    in ``staybook config defaults``)."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class BrokerSettings(Section):
    """How to reach RabbitMQ and how hard to push it."""

    url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    """One AMQP URL, or a cluster's nodes separated by commas: clients connect to any of
    them and move to another when theirs goes away."""
    prefix: str = "staybook"
    """Put before every exchange and queue name."""
    management_url: str | None = Field(None, examples=["http://user:password@host:15672"])
    """The RabbitMQ management API (or a cluster's, comma-separated): where ``staybook ctl
    queues`` reads each queue's leader and replicas. Optional: depths and consumers need
    only AMQP."""
    prefetch: int = Field(512, ge=1, le=10_000)
    """Unacked commands the intake holds at once."""
    handler_prefetch: int = Field(256, ge=1, le=10_000)
    """Unacked events per handler queue."""
    heartbeat: int = Field(30, ge=0, le=600)
    """Seconds between AMQP heartbeats (0: none)."""
    max_message_bytes: int = Field(64 * 1024, ge=256, le=16 * 1024 * 1024)
    """A larger command is refused and dead-lettered."""
    queue_max_length: int = Field(1_000_000, ge=1)
    """Bound on every work queue."""
    dead_letter_max_length: int = Field(100_000, ge=1)
    """Bound on the dead-letter queue, and on the dead letters the store keeps."""
    delivery_limit: int = Field(5, ge=1, le=100)
    """A command redelivered this often is dead-lettered as poison."""
    relay_batch: int = Field(500, ge=1, le=10_000)
    """Most outbox rows the relay publishes per round."""
    reconnect_max_delay: float = Field(10.0, gt=0)
    """Cap, in seconds, on the reconnect backoff of consumers and the relay."""
    partitions: int = Field(DEFAULT_PARTITIONS, ge=0, le=1024)
    """Command partitions: quorum queues with single-active-consumer behind a
    consistent-hash exchange. Choose it much larger than the number of nodes; changing
    it re-maps apartments to partitions (drain the queues first). 0: one intake queue
    that every node consumes at once (no per-apartment order across nodes; the store's
    fence still prevents double bookings; tests use it to check exactly that)."""

    @field_validator("url")
    @classmethod
    def _amqp_urls(cls, url: str) -> str:
        """Each of the comma-separated URLs is an AMQP one (no password in the error)."""
        urls = split_urls(url)
        if not urls:
            raise ValueError("give at least one amqp:// URL")
        for u in urls:
            if not u.startswith(("amqp://", "amqps://")):
                raise ValueError(f"'{u.split('@')[-1]}' is not an amqp:// or amqps:// URL")
        return ",".join(urls)


class ClusterSettings(Section):
    """How nodes find each other and hand partitions over (see docs/cluster.md)."""

    heartbeat_seconds: float = Field(0.5, gt=0, le=60)
    """Each commands node beats on ``<prefix>.members`` this often."""
    member_timeout_seconds: float = Field(2.0, gt=0, le=600)
    """A node silent this long is taken for dead; its partitions move."""
    drain_seconds: float = Field(10.0, ge=0, le=300)
    """A released partition settles what it handed out, up to this."""


class StoreSettings(Section):
    """Durability and batching of the event store."""

    batch_max: int = Field(256, ge=1, le=10_000)
    """Commands group-committed in one transaction."""
    queue_max: int = Field(10_000, ge=1)
    """Pending commits before producers of commits block."""
    synchronous: str = Field("FULL", pattern="^(FULL|NORMAL|EXTRA)$")
    """SQLite's ``synchronous`` pragma (FULL: fsync on every commit)."""
    outage_limit_seconds: float = Field(600.0, gt=0)
    """While the store cannot be reached the node holds its work and probes it, up to
    this long; then it exits with one line saying so."""
    probe_max_seconds: float = Field(1.0, gt=0, le=60)
    """The probe's backoff while the store is down: from 0.05 s, doubling up to this."""


class ActorSettings(Section):
    """Bounds on live entity actors, the rules' stay limit, and snapshots."""

    max_live: int = Field(10_000, ge=1)
    """Live entity actors; past this the least recently used are passivated."""
    idle_seconds: float = Field(300.0, gt=0)
    """An entity actor idle this long is passivated."""
    max_stay_nights: int = Field(30, ge=1)
    """The longest stay a reservation may ask for."""
    snapshot_every: int = Field(50, ge=0)
    """An apartment writes its state every this many events; rehydrating reads the
    latest and the events after it (0: no new snapshots). Each event of that tail costs
    about a tenth of a fresh apartment's whole rehydration, and a snapshot mostly the
    encoding of the stays changed since the last one: at 50, rehydration stays within a
    few times a fresh apartment's (python -m bench.history)."""


class SupervisorSettings(Section):
    """One supervisor: its strategy, its intensity (OTP's MaxR within MaxT) and an
    optional exponential restart backoff."""

    strategy: Literal["one_for_one", "one_for_all", "rest_for_one"] = "one_for_one"
    max_restarts: int = Field(10, ge=0)
    period_seconds: float = Field(5.0, gt=0)
    backoff_min: float | None = Field(None, ge=0, examples=[0.1])
    """The first restart's delay, doubled up to ``backoff_max`` (unset: restart at once)."""
    backoff_max: float = Field(5.0, gt=0)
    backoff_jitter: float = Field(0.1, ge=0, le=1)
    """Each delay varies by up to this share, either way."""


class SupervisionSettings(Section):
    """The supervision tree's knobs (see README: Supervision).

    Each supervisor (root, infrastructure, entities, handlers, intake) restarts a failed
    child by its strategy; more than ``max_restarts`` within ``period_seconds`` and it
    stops its children and fails to its parent.
    """

    handler_timeout_seconds: float = Field(30.0, gt=0)
    """An actor busy longer in one message is abandoned and restarted."""
    poison_retries: int = Field(3, ge=0, le=100)
    """A command that crashed its actor is retried this often, then dead-lettered."""
    root: SupervisorSettings = SupervisorSettings(max_restarts=3, period_seconds=30)
    """Past its intensity the node exits 1."""
    infrastructure: SupervisorSettings = SupervisorSettings(
        strategy="rest_for_one", max_restarts=5, period_seconds=10, backoff_min=0.1)
    """Store writer -> relay -> timers [-> smtp] -> dead-letters."""
    entities: SupervisorSettings = SupervisorSettings(
        max_restarts=100, period_seconds=5, backoff_min=0.0)
    """The dynamic supervisor of apartment and reservation actors."""
    handlers: SupervisorSettings = SupervisorSettings(
        max_restarts=10, period_seconds=5, backoff_min=0.05)
    """Payment, notifier, search."""
    intake: SupervisorSettings = SupervisorSettings(
        max_restarts=10, period_seconds=5, backoff_min=0.1)
    """One consumer per queue."""

    @model_validator(mode="before")
    @classmethod
    def _over_defaults(cls, data: Any) -> Any:
        """A supervisor given in part keeps its own defaults for the rest.

        ``[supervision.infrastructure]`` with only ``max_restarts`` (or
        ``STAYBOOK_SUPERVISION__INFRASTRUCTURE__MAX_RESTARTS``) would otherwise build a
        plain :class:`SupervisorSettings`, losing that supervisor's strategy and backoff.
        """
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            given, default = out.get(name), field.default
            if isinstance(given, Mapping) and isinstance(default, SupervisorSettings):
                out[name] = {**default.model_dump(), **given}
        return out


class PaymentSettings(Section):
    """The simulated gateway: declines are deterministic per reservation id."""

    decline_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Share of idempotency keys the gateway declines."""
    decline_token_prefix: str = "tok_decline"
    """Card tokens starting with this always decline."""
    max_attempts: int = Field(3, ge=1, le=20)
    """Gateway calls per charge or refund before giving up."""
    retry_delay: float = Field(0.2, ge=0.0)
    """Seconds before the second call, doubled after each."""
    charge_wait_seconds: float = Field(5.0, ge=0.0, le=20.0)
    """A cancellation handled before its charge's outcome waits this long for it, then
    goes back to the broker."""


class LifecycleSettings(Section):
    """How long a request waits for the owner, and what a cancellation refunds."""

    request_ttl_seconds: float = Field(86_400.0, gt=0)
    """An unanswered request expires after this."""
    full_refund_days: int = Field(7, ge=0)
    """A guest cancelling at least this many days ahead gets ``early_refund_percent``."""
    early_refund_percent: int = Field(100, ge=0, le=100)
    late_refund_percent: int = Field(50, ge=0, le=100)
    """What a guest cancelling later gets back."""
    owner_refund_percent: int = Field(100, ge=0, le=100)
    """What the guest gets back when the owner cancels."""
    timer_poll_seconds: float = Field(1.0, gt=0)
    """How often the timer service looks for due timers."""
    timer_refire_seconds: float = Field(60.0, gt=0)
    """A fired timer still pending this long fires again."""


class NotifySettings(Section):
    """Channels: the stored log always; e-mail too when ``smtp_host`` is set."""

    smtp_host: str | None = Field(None, examples=["127.0.0.1"])
    """Set to send every notification by e-mail as well."""
    smtp_port: int = Field(25, ge=1, le=65535)
    sender: str = "staybook@localhost"
    email_domain: str = "localhost"
    """A person's address is ``<id>@<email_domain>``."""
    poll_seconds: float = Field(1.0, gt=0)
    """How often the e-mail channel looks for notifications to send."""


# --- operator console and metrics (node/control.py, node/metrics.py) -----------------
class ControlSettings(Section):
    """The control channel the operator console talks to (``staybook ctl``/``console``).

    Only users named in ``operators`` may send control requests: a node checks the
    AMQP ``user_id`` property, which RabbitMQ validates against the connection's user.
    ``guest`` is listed for local development only (RabbitMQ lets it log in from
    localhost only); drop it in production.
    """

    enabled: bool = True
    operators: list[str] = Field(default_factory=lambda: ["staybook-operator", "guest"])
    """AMQP users allowed to steer nodes."""
    request_ttl_seconds: float = Field(10.0, gt=0, le=300)
    """Control requests older than this expire unanswered."""
    console_refresh_seconds: float = Field(2.0, gt=0, le=3600)
    broadcast_wait_seconds: float = Field(1.0, gt=0, le=60)
    """How long ``staybook ctl nodes`` listens for answers."""


class MetricsSettings(Section):
    """Prometheus metrics over HTTP on ``http://address:port/metrics``."""

    port: int | None = Field(None, ge=0, le=65535, examples=[9464])
    """Unset or 0: no HTTP server (the metrics are still counted)."""
    address: str = "127.0.0.1"
# --- end operator console and metrics -------------------------------------------------


class Settings(BaseSettings):
    """Everything a node needs; see the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix="STAYBOOK_",
        env_nested_delimiter="__",
        extra="ignore",
        use_attribute_docstrings=True,
    )

    database_url: str = "sqlite:///staybook.db"
    """SQLite (``sqlite:///file.db``) or PostgreSQL
    (``postgresql+psycopg://user:password@host:5432/db``)."""
    node_name: str = "node-1"
    """Unique among the running nodes."""
    roles: list[Role] = Field(default_factory=lambda: list(ROLES), min_length=1)
    """What this process runs: "commands" (intake, apartments, relay, timers) and/or
    "events" (payment, notifier, search, reservation processes). Two processes, one per
    role, on the same store and broker, each get a core (and a GIL) of their own
    (``STAYBOOK_ROLES='["events"]'``)."""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    """text, or json: one JSON object per line, with the node's name and, on the lines
    about a message, its message_id and correlation_id (for a log collector to index)."""
    broker: BrokerSettings = BrokerSettings()
    cluster: ClusterSettings = ClusterSettings()
    store: StoreSettings = StoreSettings()
    actors: ActorSettings = ActorSettings()
    supervision: SupervisionSettings = SupervisionSettings()
    payment: PaymentSettings = PaymentSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    notify: NotifySettings = NotifySettings()
    control: ControlSettings = ControlSettings()
    metrics: MetricsSettings = MetricsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the environment, then the ``STAYBOOK_CONFIG`` file."""
        sources = [init_settings, env_settings]
        extra = os.environ.get("STAYBOOK_CONFIG")
        if extra:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(extra)))
        return tuple(sources)


# STAYBOOK_* variables that are not settings: the tools' own.
TOOL_VARIABLES = frozenset({"CONFIG", "CONSOLE_URL", "UPDATE_SNAPSHOTS"})
TOOL_PREFIXES = ("PROVISION_",)


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line saying what to fix."""


def _setting_names(model: type[BaseModel], prefix: str = "STAYBOOK_") -> list[str]:
    """Every environment name a setting can be given by, nested ones included."""
    out = []
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        out.append(env)
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out += _setting_names(kind, f"{env}__")
    return out


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``STAYBOOK_*`` variables that name no setting (a typo is otherwise ignored)."""
    known = set(_setting_names(Settings))
    out = []
    for key in environ:
        upper = key.upper()
        if not upper.startswith("STAYBOOK_"):
            continue
        rest = upper.removeprefix("STAYBOOK_")
        if rest in TOOL_VARIABLES or rest.startswith(TOOL_PREFIXES) or upper in known:
            continue
        out.append(key)
    return sorted(out)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings, or one clear line about what is wrong with them.

    Raises:
        ConfigError: an unknown ``STAYBOOK_*`` variable (with the closest real name),
            a value that does not validate, or a TOML file that cannot be read.
    """
    env = os.environ if environ is None else environ
    unknown = unknown_variables(env)
    if unknown:
        names = _setting_names(Settings)
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key.upper(), names, n=1)
            hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
        raise ConfigError(f"unknown setting {', '.join(hints)}; `staybook config defaults` "
                          f"lists the settings")
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "STAYBOOK_" + "__".join(str(p).upper() for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        got = redact_url(str(first.get("input")))[:60]
        raise ConfigError(f"bad setting {where}: {first['msg']}, got {got!r}{more}") from None
    except (OSError, ValueError) as exc:  # an unreadable or malformed TOML file
        raise ConfigError(f"cannot read the configuration: {exc}") from None


def split_urls(text: str) -> list[str]:
    """The URLs in ``text``: one, or a cluster's nodes' separated by commas."""
    return [u.strip() for u in text.split(",") if u.strip()]


def redact_url(url: str) -> str:
    """``url`` (or several, comma-separated) for messages and logs: each user kept, each
    password replaced by ``***``."""
    return ",".join(_redact_one(u) for u in url.split(","))


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("//")
    if not sep or "@" not in rest:
        return url
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}//{user}:***@{host}" if user else f"{scheme}//***@{host}"


__all__ = [
    "DEFAULT_PARTITIONS",
    "ActorSettings",
    "BrokerSettings",
    "ClusterSettings",
    "ConfigError",
    "ControlSettings",
    "LifecycleSettings",
    "MetricsSettings",
    "NotifySettings",
    "PaymentSettings",
    "Section",
    "Settings",
    "StoreSettings",
    "SupervisionSettings",
    "SupervisorSettings",
    "load_settings",
    "redact_url",
    "split_urls",
    "unknown_variables",
]
