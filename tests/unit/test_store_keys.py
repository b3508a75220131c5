"""Virtual keys and the Accounting facade: keys are stored hashed and shown once, revocation is seen
within the auth cache's lifetime, admission enforces models, rate limits and budgets."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.test_store_fixtures import (  # noqa: F401 (fixtures)
    REDIS_URL,
    fx_pg_available,
    fx_pg_url,
    fx_redis_available,
    fx_redis_prefix,
    fx_store_url,
)
from tiergate.accounting.service import Accounting
from tiergate.config import parse_config
from tiergate.wire.errors import GatewayError

MASTER = "sk-master-test-123456"


def _config(storage: str, redis: str | None = None, master: str | None = MASTER):
    raw = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]},
                      {"name": "o3-mini", "deployments": [{"provider": "sim"}]}], "storage": storage}
    if redis:
        raw["redis"] = redis
    return parse_config(raw, env={"TIERGATE_MASTER_KEY": master} if master else {})


async def test_keys_hashed_shown_once_and_revocable(store_url, tmp_path):
    acc = await Accounting.start(_config(store_url), journal_dir=tmp_path / "j")
    try:
        info, secret = await acc.keys.create("team-a", budget_usd=5, rpm=100, models=["gpt-4o-mini"],
                                             metadata={"team": "a"}, cache=True)
        assert secret.startswith("tg-") and len(secret) > 40 and secret.startswith(info.prefix)
        rows = await acc.store.fetch("SELECT * FROM api_keys")
        assert secret not in repr(rows) and rows[0]["key_hash"] != secret
        got = await acc.authenticate(f"Bearer {secret}")
        assert got.id == info.id and got.cache_enabled and got.models == ("gpt-4o-mini",) and got.budget_usd == 5
        assert secret not in repr(got.public()) and got.public()["prefix"] == info.prefix
        assert (await acc.authenticate(f"Bearer {MASTER}")).is_master
        for bad in (None, "Basic abc", "Bearer tg-nope-nope-nope-nope", "Bearer "):
            with pytest.raises(GatewayError) as e:
                await acc.authenticate(bad)
            assert e.value.status == 401 and e.value.code == "invalid_api_key"
            assert "nope-nope-nope" not in e.value.message
        updated = await acc.keys.update(info.id, rpm=5, models=None)
        assert updated.rpm == 5 and updated.models is None
        assert await acc.keys.update("key_missing", rpm=5) is None
        with pytest.raises(GatewayError) as e:
            await acc.keys.update(info.id, budget_period="weekly")
        assert e.value.param == "budget_period"
        await acc.keys.revoke(info.id)
        await asyncio.sleep(acc.keys.ttl_s + 0.05)  # the auth cache forgets within ttl_s (< 1 s)
        with pytest.raises(GatewayError) as e:
            await acc.authenticate(f"Bearer {secret}")
        assert "revoked" in e.value.message
        assert [k.id for k in await acc.keys.list(include_revoked=False)] == []
    finally:
        await acc.close()


async def test_open_gateway_needs_no_key(tmp_path):
    acc = await Accounting.start(_config(f"sqlite:///{tmp_path / 'a.db'}", master=None), journal_dir=tmp_path / "j")
    try:
        assert acc.is_open and await acc.authenticate(None) is None
        adm = await acc.admit(None, "o3-mini", 10, 1.0, 100)
        await acc.settle(adm, 0.5, 50)
    finally:
        await acc.close()


async def _admission(acc: Accounting) -> None:
    _, secret = await acc.keys.create("small", budget_usd=1.0, rpm=3, tpm=10_000, models=["gpt-4o-mini"])
    key = await acc.authenticate(f"Bearer {secret}")
    with pytest.raises(GatewayError) as e:
        await acc.admit(key, "o3-mini", 10, 0.1, 100)
    assert e.value.status == 403 and e.value.code == "model_not_allowed"
    a1 = await acc.admit(key, "gpt-4o-mini", 10, 0.8, 1000)
    assert a1.headers["x-ratelimit-limit-requests"] == "3"
    with pytest.raises(GatewayError) as e:  # 0.8 held, 0.3 more does not fit
        await acc.admit(key, "gpt-4o-mini", 10, 0.3, 1000)
    assert e.value.status == 429 and e.value.code == "insufficient_quota"
    await acc.settle(a1, 0.05, 300)
    await acc.settle(a1, 0.05, 300)  # settling twice is a no-op
    a2 = await acc.admit(key, "gpt-4o-mini", 10, 0.3, 1000)
    await acc.settle(a2, 0.1, 200)
    # the request refused for budget took no RPM slot: a 3rd is admitted, the 4th is over 3 rpm
    await acc.settle(await acc.admit(key, "gpt-4o-mini", 10, 0.01, 10), 0.0, 10)
    with pytest.raises(GatewayError) as e:  # 4th admitted request within the minute (3 rpm)
        await acc.admit(key, "gpt-4o-mini", 10, 0.01, 10)
    assert e.value.code == "rate_limit_exceeded" and "retry-after" in e.value.headers
    with pytest.raises(GatewayError) as e:
        await acc.admit(key, "gpt-4o-mini", 10, 0.01, 20_000)
    assert "Request too large" in e.value.message
    assert e.value.headers["x-should-retry"] == "false"  # it can never fit: the SDKs must not retry it
    assert "retry-after" not in e.value.headers and e.value.headers["x-should-retry"] != "true"
    assert (await acc.key_usage(key))["spent_usd"] == pytest.approx(0.15)
    master = await acc.authenticate(f"Bearer {MASTER}")
    assert (await acc.admit(master, "o3-mini", 10, 1e6, 10)).reservation is None


async def test_admission_sqlite(tmp_path):
    acc = await Accounting.start(_config(f"sqlite:///{tmp_path / 'a.db'}"), journal_dir=tmp_path / "j")
    try:
        await _admission(acc)
    finally:
        await acc.close()


async def test_admission_postgres_and_redis(pg_url, redis_prefix, tmp_path):
    acc = await Accounting.start(_config(pg_url, f"{REDIS_URL}?prefix={redis_prefix}"), journal_dir=tmp_path / "j")
    try:
        assert acc.redis is not None and type(acc.budget).__name__ == "RedisBudget"
        await _admission(acc)
    finally:
        await acc.close()


async def test_budget_spend_survives_restart(tmp_path):
    """In-process budgets are seeded from the ledger, so a restart does not forget money spent."""
    cfg = _config(f"sqlite:///{tmp_path / 'a.db'}")
    acc = await Accounting.start(cfg, journal_dir=tmp_path / "j")
    _, secret = await acc.keys.create("k", budget_usd=1.0)
    key = await acc.authenticate(f"Bearer {secret}")
    adm = await acc.admit(key, "gpt-4o-mini", 1, 0.9, 10)
    acc.record({"request_id": "r1", "key_id": key.id, "cost_usd": 0.9})
    await acc.settle(adm, 0.9, 10)
    await acc.close()
    acc = await Accounting.start(cfg, journal_dir=tmp_path / "j")
    try:
        with pytest.raises(GatewayError):
            await acc.admit(key, "gpt-4o-mini", 1, 0.2, 10)
        report = await acc.spend("key")
        assert report == [{"key": key.id, "requests": 1, "cost_usd": 0.9, "input_tokens": 0, "cached_tokens": 0,
                           "output_tokens": 0, "reasoning_tokens": 0}]
    finally:
        await acc.close()
