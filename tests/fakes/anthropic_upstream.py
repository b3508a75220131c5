"""A loopback fake of the Anthropic Messages API that CHECKS the wire format it receives.

Every request is validated the way the real API would (headers, required `max_tokens`, user/assistant
alternation starting with user, block types per role, tool_result ids matching the previous
tool_use, temperature range, thinking budget rules). A violation is answered with Anthropic's
400 `invalid_request_error` body and recorded in `problems`, so tests can assert the list is empty.

Answers: with tools and no tool_result in the last turn -> a `tool_use` of the first tool (input
filled from the schema's required properties); otherwise text `echo: <last user text>`. With
thinking enabled a thinking block comes first (its text names the last user text; its signature is
derived from that text, and a thinking block sent back is refused unless its signature matches, as the
real API refuses an altered one), then, with `redacted_thinking` set, a `redacted_thinking` block
(its `data` self-checking the same way). Assistant turns sent back are checked as the real API does:
thinking blocks first, never last, and with thinking enabled a tool-using turn must start with one.
Failures on demand: `fail_next` holds (status,
error type) answers for the next requests; `stream_error_after` sends an `error` event mid-stream;
`cut_after` drops the connection mid-stream. Thinking blocks sent back with fields the API does not
take (e.g. a stream delta's `index`) are refused. With `tool_choice: any` after tool results, a
`json_output_*` tool (the gateway's json_schema answer) is called. `empty_first_json_delta` streams
tool inputs as the real API does (an empty `input_json_delta` first; only that for `{}`).

Message Batches (`/v1/messages/batches`: create, list, retrieve, cancel, results): every request's
`custom_id` (1-64 of `[A-Za-z0-9_-]`, unique) and `params` (as for /v1/messages, no `stream`) are
checked the same way, and each create body is kept in `batch_creates`. A batch ends after
`batch_polls_to_end` retrievals; its results come back in reverse request order: `errored` for a last
user text containing "fail", `expired` for "expire", `canceled` for every request of a cancelled batch,
else `succeeded` with the answer above. `lose_next_batch_create` accepts a batch and answers 500, as
when the connection drops after Anthropic has taken it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import orjson
from aiohttp import web

ALLOWED_TOP = {
    "model", "max_tokens", "messages", "system", "temperature", "top_p", "top_k", "stop_sequences",
    "stream", "metadata", "tools", "tool_choice", "thinking", "service_tier",
}
IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
THINKING_FIELDS = {"thinking": {"type", "thinking", "signature"}, "redacted_thinking": {"type", "data"}}


def sign(text: str) -> str:
    """The fake's thinking-block signature (the real one is opaque; this one lets altered thinking be caught)."""
    return "sig-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def redacted_data(n: int) -> str:
    return f"redacted-{n}-{sign(str(n))}"


def _redacted_ok(data: Any) -> bool:
    parts = data.split("-", 2) if isinstance(data, str) else []
    return len(parts) == 3 and parts[0] == "redacted" and parts[2] == sign(parts[1])


