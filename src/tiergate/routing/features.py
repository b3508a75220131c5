"""Prompt features for the router: cheap structural signals plus the static sentence embedding.

Structural features are regex counts that carry across benchmarks (length, numbers, code, maths,
multiple choice, few-shot examples, competitive-programming sections, open-ended writing). They are
computed on the raw text in tens of microseconds. `FeatureExtractor` concatenates them with the
`StaticEmbedder` vector; the quality model standardises the result itself.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from tiergate.routing.embed import StaticEmbedder

_NUMBER = re.compile(r"\d\d*(?:[.,]\d+)*")  # = \d+(?:[.,]\d+)*, ~2x faster: `re` skips to digits for a leading \d
_MATH = re.compile(r"\\frac|\\sqrt|\\cdot|\\le|\\ge|\\sum|\\int|\$[^$\n]+\$|\^\{?\d|\\\(|\\\[|\\pi|\\mathbb")
_CHOICE = re.compile(r"^\s*(?:\(?[A-Ea-e][).:]|[A-E]\s*[-–]\s)\s*\S", re.MULTILINE)
_FEWSHOT = re.compile(r"^\s*(?:Question|Q|Answer|A|Problem|Solution|Example)\s*\d*\s*:", re.MULTILINE | re.IGNORECASE)
# The same patterns after a newline: `_at_line_starts` counts their matches with a scan that skips to newlines
# (a `^` pattern is tried at every character).
_CHOICE_NL = re.compile("\n" + _CHOICE.pattern.removeprefix("^"))
_FEWSHOT_NL = re.compile("\n" + _FEWSHOT.pattern.removeprefix("^"), re.IGNORECASE)
_BOUND_MARKS = ("10^", "<=", "≤", "\\leq")
_STARTER_MARKS = ("class Solution", "(self")
_STRIP = ".,;:!?()[]{}\"'`*"
_SENT = re.compile(r"[.!?](?:\s|$)")
_NO_DIGITS = str.maketrans("", "", "0123456789")
_NO_UPPER = str.maketrans("", "", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Literal markers, counted with str.count (C speed; a 1,000-token prompt takes ~0.3 ms in all).
_CODE_MARKS = ("```", "def ", "class ", "return", "import ", "#include", "int main", "for (", ";\n", "{\n", "=>",
               "print(")
_CP_MARKS = ("Constraints", "Sample Input", "Sample Output", "Input", "Output", "stdin", "Example")
_WRITE_WORDS = frozenset(("write", "compose", "draft", "story", "essay", "poem", "email", "letter", "explain",
                          "describe", "summarize", "summarise", "discuss", "opinion", "imagine", "roleplay",
                          "brainstorm"))
_REASON_WORDS = frozenset(("calculate", "compute", "prove", "find", "solve", "total", "probability", "remainder",
                           "minimum", "maximum"))
_REASON_PHRASES = ("how many", "how much", "what is the")

STRUCT_NAMES: tuple[str, ...] = (
    "log_chars", "log_words", "log_lines", "digit_frac", "log_numbers", "log_big_number",
    "log_code", "log_math", "log_choices", "log_fewshot", "log_cp_sections", "has_bound",
    "has_starter", "log_write", "log_reason", "question_marks", "avg_word_len", "upper_frac",
    "log_sentences", "unique_word_ratio", "log_paragraphs", "numbers_per_sentence",
)


def _at_line_starts(pattern: re.Pattern[str], after_newline: re.Pattern[str], text: str) -> int:
    """`len(pattern.findall(text))` for a `^...` MULTILINE pattern, given the same pattern with `\\n` for `^`:
    a match at the start of the text, then the matches after a newline (a match never ends in a newline, so
    the newline before the next one is never part of the previous one)."""
    first = pattern.match(text)
    return (1 if first else 0) + len(after_newline.findall(text, first.end() if first else 0))


def structural(text: str) -> np.ndarray:
    """The STRUCT_NAMES vector for one prompt (float32)."""
    n = len(text) or 1
    words = text.split()
    nums = _NUMBER.findall(text)
    big = max((len(t.replace(",", "").split(".")[0].lstrip("0")) or 1 for t in set(nums[:200])), default=0)
    sentences = len(_SENT.findall(text)) + 1
    nwords = len(words) or 1
    lower_text = text.lower()
    # the first 4,000 words, lower-cased and stripped of punctuation, counted per distinct word (a word
    # lower-cased alone is the word of the lower-cased text: `str.lower` looks no further than the word)
    counts = Counter(words[:4000])
    stripped = {w: w.lower().strip(_STRIP) for w in counts}
    n_write = n_reason = 0
    for w, s in stripped.items():
        if s in _WRITE_WORDS:
            n_write += counts[w]
        if s in _REASON_WORDS:
            n_reason += counts[w]
    n_reason += sum(lower_text.count(p) for p in _REASON_PHRASES)
    head = min(len(words), 2000)  # distinct stripped words among the first 2,000
    distinct = set(stripped.values()) if len(words) <= 2000 else {stripped[w] for w in set(words[:2000])}
    return np.array([
        math.log1p(len(text)),
        math.log1p(len(words)),
        math.log1p(text.count("\n")),
        (len(text) - len(text.translate(_NO_DIGITS))) / n,
        math.log1p(len(nums)),
        math.log1p(big),
        math.log1p(sum(text.count(m) for m in _CODE_MARKS)),
        math.log1p(len(_MATH.findall(text))),
        math.log1p(_at_line_starts(_CHOICE, _CHOICE_NL, text)),
        math.log1p(_at_line_starts(_FEWSHOT, _FEWSHOT_NL, text)),
        math.log1p(sum(text.count(m) for m in _CP_MARKS)),
        1.0 if any(m in text for m in _BOUND_MARKS) else 0.0,
        1.0 if any(m in text for m in _STARTER_MARKS) else 0.0,
        math.log1p(n_write),
        math.log1p(n_reason),
        math.log1p(text.count("?")),
        len("".join(words)) / nwords,
        (len(text) - len(text.translate(_NO_UPPER))) / n,
        math.log1p(sentences),
        len(distinct) / (head or 1),
        math.log1p(text.count("\n\n")),
        len(nums) / sentences,
    ], dtype=np.float32)


def prompt_text(prompt_or_messages: str | Sequence[Any]) -> str:
    """The text routed on: a string as is; for chat messages, the last user turn's text.

    Like RouteLLM (which routes MT-bench on the first user turn), we route on one user turn: the
    latest, which is the one being answered. Content parts of type "text" are joined.
    """
    if isinstance(prompt_or_messages, str):
        return _encodable(prompt_or_messages)
    if isinstance(prompt_or_messages, bytes | bytearray) or not isinstance(prompt_or_messages, Sequence):
        raise TypeError("the prompt must be a string or a list of chat messages "
                        f"([{{'role': 'user', 'content': '...'}}]), got {type(prompt_or_messages).__name__}")
    last = ""
    for i, msg in enumerate(prompt_or_messages):
        if not isinstance(msg, dict) and not hasattr(msg, "role"):
            raise TypeError(f"messages[{i}] must be a chat message ({{'role': ..., 'content': ...}}), got "
                            f"{type(msg).__name__} {msg!r:.40}")
        role = msg.get("role") if isinstance(msg, dict) else getattr(msg, "role", None)
        content = msg.get("content") if isinstance(msg, dict) else getattr(msg, "content", None)
        if role != "user" or content is None:
            continue
        if isinstance(content, str):
            last = content
        elif isinstance(content, list | tuple) and all(
                isinstance(p, dict) and (p.get("type") != "text" or isinstance(p.get("text"), str)) for p in content):
            last = "\n".join(p["text"] for p in content if p.get("type") == "text")
        else:
            raise TypeError(f"messages[{i}].content must be a string or a list of content parts with string "
                            f"'text', got {content!r:.80}")
    return _encodable(last)


def _encodable(text: str) -> str:
    """`text` as valid UTF-8: lone surrogates (possible in a Python str, refused by tokenizers) replaced."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


