"""A stream the upstream cuts after the answer started ends with an error event; the SDK raises and the
client goes away, which cancels the response's task while its finaliser settles the key's books. With a
settlement of several round trips (Redis, PostgreSQL) the cancellation cut it off after the ledger row was
written: the hold stayed reserved and spend was short of the ledger (seen on PostgreSQL + Redis)."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import ledger_rows, running_gateway

MASTER = "sk-stream-failure-books-master-0123456789"


def test_a_cut_stream_settles_its_books_though_the_client_left(tmp_path, monkeypatch):
    from tiergate.accounting.service import Accounting

    real = Accounting.settle

    async def slow_settle(self, *a, **kw):  # several round trips, as on Redis or PostgreSQL
        for _ in range(5):
            await asyncio.sleep(0.01)
        return await real(self, *a, **kw)

    monkeypatch.setattr(Accounting, "settle", slow_settle)
    db = tmp_path / "tg.db"
    with FakeOpenAI() as up:
        cfg = {"models": [{"name": "gpt-4o-mini", "retry": {"max_retries": 0}, "deployments": [
            {"provider": "openai", "api_base": up.url, "api_key": "env:TG_TEST_UP_KEY"}]}], "storage": f"sqlite:///{db}"}
        with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER, "TG_TEST_UP_KEY": "sk-up-0123456789"}) as base:
            admin = httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                                 headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
            made = admin.post("/keys", json={"name": "cut", "budget_usd": 5}).json()
            client = openai.OpenAI(base_url=base, api_key=made["key"], max_retries=0, timeout=20)
            up.fail_every("error_event", 1, after=3)
            for _ in range(6):
                with pytest.raises(openai.APIError):
                    for _chunk in client.chat.completions.create(
                            model="gpt-4o-mini", stream=True,
                            messages=[{"role": "user", "content": "say a few words please, many of them"}]):
                        pass
            deadline = time.time() + 5
            while True:
                usage = admin.get(f"/keys/{made['id']}").json()["usage"]
                rows = ledger_rows(db, "key_id = ?", made["id"], columns="cost_usd")
                if (usage["reserved_usd"] == 0 and len(rows) == 6) or time.time() > deadline:
                    break
                time.sleep(0.1)
            admin.close()
    assert len(rows) == 6 and usage["reserved_usd"] == 0, usage
    assert usage["spent_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows), rel=1e-6, abs=1e-12)
