"""A batch line the gateway refused on a try (the upstream's rate limit, no healthy deployment) and then ran
is billed: its failed try had written the ledger row under the line's own request id, and the ledger keeps
the first row of an id, so the line's answered row was dropped (20 answered lines, 18 `error` rows at $0;
the key's spend counter 9x the ledger's)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.helpers import ledger_rows, running_gateway, submit_batch, wait_batch

MASTER = "sk-batch-retried-ledger-master-0123456789"


def test_a_line_answered_after_a_refused_try_has_its_ledger_row(tmp_path):
    db = tmp_path / "tg.db"
    cfg = {"models": [{"name": "gpt-4o-mini", "retry": {"max_retries": 0}, "deployments": [
        {"provider": "sim", "options": {"failure_rate": 0.3, "fail_status": [429], "retry_after_s": 0.2,
                                        "seed": 7}}]}],
           "storage": f"sqlite:///{db}", "batches": {"concurrency": 4, "poll_s": 0.05}}
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
        admin = httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                             headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
        made = admin.post("/keys", json={"name": "batcher", "budget_usd": 1}).json()
        client = openai.OpenAI(base_url=base, api_key=made["key"], max_retries=0, timeout=20)
        lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": f"q {i}"}]}}
                 for i in range(20)]
        b = wait_batch(client, submit_batch(client, lines).id, ("completed",), timeout=90, poll_s=0.1)
        assert b.request_counts.completed == 20
        deadline = time.time() + 10
        while True:
            rows = ledger_rows(db, "batch_id = ? AND status = 'ok'", b.id, columns="request_id, cost_usd")
            spent = admin.get(f"/keys/{made['id']}").json()["usage"]["spent_usd"]
            if len(rows) == 20 or time.time() > deadline:
                break
            time.sleep(0.2)
        admin.close()
    assert sorted(r["request_id"] for r in rows) == sorted(f"breq_{b.id.removeprefix('batch_')}_{i}" for i in range(20))
    failed_tries = ledger_rows(db, "batch_id = ? AND status = 'error'", b.id, columns="request_id")
    assert failed_tries, "the seed gives refused tries: the test must exercise them"
    assert all(":try" in r["request_id"] for r in failed_tries)
    total = sum(r["cost_usd"] for r in ledger_rows(db, "batch_id = ?", b.id, columns="cost_usd"))
    assert spent == pytest.approx(total, rel=1e-6)
