"""`/v1/responses` on the native path (Azure and OpenAI deployments) with the official `openai` SDK against
the loopback fake upstream (tests/fakes/openai_upstream.py):

- an Azure deployment configured with a chat `api_version` (the README's GA 2024-10-21) sends
  `/openai/responses` its own preview api-version (2025-04-01-preview, or `options.responses_api_version`,
  or the deployment's `api_version` when that is itself a preview version with the Responses API);
- a stream cut (or stalled) after the answer started ends with `response.failed` whose `error.code` is
  in the spec's ResponseErrorCode enum and whose `output` (also in the stored copy) keeps what was
  relayed, as the translated path and a client's hang-up do."""

from __future__ import annotations

import re

import httpx
import openai
import orjson
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import REPO, running_gateway

SPEC = REPO.parent / "shared" / "reference" / "openai-openapi.yaml"


def _response_error_codes() -> set[str]:
    """The enum of the spec's `ResponseErrorCode` (read from the YAML text: the spec is large)."""
    if not SPEC.exists():
        return {"server_error", "rate_limit_exceeded", "invalid_prompt"}
    text = SPEC.read_text()
    block = text[text.index("\n    ResponseErrorCode:\n"):]
    block = block[block.index("enum:") + 5:]
    return set(re.findall(r"^\s+- (\w+)$", block[:block.index("\n    ResponseErrorEvent:")], flags=re.MULTILINE))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("judge7_azure") / "tiergate.db"
    with FakeOpenAI(api_key="azkey") as up:
        az = {"provider": "azure", "api_base": up.base_url, "deployment": "gpt4o-prod", "api_key": "env:TG_J7_AZ"}
        cfg = {
            "models": [
                {"name": "az-ga", "catalog": "gpt-4o", "deployments": [{**az, "api_version": "2024-10-21"}]},
                {"name": "az-preview", "catalog": "gpt-4o",
                 "deployments": [{**az, "api_version": "2025-03-01-preview"}]},
                {"name": "az-old-preview", "catalog": "gpt-4o",
                 "deployments": [{**az, "api_version": "2024-12-01-preview"}]},
                {"name": "az-own", "catalog": "gpt-4o", "deployments": [
                    {**az, "api_version": "2024-10-21", "options": {"responses_api_version": "2025-05-01-preview"}}]},
                {"name": "gpt-4o-mini", "retry": {"max_retries": 0}, "timeouts": {"stream_idle": 1},
                 "deployments": [{"provider": "openai", "api_base": up.url, "api_key": "env:TG_J7_AZ"}]},
                {"name": "az-stream", "catalog": "gpt-4o", "retry": {"max_retries": 0}, "timeouts": {"stream_idle": 1},
                 "deployments": [{**az, "api_version": "2024-10-21"}]},
            ],
            "storage": f"sqlite:///{db}",
        }
        with running_gateway(cfg, env={"TG_J7_AZ": "azkey"}) as url:
            yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=20), up


# ---------------------------------------------------------------- 5. Azure /openai/responses api-version


@pytest.mark.parametrize(("model", "version"), [
    ("az-ga", "2025-04-01-preview"),           # the chat GA version has no Responses API: the default
    ("az-old-preview", "2025-04-01-preview"),  # a preview from before the Responses API: the default
    ("az-preview", "2025-03-01-preview"),      # a preview that has it: the deployment's own
    ("az-own", "2025-05-01-preview"),          # options.responses_api_version wins
])
def test_azure_responses_use_a_responses_api_version(env, model, version):
    client, up = env
    up.clear()
    r = client.responses.create(model=model, input="hi")
    assert r.status == "completed"
    assert up.last.path == "/openai/responses" and up.last.query == {"api-version": version}
    assert up.last.headers["api-key"] == "azkey"
    with client.responses.stream(model=model, input="hi") as s:
        assert s.get_final_response().status == "completed"
    assert up.last.query == {"api-version": version}
    if model == "az-ga":  # chat keeps the deployment's api_version
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert up.last.path == "/openai/deployments/gpt4o-prod/chat/completions"
        assert up.last.query == {"api-version": "2024-10-21"}


# ---------------------------------------------------------------- 6. native response.failed


@pytest.mark.parametrize("model", ["gpt-4o-mini", "az-stream"])
@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_native_stream_failure_ends_with_a_spec_valid_failed_response_keeping_the_output(env, model, fault):
    client, up = env
    up.clear()
    # created, in_progress, item added, part added, two text deltas; then RST / silence past stream_idle
    up.fail_next(fault, path="/responses", after=6, seconds=5)
    with httpx.stream("POST", str(client.base_url).rstrip("/") + "/responses", timeout=20,
                      json={"model": model, "input": "one two three four", "stream": True}) as r:
        assert r.headers["x-tiergate-responses"] == "native"
        events = [orjson.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    last = events[-1]
    assert last["type"] == "response.failed" and last["sequence_number"] == 6
    failed = last["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["code"] in _response_error_codes()
    assert failed["error"]["code"] == "server_error"
    assert "failed after it started" in failed["error"]["message"]
    relayed = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert relayed == "echo: one"
    item = {"type": "message", "id": "msg_fake", "role": "assistant", "status": "incomplete",
            "content": [{"type": "output_text", "text": relayed, "annotations": [], "logprobs": []}]}
    assert failed["output"] == [item]
    stored = client.responses.retrieve(failed["id"])
    assert stored.status == "failed" and stored.error.code == "server_error"
    assert [o.model_dump(exclude_none=True) for o in stored.output] == [item]
