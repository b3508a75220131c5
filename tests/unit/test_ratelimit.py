"""Per-key RPM/TPM token buckets, in process and in Redis: bursts capped at the limit, refusals carry
OpenAI's headers, the TPM estimate is corrected at settlement, and Redis shares one bucket."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.test_store_fixtures import REDIS_URL, fx_redis_available, fx_redis_prefix  # noqa: F401
from tiergate.accounting.ratelimit import InProcessRateLimiter, RedisRateLimiter, duration, refusal
from tiergate.accounting.service import connect_redis


def test_duration_format():
    assert [duration(x) for x in (0, 0.0201, 1, 1.5, 59.9, 60, 360, 3723)] == [
        "0s", "21ms", "1s", "1.5s", "59.9s", "1m0s", "6m0s", "1h2m3s"]


async def _rpm_burst(limiter) -> None:
    results = await asyncio.gather(*(limiter.acquire("k1", 10, None, 0) for _ in range(40)))
    ok = [d for d in results if d.allowed]
    assert len(ok) == 10  # a full bucket, then nothing (refill is 1 per 6 s)
    refused = next(d for d in results if not d.allowed)
    h = refused.headers
    assert h["x-ratelimit-limit-requests"] == "10" and h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"].endswith("s") and 1 <= int(h["retry-after"]) <= 6
    err = refusal("team", 10, None, 0, refused)
    assert err.status == 429 and err.code == "rate_limit_exceeded" and err.type == "requests"
    assert "RPM" in err.message and err.headers is refused.headers
    assert ok[0].headers["x-ratelimit-remaining-requests"] in {str(i) for i in range(10)}
    assert (await limiter.acquire("k2", 10, None, 0)).allowed  # another key has its own bucket


async def _tpm(limiter) -> None:
    assert (await limiter.acquire("t", None, 1000, 600)).allowed
    d = await limiter.acquire("t", None, 1000, 600)
    assert not d.allowed and d.which == "tokens" and d.headers["x-ratelimit-remaining-tokens"] == "400"
    await limiter.adjust("t", 1000, -500)  # the first request used 100, not 600
    assert (await limiter.acquire("t", None, 1000, 600)).allowed
    await limiter.adjust("t", 1000, 10_000)  # ran far over its estimate: the key is in debt
    d = await limiter.acquire("t", None, 1000, 1)
    assert not d.allowed and d.retry_after_s > 60


async def test_inprocess():
    await _rpm_burst(InProcessRateLimiter())
    await _tpm(InProcessRateLimiter())


async def test_redis(redis_prefix):
    r = connect_redis(REDIS_URL)
    try:
        await _rpm_burst(RedisRateLimiter(r, redis_prefix))
        await _tpm(RedisRateLimiter(r, redis_prefix + "t:"))
    finally:
        await r.aclose()


async def test_redis_bucket_is_shared_between_replicas(redis_prefix):
    a, b = connect_redis(REDIS_URL), connect_redis(REDIS_URL)  # two clients = two replicas
    try:
        la, lb = RedisRateLimiter(a, redis_prefix), RedisRateLimiter(b, redis_prefix)
        res = await asyncio.gather(*[(la if i % 2 else lb).acquire("shared", 7, None, 0) for i in range(30)])
        assert sum(d.allowed for d in res) == 7
    finally:
        await a.aclose()
        await b.aclose()


async def test_refill_over_time():
    lim = InProcessRateLimiter()
    for _ in range(600):
        assert (await lim.acquire("fast", 600, None, 0)).allowed
    assert not (await lim.acquire("fast", 600, None, 0)).allowed
    await asyncio.sleep(0.25)  # 600/min = 10/s: 2 back
    got = sum([(await lim.acquire("fast", 600, None, 0)).allowed for _ in range(5)])
    assert got == pytest.approx(2, abs=1)
