"""The envelope every Staybook message travels in, and its validation.

The envelope carries identity and causality (``message_id``, ``correlation_id``,
``causation_id``), the schema ``type`` and ``version``, ``occurred_at`` and the
partition key ``apartment_id``; the typed ``payload`` is validated against the model
the registry names for ``type``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    model_validator,
)

from messages.registry import Kind, accepted_versions, spec_for, spec_of, upcast

ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,100}$"


def new_id() -> str:
    """A fresh message or entity id: 16 random bytes per process, then a counter.

    As unique as a uuid4 across processes (the prefix is random, and renewed after
    a fork) and far cheaper on the hot path than reading os.urandom per id.
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def _renew_id_prefix() -> None:
    global _ID_PREFIX, _ID_COUNTER  # noqa: PLW0603 - per-process state by design
    _ID_PREFIX = uuid.uuid4().hex[:20]
    _ID_COUNTER = itertools.count()


_ID_PREFIX = ""
_ID_COUNTER = itertools.count()
_renew_id_prefix()
os.register_at_fork(after_in_child=_renew_id_prefix)


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of every payload: frozen, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    VERSION: ClassVar[int] = 1


class Request(Message):
    """Base of commands and queries, which producers write and Staybook reads.

    Their integer fields are strict (``Field(strict=True)``): ``"120.00"`` or ``true``
    is refused, not read as 120 or 1, since the published schema says integer. JSON
    Schema's integer includes ``120.0``, so an integral float is read as its integer.
    """

    @model_validator(mode="before")
    @classmethod
    def _json_integers(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(type(v) is float for v in data.values()):
            return {k: int(v) if type(v) is float and v.is_integer() else v
                    for k, v in data.items()}
        return data


class Published(Message):
    """Base of events and replies, which Staybook writes and others read.

    Read tolerantly: a reader ignores fields it does not know, so an optional field
    added in place (see docs/messages.md) does not break a reader that predates it,
    such as an older node during a rolling upgrade. Commands and queries stay strict:
    a producer's misspelt field must be an error, not silently dropped.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")


class BadInput(StrEnum):
    """Why a body was refused before reaching any actor (the dead-letter reason)."""

    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    BAD_ENVELOPE = "bad_envelope"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    SCHEMA_ERROR = "schema_error"
    WRONG_KIND = "wrong_kind"
    WRONG_ROUTING_KEY = "wrong_routing_key"


class InvalidMessage(Exception):
    """A body that cannot become an Envelope.

    Args:
        reason: the machine-readable reason (dead-letter header ``x-staybook-reason``).
        detail: a human-readable explanation, safe to send back to the producer.
        partial: the envelope fields that could be read, to address an error reply.
    """

    def __init__(
        self, reason: BadInput, detail: str, partial: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.partial = partial or {}


class Envelope(BaseModel):
    """A message on the wire: identity, causality, partition key and typed payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_id: str = Field(default_factory=new_id, pattern=ID_PATTERN)
    correlation_id: str = Field(pattern=ID_PATTERN)
    causation_id: str | None = Field(default=None, pattern=ID_PATTERN)
    type: str = Field(min_length=1, max_length=100)
    version: int = Field(ge=1)
    occurred_at: datetime = Field(default_factory=utcnow)
    apartment_id: str | None = Field(default=None, pattern=ID_PATTERN)
    payload: SerializeAsAny[Message]

    @classmethod
    def new(
        cls,
        payload: Message,
        *,
        apartment_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Envelope:
        """Start a new conversation (a producer's first message)."""
        spec = spec_of(payload)
        mid = new_id()
        return cls(
            message_id=mid,
            correlation_id=correlation_id or mid,
            type=spec.type,
            version=spec.version,
            apartment_id=apartment_id,
            payload=payload,
        )

    def follow(self, payload: Message, *, apartment_id: str | None = None) -> Envelope:
        """A message caused by this one: same correlation, causation = this id.

        Built without re-validation: every field comes from a validated envelope or
        a validated payload, and this runs once per event on the hot path.
        """
        spec = spec_of(payload)
        return Envelope.model_construct(
            message_id=new_id(),
            correlation_id=self.correlation_id,
            causation_id=self.message_id,
            type=spec.type,
            version=spec.version,
            occurred_at=utcnow(),
            apartment_id=apartment_id or self.apartment_id,
            payload=payload,
        )

    @property
    def kind(self) -> Kind:
        """The registry kind of the payload."""
        return spec_of(self.payload).kind

    def to_json(self) -> bytes:
        """The wire form: compact UTF-8 JSON."""
        return self.model_dump_json().encode()

    def content_hash(self) -> str:
        """What the message asks, hashed: type, version, partition key and payload.

        Identity and timing (ids, ``occurred_at``) are left out, so a re-send of the
        same request hashes the same even if its producer rebuilt the envelope; a
        ``message_id`` reused for a different request does not. A message upcast from an
        older version hashes as sent, so a re-send matches what that version's node
        recorded.
        """
        return _content_hash(self.type, self.version, self.apartment_id,
                             self.payload.model_dump(mode="json"))

    def to_dict(self) -> dict[str, Any]:
        """The wire form as plain JSON data."""
        data: dict[str, Any] = self.model_dump(mode="json")
        return data

    @classmethod
    def from_json(
        cls,
        body: bytes,
        *,
        max_bytes: int = 64 * 1024,
        kinds: frozenset[Kind] | None = None,
    ) -> Envelope:
        """Validate a wire body into an Envelope.

        Args:
            body: the raw message body.
            max_bytes: bodies larger than this are refused unread.
            kinds: the kinds this reader accepts (e.g. only commands at the intake).

        Raises:
            InvalidMessage: with the reason and a readable detail.
        """
        if len(body) > max_bytes:
            raise InvalidMessage(
                BadInput.TOO_LARGE, f"body is {len(body)} bytes, the limit is {max_bytes}"
            )
        try:
            raw = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidMessage(BadInput.NOT_JSON, f"body is not UTF-8 JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise InvalidMessage(BadInput.NOT_OBJECT, "body must be a JSON object")
        partial = {
            k: raw[k]
            for k in ("message_id", "correlation_id", "type")
            if isinstance(raw.get(k), str) and len(raw[k]) <= 100
        }
        if not isinstance(raw.get("message_id"), str):
            raise InvalidMessage(
                BadInput.BAD_ENVELOPE,
                "message_id: required (a string; re-sends must reuse it)",
                partial,
            )
        type_name = raw.get("type")
        spec = spec_for(type_name) if isinstance(type_name, str) else None
        if spec is None:
            raise InvalidMessage(
                BadInput.UNKNOWN_TYPE, f"unknown message type {type_name!r}", partial
            )
        if kinds is not None and spec.kind not in kinds:
            raise InvalidMessage(
                BadInput.WRONG_KIND,
                f"{spec.type} is a {spec.kind.value}; this queue takes "
                + ", ".join(sorted(k.value for k in kinds)),
                partial,
            )
        data = raw.get("payload")
        version = raw.get("version")
        if version != spec.version:
            accepted = accepted_versions(spec)
            if type(version) is not int or version not in accepted:
                raise InvalidMessage(
                    BadInput.UNSUPPORTED_VERSION,
                    f"{spec.type} version {version!r} is not supported: this node reads "
                    f"{_versions(accepted)} (send version {spec.version})",
                    partial,
                )
            try:
                as_sent, data = upcast(spec, version, data)
            except ValidationError as exc:
                raise InvalidMessage(BadInput.SCHEMA_ERROR,
                                     f"(version {version}) {_summarize(exc)}", partial) from None
            raw = {**raw, "version": spec.version}
        try:
            payload = spec.cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidMessage(BadInput.SCHEMA_ERROR, _summarize(exc), partial) from None
        try:
            full = {**raw, "payload": payload}
            env = (cls.model_validate(full) if version == spec.version
                   else _Upcast.as_sent_by(full, version, as_sent))
        except ValidationError as exc:
            raise InvalidMessage(BadInput.BAD_ENVELOPE, _summarize(exc), partial) from None
        if env.apartment_id is None and spec.kind in (Kind.COMMAND, Kind.EVENT):
            raise InvalidMessage(
                BadInput.BAD_ENVELOPE,
                f"apartment_id: required for a {spec.kind.value} (it is the partition key)",
                partial,
            )
        return env


class _Upcast(Envelope):
    """An envelope read from an older version, which remembers what it asked as sent:
    its version, and its payload as that version's model read it.

    A subclass, so that the private attribute costs nothing on the common path (any
    private attribute makes pydantic run a hook on every validation and construction).
    """

    _as_sent: tuple[int, dict[str, Any]] = PrivateAttr()

    @classmethod
    def as_sent_by(cls, data: dict[str, Any], version: int,
                   payload: dict[str, Any]) -> _Upcast:
        """Validate ``data`` (already upcast), remembering the ``version`` and the
        ``payload`` it was sent with."""
        env: _Upcast = cls.model_validate(data)
        env._as_sent = (version, payload)
        return env

    def content_hash(self) -> str:
        """Hashed as sent: a re-send matches what the older version's node recorded."""
        version, payload = self._as_sent
        return _content_hash(self.type, version, self.apartment_id, payload)


def _content_hash(type_name: str, version: int, apartment_id: str | None,
                  payload: dict[str, Any]) -> str:
    what = {"type": type_name, "version": version, "apartment_id": apartment_id,
            "payload": payload}
    canonical = json.dumps(what, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:32]


def _versions(accepted: tuple[int, ...]) -> str:
    """``version 2`` or ``versions 1, 2``."""
    return ("version " if len(accepted) == 1 else "versions ") + ", ".join(map(str, accepted))


def _summarize(exc: ValidationError, limit: int = 5) -> str:
    """A short, readable list of the first validation errors."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)
