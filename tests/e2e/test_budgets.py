"""Budget refusals against a real gateway on a loopback port, driven with the official openai SDK:
a spent budget says `x-should-retry: false` (so the SDK does not retry it), a refusal caused only by
holds of requests in flight says `Retry-After`, and a refused request takes no RPM/TPM slot — in one
process and with the limiter and budgets in Redis."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.helpers import running_gateway
from tests.unit.test_store_fixtures import REDIS_URL, fx_redis_available, fx_redis_prefix  # noqa: F401

MASTER = "sk-budgets-e2e-master-0123456789"
MSG = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(params=["process", "redis"])
def gateway(request, tmp_path):
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]},
                      {"name": "claude-3-7-sonnet", "deployments": [{"provider": "sim"}]},
                      {"name": "slow", "catalog": "gpt-4o-mini",
                       "deployments": [{"provider": "sim", "options": {"latency_ms": 1500}}]}],
           "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
    if request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        cfg["redis"] = f"{REDIS_URL}?prefix={prefix}"
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
        admin = httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                             headers={"authorization": f"Bearer {MASTER}"}, timeout=10)

        def key(**fields) -> tuple[str, str]:
            r = admin.post("/keys", json=fields)
            assert r.status_code == 200, r.text
            return r.json()["id"], r.json()["key"]

        yield base, admin, key
        admin.close()


def _by_status(admin: httpx.Client, key_id: str) -> dict[str, int]:
    rows = admin.get("/spend", params={"group_by": "status", "key_id": key_id}).json()["data"]
    return {r["status"]: r["requests"] for r in rows}


def test_spent_budget_is_final(gateway):
    base, admin, key = gateway
    kid, secret = key(name="broke", budget_usd=0)
    sdk = openai.OpenAI(base_url=base, api_key=secret, max_retries=2, timeout=10)
    t0 = time.perf_counter()
    with pytest.raises(openai.RateLimitError) as e:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=50)
    took = time.perf_counter() - t0
    assert e.value.code == "insufficient_quota" and e.value.type == "insufficient_quota"
    assert e.value.response.headers.get("x-should-retry") == "false"
    assert "retry-after" not in e.value.response.headers
    assert _by_status(admin, kid) == {"rejected": 1}  # the SDK sent it once: no retries on a spent budget
    assert took < 1.0, took  # before: ~1.3 s of SDK back-off on a key that can never pass
    assert "retrying will not help" in e.value.message


def test_budget_refusal_takes_no_rate_limit_slot(gateway):
    base, admin, key = gateway
    kid, secret = key(name="broke-limited", budget_usd=0, rpm=1, tpm=100_000)
    once = openai.OpenAI(base_url=base, api_key=secret, max_retries=0, timeout=10)
    # Nothing is admitted, so the key's single request per minute stays unused: every call is refused for
    # budget, not for rate limit (before: the 2nd and 3rd got 429 rate_limit_exceeded with Retry-After 60).
    for _ in range(3):
        with pytest.raises(openai.RateLimitError) as e:
            once.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=50)
        assert e.value.code == "insufficient_quota", e.value.message
    # and once the budget is raised, the slot is there to use (then spent: the limit still applies)
    assert admin.patch(f"/keys/{kid}", json={"budget_usd": 1.0}).status_code == 200
    time.sleep(1.1)  # key lookups are cached for up to 0.5 s per replica
    r = once.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, max_tokens=50)
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as e:
        once.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=50)
    assert e.value.code == "rate_limit_exceeded"


def test_refusal_for_holds_in_flight_says_retry_after(gateway):
    base, admin, key = gateway
    # gpt-4o-mini reserves ~$0.0098 at max_tokens 16384 (the sim spends ~70% of it) and ~$0.0012 at 2000:
    # the budget fits both, but not both at once
    kid, secret = key(name="tight", budget_usd=0.0105)
    sdk = openai.OpenAI(base_url=base, api_key=secret, max_retries=0, timeout=10)
    first: dict = {}

    def slow() -> None:
        first["out"] = sdk.chat.completions.create(model="slow", messages=MSG, max_tokens=16384)

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.time() + 5
    while admin.get(f"/keys/{kid}").json()["usage"]["reserved_usd"] == 0:  # the slow request holds its worst case
        assert time.time() < deadline
        time.sleep(0.02)
    with pytest.raises(openai.RateLimitError) as e:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=2000)
    assert e.value.code == "insufficient_quota"
    assert e.value.response.headers.get("retry-after") == "1"
    assert "x-should-retry" not in e.value.response.headers
    assert "held by requests in flight" in e.value.message and "retry in a moment" in e.value.message
    t.join(10)
    assert first["out"].choices[0].message.content
    out = sdk.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=2000)  # the hold settled
    assert out.choices[0].message.content
    usage = admin.get(f"/keys/{kid}").json()["usage"]
    assert usage["reserved_usd"] == 0 and 0 < usage["spent_usd"] <= 0.0105


def test_claude_thinking_budget_is_reserved(gateway):
    """`reasoning_effort: high` on Claude sends `max_tokens` + a 16,384-token thinking budget upstream: up to
    $0.25 of output for `max_tokens: 100`. A $0.002 key used to be admitted (only the 100 tokens were
    reserved); now it is refused before any upstream call, and the same request without thinking fits."""
    base, _, key = gateway
    _, secret = key(name="thinker", budget_usd=0.002)
    client = openai.OpenAI(base_url=base, api_key=secret, max_retries=0, timeout=20)
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model="claude-3-7-sonnet", messages=MSG, max_tokens=100,
                                       reasoning_effort="high")
    assert ei.value.code == "insufficient_quota"
    assert client.chat.completions.create(model="claude-3-7-sonnet", messages=MSG, max_tokens=100).choices
