"""Chat Completions <-> Anthropic Messages translation (pure), checked against the fake's validator."""

from __future__ import annotations

import orjson
import pytest

from tests.fakes.anthropic_upstream import check_request
from tiergate.wire import anthropic as wa

HDRS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


def _ok(req: dict) -> None:
    assert check_request(req, HDRS, "k") == []


def test_system_developer_merge_and_defaults():
    req = wa.to_messages_request({"model": "claude", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "use metric"}]},
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "again"},
    ]}, "claude-3-7-sonnet")
    assert req["system"] == "be brief\n\nuse metric"
    assert req["max_tokens"] == wa.DEFAULT_MAX_TOKENS
    assert req["model"] == "claude-3-7-sonnet"
    assert req["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                            {"type": "text", "text": "again"}]}]
    _ok(req)


def test_limits_stop_temperature_clamp_user():
    req = wa.to_messages_request({"model": "c", "max_completion_tokens": 77, "max_tokens": 5, "stop": "END",
                                  "temperature": 1.7, "top_p": 0.5, "user": "u1",
                                  "messages": [{"role": "user", "content": "x"}]}, "c")
    assert req["max_tokens"] == 77 and req["stop_sequences"] == ["END"] and req["temperature"] == 1.0
    assert req["metadata"] == {"user_id": "u1"} and req["top_p"] == 0.5
    _ok(req)
    req = wa.to_messages_request({"model": "c", "max_tokens": 5, "stop": ["a", "b"],
                                  "messages": [{"role": "user", "content": "x"}]}, "c")
    assert req["max_tokens"] == 5 and req["stop_sequences"] == ["a", "b"]


@pytest.mark.parametrize(("field", "value"), [("temperature", "hot"), ("temperature", 3), ("top_p", "x"),
                                               ("top_p", 1.5), ("stop", ["a", 3]), ("stop", {"x": 1})])
def test_wrong_sampling_values_are_named_400s_without_python_text(field, value):
    """`temperature: "hot"` used to be refused as "(ValueError: could not convert string to float: 'hot')"
    with no param: now the field is named and the code is invalid_value, as anthropic.md says."""
    from tiergate.providers.anthropic import translate_request
    from tiergate.providers.base import RequestRefused

    body = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], field: value}
    with pytest.raises(RequestRefused) as ei:
        translate_request(body, False, "c")
    e = ei.value
    assert (e.status, e.param, e.code) == (400, field, "invalid_value") and "Error" not in e.message


def test_images_data_url_and_http_url():
    req = wa.to_messages_request({"model": "c", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
    ]}]}, "c")
    blocks = req["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                     "data": "iVBORw0KGgo="}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    _ok(req)
    with pytest.raises(wa.TranslationError) as e:
        wa.to_messages_request({"model": "c", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {}}]}]}, "c")
    assert e.value.param == "messages[0].content[0]"


