"""The store: migrations apply once per dialect, the ledger insert is idempotent, placeholders work."""

from __future__ import annotations

import time

from tests.unit.test_store_fixtures import fx_pg_available, fx_store_url  # noqa: F401 (fixtures)
from tiergate.store import LEDGER_COLUMNS, open_store
from tiergate.store.migrations import load_migrations
from tiergate.store.postgres import split_url, to_dollar


def _row(rid: str, **kw) -> tuple:
    base = {"request_id": rid, "ts": time.time(), "kind": "chat", "status": "ok", "input_tokens": 1,
            "cached_tokens": 0, "output_tokens": 1, "reasoning_tokens": 0, "cost_usd": 0.5, "stream": False,
            "attempt": 0}
    base.update(kw)
    return tuple(base.get(c) for c in LEDGER_COLUMNS)


def test_migrations_are_numbered_and_match_between_dialects():
    lite = [m.version for m in load_migrations("sqlite")]
    pg = [m.version for m in load_migrations("postgresql")]
    assert lite == sorted(lite) and lite[0] == 1
    assert {v for v in lite if v < 100} == {v for v in pg if v < 100}


def test_placeholders_and_url_parsing():
    assert to_dollar("SELECT ? , ? FROM t WHERE a = ?") == "SELECT $1 , $2 FROM t WHERE a = $3"
    dsn, schema, shown = split_url("postgresql://u:hunter2@h:5/db?schema=abc&sslmode=disable")
    assert schema == "abc" and "schema" not in dsn and "sslmode=disable" in dsn
    assert "hunter2" not in shown and "hunter2" in dsn


async def test_migrate_twice_and_ledger_idempotent(store_url):
    store = await open_store(store_url)
    try:
        assert await store.insert_ledger([_row("a"), _row("b")]) == 2
        assert await store.insert_ledger([_row("b"), _row("c")]) == 1
        rows = await store.fetch("SELECT request_id, cost_usd FROM ledger ORDER BY request_id")
        assert [r["request_id"] for r in rows] == ["a", "b", "c"]
    finally:
        await store.close()
    store = await open_store(store_url)  # re-open: nothing re-applied
    try:
        mig = await store.fetch("SELECT version FROM schema_migrations")
        assert len(mig) == len(load_migrations(store.dialect))
        assert (await store.fetchone("SELECT COUNT(*) AS n FROM ledger"))["n"] == 3
        assert await store.execute("UPDATE ledger SET cost_usd = ? WHERE request_id = ?", 1.5, "a") == 1
        assert (await store.fetchone("SELECT cost_usd FROM ledger WHERE request_id = ?", "a"))["cost_usd"] == 1.5
    finally:
        await store.close()
