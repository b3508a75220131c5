"""Estimated output and reasoning tokens per (model, effort) for a prompt, and the cost they imply.

No recorded data in `shared/data` measures answer lengths, so these are documented assumptions, kept
in one place and overridable from `profiles.yaml` (`reasoning_tokens:` per model):

- visible answer tokens: 600 for code-generation and open prompts (shared/data/README.md section 4,
  the LiveCodeBench cost model; o1-mini / o1-preview answers there average 255-270 tokens, so 600 is
  on the high side), 150 for multiple-choice or single-answer prompts (our assumption: a short
  justification and the letter), never above the request's output limit;
- reasoning tokens (billed as output, openai-wire-facts.md section 1c): o-series at low / medium /
  high = 1,500 / 4,000 / 10,000 and `minimal` 500; o1-mini and o1-preview 4,000; Claude extended
  thinking 4,000; models without reasoning 0 (README section 4; the `minimal` figure is ours);
  a reasoning model named without an effort runs at its default, medium.

Cost (openai-wire-facts.md section 2b, no cached tokens assumed for a new prompt):
    prompt_tokens x input_price + (output_tokens + reasoning_tokens) x output_price, per 1M tokens.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

ANSWER_TOKENS_OPEN = 600
ANSWER_TOKENS_SHORT = 150
EFFORT_REASONING_TOKENS: dict[str, int] = {"minimal": 500, "low": 1_500, "medium": 4_000, "high": 10_000}
FIXED_REASONING_TOKENS: dict[str, int] = {"o1-mini": 4_000, "o1-preview": 4_000}
THINKING_TOKENS = 4_000
DEFAULT_EFFORT = "medium"

_EFFORT_MODEL = re.compile(r"^(o\d+(-mini|-pro)?|gpt-5(\.\d+)?(-mini|-nano)?)(-\d{4}-\d{2}-\d{2})?$")
_CHOICES = re.compile(r"^\s*\(?[A-Ea-e][).:]\s*\S", re.MULTILINE)
_SHORT_ASK = re.compile(
    r"\b(?:answer with (?:the|a|only)|choose the (?:correct|best)|which of the following|"
    r"respond with (?:only|just)|true or false)\b",
    re.IGNORECASE,
)
#: Each `_SHORT_ASK` match contains one of these (lower-case): a substring test rules most prompts out
#: without running the case-insensitive regex (~0.15 ms on a 1,000-token prompt).
_SHORT_ASK_KEYS = ("answer with ", "choose the ", "which of the following", "respond with ", "true or false")


@dataclass(frozen=True)
class TokenEstimate:
    output_tokens: int  # visible answer
    reasoning_tokens: int


def is_reasoning_model(model: str, efforts: tuple[str, ...] | None = None) -> bool:
    """True for models that take `reasoning_effort` (catalogue efforts when known, else the name)."""
    if efforts:
        return True
    return bool(_EFFORT_MODEL.match(model))


class TokensModel:
    """Estimates tokens for one prompt and one candidate."""

    def __init__(self, reasoning_overrides: Mapping[str, int] | None = None) -> None:
        # keys: "model@effort" or "model" -> reasoning tokens
        self.overrides = dict(reasoning_overrides or {})

    def answer_tokens(self, text: str) -> int:
        """Visible answer tokens for a prompt (same for every model)."""
        if len(_CHOICES.findall(text)) >= 3:
            return ANSWER_TOKENS_SHORT
        # str.lower maps a few non-ASCII letters differently from re.IGNORECASE: those texts skip the filter
        low = text.lower() if text.isascii() else None
        if (low is None or any(k in low for k in _SHORT_ASK_KEYS)) and _SHORT_ASK.search(text):
            return ANSWER_TOKENS_SHORT
        return ANSWER_TOKENS_OPEN

    def reasoning_tokens(self, model: str, effort: str | None, efforts: tuple[str, ...] | None = None) -> int:
        key = f"{model}@{effort}" if effort else model
        if key in self.overrides:
            return int(self.overrides[key])
        if effort == "thinking":
            return THINKING_TOKENS
        if model in self.overrides and effort is None:
            return int(self.overrides[model])
        if model in FIXED_REASONING_TOKENS:
            return FIXED_REASONING_TOKENS[model]
        if effort in EFFORT_REASONING_TOKENS:
            return EFFORT_REASONING_TOKENS[effort]
        if is_reasoning_model(model, efforts):
            return EFFORT_REASONING_TOKENS[DEFAULT_EFFORT]
        return 0

    def estimate(
        self,
        text: str,
        model: str,
        effort: str | None,
        *,
        efforts: tuple[str, ...] | None = None,
        max_output_tokens: int | None = None,
        answer_tokens: int | None = None,
    ) -> TokenEstimate:
        out = self.answer_tokens(text) if answer_tokens is None else answer_tokens
        reasoning = self.reasoning_tokens(model, effort, efforts)
        if max_output_tokens is not None:
            reasoning = min(reasoning, max_output_tokens)
            out = max(0, min(out, max_output_tokens - reasoning))
        return TokenEstimate(out, reasoning)


def cost_usd(prompt_tokens: int, est: TokenEstimate, input_price: float, output_price: float) -> float:
    """Estimated dollars for one call (prices per 1M tokens)."""
    return (prompt_tokens * input_price + (est.output_tokens + est.reasoning_tokens) * output_price) / 1e6
