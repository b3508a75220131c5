"""The openai provider against the loopback fake upstream: what it sends, what it returns, and how every
kind of upstream failure maps to UpstreamError (status, kind, retry hints, timeouts, scrubbed secrets)."""

from __future__ import annotations

import socket
import time

import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tiergate.providers.base import Deployment, Secret, Timeouts, UpstreamError
from tiergate.providers.http import SharedSession
from tiergate.providers.openai import OpenAIProvider
from tiergate.providers.registry import provider_class

KEY = "sk-test-4f9c2a7b1e8d6c5a3b2f0e9d"
FAST = Timeouts(connect=1.0, first_token=0.4, stream_idle=0.4, total=3.0)
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture
async def up():
    async with FakeOpenAI(api_key=KEY) as u:
        yield u


@pytest.fixture
async def sessions():
    async with SharedSession() as s:
        yield s


def make(up: FakeOpenAI, sessions: SharedSession, **kw) -> OpenAIProvider:
    dep = Deployment(id="gpt-4o-mini/0", model="gpt-4o-mini", provider=kw.pop("provider", "openai"),
                     api_base=kw.pop("api_base", up.url), api_key=kw.pop("api_key", Secret("env:K", KEY)), **kw)
    return provider_class(dep.provider)(dep, sessions)


async def collect(provider, body, timeouts=FAST):
    return [c async for c in provider.chat_stream(body, timeouts)]


def assert_no_secret(e: UpstreamError) -> None:
    assert KEY not in str(e) and KEY not in e.message
    assert all(KEY not in v for v in e.headers.values())


def test_registered_names():
    assert provider_class("openai") is OpenAIProvider
    assert provider_class("openai_compatible") is OpenAIProvider


async def test_chat_sends_bearer_and_upstream_model(up, sessions):
    p = make(up, sessions, upstream_model="gpt-4o-mini-2024-07-18", headers=(("OpenAI-Project", "proj_1"),))
    body = {**BODY, "temperature": 0.2, "some_future_field": {"x": 1}, "stream": False}
    r = await p.chat(body, FAST)
    assert r.status == 200
    assert r.body["choices"][0]["message"]["content"] == "echo: hello there"
    assert r.body["usage"]["total_tokens"] > 0
    sent = up.last
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["openai-project"] == "proj_1"
    assert sent.body["model"] == "gpt-4o-mini-2024-07-18"
    assert sent.body["some_future_field"] == {"x": 1} and sent.body["temperature"] == 0.2
    assert "stream" not in sent.body
    assert "accept-encoding" not in sent.headers and sent.headers["user-agent"].startswith("tiergate/")
    assert body["model"] == "gpt-4o-mini"  # the caller's body is not mutated
    assert r.headers["x-request-id"].startswith("req_")
    assert r.headers["x-ratelimit-remaining-requests"] == "499"
    assert all(KEY not in v for v in r.headers.values())


async def test_compatible_host_without_key_sends_no_auth(up, sessions):
    up.api_key = None
    p = make(up, sessions, provider="openai_compatible", api_key=None)
    await p.chat(BODY, FAST)
    assert "authorization" not in up.last.headers


async def test_stream_with_usage(up, sessions):
    p = make(up, sessions)
    chunks = await collect(p, {**BODY, "stream_options": {"include_usage": True}})
    assert up.last.body["stream"] is True
    assert up.last.headers["accept"] == "text/event-stream"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: hello there"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


async def test_stream_without_usage_and_tool_calls(up, sessions):
    p = make(up, sessions)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
    chunks = await collect(p, {**BODY, "tools": tools})
    assert all(c["choices"] for c in chunks)
    args = "".join(tc["function"].get("arguments", "") for c in chunks
                   for tc in c["choices"][0]["delta"].get("tool_calls") or [])
    assert args == '{"q":"x"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_keep_alive_reuses_one_connection(up, sessions):
    p = make(up, sessions)
    for _ in range(3):
        await p.chat(BODY, FAST)
        await collect(p, {**BODY, "stream_options": {"include_usage": True}})
    assert len({r.peer for r in up.requests}) == 1


async def test_429_maps_retry_after(up, sessions):
    p = make(up, sessions)
    up.fail_next("429", retry_after=7)
    with pytest.raises(UpstreamError) as ei:
        await p.chat(BODY, FAST)
    e = ei.value
    assert (e.status, e.kind, e.type, e.code, e.retry_after) == (429, "status", "rate_limit_error",
                                                                 "rate_limit_exceeded", 7.0)
    assert e.retryable and e.headers["retry-after"] == "7"
    up.fail_next("429", retry_after=7, retry_after_ms=250)
    with pytest.raises(UpstreamError) as ei:
        await p.chat(BODY, FAST)
    assert ei.value.retry_after == 0.25


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_retryable(up, sessions, status):
    up.fail_next(str(status))
    with pytest.raises(UpstreamError) as ei:
        await make(up, sessions).chat(BODY, FAST)
    assert ei.value.status == status and ei.value.kind == "status" and ei.value.retryable


