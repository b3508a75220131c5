"""Fixtures (import the `fx_*` names) shared by the accounting/store tests: a fresh SQLite file, a private PostgreSQL schema and
a Redis key prefix per test, so parallel runs never collide. Holds no tests itself."""

from __future__ import annotations

import asyncio
import secrets

import pytest

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


def _pg_up() -> bool:
    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(PG_BASE, timeout=2)
        except Exception:  # noqa: BLE001 - any failure means: not reachable
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def _redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping())
    except Exception:  # noqa: BLE001 - any failure means: not reachable
        return False


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_BASE)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(scope="session", name="pg_available")
def fx_pg_available() -> bool:
    return _pg_up()


@pytest.fixture(scope="session", name="redis_available")
def fx_redis_available() -> bool:
    return _redis_up()


@pytest.fixture(name="pg_url")
def fx_pg_url(pg_available):
    """A postgresql:// URL whose tables live in a fresh schema, dropped afterwards."""
    if not pg_available:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (db `test`, user postgres)")
    schema = f"tg_t_{secrets.token_hex(6)}"
    yield f"{PG_BASE}?schema={schema}"
    asyncio.run(drop_schema(schema))


@pytest.fixture(name="redis_prefix")
def fx_redis_prefix(redis_available):
    """A unique Redis key prefix; its keys are deleted afterwards."""
    if not redis_available:
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    prefix = f"tgtest:{secrets.token_hex(6)}:"
    yield prefix
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(f"{prefix}*"))
    if keys:
        r.delete(*keys)


@pytest.fixture(params=["sqlite", "postgresql"], name="store_url")
def fx_store_url(request, tmp_path, pg_available):
    """Both dialects, one after the other."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tg.db'}"
        return
    if not pg_available:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (db `test`, user postgres)")
    schema = f"tg_t_{secrets.token_hex(6)}"
    yield f"{PG_BASE}?schema={schema}"
    asyncio.run(drop_schema(schema))


async def _nothing_spent(key_id: str, since: float) -> float:
    return 0.0


@pytest.fixture(params=["in-process", "redis", "postgresql"], name="budget_backend")
def fx_budget_backend(request):
    """Each budget backend in turn, as an async context manager to open in the test's event loop
    (`async with budget_backend() as b:`; nothing spent in the ledger yet); skipped where Redis or
    PostgreSQL is not reachable."""
    from contextlib import asynccontextmanager

    from tiergate.accounting.budget import InProcessBudget, RedisBudget, StoreBudget
    from tiergate.accounting.service import connect_redis
    from tiergate.store import open_store

    where = {"redis": "redis_prefix", "postgresql": "pg_url"}.get(request.param)
    place = request.getfixturevalue(where) if where else None

    @asynccontextmanager
    async def open_budget():
        if request.param == "in-process":
            yield InProcessBudget(_nothing_spent)
        elif request.param == "redis":
            r = connect_redis(REDIS_URL)
            try:
                yield RedisBudget(r, place, _nothing_spent)
            finally:
                await r.aclose()
        else:
            store = await open_store(place)
            try:
                yield StoreBudget(store, _nothing_spent)
            finally:
                await store.close()

    return open_budget


@pytest.fixture(name="bs")
async def fx_batch_store(store_url):
    """A BatchStore on each storage backend (`store_url`)."""
    from tiergate.batches.store import BatchStore
    from tiergate.store import open_store

    store = await open_store(store_url)
    try:
        yield BatchStore(store)
    finally:
        await store.close()
