"""Two gateway replicas on one PostgreSQL database share a batch's lines through row claims: every line
reaches the upstream exactly once and both replicas do part of the work."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter

import asyncpg
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway
from tests.unit.test_store_fixtures import PG_BASE, drop_schema, fx_pg_available  # noqa: F401 - fixture

N = 24


async def _owners(url: str, schema: str, bid: str) -> Counter:
    conn = await asyncpg.connect(PG_BASE, server_settings={"search_path": schema})
    try:
        rows = await conn.fetch("SELECT owner FROM batch_lines WHERE batch_id = $1", bid)
    finally:
        await conn.close()
    return Counter(r["owner"] for r in rows)


def test_two_replicas_share_one_batch(pg_available, tmp_path, monkeypatch):
    monkeypatch.setenv("TIERGATE_JOURNAL_DIR", str(tmp_path / "journal"))
    if not pg_available:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    schema = f"tg_b_{secrets.token_hex(5)}"
    url = f"{PG_BASE}?schema={schema}"
    try:
        with FakeOpenAI() as up:
            up.fail_every("slow", 1, path="/chat/completions", seconds=0.15)
            cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [
                {"provider": "openai_compatible", "api_base": up.url}]}],
                "storage": url, "batches": {"concurrency": 3, "poll_s": 0.05, "lease_s": 10}}
            with running_gateway(cfg) as a, running_gateway(cfg) as b:
                ca = openai.OpenAI(base_url=a, api_key="unused", max_retries=0)
                cb = openai.OpenAI(base_url=b, api_key="unused", max_retries=0)
                lines = [{"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
                          "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"line {i}"}]}}
                         for i in range(N)]
                f = ca.files.create(file=("in.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="batch")
                batch = ca.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
                deadline = time.time() + 40
                while (batch := cb.batches.retrieve(batch.id)).status != "completed":  # visible on replica B
                    assert time.time() < deadline, batch.request_counts
                    time.sleep(0.1)
                assert batch.request_counts.completed == N
                texts = Counter(r.body["messages"][-1]["content"] for r in up.requests
                                if r.path.endswith("/chat/completions"))
                assert texts == Counter({f"line {i}": 1 for i in range(N)})  # no line ran twice
                out = cb.files.content(batch.output_file_id).text.splitlines()
                assert sorted(json.loads(x)["custom_id"] for x in out) == sorted(f"l{i}" for i in range(N))
            owners = asyncio.run(_owners(url, schema, batch.id))
            assert len(owners) == 2 and sum(owners.values()) == N, owners  # both replicas worked
    finally:
        asyncio.run(drop_schema(schema))
