"""Extended thinking within the model's maximum output: `max_tokens` (the client's limit + the thinking
budget) is never sent above the catalogue's `max_output_tokens` (64,000 for claude-3-7-sonnet without
the `output-128k-2025-02-19` beta header), which Anthropic would refuse with a 400."""

from __future__ import annotations

import pytest

from tests.fakes.anthropic_upstream import check_request
from tiergate.providers.base import Deployment, Secret
from tiergate.providers.registry import provider_class
from tiergate.wire import anthropic as wa

HDRS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
MSGS = [{"role": "user", "content": "think"}]


def _req(limit: int | None, effort: str, max_output: int | None) -> dict:
    body = {"model": "claude-3-7-sonnet", "messages": MSGS, "reasoning_effort": effort}
    if limit is not None:
        body["max_completion_tokens"] = limit
    return wa.to_messages_request(body, "claude-3-7-sonnet-20250219", max_output)


@pytest.mark.parametrize(("limit", "effort", "max_tokens", "budget"), [
    (64000, "low", 64000, 1024),      # was 65024: no room for the answer's limit + 1024, the answer gets less
    (50000, "high", 64000, 14000),    # was 66384: the budget shrinks to what is left
    (60000, "medium", 64000, 4000),
    (63000, "low", 64000, 1024),      # exactly the minimum budget left
    (63500, "minimal", 64000, 1024),  # less than the minimum left: the minimum, the answer's room shrinks
    (1000, "high", 1000 + 16384, 16384),  # fits: unchanged
    (None, "high", wa.DEFAULT_MAX_TOKENS + 16384, 16384),
])
def test_thinking_sum_is_clamped_to_the_models_max_output(limit, effort, max_tokens, budget):
    req = _req(limit, effort, 64000)
    assert req["max_tokens"] == max_tokens <= 64000
    assert req["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert wa.MIN_THINKING_BUDGET <= budget < req["max_tokens"]
    assert check_request(req, HDRS, "k") == []


def test_unknown_max_output_keeps_the_sum():
    assert _req(64000, "low", None)["max_tokens"] == 65024


def test_no_room_for_the_minimum_budget_turns_thinking_off():
    assert wa.fit_thinking(500, 1024, 1024) is None
    req = _req(500, "low", 1024)
    assert "thinking" not in req and req["max_tokens"] == 500
    assert wa.fit_thinking(10, 1024, 1025) == (1025, 1024)


def test_default_limit_is_within_a_small_max_output():
    req = wa.to_messages_request({"model": "claude-3-haiku", "messages": MSGS}, "claude-3-haiku", 2048)
    assert req["max_tokens"] == 2048


def _provider(headers=(), options=None, upstream="claude-3-7-sonnet-20250219"):
    dep = Deployment(id="claude/0", model="claude-3-7-sonnet", provider="anthropic", api_base="http://127.0.0.1:9",
                     api_key=Secret("env:K", "k"), upstream_model=upstream, headers=headers,
                     options=options or {})
    return provider_class("anthropic")(dep, lambda: None)


def test_provider_takes_the_max_output_from_the_catalogue():
    body = {"model": "claude-3-7-sonnet", "messages": MSGS, "max_completion_tokens": 50000,
            "reasoning_effort": "high"}
    req = _provider().translate(body, False)
    assert req["model"] == "claude-3-7-sonnet-20250219"
    assert (req["max_tokens"], req["thinking"]["budget_tokens"]) == (64000, 14000)
    # with the beta header Claude 3.7 Sonnet writes up to 128,000 tokens: nothing to clamp
    beta = _provider(headers=(("anthropic-beta", "output-128k-2025-02-19"),)).translate(body, False)
    assert (beta["max_tokens"], beta["thinking"]["budget_tokens"]) == (66384, 16384)
    # an operator's own figure wins (a model the packaged catalogue does not list, say)
    own = _provider(options={"max_output_tokens": 20000}, upstream="claude-next").translate(
        {**body, "max_completion_tokens": 10000}, False)
    assert (own["max_tokens"], own["thinking"]["budget_tokens"]) == (20000, 10000)
    # a model no catalogue lists: not bounded
    free = _provider(upstream="claude-next").translate({**body, "model": "claude-next"}, False)
    assert free["max_tokens"] == 66384


def test_translate_request_without_a_max_output_looks_up_the_upstream_model():
    """The batch path (`batches/upstream_anthropic.py`) calls `translate_request` with the upstream name only."""
    from tiergate.providers.anthropic import translate_request

    body = {"model": "claude", "messages": MSGS, "max_completion_tokens": 64000, "reasoning_effort": "low"}
    assert translate_request(body, False, "claude-3-7-sonnet-20250219")["max_tokens"] == 64000
    assert translate_request(body, False, "claude-3-5-haiku-20241022", 8192)["max_tokens"] == 8192