def check_request(body: Any, headers: dict[str, str], api_key: str, signed: bool = False) -> list[str]:
    """Everything wrong with this request, as the real API would refuse it. `signed`: thinking and
    redacted_thinking blocks must be ones this fake issued, unaltered (the server always checks this)."""
    p: list[str] = []
    if headers.get("x-api-key") != api_key:
        p.append("x-api-key missing or wrong")
    if headers.get("anthropic-version") != "2023-06-01":
        p.append(f"anthropic-version must be 2023-06-01, got {headers.get('anthropic-version')!r}")
    if "authorization" in headers:
        p.append("unexpected Authorization header (OpenAI style)")
    if not isinstance(body, dict):
        return p + ["body must be an object"]
    for k in sorted(set(body) - ALLOWED_TOP):
        p.append(f"{k}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        p.append("model: field required")
    mt = body.get("max_tokens")
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        p.append("max_tokens: field required (positive integer)")
    sysm = body.get("system")
    if sysm is not None and not isinstance(sysm, (str, list)):
        p.append("system: must be a string or list of text blocks")
    t = body.get("temperature")
    if t is not None and not (isinstance(t, (int, float)) and 0 <= t <= 1):
        p.append("temperature: must be between 0 and 1")
    ss = body.get("stop_sequences")
    if ss is not None and not (isinstance(ss, list) and all(isinstance(s, str) for s in ss)):
        p.append("stop_sequences: must be a list of strings")
    tool_names = set()
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not tool.get("name") or not isinstance(tool.get("input_schema"), dict):
            p.append(f"tools.{i}: name and input_schema are required")
        elif set(tool) - {"name", "description", "input_schema", "cache_control"}:
            p.append(f"tools.{i}: unexpected keys {sorted(set(tool) - {'name', 'description', 'input_schema'})}")
        else:
            tool_names.add(tool["name"])
    tc = body.get("tool_choice")
    if tc is not None:
        if not isinstance(tc, dict) or tc.get("type") not in ("auto", "any", "tool", "none"):
            p.append("tool_choice: invalid")
        elif tc["type"] == "tool" and tc.get("name") not in tool_names:
            p.append("tool_choice.name: no such tool")
    th = body.get("thinking")
    if th is not None:
        if th.get("type") != "enabled" or not isinstance(th.get("budget_tokens"), int):
            p.append("thinking: must be {type: enabled, budget_tokens}")
        else:
            if th["budget_tokens"] < 1024:
                p.append("thinking.budget_tokens: must be >= 1024")
            if isinstance(mt, int) and th["budget_tokens"] >= mt:
                p.append("max_tokens must be greater than thinking.budget_tokens")
        for k in ("temperature", "top_k", "top_p"):
            if k in body:
                p.append(f"{k} may not be set with thinking enabled")
        if isinstance(tc, dict) and tc.get("type") in ("any", "tool"):
            p.append("tool_choice must be auto or none with thinking")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return p + ["messages: at least one message is required"]
    prev_tool_ids: set[str] = set()
    for i, m in enumerate(msgs):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            p.append(f"messages.{i}.role: must be user or assistant, got {role!r}")
            continue
        if i == 0 and role != "user":
            p.append("messages: first message must use the user role")
        if i > 0 and msgs[i - 1].get("role") == role:
            p.append(f"messages.{i}: roles must alternate between user and assistant")
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list) or not blocks:
            p.append(f"messages.{i}.content: must be a non-empty string or list")
            continue
        ids_here: set[str] = set()
        for j, b in enumerate(blocks):
            bt = b.get("type") if isinstance(b, dict) else None
            where = f"messages.{i}.content.{j}"
            if bt == "text":
                if not isinstance(b.get("text"), str):
                    p.append(f"{where}.text: required")
            elif bt == "image":
                src = b.get("source") or {}
                if src.get("type") == "base64":
                    if src.get("media_type") not in IMAGE_TYPES or not src.get("data"):
                        p.append(f"{where}.source: bad base64 image")
                elif src.get("type") == "url":
                    if not str(src.get("url", "")).startswith(("http://", "https://")):
                        p.append(f"{where}.source.url: bad url")
                else:
                    p.append(f"{where}.source.type: base64 or url")
            elif bt == "tool_use":
                if role != "assistant":
                    p.append(f"{where}: tool_use only in assistant turns")
                if not isinstance(b.get("input"), dict) or not b.get("id") or not b.get("name"):
                    p.append(f"{where}: tool_use needs id, name and an input object")
                ids_here.add(str(b.get("id")))
            elif bt == "tool_result":
                if role != "user":
                    p.append(f"{where}: tool_result only in user turns")
                if b.get("tool_use_id") not in prev_tool_ids:
                    p.append(f"{where}.tool_use_id: no matching tool_use in the previous assistant turn")
            elif bt in ("thinking", "redacted_thinking"):
                if role != "assistant":
                    p.append(f"{where}: thinking only in assistant turns")
                if bt == "thinking" and not b.get("signature"):
                    p.append(f"{where}.signature: required")
                elif bt == "thinking" and signed and (not isinstance(b.get("thinking"), str)
                                                      or b["signature"] != sign(b["thinking"])):
                    p.append(f"{where}: Invalid `signature` in `thinking` block")
                if bt == "redacted_thinking" and signed and not _redacted_ok(b.get("data")):
                    p.append(f"{where}.data: Invalid `data` in `redacted_thinking` block")
                for extra in sorted(set(b) - THINKING_FIELDS[bt]):
                    p.append(f"{where}.{bt}.{extra}: Extra inputs are not permitted")
            else:
                p.append(f"{where}.type: unknown block type {bt!r}")
        kinds = [b.get("type") if isinstance(b, dict) else None for b in blocks]
        thinking_kinds = ("thinking", "redacted_thinking")
        if role == "assistant" and any(k in thinking_kinds for k in kinds) and kinds[0] not in thinking_kinds:
            p.append(f"messages.{i}.content.0: If an assistant message contains any thinking blocks, the first "
                     f"block must be `thinking` or `redacted_thinking`. Found `{kinds[0]}`.")
        if role == "assistant" and kinds[-1] in thinking_kinds:
            p.append(f"messages.{i}: The final block in an assistant message cannot be `{kinds[-1]}`.")
        if role == "assistant" and th is not None and ids_here and blocks[0].get("type") not in (
                "thinking", "redacted_thinking"):
            p.append(f"messages.{i}: with thinking, an assistant turn using tools must start with a thinking block")
        prev_tool_ids = ids_here
    return p


