"""Budget counters lost (Redis restarted or flushed): the admin view of a key's spend is the ledger's,
not $0 until the next request re-seeds the counter; a request in flight across the loss does not
re-create the counter holding only its own cost (which would forget everything spent before it)."""

from __future__ import annotations

import time

import pytest

from tests.unit.test_store_fixtures import (  # noqa: F401 (fixtures)
    REDIS_URL,
    fx_pg_available,
    fx_pg_url,
    fx_redis_available,
    fx_redis_prefix,
)
from tiergate.accounting.budget import BudgetRefused, RedisBudget, period_of
from tiergate.accounting.service import Accounting, connect_redis
from tiergate.config import parse_config


def _row(key_id: str, cost: float, n: int) -> dict:
    return {"request_id": f"req-lost-{key_id}-{n}", "ts": time.time(), "key_id": key_id, "kind": "chat",
            "requested_model": "gpt-4o-mini", "served_model": "gpt-4o-mini", "status": "ok", "cost_usd": cost}


async def _accounting(storage: str, redis_url: str, tmp_path) -> Accounting:
    cfg = parse_config({"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
                        "storage": storage, "redis": redis_url}, env={"TIERGATE_MASTER_KEY": "sk-lost-0123456789"})
    return await Accounting.start(cfg, journal_dir=tmp_path / "journal")


@pytest.mark.parametrize("period", ["none", "monthly"])
async def test_admin_spend_after_the_counter_is_lost(tmp_path, redis_prefix, period):
    acc = await _accounting(f"sqlite:///{tmp_path / 'tg.db'}", f"{REDIS_URL}?prefix={redis_prefix}", tmp_path)
    try:
        key, _ = await acc.keys.create("team", budget_usd=10.0, budget_period=period)
        for n, cost in enumerate((0.25, 0.5)):  # two requests: reserved, settled, recorded
            adm = await acc.admit(key, "gpt-4o-mini", 10, 1.0, 100)
            await acc.settle(adm, cost, 100)
            acc.record(_row(key.id, cost, n))
        assert (await acc.key_usage(key))["spent_usd"] == pytest.approx(0.75)
        counter = f"{redis_prefix}budget:{{{key.id}:{period_of(period)[0]}}}"
        assert await acc.redis.delete(counter) == 1  # Redis lost the counter
        usage = await acc.key_usage(key)
        assert usage["spent_usd"] == pytest.approx(0.75)  # was 0.0 until the next request
        assert usage["remaining_usd"] == pytest.approx(9.25)
        assert await acc.redis.exists(counter) == 1  # re-seeded, as a request would have
        ttl = await acc.redis.ttl(counter)
        assert (ttl == -1) if period == "none" else (ttl > 0)
    finally:
        await acc.close()


async def test_a_settle_across_the_loss_does_not_forget_earlier_spend(redis_prefix):
    ledger = {"spent": 5.0}

    async def seed(key_id: str, since: float) -> float:
        return ledger["spent"]

    class Key:
        id, name, budget_usd, budget_period = "key_lost", "team", 6.0, "none"

    r = connect_redis(REDIS_URL)
    try:
        b = RedisBudget(r, redis_prefix, seed)
        res = await b.reserve(Key, 0.5)  # counter seeded at $5
        await r.delete(f"{redis_prefix}budget:{{key_lost:all}}")  # lost while the request is in flight
        await b.settle(res, 0.5)
        ledger["spent"] = 5.5  # the request's ledger row
        assert await b.usage(Key) == pytest.approx((5.5, 0.0))
        with pytest.raises(BudgetRefused):
            await b.reserve(Key, 1.0)  # $5.5 + $1 > $6 (was let in: the counter held $0.5 alone)
    finally:
        await r.aclose()


async def test_postgresql_counters_without_a_row_show_the_ledger(tmp_path, pg_url):
    acc = await Accounting.start(parse_config(
        {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}], "storage": pg_url},
        env={"TIERGATE_MASTER_KEY": "sk-lost-0123456789"}), journal_dir=tmp_path / "journal")
    try:
        key, _ = await acc.keys.create("team", budget_usd=10.0)
        acc.record(_row(key.id, 1.25, 0))  # spent through another path (e.g. before budgets moved here)
        await acc.ledger.flush()
        assert (await acc.key_usage(key))["spent_usd"] == pytest.approx(1.25)  # no budget_usage row yet
    finally:
        await acc.close()
