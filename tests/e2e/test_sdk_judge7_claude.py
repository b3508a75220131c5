"""Claude behind the gateway as the official `openai` SDK's stream helpers and ledger see it, against the
wire-checking fake Anthropic upstream (tests/fakes/anthropic_upstream.py) on loopback:

- a streamed answer with two thinking blocks (thinking + redacted_thinking) goes through
  `client.chat.completions.stream(...)`: every `delta.thinking_blocks` entry has its `index`, and the
  accumulated blocks, passed back on the next turn, reach Anthropic exactly as it sent them;
- a tool without parameters (Anthropic streams its input as one empty `input_json_delta`) gives `"{}"`
  arguments, streamed (chat and Responses) as unstreamed;
- a stream cut mid-answer (connection cut, an `overloaded_error` event) is billed for what was relayed,
  not message_start's placeholder `output_tokens: 1`;
- tools + `response_format: json_schema`: the client's tools can be called; the final answer still
  comes back as the schema's JSON content."""

from __future__ import annotations

import json

import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropicThread, redacted_data, sign
from tests.helpers import ledger_rows, running_gateway

CLAUDE = "claude-3-7-sonnet"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "weather", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
NOARG = {"type": "function", "function": {
    "name": "get_time", "strict": True,
    "parameters": {"type": "object", "properties": {}, "required": [], "additionalProperties": False}}}
