"""Anthropic translation findings of the acceptance audit (pure translation; the end-to-end checks are in
tests/e2e/test_anthropic_gateway_audit.py)."""

from __future__ import annotations

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
