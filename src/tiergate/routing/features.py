"""Prompt features for the router: cheap structural signals plus the static sentence embedding.

Structural features are regex counts that carry across benchmarks (length, numbers, code, maths,
multiple choice, few-shot examples, competitive-programming sections, open-ended writing). They are
computed on the raw text in tens of microseconds. `FeatureExtractor` concatenates them with the
`StaticEmbedder` vector; the quality model standardises the result itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from tiergate.routing.embed import StaticEmbedder

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:[.,]\d+)*(?:\.\d+)?%?")
_CODE = re.compile(
    r"```|\bdef |\bclass |\breturn\b|\bimport |#include|\bint main|\bfor \(|;\s*$|\{\s*$|=>|\bprint\(",
    re.MULTILINE,
)
_MATH = re.compile(r"\\frac|\\sqrt|\\cdot|\\le|\\ge|\\sum|\\int|\$[^$\n]+\$|\^\{?\d|\\\(|\\\[|\\pi|\\mathbb")
_CHOICE = re.compile(r"^\s*(?:\(?[A-Ea-e][).:]|[A-E]\s*[-–]\s)\s*\S", re.MULTILINE)
_FEWSHOT = re.compile(r"^\s*(?:Question|Q|Answer|A|Problem|Solution|Example)\s*\d*\s*:", re.MULTILINE | re.IGNORECASE)
_CP = re.compile(r"\b(?:Constraints|Sample Input|Sample Output|Input|Output|stdin|Examples?)\b")
_BOUND = re.compile(r"10\^\{?\d|\d\s*(?:<=|≤|\\leq)\s*[A-Za-z_]")
_STARTER = re.compile(r"class Solution|def \w+\(self")
_WRITE = re.compile(
    r"\b(?:write|compose|draft|story|essay|poem|email|letter|explain|describe|summari[sz]e|"
    r"discuss|opinion|imagine|role[- ]?play|brainstorm)\b",
    re.IGNORECASE,
)
_REASON = re.compile(r"\b(?:how many|how much|what is the|calculate|compute|prove|find|solve|total|"
                     r"probability|remainder|minimum|maximum)\b", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z]+")
_SENT = re.compile(r"[.!?](?:\s|$)")

STRUCT_NAMES: tuple[str, ...] = (
    "log_chars", "log_words", "log_lines", "digit_frac", "log_numbers", "log_big_number",
    "log_code", "log_math", "log_choices", "log_fewshot", "log_cp_sections", "has_bound",
    "has_starter", "log_write", "log_reason", "question_marks", "avg_word_len", "upper_frac",
    "log_sentences", "unique_word_ratio", "log_paragraphs", "numbers_per_sentence",
)


def structural(text: str) -> np.ndarray:
    """The STRUCT_NAMES vector for one prompt (float32)."""
    n = len(text) or 1
    words = _WORD.findall(text)
    nums = _NUMBER.findall(text)
    big = 0.0
    for tok in nums[:200]:
        digits = re.sub(r"\D", "", tok)
        if digits:
            big = max(big, len(digits.lstrip("0")) or 1)
    sentences = len(_SENT.findall(text)) + 1
    nwords = len(words) or 1
    lower = [w.lower() for w in words[:2000]]
    return np.array([
        math.log1p(len(text)),
        math.log1p(len(words)),
        math.log1p(text.count("\n")),
        sum(c.isdigit() for c in text) / n,
        math.log1p(len(nums)),
        math.log1p(big),
        math.log1p(len(_CODE.findall(text))),
        math.log1p(len(_MATH.findall(text))),
        math.log1p(len(_CHOICE.findall(text))),
        math.log1p(len(_FEWSHOT.findall(text))),
        math.log1p(len(_CP.findall(text))),
        1.0 if _BOUND.search(text) else 0.0,
        1.0 if _STARTER.search(text) else 0.0,
        math.log1p(len(_WRITE.findall(text))),
        math.log1p(len(_REASON.findall(text))),
        math.log1p(text.count("?")),
        sum(len(w) for w in words) / nwords,
        sum(c.isupper() for c in text) / n,
        math.log1p(sentences),
        len(set(lower)) / (len(lower) or 1),
        math.log1p(text.count("\n\n")),
        len(nums) / sentences,
    ], dtype=np.float32)


def prompt_text(prompt_or_messages: str | Sequence[Any]) -> str:
    """The text routed on: a string as is; for chat messages, the last user turn's text.

    Like RouteLLM (which routes MT-bench on the first user turn), we route on one user turn: the
    latest, which is the one being answered. Content parts of type "text" are joined.
    """
    if isinstance(prompt_or_messages, str):
        return prompt_or_messages
    last = ""
    for msg in prompt_or_messages:
        role = msg.get("role") if isinstance(msg, dict) else getattr(msg, "role", None)
        content = msg.get("content") if isinstance(msg, dict) else getattr(msg, "content", None)
        if role != "user" or content is None:
            continue
        if isinstance(content, str):
            last = content
        else:
            last = "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return last


class FeatureExtractor:
    """prompt texts -> (n, n_struct + dims) float32 feature matrix."""

    def __init__(self, embedder: StaticEmbedder) -> None:
        self.embedder = embedder
        self.names = list(STRUCT_NAMES) + [f"emb{i}" for i in range(embedder.dims)]

    def transform(self, texts: list[str]) -> np.ndarray:
        emb = self.embedder.embed(texts)
        struct = np.stack([structural(t) for t in texts]) if texts else np.zeros((0, len(STRUCT_NAMES)))
        return np.concatenate([struct.astype(np.float32), emb], axis=1)
