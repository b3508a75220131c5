"""`POST /v1/responses` end to end with the official SDK: native for OpenAI deployments (the fake OpenAI
upstream receives the Responses body unchanged; native streaming: test_responses_native_stream.py),
translated through the chat pipeline for Anthropic deployments (the wire-checking fake Anthropic
upstream) and for models with fallbacks, streamed or not."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from tests.fakes.anthropic_upstream import FakeAnthropicThread
from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("responses") / "tiergate.db"
    with FakeOpenAI(api_key="sk-oai-e2e") as up, FakeAnthropicThread("sk-ant-e2e") as ant:
        cfg = {
            "models": [
                {"name": "gpt-4o-mini", "deployments": [{"provider": "openai", "api_base": up.url,
                                                         "api_key": "env:TG_E2E_OAI"}]},
                {"name": "o3-mini", "deployments": [{"provider": "openai", "api_base": up.url,
                                                     "api_key": "env:TG_E2E_OAI"}]},
                # a model with fallbacks goes through the chat pipeline: the translated path
                {"name": "gpt-4o", "fallbacks": ["gpt-4o-mini"],
                 "deployments": [{"provider": "openai", "api_base": up.url, "api_key": "env:TG_E2E_OAI"}]},
                {"name": "o1", "fallbacks": ["o3-mini"],  # a reasoning model on the translated path
                 "deployments": [{"provider": "openai", "api_base": up.url, "api_key": "env:TG_E2E_OAI"}]},
                {"name": "claude-3-7-sonnet", "deployments": [{"provider": "anthropic", "api_base": ant.base_url,
                                                               "api_key": "env:TG_E2E_ANT",
                                                               "model": "claude-3-7-sonnet-20250219"}]},
            ],
            "storage": f"sqlite:///{db}",
        }
        with running_gateway(cfg, env={"TG_E2E_OAI": "sk-oai-e2e", "TG_E2E_ANT": "sk-ant-e2e"}) as url:
            yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0), up, ant


def test_native_openai_responses(env):
    client, up, _ = env
    up.clear()
    r = client.responses.create(model="o3-mini", input="hello native", instructions="be brief",
                                reasoning={"effort": "low"}, max_output_tokens=200)
    sent = up.last
    assert sent.path.endswith("/responses")
    assert sent.body["input"] == "hello native" and sent.body["instructions"] == "be brief"
    assert sent.body["reasoning"] == {"effort": "low"} and sent.headers["authorization"] == "Bearer sk-oai-e2e"
    assert r.object == "response" and r.output_text
    raw = client.responses.with_raw_response.create(model="o3-mini", input="x")
    assert raw.headers["x-tiergate-responses"] == "native" and float(raw.headers["x-tiergate-cost-usd"]) > 0


def test_translated_stream_from_openai_chat(env):
    client, up, _ = env
    up.clear()
    events = list(client.responses.create(model="gpt-4o", input="one two three", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[1] == "response.in_progress"
    assert types[-1] == "response.completed"
    assert "response.output_text.delta" in types and "response.output_text.done" in types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.output_text == "echo: one two three" and final.usage.output_tokens > 0
    assert up.last.path.endswith("/chat/completions") and up.last.body["stream"] is True
    with client.responses.stream(model="gpt-4o", input="stream helper") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        got = stream.get_final_response()
    assert "".join(deltas) == "echo: stream helper" == got.output_text


def test_anthropic_through_responses_with_tools_and_reasoning(env):
    client, _, ant = env
    ant.problems.clear()
    tools = [{"type": "function", "name": "lookup", "description": "find things",
              "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}]
    r = client.responses.create(model="claude-3-7-sonnet", input="find the answer", tools=tools,
                                reasoning={"effort": "medium"}, instructions="use tools")
    assert ant.problems == []
    sent = ant.requests[-1]
    assert sent["model"] == "claude-3-7-sonnet-20250219" and sent["system"] == "use tools"
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    call = next(o for o in r.output if o.type == "function_call")
    assert call.name == "lookup" and call.arguments == '{"q":"test"}'
    assert r.usage.output_tokens_details.reasoning_tokens > 0
    r2 = client.responses.create(model="claude-3-7-sonnet", tools=tools, input=[
        {"role": "user", "content": "find the answer"},
        {"type": "function_call", "call_id": call.call_id, "name": "lookup", "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "42"}])
    assert ant.problems == [] and r2.status == "completed" and r2.output_text.startswith("echo:")


def test_anthropic_stream_and_structured_output(env):
    client, _, ant = env
    ant.problems.clear()

    class Place(BaseModel):
        city: str

    parsed = client.responses.parse(model="claude-3-7-sonnet", input="where?", text_format=Place)
    assert parsed.output_parsed == Place(city="test")
    with client.responses.stream(model="claude-3-7-sonnet", input="alpha beta") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == "echo: alpha beta" == final.output_text
    assert ant.problems == []


def test_anthropic_chat_completions_via_sdk(env):
    client, _, ant = env
    ant.problems.clear()
    c = client.chat.completions.create(model="claude-3-7-sonnet", messages=[
        {"role": "system", "content": "s"}, {"role": "user", "content": "hi there"}], temperature=1.5)
    assert c.choices[0].message.content == "echo: hi there" and ant.requests[-1]["temperature"] == 1.0
    chunks = list(client.chat.completions.create(model="claude-3-7-sonnet", stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "a b"}]))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "echo: a b"
    assert chunks[-1].usage.completion_tokens > 0
    ant.fail_next = [(529, "overloaded_error")]  # overloaded is retryable: the dispatcher tries again
    before = len(ant.requests)
    c = client.chat.completions.create(model="claude-3-7-sonnet", messages=[{"role": "user", "content": "retry"}])
    assert c.choices[0].message.content == "echo: retry" and len(ant.requests) == before + 2
    ant.fail_next = [(400, "invalid_request_error")]  # a client error is not retried and keeps its status
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="claude-3-7-sonnet", messages=[{"role": "user", "content": "x"}])


def test_previous_response_id_native_upstream_translated_from_store(env):
    client, up, _ = env
    up.clear()
    r = client.responses.create(model="gpt-4o-mini", input="x", previous_response_id="resp_upstream_1")
    assert r.object == "response" and up.last.body["previous_response_id"] == "resp_upstream_1"  # native: as sent
    with pytest.raises(openai.BadRequestError) as e:  # translated: resolved from the gateway's store
        client.responses.create(model="gpt-4o", input="x", previous_response_id="resp_123")
    assert e.value.body["code"] == "previous_response_not_found" and "resp_123" in e.value.body["message"]


def test_translated_stream_with_function_calls(env):
    client, _, _ = env
    tools = [{"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    with client.responses.stream(model="gpt-4o", input="weather in Paris?", tools=tools) as stream:
        names = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in names and "response.function_call_arguments.done" in names
    call = next(o for o in final.output if o.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments)["city"]
    ev = client.responses.create(model="claude-3-7-sonnet", input="weather?", tools=tools, stream=True)
    final = [e for e in ev][-1].response
    call = next(o for o in final.output if o.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "test"}


def test_translated_response_echoes_the_settings_the_model_ran_with(env):
    """o1 takes no temperature (shaping drops it): the Response used to echo the client's 0.5 anyway."""
    client, up, _ = env
    up.clear()
    raw = client.responses.with_raw_response.create(model="o1", input="x", temperature=0.5, top_p=0.5)
    r = raw.parse()
    assert "temperature" in raw.headers["x-tiergate-dropped-params"] and "temperature" not in up.last.body
    assert (r.temperature, r.top_p) == (1.0, 1.0)
    events = list(client.responses.create(model="o1", input="x", temperature=0.5, stream=True))
    assert events[0].response.temperature == 1.0 and events[-1].response.temperature == 1.0
    kept = client.responses.create(model="gpt-4o", input="x", temperature=0.5)  # a model that takes it
    assert kept.temperature == 0.5


