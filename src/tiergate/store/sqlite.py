"""SQLite backend: the embedded default. One writer thread owns the write connection (WAL mode), one
reader thread serves queries, so the event loop never blocks on disk and writes are serialised."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tiergate.store.base import LEDGER_COLUMNS, StorageError, Store
from tiergate.store.migrations import CREATE_TABLE, load_migrations

log = logging.getLogger("tiergate.store")

_INSERT_LEDGER = (
    f"INSERT INTO ledger ({', '.join(LEDGER_COLUMNS)}) VALUES ({', '.join('?' * len(LEDGER_COLUMNS))}) "
    "ON CONFLICT (request_id) DO NOTHING"
)


def sqlite_path(url: str) -> str:
    """sqlite:///relative.db, sqlite:////abs/path.db, sqlite:///:memory: -> a filesystem path."""
    rest = url.split("://", 1)[1]
    rest = rest.removeprefix("/")
    if not rest:
        raise ValueError("sqlite URL needs a path, e.g. sqlite:///./tiergate.db")
    return rest


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class SQLiteStore(Store):
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self.url_redacted = f"sqlite:///{path}"
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="tiergate-sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="tiergate-sqlite-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self.created = False  # the file did not exist: this open made a new, empty database
        self._file_id: tuple[int, int] | None = None  # (device, inode) of the file opened

    @classmethod
    async def open(cls, url: str) -> SQLiteStore:
        try:
            path = sqlite_path(url)
        except ValueError as e:
            raise StorageError(str(e)) from None
        store = cls(path)
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                store.created = not Path(path).exists()
            await store._on_writer(store._open_writer)
            if path != ":memory:":
                st = os.stat(path)
                store._file_id = (st.st_dev, st.st_ino)
        except (OSError, sqlite3.Error) as e:
            if store._wconn is not None:
                store._wconn.close()
            store._writer.shutdown(wait=False)
            store._reader.shutdown(wait=False)
            raise StorageError(f"cannot open the SQLite database {path} ({e})") from e
        if path == ":memory:":  # one in-memory database: the reader must share the writer's connection
            store._rconn = store._wconn
            store._reader.shutdown()
            store._reader = store._writer
        else:
            store._rconn = await store._on_reader(_connect, path)
        return store

    def file_problem(self) -> str | None:
        """Why the database file the gateway has open is no longer the one at its path (removed or replaced
        while running: every key and spend row then goes to a file nobody will open again), or None."""
        if self._file_id is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return (f"the SQLite database file {self.path} was removed while the gateway runs; what it writes is "
                    "lost at exit: restore the file and restart the gateway")
        if (st.st_dev, st.st_ino) != self._file_id:
            return (f"the SQLite database file {self.path} was replaced while the gateway runs (it still writes to "
                    "the old one): restart the gateway")
        return None

    def _open_writer(self) -> None:
        self._wconn = _connect(self.path)
        self._migrate(self._wconn)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute(CREATE_TABLE)
        for m in load_migrations("sqlite"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (m.version,)).fetchone():
                    conn.execute("ROLLBACK")
                    continue
                for stmt in _split(m.sql):
                    conn.execute(stmt)
                conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                             (m.version, m.name, time.time()))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def _on_writer(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def _on_reader(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)

    # ------------------------------------------------------------------ generic SQL

    async def execute(self, sql: str, *args: Any) -> int:
        def run() -> int:
            return self._wconn.execute(sql, args).rowcount

        return await self._on_writer(run)

    async def executemany(self, sql: str, rows: list[tuple]) -> None:
        await self._write_many(sql, rows)

    async def _write_many(self, sql: str, rows: list[tuple]) -> int:
        """All rows in one transaction on the writer thread; returns the number of rows changed."""
        def run() -> int:
            c = self._wconn
            before = c.total_changes
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany(sql, rows)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return c.total_changes - before

        return await self._on_writer(run)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            return [dict(r) for r in self._rconn.execute(sql, args).fetchall()]

        return await self._on_reader(run)

    # ------------------------------------------------------------------ ledger

    async def insert_ledger(self, rows: list[tuple]) -> int:
        return await self._write_many(_INSERT_LEDGER, rows)

    def day_expr(self, column: str) -> str:
        return f"CAST({column} / 86400 AS INTEGER)"

    async def close(self) -> None:
        def shut(conn: sqlite3.Connection | None) -> None:
            if conn is not None:
                conn.close()

        if self._rconn is not self._wconn:
            await self._on_reader(shut, self._rconn)
            self._reader.shutdown()
        await self._on_writer(shut, self._wconn)
        self._writer.shutdown()
        self._wconn = self._rconn = None


def _split(script: str) -> list[str]:
    """Statements of a migration file (`;` at line end separates them; no triggers in our SQL)."""
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
