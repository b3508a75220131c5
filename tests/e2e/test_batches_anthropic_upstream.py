"""`batches.forward_upstream` for an Anthropic model: the batch goes to Anthropic's Message Batches API.

The loopback fake (tests/fakes/anthropic_upstream.py) checks every request it receives the way the real
API would (x-api-key, anthropic-version, custom_id pattern and uniqueness, Messages params) and answers
results out of request order. Driven with the official `openai` SDK through the gateway: results come
back as `chat.completion` bodies under the client's custom ids (long ones mapped and back), upstream
errors and cancelled lines land in the error file, cancel is forwarded, and each answered line is billed
once at the batch price (half of Anthropic's standard price).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator

import openai
import pytest

from tests.fakes.anthropic_upstream import CUSTOM_ID, FakeAnthropic
from tests.helpers import running_gateway, submit_batch, wait_batch

UPSTREAM_MODEL = "claude-3-7-sonnet-20250219"
PRICE_IN, PRICE_OUT = 3.00, 15.00  # claude-3-7-sonnet, USD per 1M tokens (catalogue)


@contextlib.contextmanager
def fake_anthropic() -> Iterator[FakeAnthropic]:
    """The async fake on its own event loop in a thread (the SDK calls below are synchronous)."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    fake = asyncio.run_coroutine_threadsafe(FakeAnthropic(api_key="sk-ant-batch").start(), loop).result(10)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


def _config(fake: FakeAnthropic, db, **batches) -> dict:
    return {"models": [{"name": "claude-3-7-sonnet", "deployments": [
        {"provider": "anthropic", "api_base": fake.base_url, "api_key": "env:TG_ANT_KEY", "model": UPSTREAM_MODEL}]}],
        "storage": f"sqlite:///{db}",
        "batches": {"forward_upstream": True, "upstream_poll_s": 0.1, "poll_s": 0.1, **batches}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("antfwd") / "tiergate.db"
    with fake_anthropic() as fake, running_gateway(_config(fake, db), env={"TG_ANT_KEY": "sk-ant-batch"}) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0), fake, db


def _line(cid: str, text: str, **body) -> dict:
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "claude-3-7-sonnet", "messages": [{"role": "user", "content": text}], **body}}


def _submit(client: openai.OpenAI, lines: list[dict]):
    return submit_batch(client, lines)


def _wait(client: openai.OpenAI, bid: str, status: str, timeout: float = 20):
    return wait_batch(client, bid, status, timeout)


def _jsonl(client: openai.OpenAI, file_id: str | None) -> dict[str, dict]:
    if not file_id:
        return {}
    return {json.loads(x)["custom_id"]: json.loads(x) for x in client.files.content(file_id).text.splitlines()}


