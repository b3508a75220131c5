"""PostgreSQL backend through an asyncpg pool: what several replicas share.

URL: `postgresql://user[:password]@host[:port]/db[?schema=NAME]`. The optional `schema` parameter
(tiergate's own, stripped before connecting) puts every table in that schema, created if missing —
tests use it to stay apart from each other.
"""

from __future__ import annotations

import functools
import re
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from tiergate.store.base import LEDGER_COLUMNS, Store
from tiergate.store.migrations import CREATE_TABLE, load_migrations

_LEDGER_TYPES = (
    "text", "float8", "text", "text", "text", "text", "text", "text", "int4", "int4", "int4", "int4",
    "float8", "float8", "float8", "text", "text", "text", "bool", "int4", "text", "text",
)
assert len(_LEDGER_TYPES) == len(LEDGER_COLUMNS)
_INSERT_LEDGER = (
    f"INSERT INTO ledger ({', '.join(LEDGER_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_LEDGER_TYPES))
    + ") ON CONFLICT (request_id) DO NOTHING"
)
_MIGRATION_LOCK = 0x7469657267617465  # "tiergate": advisory lock serialising concurrent start-ups
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@functools.lru_cache(maxsize=512)
def to_dollar(sql: str) -> str:
    """`?` placeholders -> `$1, $2, …` (our SQL never has a literal `?`)."""
    n = 0

    def sub(_: re.Match) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    return re.sub(r"\?", sub, sql)


def split_url(url: str) -> tuple[str, str | None, str]:
    """-> (dsn for asyncpg, schema or None, the URL with the password masked)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    schema = next((v for k, v in query if k == "schema"), None)
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise ValueError(f"storage URL: schema {schema!r} is not a plain SQL identifier")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    scheme = "postgresql"
    dsn = urlunsplit((scheme, parts.netloc, parts.path, rest, ""))
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":***@")
    return dsn, schema, urlunsplit((scheme, netloc, parts.path, parts.query, ""))


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, schema: str | None, url_redacted: str) -> None:
        self.pool = pool
        self.schema = schema
        self.url_redacted = url_redacted

    @classmethod
    async def open(cls, url: str, *, min_size: int = 2, max_size: int = 10) -> PostgresStore:
        dsn, schema, redacted = split_url(url)
        if schema:
            conn = await asyncpg.connect(dsn)
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            finally:
                await conn.close()
        settings = {"search_path": schema} if schema else None
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, server_settings=settings)
        store = cls(pool, schema, redacted)
        await store._migrate()
        return store

    async def _migrate(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(CREATE_TABLE)
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for m in load_migrations("postgresql"):
                if m.version in done:
                    continue
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    m.version, m.name, time.time(),
                )

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self.pool.execute(to_dollar(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, sql: str, rows: list[tuple]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(to_dollar(sql), rows)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(to_dollar(sql), *args)]

    async def insert_ledger(self, rows: list[tuple]) -> int:
        if not rows:
            return 0
        columns = list(zip(*rows))
        status = await self.pool.execute(_INSERT_LEDGER, *columns)
        return int(status.rsplit(" ", 1)[-1])

    def day_expr(self, column: str) -> str:
        return f"floor({column} / 86400)::bigint"

    async def close(self) -> None:
        await self.pool.close()
