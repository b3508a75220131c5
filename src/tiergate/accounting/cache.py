"""Exact-match response cache for non-streaming Chat Completions.

Opt-in: per request (`extra_body={"tiergate": {"cache": true}}`) or per key (`cache: true`), and only
for deterministic requests (temperature 0 or a seed) — the server decides; this module stores. The
cache key is SHA-256 of the canonical JSON body (sorted keys) without the fields that do not change
the answer (`stream`, `stream_options`, `user`, `metadata`, `tiergate`), so the model, messages and
every sampling parameter are part of it. Entries expire after `ttl_s`. Backends: an in-process LRU
(`max_entries`) or Redis (`SET … EX ttl`, shared by replicas). A hit costs nothing upstream.
"""

from __future__ import annotations

import abc
import hashlib
import time
from collections import OrderedDict
from typing import Any

import orjson

_IGNORED = frozenset({"stream", "stream_options", "user", "metadata", "tiergate"})


def cache_key(body: dict[str, Any], scope: str | None = None) -> str:
    canon = {k: v for k, v in body.items() if k not in _IGNORED}
    h = hashlib.sha256(orjson.dumps(canon, option=orjson.OPT_SORT_KEYS))
    if scope:
        h.update(b"\0" + scope.encode())
    return h.hexdigest()


def is_deterministic(body: dict[str, Any]) -> bool:
    return not body.get("stream") and (body.get("temperature") == 0 or body.get("seed") is not None)


class ResponseCache(abc.ABC):
    """`get(body)` -> the cached `chat.completion` dict or None; `set(body, result)` stores it.
    `scope` (e.g. a key id) keeps entries apart; the default shares them across keys."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0

    async def get(self, body: dict[str, Any], scope: str | None = None) -> dict[str, Any] | None:
        raw = await self._get(cache_key(body, scope))
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        return orjson.loads(raw)

    async def set(self, body: dict[str, Any], result: dict[str, Any], scope: str | None = None) -> None:
        await self._set(cache_key(body, scope), orjson.dumps(result))

    @abc.abstractmethod
    async def _get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    async def _set(self, key: str, value: bytes) -> None: ...

    async def close(self) -> None:
        return None


class MemoryCache(ResponseCache):
    """In-process LRU with a TTL."""

    def __init__(self, ttl_s: float = 3600.0, max_entries: int = 10_000) -> None:
        super().__init__(ttl_s)
        self.max_entries = max_entries
        self._d: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def _get(self, key: str) -> bytes | None:
        e = self._d.get(key)
        if e is None:
            return None
        if e[0] <= time.monotonic():
            del self._d[key]
            return None
        self._d.move_to_end(key)
        return e[1]

    async def _set(self, key: str, value: bytes) -> None:
        self._d[key] = (time.monotonic() + self.ttl_s, value)
        self._d.move_to_end(key)
        while len(self._d) > self.max_entries:
            self._d.popitem(last=False)


class RedisCache(ResponseCache):
    def __init__(self, redis: Any, prefix: str, ttl_s: float = 3600.0) -> None:
        super().__init__(ttl_s)
        self.redis = redis
        self.prefix = prefix

    async def _get(self, key: str) -> bytes | None:
        return await self.redis.get(f"{self.prefix}cache:{key}")

    async def _set(self, key: str, value: bytes) -> None:
        await self.redis.set(f"{self.prefix}cache:{key}", value, ex=max(1, int(self.ttl_s)))
