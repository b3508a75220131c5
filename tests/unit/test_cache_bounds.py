"""The response cache's bounds and key: the in-process LRU is bounded by bytes as well as entries (an
oversized answer is not stored), Redis TTLs are milliseconds, nested key order is part of the key, the
`cache:` config options are checked, and a hit adds no billed tokens to the metrics."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.test_store_fixtures import REDIS_URL, fx_redis_available, fx_redis_prefix  # noqa: F401
from tiergate.accounting.cache import DEFAULT_MAX_BYTES, ENTRY_OVERHEAD, MemoryCache, RedisCache, cache_key
from tiergate.accounting.service import connect_redis
from tiergate.config import ConfigError, parse_config
from tiergate.metrics import Metrics


def _answer(n: int) -> dict:
    return {"id": "chatcmpl-1", "choices": [{"message": {"content": "x" * n}}]}


async def test_memory_cache_evicts_least_recently_used_by_bytes():
    c = MemoryCache(ttl_s=60, max_entries=1000, max_bytes=16 * 10_000)  # entries up to 10,000 bytes
    for i in range(30):
        await c.set({"n": i}, _answer(7_000))
    assert c.bytes <= c.max_bytes and len(c) < 30
    assert await c.get({"n": 0}) is None and await c.get({"n": 29}) is not None
    kept = [i for i in range(30) if await c.get({"n": i}) is not None]
    assert kept == list(range(30 - len(kept), 30))  # the oldest went first
    await c.get({"n": kept[0]})  # used: now the most recent
    await c.set({"n": 99}, _answer(7_000))
    assert await c.get({"n": kept[0]}) is not None and await c.get({"n": kept[1]}) is None


async def test_memory_cache_does_not_store_an_answer_over_a_sixteenth_of_its_bytes():
    c = MemoryCache(ttl_s=60, max_bytes=160_000)
    await c.set({"n": 1}, _answer(1_000))
    await c.set({"n": 2}, _answer(10_001))  # more than 160,000 / 16 with its JSON
    assert await c.get({"n": 2}) is None and await c.get({"n": 1}) is not None  # nothing evicted for it
    assert MemoryCache().max_bytes == DEFAULT_MAX_BYTES


async def test_memory_cache_counts_bytes_on_replace_and_expiry():
    c = MemoryCache(ttl_s=0.05, max_bytes=1_000_000)
    await c.set({"n": 1}, _answer(100))
    one = c.bytes
    assert one > 100 + ENTRY_OVERHEAD
    await c.set({"n": 1}, _answer(100))
    assert c.bytes == one and len(c) == 1
    await asyncio.sleep(0.08)
    assert await c.get({"n": 1}) is None and c.bytes == 0


async def test_redis_ttl_is_milliseconds(redis_prefix):
    r = connect_redis(REDIS_URL)
    try:
        c = RedisCache(r, redis_prefix, ttl_s=0.5)
        await c.set({"n": 1}, _answer(1))
        assert 0 < await r.pttl(f"{redis_prefix}cache:{cache_key({'n': 1})}") <= 500  # EX made it 1,000
        c2 = RedisCache(r, redis_prefix, ttl_s=2.9)
        await c2.set({"n": 2}, _answer(1))
        assert 2000 < await r.pttl(f"{redis_prefix}cache:{cache_key({'n': 2})}") <= 2900  # EX made it 2,000
    finally:
        await r.aclose()


def test_cache_key_sorts_top_level_and_message_keys_only():
    def body(props: list[str], **top) -> dict:
        return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0,
                "response_format": {"type": "json_schema", "json_schema": {
                    "name": "s", "schema": {"type": "object", "properties": {k: {"type": "string"} for k in props}}}},
                **top}

    a = body(["zeta", "alpha"])
    assert cache_key(a) != cache_key(body(["alpha", "zeta"]))
    reordered = {"temperature": 0, "response_format": a["response_format"],
                 "messages": [{"content": "hi", "role": "user"}], "model": "m"}
    assert cache_key(a) == cache_key(reordered)


def _config(cache: object) -> dict:
    return {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}], "cache": cache}


@pytest.mark.parametrize("cache, where", [
    ({"max_bytes": 0}, "cache.max_bytes"), ({"max_bytes": 1.5}, "cache.max_bytes"),
    ({"max_bytes": "64MB"}, "cache.max_bytes"), ({"shared_across_keys": "yes"}, "cache.shared_across_keys"),
    ({"shared": True}, "cache"),
])
def test_cache_config_options_are_checked(cache, where):
    with pytest.raises(ConfigError) as e:
        parse_config(_config(cache), source="<test>", env={})
    assert where in str(e.value)


def test_cache_config_accepts_the_new_options():
    cfg = parse_config(_config({"max_bytes": 1_000_000, "shared_across_keys": True}), source="<test>", env={})
    assert cfg.extra["cache"] == {"max_bytes": 1_000_000, "shared_across_keys": True}


def test_a_cache_hit_adds_no_billed_tokens():
    m = Metrics()
    row = {"served_model": "gpt-4o-mini", "deployment": None, "input_tokens": 10, "output_tokens": 5,
           "cost_usd": 0.0, "latency_ms": 1.0}
    m.observe_request({**row, "status": "cache_hit"})
    text = m.render().decode()
    assert 'status="cache_hit"' in text and 'tiergate_tokens_total{' not in text
    m.observe_request({**row, "status": "ok", "deployment": "d/0"})
    assert 'tiergate_tokens_total{model="gpt-4o-mini",deployment="d/0",kind="prompt"} 10' in m.render().decode()