def test_forwarded_batch_completes_billed_at_batch_price(env):
    client, fake, db = env
    long_id = "request-" + "x" * 80  # over Anthropic's 64 characters
    odd_id = "line 4 / ü"  # characters Anthropic refuses
    lines = [_line("a1", "alpha"), _line("a2", "beta gamma", max_tokens=50),
             {**_line("sys", "delta"), "body": {"model": "claude-3-7-sonnet", "messages": [
                 {"role": "system", "content": "be brief"}, {"role": "user", "content": "delta"}]}},
             _line("bad", "please fail"), _line(long_id, "long id"), _line(odd_id, "odd id"),
             _line("two", "two choices", n=2)]  # Anthropic gives one choice: refused by the gateway, not sent
    created = len(fake.batch_creates)
    b = _submit(client, lines)
    assert b.status == "in_progress" and b.errors is None
    b = _wait(client, b.id, "completed")
    assert fake.problems == [] and len(fake.batch_creates) == created + 1
    sent = fake.batch_creates[-1]["requests"]
    assert len(sent) == 6 and all(CUSTOM_ID.fullmatch(r["custom_id"]) for r in sent)
    by_upstream = {r["custom_id"]: r["params"] for r in sent}
    assert by_upstream["a1"]["model"] == UPSTREAM_MODEL and by_upstream["a1"]["max_tokens"] == 4096
    assert by_upstream["a2"]["max_tokens"] == 50 and by_upstream["sys"]["system"] == "be brief"
    assert long_id not in by_upstream and odd_id not in by_upstream
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (7, 5, 2)

    out = _jsonl(client, b.output_file_id)
    assert sorted(out) == sorted(["a1", "a2", "sys", long_id, odd_id])
    a1 = out["a1"]
    assert a1["error"] is None and a1["response"]["status_code"] == 200
    assert a1["response"]["request_id"].startswith("breq_") and a1["id"].startswith("batch_req_")
    body = a1["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == UPSTREAM_MODEL
    assert body["choices"][0]["message"]["content"] == "echo: alpha"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert out[long_id]["response"]["body"]["choices"][0]["message"]["content"] == "echo: long id"
    assert out[odd_id]["response"]["body"]["choices"][0]["message"]["content"] == "echo: odd id"

    err = _jsonl(client, b.error_file_id)
    assert sorted(err) == ["bad", "two"]
    assert err["bad"]["response"]["status_code"] == 400
    assert err["bad"]["response"]["body"]["error"]["code"] == "invalid_request_error"
    assert "fake refusal" in err["bad"]["response"]["body"]["error"]["message"]
    assert err["two"]["response"]["status_code"] == 400 and err["two"]["response"]["body"]["error"]["param"] == "n"
    two = err["two"]["response"]["body"]["error"]
    assert two["message"] == "this line cannot be sent to Anthropic: Anthropic models return one choice; n must be 1"
    assert two["code"] == "unsupported_value"  # the gateway's refusal, not worded as Anthropic's answer

    time.sleep(0.5)  # the ledger writer flushes in the background
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT request_id, input_tokens, output_tokens, cost_usd FROM ledger WHERE batch_id = ?",
                            (b.id,)).fetchall()
    assert len(rows) == 5 and len({r[0] for r in rows}) == 5
    assert {r[0] for r in rows} == {o["response"]["request_id"] for o in out.values()}
    for _rid, tokens_in, tokens_out, cost in rows:
        full = (tokens_in * PRICE_IN + tokens_out * PRICE_OUT) / 1e6
        assert tokens_in > 0 and abs(cost - full / 2) < 1e-12, (tokens_in, tokens_out, cost)


def test_cancel_is_forwarded(env):
    client, fake, db = env
    fake.batch_polls_to_end = 10**9  # the upstream batch runs until it is cancelled
    try:
        b = _submit(client, [_line("c1", "one"), _line("c2", "two")])
        deadline = time.time() + 20
        while not any(c.startswith("GET /v1/messages/batches/") for c in fake.batch_calls[-3:]):
            assert time.time() < deadline
            time.sleep(0.05)
        client.batches.cancel(b.id)
        b = _wait(client, b.id, "cancelled")
    finally:
        fake.batch_polls_to_end = 2
    upstream_id = f"msgbatch_fake{len(fake.batches) - 1}"
    assert f"POST /v1/messages/batches/{upstream_id}/cancel" in fake.batch_calls and fake.problems == []
    err = _jsonl(client, b.error_file_id)
    assert sorted(err) == ["c1", "c2"] and b.output_file_id is None
    assert {e["error"]["code"] for e in err.values()} == {"batch_cancelled"}
    assert all(e["response"] is None for e in err.values())
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM ledger WHERE batch_id = ?", (b.id,)).fetchone()[0] == 0


