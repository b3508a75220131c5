"""The Anthropic provider over real loopback HTTP against the wire-checking fake upstream."""

from __future__ import annotations

import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tiergate.providers.base import Deployment, RequestRefused, Secret, Timeouts, UpstreamError
from tiergate.providers.http import AiohttpSessionFactory
from tiergate.providers.registry import provider_class

T = Timeouts(connect=2, first_token=5, stream_idle=5, total=10)


def _provider(fake: FakeAnthropic, sessions: AiohttpSessionFactory, key: str | None = None):
    dep = Deployment(id="claude/0", model="claude-3-7-sonnet", provider="anthropic", api_base=fake.base_url,
                     api_key=Secret("env:ANTHROPIC_API_KEY", key or fake.api_key),
                     headers=(("anthropic-beta", "output-128k-2025-02-19"),))
    return provider_class("anthropic")(dep, sessions)


@pytest.fixture
async def env():
    async with FakeAnthropic(cache_read=5) as fake, AiohttpSessionFactory() as sessions:
        yield fake, sessions


async def test_chat_roundtrip(env):
    fake, sessions = env
    p = _provider(fake, sessions)
    res = await p.chat({"model": "claude-3-7-sonnet", "messages": [{"role": "system", "content": "s"},
                                                                  {"role": "user", "content": "hello there"}]}, T)
    assert fake.problems == []
    assert res.body["choices"][0]["message"]["content"] == "echo: hello there"
    assert res.body["usage"]["prompt_tokens_details"]["cached_tokens"] == 5
    assert res.headers["x-request-id"] == "req_fake"
    assert fake.requests[0]["system"] == "s"


async def test_thinking_and_tool_loop(env):
    fake, sessions = env
    p = _provider(fake, sessions)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
    msgs = [{"role": "user", "content": "find it"}]
    res = await p.chat({"model": "m", "reasoning_effort": "high", "tools": tools, "messages": msgs}, T)
    msg = res.body["choices"][0]["message"]
    assert res.body["choices"][0]["finish_reason"] == "tool_calls"
    assert msg["tool_calls"][0]["function"]["arguments"] == '{"q":"test"}'
    assert res.body["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    assert fake.requests[-1]["thinking"]["budget_tokens"] == 16384
    # the client passes back the assistant message as it got it (with thinking_blocks), plus the result
    msgs += [msg, {"role": "tool", "tool_call_id": msg["tool_calls"][0]["id"], "content": "42"}]
    res = await p.chat({"model": "m", "reasoning_effort": "high", "tools": tools, "messages": msgs}, T)
    assert fake.problems == []
    assert res.body["choices"][0]["finish_reason"] == "stop"


async def test_stream(env):
    fake, sessions = env
    p = _provider(fake, sessions)
    chunks = [c async for c in p.chat_stream({"model": "m", "stream": True, "stream_options": {"include_usage": True},
                                              "messages": [{"role": "user", "content": "one two three"}]}, T)]
    assert fake.problems == []
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: one two three"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


async def test_errors(env):
    fake, sessions = env
    p = _provider(fake, sessions)
    fake.fail_next = [(529, "overloaded_error"), (429, "rate_limit_error")]
    with pytest.raises(UpstreamError) as e:
        await p.chat({"model": "m", "messages": [{"role": "user", "content": "x"}]}, T)
    assert e.value.status == 503 and e.value.retryable and e.value.code == "overloaded_error"
    with pytest.raises(UpstreamError) as e:
        await p.chat({"model": "m", "messages": [{"role": "user", "content": "x"}]}, T)
    assert e.value.status == 429 and e.value.retryable
    bad = _provider(fake, sessions, key="sk-ant-wrong-secret-value")
    with pytest.raises(UpstreamError) as e:
        await bad.chat({"model": "m", "messages": [{"role": "user", "content": "x"}]}, T)
    assert e.value.status == 401 and not e.value.retryable
    assert "sk-ant-wrong-secret-value" not in str(e.value.message)
    fake.problems.clear()
    sent = len(fake.requests)
    with pytest.raises(RequestRefused) as r:  # refused before sending: unsupported part; not an UpstreamError
        await p.chat({"model": "m", "messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}, T)
    assert r.value.status == 400 and r.value.param == "messages[0].content[0]"
    assert r.value.code == "unsupported_value" and "anthropic:" not in r.value.message
    with pytest.raises(RequestRefused) as r:  # the dispatcher's pre-send check says the same, sending nothing
        p.check({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}, stream=True)
    assert (r.value.param, r.value.message) == ("n", "Anthropic models return one choice; n must be 1")
    with pytest.raises(RequestRefused) as r:  # a wrong type the translation trips over: refused, not a crash
        p.check({"model": "m", "temperature": "hot", "messages": [{"role": "user", "content": "x"}]}, stream=False)
    assert r.value.status == 400 and r.value.code == "invalid_value"
    p.check({"model": "m", "messages": [{"role": "user", "content": "x"}]}, stream=False)  # accepted
    assert len(fake.requests) == sent


async def test_stream_error_event_mid_stream(env):
    fake, sessions = env
    fake.stream_error_after = 1
    p = _provider(fake, sessions)
    got = []
    with pytest.raises(UpstreamError) as e:
        async for c in p.chat_stream({"model": "m", "messages": [{"role": "user", "content": "a b c d"}]}, T):
            got.append(c)
    assert e.value.kind == "stream_cut" and e.value.status == 503 and got
