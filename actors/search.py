"""Search: its own copy of the apartments and booked nights, and the queries on it.

Search knows only what the events told it (``ApartmentAdded``, ``DatesBooked``); it
answers ``SearchApartments`` by request/reply and never asks another actor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

from sqlalchemy import Connection, and_, exists, func, insert, not_, select

from actors.handler import HandlerActor, Reaction
from messages import (
    ApartmentAdded,
    ApartmentHit,
    DatesBooked,
    Envelope,
    Message,
    SearchApartments,
    SearchResults,
)
from store.tables import search_apartments_table as apts
from store.tables import search_booked_table as booked


class SearchActor(HandlerActor):
    """Keeps the search read model and answers ``SearchApartments``."""

    consumer: ClassVar[str] = "search"

    def react(self, envelope: Envelope) -> Reaction:
        """Update the read model from one event."""
        event = envelope.payload
        aid = envelope.apartment_id
        match event:
            case ApartmentAdded():
                row: dict[str, object] = {
                    "apartment_id": aid, "city": event.city, "title": event.title,
                    "price_per_night": event.price_per_night, "capacity": event.capacity}
                return Reaction(effects=[_insert(apts, row)])
            case DatesBooked():
                booked_row: dict[str, object] = {
                    "apartment_id": aid, "reservation_id": event.reservation_id,
                    "start": event.start, "end": event.end}
                return Reaction(effects=[_insert(booked, booked_row)])
        return Reaction()

    def answer(self, envelope: Envelope) -> Message:
        """Run a query against the read model."""
        q = envelope.payload
        if not isinstance(q, SearchApartments):
            raise TypeError(f"search answers SearchApartments, not {envelope.type}")
        return search(self.store.engine.connect, q)


def _insert(table: object, row: Mapping[str, object]) -> Callable[[Connection], None]:
    def effect(conn: Connection) -> None:
        conn.execute(insert(table).values(**row))  # type: ignore[arg-type]
    return effect


def search(connect: Callable[[], Connection], q: SearchApartments) -> SearchResults:
    """Apartments matching ``q``, cheapest first, paginated."""
    cond = [apts.c.capacity >= q.guests]
    if q.city:
        cond.append(func.lower(apts.c.city) == q.city.lower())
    if q.min_price is not None:
        cond.append(apts.c.price_per_night >= q.min_price)
    if q.max_price is not None:
        cond.append(apts.c.price_per_night <= q.max_price)
    if q.start is not None and q.end is not None:
        taken = exists().where(and_(booked.c.apartment_id == apts.c.apartment_id,
                                    booked.c.start < q.end, q.start < booked.c.end))
        cond.append(not_(taken))
    where = and_(*cond)
    with connect() as conn:
        total = conn.execute(select(func.count()).select_from(apts).where(where)).scalar_one()
        rows = conn.execute(select(apts).where(where)
                            .order_by(apts.c.price_per_night, apts.c.apartment_id)
                            .limit(q.limit).offset(q.offset)).all()
    hits = [ApartmentHit(apartment_id=r.apartment_id, city=r.city, title=r.title,
                         price_per_night=r.price_per_night, capacity=r.capacity) for r in rows]
    return SearchResults(apartments=hits, total=total, start=q.start, end=q.end)
