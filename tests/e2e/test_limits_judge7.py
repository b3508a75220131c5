"""Budgets and rate limits against a real gateway on a loopback port, driven with the official openai SDK
(SQLite with counters in this process, or Redis):
- the prompt side of a reservation and of the TPM estimate counts tools/functions and a json_schema
  response format, not only the messages (a 20k-token tool schema let a $0.01 key spend $0.12);
- a fallback model the key may not use is never dispatched, and the reservation is priced at the dearest
  model of the chain the key may use (a key allowed only a cheap model was served, and billed, by o1);
- `model: auto` does not pick a candidate whose prompt + output limit exceeds the key's TPM limit, and a
  "Request too large" names the model;
- changing a key's `budget_period` while requests are in flight keeps their spend in the new period;
- a revoked key still shows its usage."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import httpx
import openai
import orjson
import pytest

from tests.helpers import running_gateway
from tests.unit.test_store_fixtures import (  # noqa: F401 (fixtures)
    REDIS_URL,
    fx_pg_available,
    fx_pg_url,
    fx_redis_available,
    fx_redis_prefix,
)

MASTER = "sk-limits-judge7-master-0123456789"
HI = [{"role": "user", "content": "hi"}]
HARD = ("Let n be a positive integer. Prove that the number of partitions of n into distinct parts equals the "
        "number of partitions of n into odd parts, then compute both for n = 30 and give a bijection.")


def _tools(words: int) -> list[dict]:
    desc = " ".join(["the quick brown fox jumps over the lazy dog"] * (words // 9))  # ~1 token a word
    return [{"type": "function", "function": {"name": "lookup", "description": desc,
                                              "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]


def _config(storage: str) -> dict:
    return {
        "models": [
            {"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]},
            {"name": "o3-mini", "deployments": [{"provider": "sim"}]},
            {"name": "o1", "deployments": [{"provider": "sim"}]},
            {"name": "slow", "catalog": "gpt-4o", "deployments": [{"provider": "sim", "options": {"latency_ms": 1500}}]},
            # priced as gpt-4o-mini, always fails: its fallback o1 answers (at o1's prices)
            {"name": "cheapfb", "catalog": "gpt-4o-mini", "retry": {"max_retries": 0}, "fallbacks": ["o1"],
             "deployments": [{"provider": "sim", "options": {"failure_rate": 1, "fail_status": 500}}]},
        ],
        "routing": {"candidates": ["gpt-4o-mini", "o3-mini@low", "o3-mini@high", "o1@high"]},
        "storage": storage,
    }


@pytest.fixture(params=["process", "redis"])
def gateway(request, tmp_path):
    db = tmp_path / "tg.db"
    cfg = _config(f"sqlite:///{db}")
    if request.param == "redis":
        cfg["redis"] = f"{REDIS_URL}?prefix={request.getfixturevalue('redis_prefix')}"
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
        admin = httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                             headers={"authorization": f"Bearer {MASTER}"}, timeout=10)

        def key(**fields) -> tuple[str, str]:
            r = admin.post("/keys", json=fields)
            assert r.status_code == 200, r.text
            return r.json()["id"], r.json()["key"]

        yield base, admin, key, db
        admin.close()


def _ledger(db, key_id: str, settle_s: float = 1.5) -> list[dict]:
    time.sleep(settle_s)  # rows are journaled at once and written to SQLite by the flusher
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT status, served_model, cost_usd, input_tokens, output_tokens "
                                             "FROM ledger WHERE key_id = ?", (key_id,))]
    finally:
        con.close()


async def _burst(base: str, secret: str, n: int, **kw) -> list:
    client = openai.AsyncOpenAI(base_url=base, api_key=secret, max_retries=0, timeout=60)

    async def one():
        try:
            return await client.chat.completions.with_raw_response.create(**kw)
        except openai.APIStatusError as e:
            return e

    try:
        return await asyncio.gather(*(one() for _ in range(n)))
    finally:
        await client.close()


def test_tools_are_part_of_the_budget_reservation(gateway):
    base, admin, key, db = gateway
    kid, secret = key(name="tools-budget", budget_usd=0.01, models=["gpt-4o-mini"])
    # ~20k prompt tokens at $0.15/M: ~$0.003 a request, so at most 3 fit the $0.01 budget
    out = asyncio.run(_burst(base, secret, 40, model="gpt-4o-mini", messages=HI, tools=_tools(20_000),
                             max_completion_tokens=16))
    ok = [r for r in out if not isinstance(r, openai.APIStatusError)]
    refused = [r for r in out if isinstance(r, openai.APIStatusError)]
    assert 1 <= len(ok) <= 3, len(ok)
    assert all(r.status_code == 429 and r.code == "insufficient_quota" for r in refused)
    rows = _ledger(db, kid)
    spent = sum(r["cost_usd"] for r in rows)
    assert spent <= 0.01 + 1e-9, spent  # before: $0.119 (every request reserved ~$0.00001 for "hi")
    usage = admin.get(f"/keys/{kid}").json()["usage"]
    assert usage["spent_usd"] <= 0.01 + 1e-9 and abs(usage["spent_usd"] - spent) < 1e-6


def test_tools_count_against_the_tpm_limit(gateway):
    base, _, key, _ = gateway
    _, secret = key(name="tools-tpm", tpm=30_000)
    out = asyncio.run(_burst(base, secret, 20, model="gpt-4o-mini", messages=HI, tools=_tools(10_000), max_tokens=16))
    ok = [r.parse() for r in out if not isinstance(r, openai.APIStatusError)]
    used = sum(c.usage.total_tokens for c in ok)
    assert 1 <= len(ok) <= 3 and used <= 30_000, (len(ok), used)  # before: all 20 (~200k tokens)
    refused = [r for r in out if isinstance(r, openai.APIStatusError)]
    assert refused and all(r.status_code == 429 and r.code == "rate_limit_exceeded" for r in refused)


def test_fallback_the_key_may_not_use_is_never_dispatched(gateway):
    base, admin, key, db = gateway
    kid, secret = key(name="fb-allow", budget_usd=0.01, models=["cheapfb"])
    client = openai.OpenAI(base_url=base, api_key=secret, max_retries=0, timeout=30)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="cheapfb", messages=HI)
    assert e.value.status_code == 500  # cheapfb's own failure; o1 was not tried
    assert e.value.response.headers.get("x-tiergate-model") == "cheapfb"
    rows = _ledger(db, kid)
    assert not [r for r in rows if r["served_model"] == "o1"], rows  # before: 200 from o1, $0.2 on a $0.01 key
    assert admin.get(f"/keys/{kid}").json()["usage"]["spent_usd"] <= 0.01


def test_reservation_is_priced_at_the_dearest_fallback(gateway):
    base, admin, key, db = gateway
    # no allow-list: cheapfb's fallback o1 may serve it, so the request reserves what o1 can cost (its
    # default 4,096 output tokens at $60/M: ~$0.25), not what gpt-4o-mini would (~$0.0025)
    kid, secret = key(name="fb-small", budget_usd=0.05)
    client = openai.OpenAI(base_url=base, api_key=secret, max_retries=0, timeout=30)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="cheapfb", messages=HI)
    assert e.value.code == "insufficient_quota" and e.value.response.headers.get("x-should-retry") == "false"
    assert not [r for r in _ledger(db, kid, 0.5) if r["served_model"] == "o1"]
    # a budget for a few of them: a burst settles within it (before: ~$0.2 each at a ~$0.0025 hold)
    kid, secret = key(name="fb-burst", budget_usd=0.6)
    out = asyncio.run(_burst(base, secret, 10, model="cheapfb", messages=HI))
    ok = [r for r in out if not isinstance(r, openai.APIStatusError)]
    assert ok and all(r.headers["x-tiergate-fallback"] == "cheapfb->o1" for r in ok)
    spent = sum(r["cost_usd"] for r in _ledger(db, kid))
    assert 0 < spent <= 0.6 + 1e-9, spent
    assert admin.get(f"/keys/{kid}").json()["usage"]["spent_usd"] <= 0.6 + 1e-9


def test_auto_skips_candidates_over_the_keys_tpm(gateway):
    base, _, key, db = gateway
    _, secret = key(name="tpm-auto", tpm=10_000)
    client = openai.OpenAI(base_url=base, api_key=secret, max_retries=0, timeout=30)
    # o3-mini / o1 count their 16,384-token default output limit: over 10,000, so they cannot be used
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": HARD}])
    assert raw.headers["x-tiergate-model"] == "gpt-4o-mini"  # before: routed to o3-mini, 429 "Request too large"
    time.sleep(1.5)
    con = sqlite3.connect(db)
    (route,) = con.execute("SELECT route FROM ledger WHERE request_id = ?", (raw.headers["x-request-id"],)).fetchone()
    con.close()
    why = {c["candidate"]: c["why_not"] for c in orjson.loads(route)["candidates"]}
    assert "10000 tokens per minute" in why["o3-mini@high"] and why["gpt-4o-mini"] is None
    # an explicit model that cannot fit says which model it counted
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="o3-mini", messages=HI)
    assert "Request too large" in e.value.message and "model 'o3-mini'" in e.value.message
    assert e.value.response.headers.get("x-should-retry") == "false"


def _period_change_in_flight(base: str, admin: httpx.Client, key) -> None:
    kid, secret = key(name="period", budget_usd=0.012)
    client = openai.OpenAI(base_url=base, api_key=secret, max_retries=0, timeout=30)
    costs: list[float] = []

    def one() -> None:
        r = client.chat.completions.with_raw_response.create(model="slow", messages=HI, max_tokens=100)
        costs.append(float(r.headers["x-tiergate-cost-usd"]))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.time() + 5
    while admin.get(f"/keys/{kid}").json()["usage"]["reserved_usd"] < 0.007:  # all 8 hold their worst case
        assert time.time() < deadline
        time.sleep(0.02)
    r = admin.patch(f"/keys/{kid}", json={"budget_period": "monthly"})
    assert r.status_code == 200 and r.json()["usage"]["spent_usd"] == 0  # the month's counter, seeded now
    time.sleep(0.6)  # key lookups are cached for up to 0.5 s
    quick = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI, max_tokens=10)
    costs.append(float(quick.headers["x-tiergate-cost-usd"]))  # reserved (and settled) in the new period
    for t in threads:
        t.join(10)
    assert len(costs) == 9 and sum(costs) > 0.004
    time.sleep(0.2)
    usage = admin.get(f"/keys/{kid}").json()["usage"]
    # before: the 8 settled into the old period's counter: the new month showed $0 spent
    assert abs(usage["spent_usd"] - sum(costs)) < 1e-6, (usage, sum(costs))
    spend = admin.get("/spend", params={"key_id": kid}).json()["total_usd"]
    assert abs(spend - usage["spent_usd"]) < 1e-6


def test_budget_period_change_while_requests_are_in_flight(gateway):
    base, admin, key, _ = gateway
    _period_change_in_flight(base, admin, key)


def test_budget_period_change_in_flight_postgresql(pg_url):
    """The same with budgets in PostgreSQL (no Redis)."""
    with running_gateway(_config(pg_url), env={"TIERGATE_MASTER_KEY": MASTER}) as base, \
            httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                         headers={"authorization": f"Bearer {MASTER}"}, timeout=10) as admin:

        def key(**fields) -> tuple[str, str]:
            r = admin.post("/keys", json=fields)
            assert r.status_code == 200, r.text
            return r.json()["id"], r.json()["key"]

        _period_change_in_flight(base, admin, key)


def test_revoked_key_shows_its_usage(gateway):
    base, admin, key, _ = gateway
    kid, secret = key(name="gone", budget_usd=1.0)
    openai.OpenAI(base_url=base, api_key=secret, max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=HI, max_tokens=20)
    assert admin.delete(f"/keys/{kid}").status_code == 200
    got = admin.get(f"/keys/{kid}").json()
    assert got["revoked_at"] is not None
    assert got["usage"] is not None and got["usage"]["spent_usd"] > 0  # before: null


def test_context_window_fallback_the_key_may_not_use_is_skipped(tmp_path):
    """An upstream 400 `context_length_exceeded` leads to the model's `context_window_fallback`; a key that
    may not use it gets that upstream error (before: the fallback answered, at its own prices)."""
    from tests.fakes.openai_upstream import FakeOpenAI

    with FakeOpenAI() as up:
        cfg = {"models": [
            {"name": "small", "catalog": "gpt-4o-mini", "context_window_fallback": "big", "retry": {"max_retries": 0},
             "deployments": [{"provider": "openai_compatible", "api_base": up.url}]},
            {"name": "big", "catalog": "gpt-4o", "deployments": [{"provider": "sim"}]}],
            "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
        with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
            admin = httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                                 headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
            too_long = {"error": {"message": "This model's maximum context length is 128000 tokens.",
                                  "type": "invalid_request_error", "param": "messages",
                                  "code": "context_length_exceeded"}}
            for models, served in ((["small"], None), (None, "big")):
                secret = admin.post("/keys", json={"name": "cw", "models": models}).json()["key"]
                client = openai.OpenAI(base_url=base, api_key=secret, max_retries=0, timeout=20)
                up.fail_next("status", status=400, body=too_long)
                if served is None:
                    with pytest.raises(openai.BadRequestError) as e:
                        client.chat.completions.create(model="small", messages=HI)
                    assert e.value.code == "context_length_exceeded", e.value.message
                else:  # a key that may use it is served by it
                    r = client.chat.completions.with_raw_response.create(model="small", messages=HI)
                    assert r.headers["x-tiergate-fallback"] == "small->big"
            admin.close()
