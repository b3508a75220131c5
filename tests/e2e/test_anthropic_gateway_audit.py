"""Anthropic translation findings of the acceptance audit, end to end: the official `openai` SDK in front of
the gateway in front of the wire-checking fake Anthropic upstream (which records what it is sent)."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropicThread
from tests.helpers import running_gateway

CLAUDE = "claude-3-7-sonnet"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("anthropic-audit") / "tiergate.db"
    with FakeAnthropicThread("sk-ant-audit") as fake:
        cfg = {
            "models": [{"name": CLAUDE, "deployments": [{
                "provider": "anthropic", "api_base": fake.base_url, "api_key": "env:TG_AUDIT_ANT",
                "model": "claude-3-7-sonnet-20250219"}]}],
            "storage": f"sqlite:///{db}",
        }
        with running_gateway(cfg, env={"TG_AUDIT_ANT": "sk-ant-audit"}) as url:
            yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0), fake


@pytest.mark.parametrize(("limit", "effort", "budget"), [(64000, "low", 1024), (50000, "high", 14000)])
def test_thinking_never_sends_max_tokens_above_the_models_max_output(env, limit, effort, budget):
    """Was 65024 / 66384 sent, which Anthropic refuses (claude-3-7-sonnet: 64,000 without the beta header)."""
    client, fake = env
    r = client.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "hi"}],
                                       max_completion_tokens=limit, reasoning_effort=effort)
    assert r.choices[0].message.content == "echo: hi"
    sent = fake.requests[-1]
    assert sent["max_tokens"] == 64000 and sent["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert fake.problems == []


def _sse(client, body: dict) -> list[dict]:
    import json

    import httpx

    out = []
    with httpx.stream("POST", f"{client.base_url}chat/completions", json=body, timeout=10,
                      headers={"authorization": "Bearer unused"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[6:]))
    return out


def test_stream_with_include_usage_has_usage_null_on_every_chunk(env):
    """As the OpenAI passthrough (and OpenAI) does: `"usage": null` on each chunk, the usage on the last."""
    client, _fake = env
    body = {"model": CLAUDE, "stream": True, "messages": [{"role": "user", "content": "one two"}]}
    chunks = _sse(client, {**body, "stream_options": {"include_usage": True}})
    assert len(chunks) >= 3
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1]), chunks
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    plain = _sse(client, body)
    assert plain and all("usage" not in c for c in plain)
    # the SDK reads the same stream as ever
    got = list(client.chat.completions.create(**body, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "echo: one two"
    assert got[-1].usage.completion_tokens > 0


def test_cache_control_reaches_anthropic(env):
    """Prompt caching can be turned on: the markers on system and user parts are sent as Anthropic's."""
    client, fake = env
    eph = {"type": "ephemeral"}
    r = client.chat.completions.create(model=CLAUDE, messages=[
        {"role": "system", "content": [{"type": "text", "text": "long shared rules", "cache_control": eph}]},
        {"role": "user", "content": [{"type": "text", "text": "big document", "cache_control": eph},
                                     {"type": "text", "text": "question"}]},
    ])
    assert r.choices[0].message.content
    sent = fake.requests[-1]
    assert sent["system"] == [{"type": "text", "text": "long shared rules", "cache_control": eph}]
    assert sent["messages"][0]["content"][0] == {"type": "text", "text": "big document", "cache_control": eph}
    assert fake.problems == []


def test_dropped_params_header_names_what_the_anthropic_translation_drops(env):
    client, fake = env
    raw = client.chat.completions.with_raw_response.create(
        model=CLAUDE, messages=[{"role": "user", "content": "hi"}], temperature=1.7)
    assert fake.requests[-1]["temperature"] == 1.0
    assert raw.headers.get("x-tiergate-dropped-params") == "temperature"
    raw = client.chat.completions.with_raw_response.create(
        model=CLAUDE, messages=[{"role": "user", "content": "hi"}], temperature=0.3, top_p=0.9,
        reasoning_effort="low")
    assert "temperature" not in fake.requests[-1] and "thinking" in fake.requests[-1]
    assert raw.headers.get("x-tiergate-dropped-params") == "temperature,top_p"
    raw = client.chat.completions.with_raw_response.create(
        model=CLAUDE, messages=[{"role": "user", "content": "hi"}], temperature=0.3)
    assert raw.headers.get("x-tiergate-dropped-params") is None


