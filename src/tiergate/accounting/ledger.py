"""The spend ledger writer: one row per request, never blocking the hot path, never losing a row.

`record(row)` (synchronous, microseconds) appends the row as one JSON line to a local append-only
journal with a single `os.write` on an `O_APPEND` descriptor — the kernel has it once the call
returns, so it survives `kill -9` of the process (not a power cut: there is no fsync on the hot
path) — and queues it. A background task flushes the queue to the store in batches; each batch's
journal segment is deleted once the store has it. At start-up, journals left by dead processes (their
lock file is no longer `flock`ed) are replayed into the store; the insert skips request_ids already
stored, so a replay never double-counts.

Journal layout in `journal_dir`: `<writer-id>.lock` (held with flock while the writer lives) and
`<writer-id>.<seq>.jsonl` segments. Several replicas may share one directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import orjson

from tiergate.logs import scrub_text
from tiergate.store.base import LEDGER_COLUMNS, Store

log = logging.getLogger("tiergate.ledger")

_INT = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "attempt")
_COLUMNS = frozenset(LEDGER_COLUMNS)
_MAX_ERROR = 2000
QUARANTINE = "ledger-quarantine.jsonl"  # in the journal directory: rows the store refused, kept for a person
_MAX_TEXT = 1000  # a short text column (model names, effort, ids): the client may have sent any of them
_INT4 = (-(2**31), 2**31 - 1)  # PostgreSQL's INTEGER columns
_SCRUBBED = frozenset({"requested_model", "reasoning_effort", "error"})  # text a client may have put a key in
_SHORT_TEXT = ("key_id", "kind", "requested_model", "served_model", "deployment", "reasoning_effort", "status",
               "batch_id")
# normalize_row builds the tuple by position, in this order:
assert LEDGER_COLUMNS == ("request_id", "ts", "key_id", "kind", "requested_model", "served_model", "deployment",
                          "reasoning_effort", *_INT[:4], "cost_usd", "latency_ms", "ttft_ms", "status", "error",
                          "route", "stream", "attempt", "batch_id", "metadata")


def _text(v: Any, limit: int | None = _MAX_TEXT) -> str | None:
    """A value for a TEXT column: None stays None, a string stays itself, anything else (a list or an
    object a client sent as `reasoning_effort`, a number) becomes its compact JSON text. Bounded, and never
    something a database refuses (a NUL byte for PostgreSQL, a lone surrogate for UTF-8)."""
    if v is None:
        return None
    if type(v) is str and v.isascii() and (limit is None or len(v) <= limit) and "\x00" not in v:
        return v  # the common case, in a fraction of a microsecond
    if not isinstance(v, str):
        try:
            v = orjson.dumps(v, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError):
            v = repr(v)
    if limit is not None and len(v) > limit:
        v = v[:limit]
    if "\x00" in v:
        v = v.replace("\x00", "\ufffd")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        v = v.encode("utf-8", "replace").decode("utf-8")
    return v


def _number(v: Any, name: str, extra: dict[str, Any]) -> float | None:
    """A finite float, or None (noted in `extra`) for what is not one."""
    if v is None:
        return None
    if type(v) is float and math.isfinite(v):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        f = math.nan
    if isinstance(v, bool) or not math.isfinite(f):
        extra[f"{name}_invalid"] = _text(v, 100)
        return None
    return f


def _int4(v: Any, name: str, extra: dict[str, Any]) -> int:
    if type(v) is int and _INT4[0] <= v <= _INT4[1]:
        return v
    if v is None:
        return 0
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int) and not isinstance(v, bool) and _INT4[0] <= v <= _INT4[1]:
        return v
    f = _number(v, name, extra)
    if f is None:
        return 0
    n = int(f)
    if not _INT4[0] <= n <= _INT4[1]:
        extra[f"{name}_invalid"] = _text(v, 100)
        n = max(_INT4[0], min(_INT4[1], n))
    return n


def normalize_row(row: dict[str, Any]) -> tuple:
    """A ledger dict -> a tuple in LEDGER_COLUMNS order, with defaults filled, JSON fields encoded and every
    value coerced to its column's type (what a client sent, e.g. `reasoning_effort: []`, is stored as text;
    a number that is not one is noted under `metadata`), so no row can be one the database refuses and
    hold every later row in the journal. Text a client may have put a secret in (requested_model,
    reasoning_effort, error) is scrubbed as the logs are. Keys that are not columns are kept, under
    `metadata`, rather than dropped."""
    get = row.get
    if not get("request_id"):
        raise ValueError("ledger row needs a request_id")
    unknown = row.keys() - _COLUMNS
    extra: dict[str, Any] = {k: row[k] for k in unknown} if unknown else {}
    ts = get("ts")
    if type(ts) is not float or not math.isfinite(ts):
        ts = _number(ts, "ts", extra)
        if ts is None:
            ts = time.time()
    cost = get("cost_usd")
    if type(cost) is not float or not math.isfinite(cost):
        c = _number(cost, "cost_usd", {}) if cost is not None else 0.0
        if c is None:  # never a row the database refuses (NaN is NULL to SQLite): that would hold every
            extra["cost_not_finite"] = repr(cost) if isinstance(cost, float) else _text(cost, 100)  # later row
            c = 0.0
        cost = c
    ints = [_int4(get(k), k, extra) for k in _INT]
    lat, ttft = _number(get("latency_ms"), "latency_ms", extra), _number(get("ttft_ms"), "ttft_ms", extra)
    text = {}
    for k in _SHORT_TEXT:
        v = get(k)
        if v is not None:
            v = _text(v)
            text[k] = scrub_text(v) if k in _SCRUBBED else v
    error = get("error")
    if error is not None:
        error = scrub_text(_text(error, _MAX_ERROR))
    meta = get("metadata")
    if extra:
        if isinstance(meta, str):
            try:
                meta = orjson.loads(meta)
            except orjson.JSONDecodeError:
                pass
        if not isinstance(meta, dict):
            meta = {} if meta is None else {"metadata": meta}
        meta = {**meta, **extra}
    tget = text.get
    return (
        _text(get("request_id")), ts, tget("key_id"), tget("kind") or "chat", tget("requested_model"),
        tget("served_model"), tget("deployment"), tget("reasoning_effort"), *ints[:4], cost, lat, ttft,
        tget("status") or "ok", error, _text(get("route"), None), bool(get("stream")), ints[4], tget("batch_id"),
        _text(meta, None),
    )


def _row_error(e: BaseException) -> bool:
    """Whether the store refused the rows themselves (a value of the wrong type, out of range, a NUL
    byte) rather than failed (unreachable, timed out, shutting down, a missing table): the rows of the
    first kind are set aside one by one, the second kind keeps every row journaled until the store is back."""
    import sqlite3

    if isinstance(e, (sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.IntegrityError, sqlite3.DataError)):
        return True
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        asyncpg = None
    if asyncpg is not None:
        if isinstance(e, asyncpg.DataError):  # the driver could not encode an argument
            return True
        if isinstance(e, asyncpg.PostgresError):
            state = getattr(e, "sqlstate", None) or ""
            return state[:2] in ("22", "23")  # data exception, integrity constraint violation
        if isinstance(e, asyncpg.InterfaceError):
            return False
    if isinstance(e, (OSError, asyncio.TimeoutError)):
        return False
    return isinstance(e, (TypeError, ValueError, OverflowError))


class LedgerWriter:
    """Non-blocking, crash-safe ledger writer. Create with `await LedgerWriter.start(store, dir)`."""

    def __init__(self, store: Store, journal_dir: Path, *, batch_size: int = 500,
                 flush_interval_s: float = 0.05) -> None:
        self.store = store
        self.dir = journal_dir
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.persisted = 0  # rows this writer has inserted (replays included)
        self.replayed = 0  # rows recovered from dead writers' journals at start-up
        self.late = 0  # rows recorded after close (kept in a journal the next start-up replays)
        self.set_aside = 0  # rows the store refused (a value it cannot take): in QUARANTINE, not in the ledger
        self._aside: set[str] = set()  # their request ids, so a retried segment does not set them aside twice
        self._pending: list[tuple] = []
        self._sealed: list[tuple[Path, int, list[tuple]]] = []  # (segment path, fd, rows)
        self._seq = 0
        self._fd = -1
        self._seg: Path | None = None
        self._lock_fd = -1
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._closed = False

    @classmethod
    async def start(cls, store: Store, journal_dir: str | Path, **kw: Any) -> LedgerWriter:
        w = cls(store, Path(journal_dir), **kw)
        w.dir.mkdir(parents=True, exist_ok=True)
        w._lock_fd = os.open(w.dir / f"{w.id}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(w._lock_fd, fcntl.LOCK_EX)
        await w.recover()
        w._open_segment()
        w._task = asyncio.create_task(w._run(), name="tiergate-ledger-flusher")
        return w

    # ------------------------------------------------------------------ hot path

    def record(self, row: dict[str, Any]) -> None:
        """Journal the row and queue it for the store. Never awaits; raises only on a bad row."""
        tup = normalize_row(row)
        if self._closed:  # a stream cut by a forced shutdown finishing its books after the writer closed
            self._record_late(tup)
            return
        os.write(self._fd, orjson.dumps(tup) + b"\n")
        self._pending.append(tup)
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    def _record_late(self, tup: tuple) -> None:
        """A row recorded after `close`: appended to a journal of its own whose lock file is never held, so
        the next start-up (of any replica sharing the directory) replays it like a stopped writer's."""
        late = f"{self.id}-late"
        lock = self.dir / f"{late}.lock"
        if not lock.exists():
            os.close(os.open(lock, os.O_CREAT | os.O_RDWR, 0o600))
        fd = os.open(self.dir / f"{late}.00000001.jsonl", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        try:
            os.write(fd, orjson.dumps(tup) + b"\n")
        finally:
            os.close(fd)
        self.late += 1
        if self.late == 1:
            log.warning("ledger: a row was recorded after shutdown (a stream cut by a forced stop); it is kept in "
                        "the journal %s and written at the next start", self.dir)

    # ------------------------------------------------------------------ background

    def _open_segment(self) -> None:
        self._seq += 1
        self._seg = self.dir / f"{self.id}.{self._seq:08d}.jsonl"
        self._fd = os.open(self._seg, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)

    def _rotate(self) -> None:
        """Seal the current segment with the rows it holds and start a fresh one (synchronous, so no
        `record` can interleave)."""
        if not self._pending:
            return
        self._sealed.append((self._seg, self._fd, self._pending))
        self._pending = []
        self._open_segment()

    async def flush(self) -> None:
        """Persist every row recorded so far; retries until the store accepts them."""
        async with self._flush_lock:
            if self._closed:  # closed: a journal left by a failed close belongs to the next start-up's replay
                return
            self._rotate()
            while self._sealed:
                seg, fd, rows = self._sealed[0]
                for i in range(0, len(rows), 5000):
                    self.persisted += await self._insert(rows[i:i + 5000], seg.name)
                self._sealed.pop(0)
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(seg)

    async def _insert(self, rows: list[tuple], source: str) -> int:
        """Insert `rows`; when the store refuses the rows themselves (not an outage: see `_row_error`) the
        batch is split until the row it refuses is alone, and that row is set aside (`_quarantine`), so one
        bad row never holds the others. A store failure raises: every row stays journaled."""
        if self._aside:
            rows = [r for r in rows if r[0] not in self._aside]
        if not rows:
            return 0
        try:
            return await self.store.insert_ledger(rows)
        except Exception as e:  # sorted below: a refused row, or a store failure (re-raised)
            if not _row_error(e):
                raise
            if len(rows) == 1:
                self._quarantine(rows[0], e, source)
                return 0
        mid = len(rows) // 2
        return await self._insert(rows[:mid], source) + await self._insert(rows[mid:], source)

    def _quarantine(self, row: tuple | list, e: BaseException | str, source: str) -> None:
        """Set a row the store refuses aside, in QUARANTINE next to the journal (one JSON line: when, why,
        from which journal segment, the row by column), with one error line in the log."""
        why = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
        why = scrub_text(" ".join(why.split()))[:500]
        vals = list(row)
        rec = {"ts": time.time(), "writer": self.id, "source": source, "error": why,
               "row": dict(zip(LEDGER_COLUMNS, vals)) if len(vals) == len(LEDGER_COLUMNS) else vals}
        fd = os.open(self.dir / QUARANTINE, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        try:
            os.write(fd, orjson.dumps(rec, default=str) + b"\n")
        finally:
            os.close(fd)
        rid = str(vals[0]) if vals else "?"
        self._aside.add(rid)
        self.set_aside += 1
        log.error("ledger: the store refused row %s (%s); set aside in %s, not counted in spend; the other rows "
                  "are written", rid, why, self.dir / QUARANTINE)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            try:
                await self.flush()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the store is down: rows stay journaled and queued; try again
                log.warning("ledger flush failed (%s: %s); %d rows kept in the journal, retrying in %.1fs",
                            type(e).__name__, e, sum(len(s[2]) for s in self._sealed), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    # ------------------------------------------------------------------ recovery

    async def recover(self) -> int:
        """Replay journals of writers that are no longer alive into the store. Returns rows replayed."""
        total = 0
        for lock in sorted(self.dir.glob("*.lock")):
            wid = lock.name[: -len(".lock")]
            if wid == self.id:
                continue
            try:
                fd = os.open(lock, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its writer is alive
                for seg in sorted(self.dir.glob(f"{wid}.*.jsonl")):
                    rows = self._read_segment(seg)
                    for i in range(0, len(rows), 5000):
                        total += await self._insert(rows[i:i + 5000], seg.name)
                    seg.unlink(missing_ok=True)
                lock.unlink(missing_ok=True)
            finally:
                os.close(fd)
        if total:
            log.info("ledger: replayed %d rows from journals of stopped processes", total)
        self.replayed += total
        self.persisted += total
        return total

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush everything, stop the background task, remove this writer's journal. If the store stays
        unreachable for `timeout_s`, the journal is left for the next start-up to replay."""
        if self._closed:
            return
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            try:
                await self.flush()
                break
            except Exception as e:  # noqa: BLE001 - any store failure: retry, then leave the journal
                if time.monotonic() + delay > deadline:
                    # Leave the journal (and release its lock): the next start-up replays it.
                    log.error("ledger: the store did not take the last rows at shutdown (%s: %s); %d rows stay in "
                              "journal %s and are written at the next start", type(e).__name__,
                              scrub_text(" ".join(str(e).split()))[:300], self.pending, self.dir)
                    async with self._flush_lock:  # not under a flush another task (a budget seed) is in
                        self._closed = True
                        fds = [self._fd, *(s[1] for s in self._sealed), self._lock_fd]
                        # forgotten, so no later flush closes these numbers again (the OS reuses them for
                        # sockets: a second close, or a write, would hit a client's connection)
                        self._sealed, self._pending, self._fd, self._lock_fd = [], [], -1, -1
                        for fd in fds:
                            os.close(fd)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        self._closed = True
        os.close(self._fd)
        if self._seg is not None:
            self._seg.unlink(missing_ok=True)
        (self.dir / f"{self.id}.lock").unlink(missing_ok=True)
        os.close(self._lock_fd)

    @property
    def pending(self) -> int:
        return len(self._pending) + sum(len(s[2]) for s in self._sealed)

    def _read_segment(self, path: Path) -> list[tuple]:
        """A stopped writer's journal segment, each row normalised again (a journal written before rows were
        coerced to their columns' types may hold values the store refuses); a row that cannot be read as one
        is set aside, not dropped and not fatal."""
        rows = []
        for n, line in enumerate(path.read_bytes().splitlines()):
            if not line.strip():
                continue
            try:
                vals = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("ledger journal %s line %d is torn; skipped", path.name, n + 1)
                continue
            try:
                if not isinstance(vals, list) or len(vals) != len(LEDGER_COLUMNS):
                    raise ValueError(f"not a row of {len(LEDGER_COLUMNS)} columns")
                rows.append(normalize_row(dict(zip(LEDGER_COLUMNS, vals))))
            except (ValueError, TypeError) as e:
                self._quarantine(vals if isinstance(vals, list) else [vals], f"unreadable journal row: {e}",
                                 f"{path.name}:{n + 1}")
        return rows


GROUPS = {"key": "key_id", "model": "served_model", "deployment": "deployment", "day": None,
          "requested_model": "requested_model", "status": "status"}


async def spend_report(store: Store, group_by: str = "key", start: float | None = None, end: float | None = None,
                       key_id: str | None = None) -> list[dict[str, Any]]:
    """Spend from the ledger between `start` (inclusive) and `end` (exclusive) epoch seconds, grouped by
    key | model (served) | deployment | day (UTC, YYYY-MM-DD) | requested_model | status; most expensive
    first (days in order). Every row counts, failed attempts included: they are money spent too."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    expr = GROUPS[group_by] or store.day_expr("ts")
    where, args = ["ts >= ?", "ts < ?"], [float(start or 0.0), float(end if end is not None else 1e12)]
    if key_id is not None:
        where.append("key_id = ?")
        args.append(key_id)
    if group_by != "status":  # requests refused before any upstream call cost nothing and served no model
        where.append("status <> 'rejected'")
    sql = (f"SELECT {expr} AS grp, COUNT(*) AS requests, SUM(cost_usd) AS cost_usd, "
           "SUM(input_tokens) AS input_tokens, SUM(cached_tokens) AS cached_tokens, "
           "SUM(output_tokens) AS output_tokens, SUM(reasoning_tokens) AS reasoning_tokens "
           f"FROM ledger WHERE {' AND '.join(where)} GROUP BY {expr}")
    rows = await store.fetch(sql, *args)
    out = []
    for r in rows:
        g = r.pop("grp")
        if group_by == "day" and g is not None:
            g = time.strftime("%Y-%m-%d", time.gmtime(int(g) * 86400))
        # sums of float costs carry binary noise (0.00045719999999999995): rounded to the nano-dollar
        out.append({group_by: g, **{k: (round(float(v or 0.0), 9) if k == "cost_usd" else int(v or 0))
                                    for k, v in r.items()}})
    out.sort(key=(lambda x: x["day"] or "") if group_by == "day" else (lambda x: -x["cost_usd"]))
    return out
