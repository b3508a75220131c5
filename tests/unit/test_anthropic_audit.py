"""Anthropic translation findings of the acceptance audit (pure translation; the end-to-end checks are in
tests/e2e/test_anthropic_gateway_audit.py)."""

from __future__ import annotations

import pytest

from tiergate.wire import anthropic as wa

EVENTS = [
    {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 3, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
    {"type": "message_stop"},
]


def _chunks(include_usage: bool) -> list[dict]:
    tr = wa.StreamTranslator(model="claude-3-7-sonnet", include_usage=include_usage)
    return [c for ev in EVENTS for c in tr.feed(ev)]


def test_stream_chunks_carry_usage_null_when_usage_is_asked_for():
    """openai-wire-facts §2c: with include_usage every chunk carries `"usage": null`, the last one the usage."""
    chunks = _chunks(True)
    assert len(chunks) == 4  # role, "hi", finish, usage
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2


def test_stream_chunks_without_include_usage_have_no_usage_key():
    chunks = _chunks(False)
    assert len(chunks) == 3 and all("usage" not in c for c in chunks)


# ---------------------------------------------------------------- prompt caching: cache_control passed through

EPH = {"type": "ephemeral"}


def _ok(req: dict) -> None:
    from tests.fakes.anthropic_upstream import check_request

    assert check_request(req, {"x-api-key": "k", "anthropic-version": "2023-06-01"}, "k") == []


def test_cache_control_on_system_parts_keeps_system_a_list_of_blocks():
    req = wa.to_messages_request({"model": "c", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "long rules", "cache_control": EPH},
                                       {"type": "text", "text": "more"}]},
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]}, "c")
    assert req["system"] == [{"type": "text", "text": "long rules", "cache_control": EPH},
                             {"type": "text", "text": "more"}, {"type": "text", "text": "be brief"}]
    _ok(req)
    # a message-level marker marks its last block; json_object's instruction comes after
    req = wa.to_messages_request({"model": "c", "response_format": {"type": "json_object"}, "messages": [
        {"role": "system", "content": "rules", "cache_control": EPH}, {"role": "user", "content": "hi"}]}, "c")
    assert req["system"] == [{"type": "text", "text": "rules", "cache_control": EPH},
                             {"type": "text", "text": "Respond with a single JSON object and nothing else."}]
    # without any marker: the string, as before
    req = wa.to_messages_request({"model": "c", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "system", "content": "c"}, {"role": "user", "content": "hi"}]}, "c")
    assert req["system"] == "a\nb\n\nc"


def test_cache_control_on_user_assistant_tool_parts_and_tools():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}, "cache_control": EPH}]
    req = wa.to_messages_request({"model": "c", "tools": tools, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "doc", "cache_control": EPH},
                                     {"type": "image_url", "image_url": {"url": "https://x/a.png"},
                                      "cache_control": EPH},
                                     {"type": "text", "text": "q"}]},
        {"role": "assistant", "content": "a", "cache_control": EPH,
         "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "42", "cache_control": EPH},
        {"role": "user", "content": "again", "cache_control": EPH},
    ]}, "c")
    user, assistant, results = req["messages"]
    assert user["content"] == [{"type": "text", "text": "doc", "cache_control": EPH},
                               {"type": "image", "source": {"type": "url", "url": "https://x/a.png"},
                                "cache_control": EPH},
                               {"type": "text", "text": "q"}]
    assert assistant["content"][0] == {"type": "text", "text": "a", "cache_control": EPH}
    assert "cache_control" not in assistant["content"][1]  # the tool_use block
    assert results["content"] == [{"type": "tool_result", "tool_use_id": "t1", "content": "42", "cache_control": EPH},
                                  {"type": "text", "text": "again", "cache_control": EPH}]
    assert req["tools"][0]["cache_control"] == EPH
    _ok(req)


def test_cache_control_of_the_wrong_shape_is_a_named_400():
    from tiergate.providers.anthropic import translate_request
    from tiergate.providers.base import RequestRefused

    with pytest.raises(RequestRefused) as ei:
        translate_request({"model": "c", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "x", "cache_control": "yes"}]}]}, False, "c")
    assert (ei.value.param, ei.value.code) == ("messages[0].content[0].cache_control", "invalid_value")
