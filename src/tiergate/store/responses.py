"""Stored Responses (table `responses`, migration 0200): what `GET/DELETE /v1/responses/{id}`,
`GET /v1/responses/{id}/input_items` and `previous_response_id` read.

One row per response the gateway returned with `store` not false: the response object exactly as the
client got it, the request's own input items (normalised to item objects with ids, as OpenAI's
input_items list returns them), its `instructions`, the `previous_response_id` it continued, the id of
the key that created it (never the key itself) and which path served it (`native` / `translated`).

Retention: with `retention_s` (config `responses.retention_days`, default 30 as OpenAI's), a response older
than that reads as absent at once, and rows past it are deleted after a save, at most once per
`PURGE_EVERY_S` per process; `None` keeps them until deleted.

Deletion leaves a tombstone (`path` = `deleted`, the content cleared): the id reads as absent to every
caller, and `deleted_in_chain` lets the native path refuse it (or a chain through it) as a
`previous_response_id` even for the master key (the upstream, which shares one account for all keys, would otherwise continue it). Tombstones go
with the retention purge.

Visibility: a virtual key sees only the responses it created; the master key and an open gateway
(`viewer=None`) see all. Anything a caller may not see reads as absent, so another key's response id
is a plain 404, never a 403 that would confirm it exists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from time import monotonic
from typing import Any

import orjson

from tiergate.store.base import Store

MAX_CHAIN = 1000  # previous_response_id links followed at most (a cycle cannot form, but stay bounded)
PURGE_EVERY_S = 600.0  # expired rows are deleted after a save at most this often (per process)
DELETED = "deleted"  # the `path` of a deleted response's tombstone


@dataclass(frozen=True)
class StoredResponse:
    id: str
    key_id: str | None
    created_at: float
    path: str
    previous_response_id: str | None
    instructions: Any
    input_items: list[dict[str, Any]]
    response: dict[str, Any]


class ChainBroken(LookupError):
    """A `previous_response_id` chain names a response that is missing or not the caller's."""

    def __init__(self, response_id: str) -> None:
        super().__init__(response_id)
        self.response_id = response_id


def _row(r: dict[str, Any]) -> StoredResponse:
    return StoredResponse(
        id=r["id"], key_id=r["key_id"], created_at=float(r["created_at"]), path=r["path"],
        previous_response_id=r["previous_response_id"],
        instructions=None if r["instructions"] is None else orjson.loads(r["instructions"]),
        input_items=orjson.loads(r["input_items"]), response=orjson.loads(r["response"]))


def _visible(key_id: str | None, viewer: str | None) -> bool:
    return viewer is None or key_id == viewer


class ResponseStore:
    def __init__(self, store: Store, retention_s: float | None = None) -> None:
        self.db = store
        self.retention_s = retention_s
        self._purged_at: float | None = None  # monotonic time of the last purge; None: not yet

    def _expired(self, created_at: float) -> bool:
        return self.retention_s is not None and created_at < time.time() - self.retention_s

    async def purge(self) -> int:
        """Delete the responses past the retention period; the number deleted."""
        if self.retention_s is None:
            return 0
        self._purged_at = monotonic()
        return await self.db.execute("DELETE FROM responses WHERE created_at < ?", time.time() - self.retention_s)

    async def save(self, response: dict[str, Any], *, key_id: str | None, path: str,
                   input_items: list[dict[str, Any]], instructions: Any = None,
                   previous_response_id: str | None = None) -> bool:
        """Store one response (its `id` is the key). An id already stored is left as it is; returns
        whether the row is new."""
        n = await self.db.execute(
            "INSERT INTO responses (id, key_id, created_at, model, path, previous_response_id, instructions, "
            "input_items, response) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            str(response["id"]), key_id, float(response.get("created_at") or time.time()),
            response.get("model"), path, previous_response_id,
            None if instructions is None else orjson.dumps(instructions).decode(),
            orjson.dumps(input_items).decode(), orjson.dumps(response).decode())
        if self.retention_s is not None and (
                self._purged_at is None or monotonic() - self._purged_at >= PURGE_EVERY_S):
            await self.purge()
        return n == 1

    async def get(self, response_id: str, viewer: str | None) -> StoredResponse | None:
        r = await self.db.fetchone(
            "SELECT id, key_id, created_at, path, previous_response_id, instructions, input_items, response "
            "FROM responses WHERE id = ?", response_id)
        if (r is None or r["path"] == DELETED or not _visible(r["key_id"], viewer)
                or self._expired(float(r["created_at"]))):
            return None
        return _row(r)

    async def delete(self, response_id: str, viewer: str | None) -> bool:
        """Delete a response `viewer` may see, leaving a tombstone; whether there was one to delete."""
        sql = ("UPDATE responses SET path = ?, response = '{}', input_items = '[]', instructions = NULL "
               "WHERE id = ? AND path <> ?")
        if viewer is None:
            return await self.db.execute(sql, DELETED, response_id, DELETED) == 1
        return await self.db.execute(sql + " AND key_id = ?", DELETED, response_id, DELETED, viewer) == 1

    async def deleted_in_chain(self, response_id: str) -> str | None:
        """The first response of the chain ending at `response_id`, following the links stored here, that was
        deleted here (by any caller), or None. The walk stops at a response the gateway never stored (one
        made upstream outside it, which the upstream resolves)."""
        rid: str | None = response_id
        for _ in range(MAX_CHAIN):
            if rid is None:
                return None
            r = await self.db.fetchone("SELECT path, previous_response_id FROM responses WHERE id = ?", rid)
            if r is None:
                return None
            if r["path"] == DELETED:
                return rid
            rid = r["previous_response_id"]
        return None

    async def conversation(self, response_id: str, viewer: str | None) -> list[dict[str, Any]]:
        """The items of the chain ending at `response_id`, oldest first: each response's input items
        then its output items, so they can be sent as the next request's leading input. Instructions
        are not part of it (OpenAI does not carry them over). Raises ChainBroken naming the first
        response that is missing or not visible to `viewer`."""
        turns: list[StoredResponse] = []
        rid: str | None = response_id
        while rid is not None:
            if len(turns) >= MAX_CHAIN:
                raise ChainBroken(rid)
            s = await self.get(rid, viewer)
            if s is None:
                raise ChainBroken(rid)
            turns.append(s)
            rid = s.previous_response_id
        items: list[dict[str, Any]] = []
        for s in reversed(turns):
            items += s.input_items
            items += [o for o in s.response.get("output") or [] if isinstance(o, dict)]
        return items
