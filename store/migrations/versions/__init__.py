"""One module per schema revision; Alembic loads them by path, in ``down_revision`` order."""
