"""`sim`: a simulated upstream for demos, benchmarks and tests. It is labelled as one: every answer has
`system_fingerprint: "tiergate-sim"` and the header `x-tiergate-simulated: true`.

What it does with a Chat Completions body (docs/providers.md has the full rules):
- Text is deterministic: words drawn by a PRNG seeded from a hash of the body (less `stream` and
  `stream_options`), the choice index and `options.seed`. The same body and seed give the same answer,
  streamed or not.
- Usage is realistic: prompt tokens are counted with `tiergate.accounting.tokens.count_request`
  (messages, tools, response schema: the gateway's own estimate); visible completion tokens are 50-150%
  of `options.completion_tokens` whatever the limit, cut to fit `max_completion_tokens`/`max_tokens`;
  reasoning tokens appear when `reasoning_effort` is set (or `options.reasoning` is true): factor x
  (reasoning_tokens + prompt_tokens/4), factor low:medium:high = 1:2.5:6, and are part of
  completion_tokens. A limit too small for reasoning + answer ends with finish_reason "length".
- Tools: a call is made when `tool_choice` is "required" or names a function, or when it is "auto"/
  absent and the last message is a user message that mentions a tool by name. Arguments are JSON
  generated from the tool's parameter schema. `response_format` json_schema/json_object answers with
  JSON generated from the schema. `n` gives n different choices; `stop` cuts the text.
- Options (`Deployment.options`): latency_ms (time to first token), tokens_per_s (pacing; 0 = none),
  completion_tokens (default visible length), reasoning_tokens (the "low" budget), failure_rate (0..1),
  fail_status (int or list; default 500/503/429), retry_after_s, seed, tokenizer, chunk_tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from tiergate.providers.base import ChatResult, Deployment, Provider, SessionFactory, Timeouts, UpstreamError
from tiergate.providers.registry import register
from tiergate.providers.sim_schema import generate
from tiergate.wire.ids import new_id

FINGERPRINT = "tiergate-sim"
SIM_HEADERS = {"x-tiergate-simulated": "true"}
EFFORT_FACTOR = {"none": 0.0, "minimal": 0.25, "low": 1.0, "medium": 2.5, "high": 6.0, "xhigh": 10.0}

# common English words that are one token each in cl100k/o200k with a leading space
_WORDS = (
    "the", "of", "and", "to", "in", "is", "that", "it", "for", "on", "with", "as", "was", "at", "by", "be",
    "this", "from", "or", "have", "an", "they", "which", "one", "you", "were", "all", "there", "would",
    "their", "we", "been", "has", "when", "who", "will", "more", "no", "if", "out", "so", "said", "what",
    "up", "its", "about", "into", "than", "them", "can", "only", "other", "new", "some", "could", "time",
    "these", "two", "may", "then", "do", "first", "any", "my", "now", "such", "like", "our", "over", "even",
    "most", "made", "after", "also", "did", "many", "before", "must", "through", "back", "years", "where",
    "much", "your", "way", "well", "down", "should", "because", "each", "just", "those", "people", "how",
    "too", "little", "state", "good", "very", "make", "world", "still", "own", "see", "work", "long", "get",
    "here", "between", "both", "life", "being", "under", "never", "day", "same", "another", "know", "while",
    "last", "might", "us", "great", "old", "year", "off", "come", "since", "against", "go", "came", "right",
    "used", "take", "three", "small", "large", "number", "part", "place", "case", "point", "group",
    "problem", "fact", "system", "program", "question", "model", "answer", "data", "result", "value",
    "level", "order", "line", "water", "plan", "idea", "light", "power", "city", "table", "house"
)


@dataclass
class _Choice:
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    visible_tokens: int
    reasoning_tokens: int


@register("sim")
class SimProvider(Provider):
    """The simulator. Construct it like any provider; it never opens a connection."""

    name = "sim"
    response_headers = MappingProxyType(SIM_HEADERS)

    def __init__(self, deployment: Deployment, session_factory: SessionFactory) -> None:
        super().__init__(deployment, session_factory)
        o = deployment.options
        self.latency_s = float(o.get("latency_ms", 0)) / 1000.0
        self.tokens_per_s = float(o.get("tokens_per_s", 0))
        self.completion_tokens = int(o.get("completion_tokens", 64))
        self.reasoning_budget = int(o.get("reasoning_tokens", 192))
        self.always_reason = bool(o.get("reasoning", False))
        self.failure_rate = float(o.get("failure_rate", 0.0))
        fs = o.get("fail_status", (500, 503, 429))
        self.fail_status = tuple(int(x) for x in (fs if isinstance(fs, (list, tuple)) else (fs,)))
        self.retry_after_s = float(o.get("retry_after_s", 1.0))
        self.seed = str(o.get("seed", ""))
        self.tokenizer = str(o.get("tokenizer", "o200k_base"))
        self.chunk_tokens = max(1, int(o.get("chunk_tokens", 1)))
        self._fail_rng = random.Random(f"fail:{self.seed}" if "seed" in o else None)

    # ------------------------------------------------------------ the interface

    async def chat(self, body: dict[str, Any], timeouts: Timeouts) -> ChatResult:
        self._maybe_fail()
        prompt_tokens, choices = self._plan(body)
        if self.latency_s or self.tokens_per_s:
            work = sum(c.visible_tokens + c.reasoning_tokens for c in choices)
            await asyncio.sleep(self.latency_s + (work / self.tokens_per_s if self.tokens_per_s else 0.0))
        out = []
        for i, c in enumerate(choices):
            msg: dict[str, Any] = {"role": "assistant", "content": c.content, "refusal": None, "annotations": []}
            if c.tool_calls:
                msg["tool_calls"] = c.tool_calls
            out.append({"index": i, "message": msg, "logprobs": None, "finish_reason": c.finish_reason})
        resp = {
            "id": new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
            "model": self.upstream_model(body["model"]), "choices": out, "usage": _usage(prompt_tokens, choices),
            "service_tier": "default", "system_fingerprint": FINGERPRINT,
        }
        return ChatResult(body=resp, headers=dict(SIM_HEADERS))

    async def chat_stream(self, body: dict[str, Any], timeouts: Timeouts) -> AsyncIterator[dict[str, Any]]:
        self._maybe_fail()
        prompt_tokens, choices = self._plan(body)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base: dict[str, Any] = {
            "id": new_id("chatcmpl-"), "object": "chat.completion.chunk", "created": int(time.time()),
            "model": self.upstream_model(body["model"]), "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
        if include_usage:
            base["usage"] = None
        tps = self.tokens_per_s
        first_wait = self.latency_s + (max(c.reasoning_tokens for c in choices) / tps if tps else 0.0)
        if first_wait:
            await asyncio.sleep(first_wait)
        for i, c in enumerate(choices):
            yield _chunk(base, i, {"role": "assistant", "content": None if c.tool_calls else "", "refusal": None})
            for delta, tokens in self._pieces(c):
                if tps:
                    await asyncio.sleep(tokens / tps)
                yield _chunk(base, i, delta)
            yield _chunk(base, i, {}, c.finish_reason)
        if include_usage:
            yield {**base, "choices": [], "usage": _usage(prompt_tokens, choices)}

    # ------------------------------------------------------------ simulation

    def _maybe_fail(self) -> None:
        if self.failure_rate <= 0 or self._fail_rng.random() >= self.failure_rate:
            return
        status = self._fail_rng.choice(self.fail_status)
        retry_after = self.retry_after_s if status in (429, 503) else None
        etype, code = {429: ("rate_limit_error", "rate_limit_exceeded")}.get(status, ("server_error", None))
        raise UpstreamError(status, f"simulated upstream failure ({status}) injected by the sim provider "
                            f"(failure_rate={self.failure_rate})", type=etype, code=code, retry_after=retry_after,
                            headers={**SIM_HEADERS})

    def _plan(self, body: dict[str, Any]) -> tuple[int, list[_Choice]]:
        from tiergate.accounting.tokens import count_request, count_text

        prompt_tokens = count_request(body, self.tokenizer)
        tools = body.get("tools") or []
        keyed = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        digest = hashlib.blake2b(orjson.dumps(keyed, option=orjson.OPT_SORT_KEYS, default=str) + self.seed.encode(),
                                 digest_size=16).digest()
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        limit = int(limit) if isinstance(limit, (int, float)) and limit > 0 else None
        effort = body.get("reasoning_effort") or ("medium" if self.always_reason else None)
        stops = body.get("stop")
        stops = [stops] if isinstance(stops, str) else [s for s in (stops or []) if isinstance(s, str) and s]
        n = body.get("n") or 1
        n = int(n) if isinstance(n, int) and 1 <= n <= 128 else 1
        choices = []
        for i in range(n):
            rng = random.Random(digest + i.to_bytes(2, "big"))
            choices.append(self._choice(body, rng, limit, effort, stops, tools, prompt_tokens, count_text))
        return prompt_tokens, choices

    def _choice(self, body: dict[str, Any], rng: random.Random, limit: int | None, effort: str | None,
                stops: list[str], tools: list[dict[str, Any]], prompt_tokens: int, count_text: Any) -> _Choice:
        reasoning = 0
        if effort:
            # exact 1 : 2.5 : 6 across efforts for the same prompt; longer prompts think longer
            reasoning = round(EFFORT_FACTOR.get(str(effort), 2.5) * (self.reasoning_budget + prompt_tokens // 4))
        if limit is not None and reasoning >= limit:
            return _Choice("" if not tools else None, None, "length", 0, limit)
        room = None if limit is None else limit - reasoning
        calls = _tool_calls(body, tools, rng)
        if calls:
            def size(c: dict[str, Any]) -> int:
                return count_text(c["function"]["name"] + c["function"]["arguments"], self.tokenizer) + 4

            visible = sum(size(c) for c in calls)
            if room is None or visible <= room:
                return _Choice(None, calls, "tool_calls", visible, reasoning)
            # the limit falls inside a call: the calls that fit, then the arguments cut off, as a real model's
            kept, used = [], 0
            for c in calls:
                if used + size(c) <= room:
                    kept.append(c)
                    used += size(c)
                    continue
                fixed = count_text(c["function"]["name"], self.tokenizer) + 4
                if room - used > fixed:
                    args = _prefix_within(c["function"]["arguments"], room - used - fixed,
                                          lambda t: count_text(t, self.tokenizer))
                    cut = {**c, "function": {**c["function"], "arguments": args}}
                    kept.append(cut)
                    used += size(cut)
                break
            return _Choice(None if kept else "", kept or None, "length", used, reasoning)
        fmt = body.get("response_format") or {}
        ftype = fmt.get("type") if isinstance(fmt, dict) else None
        if ftype in ("json_schema", "json_object"):
            schema = (fmt.get("json_schema") or {}).get("schema") if ftype == "json_schema" else None
            value = generate(schema, rng) if schema else {"answer": _sentences(rng, 12)}
            text = orjson.dumps(value).decode()
            visible = count_text(text, self.tokenizer)
            if room is not None and visible > room:  # a truncated JSON answer, as a real model gives
                text = _prefix_within(text, room, lambda t: count_text(t, self.tokenizer))
                return _Choice(text, None, "length", count_text(text, self.tokenizer) if text else 0, reasoning)
            return _Choice(text, None, "stop", visible, reasoning)
        # the answer's length does not depend on the limit (a real model does not write more because it
        # may): a budgeted key's gateway-added limit must not make its answers dearer; the limit only cuts
        target = max(1, round(self.completion_tokens * (0.5 + rng.random())))
        finish = "stop"
        if room is not None and target > room:
            target, finish = room, "length"
        text = _sentences(rng, target)
        visible = count_text(text, self.tokenizer)
        if room is not None and visible > room:  # words are not tokens: cut to the limit in tokens
            words = text.split(" ")
            keep = len(words) * room // visible
            while keep > 0 and count_text(" ".join(words[:keep]), self.tokenizer) > room:
                keep -= 1
            text, finish = " ".join(words[:keep]), "length"
        for s in stops:
            cut = text.find(s)
            if cut >= 0:
                text, finish = text[:cut], "stop"
        return _Choice(text, None, finish, count_text(text, self.tokenizer) if text else 0, reasoning)

    def _pieces(self, c: _Choice) -> list[tuple[dict[str, Any], int]]:
        """(delta, tokens it stands for) for the content or tool-call chunks of one choice."""
        if c.tool_calls:
            out: list[tuple[dict[str, Any], int]] = []
            for k, call in enumerate(c.tool_calls):
                fn = call["function"]
                out.append(({"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                                             "function": {"name": fn["name"], "arguments": ""}}]}, 1))
                args = fn["arguments"]
                step = 12 * self.chunk_tokens
                for j in range(0, len(args), step):
                    out.append(({"tool_calls": [{"index": k, "function": {"arguments": args[j:j + step]}}]},
                                self.chunk_tokens))
            return out
        words = (c.content or "").split(" ")
        if c.content and c.content.startswith("{"):
            step = 12 * self.chunk_tokens
            return [({"content": c.content[j:j + step]}, self.chunk_tokens) for j in range(0, len(c.content), step)]
        per = self.chunk_tokens
        return [({"content": (" " if j else "") + " ".join(words[j:j + per])}, per)
                for j in range(0, len(words), per) if c.content]


def _chunk(base: dict[str, Any], index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def _usage(prompt_tokens: int, choices: list[_Choice]) -> dict[str, Any]:
    reasoning = sum(c.reasoning_tokens for c in choices)
    completion = sum(c.visible_tokens for c in choices) + reasoning
    return {
        "prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def _prefix_within(text: str, tokens: int, count: Any) -> str:
    """The longest prefix of `text` that counts at most `tokens` tokens (bisection on its length)."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[:mid]) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def _sentences(rng: random.Random, n_words: int) -> str:
    words: list[str] = []
    while len(words) < n_words:
        k = min(rng.randint(5, 14), n_words - len(words))
        s = [rng.choice(_WORDS) for _ in range(k)]
        s[0] = s[0].capitalize()
        s[-1] += "."
        words.extend(s)
    return " ".join(words)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _tool_calls(body: dict[str, Any], tools: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]] | None:
    """The calls to make, by the rule in the module docstring, or None for a text answer."""
    fns = [t["function"] for t in tools if isinstance(t, dict) and t.get("type", "function") == "function"
           and isinstance(t.get("function"), dict) and t["function"].get("name")]
    if not fns:
        return None
    choice = body.get("tool_choice", "auto")
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    said = _text(last.get("content")).lower() if last.get("role") == "user" else ""
    mentioned = [f for f in fns if f["name"].lower() in said or f["name"].lower().replace("_", " ") in said]
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        chosen = [f for f in fns if f["name"] == name][:1]
    elif choice == "required":
        chosen = mentioned or fns[:1]
    elif choice in ("auto", None):
        chosen = mentioned
    else:  # "none"
        chosen = []
    if not chosen:
        return None
    if body.get("parallel_tool_calls") is False:
        chosen = chosen[:1]
    calls = []
    for f in chosen:
        args = generate(f.get("parameters") or {"type": "object", "properties": {}}, rng)
        calls.append({"id": "call_" + rng.randbytes(12).hex(), "type": "function",
                      "function": {"name": f["name"], "arguments": orjson.dumps(args).decode()}})
    return calls
