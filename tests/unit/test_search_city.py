"""Search by city folds case the Unicode way, the same on SQLite and PostgreSQL, by index.

The search actor's reactions write the rows (with ``city_key``) and ``search`` answers,
on a real store of each kind (the ``db_url`` fixture); no broker is involved.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select, text

from actors.search import SearchActor, city_key, search, statements
from messages import ApartmentAdded, Envelope, SearchApartments
from store import EventStore, StoreWriter
from store.tables import search_apartments_table as apts
from store.writer import apply_effects
from tests.conftest import day

CITIES = {"s1": "Straße", "s2": "STRASSE", "s3": "strasse", "i1": "İstanbul",
          "i2": "İSTANBUL", "e1": "Évora", "e2": "évora", "p1": "Porto"}


@pytest.fixture
def listed(engine: Engine) -> Engine:
    """The apartments of CITIES, written by the search actor's own reactions."""
    actor = SearchActor("search", EventStore(engine), StoreWriter(engine), lambda _f: None)
    with engine.begin() as conn:
        for aid, city in CITIES.items():
            added = ApartmentAdded(owner_id="o1", city=city, title=f"Flat in {city}",
                                   price_per_night=5000, currency="EUR", capacity=2)
            apply_effects(conn, actor.react(Envelope.new(added, apartment_id=aid)).effects)
    return engine


def hits(engine: Engine, city: str) -> set[str]:
    results = search(engine.connect, SearchApartments(city=city, limit=100))
    found = {a.apartment_id for a in results.apartments}
    assert results.total == len(found)
    return found


def test_the_key_is_the_casefolded_city(listed: Engine) -> None:
    with listed.connect() as c:
        keys = {r.apartment_id: r.city_key for r in c.execute(
            select(apts.c.apartment_id, apts.c.city_key))}
    assert keys == {aid: city.casefold() for aid, city in CITIES.items()}
    assert keys["s1"] == "strasse"


@pytest.mark.parametrize("query", ["strasse", "STRASSE", "Straße", "straße", "StraSSe"])
def test_sharp_s_matches_double_s(listed: Engine, query: str) -> None:
    assert hits(listed, query) == {"s1", "s2", "s3"}


@pytest.mark.parametrize("query", ["İstanbul", "İSTANBUL", "i̇stanbul"])
def test_a_dotted_capital_i_matches_itself_in_any_case(listed: Engine, query: str) -> None:
    assert hits(listed, query) == {"i1", "i2"}


def test_accents_are_kept_and_their_case_folded(listed: Engine) -> None:
    assert hits(listed, "ÉVORA") == {"e1", "e2"}
    assert hits(listed, "evora") == set()  # folding case is not removing accents
    assert hits(listed, "pORTO") == {"p1"}
    assert hits(listed, "Lisbon") == set()


def test_city_search_pages_from_the_covering_index(listed: Engine) -> None:
    query = statements(SearchApartments(city="Straße", start=day(1), end=day(3)))[0]
    with listed.connect() as c:
        sql = str(query.compile(c, compile_kwargs={"literal_binds": True}))
        if c.dialect.name == "postgresql":
            c.execute(text("SET enable_seqscan = off"))  # a tiny table: force the choice
            plan = "\n".join(c.execute(text(f"EXPLAIN {sql}")).scalars())
        else:
            plan = "\n".join(str(r[-1]) for r in c.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
    assert "ix_search_apartments_city_price" in plan, plan
    if c.dialect.name == "sqlite":  # the page of ids and the total: no table row read
        assert "COVERING INDEX ix_search_apartments_city_price" in plan, plan
        assert "COVERING INDEX ix_search_booked_nights" in plan, plan


def test_city_key_is_python_casefold() -> None:
    assert city_key("Straße") == "strasse"
    assert city_key("ΣΊΣΥΦΟΣ") == "σίσυφοσ"


@pytest.fixture
def porto(engine: Engine) -> Engine:
    """Seven apartments in Porto at prices 100..700, written by search's reactions."""
    actor = SearchActor("search", EventStore(engine), StoreWriter(engine), lambda _f: None)
    with engine.begin() as conn:
        for n in range(1, 8):
            added = ApartmentAdded(owner_id="o1", city="Porto", title=f"Flat {n}",
                                   price_per_night=100 * n, currency="EUR", capacity=2)
            apply_effects(conn, actor.react(Envelope.new(added, apartment_id=f"p{n}")).effects)
    return engine


@pytest.mark.parametrize(("offset", "limit", "bound", "total", "exact", "page"), [
    (0, 2, 10, 7, True, [100, 200]),     # under the bound: exact
    (0, 2, 7, 7, True, [100, 200]),      # exactly at it: still exact
    (0, 2, 3, 3, False, [100, 200]),     # past it: the bound, marked inexact
    (2, 2, 3, 4, False, [300, 400]),     # a deeper page counts as far as it reaches
    (4, 3, 3, 7, True, [500, 600, 700]),
    (6, 2, 3, 7, True, [700]),           # the last page: exact again
    (8, 2, 3, 7, True, []),              # past the last hit: the count alone answers
])
def test_the_total_is_exact_up_to_a_bound(porto: Engine, offset: int, limit: int, bound: int,
                                          total: int, exact: bool, page: list[int]) -> None:
    q = SearchApartments(city="porto", offset=offset, limit=limit)
    results = search(porto.connect, q, total_limit=bound)
    assert (results.total, results.total_exact) == (total, exact)
    assert [a.price_per_night for a in results.apartments] == page
    desc = search(porto.connect, q.model_copy(update={"sort": "price_desc"}), total_limit=bound)
    assert (desc.total, desc.total_exact) == (total, exact)
    prices = [100 * n for n in range(7, 0, -1)]
    assert [a.price_per_night for a in desc.apartments] == prices[offset:offset + limit]
