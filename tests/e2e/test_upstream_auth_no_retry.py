"""An upstream that refuses the gateway's own credentials (401/403) is a 502 `upstream_auth_failed` with
`x-should-retry: false`: the official `openai` SDK (default `max_retries=2`) then sends the request once
instead of three times with credentials already known to be bad. The client's own key is fine, so the
upstream's 401/403 is not passed through (docs/reliability.md, "Errors the client sees")."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway


@pytest.fixture(scope="module")
def env():
    with FakeOpenAI(api_key="sk-upstream-right") as up:
        cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "openai", "api_base": up.url,
                                                                   "api_key": "env:TG_TEST_BAD_UPSTREAM_KEY"}]},
                          {"name": "o3-mini", "deployments": [{"provider": "openai", "api_base": up.url,
                                                               "api_key": "env:TG_TEST_GOOD_UPSTREAM_KEY"}]}]}
        with running_gateway(cfg, env={"TG_TEST_BAD_UPSTREAM_KEY": "sk-upstream-wrong",
                                       "TG_TEST_GOOD_UPSTREAM_KEY": "sk-upstream-right"}) as url:
            yield openai.OpenAI(base_url=url, api_key="unused", max_retries=2), up


def _upstream_calls(up: FakeOpenAI) -> int:
    return sum(1 for r in up.requests if r.method == "POST")


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_401_is_502_not_retried_by_the_sdk(env, stream):
    client, up = env
    up.clear()
    with pytest.raises(openai.InternalServerError) as ei:
        out = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                             stream=stream)
        if stream:
            list(out)
    assert (ei.value.status_code, ei.value.code) == (502, "upstream_auth_failed")
    assert ei.value.response.headers.get("x-should-retry") == "false"
    assert _upstream_calls(up) == 1  # the SDK did not retry (it would have sent 3)


def test_upstream_403_is_502_not_retried_by_the_sdk(env):
    client, up = env
    up.clear()
    up.fail_next("status", status=403, body={"error": {"message": "Project not allowed", "type": "permission_error",
                                                       "param": None, "code": None}})
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model="o3-mini", messages=[{"role": "user", "content": "hi"}])
    assert (ei.value.status_code, ei.value.code) == (502, "upstream_auth_failed")
    assert ei.value.response.headers.get("x-should-retry") == "false"
    assert _upstream_calls(up) == 1
    # a retryable upstream failure keeps the SDK's ordinary retries (no x-should-retry: false there)
    up.clear()
    up.fail_next("500", count=10)
    with pytest.raises(openai.InternalServerError) as ei:
        client.with_options(max_retries=1).chat.completions.create(
            model="o3-mini", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.response.headers.get("x-should-retry") != "false"
