"""Older versions still read, and how each becomes the next (docs/messages.md).

A version's model here is frozen as it was published: never edit one. To retire a
version, delete its model and step together (its senders then get
``unsupported_version``), add it to ``RETIRED`` and say so in the changelog of
docs/messages.md.

Each step is a pure function from one version's payload (validated against that
version's model, as JSON data) to the next version's; chains run up to the current
version, so a node reads every stored event and every command of a version listed
in ``accepts`` as the current model, and the rules never see an old shape.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from messages import commands, events
from messages.base import ID_PATTERN, Published, Request
from messages.registry import upcaster

RETIRED: frozenset[str] = frozenset()
"""Message versions once published and deliberately no longer read, as
``<Type>_v<n>`` (e.g. ``AddApartment_v1``); the contract test accepts their removal."""

LEGACY_CURRENCY = "EUR"
"""The currency version 1 prices were in: the one every deployment charged in then."""


class AddApartmentV1(Request):
    """An owner lists a new apartment (the envelope's apartment_id names it)."""

    owner_id: str = Field(pattern=ID_PATTERN)
    city: str = Field(min_length=1, max_length=100)
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=2000)
    price_per_night: int = Field(le=100_000_000, strict=True)
    capacity: int = Field(le=100, strict=True)


class ApartmentAddedV1(Published):
    """An apartment was listed."""

    owner_id: str
    city: str
    title: str
    description: str = ""
    price_per_night: int
    capacity: int


@upcaster(commands.AddApartment.__name__, 1, AddApartmentV1)
def add_apartment_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 had no currency: its prices were euro cents."""
    return {**payload, "currency": LEGACY_CURRENCY}


@upcaster(events.ApartmentAdded.__name__, 1, ApartmentAddedV1)
def apartment_added_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """A stored version 1 listing was priced in euro cents."""
    return {**payload, "currency": LEGACY_CURRENCY}
