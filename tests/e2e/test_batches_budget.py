"""A batch against a small key budget (real gateway on loopback, official openai SDK): lines refused only
because the batch's own other lines hold the budget wait for those holds and run; lines fail on budget
only once what is left cannot cover one line; the key never overspends. In one process (SQLite), with
budgets in Redis, and with budgets in PostgreSQL."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import openai
import pytest

from tests.helpers import running_gateway
from tests.unit.test_store_fixtures import (  # noqa: F401 (fixtures)
    REDIS_URL,
    fx_pg_available,
    fx_pg_url,
    fx_redis_available,
    fx_redis_prefix,
)

MASTER = "sk-batch-budget-master-0123456789"
BUDGET = 0.001
LINES = 30


@pytest.fixture(params=["process", "redis", "postgresql"])
def gw(request, tmp_path):
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim", "options": {"latency_ms": 30}}]}],
           "storage": f"sqlite:///{tmp_path / 'tg.db'}", "batches": {"poll_s": 0.05}}
    if request.param == "redis":
        cfg["redis"] = f"{REDIS_URL}?prefix={request.getfixturevalue('redis_prefix')}"
    elif request.param == "postgresql":
        cfg["storage"] = request.getfixturevalue("pg_url")
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
        admin = httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                             headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
        yield base, admin
        admin.close()


def test_batch_lines_wait_for_their_own_holds(gw):
    base, admin = gw
    k = admin.post("/keys", json={"name": "small", "budget_usd": BUDGET}).json()
    client = openai.OpenAI(base_url=base, api_key=k["key"], max_retries=0, timeout=20)
    lines = [{"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini", "max_tokens": 300,
                       "messages": [{"role": "user", "content": f"Write a haiku about the number {i}."}]}}
             for i in range(LINES)]
    f = client.files.create(file=("b.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.time() + 60
    while (b := client.batches.retrieve(b.id)).status not in ("completed", "failed"):
        assert time.time() < deadline, b.request_counts
        time.sleep(0.1)
    assert b.status == "completed"
    done, failed = b.request_counts.completed, b.request_counts.failed
    assert done + failed == LINES and done >= 1

    usage = admin.get(f"/keys/{k['id']}").json()["usage"]
    assert usage["reserved_usd"] == 0
    assert usage["spent_usd"] <= BUDGET + 1e-12  # never overspent

    worst = 0.0  # the most one line can cost (its reservation), as the refusals state it
    errors = [json.loads(x) for x in client.files.content(b.error_file_id).text.splitlines()] if failed else []
    for e in errors:
        err = e["response"]["body"]["error"]
        assert e["response"]["status_code"] == 429 and err["code"] == "insufficient_quota"
        # failed only because the budget could not cover the line, never because of holds in flight
        assert "retrying will not help" in err["message"], err["message"]
        worst = max(worst, float(re.search(r"could cost up to \$([0-9.]+)", err["message"]).group(1)))
    # as many lines as the budget covers: what is left cannot pay for one more line
    # (before: 7 completed, 23 failed "held by requests in flight", $0.000288 left of $0.001)
    assert failed and BUDGET - usage["spent_usd"] < worst, (done, failed, usage, worst)
    out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
    assert len(out) == done and all(o["response"]["status_code"] == 200 for o in out)
    ledger = admin.get("/spend", params={"key_id": k["id"]}).json()
    assert abs(ledger["total_usd"] - usage["spent_usd"]) < 1e-9  # the counter is the ledger's sum
    assert sum(r["requests"] for r in ledger["data"]) == done  # one row per completed line, none twice
    print(f"completed {done}, failed {failed}, spent ${usage['spent_usd']:.6f} of ${BUDGET}, one line <= ${worst}")


@pytest.fixture
def slow_gw(tmp_path):
    """Live traffic on `slow` holds the budget for 6 s; batch lines wait at most 0.5 s for holds."""
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]},
                      {"name": "slow", "catalog": "gpt-4o-mini",
                       "deployments": [{"provider": "sim", "options": {"latency_ms": 6000}}]}],
           "storage": f"sqlite:///{tmp_path / 'tg.db'}", "batches": {"poll_s": 0.05, "budget_wait_s": 0.5}}
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
        admin = httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                             headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
        yield base, admin
        admin.close()


def _hold_budget(base: str, admin: httpx.Client, secret: str, key_id: str) -> threading.Thread:
    """A live request on `slow` reserving most of the key's budget for 6 s."""
    live = openai.OpenAI(base_url=base, api_key=secret, max_retries=0, timeout=20)
    t = threading.Thread(target=lambda: live.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "hi"}], max_tokens=16384), daemon=True)
    t.start()
    deadline = time.time() + 5
    while admin.get(f"/keys/{key_id}").json()["usage"]["reserved_usd"] == 0:
        assert time.time() < deadline
        time.sleep(0.02)
    return t


def _one_line_batch(client: openai.OpenAI):
    line = {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "max_tokens": 2000, "messages": [{"role": "user", "content": "hi"}]}}
    f = client.files.create(file=("b.jsonl", json.dumps(line).encode()), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


def _wait(client: openai.OpenAI, bid: str, timeout: float):
    deadline = time.time() + timeout
    while (b := client.batches.retrieve(bid)).status not in ("completed", "failed", "cancelled"):
        assert time.time() < deadline, b.status
        time.sleep(0.05)
    return b


def test_wait_for_holds_is_bounded(slow_gw):
    # ~$0.0098 held by the live request, a line needs ~$0.0012: it fits the budget, not next to the hold
    base, admin = slow_gw
    k = admin.post("/keys", json={"name": "shared", "budget_usd": 0.0105}).json()
    client = openai.OpenAI(base_url=base, api_key=k["key"], max_retries=0, timeout=20)
    live = _hold_budget(base, admin, k["key"], k["id"])
    t0 = time.time()
    b = _wait(client, _one_line_batch(client).id, 5)
    assert time.time() - t0 < 4  # gave up after budget_wait_s, not after the live request's 6 s
    assert (b.request_counts.completed, b.request_counts.failed) == (0, 1)
    err = json.loads(client.files.content(b.error_file_id).text)["response"]["body"]["error"]
    assert err["code"] == "insufficient_quota" and "held by requests in flight" in err["message"]
    live.join(15)


def test_cancel_stops_a_line_waiting_for_holds(tmp_path):
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]},
                      {"name": "slow", "catalog": "gpt-4o-mini",
                       "deployments": [{"provider": "sim", "options": {"latency_ms": 6000}}]}],
           "storage": f"sqlite:///{tmp_path / 'tg.db'}", "batches": {"poll_s": 0.05}}  # default wait: 660 s
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base, httpx.Client(
            base_url=base.removesuffix("/v1") + "/admin", headers={"authorization": f"Bearer {MASTER}"},
            timeout=10) as admin:
        k = admin.post("/keys", json={"name": "shared", "budget_usd": 0.0105}).json()
        client = openai.OpenAI(base_url=base, api_key=k["key"], max_retries=0, timeout=20)
        live = _hold_budget(base, admin, k["key"], k["id"])
        b = _one_line_batch(client)
        deadline = time.time() + 5
        while client.batches.retrieve(b.id).request_counts.total == 0 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the line is running, refused for the hold, and waiting
        t0 = time.time()
        client.batches.cancel(b.id)
        b = _wait(client, b.id, 5)
        assert b.status == "cancelled" and time.time() - t0 < 3  # not after the live request's 6 s
        live.join(15)
