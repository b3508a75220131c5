"""Exact-match response cache for non-streaming Chat Completions.

Opt-in: per key (`cache: true`; a request may turn it off with `tiergate.cache: false`) or, for the
master key and an open gateway, per request (`extra_body={"tiergate": {"cache": true}}`); only for
deterministic requests (temperature 0 or a seed) — the server decides; this module stores. The cache key
is SHA-256 of the canonical JSON body without the fields that do not change the answer (`stream`,
`stream_options`, `user`, `metadata`, `tiergate`), so the model, messages and every sampling parameter
are part of it. Canonical means the top-level keys and each message's keys sorted; nested objects (a
`json_schema`, tool parameters) keep their order, which structured output follows. A `scope` (the key
id, the routing inputs of an `auto` request) keeps entries apart. Entries expire after `ttl_s`.
Backends: an in-process LRU bounded by `max_entries` and `max_bytes`, or Redis (`SET … PX ttl`, shared by
replicas). A hit costs nothing upstream.
"""

from __future__ import annotations

import abc
import hashlib
import time
from collections import OrderedDict
from typing import Any

import orjson

_IGNORED = frozenset({"stream", "stream_options", "user", "metadata", "tiergate"})
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # the in-process cache's bound on stored bytes (config `cache.max_bytes`)
MAX_ENTRY_FRACTION = 16  # an answer larger than max_bytes / 16 is not stored in the in-process cache
ENTRY_OVERHEAD = 256  # bytes counted per in-process entry on top of its value (key, tuple, dict slot)


def _canonical(body: dict[str, Any]) -> dict[str, Any]:
    canon: dict[str, Any] = {}
    for k in sorted(body):
        if k in _IGNORED:
            continue
        v = body[k]
        if k == "messages" and isinstance(v, list):
            v = [{mk: m[mk] for mk in sorted(m)} if isinstance(m, dict) else m for m in v]
        canon[k] = v
    return canon


def cache_key(body: dict[str, Any], scope: str | None = None) -> str:
    """SHA-256 of the body with its top-level and message-level keys sorted (not deeper: two
    `json_schema`s whose `properties` differ in order ask for different outputs), plus the scope."""
    h = hashlib.sha256(orjson.dumps(_canonical(body)))
    if scope:
        h.update(b"\0" + scope.encode())
    return h.hexdigest()


def is_deterministic(body: dict[str, Any]) -> bool:
    return not body.get("stream") and (body.get("temperature") == 0 or body.get("seed") is not None)


class ResponseCache(abc.ABC):
    """`get(body)` -> the cached `chat.completion` dict or None; `set(body, result)` stores it.
    `scope` (e.g. a key id) keeps entries apart. `shared_across_keys` (config `cache.shared_across_keys`)
    tells the server not to scope entries by key."""

    def __init__(self, ttl_s: float, *, shared_across_keys: bool = False) -> None:
        self.ttl_s = ttl_s
        self.shared_across_keys = shared_across_keys
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
    """In-process LRU with a TTL, bounded by entry count and by bytes (the least recently used entries go
    first; an entry larger than `max_bytes / MAX_ENTRY_FRACTION` is not stored)."""

    def __init__(self, ttl_s: float = 3600.0, max_entries: int = 10_000, max_bytes: int = DEFAULT_MAX_BYTES, *,
                 shared_across_keys: bool = False) -> None:
        super().__init__(ttl_s, shared_across_keys=shared_across_keys)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_bytes // MAX_ENTRY_FRACTION
        self.bytes = 0  # stored values plus ENTRY_OVERHEAD per entry
        self._d: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def _get(self, key: str) -> bytes | None:
        e = self._d.get(key)
        if e is None:
            return None
        if e[0] <= time.monotonic():
            self._drop(key)
            return None
        self._d.move_to_end(key)
        return e[1]

    async def _set(self, key: str, value: bytes) -> None:
        if key in self._d:
            self._drop(key)
        size = len(value) + ENTRY_OVERHEAD
        if size > self.max_entry_bytes:
            return  # one answer may not take over the cache (nor be stored only to evict everything)
        self._d[key] = (time.monotonic() + self.ttl_s, value)
        self.bytes += size
        while len(self._d) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, v) = self._d.popitem(last=False)
            self.bytes -= len(v) + ENTRY_OVERHEAD

    def _drop(self, key: str) -> None:
        _, v = self._d.pop(key)
        self.bytes -= len(v) + ENTRY_OVERHEAD

    def __len__(self) -> int:
        return len(self._d)


class RedisCache(ResponseCache):
    def __init__(self, redis: Any, prefix: str, ttl_s: float = 3600.0, *, shared_across_keys: bool = False) -> None:
        super().__init__(ttl_s, shared_across_keys=shared_across_keys)
        self.redis = redis
        self.prefix = prefix

    async def _get(self, key: str) -> bytes | None:
        return await self.redis.get(f"{self.prefix}cache:{key}")

    async def _set(self, key: str, value: bytes) -> None:
        # milliseconds: `ex` took whole seconds (ttl_s 2.9 lived 2 s, 0.5 lived 1 s)
        await self.redis.set(f"{self.prefix}cache:{key}", value, px=max(1, round(self.ttl_s * 1000)))
