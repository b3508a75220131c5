"""PostgreSQL backend through an asyncpg pool: what several replicas share.

URL: `postgresql://user[:password]@host[:port]/db[?schema=NAME]`. The optional `schema` parameter
(tiergate's own, stripped before connecting) puts every table in that schema, created if missing —
tests use it to stay apart from each other.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import re
import socket
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from tiergate.store.base import LEDGER_COLUMNS, StorageError, Store
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


CONNECT_TIMEOUT_S = 10.0  # per connection attempt at start-up (asyncpg's own default is 60 s)
_CONNECT_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def server_address(url: str) -> str:
    """`host:port` of a postgresql:// URL, for messages (no user, no password)."""
    parts = urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError:
        port = "?"
    host = parts.hostname or dict(parse_qsl(parts.query)).get("host") or "localhost"
    return f"{host}:{port}"


def connect_reason(e: BaseException, url: str) -> str:
    """Why a connection failed, in a few words (the driver's wording when it is already plain)."""
    text = str(e)
    if isinstance(e, ConnectionRefusedError) or (isinstance(e, OSError) and e.errno == errno.ECONNREFUSED) or \
            "Connect call failed" in text or "Connection refused" in text:
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return f"unknown host {urlsplit(url).hostname!r}"
    if isinstance(e, asyncio.TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    if isinstance(e, asyncpg.PostgresError):
        return text  # e.g. password authentication failed for user "x"; database "y" does not exist
    return text or type(e).__name__


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, schema: str | None, url_redacted: str) -> None:
        self.pool = pool
        self.schema = schema
        self.url_redacted = url_redacted

    @classmethod
    async def open(cls, url: str, *, min_size: int = 2, max_size: int = 10) -> PostgresStore:
        """Connect and migrate; a failure is a one-line `StorageError` (`cannot connect to PostgreSQL at
        127.0.0.1:5433 (connection refused)`), never the driver's traceback or the password."""
        try:
            dsn, schema, redacted = split_url(url)
        except ValueError as e:
            raise StorageError(str(e)) from None
        where = server_address(url)
        if schema:
            try:
                conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
            except _CONNECT_ERRORS as e:
                raise StorageError(f"cannot connect to PostgreSQL at {where} ({connect_reason(e, url)})") from e
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            except _CONNECT_ERRORS as e:
                raise StorageError(f"cannot create schema {schema!r} in PostgreSQL at {where} ({e})") from e
            finally:
                await conn.close()
        settings = {"search_path": schema} if schema else None
        try:
            pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, server_settings=settings,
                                             timeout=CONNECT_TIMEOUT_S)
        except _CONNECT_ERRORS as e:
            raise StorageError(f"cannot connect to PostgreSQL at {where} ({connect_reason(e, url)})") from e
        store = cls(pool, schema, redacted)
        try:
            await store._migrate()
        except _CONNECT_ERRORS as e:
            await pool.close()
            raise StorageError(f"cannot set up tiergate's tables in PostgreSQL at {where} ({e})") from e
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
