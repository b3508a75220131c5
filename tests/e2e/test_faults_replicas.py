"""Circuit state shared by gateway replicas through Redis: a deployment that fails on replica A is
skipped by replica B without B calling it, and a successful probe closes it for both."""

from __future__ import annotations

import os
import time

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway
from tests.unit.test_store_fixtures import _redis_up

REDIS = "redis://127.0.0.1:6379/0"



@pytest.mark.redis
@pytest.mark.skipif(not _redis_up(), reason="Redis is not running on 127.0.0.1:6379")
def test_two_replicas_share_the_circuit(tmp_path):
    dep = f"flaky-{os.urandom(4).hex()}"
    with FakeOpenAI() as up:
        def cfg(db: str) -> dict:
            return {"redis": REDIS, "storage": f"sqlite:///{tmp_path / db}", "models": [{
                "name": "m", "catalog": "gpt-4o-mini",
                "retry": {"max_retries": 1, "backoff_base_s": 0.01},
                "circuit": {"failures": 2, "window_s": 30, "cooldown_s": 1.5},
                "deployments": [{"id": dep, "provider": "openai_compatible", "api_base": up.url,
                                 "model": "gpt-4o-mini"}]}]}

        with running_gateway(cfg("a.db")) as url_a, running_gateway(cfg("b.db")) as url_b:
            a = openai.OpenAI(base_url=url_a, api_key="unused", max_retries=0, timeout=10)
            b = openai.OpenAI(base_url=url_b, api_key="unused", max_retries=0, timeout=10)
            msgs = [{"role": "user", "content": "hi"}]
            b.chat.completions.create(model="m", messages=msgs)  # B is up and its refresh task running
            up.fail_every("500", 1)
            with pytest.raises(openai.InternalServerError):
                a.chat.completions.create(model="m", messages=msgs)  # 2 failures: the shared circuit opens
            calls = len(up.requests)
            time.sleep(0.8)  # B's background refresh (0.5 s) sees it
            with pytest.raises(openai.APIStatusError) as ei:
                b.chat.completions.create(model="m", messages=msgs)
            assert ei.value.status_code == 503 and ei.value.code == "no_healthy_deployment"
            assert len(up.requests) == calls  # B did not call the failing deployment
            up.clear_faults()
            time.sleep(1.6)
            assert b.chat.completions.create(model="m", messages=msgs).choices[0].message.content == "echo: hi"
            time.sleep(0.8)
            assert a.chat.completions.create(model="m", messages=msgs).choices[0].message.content == "echo: hi"
