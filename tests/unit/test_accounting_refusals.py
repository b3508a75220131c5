"""Refusals the accounting layer hands back, on every backend: a budget refusal says whether the budget
is spent (`exhausted`, `x-should-retry: false`) or only held by requests in flight (`Retry-After`);
`refund` gives a rate-limit slot back; a revoked key's 401 names the key's id (never the key)."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.test_store_fixtures import (  # noqa: F401 (fixtures)
    REDIS_URL,
    fx_budget_backend,
    fx_pg_available,
    fx_pg_url,
    fx_redis_available,
    fx_redis_prefix,
)
from tiergate.accounting.budget import BudgetRefused
from tiergate.accounting.keys import KeyInfo
from tiergate.accounting.ratelimit import InProcessRateLimiter, RedisRateLimiter
from tiergate.accounting.service import Accounting, connect_redis
from tiergate.config import parse_config


async def _held_then_exhausted(budget) -> None:
    key = KeyInfo(id="key_r", prefix="tg-x", name="team-r", budget_usd=1.0)
    first = await budget.reserve(key, 0.6)
    with pytest.raises(BudgetRefused) as e:  # 0.6 fits the budget, not next to the 0.6 in flight
        await budget.reserve(key, 0.6)
    assert (e.value.status, e.value.code, e.value.type) == (429, "insufficient_quota", "insufficient_quota")
    assert not e.value.exhausted and e.value.headers == {"retry-after": "1"}
    assert "held by requests in flight" in e.value.message and "retry in a moment" in e.value.message
    await budget.settle(first, 0.5)
    with pytest.raises(BudgetRefused) as e:  # 0.5 spent: 0.6 can never fit in this period
        await budget.reserve(key, 0.6)
    assert e.value.exhausted and e.value.headers == {"x-should-retry": "false"}
    assert "retrying will not help" in e.value.message
    with pytest.raises(BudgetRefused) as e:  # spent and held together: still exhausted, not "wait"
        await budget.reserve(key, 0.51)
    assert e.value.exhausted
    await budget.settle(await budget.reserve(key, 0.5), 0.5)  # exactly the rest fits
    with pytest.raises(BudgetRefused) as e:
        await budget.reserve(key, 1e-9)
    assert e.value.exhausted


async def test_refusal_reason(budget_backend):
    async with budget_backend() as b:
        await _held_then_exhausted(b)


async def _refund(limiter) -> None:
    assert (await limiter.acquire("k", 1, 100, 80)).allowed
    assert not (await limiter.acquire("k", 1, 100, 80)).allowed
    await limiter.refund("k", 1, 100, 80)
    d = await limiter.acquire("k", 1, 100, 80)  # the slot and the tokens are back
    assert d.allowed and d.headers["x-ratelimit-remaining-requests"] == "0"
    await limiter.refund("k", 1, 100, 80)
    await limiter.refund("k", 1, 100, 80)  # more refunds than takes: capped at the limits
    assert (await limiter.acquire("k", 1, 100, 100)).allowed
    assert not (await limiter.acquire("k", 1, 100, 1)).allowed
    await limiter.refund("fresh", 5, None, 0)  # a key with no bucket yet: nothing to give back, no error
    assert (await limiter.acquire("fresh", 5, None, 0)).headers["x-ratelimit-remaining-requests"] == "4"


async def test_refund_in_process():
    await _refund(InProcessRateLimiter())


async def test_refund_redis(redis_prefix):
    r = connect_redis(REDIS_URL)
    try:
        await _refund(RedisRateLimiter(r, redis_prefix))
    finally:
        await r.aclose()


async def test_revoked_key_refusal_names_the_key_id(tmp_path):
    master = "sk-refusals-master-0123456789"
    cfg = parse_config({"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
                        "storage": f"sqlite:///{tmp_path / 'a.db'}"}, env={"TIERGATE_MASTER_KEY": master})
    acc = await Accounting.start(cfg, journal_dir=tmp_path / "j")
    try:
        info, secret = await acc.keys.create("gone")
        await acc.keys.revoke(info.id)
        await asyncio.sleep(acc.keys.ttl_s + 0.05)
        with pytest.raises(Exception) as e:
            await acc.authenticate(f"Bearer {secret}")
        assert e.value.status == 401 and e.value.code == "invalid_api_key"
        assert e.value.key_id == info.id and secret not in repr(vars(e.value))
    finally:
        await acc.close()