async def test_openai_shaped_400_is_passed_on_and_not_retryable(up, sessions):
    err = {"error": {"message": "'messages[0].role' does not support 'system' with this model.",
                     "type": "invalid_request_error", "param": "messages[0].role", "code": "unsupported_value"}}
    up.fail_next("status", status=400, body=err)
    with pytest.raises(UpstreamError) as ei:
        await make(up, sessions).chat(BODY, FAST)
    e = ei.value
    assert (e.status, e.type, e.param, e.code) == (400, "invalid_request_error", "messages[0].role",
                                                   "unsupported_value")
    assert e.message == err["error"]["message"] and not e.retryable


async def test_non_openai_error_bodies(up, sessions):
    p = make(up, sessions)
    up.fail_next("status", status=404, body={"detail": "Model llama9 not found"})  # vLLM / FastAPI style
    with pytest.raises(UpstreamError) as ei:
        await p.chat(BODY, FAST)
    assert ei.value.status == 404 and ei.value.message == "Model llama9 not found"
    up.fail_next("status", status=500, body=b"<html>oops</html>")
    with pytest.raises(UpstreamError) as ei:
        await p.chat(BODY, FAST)
    assert ei.value.status == 500 and "HTTP 500" in ei.value.message


async def test_key_echoed_by_upstream_is_scrubbed(up, sessions):
    p = make(up, sessions)
    body = {"error": {"message": f"Incorrect API key provided: {KEY}. Bearer {KEY} via "
                                 f"https://user:{KEY}@proxy.local/v1?api-key={KEY}",
                      "type": "invalid_request_error", "code": "invalid_api_key", "param": None}}
    up.fail_next("status", status=401, body=body)
    with pytest.raises(UpstreamError) as ei:
        await p.chat(BODY, FAST)
    assert ei.value.status == 401 and ei.value.code == "invalid_api_key"
    assert_no_secret(ei.value)
    assert "***" in ei.value.message and "proxy.local" in ei.value.message


async def test_another_deployments_key_echoed_by_upstream_is_scrubbed(up, sessions):
    """An upstream message quoting a *different* configured deployment's key (e.g. an Azure key behind a
    shared proxy, with no `sk-` shape) was relayed to the client and the ledger: every configured key is
    masked, not only the answering deployment's."""
    other = "azkey0123456789abcdef0123456789ab"  # not key-shaped: only the registry can find it
    make(up, sessions, api_key=Secret("env:AZ", other))  # configuring the deployment registers its key
    p = make(up, sessions)
    body = {"error": {"message": f"proxy: upstream key {other} rejected", "type": "invalid_request_error",
                      "code": "invalid_request_error", "param": None}}
    up.fail_next("status", status=400, body=body)
    with pytest.raises(UpstreamError) as ei:
        await p.chat(BODY, FAST)
    assert other not in ei.value.message and "upstream key *** rejected" in ei.value.message


async def test_hang_is_a_first_token_timeout(up, sessions):
    up.fail_next("hang")
    t0 = time.perf_counter()
    with pytest.raises(UpstreamError) as ei:
        await make(up, sessions).chat(BODY, FAST)
    elapsed = time.perf_counter() - t0
    e = ei.value
    assert (e.status, e.kind, e.code) == (504, "timeout", "upstream_timeout") and e.retryable
    assert "first_token" in e.message
    assert FAST.first_token <= elapsed < FAST.first_token + 0.5


async def test_stream_slow_first_chunk_and_stall(up, sessions):
    p = make(up, sessions)
    up.fail_next("slow", seconds=1.0)
    with pytest.raises(UpstreamError) as ei:
        await collect(p, BODY)
    assert ei.value.kind == "timeout" and "first_token" in ei.value.message
    up.fail_next("stall", after=2)
    got = []
    t0 = time.perf_counter()
    with pytest.raises(UpstreamError) as ei:
        async for c in p.chat_stream(BODY, FAST):
            got.append(c)
    assert len(got) == 2
    assert ei.value.kind == "timeout" and "stream_idle" in ei.value.message
    assert time.perf_counter() - t0 < FAST.stream_idle + 0.5


async def test_total_timeout_on_a_slow_but_steady_stream(up, sessions):
    up.chunk_delay = 0.15
    up.reply = "one two three four five six seven eight nine ten"
    t = Timeouts(connect=1.0, first_token=1.0, stream_idle=1.0, total=0.6)
    t0 = time.perf_counter()
    with pytest.raises(UpstreamError) as ei:
        await collect(make(up, sessions), BODY, t)
    assert ei.value.kind == "timeout" and "total" in ei.value.message
    assert time.perf_counter() - t0 < 1.0


