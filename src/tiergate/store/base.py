"""The storage interface every backend implements, and the ledger row's columns.

SQL is written once with `?` placeholders; the PostgreSQL backend rewrites them to `$n`. Methods that
need dialect-specific SQL (bulk ledger insert, the day bucket, budget transactions) live in the
backends; everything else (keys, spend reports) is plain shared SQL in `queries.py`.
"""

from __future__ import annotations

import abc
from typing import Any

LEDGER_COLUMNS: tuple[str, ...] = (
    "request_id", "ts", "key_id", "kind", "requested_model", "served_model", "deployment",
    "reasoning_effort", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens",
    "cost_usd", "latency_ms", "ttft_ms", "status", "error", "route", "stream", "attempt", "batch_id",
    "metadata",
)

KEY_COLUMNS: tuple[str, ...] = (
    "id", "prefix", "key_hash", "name", "budget_usd", "budget_period", "rpm", "tpm", "models",
    "metadata", "cache", "created_at", "revoked_at",
)


class StorageError(RuntimeError):
    """The database named by `storage:` cannot be used (unreachable, refused, cannot be opened or set up).
    The message says which database (never its password) and why, in one line, e.g. `cannot connect to
    PostgreSQL at 127.0.0.1:5433 (connection refused)`."""


class Store(abc.ABC):
    """A database holding keys, the spend ledger and (others') batch tables.

    `fetch`/`execute`/`executemany` take SQL with `?` placeholders in both dialects.
    """

    dialect: str  # "sqlite" | "postgresql"
    url_redacted: str  # the URL without any password, safe to log

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the number of rows it changed (when the driver says)."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: list[tuple]) -> None:
        """Run one statement for each row, in one transaction."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Run a query; rows as dicts keyed by column name."""

    async def fetchone(self, sql: str, *args: Any) -> dict[str, Any] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    @abc.abstractmethod
    async def insert_ledger(self, rows: list[tuple]) -> int:
        """Insert ledger rows (tuples in LEDGER_COLUMNS order) in one transaction, skipping any whose
        request_id is already stored. Returns how many were new."""

    @abc.abstractmethod
    def day_expr(self, column: str) -> str:
        """SQL for the UTC day number (days since 1970-01-01) of an epoch-seconds column."""

    @abc.abstractmethod
    async def close(self) -> None: ...
