"""Search: its own copy of the apartments and taken nights, and the queries on it.

Search knows only what the events told it: apartments (added, updated, delisted,
relisted) and nights not offered (booked by a reservation or blocked by the owner,
until released or unblocked). It answers ``SearchApartments`` by request/reply and
never asks another actor. Blocks share the taken-nights table under the key
``block:<id>``, so one ``NOT EXISTS`` excludes both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Executable,
    and_,
    delete,
    exists,
    func,
    insert,
    not_,
    select,
)
from sqlalchemy import update as sql_update

from actors.handler import HandlerActor, Reaction
from messages import (
    ApartmentAdded,
    ApartmentDelisted,
    ApartmentHit,
    ApartmentRelisted,
    ApartmentUpdated,
    DatesBlocked,
    DatesBooked,
    DatesReleased,
    DatesUnblocked,
    Envelope,
    Message,
    SearchApartments,
    SearchResults,
)
from store.tables import search_apartments_table as apts
from store.tables import search_booked_table as booked
from store.tables import search_delisted_table as delisted


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
                    "apartment_id": aid, "city": event.city, "city_key": city_key(event.city),
                    "title": event.title,
                    "price_per_night": event.price_per_night, "capacity": event.capacity}
                return Reaction(effects=[_insert(apts, row)])
            case DatesBooked():
                booked_row: dict[str, object] = {
                    "apartment_id": aid, "reservation_id": event.reservation_id,
                    "start": event.start, "end": event.end}
                return Reaction(effects=[_insert(booked, booked_row)])
            case ApartmentUpdated():
                return Reaction(effects=[_run(sql_update(apts).where(
                    apts.c.apartment_id == aid).values(
                    price_per_night=event.price_per_night, capacity=event.capacity))])
            case ApartmentDelisted():
                return Reaction(effects=[
                    _run(delete(delisted).where(delisted.c.apartment_id == aid)),
                    _run(insert(delisted).values(apartment_id=aid))])
            case ApartmentRelisted():
                return Reaction(effects=[
                    _run(delete(delisted).where(delisted.c.apartment_id == aid))])
            case DatesBlocked():
                block_row: dict[str, object] = {
                    "apartment_id": aid, "reservation_id": f"block:{event.block_id}",
                    "start": event.start, "end": event.end}
                return Reaction(effects=[_insert(booked, block_row)])
            case DatesUnblocked():
                return Reaction(effects=[_release(aid, f"block:{event.block_id}")])
            case DatesReleased():
                return Reaction(effects=[_release(aid, event.reservation_id)])
        return Reaction()

    def answer(self, envelope: Envelope) -> Message:
        """Run a query against the read model."""
        q = envelope.payload
        if not isinstance(q, SearchApartments):
            raise TypeError(f"search answers SearchApartments, not {envelope.type}")
        return search(self.store.engine.connect, q)


def city_key(city: str) -> str:
    """What a city is searched by: Unicode case folding ('STRASSE' and 'straße' match).

    Computed in Python, where the row is written and where the query is built: SQLite's
    ``lower()`` folds ASCII only, PostgreSQL's depends on the collation, and neither
    maps 'ß' to 'ss'. A plain key column also lets the query use its index.
    """
    return city.casefold()


def _insert(table: object, row: Mapping[str, object]) -> Callable[[Connection], None]:
    def effect(conn: Connection) -> None:
        conn.execute(insert(table).values(**row))  # type: ignore[arg-type]
    return effect


def _run(statement: Executable) -> Callable[[Connection], None]:
    def effect(conn: Connection) -> None:
        conn.execute(statement)
    return effect


def _release(apartment_id: str | None, key: str) -> Callable[[Connection], None]:
    return _run(delete(booked).where(booked.c.apartment_id == apartment_id,
                                     booked.c.reservation_id == key))


def matching(q: SearchApartments) -> ColumnElement[bool]:
    """The condition a row of ``search_apartments`` meets to be a hit for ``q``."""
    cond = [apts.c.capacity >= q.guests,
            not_(exists().where(delisted.c.apartment_id == apts.c.apartment_id))]
    if q.city:
        # Compared on the stored key: the same on every database, and indexed.
        cond.append(apts.c.city_key == city_key(q.city))
    if q.min_price is not None:
        cond.append(apts.c.price_per_night >= q.min_price)
    if q.max_price is not None:
        cond.append(apts.c.price_per_night <= q.max_price)
    if q.start is not None and q.end is not None:
        taken = exists().where(and_(booked.c.apartment_id == apts.c.apartment_id,
                                    booked.c.start < q.end, q.start < booked.c.end))
        cond.append(not_(taken))
    return and_(*cond)


def search(connect: Callable[[], Connection], q: SearchApartments) -> SearchResults:
    """Apartments matching ``q``, by price (cheapest first unless asked), paginated."""
    conn = connect()
    where = matching(q)
    price = (apts.c.price_per_night.desc() if q.sort == "price_desc"
             else apts.c.price_per_night.asc())
    with conn:
        total = conn.execute(select(func.count()).select_from(apts).where(where)).scalar_one()
        rows = conn.execute(select(apts).where(where)
                            .order_by(price, apts.c.apartment_id)
                            .limit(q.limit).offset(q.offset)).all()
    hits = [ApartmentHit(apartment_id=r.apartment_id, city=r.city, title=r.title,
                         price_per_night=r.price_per_night, capacity=r.capacity) for r in rows]
    return SearchResults(apartments=hits, total=total, start=q.start, end=q.end)
