"""Budgets in PostgreSQL without Redis (`StoreBudget`): a burst of first reservations of a key (a new key,
or the first use of a new daily/monthly period) on a cold pool. Each one seeds the key's counter from
the ledger (a flush and a query, each taking a pool connection); waiting for that seed while holding a
connection let a burst of at least `max_size` requests hold every connection and wait for a free one
forever (the replica answered nothing more, /admin included). Real PostgreSQL, a private schema."""

from __future__ import annotations

import asyncio
import time

from tests.unit.test_store_fixtures import fx_pg_available, fx_pg_url  # noqa: F401 (fixtures)
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