async def test_reset_and_refused_are_connect_errors(up, sessions):
    up.fail_next("reset")
    with pytest.raises(UpstreamError) as ei:
        await make(up, sessions).chat(BODY, FAST)
    assert (ei.value.status, ei.value.kind) == (502, "connect") and ei.value.retryable
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = make(up, sessions, api_base=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(UpstreamError) as ei:
        await p.chat(BODY, FAST)
    assert (ei.value.status, ei.value.kind, ei.value.code) == (502, "connect", "upstream_unreachable")
    assert_no_secret(ei.value)
    with pytest.raises(UpstreamError) as ei:
        await collect(p, BODY)
    assert ei.value.kind == "connect"


@pytest.mark.parametrize("kind", ["malformed", "html"])
async def test_non_json_200_is_a_protocol_error(up, sessions, kind):
    up.fail_next(kind)
    with pytest.raises(UpstreamError) as ei:
        await make(up, sessions).chat(BODY, FAST)
    assert (ei.value.status, ei.value.kind) == (502, "protocol") and ei.value.retryable


async def test_cut_body_is_reported(up, sessions):
    up.fail_next("cut")
    with pytest.raises(UpstreamError) as ei:
        await make(up, sessions).chat(BODY, FAST)
    assert ei.value.status == 502 and ei.value.kind == "stream_cut"


async def test_stream_cut_midway(up, sessions):
    up.fail_next("cut", after=2)
    got = []
    with pytest.raises(UpstreamError) as ei:
        async for c in make(up, sessions).chat_stream(BODY, FAST):
            got.append(c)
    assert len(got) == 2
    assert (ei.value.status, ei.value.kind, ei.value.usage) == (502, "stream_cut", None)
    assert ei.value.retryable


async def test_stream_cut_after_usage_carries_usage(up, sessions):
    # role, 3 words, finish, usage, [DONE]: cut just before [DONE]
    up.fail_next("cut", after=6)
    with pytest.raises(UpstreamError) as ei:
        await collect(make(up, sessions), {**BODY, "stream_options": {"include_usage": True}})
    assert ei.value.kind == "stream_cut" and ei.value.usage["completion_tokens"] == 3


async def test_stream_malformed_chunk(up, sessions):
    up.fail_next("malformed", after=1)
    with pytest.raises(UpstreamError) as ei:
        await collect(make(up, sessions), BODY)
    assert (ei.value.status, ei.value.kind) == (502, "protocol")


async def test_stream_error_events(up, sessions):
    p = make(up, sessions)
    up.fail_next("error_event", after=2)
    with pytest.raises(UpstreamError) as ei:
        await collect(p, BODY)
    assert (ei.value.status, ei.value.kind, ei.value.type) == (500, "stream_cut", "server_error")
    assert ei.value.retryable
    up.fail_next("error_event", after=0, error_type="invalid_request_error")
    with pytest.raises(UpstreamError) as ei:
        await collect(p, BODY)
    assert (ei.value.status, ei.value.kind) == (400, "status") and not ei.value.retryable


async def test_stream_error_status_before_any_chunk(up, sessions):
    up.fail_next("429", retry_after=3)
    with pytest.raises(UpstreamError) as ei:
        await collect(make(up, sessions), BODY)
    assert ei.value.status == 429 and ei.value.retry_after == 3.0


async def test_consumer_stopping_early_closes_cleanly(up, sessions):
    p = make(up, sessions)
    up.reply = "a b c d e f g h"
    gen = p.chat_stream(BODY, FAST)
    await gen.__anext__()
    await gen.aclose()
    r = await p.chat(BODY, FAST)  # the pool still works
    assert r.status == 200


async def test_responses_api(up, sessions):
    p = make(up, sessions, upstream_model="o3-mini-2025-01-31")
    r = await p.responses({"model": "o3-mini", "input": "hi", "reasoning": {"effort": "high"}}, FAST)
    assert up.last.path == "/v1/responses" and up.last.body["model"] == "o3-mini-2025-01-31"
    assert r.body["object"] == "response"
    assert r.body["usage"]["output_tokens_details"]["reasoning_tokens"] == 512
    up.fail_next("503", path="/responses")
    with pytest.raises(UpstreamError) as ei:
        await p.responses({"model": "o3-mini", "input": "hi"}, FAST)
    assert ei.value.status == 503


async def test_reasoning_usage_passes_through(up, sessions):
    r = await make(up, sessions).chat({**BODY, "reasoning_effort": "medium"}, FAST)
    assert r.body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 128


async def test_clean_end_without_done(up, sessions):
    p = make(up, sessions)
    up.fail_next("no_done")
    chunks = await collect(p, BODY)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"  # accepted: the answer was complete
    up.fail_next("truncate", after=2)
    with pytest.raises(UpstreamError) as ei:
        await collect(p, BODY)
    assert ei.value.kind == "stream_cut" and "before it was complete" in ei.value.message


async def test_transport_errors_name_the_deployment_not_the_host(up, sessions):
    """A refused connection and a cut body read as plain words with the deployment id; the host, port and
    aiohttp's text stay in `detail` (for the operator log)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = make(up, sessions, api_base=f"http://127.0.0.1:{port}/v1")
    for call in (lambda: p.chat(BODY, FAST), lambda: collect(p, BODY)):
        with pytest.raises(UpstreamError) as ei:
            await call()
        dep = p.deployment.id
        assert ei.value.message == f"could not connect to deployment {dep} (the connection was refused)"
        assert str(port) in (ei.value.detail or "")
    up.fail_next("cut", after=2)
    with pytest.raises(UpstreamError) as ei:
        await collect(make(up, sessions), BODY)
    assert ei.value.kind == "stream_cut" and ei.value.message.startswith(f"deployment {dep}: the ")
    assert "before the answer was complete" in ei.value.message
    assert "127.0.0.1" not in ei.value.message and "400" not in ei.value.message


async def test_upstream_error_fields_are_scrubbed_bounded_and_back_off_is_finite(up, sessions):
    """The key echoed in an error's code / type / param reached the client (only the message was scrubbed);
    `Retry-After: inf` became a 500 (OverflowError) and `1e9` was relayed as is."""
    p = make(up, sessions)
    body = {"error": {"message": "m", "type": f"t {KEY}", "param": f"p {KEY}", "code": f"c {KEY}" + "x" * 500}}
    up.fail_next("status", status=400, body=body)
    with pytest.raises(UpstreamError) as ei:
        await p.chat(BODY, FAST)
    e = ei.value
    assert KEY not in f"{e.type}{e.param}{e.code}" and e.code.startswith("c ***") and len(e.code) <= 200
    for value, expected in (("inf", None), ("1e999", None), ("1000000000", 3600.0), ("-5", 0.0), ("7", 7.0)):
        up.fail_next("429", retry_after=value)
        with pytest.raises(UpstreamError) as ei:
            await p.chat(BODY, FAST)
        assert ei.value.retry_after == expected, value


async def test_per_request_timeouts_do_not_grow_memory_without_bound(up, sessions):
    """One ClientTimeout was kept per distinct `tiergate.timeouts` value, forever (a client sending its
    remaining deadline as `total` grew the gateway by ~370 B per request)."""
    from tiergate.providers.openai import MAX_CACHED_TIMEOUTS

    p = make(up, sessions)
    for i in range(MAX_CACHED_TIMEOUTS * 5):
        ct = p._client_timeout(Timeouts(connect=1.0, first_token=1.0 + i / 1000, stream_idle=1.0, total=5.0))
        assert ct.sock_read == 1.0 + i / 1000
    assert len(p._client_timeouts) <= MAX_CACHED_TIMEOUTS


def test_tool_calls_from_local_hosts_are_repaired_for_the_sdk():
    """Ollama-style tool calls (no id, arguments as an object; stream chunks without `index`, one complete
    call per chunk) broke the SDK: `json.loads(arguments)` raised, the stream helper raised on index None."""
    import json

    from tiergate.providers.openai import _repair_tool_calls

    msg_calls = [{"function": {"name": "get", "arguments": {"city": "Oslo"}}}]
    _repair_tool_calls(msg_calls, None)
    assert msg_calls[0]["id"].startswith("call_") and msg_calls[0]["type"] == "function"
    assert json.loads(msg_calls[0]["function"]["arguments"]) == {"city": "Oslo"}

    index_of: dict[str, int] = {}
    chunks = [[{"function": {"name": "a", "arguments": {"x": 1}}}],
              [{"function": {"name": "b", "arguments": "{\"y\": 2}"}}],
              [{"id": "call_c", "function": {"name": "c", "arguments": ""}}],
              [{"function": {"arguments": "{\"z\": 3}"}}]]  # a continuation of call_c
    for calls in chunks:
        _repair_tool_calls(calls, index_of)
    assert [c[0]["index"] for c in chunks] == [0, 1, 2, 2]
    assert chunks[0][0]["function"]["arguments"] == '{"x":1}' and chunks[0][0]["id"] != chunks[1][0]["id"]
    well_formed = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]
    _repair_tool_calls(well_formed, {})
    assert well_formed == [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]


async def test_only_compatible_deployments_repair_tool_calls(up, sessions):
    assert make(up, sessions, provider="openai_compatible")._repair_tools is True
    assert make(up, sessions)._repair_tools is False