@pytest.mark.parametrize("model", ["o3-mini", "gpt-4o"])  # native (Responses upstream), translated (chat upstream)
@pytest.mark.parametrize(("kw", "param"), [
    ({"temperature": 3}, "temperature"),
    ({"top_logprobs": 30}, "top_logprobs"),
    ({"instructions": 5}, "instructions"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]}, "input[0].content[0].text"),
    ({"extra_body": {"stream": "yes"}}, "stream"),  # was streamed
    ({"extra_body": {"store": 1}}, "store"),
    ({"include": ["bogus.value"]}, "include[0]"),  # spec IncludeEnum
    ({"include": [["x"]]}, "include[0]"),  # was a 500 (unhashable)
])
def test_responses_refuse_what_chat_refuses_on_both_paths(env, model, kw, param):
    """The native path sent out-of-range settings upstream unchecked; `instructions: 5` and a numeric text part
    were turned into strings."""
    client, up, _ = env
    up.clear()
    body = {"input": "x", **kw}
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=model, **body)
    assert e.value.param == param, e.value.body
    assert up.requests == []


def test_a_dropped_effort_is_not_echoed(env):
    """gpt-4o takes no reasoning effort (shaping drops it): the Response said effort "high" anyway."""
    client, _, _ = env
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="x", reasoning={"effort": "high"})
    assert "reasoning_effort" in raw.headers.get("x-tiergate-dropped-params", "")
    assert raw.parse().reasoning.effort is None


def test_native_path_reports_the_effort_sent(env):
    """Only the translated path said which effort the model ran at; the native one never did."""
    client, _, _ = env
    raw = client.responses.with_raw_response.create(model="o3-mini", input="x", reasoning={"effort": "low"})
    assert raw.headers["x-tiergate-responses"] == "native" and raw.headers["x-tiergate-reasoning-effort"] == "low"
    raw = client.responses.with_raw_response.create(model="o3-mini", input="x")
    assert "x-tiergate-reasoning-effort" not in raw.headers
