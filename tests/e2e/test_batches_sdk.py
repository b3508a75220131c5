"""Files + Batches end to end: the official `openai` SDK against a real gateway whose model is served
by the loopback fake OpenAI upstream; every batch line goes through the live pipeline (routing,
dispatch, ledger) and reaches the upstream as an ordinary Chat Completions request."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import time

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway


def _router_ready() -> bool:
    """`model: "auto"` lines need the trained router; it may not be built in this checkout yet."""
    if importlib.util.find_spec("tiergate.routing.router") is None:
        return False
    try:
        from tiergate.catalog.catalog import Catalog
        from tiergate.routing.router import Router

        Router.load(None, catalog=Catalog.load())
    except Exception:  # noqa: BLE001 - any failure means: no router here
        return False
    return True


HAS_ROUTER = _router_ready()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("batches") / "tiergate.db"
    with FakeOpenAI(api_key="sk-upstream-test") as up:
        cfg = {
            "models": [{"name": m, "deployments": [{"provider": "openai", "api_base": up.url,
                                                    "api_key": "env:TG_TEST_UPSTREAM_KEY"}]}
                       for m in ("gpt-4o-mini", "o3-mini")],
            **({"routing": {"candidates": ["gpt-4o-mini", "o3-mini@low", "o3-mini@high"]}} if HAS_ROUTER else {}),
            "storage": f"sqlite:///{db}",
            "batches": {"concurrency": 3, "poll_s": 0.1, "lease_s": 5},
        }
        with running_gateway(cfg, env={"TG_TEST_UPSTREAM_KEY": "sk-upstream-test"}) as url:
            yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0), up, db


def _jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def _line(cid: str, model: str, text: str, url: str = "/v1/chat/completions") -> dict:
    return {"custom_id": cid, "method": "POST", "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": text}], "max_completion_tokens": 50}}


def _wait(client: openai.OpenAI, bid: str, statuses: tuple[str, ...], timeout: float = 30.0):
    deadline = time.time() + timeout
    while True:
        b = client.batches.retrieve(bid)
        if b.status in statuses:
            return b
        assert time.time() < deadline, f"batch stuck in {b.status}: {b.request_counts}"
        time.sleep(0.1)


def test_batch_roundtrip_with_auto_and_errors(env):
    client, up, db = env
    lines = [_line(f"req-{i}", "gpt-4o-mini", f"question {i}") for i in range(5)]
    auto = ["auto-1"] if HAS_ROUTER else []
    lines += [_line(a, "auto", "What is 2+2?") for a in auto]
    lines.append(_line("bad-model", "no-such-model", "x"))
    f = client.files.create(file=("input.jsonl", _jsonl(lines)), purpose="batch")
    assert f.id.startswith("file-") and f.purpose == "batch" and f.bytes == len(_jsonl(lines))
    assert client.files.retrieve(f.id).filename == "input.jsonl"
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"job": "nightly"})
    assert b.id.startswith("batch_") and b.status == "in_progress" and b.request_counts.total == 6 + len(auto)
    b = _wait(client, b.id, ("completed", "failed"))
    assert b.status == "completed" and b.completed_at and b.metadata == {"job": "nightly"}
    assert (b.request_counts.completed, b.request_counts.failed) == (5 + len(auto), 1)
    out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted([f"req-{i}" for i in range(5)] + auto)
    by_id = {o["custom_id"]: o for o in out}
    assert by_id["req-3"]["response"]["status_code"] == 200
    assert by_id["req-3"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: question 3"
    assert by_id["req-3"]["error"] is None and by_id["req-3"]["id"].startswith("batch_req_")
    errs = [json.loads(x) for x in client.files.content(b.error_file_id).text.splitlines()]
    assert errs[0]["custom_id"] == "bad-model" and errs[0]["response"]["status_code"] == 404
    assert errs[0]["response"]["body"]["error"]["code"] == "model_not_found"
    assert b.usage.input_tokens > 0 and b.usage.output_tokens > 0
    # the upstream saw ordinary chat requests with the upstream key
    chat = [r for r in up.requests if r.path.endswith("/chat/completions")]
    assert len(chat) >= 5 + len(auto) and all(r.headers.get("authorization") == "Bearer sk-upstream-test" for r in chat)
    assert all("tiergate" not in (r.body or {}) and r.body.get("messages") for r in chat)
    # one ledger row per answered line, tagged with the batch
    time.sleep(0.5)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT request_id, status FROM ledger WHERE batch_id = ? AND status = 'ok'",
                            (b.id,)).fetchall()
    assert len(rows) == 5 + len(auto) and len({r[0] for r in rows}) == len(rows)
    listed = client.batches.list(limit=100)
    assert b.id in [x.id for x in listed.data]


def test_invalid_file_gives_failed_batch(env):
    client, _, _ = env
    lines = [_line("dup", "gpt-4o-mini", "a"), _line("dup", "gpt-4o-mini", "b"),
             _line("x", "gpt-4o-mini", "c", url="/v1/embeddings")]
    f = client.files.create(file=("bad.jsonl", _jsonl(lines) + b"{not json\n"), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.status == "failed" and b.failed_at
    codes = [(e.code, e.line) for e in b.errors.data]
    assert ("duplicate_custom_id", 2) in codes and ("mismatched_endpoint", 3) in codes
    assert ("invalid_json_line", 4) in codes
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


def test_cancel(env):
    client, up, _ = env
    up.fail_every("slow", 1, path="/chat/completions", seconds=0.3)
    try:
        lines = [_line(f"c-{i}", "gpt-4o-mini", f"q {i}") for i in range(40)]
        f = client.files.create(file=("c.jsonl", _jsonl(lines)), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        time.sleep(0.5)
        b = client.batches.cancel(b.id)
        assert b.status in ("cancelling", "cancelled") and b.cancelling_at
        b = _wait(client, b.id, ("cancelled",))
        assert 0 < b.request_counts.completed < 40 and b.cancelled_at
        out = client.files.content(b.output_file_id).text.splitlines()
        assert len(out) == b.request_counts.completed
    finally:
        up.clear_faults()


def test_responses_endpoint_batch(env):
    client, _, _ = env
    lines = [{"custom_id": "r1", "method": "POST", "url": "/v1/responses",
              "body": {"model": "gpt-4o-mini", "input": "hello batch", "instructions": "be brief"}}]
    f = client.files.create(file=("r.jsonl", _jsonl(lines)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")
    b = _wait(client, b.id, ("completed",))
    out = json.loads(client.files.content(b.output_file_id).text)
    body = out["response"]["body"]
    assert body["object"] == "response" and body["output"][0]["content"][0]["text"] == "echo: hello batch"


def test_files_list_delete_and_expiry(tmp_path):
    cfg = {"models": [{"name": "slow", "catalog": "gpt-4o-mini", "deployments": [
        {"provider": "sim", "options": {"latency_ms": 200}}]}],
        "storage": f"sqlite:///{tmp_path / 'tg.db'}",
        "batches": {"concurrency": 1, "poll_s": 0.05, "window_s": 0.6}}
    with running_gateway(cfg) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        lines = [_line(f"e{i}", "slow", f"q {i}") for i in range(20)]
        f = client.files.create(file=("e.jsonl", _jsonl(lines)), purpose="batch")
        assert f.id in [x.id for x in client.files.list(purpose="batch").data]
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        b = _wait(client, b.id, ("expired",), timeout=20)
        assert 0 < b.request_counts.completed < 20 and b.expired_at
        assert len(client.files.content(b.output_file_id).text.splitlines()) == b.request_counts.completed
        assert client.files.delete(f.id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(f.id)


def test_graceful_stop_hands_lines_back(tmp_path):
    db = tmp_path / "tg.db"
    cfg = {"models": [{"name": "slow", "catalog": "gpt-4o-mini", "deployments": [
        {"provider": "sim", "options": {"latency_ms": 2000}}]}],
        "storage": f"sqlite:///{db}", "batches": {"concurrency": 3, "poll_s": 0.05, "lease_s": 600}}
    with running_gateway(cfg) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        f = client.files.create(file=("g.jsonl", _jsonl([_line(f"g{i}", "slow", "q") for i in range(6)])),
                                purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.time() + 10
        while True:
            with sqlite3.connect(db) as conn:
                running = conn.execute("SELECT COUNT(*) FROM batch_lines WHERE state = 'running'").fetchone()[0]
            if running == 3:
                break
            assert time.time() < deadline
            time.sleep(0.05)
    # stopped mid-line: with a 10-minute lease, only an explicit hand-back lets another replica go on now
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT state, COUNT(*) FROM batch_lines WHERE batch_id = ? GROUP BY state",
                                   (b.id,)).fetchall())
        attempts = {r[0] for r in conn.execute("SELECT attempts FROM batch_lines").fetchall()}
    assert states == {"pending": 6} and attempts == {0}