#: Distinct WordPiece tokens of a prompt kept for the lexical features (in order of first appearance).
TOKEN_SLOTS = 256


class FeatureExtractor:
    """prompt texts -> (n, n_struct + dims + 2 * TOKEN_SLOTS) float32 feature matrix.

    Columns: structural features, the static embedding, then the prompt's bag of WordPiece tokens as
    TOKEN_SLOTS token ids (-1 = empty) and TOKEN_SLOTS counts. The quality model turns the bag into
    tf-idf weights and learns a low-rank projection of it ("lexical" features)."""

    def __init__(self, embedder: StaticEmbedder) -> None:
        self.embedder = embedder
        self.names = list(STRUCT_NAMES) + [f"emb{i}" for i in range(embedder.dims)]
        self.n_dense = len(self.names)

    def transform(self, texts: list[str]) -> np.ndarray:
        n, d = len(texts), self.n_dense
        out = np.zeros((n, d + 2 * TOKEN_SLOTS), dtype=np.float32)
        out[:, d:d + TOKEN_SLOTS] = -1.0
        for i, text in enumerate(texts):
            ids = self.embedder.token_ids.array(text)
            out[i, : len(STRUCT_NAMES)] = structural(text)
            out[i, len(STRUCT_NAMES):d] = self.embedder.vector(ids)
            if len(ids):
                uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
                order = np.argsort(first)[:TOKEN_SLOTS]
                out[i, d:d + len(order)] = uniq[order]
                out[i, d + TOKEN_SLOTS:d + TOKEN_SLOTS + len(order)] = counts[order]
        return out
