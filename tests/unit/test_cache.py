"""The response cache: canonical keys, TTL, LRU bound, Redis backend."""

from __future__ import annotations

import asyncio

from tests.unit.test_store_fixtures import REDIS_URL, fx_redis_available, fx_redis_prefix  # noqa: F401
from tiergate.accounting.cache import MemoryCache, RedisCache, cache_key, is_deterministic
from tiergate.accounting.service import connect_redis

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": {"total_tokens": 3}}


def test_key_is_canonical_and_covers_what_changes_the_answer():
    reordered = {"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "gpt-4o-mini"}
    assert cache_key(BODY) == cache_key(reordered)
    assert cache_key(BODY) == cache_key({**BODY, "user": "u1", "metadata": {"a": "b"}, "tiergate": {"cache": True}})
    for change in ({"model": "gpt-4o"}, {"temperature": 0.5}, {"max_tokens": 5}, {"seed": 1},
                   {"messages": [{"role": "user", "content": "hi!"}]}):
        assert cache_key(BODY) != cache_key({**BODY, **change})
    assert cache_key(BODY, "key_a") != cache_key(BODY, "key_b") != cache_key(BODY)
    assert is_deterministic(BODY) and is_deterministic({"seed": 3}) and not is_deterministic({"temperature": 1})
    assert not is_deterministic({**BODY, "stream": True})


async def _roundtrip(cache) -> None:
    assert await cache.get(BODY) is None
    await cache.set(BODY, ANSWER)
    assert await cache.get(BODY) == ANSWER
    assert await cache.get({**BODY, "model": "other"}) is None
    assert (cache.hits, cache.misses) == (1, 2)


async def test_memory_ttl_and_lru():
    c = MemoryCache(ttl_s=0.2, max_entries=2)
    await _roundtrip(c)
    await c.set({"n": 1}, ANSWER)
    await c.set({"n": 2}, ANSWER)  # evicts BODY (least recently used)
    assert await c.get(BODY) is None and await c.get({"n": 1}) == ANSWER
    await asyncio.sleep(0.25)
    assert await c.get({"n": 2}) is None


async def test_redis(redis_prefix):
    r = connect_redis(REDIS_URL)
    try:
        c = RedisCache(r, redis_prefix, ttl_s=1)
        await _roundtrip(c)
        ttl = await r.ttl(f"{redis_prefix}cache:{cache_key(BODY)}")
        assert 0 < ttl <= 1
    finally:
        await r.aclose()