def test_lost_create_answer_adopts_the_upstream_batch(env):
    """The create call reached Anthropic but its answer was lost (what a crash between the call and
    storing the id looks like): the next attempt finds that batch by time and request count, skipping
    the one of the same size that another tiergate batch holds, instead of creating a second one."""
    client, fake, _ = env
    if not any(len(c.get("requests", [])) == 2 for c in fake.batch_creates):
        _wait(client, _submit(client, [_line("p1", "one"), _line("p2", "two")]).id, "completed")
    created = len(fake.batches)
    fake.lose_next_batch_create = True
    b = _wait(client, _submit(client, [_line("l1", "lost one"), _line("l2", "lost two")]).id, "completed")
    assert len(fake.batches) == created + 1 and fake.problems == []  # adopted, not submitted again
    assert any(c.startswith("GET /v1/messages/batches?limit=100") for c in fake.batch_calls)
    out = _jsonl(client, b.output_file_id)
    assert out["l2"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: lost two"


def test_responses_lines_are_forwarded_too(env):
    client, fake, _ = env
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/responses",
            "body": {"model": "claude-3-7-sonnet", "instructions": "be brief", "input": "hello there"}}
    f = client.files.create(file=("in.jsonl", json.dumps(line).encode()), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")
    b = _wait(client, b.id, "completed")
    assert fake.problems == [] and fake.batch_creates[-1]["requests"][0]["params"]["system"] == "be brief"
    body = _jsonl(client, b.output_file_id)["r1"]["response"]["body"]
    text = [c["text"] for item in body["output"] if item["type"] == "message" for c in item["content"]]
    assert body["object"] == "response" and text == ["echo: hello there"] and body["usage"]["input_tokens"] > 0


def test_refuses_tiergate_options_it_would_drop(env):
    client, fake, _ = env
    created = len(fake.batch_creates)
    b = _submit(client, [_line("o1", "hi"), _line("o2", "hi", tiergate={"quality_target": 0.9})])
    assert b.status == "failed" and len(fake.batch_creates) == created
    assert [(e.line, e.param) for e in b.errors.data] == [(2, "body.tiergate.quality_target")]


def test_a_restarted_gateway_resumes_the_stored_upstream_batch(tmp_path):
    """The batch row keeps the upstream id: a second gateway on the same store (after the first one
    stopped) polls that batch and collects it; nothing is created upstream twice, nothing billed twice."""
    db = tmp_path / "tiergate.db"
    with fake_anthropic() as fake:
        fake.batch_polls_to_end = 10**9
        cfg = _config(fake, db, lease_s=0.5)
        with running_gateway(cfg, env={"TG_ANT_KEY": "sk-ant-batch"}) as url:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
            b = _submit(client, [_line("r1", "first"), _line("r2", "second")])
            deadline = time.time() + 20
            while not fake.batches or fake.batches["msgbatch_fake0"]["polls"] < 2:
                assert time.time() < deadline
                time.sleep(0.05)
        fake.batch_polls_to_end = 1
        with running_gateway(cfg, env={"TG_ANT_KEY": "sk-ant-batch"}) as url:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
            b = _wait(client, b.id, "completed")
            assert sorted(_jsonl(client, b.output_file_id)) == ["r1", "r2"]
            time.sleep(0.5)
        assert len(fake.batches) == 1 and fake.problems == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM ledger WHERE batch_id = ?", (b.id,)).fetchone()[0] == 2


def test_forwarded_batch_line_gets_the_deployments_output_maximum(tmp_path):
    """With the 128k-output beta on the deployment, a thinking line asking for 100,000 tokens was sent with
    max_tokens capped at the packaged 64,000 (the live path sends 100,000 + its thinking budget)."""
    with fake_anthropic() as fake:
        cfg = _config(fake, tmp_path / "tg.db")
        cfg["models"][0]["deployments"][0]["headers"] = {"anthropic-beta": "output-128k-2025-02-19"}
        with running_gateway(cfg, env={"TG_ANT_KEY": "sk-ant-batch"}) as url:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
            b = _submit(client, [_line("big", "think long", max_completion_tokens=100000, reasoning_effort="low")])
            _wait(client, b.id, "completed")
            params = fake.batch_creates[-1]["requests"][0]["params"]
    assert params["max_tokens"] == 100000 + 1024 and params["thinking"]["budget_tokens"] == 1024
