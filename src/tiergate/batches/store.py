"""Durable state for Files and Batches, on top of the shared `Store` (tables from migration 0100).

Lines are the unit of work. A replica *claims* pending lines with one atomic UPDATE (PostgreSQL adds
`FOR UPDATE SKIP LOCKED`, SQLite serialises writers), stamping its owner id, a claim token and a lease.
It renews the lease of everything it holds with one heartbeat UPDATE; a crashed replica's lines come
back to the pool when their lease lapses. A result is written only by the claim that holds the line
(`claim = ?` in the WHERE), so a line is finished once. Ledger rows use the line's stable request id,
so a line re-run after a crash is never billed twice (the ledger ignores a repeated request id).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from tiergate.store.base import Store
from tiergate.wire.ids import new_id

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")
_TS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
       "cancelled_at")

# Lines a batch ended without running (`cancel_pending` marks them `expired` / `cancelled`): each gets
# OpenAI's error line, in the error file (`runner.finalize_files`) and the forwarded path alike.
UNRUN = {"expired": ("batch_expired", "This request could not be executed before the completion window expired."),
         "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled.")}


def unrun_error(state: str) -> dict[str, str]:
    code, message = UNRUN[state]
    return {"code": code, "message": message}


def line_request_id(batch_id: str, line_no: int) -> str:
    """The stable request id of one batch line (ledger key and `response.request_id`)."""
    return f"breq_{batch_id.removeprefix('batch_')}_{line_no}"


@dataclass(frozen=True)
class Claimed:
    batch_id: str
    line_no: int
    custom_id: str
    body: str
    claim: str
    attempts: int


class BatchStore:
    def __init__(self, store: Store) -> None:
        self.db = store

    # ------------------------------------------------------------ files

    async def create_file(self, key_id: str | None, filename: str, purpose: str, content: bytes,
                          file_id: str | None = None) -> dict[str, Any]:
        fid = file_id or new_id("file-", 12)
        now = time.time()
        await self.db.execute(
            "INSERT INTO files (id, key_id, filename, purpose, bytes, created_at, expires_at, content) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            fid, key_id, filename, purpose, len(content), now, None, content)
        return await self.get_file(fid, None, owner_check=False)  # type: ignore[return-value]

    async def get_file(self, file_id: str, key_id: str | None, *, owner_check: bool = True) -> dict[str, Any] | None:
        row = await self.db.fetchone(
            "SELECT id, key_id, filename, purpose, bytes, created_at, expires_at FROM files WHERE id = ?", file_id)
        if row is None or (owner_check and not _visible(row, key_id)):
            return None
        return row

    async def file_content(self, file_id: str) -> bytes:
        row = await self.db.fetchone("SELECT content FROM files WHERE id = ?", file_id)
        return bytes(row["content"]) if row else b""

    async def list_files(self, key_id: str | None, purpose: str | None = None) -> list[dict[str, Any]]:
        """Every file `key_id` sees (newest first, at most 10,000)."""
        rows, _ = await self.files_page(key_id, purpose)
        return rows

    async def files_page(self, key_id: str | None, purpose: str | None = None, *, after: str | None = None,
                         limit: int = 10_000, order: str = "desc") -> tuple[list[dict[str, Any]], bool]:
        """One page of `GET /v1/files`: (rows, has_more). See `_page` for the cursor."""
        where, args = _owner_filter(key_id)
        if purpose is not None:
            where.append("purpose = ?")
            args.append(purpose)
        return await self._page("files", "id, key_id, filename, purpose, bytes, created_at, expires_at", where, args,
                                key_id=key_id, after=after, limit=limit, order=order)

    async def delete_file(self, file_id: str) -> bool:
        return await self.db.execute("DELETE FROM files WHERE id = ?", file_id) > 0

    # ------------------------------------------------------------ batches

    async def create_batch(self, *, key_id: str | None, endpoint: str, input_file_id: str, window_s: float,
                           metadata: dict[str, Any] | None, lines: list[tuple[str, str]],
                           errors: list[dict[str, Any]] | None = None, mode: str = "local",
                           upstream: dict[str, Any] | None = None) -> str:
        """Store a new batch and its lines. With `errors` the batch is born `failed` (validation)."""
        bid = new_id("batch_", 12)
        now = time.time()
        if not errors and lines:
            await self.db.executemany(
                "INSERT INTO batch_lines (batch_id, line_no, custom_id, body) VALUES (?, ?, ?, ?)",
                [(bid, i, cid, body) for i, (cid, body) in enumerate(lines)])
        status = "failed" if errors else "in_progress"
        await self.db.execute(
            "INSERT INTO batches (id, key_id, endpoint, input_file_id, completion_window, status, mode, upstream, "
            "metadata, errors, total, created_at, in_progress_at, expires_at, failed_at) "
            "VALUES (?, ?, ?, ?, '24h', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            bid, key_id, endpoint, input_file_id, status, mode, _dumps(upstream), _dumps(metadata),
            _dumps({"object": "list", "data": errors}) if errors else None, 0 if errors else len(lines), now,
            None if errors else now, now + window_s, now if errors else None)
        return bid

    async def get_batch(self, batch_id: str, key_id: str | None = None, *, owner_check: bool = True
                        ) -> dict[str, Any] | None:
        row = await self.db.fetchone("SELECT * FROM batches WHERE id = ?", batch_id)
        if row is None or (owner_check and not _visible(row, key_id)):
            return None
        return row

    async def list_batches(self, key_id: str | None, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """Newest first, `limit` at most, starting after the batch `after` (OpenAI's cursor): (rows, has_more)."""
        where, args = _owner_filter(key_id)
        return await self._page("batches", "*", where, args, key_id=key_id, after=after, limit=limit, order="desc")

    async def _page(self, table: str, columns: str, where: list[str], args: list[Any], *, key_id: str | None,
                    after: str | None, limit: int, order: str) -> tuple[list[dict[str, Any]], bool]:
        """(rows, has_more) of `table` in (created_at, id) order, `asc` or `desc`, `limit` at most.

        `after` is an object id (OpenAI's cursor): the page starts just past it in the chosen order, so
        objects created in the same instant are neither repeated nor skipped. A cursor the caller cannot
        see (unknown, deleted, another key's) gives an empty page: nothing comes after it."""
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
        where, args = list(where), list(args)
        if after:
            cur = await self.db.fetchone(f"SELECT id, key_id, created_at FROM {table} WHERE id = ?", after)
            if cur is None or not _visible(cur, key_id):
                return [], False
            cmp = ">" if order == "asc" else "<"
            where.append(f"(created_at {cmp} ? OR (created_at = ? AND id {cmp} ?))")
            args += [cur["created_at"], cur["created_at"], cur["id"]]
        cond = f"WHERE {' AND '.join(where)} " if where else ""
        direction = order.upper()
        rows = await self.db.fetch(f"SELECT {columns} FROM {table} {cond}ORDER BY created_at {direction}, "
                                   f"id {direction} LIMIT ?", *args, limit + 1)
        return rows[:limit], len(rows) > limit

    async def active_batches(self) -> list[dict[str, Any]]:
        return await self.db.fetch(
            "SELECT * FROM batches WHERE status IN ('in_progress', 'finalizing', 'cancelling') ORDER BY created_at")

    async def set_status(self, batch_id: str, to: str, *, only_from: tuple[str, ...], **fields: Any) -> bool:
        """Move a batch to `to` if it is in one of `only_from` (an atomic compare-and-set)."""
        sets = ["status = ?"]
        args: list[Any] = [to]
        ts = f"{to}_at" if f"{to}_at" in _TS else None
        if ts:
            sets.append(f"{ts} = ?")
            args.append(time.time())
        for k, v in fields.items():
            sets.append(f"{k} = ?")
            args.append(v)
        marks = ", ".join("?" * len(only_from))
        n = await self.db.execute(f"UPDATE batches SET {', '.join(sets)} WHERE id = ? AND status IN ({marks})",
                                  *args, batch_id, *only_from)
        return n > 0

    async def take_batch_lease(self, batch_id: str, owner: str, lease_s: float) -> bool:
        """Batch-level lease (finalizing, upstream polling): one replica at a time."""
        now = time.time()
        n = await self.db.execute(
            "UPDATE batches SET lease_owner = ?, lease_until = ? WHERE id = ? AND "
            "(lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)", owner, now + lease_s, batch_id, owner, now)
        return n > 0

    async def update_upstream(self, batch_id: str, upstream: dict[str, Any]) -> None:
        await self.db.execute("UPDATE batches SET upstream = ? WHERE id = ?", _dumps(upstream), batch_id)

    async def upstream_batch_ids(self, *, except_batch: str) -> set[str]:
        """The upstream batch ids other forwarded batches hold (so a takeover never adopts one of them)."""
        rows = await self.db.fetch("SELECT upstream FROM batches WHERE mode = 'upstream' AND upstream IS NOT NULL "
                                   "AND id <> ?", except_batch)
        ids = (orjson.loads(r["upstream"]).get("batch_id") for r in rows)
        return {i for i in ids if isinstance(i, str)}

    # ------------------------------------------------------------ lines

    async def claim(self, batch_id: str, owner: str, n: int, lease_s: float, max_attempts: int) -> list[Claimed]:
        if n <= 0:
            return []
        now = time.time()
        token = new_id("clm_", 8)
        if self.db.dialect == "postgresql":
            # A materialised CTE: an IN (subquery ... LIMIT n FOR UPDATE SKIP LOCKED) may be re-run by the
            # planner and then claims more than n rows.
            sql = ("WITH c AS MATERIALIZED (SELECT line_no FROM batch_lines WHERE batch_id = ? AND "
                   "(state = 'pending' OR (state = 'running' AND lease_until < ?)) AND attempts < ? "
                   "ORDER BY line_no LIMIT ? FOR UPDATE SKIP LOCKED) "
                   "UPDATE batch_lines AS b SET state = 'running', owner = ?, claim = ?, lease_until = ?, "
                   "attempts = b.attempts + 1, updated_at = ? FROM c WHERE b.batch_id = ? AND b.line_no = c.line_no")
            await self.db.execute(sql, batch_id, now, max_attempts, n, owner, token, now + lease_s, now, batch_id)
        else:  # SQLite runs one writer at a time: the statement is atomic as it stands
            await self.db.execute(
                "UPDATE batch_lines SET state = 'running', owner = ?, claim = ?, lease_until = ?, "
                "attempts = attempts + 1, updated_at = ? WHERE batch_id = ? AND line_no IN (SELECT line_no FROM "
                "batch_lines WHERE batch_id = ? AND (state = 'pending' OR (state = 'running' AND lease_until < ?)) "
                "AND attempts < ? ORDER BY line_no LIMIT ?)",
                owner, token, now + lease_s, now, batch_id, batch_id, now, max_attempts, n)
        rows = await self.db.fetch(
            "SELECT batch_id, line_no, custom_id, body, claim, attempts FROM batch_lines WHERE claim = ? "
            "AND state = 'running' ORDER BY line_no", token)
        return [Claimed(**r) for r in rows]

    async def give_up_stuck(self, batch_id: str, max_attempts: int) -> int:
        """Lines whose lease lapsed `max_attempts` times (they keep killing replicas): fail them."""
        return await self.db.execute(
            "UPDATE batch_lines SET state = 'failed', status_code = 500, updated_at = ? WHERE batch_id = ? AND "
            "state = 'running' AND lease_until < ? AND attempts >= ?", time.time(), batch_id, time.time(),
            max_attempts)

    async def heartbeat(self, owner: str, lease_s: float) -> int:
        return await self.db.execute("UPDATE batch_lines SET lease_until = ? WHERE owner = ? AND state = 'running'",
                                     time.time() + lease_s, owner)

    async def release(self, claims: list[str]) -> None:
        """Give claimed-but-unfinished lines back (graceful shutdown), without counting an attempt."""
        for c in claims:
            await self.db.execute(
                "UPDATE batch_lines SET state = 'pending', owner = NULL, claim = NULL, lease_until = NULL, "
                "attempts = attempts - 1 WHERE claim = ? AND state = 'running'", c)

    async def finish_line(self, line: Claimed, *, ok: bool, status_code: int | None, result: dict[str, Any],
                          usage: dict[str, int] | None) -> bool:
        u = usage or {}
        n = await self.db.execute(
            "UPDATE batch_lines SET state = ?, status_code = ?, result = ?, input_tokens = ?, cached_tokens = ?, "
            "output_tokens = ?, reasoning_tokens = ?, updated_at = ?, lease_until = NULL "
            "WHERE batch_id = ? AND line_no = ? AND claim = ? AND state = 'running'",
            "done" if ok else "failed", status_code, orjson.dumps(result).decode(), u.get("input_tokens", 0),
            u.get("cached_tokens", 0), u.get("output_tokens", 0), u.get("reasoning_tokens", 0), time.time(),
            line.batch_id, line.line_no, line.claim)
        return n > 0

    async def cancel_pending(self, batch_id: str, state: str = "cancelled") -> int:
        return await self.db.execute("UPDATE batch_lines SET state = ?, updated_at = ? WHERE batch_id = ? AND "
                                     "state = 'pending'", state, time.time(), batch_id)

    async def counts(self, batch_id: str) -> dict[str, int]:
        rows = await self.db.fetch("SELECT state, COUNT(*) AS n FROM batch_lines WHERE batch_id = ? GROUP BY state",
                                   batch_id)
        return {r["state"]: int(r["n"]) for r in rows}

    async def usage(self, batch_id: str) -> dict[str, int]:
        row = await self.db.fetchone(
            "SELECT SUM(input_tokens) AS i, SUM(cached_tokens) AS c, SUM(output_tokens) AS o, "
            "SUM(reasoning_tokens) AS r FROM batch_lines WHERE batch_id = ?", batch_id) or {}
        return {k: int(row.get(k) or 0) for k in ("i", "c", "o", "r")}

    async def results(self, batch_id: str) -> list[dict[str, Any]]:
        return await self.db.fetch("SELECT line_no, custom_id, state, status_code, result FROM batch_lines "
                                   "WHERE batch_id = ? ORDER BY line_no", batch_id)

    async def lines_needing_upstream_results(self, batch_id: str) -> list[dict[str, Any]]:
        """The lines of a forwarded batch without a result yet (refused before sending, or answered)."""
        return await self.db.fetch("SELECT line_no, custom_id, body FROM batch_lines WHERE batch_id = ? "
                                   "AND state IN ('pending', 'running') ORDER BY line_no", batch_id)

    async def set_line_result(self, batch_id: str, line_no: int, *, ok: bool, status_code: int | None,
                              result: dict[str, Any], usage: dict[str, int] | None) -> None:
        u = usage or {}
        await self.db.execute(
            "UPDATE batch_lines SET state = ?, status_code = ?, result = ?, input_tokens = ?, cached_tokens = ?, "
            "output_tokens = ?, reasoning_tokens = ?, updated_at = ? WHERE batch_id = ? AND line_no = ? "
            "AND state IN ('pending', 'running')",
            "done" if ok else "failed", status_code, orjson.dumps(result).decode(), u.get("input_tokens", 0),
            u.get("cached_tokens", 0), u.get("output_tokens", 0), u.get("reasoning_tokens", 0), time.time(),
            batch_id, line_no)


def _owner_filter(key_id: str | None) -> tuple[list[str], list[Any]]:
    """SQL conditions for `_visible`."""
    if key_id is None:
        return [], []
    return ["(key_id IS NULL OR key_id = ?)"], [key_id]


def _visible(row: dict[str, Any], key_id: str | None) -> bool:
    """A key sees its own objects; the open gateway (no key) and the master key see everything."""
    return key_id is None or row.get("key_id") in (None, key_id)


def _dumps(v: Any) -> str | None:
    return None if v is None else orjson.dumps(v).decode()
