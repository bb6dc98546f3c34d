"""Alembic migrations of the store, shipped inside the package so an installed node finds them.

``store.db`` points a programmatic Alembic config at this directory; no alembic.ini is
needed at run time.
"""