def test_tool_loop_translation():
    body = {"model": "c", "parallel_tool_calls": False, "tool_choice": {"type": "function", "function": {"name": "w"}},
            "tools": [{"type": "function", "function": {"name": "w", "description": "weather",
                                                        "parameters": {"type": "object",
                                                                       "properties": {"city": {"type": "string"}}}}}],
            "messages": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Rome\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
            ]}
    req = wa.to_messages_request(body, "c")
    assert req["tools"] == [{"name": "w", "description": "weather", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string"}}}}]
    assert req["tool_choice"] == {"type": "tool", "name": "w", "disable_parallel_tool_use": True}
    assistant, results = req["messages"][1], req["messages"][2]
    assert assistant["content"][1] == {"type": "tool_use", "id": "call_2", "name": "w", "input": {"city": "Rome"}}
    assert results["role"] == "user" and [b["tool_use_id"] for b in results["content"]] == ["call_1", "call_2"]
    assert results["content"][0]["content"] == "sunny"
    _ok(req)
    for choice, want in (("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})):
        r = wa.to_messages_request({**body, "tool_choice": choice, "parallel_tool_calls": None}, "c")
        assert r["tool_choice"] == want


def test_reasoning_effort_to_thinking():
    req = wa.to_messages_request({"model": "c", "reasoning_effort": "medium", "temperature": 0.3,
                                  "max_completion_tokens": 1000, "messages": [{"role": "user", "content": "x"}]}, "c")
    assert req["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert req["max_tokens"] == 1000 + 4096 and "temperature" not in req
    _ok(req)
    for effort, budget in (("low", 1024), ("high", 16384)):
        r = wa.to_messages_request({"model": "c", "reasoning_effort": effort,
                                    "messages": [{"role": "user", "content": "x"}]}, "c")
        assert r["thinking"]["budget_tokens"] == budget and r["max_tokens"] > budget
    with pytest.raises(wa.TranslationError):
        wa.to_messages_request({"model": "c", "reasoning_effort": "ultra", "messages": [{"role": "user", "content": "x"}]},
                               "c")


def test_thinking_off_when_tool_turn_lacks_thinking_block_and_on_when_passed_back():
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [{"id": "t1", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "r"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    req = wa.to_messages_request({"model": "c", "reasoning_effort": "low", "tools": tools, "messages": msgs}, "c")
    assert "thinking" not in req
    _ok(req)
    msgs[1]["thinking_blocks"] = [{"type": "thinking", "thinking": "hmm", "signature": "s"}]
    req = wa.to_messages_request({"model": "c", "reasoning_effort": "low", "tools": tools, "messages": msgs}, "c")
    assert req["thinking"]["budget_tokens"] == 1024 and req["messages"][1]["content"][0]["type"] == "thinking"
    _ok(req)


def test_from_message_text_tools_usage_thinking():
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "stop_reason": "tool_use",
           "content": [{"type": "thinking", "thinking": "I should call the tool", "signature": "s"},
                       {"type": "text", "text": "Let me check."},
                       {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}}],
           "usage": {"input_tokens": 10, "output_tokens": 50, "cache_read_input_tokens": 100,
                     "cache_creation_input_tokens": 20}}
    out = wa.from_message(msg)
    ch = out["choices"][0]
    assert out["object"] == "chat.completion" and out["id"] == "chatcmpl-msg_1"
    assert ch["finish_reason"] == "tool_calls" and ch["message"]["content"] == "Let me check."
    assert ch["message"]["tool_calls"][0]["function"] == {"name": "w", "arguments": '{"city":"Paris"}'}
    assert ch["message"]["reasoning_content"] == "I should call the tool"
    u = out["usage"]
    assert u["prompt_tokens"] == 130 and u["prompt_tokens_details"]["cached_tokens"] == 100
    assert u["prompt_tokens_details"]["cache_write_tokens"] == 20
    assert u["completion_tokens"] == 50 and u["total_tokens"] == 180
    assert 0 < u["completion_tokens_details"]["reasoning_tokens"] < 50
    for sr, fr in (("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop"), ("refusal", "content_filter")):
        assert wa.from_message({**msg, "stop_reason": sr})["choices"][0]["finish_reason"] == fr


def test_stream_translation_text_tool_thinking():
    tr = wa.StreamTranslator(model="c", include_usage=True)
    events = [
        {"type": "message_start", "message": {"id": "msg_s", "usage": {"input_tokens": 7, "output_tokens": 1,
                                                                       "cache_read_input_tokens": 3}}},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm let me see"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "x"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "tu", "name": "f",
                                                                      "input": {}}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"a\""}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ":1}"}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}},
        {"type": "message_stop"},
    ]
    chunks = [c for ev in events for c in tr.feed(ev)]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["id"] == "chatcmpl-msg_s" and c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hi"
    tcs = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"] and
           "tool_calls" in c["choices"][0]["delta"]]
    assert tcs[0] == {"index": 0, "id": "tu", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert "".join(t["function"]["arguments"] for t in tcs) == '{"a":1}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["prompt_tokens"] == 10 and usage["completion_tokens"] == 30
    assert usage["prompt_tokens_details"]["cached_tokens"] == 3
    assert 0 < usage["completion_tokens_details"]["reasoning_tokens"] <= 30
    with pytest.raises(wa.AnthropicStreamError) as e:
        tr.feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert wa.map_status(200, e.value.type) == (503, "api_error")


def test_error_status_mapping():
    assert wa.map_status(529, "overloaded_error") == (503, "api_error")
    assert wa.map_status(400, "invalid_request_error") == (400, "invalid_request_error")
    assert wa.map_status(401, "authentication_error") == (401, "authentication_error")
    assert wa.map_status(404, "not_found_error") == (404, "invalid_request_error")
    assert wa.map_status(413, "request_too_large") == (413, "invalid_request_error")
    assert wa.map_status(429, "rate_limit_error") == (429, "rate_limit_error")
    assert wa.map_status(500, "api_error") == (500, "api_error")
    assert orjson.loads(orjson.dumps(wa.THINKING_BUDGETS))["high"] == 16384


def test_json_schema_becomes_forced_tool_and_comes_back_as_content():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = {"model": "c", "messages": [{"role": "user", "content": "where?"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}}
    req = wa.to_messages_request(body, "c")
    name = wa.structured_tool(body)
    assert req["tools"][-1] == {"name": name, "description": "Give the final answer as this JSON object.",
                                "input_schema": schema}
    assert req["tool_choice"] == {"type": "tool", "name": name}
    _ok(req)
    msg = {"id": "m", "content": [{"type": "tool_use", "id": "t", "name": name, "input": {"city": "Oslo"}}],
           "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 2}}
    out = wa.from_message(msg, structured=name)
    assert out["choices"][0]["message"]["content"] == '{"city":"Oslo"}'
    assert out["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in out["choices"][0]["message"]
    tr = wa.StreamTranslator(model="c", structured=name)
    evs = [{"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 1}}},
           {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": name}},
           {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"ci'}},
           {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": 'ty":"Oslo"}'}},
           {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}},
           {"type": "message_stop"}]
    chunks = [c for e in evs for c in tr.feed(e)]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == '{"city":"Oslo"}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    # with thinking the tool cannot be forced: auto + an instruction
    req = wa.to_messages_request({**body, "reasoning_effort": "low"}, "c")
    assert req["tool_choice"] == {"type": "auto"} and name in req["system"]
    _ok(req)
    req = wa.to_messages_request({**body, "response_format": {"type": "json_object"}}, "c")
    assert "JSON object" in req["system"] and "tools" not in req
