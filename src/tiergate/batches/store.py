"""Durable state for Files and Batches, on top of the shared `Store` (tables from migration 0100).

Lines are the unit of work. A replica *claims* pending lines with one atomic UPDATE (PostgreSQL adds
`FOR UPDATE SKIP LOCKED`, SQLite serialises writers), stamping its owner id, a claim token and a lease.
It renews the lease of everything it holds with one heartbeat UPDATE; a crashed replica's lines come
back to the pool when their lease lapses. A result is written only by the claim that holds the line
(`claim = ?` in the WHERE), so a line is finished once. Ledger rows use the line's stable request id,
so a line re-run after a crash is never billed twice (the ledger ignores a repeated request id).

Files may expire (`expires_after` on upload, a batch's `output_expires_after` for its output and error
files; migration 0101): an expired file reads as absent at once (get, list, content, batch input), and
expired rows are deleted by `purge_expired`, run at most once per `PURGE_EVERY_S` per process from an
upload, a file listing or the batch runner's poll (`active_batches`).

List cursors: deleting a file (or purging an expired one) leaves a tombstone (id, key id, created_at)
in `list_tombstones`, so an `after` cursor naming it still positions the next page (the SDK's
auto-pagination keeps walking while the loop deletes what it sees). Tombstones are deleted by the same
purge `TOMBSTONE_KEEP_S` after the deletion; a cursor older than that gives an empty page again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from time import monotonic
from time import time as _wall
from typing import Any

import orjson

from tiergate.store.base import Store
from tiergate.wire.ids import new_id

log = logging.getLogger("tiergate.batches")

PURGE_EVERY_S = 600.0  # expired files and old tombstones are deleted at most this often (per process)
TOMBSTONE_KEEP_S = 86_400.0  # a deleted file's id positions a list page for this long after the deletion

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
        self._purged_at: float | None = None  # monotonic time of the last purge; None: never

    # ------------------------------------------------------------ files

    async def create_file(self, key_id: str | None, filename: str, purpose: str, content: bytes,
                          file_id: str | None = None, *, expires_after_s: int | None = None) -> dict[str, Any]:
        """Store a file; with `expires_after_s` it expires that long after its `created_at` (a batch's
        output / error file: its batch's `output_expires_after`, `output_expiry_s`)."""
        fid = file_id or new_id("file-", 12)
        now = time.time()
        await self.db.execute(
            "INSERT INTO files (id, key_id, filename, purpose, bytes, created_at, expires_at, content) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            fid, key_id, filename, purpose, len(content), now,
            None if expires_after_s is None else now + expires_after_s, content)
        await self.maybe_purge()
        return await self.db.fetchone(  # type: ignore[return-value]
            f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?", fid)

    async def output_expiry_s(self, batch_id: str) -> int | None:
        """The batch's `output_expires_after.seconds` (its output and error files expire that long after
        they are written), None when it set none."""
        row = await self.db.fetchone("SELECT output_expires_s FROM batches WHERE id = ?", batch_id)
        return None if row is None or row["output_expires_s"] is None else int(row["output_expires_s"])

    async def get_file(self, file_id: str, key_id: str | None, *, owner_check: bool = True) -> dict[str, Any] | None:
        """The file, or None when it does not exist, has expired or (with `owner_check`) is not `key_id`'s."""
        row = await self.db.fetchone(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?", file_id)
        if row is None or (owner_check and not _visible(row, key_id)) or _expired(row):
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
        """One page of `GET /v1/files` (expired files left out): (rows, has_more). See `_page` for the cursor."""
        await self.maybe_purge()
        where, args = _owner_filter(key_id)
        where.append("(expires_at IS NULL OR expires_at > ?)")
        args.append(_now())
        if purpose is not None:
            where.append("purpose = ?")
            args.append(purpose)
        return await self._page("files", _FILE_COLUMNS, where, args, key_id=key_id, after=after, limit=limit,
                                order=order)

    async def delete_file(self, file_id: str) -> bool:
        """Delete a file, leaving a tombstone so a list cursor naming it still positions the next page."""
        await self.db.execute(
            "INSERT INTO list_tombstones (id, object, key_id, created_at, deleted_at) "
            "SELECT id, 'files', key_id, created_at, ? FROM files WHERE id = ? ON CONFLICT (id) DO NOTHING",
            _now(), file_id)
        return await self.db.execute("DELETE FROM files WHERE id = ?", file_id) > 0

    async def purge_expired(self) -> int:
        """Delete expired files (each leaves a tombstone) and tombstones older than `TOMBSTONE_KEEP_S`;
        the number of files deleted."""
        self._purged_at = monotonic()
        now = _now()
        await self.db.execute(
            "INSERT INTO list_tombstones (id, object, key_id, created_at, deleted_at) "
            "SELECT id, 'files', key_id, created_at, ? FROM files WHERE expires_at IS NOT NULL AND expires_at <= ? "
            "ON CONFLICT (id) DO NOTHING", now, now)
        n = await self.db.execute("DELETE FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?", now)
        await self.db.execute("DELETE FROM list_tombstones WHERE deleted_at < ?", now - TOMBSTONE_KEEP_S)
        return n

    async def maybe_purge(self) -> None:
        """`purge_expired` if this process has not run it in the last `PURGE_EVERY_S` (or ever: `None`,
        not 0, since the monotonic clock may itself be near 0 after a boot). A failure is logged and
        tried again `PURGE_EVERY_S` later (expired files read as absent meanwhile); it never fails the
        request that triggered it."""
        if self._purged_at is not None and monotonic() - self._purged_at < PURGE_EVERY_S:
            return
        try:
            n = await self.purge_expired()
        except Exception:
            log.exception("purging expired files failed; tried again in %.0f s", PURGE_EVERY_S)
            return
        if n:
            log.info("purged %d expired file(s)", n)

    # ------------------------------------------------------------ batches

    async def create_batch(self, *, key_id: str | None, endpoint: str, input_file_id: str, window_s: float,
                           metadata: dict[str, Any] | None, lines: list[tuple[str, str]],
                           errors: list[dict[str, Any]] | None = None, mode: str = "local",
                           upstream: dict[str, Any] | None = None, output_expires_s: int | None = None) -> str:
        """Store a new batch and its lines. With `errors` the batch is born `failed` (validation).
        `output_expires_s` (`output_expires_after.seconds`): its output / error files expire that long
        after they are written."""
        bid = new_id("batch_", 12)
        now = time.time()
        if not errors and lines:
            await self.db.executemany(
                "INSERT INTO batch_lines (batch_id, line_no, custom_id, body) VALUES (?, ?, ?, ?)",
                [(bid, i, cid, body) for i, (cid, body) in enumerate(lines)])
        status = "failed" if errors else "in_progress"
        await self.db.execute(
            "INSERT INTO batches (id, key_id, endpoint, input_file_id, completion_window, status, mode, upstream, "
            "metadata, errors, total, created_at, in_progress_at, expires_at, failed_at, output_expires_s) "
            "VALUES (?, ?, ?, ?, '24h', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            bid, key_id, endpoint, input_file_id, status, mode, _dumps(upstream), _dumps(metadata),
            _dumps({"object": "list", "data": errors}) if errors else None, 0 if errors else len(lines), now,
            None if errors else now, now + window_s, now if errors else None, output_expires_s)
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
        objects created in the same instant are neither repeated nor skipped. A deleted object's id still
        positions the page through its tombstone (`list_tombstones`, kept `TOMBSTONE_KEEP_S`), so a
        caller deleting what it lists keeps walking. A cursor the caller cannot see (unknown, another
        key's, a tombstone past its keep) gives an empty page: nothing comes after it."""
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
        where, args = list(where), list(args)
        if after:
            cur = await self.db.fetchone(f"SELECT id, key_id, created_at FROM {table} WHERE id = ?", after)
            if cur is None:
                cur = await self.db.fetchone(
                    "SELECT id, key_id, created_at FROM list_tombstones WHERE id = ? AND object = ?", after, table)
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
        """The batches with work left (polled by every replica's runner, which also drives the purge)."""
        await self.maybe_purge()
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


_FILE_COLUMNS = "id, key_id, filename, purpose, bytes, created_at, expires_at"


def _now() -> float:
    """Wall-clock time for expiry (a module function, so tests can move it on)."""
    return _wall()


def _expired(row: dict[str, Any]) -> bool:
    return row.get("expires_at") is not None and float(row["expires_at"]) <= _now()


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