ANSWER = {"type": "json_schema", "json_schema": {"name": "Answer", "strict": True, "schema": {
    "type": "object", "properties": {"temp": {"type": "string"}}, "required": ["temp"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("judge7_claude") / "tiergate.db"
    with FakeAnthropicThread("sk-ant-j7") as ant:
        cfg = {"models": [{"name": CLAUDE, "retry": {"max_retries": 0},
                           "deployments": [{"provider": "anthropic", "api_base": ant.base_url,
                                            "api_key": "env:TG_J7_ANT", "model": "claude-3-7-sonnet-20250219"}]}],
               "storage": f"sqlite:///{db}"}
        with running_gateway(cfg, env={"TG_J7_ANT": "sk-ant-j7"}) as url:
            yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=20), ant, db


@pytest.fixture
def clean(env):
    client, ant, db = env
    ant.problems.clear()
    yield client, ant, db
    ant.redacted_thinking = False
    ant.empty_first_json_delta = False
    ant.cut_after = None
    ant.stream_error_after = None


# ---------------------------------------------------------------- 1. several thinking blocks, SDK stream helper


def test_stream_helper_accumulates_thinking_and_redacted_thinking_blocks(clean):
    client, ant, _ = clean
    ant.redacted_thinking = True
    msgs = [{"role": "user", "content": "weather in paris"}]
    with client.chat.completions.stream(model=CLAUDE, reasoning_effort="low", tools=[WEATHER], messages=msgs) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    msg = final.choices[0].message
    blocks = msg.model_extra["thinking_blocks"]
    thought = blocks[0]["thinking"]
    assert [(b["index"], b["type"]) for b in blocks] == [(0, "thinking"), (1, "redacted_thinking")]
    assert blocks[0]["signature"] == sign(thought) and blocks[1]["data"] == redacted_data(len(ant.requests))
    assert msg.model_extra["reasoning_content"] == thought
    call = msg.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"city": "test"}

    # the next turn passes the accumulated message back: Anthropic gets its blocks unchanged (no `index`)
    msgs += [{"role": "assistant", "content": msg.content, "thinking_blocks": blocks,
              "tool_calls": [{"id": call.id, "type": "function",
                              "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
             {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    ant.redacted_thinking = False
    with client.chat.completions.stream(model=CLAUDE, reasoning_effort="low", tools=[WEATHER], messages=msgs) as s:
        second = s.get_final_completion()
    assert ant.problems == []
    sent = ant.requests[-1]
    assert sent["thinking"]["budget_tokens"] == 1024  # thinking stays on for the tool loop
    turn = next(m["content"] for m in sent["messages"] if m["role"] == "assistant")
    assert turn[:2] == [{"type": "thinking", "thinking": thought, "signature": sign(thought)},
                        {"type": "redacted_thinking", "data": blocks[1]["data"]}]
    assert turn[2]["type"] == "tool_use" and turn[2]["id"] == call.id
    assert second.choices[0].message.content.startswith("echo:")
    assert [b["index"] for b in second.choices[0].message.model_extra["thinking_blocks"]] == [0]


# ---------------------------------------------------------------- 2. a tool without parameters, streamed


def test_tool_without_parameters_streams_empty_object_arguments(clean):
    client, ant, _ = clean
    ant.empty_first_json_delta = True  # as the real API: one empty input_json_delta, nothing else
    msgs = [{"role": "user", "content": "what time is it"}]
    plain = client.chat.completions.create(model=CLAUDE, messages=msgs, tools=[NOARG])
    assert plain.choices[0].message.tool_calls[0].function.arguments == "{}"

    args = ""
    for ch in client.chat.completions.create(model=CLAUDE, messages=msgs, tools=[NOARG], stream=True):
        for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            args += tc.function.arguments or ""
    assert args == "{}"

    with client.chat.completions.stream(model=CLAUDE, messages=msgs, tools=[NOARG]) as s:  # strict: parsed
        for _ in s:
            pass
        call = s.get_final_completion().choices[0].message.tool_calls[0]
    assert call.function.arguments == "{}" and call.function.parsed_arguments == {}

    # a tool with parameters: its JSON as sent, nothing added
    with client.chat.completions.stream(model=CLAUDE, messages=msgs, tools=[WEATHER]) as s:
        call = s.get_final_completion().choices[0].message.tool_calls[0]
    assert call.function.arguments == '{"city":"test"}'

    with client.responses.stream(model=CLAUDE, input="what time is it", tools=[
            {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}]) as s:
        events = list(s)
        r = s.get_final_response()
    assert [o.arguments for o in r.output if o.type == "function_call"] == ["{}"]
    assert [e.arguments for e in events if e.type == "response.function_call_arguments.done"] == ["{}"]
    assert ant.problems == []


# ---------------------------------------------------------------- 3. a stream cut mid-answer is billed for what was relayed


LONG = "please repeat " + " ".join(["alpha"] * 120)


def _row(db, request_id: str) -> dict:
    rows = ledger_rows(db, "request_id = ?", request_id, columns="status, input_tokens, output_tokens, cost_usd")
    assert len(rows) == 1
    return rows[0]


@pytest.mark.parametrize("fault", ["cut_after", "stream_error_after"])
def test_stream_cut_mid_answer_is_billed_for_the_relayed_text(clean, fault):
    client, ant, db = clean
    setattr(ant, fault, 60)  # 60 words of the echo, then the connection drops / an overloaded_error event
    got: list[str] = []
    with client.chat.completions.with_streaming_response.create(
            model=CLAUDE, stream=True, messages=[{"role": "user", "content": LONG}]) as raw:
        rid = raw.headers["x-request-id"]
        with pytest.raises(openai.APIError):
            for ch in raw.parse():
                if ch.choices and ch.choices[0].delta.content:
                    got.append(ch.choices[0].delta.content)
    delivered = "".join(got)
    assert delivered.startswith("echo: please repeat alpha") and len(delivered.split()) == 60
    row = _row(db, rid)
    assert row["status"] == "error"
    assert row["output_tokens"] >= 60 and row["input_tokens"] > 100  # estimated, not message_start's 1

    # the Responses API (translated path) bills the same way
    with client.responses.with_streaming_response.create(model=CLAUDE, input=LONG, stream=True) as raw:
        rid = raw.headers["x-request-id"]
        events = list(raw.parse())
    assert events[-1].type == "response.failed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert len(text.split()) == 60
    row = _row(db, rid)
    assert row["status"] == "error" and row["output_tokens"] >= 60
    usage = events[-1].response.usage  # what is billed (it was null: the usage chunk never came)
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (row["input_tokens"], row["output_tokens"])


# ---------------------------------------------------------------- 4. tools + response_format json_schema


def test_tools_with_json_schema_answer_can_call_the_clients_tools(clean):
    client, ant, _ = clean
    msgs = [{"role": "user", "content": "weather in paris, answer as JSON"}]
    r = client.chat.completions.with_raw_response.create(model=CLAUDE, messages=msgs, tools=[WEATHER],
                                                         response_format=ANSWER)
    c = r.parse().choices[0]
    sent = ant.requests[-1]
    assert c.finish_reason == "tool_calls" and [t.function.name for t in c.message.tool_calls] == ["get_weather"]
    assert sent["tool_choice"] == {"type": "any"}  # a tool call: the client's, or the answer's json tool
    assert [t["name"] for t in sent["tools"]] == ["get_weather", "json_output_Answer"]
    assert "json_output_Answer" in sent["system"]
    assert "tool_choice" not in (r.headers.get("x-tiergate-dropped-params") or "")  # none given, none changed

    # after the tool's result the final answer is the schema's JSON, as content (streamed too)
    call = c.message.tool_calls[0]
    msgs += [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "21C"}]
    done = client.chat.completions.create(model=CLAUDE, messages=msgs, tools=[WEATHER], response_format=ANSWER)
    assert done.choices[0].finish_reason == "stop" and not done.choices[0].message.tool_calls
    assert json.loads(done.choices[0].message.content) == {"temp": "test"}
    with client.chat.completions.stream(model=CLAUDE, messages=msgs, tools=[WEATHER], response_format=ANSWER) as s:
        parsed = s.get_final_completion().choices[0].message
    assert json.loads(parsed.content) == {"temp": "test"}

    # parallel_tool_calls: false is kept; tool_choice required: the client's tools only, as asked
    client.chat.completions.create(model=CLAUDE, messages=msgs[:1], tools=[WEATHER], response_format=ANSWER,
                                   parallel_tool_calls=False)
    assert ant.requests[-1]["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    req = client.chat.completions.create(model=CLAUDE, messages=msgs[:1], tools=[WEATHER], response_format=ANSWER,
                                         tool_choice="required")
    assert req.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert ant.requests[-1]["tool_choice"] == {"type": "any"}
    assert [t["name"] for t in ant.requests[-1]["tools"]] == ["get_weather"]
    # no tools of the client's: the json tool is forced, as before
    plain = client.chat.completions.create(model=CLAUDE, messages=msgs[:1], response_format=ANSWER)
    assert json.loads(plain.choices[0].message.content) == {"temp": "test"}
    assert ant.requests[-1]["tool_choice"] == {"type": "tool", "name": "json_output_Answer"}
    assert ant.problems == []
