"""A native `/v1/responses` call (and a forwarded Anthropic batch line) reserves its tools and json_schema
format as prompt: the budget reservation counted only the messages, so a key with a small budget was
admitted for requests whose tool schemas alone cost several times its budget."""

from __future__ import annotations

import contextlib

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway

MASTER = "sk-resp-budget-tools-master-0123456789"


def _big_tool(words: int = 20_000) -> dict:
    props = {f"field_{i}": {"type": "string", "description": "a long description of this field " * 4}
             for i in range(words // 20)}
    return {"type": "function", "name": "lookup", "description": "look something up",
            "parameters": {"type": "object", "properties": props}}


@contextlib.contextmanager
def _gpt_4o_mini_with_a_budgeted_key(tmp_path, budget_usd: float):
    """(the fake upstream, an SDK client of a key with `budget_usd`) on a gateway serving gpt-4o-mini from it."""
    with FakeOpenAI() as up:
        cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "openai", "api_base": up.url,
                                                                   "api_key": "env:TG_TEST_UP_KEY"}]}],
               "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
        with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER, "TG_TEST_UP_KEY": "sk-up-0123456789"}) as base:
            with httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                              headers={"authorization": f"Bearer {MASTER}"}, timeout=10) as admin:
                secret = admin.post("/keys", json={"name": "budgeted", "budget_usd": budget_usd}).json()["key"]
            yield up, openai.OpenAI(base_url=base, api_key=secret, max_retries=0, timeout=60)


def test_a_native_responses_call_reserves_its_tool_schema(tmp_path):
    # the tool schema is ~25k o200k tokens: $0.0037 at gpt-4o-mini's $0.15/M, above this budget
    with _gpt_4o_mini_with_a_budgeted_key(tmp_path, 0.002) as (up, client):
        up.clear()
        small = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi", max_output_tokens=16)
        assert small.headers["x-tiergate-responses"] == "native"  # the path under test
        up.clear()
        with pytest.raises(openai.RateLimitError) as e:
            client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=16, tools=[_big_tool()])
        assert e.value.code == "insufficient_quota"
        assert not up.requests  # refused before anything was sent upstream
        # the advice names the client's own parameter, not Chat Completions' ones
        assert "max_output_tokens" in e.value.message and "max_completion_tokens" not in e.value.message


def test_a_model_with_a_context_window_fallback_is_answered_through_the_chat_pipeline(tmp_path):
    """The native path sent its body, named for the requested model, to whatever the dispatcher failed over
    to, without the key's allow-list check or the fallback's price in the reservation: a model with a
    `context_window_fallback` now goes through the chat pipeline, which applies both."""
    with FakeOpenAI() as up:
        dep = [{"provider": "openai", "api_base": up.url, "api_key": "env:TG_TEST_UP_KEY"}]
        cfg = {"models": [{"name": "gpt-4o-mini", "context_window_fallback": "gpt-4.1", "deployments": dep},
                          {"name": "gpt-4.1", "deployments": dep}, {"name": "gpt-4o", "deployments": dep}],
               "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
        with running_gateway(cfg, env={"TG_TEST_UP_KEY": "sk-up-0123456789"}) as base:
            client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=20)
            with_fb = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi")
            plain = client.responses.with_raw_response.create(model="gpt-4o", input="hi")
    assert with_fb.parse().output_text and with_fb.headers.get("x-tiergate-responses") != "native"
    assert plain.headers["x-tiergate-responses"] == "native"


def test_a_budgeted_keys_added_output_limit_fits_the_context_window(tmp_path):
    """A budgeted key's 120k-token prompt to gpt-4o-mini (128k window) was sent with the default 16,384 output
    tokens added, which the upstream refuses (prompt + limit above the window); now the limit is what is left."""
    from tiergate.catalog.catalog import Catalog

    window = Catalog.load().get("gpt-4o-mini").context_window  # 128,000; default output limit 4,096
    with _gpt_4o_mini_with_a_budgeted_key(tmp_path, 5) as (up, client):
        big = "word " * (window - 2_000)  # one token a word
        up.clear()
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": big}])
        limit = up.last.body["max_completion_tokens"]
        assert 1_000 < limit <= 2_000, limit
        up.clear()
        client.responses.create(model="gpt-4o-mini", input=big)  # native path
        assert 1_000 < up.last.body["max_output_tokens"] <= 2_000
        up.clear()
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert up.last.body["max_completion_tokens"] == 4_096  # a small prompt keeps the default
