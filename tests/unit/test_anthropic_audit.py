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


# ---------------------------------------------------------------- what the translation drops or changes

U = [{"role": "user", "content": "x"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize(("extra", "dropped"), [
    ({"temperature": 1.7}, ["temperature"]),                     # clamped to 1.0
    ({"temperature": 0.7, "top_p": 0.9}, []),                    # kept as sent
    ({"temperature": 1}, []),
    ({"reasoning_effort": "low", "temperature": 0.2, "top_p": 0.9}, ["temperature", "top_p"]),  # thinking
    ({"reasoning_effort": "low", "temperature": 1.7}, ["temperature"]),
    ({"reasoning_effort": "low"}, []),
    ({"reasoning_effort": "high", "tools": TOOLS, "tool_choice": "required"}, ["tool_choice"]),
    ({"reasoning_effort": "high", "tools": TOOLS, "tool_choice": "auto"}, []),
    ({"tools": TOOLS, "tool_choice": "required"}, []),
    ({"tool_choice": "auto"}, ["tool_choice"]),                  # no tools: not sent
    ({"tools": TOOLS, "tool_choice": "auto", "response_format": {"type": "json_schema", "json_schema": {
        "name": "a", "schema": {"type": "object"}}}}, ["tool_choice"]),  # the answer's own tool is forced
    ({"store": True, "metadata": {"k": "v"}, "service_tier": "auto", "user": "u"},
     ["metadata", "service_tier", "store"]),
    ({"store": None, "temperature": None}, []),
])
def test_translation_reports_what_it_drops_or_changes(extra, dropped):
    assert wa.translation_dropped({"model": "c", "messages": U, **extra}) == dropped


def test_reasoning_effort_is_reported_when_thinking_stays_off():
    # a tool loop whose assistant turn lost its thinking blocks: thinking is switched off for the request
    msgs = [*U, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "1"}]
    body = {"model": "c", "messages": msgs, "tools": TOOLS, "reasoning_effort": "low", "temperature": 0.3}
    assert wa.translation_dropped(body) == ["reasoning_effort"]
    assert wa.translation_dropped({"model": "c", "messages": U, "reasoning_effort": "low"}, 1024) == [
        "reasoning_effort"]  # no room for the minimum budget
    assert wa.translation_dropped({"model": "c", "messages": U, "n": 3}) == []  # refused, not dropped


def test_forced_tool_choice_under_thinking_keeps_disable_parallel_tool_use():
    req = wa.to_messages_request({"model": "c", "messages": U, "tools": TOOLS, "tool_choice": "required",
                                  "parallel_tool_calls": False, "reasoning_effort": "low"}, "c")
    assert req["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    _ok(req)


def test_provider_dropped_params():
    from tiergate.providers.base import Deployment, Secret
    from tiergate.providers.registry import provider_class

    dep = Deployment(id="claude/0", model="claude-3-7-sonnet", provider="anthropic", api_key=Secret("env:K", "k"),
                     upstream_model="claude-3-7-sonnet-20250219")
    p = provider_class("anthropic")(dep, lambda: None)
    body = {"model": "claude-3-7-sonnet", "messages": U, "reasoning_effort": "medium", "temperature": 1.7}
    assert p.dropped_params(body) == ["temperature"]
    assert p.dropped_params({**body, "reasoning_effort": None}) == ["temperature"]
    assert p.dropped_params({**body, "temperature": 0.5, "reasoning_effort": None}) == []
