"""The azure provider: classic deployment URLs and the /openai/v1 path, the api-key header, Azure's
content-filter 400 and its annotation-only stream chunks, against the loopback fake upstream."""

from __future__ import annotations

import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tiergate.providers.azure import DEFAULT_API_VERSION, DEFAULT_REASONING_API_VERSION, AzureProvider
from tiergate.providers.base import Deployment, Secret, Timeouts, UpstreamError
from tiergate.providers.http import SharedSession
from tiergate.providers.openai import OpenAIProvider
from tiergate.providers.registry import provider_class

KEY = "azkey-5d1f0c9e8b7a6f5e4d3c2b1a"
FAST = Timeouts(connect=1.0, first_token=0.5, stream_idle=0.5, total=3.0)
BODY = {"model": "team-default", "messages": [{"role": "user", "content": "hi azure"}]}


@pytest.fixture
async def up():
    async with FakeOpenAI(api_key=KEY) as u:
        yield u


@pytest.fixture
async def sessions():
    async with SharedSession() as s:
        yield s


def make(api_base: str, sessions: SharedSession, **kw) -> AzureProvider:
    dep = Deployment(id="team-default/0", model="team-default", provider="azure", api_base=api_base,
                     api_key=Secret("env:AZURE_OPENAI_API_KEY", KEY), **kw)
    p = provider_class("azure")(dep, sessions)
    assert isinstance(p, AzureProvider) and isinstance(p, OpenAIProvider)
    return p


async def test_classic_deployment_url_and_api_key_header(up, sessions):
    p = make(up.base_url, sessions, deployment="gpt4o-prod", api_version="2024-10-21")
    r = await p.chat(BODY, FAST)
    sent = up.last
    assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == KEY and "authorization" not in sent.headers
    assert sent.body["model"] == "gpt4o-prod"
    assert r.body["model"] == "gpt4o-prod"


async def test_default_api_version_and_base_ending_in_openai(up, sessions):
    p = make(up.base_url + "/openai", sessions, deployment="dep-a")
    await p.chat(BODY, FAST)
    assert up.last.path == "/openai/deployments/dep-a/chat/completions"
    assert up.last.query["api-version"] == DEFAULT_API_VERSION


async def test_o_series_default_api_version_is_one_they_accept(sessions):
    """o1 / o3-mini answer 2024-10-21 with 'enabled only for api versions 2024-12-01-preview and later'
    (wire facts, Azure api-version): without `api_version` they used to get it."""
    base = "https://example.openai.azure.com"
    for kw in ({"upstream_model": "o3-mini"}, {"deployment": "o1-prod"}, {"deployment": "O4-mini-eu"}):
        p = make(base, sessions, **kw)
        assert p._chat_url.query["api-version"] == DEFAULT_REASONING_API_VERSION, kw
    dep = Deployment(id="o3-mini/0", model="o3-mini", provider="azure", api_base=base,
                     api_key=Secret("env:AZURE_OPENAI_API_KEY", KEY), deployment="reasoner")
    assert provider_class("azure")(dep, sessions)._chat_url.query["api-version"] == DEFAULT_REASONING_API_VERSION
    p = make(base, sessions, deployment="o3-mini", api_version="2025-01-01-preview")  # a set version wins
    assert p._chat_url.query["api-version"] == "2025-01-01-preview"
    assert make(base, sessions, deployment="gpt4o")._chat_url.query["api-version"] == DEFAULT_API_VERSION


async def test_v1_path(up, sessions):
    p = make(up.base_url + "/openai/v1", sessions, upstream_model="gpt-4o")
    r = await p.chat(BODY, FAST)
    assert up.last.path == "/openai/v1/chat/completions" and up.last.query == {}
    assert up.last.body["model"] == "gpt-4o" and r.body["model"] == "gpt-4o"
    p = make(up.base_url + "/openai/v1", sessions, deployment="my-dep")
    await p.chat(BODY, FAST)
    assert up.last.body["model"] == "my-dep"


async def test_bearer_auth_option(up, sessions):
    p = make(up.base_url, sessions, deployment="d", options={"auth": "bearer"})
    await p.chat(BODY, FAST)
    assert up.last.headers["authorization"] == f"Bearer {KEY}" and "api-key" not in up.last.headers


async def test_stream_through_deployment_url(up, sessions):
    p = make(up.base_url, sessions, deployment="gpt4o-prod", api_version="2024-12-01-preview")
    chunks = [c async for c in p.chat_stream({**BODY, "stream_options": {"include_usage": True}}, FAST)]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: hi azure" and chunks[-1]["usage"]["total_tokens"] > 0
    assert up.last.query["api-version"] == "2024-12-01-preview"


async def test_content_filter_400_is_openai_shaped(up, sessions):
    up.fail_next("content_filter")
    with pytest.raises(UpstreamError) as ei:
        await make(up.base_url, sessions, deployment="d").chat(BODY, FAST)
    e = ei.value
    assert (e.status, e.type, e.code, e.param) == (400, "invalid_request_error", "content_filter", "prompt")
    assert "content filter" in e.message and not e.retryable


async def test_missing_deployment_404_gets_a_type(up, sessions):
    up.fail_next("status", status=404, body={"error": {"code": "DeploymentNotFound", "message": "nope"}})
    with pytest.raises(UpstreamError) as ei:
        await make(up.base_url, sessions, deployment="d").chat(BODY, FAST)
    assert (ei.value.status, ei.value.code, ei.value.type) == (404, "DeploymentNotFound", "invalid_request_error")


async def test_responses_urls(up, sessions):
    p = make(up.base_url, sessions, deployment="d", api_version="2025-04-01-preview")
    r = await p.responses({"model": "team-default", "input": "x"}, FAST)
    assert up.last.path == "/openai/responses" and up.last.query == {"api-version": "2025-04-01-preview"}
    assert up.last.body["model"] == "d" and r.body["model"] == "d"
    p = make(up.base_url + "/openai/v1", sessions, deployment="d")
    await p.responses({"model": "team-default", "input": "x"}, FAST)
    assert up.last.path == "/openai/v1/responses"


def test_azure_chunks_are_normalised():
    dep = Deployment(id="a/0", model="a", provider="azure", api_base="https://x.openai.azure.com", deployment="d")
    p = AzureProvider(dep, SharedSession())
    prompt_filter_only = {"id": "", "object": "", "created": 0, "model": "", "choices": [],
                          "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}
    assert p._normalize_chunk(prompt_filter_only) is None
    usage_chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 3}}
    assert p._normalize_chunk(usage_chunk) is usage_chunk
    annotated = {"id": "c", "choices": [{"index": 0, "finish_reason": None, "content_filter_results": {}}]}
    assert p._normalize_chunk(annotated)["choices"][0]["delta"] == {}
    assert p._chat_url.query["api-version"] == DEFAULT_API_VERSION