def test_upstream_404_names_the_upstream_model_not_the_clients(env):
    """A 404 not_found_error from Anthropic means the deployment's upstream model name (or api_base) is wrong,
    not that the client's model is unknown: the message says so, naming the name sent and the deployment."""
    client, fake = env
    fake.fail_next.append((404, "not_found_error"))
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "hi"}])
    err = ei.value.body
    assert err["code"] == "not_found_error" and err["type"] == "invalid_request_error"
    assert "upstream model 'claude-3-7-sonnet-20250219'" in err["message"]
    assert f"deployment '{CLAUDE}/0'" in err["message"] and "api_base" in err["message"]


@pytest.mark.parametrize(("status", "typ"), [(401, "authentication_error"), (403, "permission_error")])
def test_upstream_401_403_are_502_upstream_auth_failed(env, status, typ):
    """docs/anthropic.md's error table: Anthropic refusing the gateway's key is not the client's 401/403."""
    client, fake = env
    fake.fail_next.append((status, typ))
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 502 and ei.value.body["code"] == "upstream_auth_failed"
    assert ei.value.response.headers.get("x-should-retry") == "false"


@pytest.fixture(scope="module")
def env_128k(tmp_path_factory):
    db = tmp_path_factory.mktemp("anthropic-128k") / "tiergate.db"
    with FakeAnthropicThread("sk-ant-audit") as fake:
        dep = {"provider": "anthropic", "api_base": fake.base_url, "api_key": "env:TG_AUDIT_ANT"}
        cfg = {
            "models": [
                {"name": "claude-beta", "catalog": CLAUDE,
                 "deployments": [{**dep, "headers": {"anthropic-beta": "output-128k-2025-02-19"}}]},
                {"name": "claude-opt", "catalog": CLAUDE,
                 "deployments": [{**dep, "options": {"max_output_tokens": 100000}}]},
                {"name": "claude-mixed", "catalog": CLAUDE,  # one deployment without the beta: 64,000
                 "deployments": [{**dep, "headers": {"anthropic-beta": "output-128k-2025-02-19"}}, dep]},
            ],
            "storage": f"sqlite:///{db}",
        }
        with running_gateway(cfg, env={"TG_AUDIT_ANT": "sk-ant-audit"}) as url:
            yield url, fake


@pytest.mark.parametrize(("model", "most"), [("claude-beta", 128000), ("claude-opt", 100000),
                                             ("claude-mixed", 64000)])
def test_output_limit_check_uses_the_deployments_max_output(env_128k, model, most):
    """Was 400 'max_tokens is too large: 100000. This model supports at most 64000' on a deployment sending
    the output-128k beta header (or options.max_output_tokens: 128000), on chat and /v1/responses."""
    import httpx

    url, fake = env_128k
    hdr = {"authorization": "Bearer unused"}
    msgs = [{"role": "user", "content": "hi"}]
    for path, field, body in (("chat/completions", "max_tokens", {"messages": msgs}),
                              ("responses", "max_output_tokens", {"input": "hi"})):
        ok = httpx.post(f"{url}/{path}", json={"model": model, field: most, **body}, headers=hdr, timeout=10)
        assert ok.status_code == 200, ok.text
        assert fake.requests[-1]["max_tokens"] == most
        big = httpx.post(f"{url}/{path}", json={"model": model, field: most + 1, **body}, headers=hdr, timeout=10)
        assert big.status_code == 400
        assert big.json()["error"]["param"] == field
        assert f"at most {most} completion tokens" in big.json()["error"]["message"]
    assert fake.problems == []
