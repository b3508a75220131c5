"""Responses API <-> Chat Completions translation (pure); streamed events replayed through the official
SDK's own stream accumulator so the event order and fields are what `responses.stream` needs."""

from __future__ import annotations

import pytest
from openai import omit
from openai._models import construct_type_unchecked
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from tiergate.wire import responses as wr
from tiergate.wire.errors import GatewayError


def test_request_string_input_instructions_effort_limits():
    body = wr.to_chat_request({"model": "o3-mini", "input": "hi", "instructions": "be terse",
                               "reasoning": {"effort": "low", "summary": "auto"}, "max_output_tokens": 300,
                               "temperature": 0.2, "stream": True, "metadata": {"a": "b"}})
    assert body["messages"] == [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"}]
    assert body["reasoning_effort"] == "low" and body["max_completion_tokens"] == 300
    assert body["temperature"] == 0.2 and body["stream_options"] == {"include_usage": True}
    assert "metadata" not in body and "reasoning" not in body


def test_request_items_tools_format():
    req = {"model": "m", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"},
                                     {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
        {"type": "function_call", "call_id": "call_1", "name": "w", "arguments": "{\"c\":\"P\"}", "id": "fc_1"},
        {"type": "function_call", "call_id": "call_2", "name": "w", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
    ], "tools": [{"type": "function", "name": "w", "description": "d", "parameters": {"type": "object"},
                  "strict": True}],
        "tool_choice": {"type": "function", "name": "w"},
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}}}
    body = wr.to_chat_request(req)
    m = body["messages"]
    assert m[0]["content"][1] == {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}
    assert m[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"P\"}"}},
        {"id": "call_2", "type": "function", "function": {"name": "w", "arguments": "{}"}}]}
    assert m[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert m[3] == {"role": "assistant", "content": "ok"}
    assert body["tools"] == [{"type": "function", "function": {"name": "w", "description": "d",
                                                               "parameters": {"type": "object"}, "strict": True}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "w"}}
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "out", "schema": {"type": "object"}, "strict": True}}


@pytest.mark.parametrize("req,param", [
    ({"model": "m", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"model": "m", "input": "x", "max_output_tokens": 3}, "max_output_tokens"),
    ({"model": "m"}, "input"),
])
def test_request_refusals(req, param):
    with pytest.raises(GatewayError) as e:
        wr.to_chat_request(req)
    assert e.value.status == 400 and e.value.param == param


def test_response_object():
    chat = {"id": "chatcmpl-1", "model": "o3-mini", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "w", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40,
                  "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 20}}}
    r = wr.to_response(chat, {"model": "auto", "input": "x"}, "resp_1", 123)
    assert r["object"] == "response" and r["status"] == "completed" and r["model"] == "o3-mini"
    assert r["output"][0]["type"] == "message" and r["output"][0]["content"][0]["text"] == "Checking."
    assert r["output"][1]["type"] == "function_call" and r["output"][1]["call_id"] == "call_9"
    assert r["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
                          "output_tokens": 30, "output_tokens_details": {"reasoning_tokens": 20}, "total_tokens": 40}
    from openai.types.responses import Response

    Response.model_validate(r)  # the SDK's own type: `cache_write_tokens` is a required field of the usage
    chat["choices"][0]["finish_reason"] = "length"
    r = wr.to_response(chat, {"model": "m", "input": "x"}, "resp_2", 1)
    assert r["status"] == "incomplete" and r["incomplete_details"] == {"reason": "max_output_tokens"}


def _chunk(delta=None, finish=None, usage=None, choices=True):
    c = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
         "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices else []}
    if usage:
        c["usage"] = usage
    return c


def _replay(events):
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for _, data in events:
        state.handle_event(construct_type_unchecked(type_=ResponseStreamEvent, value=data))
    return state


def test_stream_text_then_tools_through_sdk_accumulator():
    tr = wr.StreamTranslator(req={"model": "m", "input": "x"}, resp_id="resp_s", created_at=1, model="gpt-4o-mini")
    evs = tr.start()
    for c in [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hel"}), _chunk({"content": "lo"}),
              _chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                      "function": {"name": "f", "arguments": ""}}]}),
              _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":"}}]}),
              _chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                      "function": {"name": "g", "arguments": "{}"}}]}),
              _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
              _chunk({}, "tool_calls"),
              _chunk(usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}, choices=False)]:
        evs += tr.feed(c)
    evs += tr.finish()
    names = [n for n, _ in evs]
    assert names[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    assert names[-1] == "response.completed"
    assert [d["sequence_number"] for _, d in evs] == list(range(len(evs)))
    done = [d for n, d in evs if n == "response.function_call_arguments.done"]
    assert [(d["name"], d["arguments"]) for d in done] == [("f", "{\"x\":1}"), ("g", "{}")]
    state = _replay(evs)
    final = state._completed_response
    assert final is not None and final.output_text == "Hello"
    assert [o.type for o in final.output] == ["message", "function_call", "function_call"]
    assert final.usage.output_tokens == 7


def test_stream_length_is_incomplete_and_fail():
    tr = wr.StreamTranslator(req={"model": "m", "input": "x"}, resp_id="r", created_at=1, model="m")
    evs = tr.start() + tr.feed(_chunk({"content": "a"})) + tr.feed(_chunk({}, "length")) + tr.finish()
    assert evs[-1][0] == "response.incomplete"
    assert evs[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    tr = wr.StreamTranslator(req={"model": "m", "input": "x"}, resp_id="r", created_at=1, model="m")
    evs = tr.start() + tr.feed(_chunk({"content": "a"})) + tr.fail("upstream cut", "server_error")
    assert evs[-1][0] == "response.failed" and evs[-1][1]["response"]["error"]["code"] == "server_error"
