"""Budgets in PostgreSQL without Redis (`StoreBudget`): a burst of first reservations of a key (a new key,
or the first use of a new daily/monthly period) on a cold pool. Each one seeds the key's counter from
the ledger (a flush and a query, each taking a pool connection); waiting for that seed while holding a
connection let a burst of at least `max_size` requests hold every connection and wait for a free one
forever (the replica answered nothing more, /admin included). Real PostgreSQL, a private schema.

And on every backend: a reservation settled after its key's period changed (an admin edit of
`budget_period`, or a UTC midnight) counts in the period that is current when it settles."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from tests.unit.test_store_fixtures import (  # noqa: F401 (fixtures)
    fx_budget_backend,
    fx_pg_available,
    fx_pg_url,
    fx_redis_available,
    fx_redis_prefix,
)
from tiergate.accounting import budget as budget_mod
from tiergate.accounting.budget import StoreBudget, period_of
from tiergate.accounting.keys import KeyInfo
from tiergate.accounting.service import Accounting
from tiergate.config import parse_config
from tiergate.store.postgres import PostgresStore
from tiergate.wire.errors import GatewayError

BOUND_S = 20.0  # a deadlock fails the test here instead of hanging it


async def _burst(reserve, n: int) -> tuple[int, int]:
    async def one() -> bool:
        try:
            return await reserve() is not None
        except GatewayError:
            return False

    got = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), BOUND_S)
    return sum(got), n - sum(got)


async def test_first_reservations_on_a_small_pool_do_not_deadlock(pg_url):
    store = await PostgresStore.open(pg_url, min_size=1, max_size=3)
    try:
        async def seed(key_id: str, since: float) -> float:  # as the service's: it needs a connection of its own
            r = await store.fetchone("SELECT COALESCE(SUM(cost_usd), 0) AS s FROM ledger WHERE key_id = ? AND ts >= ?",
                                     key_id, since)
            return float(r["s"])

        budget = StoreBudget(store, seed)
        for period in ("none", "daily", "monthly"):
            key = KeyInfo(id=f"key_burst_{period}", prefix="tg-x", name="burst", budget_usd=1.0, budget_period=period)
            t0 = time.perf_counter()
            ok, refused = await _burst(lambda key=key: budget.reserve(key, 0.01), 24)
            assert (ok, refused) == (24, 0), (period, ok, refused)
            assert time.perf_counter() - t0 < BOUND_S
            spent, reserved = await budget.usage(key)
            assert spent == 0 and abs(reserved - 0.24) < 1e-9
            rows = await store.fetch("SELECT period FROM budget_usage WHERE key_id = ?", key.id)
            assert [r["period"] for r in rows] == [period_of(period)[0]]  # seeded once, one counter row
    finally:
        await asyncio.wait_for(store.close(), 10)


async def test_burst_of_first_requests_through_the_accounting_service(pg_url, tmp_path):
    """The same through `Accounting` as the gateway builds it (PostgreSQL, no Redis; the store's own pool
    of 10): 30 concurrent first admissions of a new budgeted key, after spend already in the ledger."""
    config = parse_config({"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
                           "storage": pg_url}, source="<test>",
                          env={"TIERGATE_MASTER_KEY": "sk-pool-judge7-master-0123456789"})
    acc = await Accounting.start(config, journal_dir=tmp_path / "journal")
    try:
        assert isinstance(acc.budget, StoreBudget)
        info, _ = await acc.keys.create("burst", budget_usd=0.05, budget_period="monthly")
        acc.record({"request_id": "req_before", "ts": time.time(), "key_id": info.id, "kind": "chat",
                    "requested_model": "gpt-4o-mini", "served_model": "gpt-4o-mini", "cost_usd": 0.01,
                    "status": "ok"})
        ok, refused = await _burst(lambda: acc.admit(info, "gpt-4o-mini", 10, 0.001, 20), 30)
        assert (ok, refused) == (30, 0)
        # and a burst that does not fit is refused, not hung: $0.01 seeded + $0.03 held leaves $0.01
        ok, refused = await _burst(lambda: acc.admit(info, "gpt-4o-mini", 10, 0.001, 20), 30)
        assert (ok, refused) == (10, 20)
        spent, reserved = await asyncio.wait_for(acc.budget.usage(info), BOUND_S)
        assert abs(spent - 0.01) < 1e-9 and abs(reserved - 0.04) < 1e-9
    finally:
        await asyncio.wait_for(acc.close(), 10)


@pytest.fixture
def clock(monkeypatch):
    """The budget module's wall clock, set by the test (`clock.t = ...`)."""
    c = SimpleNamespace(t=time.time())
    monkeypatch.setattr(budget_mod, "time", SimpleNamespace(time=lambda: c.t))
    return c


def _key(period: str, kid: str = "key_period") -> KeyInfo:
    return KeyInfo(id=kid, prefix="tg-x", name="period", budget_usd=1.0, budget_period=period)


async def test_settled_after_a_period_change_counts_in_the_new_period(budget_backend, clock):
    async with budget_backend() as b:
        old = await b.reserve(_key("none"), 0.3)
        # an admin switches the key to monthly while the request is in flight; the month's counter is
        # seeded (from a ledger that has no row of the request yet) by the next reservation or usage view
        r2 = await b.reserve(_key("monthly"), 0.1)
        assert await b.usage(_key("monthly")) == pytest.approx((0.0, 0.1))
        await b.settle(old, 0.25)
        await b.settle(r2, 0.05)
        assert await b.usage(_key("monthly")) == pytest.approx((0.30, 0.0))  # before: 0.05
        assert await b.usage(_key("none")) == pytest.approx((0.30, 0.0))  # the old counter kept counting too


async def test_settled_after_midnight_counts_in_the_new_day(budget_backend, clock):
    day = datetime(2031, 3, 31, tzinfo=UTC).timestamp()  # the last day of a month
    clock.t = day + 86400 - 0.5
    async with budget_backend() as b:
        late = await b.reserve(_key("daily"), 0.4)
        late_m = await b.reserve(_key("monthly", "key_m"), 0.4)
        clock.t = day + 86400 + 0.5
        for k in (_key("daily"), _key("monthly", "key_m")):  # a new day, a new month: counters seeded
            await b.settle(await b.reserve(k, 0.01), 0.0)
            assert await b.usage(k) == pytest.approx((0.0, 0.0))
        await b.settle(late, 0.35)
        await b.settle(late_m, 0.2)
        assert await b.usage(_key("daily")) == pytest.approx((0.35, 0.0))  # before: 0.0
        assert await b.usage(_key("monthly", "key_m")) == pytest.approx((0.2, 0.0))
        # a counter that does not exist yet is not created by a settlement (the ledger seeds it)
        clock.t = day + 2 * 86400 + 10
        r = await b.reserve(_key("daily"), 0.1)
        clock.t = day + 3 * 86400 + 10
        await b.settle(r, 0.1)
        assert await b.usage(_key("daily")) == pytest.approx((0.0, 0.0))  # seeded: nothing in the (empty) ledger
