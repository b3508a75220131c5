"""Batches with virtual keys: a key sees only its own files and batches, its model list and budget apply
to every line (like live requests), and its ledger rows carry its key id."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import openai
import pytest

from tests.helpers import running_gateway

MASTER = "sk-batch-keys-master-0123456789"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    db = tmp_path_factory.mktemp("bk") / "tg.db"
    cfg = {"models": [{"name": m, "deployments": [{"provider": "sim"}]} for m in ("gpt-4o-mini", "o3-mini")],
           "storage": f"sqlite:///{db}", "batches": {"poll_s": 0.05, "rate_limit_retries": 0}}
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
        admin = httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                             headers={"authorization": f"Bearer {MASTER}"}, timeout=10)

        def key(**fields) -> tuple[str, str]:
            k = admin.post("/keys", json=fields).json()
            return k["id"], k["key"]

        yield base, key, db
        admin.close()


def _run(client: openai.OpenAI, models: list[str]):
    lines = [{"custom_id": f"k{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": m, "messages": [{"role": "user", "content": "hi"}]}} for i, m in enumerate(models)]
    f = client.files.create(file=("k.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.time() + 20
    while (b := client.batches.retrieve(b.id)).status not in ("completed", "failed"):
        assert time.time() < deadline
        time.sleep(0.05)
    return f, b


def test_scoping_model_list_and_ledger(gw):
    base, key, db = gw
    a_id, a = key(name="team-a", models=["gpt-4o-mini"])
    _, other = key(name="team-b")
    ca = openai.OpenAI(base_url=base, api_key=a, max_retries=0)
    cb = openai.OpenAI(base_url=base, api_key=other, max_retries=0)
    f, b = _run(ca, ["gpt-4o-mini", "o3-mini"])
    assert (b.request_counts.completed, b.request_counts.failed) == (1, 1)
    err = json.loads(ca.files.content(b.error_file_id).text)
    assert err["response"]["status_code"] == 403 and err["response"]["body"]["error"]["code"] == "model_not_allowed"
    for call in (lambda: cb.batches.retrieve(b.id), lambda: cb.files.retrieve(f.id),
                 lambda: cb.files.content(b.output_file_id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert b.id not in [x.id for x in cb.batches.list().data]
    master = openai.OpenAI(base_url=base, api_key=MASTER, max_retries=0)
    assert master.batches.retrieve(b.id).id == b.id
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="tg-wrong", max_retries=0).batches.list()
    time.sleep(0.5)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key_id, kind FROM ledger WHERE batch_id = ? AND status = 'ok'", (b.id,)).fetchall()
    assert rows == [(a_id, "batch")]


def test_budget_applies_to_lines(gw):
    base, key, _ = gw
    _, tiny = key(name="tiny", budget_usd=1e-7)
    _, b = _run(openai.OpenAI(base_url=base, api_key=tiny, max_retries=0), ["gpt-4o-mini"])
    assert b.request_counts.failed == 1
    err = json.loads(openai.OpenAI(base_url=base, api_key=tiny, max_retries=0).files.content(b.error_file_id).text)
    assert err["response"]["status_code"] == 429
    assert err["response"]["body"]["error"]["code"] == "insufficient_quota"
