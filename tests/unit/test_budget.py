"""Budgets with reservations, on every backend: a burst of concurrent requests never settles above the
budget, holds expire, periods reset, spend is seeded from the ledger."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.unit.test_store_fixtures import (  # noqa: F401 (fixtures)
    REDIS_URL,
    fx_budget_backend,
    fx_pg_available,
    fx_pg_url,
    fx_redis_available,
    fx_redis_prefix,
)
from tiergate.accounting.budget import NANO, InProcessBudget, RedisBudget, StoreBudget, period_of, to_nano
from tiergate.accounting.keys import KeyInfo
from tiergate.accounting.service import connect_redis
from tiergate.store import open_store
from tiergate.wire.errors import GatewayError


async def _zero(key_id: str, since: float) -> float:
    return 0.0


def _key(budget: float | None, period: str = "none", kid: str = "key_a") -> KeyInfo:
    return KeyInfo(id=kid, prefix="tg-x", name="team-a", budget_usd=budget, budget_period=period)


async def _burst(budget_obj, n: int = 200, covers: int = 50) -> tuple[int, float]:
    """n concurrent requests, each reserving its worst case m, against a budget of covers*m; each
    settles to a random real cost <= m after a random delay. Returns (admitted, settled USD)."""
    m = 0.0123
    key = _key(covers * m)
    rnd = random.Random(7)
    plan = [(rnd.uniform(0.3, 1.0) * m, rnd.uniform(0, 0.02)) for _ in range(n)]
    settled = []

    async def one(cost: float, delay: float) -> bool:
        try:
            res = await budget_obj.reserve(key, m)
        except GatewayError as e:
            assert e.status == 429 and e.code == "insufficient_quota" and e.type == "insufficient_quota"
            return False
        await asyncio.sleep(delay)
        await budget_obj.settle(res, cost)
        settled.append(cost)
        return True

    admitted = sum(await asyncio.gather(*(one(c, d) for c, d in plan)))
    spent, reserved = await budget_obj.usage(key)
    assert reserved == 0
    assert abs(spent - sum(settled)) < 1e-6  # the counter is exactly the sum of what settled
    assert spent <= key.budget_usd + 1e-9
    assert admitted >= covers  # real costs below the worst case let more than `covers` through
    return admitted, spent


async def test_burst_never_overspends(budget_backend):
    async with budget_backend() as b:
        await _burst(b)


async def _contract(b) -> None:
    """Behaviour every backend shares."""
    key = _key(1.0)
    assert await b.reserve(_key(None), 5.0) is None  # no budget: nothing held
    r1 = await b.reserve(key, 0.6)
    with pytest.raises(GatewayError) as e:
        await b.reserve(key, 0.5)
    assert "has $0.400000 left" in e.value.message and "insufficient" not in e.value.message.lower()
    await b.settle(r1, 0.1)  # the hold shrinks to the real cost
    r2 = await b.reserve(key, 0.9)
    await b.settle(r2, 0.9)
    assert await b.usage(key) == pytest.approx((1.0, 0.0))
    with pytest.raises(GatewayError):
        await b.reserve(key, 1e-6)
    other = _key(1.0, kid="key_b")  # keys are independent
    await b.settle(await b.reserve(other, 1.0), 0.25)
    assert (await b.usage(other))[0] == pytest.approx(0.25)


async def test_contract(budget_backend):
    async with budget_backend() as b:
        await _contract(b)


async def test_expired_holds_are_released(redis_prefix, pg_url):
    r = connect_redis(REDIS_URL)
    store = await open_store(pg_url)
    try:
        for b in (InProcessBudget(_zero, reservation_ttl_s=0.2), RedisBudget(r, redis_prefix, _zero,
                  reservation_ttl_s=0.2), StoreBudget(store, _zero, reservation_ttl_s=0.2)):
            key = _key(1.0, kid=f"key_{type(b).__name__}")
            await b.reserve(key, 1.0)  # a replica dies holding this
            with pytest.raises(GatewayError):
                await b.reserve(key, 0.5)
            await asyncio.sleep(0.3)
            assert await b.reserve(key, 0.5) is not None, type(b).__name__
    finally:
        await r.aclose()
        await store.close()


async def test_renew_keeps_a_hold_past_its_ttl(redis_prefix, pg_url):
    """A forwarded batch waits hours for its upstream: `renew` extends its lines' holds atomically (it used
    to give each back and take it again, which let other requests take the room in between)."""
    r = connect_redis(REDIS_URL)
    store = await open_store(pg_url)
    try:
        for b in (InProcessBudget(_zero, reservation_ttl_s=0.4), RedisBudget(r, redis_prefix, _zero,
                  reservation_ttl_s=0.4), StoreBudget(store, _zero, reservation_ttl_s=0.4)):
            name = type(b).__name__
            key = _key(1.0, kid=f"key_renew_{name}")
            held = await b.reserve(key, 0.8)
            for _ in range(3):  # 0.75 s in all, past the 0.4 s TTL: still held
                await asyncio.sleep(0.25)
                assert await b.renew(held), name
            with pytest.raises(GatewayError):
                await b.reserve(key, 0.5)
            assert (await b.usage(key))[1] == pytest.approx(0.8), name
            await b.settle(held, 0.1)
            assert not await b.renew(held), name  # a settled hold is gone
            lapsed = await b.reserve(key, 0.2)
            await asyncio.sleep(0.5)
            assert not await b.renew(lapsed), name  # an expired one cannot come back
    finally:
        await r.aclose()
        await store.close()


async def test_seeded_from_ledger_and_periods():
    calls = []

    async def seed(key_id: str, since: float) -> float:
        calls.append(since)
        return 0.75

    b = InProcessBudget(seed)
    key = _key(1.0, "monthly")
    with pytest.raises(GatewayError) as e:
        await b.reserve(key, 0.3)
    assert "for this month" in e.value.message
    assert calls == [period_of("monthly")[1]]
    assert await b.reserve(key, 0.25) is not None
    assert len(calls) == 1  # seeded once per key and period


def test_period_boundaries():
    t = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    assert period_of("daily", t)[:2] == ("d2023-11-14", 1699920000.0)
    pid, start, end = period_of("monthly", t)
    assert pid == "m2023-11" and start == 1698796800.0 and end == 1701388800.0
    assert period_of("monthly", 1703980800.0 + 5)[0] == "m2023-12" and period_of("none", t)[0] == "all"
    assert to_nano(0.1) + to_nano(0.2) == to_nano(0.3) == 3 * NANO // 10
