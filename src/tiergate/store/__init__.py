"""Persistence: SQLite (embedded default) or PostgreSQL through one schema with numbered migrations.

    store = await open_store("sqlite:///./tiergate.db")          # or postgresql://user@host/db[?schema=x]
    rows = await store.fetch("SELECT * FROM ledger WHERE key_id = ?", key_id)
    await store.close()

Adding tables: drop `NNNN_name.sql` into `store/migrations/sqlite/` and `store/migrations/postgresql/`
(see `store/migrations.py`); they are applied in order at `open_store` and recorded in
`schema_migrations`.
"""

from __future__ import annotations

from tiergate.store.base import KEY_COLUMNS, LEDGER_COLUMNS, StorageError, Store

__all__ = ["KEY_COLUMNS", "LEDGER_COLUMNS", "StorageError", "Store", "open_store"]


async def open_store(url: str) -> Store:
    """Open (and migrate) the store named by `url`: sqlite:///path or postgresql://…

    Raises `StorageError` (one line naming the database, never its password, and why) when it cannot be
    reached, opened or set up."""
    if url.startswith("sqlite://"):
        from tiergate.store.sqlite import SQLiteStore

        return await SQLiteStore.open(url)
    if url.startswith(("postgresql://", "postgres://")):
        from tiergate.store.postgres import PostgresStore

        return await PostgresStore.open(url)
    raise StorageError(f"unsupported storage URL scheme {url.split('://')[0]!r}: use sqlite:/// or postgresql://")
