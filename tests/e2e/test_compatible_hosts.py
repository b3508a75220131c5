"""OpenAI-compatible hosts (vLLM, Ollama, llama.cpp, ...) behind `provider: openai_compatible`, with the
official SDK against a real gateway and the loopback fake upstream: a budgeted key adds no output limit to
an unpriced model (a small-context host refused the 16,384 it used to add), a catalogue entry listing
`stream_options` as unsupported streams without it (hosts that forbid extra fields refused every stream),
and `/v1/responses` is translated to chat unless the deployment says the host has its own /responses."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway

MASTER = "sk-compat-hosts-master-0123456789"
STRICT = """models:
  local-strict:
    family: openai_compatible
    tokenizer: o200k_base
    prices: {input: 0.0, output: 0.0}
    limits: {context_window: 8192, max_output_tokens: 4096}
    capabilities: {system_role: true, developer_role: false, tools: true, parallel_tool_calls: false, json_schema: false,
                   json_object: true,
                   streaming: true, vision: false, reasoning_efforts: []}
    params: {output_limit: max_tokens, system_role_as: system, unsupported: [stream_options]}
    sources: {prices: local host, limits: local host, capabilities: local host, params: local host}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compat")
    (tmp / "catalog.yaml").write_text(STRICT)
    with FakeOpenAI() as up:
        def dep(**options):
            return [{"provider": "openai_compatible", "api_base": up.url, **({"options": options} if options else {})}]
        cfg = {"models": [{"name": "local-llama", "deployments": dep()},
                          {"name": "local-strict", "deployments": dep()},
                          {"name": "local-resp", "deployments": dep(responses_api=True)}],
               "catalog_file": str(tmp / "catalog.yaml"), "storage": f"sqlite:///{tmp / 'tg.db'}"}
        with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
            admin = httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                                 headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
            key = admin.post("/keys", json={"name": "budgeted", "budget_usd": 5}).json()["key"]
            admin.close()
            yield up, openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=20)


def test_a_budgeted_key_adds_no_output_limit_to_an_unpriced_model(env):
    up, client = env
    up.clear()
    client.chat.completions.create(model="local-llama", messages=[{"role": "user", "content": "hi"}])
    body = up.last.body
    assert "max_completion_tokens" not in body and "max_tokens" not in body


def test_a_budgeted_key_adds_no_output_limit_to_an_unpriced_model_on_the_native_responses_path(env):
    up, client = env
    up.clear()
    r = client.responses.with_raw_response.create(model="local-resp", input="hi")
    assert r.headers["x-tiergate-responses"] == "native"  # the path under test
    assert "max_output_tokens" not in up.last.body


