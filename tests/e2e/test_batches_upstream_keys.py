"""A batch forwarded to Anthropic's Message Batches API (`batches.forward_upstream`) is authorised and
budgeted line by line like live calls (issue 6; docs/accounting.md): a line for a model the key may not
use gets the live call's 403 `model_not_allowed` and is not sent; every line reserves its worst case (at
the batch price) against the key's budget before the upstream batch is created, a line that does not fit
gets `insufficient_quota` and is not sent; the reservations are settled with each line's actual cost when
the results come back, so the key's settled spend never exceeds its budget. Loopback fake Anthropic."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.e2e.test_batches_anthropic_upstream import UPSTREAM_MODEL, fake_anthropic
from tests.helpers import ledger_rows, running_gateway, submit_batch, wait_batch
from tests.unit.test_store_fixtures import (  # noqa: F401 (fixtures)
    REDIS_URL,
    fx_pg_available,
    fx_pg_url,
    fx_redis_available,
    fx_redis_prefix,
)

MASTER = "sk-batch-upkeys-master-0123456789"
LINE_MAX_TOKENS = 1000
# one line's reservation: (prompt + 1000 output tokens) at claude-3-7-sonnet's batch price ($1.5 / $7.5 per 1M)
RESERVE_ABOUT = LINE_MAX_TOKENS * 7.5e-6


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("upkeys") / "tiergate.db"
    with fake_anthropic() as fake:
        cfg = {"models": [{"name": "claude-3-7-sonnet", "deployments": [
            {"provider": "anthropic", "api_base": fake.base_url, "api_key": "env:TG_ANT_KEY", "model": UPSTREAM_MODEL}]},
            {"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
            "storage": f"sqlite:///{db}",
            "batches": {"forward_upstream": True, "upstream_poll_s": 0.1, "poll_s": 0.1}}
        with running_gateway(cfg, env={"TG_ANT_KEY": "sk-ant-batch", "TIERGATE_MASTER_KEY": MASTER}) as url:
            admin = httpx.Client(base_url=url.removesuffix("/v1") + "/admin",
                                 headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
            yield url, admin, fake, db
            admin.close()


def _key(admin: httpx.Client, **fields) -> tuple[str, str]:
    k = admin.post("/keys", json={"name": "fwd", **fields}).json()
    return k["id"], k["key"]


def _run(url: str, secret: str, n: int):
    client = openai.OpenAI(base_url=url, api_key=secret, max_retries=0)
    lines = [{"custom_id": f"f{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "claude-3-7-sonnet", "max_tokens": LINE_MAX_TOKENS,
                       "messages": [{"role": "user", "content": f"question {i}"}]}} for i in range(n)]
    f = client.files.create(file=("f.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.time() + 30
    while (b := client.batches.retrieve(b.id)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.time() < deadline, b
        time.sleep(0.1)

    def read(fid):
        return {json.loads(x)["custom_id"]: json.loads(x)
                for x in (client.files.content(fid).text.splitlines() if fid else [])}

    return b, read(b.output_file_id), read(b.error_file_id)


def test_a_model_the_key_may_not_use_is_refused_per_line_and_not_sent(env):
    url, admin, fake, db = env
    kid, secret = _key(admin, budget_usd=0.0001, models=["gpt-4o-mini"])
    creates = len(fake.batch_creates)
    b, out, err = _run(url, secret, 20)
    assert len(fake.batch_creates) == creates  # nothing went upstream
    assert b.status == "completed" and (b.request_counts.completed, b.request_counts.failed) == (0, 20)
    assert out == {} and len(err) == 20
    for line in err.values():
        assert line["response"]["status_code"] == 403
        assert line["response"]["body"]["error"]["code"] == "model_not_allowed"
    usage = admin.get(f"/keys/{kid}").json()["usage"]
    assert usage["spent_usd"] == 0 and usage["reserved_usd"] == 0
    assert ledger_rows(db, "batch_id = ? AND cost_usd > 0", b.id, timeout=1.0) == []


def test_lines_are_reserved_before_sending_and_settled_at_their_cost(env):
    url, admin, fake, db = env
    budget = 3.5 * RESERVE_ABOUT  # room for three lines' worst case, not four
    kid, secret = _key(admin, budget_usd=budget, models=["claude-3-7-sonnet"])
    creates = len(fake.batch_creates)
    b, out, err = _run(url, secret, 20)
    assert len(fake.batch_creates) == creates + 1
    sent = fake.batch_creates[-1]["requests"]
    assert len(sent) == 3 and all(r["params"]["max_tokens"] == LINE_MAX_TOKENS for r in sent)
    assert b.status == "completed" and (b.request_counts.completed, b.request_counts.failed) == (3, 17)
    assert sorted(out) == ["f0", "f1", "f2"] and len(err) == 17
    for line in err.values():
        assert line["response"]["status_code"] == 429
        assert line["response"]["body"]["error"]["code"] == "insufficient_quota"
    rows = ledger_rows(db, "batch_id = ?", b.id, ready=lambda r: len(r) == 3)
    spent = sum(r["cost_usd"] for r in rows)
    assert len(rows) == 3 and spent > 0
    usage = admin.get(f"/keys/{kid}").json()["usage"]
    assert usage["reserved_usd"] == 0  # every hold settled (or released)
    assert abs(usage["spent_usd"] - spent) < 1e-9 and usage["spent_usd"] <= budget


def test_openai_forwarding_admits_and_caps_lines_too(tmp_path):
    """The same for a batch forwarded to OpenAI's Batch API: a budgeted key's line without an output
    limit is sent with the one its reservation assumed (4096 for gpt-4o-mini), as a live call would be."""
    from tests.e2e.test_batches_upstream import FakeOpenAIBatches

    with FakeOpenAIBatches(key="sk-batch-up") as up:
        cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [
            {"provider": "openai", "api_base": up.url, "api_key": "env:TG_FWD_KEY", "model": "gpt-4o-mini-2024-07-18"}]}],
            "storage": f"sqlite:///{tmp_path / 'tg.db'}",
            "batches": {"forward_upstream": True, "upstream_poll_s": 0.1, "poll_s": 0.1}}
        with running_gateway(cfg, env={"TG_FWD_KEY": "sk-batch-up", "TIERGATE_MASTER_KEY": MASTER}) as url:
            admin = httpx.Client(base_url=url.removesuffix("/v1") + "/admin",
                                 headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
            # one line: ~10 prompt tokens + 4096 output at $0.075 / $0.30 per 1M (batch price) ~ $0.00123
            budget = 2.5 * 4096 * 0.30e-6
            kid, secret = _key(admin, budget_usd=budget)
            client = openai.OpenAI(base_url=url, api_key=secret, max_retries=0)
            lines = [{"custom_id": f"o{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q {i}"}]}}
                     for i in range(5)]
            b = wait_batch(client, submit_batch(client, lines).id, "completed")
            assert up.problems == [] and up.created == 1
            sent = [json.loads(x) for x in up.files["file-up0"].splitlines()]
            assert [s["custom_id"] for s in sent] == ["o0", "o1"]
            assert all(s["body"]["max_completion_tokens"] == 4096 for s in sent)
            assert (b.request_counts.completed, b.request_counts.failed, b.request_counts.total) == (2, 3, 5)
            err = [json.loads(x) for x in client.files.content(b.error_file_id).text.splitlines()]
            assert [e["response"]["body"]["error"]["code"] for e in err] == ["insufficient_quota"] * 3
            usage = admin.get(f"/keys/{kid}").json()["usage"]
            # the fake bills 1000 + 1000 tokens a line: 2 x $0.000375
            assert usage["reserved_usd"] == 0 and abs(usage["spent_usd"] - 0.00075) < 1e-9
            admin.close()


def test_rate_limited_admission_waits_within_the_window(tmp_path):
    """Admission honours the key's RPM like a live call: lines over it wait for the bucket; when the
    completion window ends first, nothing is sent and every line is `batch_expired` (holds released)."""
    with fake_anthropic() as fake:
        cfg = {"models": [{"name": "claude-3-7-sonnet", "deployments": [
            {"provider": "anthropic", "api_base": fake.base_url, "api_key": "env:TG_ANT_KEY", "model": UPSTREAM_MODEL}]}],
            "storage": f"sqlite:///{tmp_path / 'tg.db'}",
            "batches": {"forward_upstream": True, "upstream_poll_s": 0.1, "poll_s": 0.1, "window_s": 2.0}}
        with running_gateway(cfg, env={"TG_ANT_KEY": "sk-ant-batch", "TIERGATE_MASTER_KEY": MASTER}) as url:
            admin = httpx.Client(base_url=url.removesuffix("/v1") + "/admin",
                                 headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
            kid, secret = _key(admin, rpm=2, budget_usd=1.0)  # two lines now, the third in 30 s
            started = time.time()
            b, out, err = _run(url, secret, 4)
            assert time.time() - started < 10
            assert b.status == "expired" and fake.batch_creates == [] and out == {}
            assert sorted(err) == ["f0", "f1", "f2", "f3"]
            assert {e["error"]["code"] for e in err.values()} == {"batch_expired"}
            assert admin.get(f"/keys/{kid}").json()["usage"] == {"spent_usd": 0.0, "reserved_usd": 0.0,
                                                                 "remaining_usd": 1.0}
            admin.close()


@pytest.mark.parametrize("backend", ["redis", "postgresql"])
def test_forwarded_lines_are_budgeted_on_shared_backends(backend, request, tmp_path):
    """The reservations and their settlement work the same with budgets in Redis or PostgreSQL."""
    with fake_anthropic() as fake:
        cfg = {"models": [{"name": "claude-3-7-sonnet", "deployments": [
            {"provider": "anthropic", "api_base": fake.base_url, "api_key": "env:TG_ANT_KEY", "model": UPSTREAM_MODEL}]}],
            "storage": f"sqlite:///{tmp_path / 'tg.db'}",
            "batches": {"forward_upstream": True, "upstream_poll_s": 0.1, "poll_s": 0.1}}
        if backend == "redis":
            cfg["redis"] = f"{REDIS_URL}?prefix={request.getfixturevalue('redis_prefix')}"
        else:
            cfg["storage"] = request.getfixturevalue("pg_url")
        with running_gateway(cfg, env={"TG_ANT_KEY": "sk-ant-batch", "TIERGATE_MASTER_KEY": MASTER}) as url:
            admin = httpx.Client(base_url=url.removesuffix("/v1") + "/admin",
                                 headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
            budget = 3.5 * RESERVE_ABOUT
            kid, secret = _key(admin, budget_usd=budget)
            b, out, err = _run(url, secret, 10)
            assert len(fake.batch_creates) == 1 and len(fake.batch_creates[0]["requests"]) == 3
            assert (b.request_counts.completed, b.request_counts.failed) == (3, 7) and len(out) == 3
            assert {e["response"]["body"]["error"]["code"] for e in err.values()} == {"insufficient_quota"}
            usage = admin.get(f"/keys/{kid}").json()["usage"]
            assert usage["reserved_usd"] == 0 and 0 < usage["spent_usd"] <= budget
            admin.close()