def _last_user_text(msgs: list[dict[str, Any]]) -> str:
    for m in reversed(msgs):
        if m.get("role") == "user":
            c = m["content"]
            if isinstance(c, str):
                return c
            return " ".join(b.get("text", "") for b in c if b.get("type") == "text")
    return ""


def _fill(schema: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    props = schema.get("properties") or {}
    for name in schema.get("required") or list(props)[:1]:
        typ = (props.get(name) or {}).get("type")
        out[name] = {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}.get(typ, "test")
    return out


@dataclass
class FakeAnthropic:
    api_key: str = "sk-ant-test-key"
    cache_read: int = 0
    cache_write: int = 0
    fail_next: list[tuple[int, str]] = field(default_factory=list)
    stream_error_after: int | None = None  # send an `error` event after this many text deltas
    requests: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    batch_polls_to_end: int = 2
    redacted_thinking: bool = False  # with thinking, also answer a redacted_thinking block
    lose_next_batch_create: bool = False
    # stream a tool_use input as the real API does: one empty input_json_delta first, and for an empty
    # input ({}, a tool without parameters) nothing else
    empty_first_json_delta: bool = False
    cut_after: int | None = None  # drop the connection (no error event) after this many text deltas
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {batch, requests, polls, results}
    batch_creates: list[dict[str, Any]] = field(default_factory=list)
    batch_calls: list[str] = field(default_factory=list)  # "METHOD /path" of every batch request
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeAnthropic:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/batches", self._batch_create)
        app.router.add_get("/v1/messages/batches", self._batch_list)
        app.router.add_get("/v1/messages/batches/{id}", self._batch_get)
        app.router.add_post("/v1/messages/batches/{id}/cancel", self._batch_cancel)
        app.router.add_get("/v1/messages/batches/{id}/results", self._batch_results)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------ the endpoint

    @staticmethod
    def _err(status: int, typ: str, message: str) -> web.Response:
        body = {"type": "error", "error": {"type": typ, "message": message}, "request_id": "req_fake"}
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                            headers={"request-id": "req_fake"})

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        msgs = body["messages"]
        content: list[dict[str, Any]] = []
        if body.get("thinking"):
            thought = f"Let me think step by step about this: {_last_user_text(msgs)[:60]!r}."
            content.append({"type": "thinking", "thinking": thought, "signature": sign(thought)})
            if self.redacted_thinking:
                content.append({"type": "redacted_thinking", "data": redacted_data(len(self.requests))})
        last = msgs[-1]
        last_has_result = isinstance(last["content"], list) and any(
            b.get("type") == "tool_result" for b in last["content"])
        tools = body.get("tools") or []
        tc = body.get("tool_choice") or {}
        json_tool = next((t for t in tools if t["name"].startswith("json_output_")), None)
        if tools and last_has_result and tc.get("type") == "any" and json_tool is not None:
            # a tool call is required after the results: the final answer through the json_schema tool
            content.append({"type": "tool_use", "id": f"toolu_{len(self.requests)}", "name": json_tool["name"],
                            "input": _fill(json_tool["input_schema"])})
            stop = "tool_use"
        elif tools and not last_has_result and tc.get("type") != "none":
            tool = next((t for t in tools if t["name"] == tc.get("name")), tools[0])
            content.append({"type": "tool_use", "id": f"toolu_{len(self.requests)}", "name": tool["name"],
                            "input": _fill(tool["input_schema"])})
            stop = "tool_use"
        else:
            text = "echo: " + _last_user_text(msgs)
            words = text.split(" ")
            if len(words) > body["max_tokens"]:
                text, stop = " ".join(words[: body["max_tokens"]]), "max_tokens"
            else:
                stop = "end_turn"
            content.append({"type": "text", "text": text})
        n_in = sum(len(str(m["content"]).split()) for m in msgs) + len(str(body.get("system", "")).split())
        n_out = sum(len(str(b.get("text", b.get("thinking", b.get("input", "")))).split()) for b in content)
        return {"id": f"msg_fake{len(self.requests)}", "type": "message", "role": "assistant",
                "model": body["model"], "content": content, "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": n_in, "output_tokens": n_out,
                          "cache_creation_input_tokens": self.cache_write, "cache_read_input_tokens": self.cache_read}}

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.problems.append("body is not JSON")
            return self._err(400, "invalid_request_error", "body is not JSON")
        self.requests.append(body)
        problems = check_request(body, headers, self.api_key, signed=True)
        if problems:
            self.problems.extend(problems)
            status, typ = (401, "authentication_error") if "x-api-key" in problems[0] else (
                400, "invalid_request_error")
            return self._err(status, typ, "; ".join(problems))
        if self.fail_next:
            status, typ = self.fail_next.pop(0)
            return self._err(status, typ, f"fake failure {typ}")
        msg = self.answer(body)
        if not body.get("stream"):
            return web.Response(body=orjson.dumps(msg), content_type="application/json",
                                headers={"request-id": "req_fake", "anthropic-ratelimit-requests-remaining": "99"})
        return await self._stream(request, msg)

    async def _stream(self, request: web.Request, msg: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "request-id": "req_fake"})
        await resp.prepare(request)

        async def send(ev: dict[str, Any]) -> None:
            await resp.write(b"event: " + ev["type"].encode() + b"\ndata: " + orjson.dumps(ev) + b"\n\n")

        start = {**msg, "content": [], "stop_reason": None,
                 "usage": {**msg["usage"], "output_tokens": 1}}
        await send({"type": "message_start", "message": start})
        await send({"type": "ping"})
        deltas = 0
        for i, block in enumerate(msg["content"]):
            bt = block["type"]
            empty = {"text": {"type": "text", "text": ""}, "thinking": {"type": "thinking", "thinking": ""},
                     "redacted_thinking": block,
                     "tool_use": {"type": "tool_use", "id": block.get("id"), "name": block.get("name"), "input": {}}}
            await send({"type": "content_block_start", "index": i, "content_block": empty[bt]})
            if bt == "text":
                words = block["text"].split(" ")
                for k, w in enumerate(words):
                    if self.stream_error_after is not None and deltas >= self.stream_error_after:
                        await send({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                        await resp.write_eof()
                        return resp
                    if self.cut_after is not None and deltas >= self.cut_after:
                        await asyncio.sleep(0.01)
                        if request.transport is not None:
                            request.transport.abort()
                        return resp
                    await send({"type": "content_block_delta", "index": i,
                                "delta": {"type": "text_delta", "text": w if k == 0 else " " + w}})
                    deltas += 1
                    await asyncio.sleep(0)
            elif bt == "redacted_thinking":
                pass  # it comes whole in content_block_start
            elif bt == "thinking":
                await send({"type": "content_block_delta", "index": i,
                            "delta": {"type": "thinking_delta", "thinking": block["thinking"]}})
                await send({"type": "content_block_delta", "index": i,
                            "delta": {"type": "signature_delta", "signature": block["signature"]}})
            else:
                js = orjson.dumps(block["input"]).decode()
                half = len(js) // 2
                pieces = (js[:half], js[half:])
                if self.empty_first_json_delta:
                    pieces = ("",) if block["input"] == {} else ("", js[:half], js[half:])
                for piece in pieces:
                    await send({"type": "content_block_delta", "index": i,
                                "delta": {"type": "input_json_delta", "partial_json": piece}})
            await send({"type": "content_block_stop", "index": i})
        await send({"type": "message_delta", "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
                    "usage": {"output_tokens": msg["usage"]["output_tokens"]}})
        await send({"type": "message_stop"})
        await resp.write_eof()
        return resp

    # ------------------------------------------------------------ Message Batches

    def _batch_headers(self, request: web.Request) -> web.Response | None:
        self.batch_calls.append(f"{request.method} {request.path_qs}")
        headers = {k.lower(): v for k, v in request.headers.items()}
        problems = check_request({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]},
                                 headers, self.api_key)
        if problems:
            self.problems.extend(problems)
            return self._err(401, "authentication_error", "; ".join(problems))
        return None

    def _batch(self, request: web.Request) -> dict[str, Any] | None:
        return self.batches.get(request.match_info["id"])

    async def _batch_create(self, request: web.Request) -> web.Response:
        if (bad := self._batch_headers(request)) is not None:
            return bad
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = orjson.loads(await request.read())
        self.batch_creates.append(body)
        problems: list[str] = []
        if not isinstance(body, dict) or set(body) != {"requests"} or not body["requests"]:
            problems.append("body must be {requests: [...]} with at least one request")
            reqs = []
        else:
            reqs = body["requests"]
        seen: set[str] = set()
        for i, r in enumerate(reqs):
            cid = r.get("custom_id")
            if not isinstance(cid, str) or not CUSTOM_ID.fullmatch(cid):
                problems.append(f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$, got {cid!r}")
            elif cid in seen:
                problems.append(f"requests.{i}.custom_id: duplicate {cid!r}")
            seen.add(str(cid))
            if set(r) != {"custom_id", "params"}:
                problems.append(f"requests.{i}: unexpected keys {sorted(r)}")
            params = r.get("params")
            if isinstance(params, dict) and "stream" in params:
                problems.append(f"requests.{i}.params.stream: not supported in batches")
            problems += [f"requests.{i}.params.{p}" for p in check_request(params, headers, self.api_key, signed=True)]
        if problems:
            self.problems.extend(problems)
            return self._err(400, "invalid_request_error", "; ".join(problems))
        bid = f"msgbatch_fake{len(self.batches)}"
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        batch = {"id": bid, "type": "message_batch", "processing_status": "in_progress",
                 "request_counts": {"processing": len(reqs), "succeeded": 0, "errored": 0, "canceled": 0,
                                    "expired": 0},
                 "created_at": now, "ended_at": None, "expires_at": None, "cancel_initiated_at": None,
                 "archived_at": None, "results_url": None}
        self.batches[bid] = {"batch": batch, "requests": reqs, "polls": 0, "results": None}
        if self.lose_next_batch_create:
            self.lose_next_batch_create = False
            return self._err(500, "api_error", "connection lost (fake)")
        return web.json_response(batch)

    async def _batch_list(self, request: web.Request) -> web.Response:
        if (bad := self._batch_headers(request)) is not None:
            return bad
        items = [b["batch"] for b in reversed(self.batches.values())]  # newest first
        after = request.query.get("after_id")
        if after:
            ids = [b["id"] for b in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        limit = int(request.query.get("limit", 20))
        page = items[:limit]
        return web.json_response({"data": page, "has_more": len(items) > limit,
                                  "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None})

    async def _batch_get(self, request: web.Request) -> web.Response:
        if (bad := self._batch_headers(request)) is not None:
            return bad
        b = self._batch(request)
        if b is None:
            return self._err(404, "not_found_error", "no such batch")
        b["polls"] += 1
        if b["batch"]["processing_status"] == "canceling" or (
                b["batch"]["processing_status"] == "in_progress" and b["polls"] >= self.batch_polls_to_end):
            self._end(b)
        return web.json_response(b["batch"])

    async def _batch_cancel(self, request: web.Request) -> web.Response:
        if (bad := self._batch_headers(request)) is not None:
            return bad
        b = self._batch(request)
        if b is None:
            return self._err(404, "not_found_error", "no such batch")
        if b["batch"]["processing_status"] == "in_progress":
            b["batch"]["processing_status"] = "canceling"
            b["batch"]["cancel_initiated_at"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        return web.json_response(b["batch"])

    async def _batch_results(self, request: web.Request) -> web.Response:
        if (bad := self._batch_headers(request)) is not None:
            return bad
        b = self._batch(request)
        if b is None or b["results"] is None:
            return self._err(400 if b else 404, "invalid_request_error", "batch has not ended")
        return web.Response(body=b"\n".join(orjson.dumps(r) for r in reversed(b["results"])) + b"\n",
                            content_type="application/binary")

    def _end(self, b: dict[str, Any]) -> None:
        batch, results = b["batch"], []
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        for r in b["requests"]:
            text = _last_user_text(r["params"]["messages"])
            if batch["processing_status"] == "canceling":
                result: dict[str, Any] = {"type": "canceled"}
            elif "fail" in text:
                result = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "invalid_request_error", "message": "fake refusal of this request"}}}
            elif "expire" in text:
                result = {"type": "expired"}
            else:
                result = {"type": "succeeded", "message": self.answer(r["params"])}
            counts[result["type"]] += 1
            results.append({"custom_id": r["custom_id"], "result": result})
        b["results"] = results
        batch.update(processing_status="ended", request_counts=counts, ended_at=time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                     results_url=f"{self.base_url}/v1/messages/batches/{batch['id']}/results")


class FakeAnthropicThread:
    """The fake on its own event loop in a thread, for synchronous tests (the official SDK's sync client):
    `with FakeAnthropicThread(api_key) as fake: ...`."""

    def __init__(self, api_key: str) -> None:
        import threading

        self.fake = FakeAnthropic(api_key=api_key)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> FakeAnthropic:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)
        return self.fake

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
