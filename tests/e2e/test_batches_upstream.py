"""`batches.forward_upstream`: a batch for an OpenAI model is sent to the upstream's own Batch API. The
loopback fake below implements Files + Batches and CHECKS what it receives (multipart purpose=batch,
JSONL lines with custom_id / POST / url == endpoint / the upstream model name, completion_window 24h,
the bearer key). Results come back under the client's custom ids, billed once each at the batch price."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from typing import Any, Self

import openai
import orjson
import pytest
from aiohttp import web

from tests.helpers import running_gateway, submit_batch, wait_batch


class FakeOpenAIBatches:
    def __init__(self, key: str, polls_to_finish: int = 2) -> None:
        self.key = key
        self.polls_to_finish = polls_to_finish
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.problems: list[str] = []
        self.created = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0

    # ---- lifecycle (own loop in a thread: the SDK tests are synchronous)
    def __enter__(self) -> Self:
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files/{id}/content", self.content)
        app.router.add_post("/v1/batches", self.create)
        app.router.add_get("/v1/batches", self.list)
        app.router.add_get("/v1/batches/{id}", self.get)
        app.router.add_post("/v1/batches/{id}/cancel", self.cancel)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            self.problems.append(f"bad auth on {request.path}")
            raise web.HTTPUnauthorized()

    # ---- endpoints
    async def upload(self, request: web.Request) -> web.Response:
        self._auth(request)
        form = await request.post()
        if form.get("purpose") != "batch":
            self.problems.append(f"purpose {form.get('purpose')!r}")
        content = form["file"].file.read()
        fid = f"file-up{len(self.files)}"
        self.files[fid] = content
        return web.json_response({"id": fid, "object": "file", "bytes": len(content), "purpose": "batch"})

    async def content(self, request: web.Request) -> web.Response:
        self._auth(request)
        return web.Response(body=self.files[request.match_info["id"]])

    async def create(self, request: web.Request) -> web.Response:
        self._auth(request)
        body = await request.json()
        if body.get("completion_window") != "24h" or body.get("endpoint") != "/v1/chat/completions":
            self.problems.append(f"bad create body {body}")
        for raw in self.files[body["input_file_id"]].splitlines():
            line = json.loads(raw)
            if line.get("method") != "POST" or line.get("url") != body["endpoint"] or not line.get("custom_id"):
                self.problems.append(f"bad line {line}")
            if line["body"].get("model") != "gpt-4o-mini-2024-07-18":
                self.problems.append(f"model not rewritten to the upstream name: {line['body'].get('model')}")
        self.created += 1
        bid = f"batch_up{self.created}"
        self.batches[bid] = {"id": bid, "object": "batch", "status": "in_progress", "endpoint": body["endpoint"],
                             "input_file_id": body["input_file_id"], "metadata": body.get("metadata"),
                             "request_counts": {"total": 0, "completed": 0, "failed": 0}, "polls": 0,
                             "output_file_id": None, "error_file_id": None}
        return web.json_response(self.batches[bid])

    async def list(self, request: web.Request) -> web.Response:
        self._auth(request)
        return web.json_response({"object": "list", "data": list(self.batches.values())})

    async def get(self, request: web.Request) -> web.Response:
        self._auth(request)
        b = self.batches[request.match_info["id"]]
        b["polls"] += 1
        if b["status"] == "in_progress" and b["polls"] >= self.polls_to_finish:
            self._finish(b)
        return web.json_response(b)

    async def cancel(self, request: web.Request) -> web.Response:
        self._auth(request)
        b = self.batches[request.match_info["id"]]
        b["status"] = "cancelled"
        return web.json_response(b)

    def _finish(self, b: dict[str, Any]) -> None:
        out, err = [], []
        for i, raw in enumerate(self.files[b["input_file_id"]].splitlines()):
            line = json.loads(raw)
            text = line["body"]["messages"][-1]["content"]
            if "fail" in text:
                err.append({"id": f"br_{i}", "custom_id": line["custom_id"], "response": {
                    "status_code": 400, "request_id": f"req_{i}",
                    "body": {"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}}},
                    "error": None})
                continue
            out.append({"id": f"br_{i}", "custom_id": line["custom_id"], "error": None, "response": {
                "status_code": 200, "request_id": f"req_{i}", "body": {
                    "id": f"chatcmpl-{i}", "object": "chat.completion", "created": 1, "model": line["body"]["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                 "message": {"role": "assistant", "content": f"upstream: {text}"}}],
                    "usage": {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}}}})
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                fid = f"file-res{len(self.files)}"
                self.files[fid] = b"\n".join(orjson.dumps(r) for r in rows) + b"\n"
                b[name] = fid
        b["status"] = "completed"
        b["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("fwd") / "tiergate.db"
    with FakeOpenAIBatches(key="sk-batch-up") as up:
        cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [
            {"provider": "openai", "api_base": up.url, "api_key": "env:TG_FWD_KEY", "model": "gpt-4o-mini-2024-07-18"}]}],
            "storage": f"sqlite:///{db}", "batches": {"forward_upstream": True, "upstream_poll_s": 0.1, "poll_s": 0.1}}
        with running_gateway(cfg, env={"TG_FWD_KEY": "sk-batch-up"}) as url:
            yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0), up, db


def test_forwarded_batch_billed_at_batch_price(env):
    client, up, db = env
    lines = [{"custom_id": f"f{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": t}]}}
             for i, t in enumerate(["alpha", "beta", "please fail"])]
    b = wait_batch(client, submit_batch(client, lines).id, "completed")
    assert up.problems == [] and up.created == 1
    assert (b.request_counts.completed, b.request_counts.failed) == (2, 1)
    out = {json.loads(x)["custom_id"]: json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()}
    assert out["f1"]["response"]["body"]["choices"][0]["message"]["content"] == "upstream: beta"
    assert out["f1"]["response"]["request_id"].startswith("breq_")
    err = json.loads(client.files.content(b.error_file_id).text)
    assert err["custom_id"] == "f2" and err["response"]["status_code"] == 400
    time.sleep(0.5)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT cost_usd FROM ledger WHERE batch_id = ? AND status = 'ok'", (b.id,)).fetchall()
    # gpt-4o-mini: $0.15 in / $0.60 out per 1M tokens; 1000 + 1000 tokens at half price = $0.000375
    assert len(rows) == 2 and all(abs(r[0] - 0.000375) < 1e-9 for r in rows), rows


def test_forwarded_batch_refuses_tiergate_options_it_would_drop(env):
    """A forwarded line goes upstream without its `tiergate` options, so an option the gateway refuses
    on chat (routing-only with an explicit model, unknown name) fails the file, naming the line and
    `body.tiergate.<option>`, instead of being dropped; options the gateway accepts still forward."""
    client, up, _ = env
    created = up.created
    lines = [{"custom_id": f"o{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra}}
             for i, extra in enumerate([{}, {"tiergate": {"quality_target": 0.9}}, {"tiergate": {"cache": True}},
                                        {"tiergate": {"no_such_option": 1}}])]
    f = client.files.create(file=("in.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.status == "failed" and up.created == created  # nothing was sent upstream
    errs = {e.line: e for e in b.errors.data}
    assert sorted(errs) == [2, 4]
    assert errs[2].param == "body.tiergate.quality_target" and errs[2].code == "unsupported_parameter"
    assert "auto" in errs[2].message and "Batch API" in errs[2].message
    assert errs[4].param == "body.tiergate.no_such_option"
    # without the refused options the same file is forwarded, `tiergate.cache` and all
    f = client.files.create(file=("ok.jsonl", "\n".join(map(json.dumps, lines[:3:2])).encode()), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.status != "failed" and b.errors is None
    deadline = time.time() + 20
    while (b := client.batches.retrieve(b.id)).status != "completed":
        assert time.time() < deadline, b
        time.sleep(0.1)
    assert up.created == created + 1 and b.request_counts.completed == 2