def test_stream_options_listed_unsupported_are_not_sent(env):
    up, client = env
    up.clear()
    chunks = list(client.chat.completions.create(model="local-strict", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert "stream_options" not in up.last.body
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0  # estimated by the gateway


def test_responses_on_a_compatible_host_are_translated_unless_it_has_the_endpoint(env):
    up, client = env
    up.clear()
    raw = client.responses.with_raw_response.create(model="local-llama", input="hi")
    assert raw.parse().output_text and up.last.path.endswith("/chat/completions")
    assert raw.headers.get("x-tiergate-responses") != "native"
    raw = client.responses.with_raw_response.create(model="local-resp", input="hi")
    assert raw.headers["x-tiergate-responses"] == "native" and up.last.path.endswith("/responses")


class OllamaStyleTools(FakeOpenAI):
    """Answers with a tool call as Ollama writes it: no id, `arguments` an object."""

    def _completion(self, body, model):
        out = super()._completion(body, model)
        out["choices"][0]["message"] = {"role": "assistant", "content": "",
                                        "tool_calls": [{"function": {"name": "get_weather",
                                                                     "arguments": {"city": "Oslo"}}}]}
        out["choices"][0]["finish_reason"] = "tool_calls"
        return out


def _ask_local_tools_host(host_class: type[FakeOpenAI], tmp_path):
    """The SDK's answer to one "weather?" question through a gateway whose `openai_compatible` deployment is
    `host_class` (a fake local host)."""
    with host_class() as up:
        cfg = {"models": [{"name": "local-tools", "deployments": [
            {"provider": "openai_compatible", "api_base": up.url}]}], "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
        with running_gateway(cfg) as base:
            client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=20)
            return client.chat.completions.create(model="local-tools",
                                                  messages=[{"role": "user", "content": "weather?"}])


def test_a_local_hosts_tool_call_reaches_the_sdk_usable(tmp_path):
    import json

    r = _ask_local_tools_host(OllamaStyleTools, tmp_path)
    call = r.choices[0].message.tool_calls[0]
    assert call.id and call.type == "function" and json.loads(call.function.arguments) == {"city": "Oslo"}


class EmptyChoices(FakeOpenAI):
    """Answers 200 with `choices: []` (seen from local hosts under load)."""

    def _completion(self, body, model):
        out = super()._completion(body, model)
        out["choices"] = []
        return out


def test_an_answer_without_choices_fails_over_instead_of_reaching_the_client(tmp_path):
    with EmptyChoices() as bad, FakeOpenAI() as good:
        cfg = {"models": [{"name": "local-pair", "retry": {"max_retries": 1}, "strategy": "weighted_random", "deployments": [
            {"id": "bad", "provider": "openai_compatible", "api_base": bad.url, "weight": 1000},
            {"id": "good", "provider": "openai_compatible", "api_base": good.url, "weight": 0.001}]}],
            "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
        with running_gateway(cfg) as base:
            client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=20)
            raw = client.chat.completions.with_raw_response.create(
                model="local-pair", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-tiergate-deployment"] == "good" and raw.parse().choices


class EosHost(FakeOpenAI):
    """Ends answers as llama.cpp / TGI-style hosts do: `finish_reason` "eos" / "MAX_TOKENS"."""

    reason = "eos"

    def _completion(self, body, model):
        out = super()._completion(body, model)
        for c in out["choices"]:
            c["finish_reason"] = self.reason
        return out

    def _chunks(self, body, model):
        return [c.replace(b'"finish_reason":"stop"', b'"finish_reason":"' + self.reason.encode() + b'"')
                for c in super()._chunks(body, model)]


@pytest.mark.parametrize(("native", "expected"), [("eos", "stop"), ("MAX_TOKENS", "length"), ("eos_token", "stop"),
                                                   ("tool_use", "stop")])  # no tool call in the answer
def test_a_hosts_own_finish_reason_reaches_the_sdk_as_openais(tmp_path, native, expected):
    class Host(EosHost):
        reason = native

    with Host() as up:
        cfg = {"models": [{"name": "local-eos", "deployments": [
            {"provider": "openai_compatible", "api_base": up.url}]}], "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
        with running_gateway(cfg) as base:
            client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=20)
            msgs = [{"role": "user", "content": "hi there"}]
            r = client.chat.completions.create(model="local-eos", messages=msgs)
            chunks = list(client.chat.completions.create(model="local-eos", messages=msgs, stream=True))
    assert r.choices[0].finish_reason == expected
    assert r.choices[0].model_extra.get("native_finish_reason") == native
    finals = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [f.finish_reason for f in finals] == [expected]
    assert finals[0].model_extra.get("native_finish_reason") == native


class ToolUseHost(OllamaStyleTools):
    """A tool call whose answer ends with an Anthropic-style `tool_use` reason."""

    def _completion(self, body, model):
        out = super()._completion(body, model)
        out["choices"][0]["finish_reason"] = "tool_use"
        return out


def test_a_tool_use_reason_with_a_tool_call_is_tool_calls(tmp_path):
    r = _ask_local_tools_host(ToolUseHost, tmp_path)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.tool_calls


class MixedToolUseStream(FakeOpenAI):
    """A stream of two choices that both end with `tool_use`: choice 0 called a tool, choice 1 wrote text."""

    def _chunks(self, body, model):
        import orjson

        base = {"id": "chatcmpl-mixed", "object": "chat.completion.chunk", "created": 1, "model": model}

        def chunk(index, delta, finish=None):
            c = {**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return b"data: " + orjson.dumps(c) + b"\n\n"

        return [chunk(0, {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                               "function": {"name": "f", "arguments": "{}"}}]}),
                chunk(1, {"role": "assistant", "content": "plain text"}),
                chunk(0, {}, "tool_use"), chunk(1, {}, "tool_use"), b"data: [DONE]\n\n"]


def test_a_streamed_tool_use_reason_is_judged_per_choice(tmp_path):
    with MixedToolUseStream() as up:
        cfg = {"models": [{"name": "local-mixed", "deployments": [
            {"provider": "openai_compatible", "api_base": up.url}]}], "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
        with running_gateway(cfg) as base:
            client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=20)
            finals = {c.choices[0].index: c.choices[0].finish_reason
                      for c in client.chat.completions.create(model="local-mixed", n=2, stream=True,
                                                              messages=[{"role": "user", "content": "hi"}])
                      if c.choices and c.choices[0].finish_reason}
    assert finals == {0: "tool_calls", 1: "stop"}
