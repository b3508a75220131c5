"""A loopback fake OpenAI (and Azure OpenAI) upstream that records what it receives and misbehaves on demand.

Start it on 127.0.0.1 with a free port, in either kind of test::

    async with FakeOpenAI() as up:          # async test: runs in the current event loop
        ...
    with FakeOpenAI() as up:                # sync test: runs in a background thread with its own loop
        ...

    # a pytest fixture, if you want one:
    @pytest.fixture
    async def upstream():
        async with FakeOpenAI() as up:
            yield up

Where to point clients:
    up.url        "http://127.0.0.1:PORT/v1"   api_base for openai / openai_compatible deployments
    up.base_url   "http://127.0.0.1:PORT"      api_base for Azure (classic deployment URLs), and
                  up.base_url + "/openai/v1"   for the Azure v1 path

What it answers (JSON, OpenAI-shaped, deterministic):
    POST .../chat/completions   (/v1/…, /openai/v1/…, /openai/deployments/{dep}/…?api-version=…)
        content "echo: <last user text>" (or `up.reply`), `n` choices, usage with
        completion_tokens_details.reasoning_tokens from `up.reasoning_tokens[reasoning_effort]`
        and prompt_tokens_details.cached_tokens = `up.cached_tokens`; a tool call (arguments built
        from the tool's JSON schema) when `tools` are given, tool_choice is not "none" and the last
        message is not a tool result. Streaming: role chunk, one chunk per word, finish chunk, the
        usage chunk only when stream_options.include_usage, then [DONE]; `up.chunk_delay` seconds
        between chunks. Azure classic paths need `api-version` (404 otherwise) and answer with
        model = the deployment name.
    POST .../responses          a Responses API `response` object; with `stream: true` OpenAI's event
        stream for it (created, in_progress, item/part added, one output_text.delta per word, the
        done events, response.completed with usage); faults as for chat streams, `error_event`
        sending the Responses `error` event.
    GET  .../models, .../models/{id}   from `up.models`.
    `up.api_key = "k"` makes every call without `Authorization: Bearer k` or `api-key: k` a 401.

Recording: `up.requests` is a list of `RecordedRequest(method, path, query, headers, body, raw, peer)`
(header names lower-cased, `body` parsed JSON or None); `up.last` is the latest; `up.clear()` forgets
requests and faults.

Misbehaving: `up.fail_next(kind, count=1, path=None, **params)` makes the next `count` requests
(whose path contains `path`, if given) fail; `up.fail_every(kind, n, path=None, **params)` makes every
n-th such request fail until `up.clear_faults()`. Kinds and their params:
    "429"            429 rate_limit_error with `Retry-After: retry_after` (default 1) and, if given,
                     `retry-after-ms: retry_after_ms`; also x-ratelimit-* headers
    "500", "502", "503", "504", or "status" (status=N, body=dict|bytes)   an error status
    "content_filter" Azure's 400 for a filtered prompt (code content_filter, innererror)
    "hang"           accept the request and never answer (for `seconds`, default 3600)
    "slow"           answer normally after `seconds` (default 1.0)
    "reset"          reset the TCP connection (RST) before answering
    "malformed"      200 with a truncated JSON body; in a stream, a broken JSON chunk after `after` chunks
    "html"           200 with an HTML body (a proxy's error page)
    "cut"            streams: `after` chunks (default 2), then RST; non-stream: half the body, then RST
    "stall"          streams: `after` chunks (default 2), then silence for `seconds` (default 3600),
                     then the rest; non-stream: headers, then silence, then the body
    "truncate"       streams: `after` chunks, then a clean end of the body (no finish_reason, no [DONE])
    "no_done"        streams: everything but the final `data: [DONE]` (hosts that omit it)
    "error_event"    streams: `after` chunks, then `data: {"error": {...}}` (type `error_type`,
                     default server_error) and the end of the stream
Faults are checked in order: queued `fail_next` faults first, then `fail_every` rules.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
from aiohttp import web

_IDS = itertools.count(1)  # response ids stay unique across `clear()` (the gateway stores them by id)

REASONING_TOKENS = {"none": 0, "minimal": 8, "low": 32, "medium": 128, "high": 512}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw: bytes
    peer: tuple[str, int] | None = None  # the client's address: same port = same keep-alive connection


@dataclass
class _Fault:
    kind: str
    params: dict[str, Any]
    path: str | None = None
    every: int = 0  # 0: one-shot (fail_next); n: every n-th matching request
    seen: int = 0


@dataclass
class FakeOpenAI:
    """See the module docstring. All attributes may be changed while the server runs."""

    host: str = "127.0.0.1"
    port: int = 0
    reply: str | None = None
    models: list[str] = field(default_factory=lambda: ["gpt-4o-mini", "gpt-4o", "o3-mini", "o1-mini"])
    api_key: str | None = None
    reasoning_tokens: dict[str, int] = field(default_factory=lambda: dict(REASONING_TOKENS))
    cached_tokens: int = 0
    chunk_delay: float = 0.0
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ control API

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    def fail_next(self, kind: str | int, count: int = 1, *, path: str | None = None, **params: Any) -> None:
        with self._lock:
            self._faults.extend(_Fault(str(kind), params, path) for _ in range(count))

    def fail_every(self, kind: str | int, n: int, *, path: str | None = None, **params: Any) -> None:
        with self._lock:
            self._faults.append(_Fault(str(kind), params, path, every=max(1, n)))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def clear(self) -> None:
        self.clear_faults()
        self.requests.clear()

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if f.path is not None and f.path not in path:
                    continue
                if not f.every:
                    self._faults.remove(f)
                    return f
            for f in self._faults:
                if f.every and (f.path is None or f.path in path):
                    f.seen += 1
                    if f.seen % f.every == 0:
                        return f
        return None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> FakeOpenAI:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> Self:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as e:  # noqa: BLE001 - surfaced to the caller below
                error.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread_loop = loop
        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait(10)
        if error:
            raise error[0]
        return self

    def __exit__(self, *exc: object) -> None:
        loop, thread = self._thread_loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._thread_loop = None

    # ------------------------------------------------------------ HTTP handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        path = request.path
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(RecordedRequest(request.method, path, dict(request.query),
                                             {k.lower(): v for k, v in request.headers.items()}, body, raw,
                                             tuple(peer[:2]) if peer else None))
        if self.api_key is not None:
            auth = request.headers.get("Authorization", "")
            if auth != f"Bearer {self.api_key}" and request.headers.get("api-key") != self.api_key:
                return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        azure_dep = None
        if path.startswith("/openai/deployments/"):
            if "api-version" not in request.query:
                return _error(404, "Resource not found", None, "404")
            azure_dep = path.split("/")[3]
        fault = self._take_fault(path)
        stream = isinstance(body, dict) and bool(body.get("stream"))
        if fault is not None:
            early = await self._early_fault(request, fault, stream)
            if early is not None:
                return early
        if request.method == "GET" and "/models" in path:
            return self._models(path)
        if request.method != "POST" or not isinstance(body, dict):
            return _error(404, f"no route for {request.method} {path}", "invalid_request_error", None)
        if path.endswith("/chat/completions"):
            model = azure_dep or body.get("model") or "unknown"
            if stream:
                return await self._stream(request, self._chunks(body, model), fault)
            return await self._respond(request, self._completion(body, model), fault)
        if path.endswith("/responses"):
            if stream:
                return await self._stream(request, self._response_events(body, azure_dep), fault, responses=True)
            return await self._respond(request, self._response_obj(body, azure_dep), fault)
        return _error(404, f"no route for POST {path}", "invalid_request_error", None)

    async def _early_fault(self, request: web.Request, f: _Fault, stream: bool) -> web.StreamResponse | None:
        k, p = f.kind, f.params
        if k == "429":
            headers = {"Retry-After": str(p.get("retry_after", 1)), "x-ratelimit-remaining-requests": "0",
                       "x-ratelimit-reset-requests": "1s", "x-ratelimit-limit-requests": "500"}
            if "retry_after_ms" in p:
                headers["retry-after-ms"] = str(p["retry_after_ms"])
            return _error(429, "Rate limit reached for requests", "rate_limit_error", "rate_limit_exceeded", headers)
        if k.isdigit() or k == "status":
            status = int(p.get("status", 500)) if k == "status" else int(k)
            if "body" in p:
                b = p["body"]
                return web.Response(status=status, body=b if isinstance(b, bytes) else orjson.dumps(b),
                                    content_type="application/json")
            return _error(status, f"The server had an error processing your request ({status}).",
                          "server_error" if status >= 500 else "invalid_request_error", None)
        if k == "content_filter":
            return web.Response(status=400, content_type="application/json", body=orjson.dumps({"error": {
                "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                           "management policy.", "type": None, "param": "prompt", "code": "content_filter",
                "status": 400, "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
                    "hate": {"filtered": False, "severity": "safe"},
                    "violence": {"filtered": True, "severity": "medium"}}}}}))
        if k == "hang":
            await asyncio.sleep(float(p.get("seconds", 3600)))
            return _error(504, "the fake upstream hung", "server_error", None)
        if k == "slow":
            await asyncio.sleep(float(p.get("seconds", 1.0)))
            return None
        if k == "reset":
            _reset(request)
            return web.Response(status=500)
        if k == "html":
            return web.Response(status=200, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        if k == "malformed" and not stream:
            return web.Response(status=200, body=b'{"id": "chatcmpl-broken", "choices": [', content_type="application/json")
        return None  # cut / stall / error_event / malformed(stream) happen while answering

    async def _respond(self, request: web.Request, obj: dict[str, Any], f: _Fault | None) -> web.StreamResponse:
        data = orjson.dumps(obj)
        headers = {"x-request-id": f"req_fake{len(self.requests)}", "openai-processing-ms": "1",
                   "x-ratelimit-remaining-requests": "499", "x-ratelimit-reset-requests": "120ms"}
        if f is not None and f.kind in ("cut", "stall"):
            resp = web.StreamResponse(status=200, headers=headers)
            resp.content_type = "application/json"
            resp.content_length = len(data)
            await resp.prepare(request)
            if f.kind == "stall":
                await asyncio.sleep(float(f.params.get("seconds", 3600)))
                await resp.write(data)
                await resp.write_eof()
                return resp
            await resp.write(data[: len(data) // 2])
            await asyncio.sleep(0.01)
            _reset(request)
            return resp
        return web.Response(body=data, headers=headers, content_type="application/json")

    async def _stream(self, request: web.Request, chunks: list[bytes], f: _Fault | None, *,
                      responses: bool = False) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache", "x-request-id": "req_fakestream"})
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        after = int(f.params.get("after", 2)) if f is not None else -1
        if f is not None and f.kind == "no_done":
            after = len(chunks) - 1
        for i, chunk in enumerate(chunks):
            if i == after:
                assert f is not None
                if f.kind == "cut":
                    await asyncio.sleep(0.01)
                    _reset(request)
                    return resp
                if f.kind == "stall":
                    await asyncio.sleep(float(f.params.get("seconds", 3600)))
                elif f.kind == "malformed":
                    await resp.write(b'data: {"id": "chatcmpl-x", "choices": [{"ind\n\n')
                elif f.kind == "truncate" or (f.kind == "no_done" and chunk == b"data: [DONE]\n\n"):
                    await resp.write_eof()
                    return resp
                elif f.kind == "error_event" and responses:  # the Responses API's `error` event
                    err = {"type": "error", "code": f.params.get("code", "server_error"), "param": None,
                           "message": "The server had an error while processing your request.", "sequence_number": i}
                    await resp.write(b"event: error\ndata: " + orjson.dumps(err) + b"\n\n")
                    await resp.write_eof()
                    return resp
                elif f.kind == "error_event":
                    err = {"error": {"message": "The server had an error while processing your request.",
                                     "type": f.params.get("error_type", "server_error"), "param": None,
                                     "code": f.params.get("code")}}
                    await resp.write(b"data: " + orjson.dumps(err) + b"\n\n")
                    await resp.write_eof()
                    return resp
            if self.chunk_delay and i:
                await asyncio.sleep(self.chunk_delay)
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    # ------------------------------------------------------------ bodies

    def _models(self, path: str) -> web.Response:
        tail = path.rsplit("/models", 1)[1].strip("/")
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in self.models]
        if tail:
            for m in data:
                if m["id"] == tail:
                    return web.json_response(m, dumps=lambda o: orjson.dumps(o).decode())
            return _error(404, f"The model '{tail}' does not exist", "invalid_request_error", "model_not_found")
        return web.json_response({"object": "list", "data": data}, dumps=lambda o: orjson.dumps(o).decode())

    def _answer(self, body: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]] | None]:
        """(content, tool_calls) for this request."""
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        tools = body.get("tools") or []
        choice = body.get("tool_choice", "auto")
        if tools and choice != "none" and last.get("role") != "tool":
            tool = tools[0]
            if isinstance(choice, dict):
                name = (choice.get("function") or {}).get("name")
                tool = next((t for t in tools if (t.get("function") or {}).get("name") == name), tool)
            fn = tool.get("function") or {}
            args = _example(fn.get("parameters") or {"type": "object"})
            return None, [{"id": f"call_fake{len(self.requests)}", "type": "function",
                           "function": {"name": fn.get("name", "tool"), "arguments": orjson.dumps(args).decode()}}]
        if self.reply is not None:
            return self.reply, None
        return f"echo: {_text(last.get('content'))}"[:400], None

    def _usage(self, body: dict[str, Any], completion_words: int) -> dict[str, Any]:
        prompt = sum(4 + len(_text(m.get("content")).split()) for m in body.get("messages") or []) or 1
        reasoning = self.reasoning_tokens.get(str(body.get("reasoning_effort")), 0) if body.get("reasoning_effort") else 0
        completion = completion_words + reasoning
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": min(self.cached_tokens, prompt), "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}

    def _completion(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        content, calls = self._answer(body)
        n = int(body.get("n") or 1)
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
        if calls:
            message["tool_calls"] = calls
        choices = [{"index": i, "message": message, "logprobs": None,
                    "finish_reason": "tool_calls" if calls else "stop"} for i in range(n)]
        words = len((content or "").split()) + (8 if calls else 0)
        return {"id": f"chatcmpl-fake{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": choices, "usage": self._usage(body, words * n),
                "service_tier": "default", "system_fingerprint": "fp_fake"}

    def _chunks(self, body: dict[str, Any], model: str) -> list[bytes]:
        content, calls = self._answer(body)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": f"chatcmpl-fake{len(self.requests)}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model, "service_tier": "default",
                "system_fingerprint": "fp_fake"}
        if include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            c = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return b"data: " + orjson.dumps(c) + b"\n\n"

        out = [chunk({"role": "assistant", "content": "" if not calls else None, "refusal": None})]
        if calls:
            call = calls[0]
            out.append(chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                              "function": {"name": call["function"]["name"], "arguments": ""}}]}))
            args = call["function"]["arguments"]
            for i in range(0, len(args), 8):
                out.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + 8]}}]}))
        else:
            for i, w in enumerate((content or "").split(" ")):
                out.append(chunk({"content": w if i == 0 else " " + w}))
        out.append(chunk({}, "tool_calls" if calls else "stop"))
        if include_usage:
            words = len((content or "").split()) + (8 if calls else 0)
            out.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": self._usage(body, words)}) + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        return out

    def _response_obj(self, body: dict[str, Any], azure_dep: str | None) -> dict[str, Any]:
        inp = body.get("input")
        text = inp if isinstance(inp, str) else _text((inp or [{}])[-1].get("content")) if isinstance(inp, list) else ""
        content = self.reply if self.reply is not None else f"echo: {text}"[:400]
        effort = (body.get("reasoning") or {}).get("effort")
        reasoning = self.reasoning_tokens.get(effort, 0) if effort else 0
        in_tok = 4 + len(text.split()) + len(str(body.get("instructions") or "").split())
        out_tok = len(content.split()) + reasoning
        return {"id": f"resp_fake{len(self.requests)}_{next(_IDS)}", "object": "response", "created_at": int(time.time()),
                "status": "completed", "error": None, "incomplete_details": None,
                "model": azure_dep or body.get("model"),
                "output": [{"type": "message", "id": "msg_fake", "role": "assistant", "status": "completed",
                            "content": [{"type": "output_text", "text": content, "annotations": []}]}],
                "usage": {"input_tokens": in_tok, "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens": out_tok, "output_tokens_details": {"reasoning_tokens": reasoning},
                          "total_tokens": in_tok + out_tok}}


    def _response_events(self, body: dict[str, Any], azure_dep: str | None) -> list[bytes]:
        """The Responses API's stream for `_response_obj`: created, in_progress, the message item with
        one `response.output_text.delta` per word, the done events, then `response.completed` (with
        usage); each as `event: <type>` + `data: {json}` with a `sequence_number`, no [DONE]."""
        final = self._response_obj(body, azure_dep)
        msg = final["output"][0]
        text = msg["content"][0]["text"]
        start = {**final, "status": "in_progress", "output": [], "usage": None}
        item0 = {**msg, "status": "in_progress", "content": []}
        part0 = {"type": "output_text", "text": "", "annotations": []}
        ids = {"item_id": msg["id"], "output_index": 0}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": start},
            {"type": "response.in_progress", "response": start},
            {"type": "response.output_item.added", "output_index": 0, "item": item0},
            {"type": "response.content_part.added", **ids, "content_index": 0, "part": part0},
        ]
        events += [{"type": "response.output_text.delta", **ids, "content_index": 0, "delta": w if i == 0 else " " + w}
                   for i, w in enumerate(text.split(" "))]
        events += [
            {"type": "response.output_text.done", **ids, "content_index": 0, "text": text},
            {"type": "response.content_part.done", **ids, "content_index": 0, "part": msg["content"][0]},
            {"type": "response.output_item.done", "output_index": 0, "item": msg},
            {"type": "response.completed", "response": final},
        ]
        return [b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps({**e, "sequence_number": n}) + b"\n\n"
                for n, e in enumerate(events)]


def _error(status: int, message: str, etype: str | None, code: str | None,
           headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), headers=headers, content_type="application/json")


def _reset(request: web.Request) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed upstream or proxy would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _example(schema: dict[str, Any]) -> Any:
    """A small value valid for simple JSON schemas (objects, arrays, scalars, enum, const)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    t = schema.get("type", "object")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    if t == "object":
        return {k: _example(v) for k, v in (schema.get("properties") or {}).items()}
    if t == "array":
        return [_example(schema.get("items") or {"type": "string"})] * int(schema.get("minItems", 1))
    return {"string": "x", "integer": 1, "number": 1.5, "boolean": True, "null": None}.get(t, "x")
