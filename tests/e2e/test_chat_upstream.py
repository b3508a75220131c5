"""End to end against a loopback fake OpenAI/Azure upstream that records what it received: the
gateway must shape each body for its model (catalogue quirks), pass unknown fields through, always
ask for stream usage, and never leak the upstream key."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway

KEY = "sk-upstream-SECRET-0123456789"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("gwu") / "tiergate.db"
    with FakeOpenAI() as up:
        up.api_key = KEY
        dep = {"provider": "openai", "api_base": up.url, "api_key": "env:TG_TEST_UPSTREAM_KEY"}
        cfg = {
            "models": [
                {"name": "o1-mini", "deployments": [dep]},
                {"name": "o1-preview", "deployments": [dep]},
                {"name": "o3-mini", "deployments": [dep]},
                {"name": "gpt-4o-mini", "deployments": [dep]},
                {"name": "local-llama", "deployments": [{"provider": "openai_compatible", "api_base": up.url,
                                                         "model": "llama3.1:8b",
                                                         "api_key": "env:TG_TEST_UPSTREAM_KEY"}]},
                {"name": "team-default", "catalog": "gpt-4o", "deployments": [{
                    "provider": "azure", "api_base": up.base_url, "deployment": "gpt4o-prod",
                    "api_version": "2024-10-21", "api_key": "env:TG_TEST_UPSTREAM_KEY"}]},
            ],
            "storage": f"sqlite:///{db}",
        }
        with running_gateway(cfg, env={"TG_TEST_UPSTREAM_KEY": KEY}) as url:
            yield up, openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def test_o1_mini_receives_no_system_message(env):
    up, client = env
    client.chat.completions.create(model="o1-mini", messages=[
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}])
    body = up.last.body
    roles = [m["role"] for m in body["messages"]]
    assert "system" not in roles and "developer" not in roles
    assert "You are terse." in str(body["messages"][0]["content"])
    assert body["model"] == "o1-mini"


def test_o3_mini_gets_max_completion_tokens_and_developer_role(env):
    up, client = env
    raw = client.chat.completions.with_raw_response.create(
        model="o3-mini", max_tokens=123, temperature=0.3, reasoning_effort="low",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    body = up.last.body
    assert body["max_completion_tokens"] == 123 and "max_tokens" not in body
    assert "temperature" not in body
    assert body["messages"][0]["role"] == "developer"
    assert body["reasoning_effort"] == "low"
    assert "temperature" in raw.headers["x-tiergate-dropped-params"]
    assert up.last.headers["authorization"] == f"Bearer {KEY}"


def test_reasoning_tokens_are_priced(env):
    _, client = env
    raw = client.chat.completions.with_raw_response.create(
        model="o3-mini", reasoning_effort="high", messages=[{"role": "user", "content": "think"}])
    r = raw.parse()
    rt = r.usage.completion_tokens_details.reasoning_tokens
    assert rt > 0
    # o3-mini: $1.10 / $4.40 per 1M (catalogue); completion_tokens already include reasoning tokens
    expected = (r.usage.prompt_tokens * 1.10 + r.usage.completion_tokens * 4.40) / 1e6
    assert float(raw.headers["x-tiergate-cost-usd"]) == pytest.approx(expected, rel=1e-6)


def test_unknown_fields_pass_through(env):
    up, client = env
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                   extra_body={"prediction": {"type": "content", "content": "x"},
                                               "some_future_field": {"a": 1}},
                                   seed=7, metadata={"team": "a"}, user="u1", store=False)
    body = up.last.body
    assert body["some_future_field"] == {"a": 1}
    assert body["prediction"]["type"] == "content"
    assert body["seed"] == 7 and body["user"] == "u1" and body["metadata"] == {"team": "a"}
    assert "tiergate" not in body


def test_stream_always_requests_usage_but_client_gets_only_what_it_asked(env):
    up, client = env
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "one two three"}]))
    assert up.last.body["stream_options"]["include_usage"] is True
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()


def test_openai_compatible_host_gets_its_own_model_name(env):
    up, client = env
    r = client.chat.completions.create(model="local-llama", messages=[{"role": "user", "content": "hi"}])
    assert up.last.body["model"] == "llama3.1:8b"
    assert r.choices[0].message.content


def test_azure_deployment_url_and_header(env):
    up, client = env
    raw = client.chat.completions.with_raw_response.create(
        model="team-default", messages=[{"role": "user", "content": "hi"}])
    rec = up.last
    assert rec.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert rec.query["api-version"] == "2024-10-21"
    assert rec.headers["api-key"] == KEY and "authorization" not in rec.headers
    assert raw.headers["x-tiergate-model"] == "team-default"
    # priced as the gpt-4o catalogue entry ($2.50 / $10.00 per 1M)
    r = raw.parse()
    expected = (r.usage.prompt_tokens * 2.50 + r.usage.completion_tokens * 10.0) / 1e6
    assert float(raw.headers["x-tiergate-cost-usd"]) == pytest.approx(expected, rel=1e-6)


def test_upstream_error_is_openai_shaped_and_secret_free(env):
    up, client = env
    up.fail_next("status", status=400, body={"error": {"message": f"bad key {KEY} for https://u:{KEY}@x",
                                                      "type": "invalid_request_error", "param": None,
                                                      "code": "bad"}})
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert KEY not in str(ei.value.body) and KEY not in ei.value.message
    up.fail_next("503", count=10)
    with pytest.raises(openai.APIStatusError) as ei2:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert ei2.value.status_code == 503
    up.clear_faults()
