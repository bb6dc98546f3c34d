"""Any entity, read from the store with its own rules: no actor, nothing changed.

For the operator: a passivated or never-loaded apartment or reservation can be
inspected (its state folded from its events) and its history listed, and an id given
without its kind is found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from messages import Envelope, Message
from rules import apartment, reservation
from store import EventStore

# Each kind's pure rules: its empty state and its fold, for read-only rehydration.
_FOLDS: dict[str, tuple[Callable[[str], Any], Callable[[Any, Message], Any]]] = {
    "apartment": (lambda key: apartment.Apartment(apartment_id=key), apartment.evolve),
    "reservation": (lambda key: reservation.Reservation(reservation_id=key), reservation.evolve),
}


def resolve(store: EventStore, entity_id: str) -> str | None:
    """``kind:key`` for an id given with or without its kind; None if nothing has it.

    A bare key is looked up as an apartment, then as a reservation.
    """
    kind, sep, _key = entity_id.partition(":")
    if sep and kind in _FOLDS:
        return entity_id
    for kind in _FOLDS:
        if store.load(f"{kind}:{entity_id}", limit=1):
            return f"{kind}:{entity_id}"
    return None


def stored_state(store: EventStore, entity_id: str) -> tuple[Any, list[Envelope]]:
    """An entity's state folded from the store with its own rules (no actor): and its
    events. For the operator: a passivated or never-loaded entity is inspectable too.

    Raises:
        KeyError: for an id that is not ``apartment:...`` or ``reservation:...``.
    """
    kind, _, key = entity_id.partition(":")
    empty, fold = _FOLDS[kind]
    events = store.load(entity_id)
    state = empty(key)
    for env in events:
        state = fold(state, env.payload)
    return state, events
