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
