"""Anthropic Messages <-> OpenAI Chat Completions translation (wire facts §10). Pure: no I/O.

Request (`to_messages_request`): system/developer messages become the top-level `system`; content
parts map to Messages blocks (data-URL images -> base64 source, http(s) URLs -> url source);
assistant `tool_calls` -> `tool_use` blocks; `tool` messages -> `tool_result` blocks in one user
turn; consecutive turns of the same role are merged; `stop` -> `stop_sequences`; `temperature` is
clamped to Anthropic's 0..1; `max_tokens` comes from `max_completion_tokens`, `max_tokens` or
`DEFAULT_MAX_TOKENS`. `reasoning_effort` turns on extended thinking with `THINKING_BUDGETS[effort]`
tokens, raising `max_tokens` so the visible answer keeps its room (within the model's maximum output,
`fit_thinking`), and dropping `temperature`, `top_p` and `top_k`, which the API refuses with thinking.
`cache_control` markers (prompt caching) on system/user/assistant/tool parts, messages and tools are
passed through; `system` is then a list of text blocks.

Response (`from_message`, `StreamTranslator`): text -> `message.content`, `tool_use` ->
`tool_calls` (input object -> JSON string arguments), thinking -> `reasoning_content` (+
`thinking_blocks`, passed back on the next turn so tool loops with thinking keep working; streamed,
each finished block comes as one `delta.thinking_blocks` chunk, signature included, its entry with the
`index` every array delta entry has; passed back, only the API's fields are sent), a tool input that
streamed no JSON (no parameters) -> `"{}"` arguments as unstreamed,
`stop_reason` -> `finish_reason`, usage -> `prompt_tokens` (input + cache read + cache write),
`cached_tokens` (cache read), `cache_write_tokens`, and `reasoning_tokens` (thinking; estimated from
the thinking text when Anthropic does not report it, and always a part of `completion_tokens`,
so it is priced as output).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; used when the client sets no limit
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}  # budget_tokens per effort
MIN_THINKING_BUDGET = 1024

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

STRUCTURED_TOOL_PREFIX = "json_output_"  # the forced tool that carries a json_schema answer


class TranslationError(ValueError):
    """The Chat Completions body cannot be expressed as a Messages request (a client error, 400)."""

    def __init__(self, message: str, param: str | None = None, code: str = "unsupported_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code  # `invalid_value` for a value of the wrong type or range


# ---------------------------------------------------------------- request


def _cache_control(src: dict[str, Any], path: str) -> dict[str, Any] | None:
    """A `cache_control` marker (Anthropic prompt caching, e.g. `{"type": "ephemeral"}`) passed through as
    given; None when absent."""
    cc = src.get("cache_control")
    if cc is None:
        return None
    if not isinstance(cc, dict) or not isinstance(cc.get("type"), str):
        raise TranslationError('cache_control must be an object such as {"type": "ephemeral"}',
                               f"{path}.cache_control", "invalid_value")
    return cc


def _mark_last(blocks: list[dict[str, Any]], message: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """A message-level `cache_control` marks the message's last block (where the cache prefix ends)."""
    cc = _cache_control(message, path)
    if cc is not None and blocks:
        blocks[-1] = {**blocks[-1], "cache_control": cc}
    return blocks


def _system_blocks(m: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """A system/developer message as `system` text blocks: one block of its parts' text joined, or, where
    a part or the message carries `cache_control`, one block per non-empty part, the markers kept."""
    content = m.get("content")
    if content is None:
        parts: list[tuple[str, dict[str, Any] | None]] = []
    elif isinstance(content, str):
        parts = [(content, None)]
    elif isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append((str(part.get("text", "")), _cache_control(part, f"{path}.content[{i}]")))
            else:
                raise TranslationError(f"only text parts are allowed here for Anthropic models, got "
                                       f"{part.get('type') if isinstance(part, dict) else part!r}",
                                       f"{path}.content[{i}]")
    else:
        raise TranslationError("content must be a string or a list of parts", f"{path}.content")
    if m.get("cache_control") is None and all(cc is None for _, cc in parts):
        text = "\n".join(t for t, _ in parts)
        return [{"type": "text", "text": text}] if text else []
    blocks = [{"type": "text", "text": t, **({"cache_control": cc} if cc is not None else {})}
              for t, cc in parts if t]
    return _mark_last(blocks, m, path)


def _system_value(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """The top-level `system`: the texts joined by a blank line, or the list of text blocks where any
    carries `cache_control` (a string has no place for the marker)."""
    if any("cache_control" in b for b in blocks):
        return [dict(b) for b in blocks]
    return "\n\n".join(b["text"] for b in blocks)


def _image_block(part: dict[str, Any], path: str) -> dict[str, Any]:
    iu = part.get("image_url")
    url = iu.get("url") if isinstance(iu, dict) else iu
    if not isinstance(url, str) or not url:
        raise TranslationError("image_url.url is required", f"{path}.image_url.url")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0] or "image/png"
        if ";base64" not in header:
            raise TranslationError("image data URLs must be base64-encoded (data:image/png;base64,...)",
                                   f"{path}.image_url.url")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError("image_url.url must be an http(s) URL or a base64 data URL", f"{path}.image_url.url")


def _blocks(content: Any, path: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError("content must be a string or a list of parts", f"{path}.content")
    out: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        p = f"{path}.content[{i}]"
        t = part.get("type") if isinstance(part, dict) else None
        if t == "text":
            block = {"type": "text", "text": str(part.get("text", ""))}
        elif t == "image_url":
            block = _image_block(part, p)
        elif t == "refusal":
            block = {"type": "text", "text": str(part.get("refusal", ""))}
        else:
            raise TranslationError(f"content part type {t!r} is not supported for Anthropic models "
                                   "(use text or image_url)", p)
        cc = _cache_control(part, p)
        if cc is not None:
            block["cache_control"] = cc
        out.append(block)
    return out


def _tool_use_blocks(tool_calls: Any, path: str) -> list[dict[str, Any]]:
    out = []
    for i, tc in enumerate(tool_calls or []):
        fn = tc.get("function") or {}
        args = fn.get("arguments") or "{}"
        try:
            parsed = orjson.loads(args) if isinstance(args, str) else args
        except orjson.JSONDecodeError:
            raise TranslationError("tool call arguments must be a JSON object",
                                   f"{path}.tool_calls[{i}].function.arguments") from None
        if not isinstance(parsed, dict):
            parsed = {"value": parsed}
        out.append({"type": "tool_use", "id": tc.get("id") or f"toolu_{i}", "name": fn.get("name", ""),
                    "input": parsed})
    return out


def _convert_messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages must be a non-empty list", "messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []

    def push(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": list(blocks)})

    for i, m in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(m, dict):
            raise TranslationError("each message must be an object", path)
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(_system_blocks(m, path))
        elif role == "user":
            push("user", _mark_last(_blocks(m.get("content"), path), m, path))
        elif role == "assistant":
            blocks = [_thinking_block(b) for b in (m.get("thinking_blocks") or []) if _is_thinking(b)]
            blocks += _mark_last(_blocks(m.get("content"), path), m, path)
            blocks += _tool_use_blocks(m.get("tool_calls"), path)
            push("assistant", blocks)
        elif role == "tool":
            content = m.get("content")
            result: Any = content if isinstance(content, str) else _blocks(content, path)
            push("user", _mark_last([{"type": "tool_result", "tool_use_id": m.get("tool_call_id", ""),
                                      "content": result}], m, path))
        elif role == "function":
            raise TranslationError("role 'function' is deprecated; use tool messages", f"{path}.role")
        else:
            raise TranslationError(f"unknown role {role!r}", f"{path}.role")
    turns = _tidy(turns)
    if not turns:
        raise TranslationError("at least one user message with content is required", "messages")
    if turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": "(continue)"}]})
    return turns, system


def _is_thinking(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") in ("thinking", "redacted_thinking")


_THINKING_FIELDS = {"thinking": ("type", "thinking", "signature"), "redacted_thinking": ("type", "data")}


def _thinking_block(block: dict[str, Any]) -> dict[str, Any]:
    """A (redacted_)thinking block passed back, with only the fields the API takes: a streamed block
    carries the `index` of its `thinking_blocks` delta entry (kept by the SDK's stream helpers), which
    Anthropic would refuse as an extra input."""
    return {k: block[k] for k in _THINKING_FIELDS[block["type"]] if k in block}


def _tidy(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turns the API accepts: empty turns dropped (e.g. an assistant turn that was only ""), and so are
    assistant turns of thinking alone (its final block may not be thinking); the turns left around them
    merged when they now have the same role; in an assistant turn, its thinking blocks first (the API
    requires it of any assistant turn that has them; two assistant messages in a row become one turn)."""
    out: list[dict[str, Any]] = []
    for t in turns:
        content = t["content"]
        if t["role"] == "assistant" and all(_is_thinking(b) for b in content):
            content = []
        if not content:
            continue
        if out and out[-1]["role"] == t["role"]:
            out[-1]["content"].extend(content)
        else:
            out.append({"role": t["role"], "content": list(content)})
    for t in out:
        if t["role"] == "assistant" and any(_is_thinking(b) for b in t["content"][1:]):
            t["content"] = ([b for b in t["content"] if _is_thinking(b)]
                            + [b for b in t["content"] if not _is_thinking(b)])
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(tools or []):
        if not isinstance(t, dict) or t.get("type", "function") != "function":
            raise TranslationError("only function tools are supported for Anthropic models", f"tools[{i}]")
        fn = t.get("function") or {}
        if not fn.get("name"):
            raise TranslationError("tool function name is required", f"tools[{i}].function.name")
        tool = {"name": fn["name"], "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description"):
            tool["description"] = fn["description"]
        cc = _cache_control(t, f"tools[{i}]")
        if cc is not None:
            tool["cache_control"] = cc
        out.append(tool)
    return out


def _tool_choice(tc: Any, parallel: Any) -> dict[str, Any] | None:
    if tc is None:
        choice: dict[str, Any] | None = {"type": "auto"} if parallel is False else None
    elif tc == "auto":
        choice = {"type": "auto"}
    elif tc == "required":
        choice = {"type": "any"}
    elif tc == "none":
        choice = {"type": "none"}
    elif isinstance(tc, dict) and (tc.get("function") or {}).get("name"):
        choice = {"type": "tool", "name": tc["function"]["name"]}
    else:
        raise TranslationError("tool_choice must be auto, required, none or {type: function, function: {name}}",
                               "tool_choice")
    if choice is not None and parallel is False and choice["type"] != "none":
        choice["disable_parallel_tool_use"] = True
    return choice


def _needs_thinking_block(turns: list[dict[str, Any]]) -> bool:
    """With thinking on, an assistant turn that used a tool must start with its thinking block. When the
    client did not pass one back (a plain OpenAI client drops unknown fields), thinking must stay off."""
    for t in turns:
        if (t["role"] == "assistant" and any(b.get("type") == "tool_use" for b in t["content"])
                and t["content"][0].get("type") not in ("thinking", "redacted_thinking")):
            return True
    return False


def structured_tool(body: dict[str, Any]) -> str | None:
    """The forced tool's name when the body asks for `response_format: json_schema` (Anthropic has no
    schema-constrained text output, so the schema becomes a tool the model must call; its input is
    handed back as the message content)."""
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        name = str((rf.get("json_schema") or {}).get("name") or "answer")
        return (STRUCTURED_TOOL_PREFIX + name)[:64]
    return None


def _structured_answer(body: dict[str, Any], out: dict[str, Any], structured: str, choice: dict[str, Any] | None,
                       system: list[dict[str, Any]]) -> bool:
    """`response_format: json_schema` as the tool `structured` (its input is the answer's content), with
    `choice` the client's own tool_choice translated. OpenAI's json_schema shapes the final answer and
    leaves the tools to tool_choice, so:
    - no tools of the client's, or tool_choice `none`: the json tool is forced (`{type: tool}`): the
      answer is the JSON object, and no tool of the client's is called, as `none` says;
    - the client's tools with tool_choice auto (or none given): the json tool is offered alongside them
      and `{type: any}` asks for a tool call: the model calls the client's tools, or answers through the
      json tool; a plain-text answer, which the schema would not allow, is left out;
    - tool_choice `required` or a named function: the answer is a call of the client's tools, as asked;
      the json tool is not offered (nothing the schema shapes comes back on such a turn).
    `disable_parallel_tool_use` (`parallel_tool_calls: false`) is kept on whatever is sent. Returns
    whether the json tool is offered; a system note naming it is appended to `system` when the model
    must choose between it and the client's tools."""
    client_tools = bool(out.get("tools"))
    kind = None if choice is None else choice["type"]
    parallel = {k: v for k, v in (choice or {}).items() if k == "disable_parallel_tool_use"}
    if client_tools and kind in ("any", "tool"):
        return False  # the client's own choice, sent as translated
    rf = body["response_format"]["json_schema"]
    tool = {"name": structured, "description": rf.get("description") or "Give the final answer as this JSON object.",
            "input_schema": rf.get("schema") or {"type": "object"}}
    out["tools"] = [*out.get("tools", []), tool]
    if client_tools and kind in (None, "auto"):
        out["tool_choice"] = {"type": "any", **parallel}
        system.append({"type": "text", "text": f"When you give your final answer rather than call a tool, give "
                                               f"it by calling the {structured} tool."})
        out["system"] = _system_value(system)
    else:
        out["tool_choice"] = {"type": "tool", "name": structured, **parallel}
    return True


def _number(value: Any, param: str, low: float, high: float) -> float:
    """A sampling parameter as OpenAI validates it: a number in [low, high], else the 400 naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise TranslationError(f"{param} must be a number between {low:g} and {high:g}, got {value!r}", param,
                               "invalid_value")
    return float(value)


def fit_thinking(limit: int, budget: int, max_output: int | None) -> tuple[int, int] | None:
    """`(max_tokens, budget_tokens)` for a visible limit `limit` and a thinking budget `budget`, within the
    model's maximum output `max_output` (None: unknown, not bounded). The budget comes on top of the limit;
    where the sum is above the maximum, the budget shrinks to what is left (>= `MIN_THINKING_BUDGET`, the
    API's minimum), and where not even the minimum is left, `max_tokens` is the maximum and the visible
    answer gets what the minimum budget leaves (OpenAI's `max_completion_tokens` covers reasoning too).
    None when the model's maximum cannot hold the minimum budget plus one token: no thinking."""
    if max_output is None or limit + budget <= max_output:
        return limit + budget, budget
    if max_output - limit >= MIN_THINKING_BUDGET:
        return max_output, max_output - limit
    if max_output > MIN_THINKING_BUDGET:
        return max_output, MIN_THINKING_BUDGET
    return None


# Chat Completions fields with no Messages API equivalent that the translation leaves out (the catalogue's
# `unsupported` params for Claude are already removed and reported by the request shaping)
IGNORED_FIELDS = ("audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
                  "metadata", "modalities", "prediction", "presence_penalty", "prompt_cache_key", "seed",
                  "service_tier", "store", "top_logprobs", "verbosity", "web_search_options")


def to_messages_request(body: dict[str, Any], model: str, max_output: int | None = None,
                        dropped: list[str] | None = None) -> dict[str, Any]:
    """Build an Anthropic Messages request body from a Chat Completions body. `max_output`: the model's
    maximum output tokens (the catalogue's `max_output_tokens`); `max_tokens` is never sent above it.
    `dropped`, when given, is extended with the names of the client's parameters left out or changed
    (for `x-tiergate-dropped-params`; see `translation_dropped`)."""
    turns, system = _convert_messages(body.get("messages"))
    if body.get("n") not in (None, 1):
        raise TranslationError("Anthropic models return one choice; n must be 1", "n")
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is None:
        limit = DEFAULT_MAX_TOKENS if max_output is None else min(DEFAULT_MAX_TOKENS, max_output)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise TranslationError("max_completion_tokens must be a positive integer", "max_completion_tokens")
    out: dict[str, Any] = {"model": model, "max_tokens": limit, "messages": turns}
    if system:
        out["system"] = _system_value(system)
    stop = body.get("stop")
    if stop:
        if not isinstance(stop, str) and not (isinstance(stop, list) and all(isinstance(x, str) for x in stop)):
            raise TranslationError("stop must be a string or an array of strings", "stop", "invalid_value")
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    changed: list[str] = []
    temp = body.get("temperature")
    if temp is not None:
        out["temperature"] = min(1.0, max(0.0, _number(temp, "temperature", 0.0, 2.0)))
        if out["temperature"] != temp:
            changed.append("temperature")  # clamped to Anthropic's 0..1
    if body.get("top_p") is not None:
        out["top_p"] = _number(body["top_p"], "top_p", 0.0, 1.0)
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and (out.get("tools") or choice["type"] == "none"):
        out["tool_choice"] = dict(choice)
    structured = structured_tool(body)
    if structured is not None:
        _structured_answer(body, out, structured, choice, system)
    elif (body.get("response_format") or {}).get("type") == "json_object":
        system.append({"type": "text", "text": "Respond with a single JSON object and nothing else."})
        out["system"] = _system_value(system)
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user[:256]}
    effort = body.get("reasoning_effort")
    if effort is not None and effort != "none":
        if effort not in THINKING_BUDGETS:
            raise TranslationError(f"reasoning_effort must be one of {', '.join(THINKING_BUDGETS)}",
                                   "reasoning_effort")
        # budget_tokens < max_tokens is required; the client's limit stays room for the answer, within the
        # model's maximum output (fit_thinking)
        fit = None if _needs_thinking_block(turns) else fit_thinking(limit, THINKING_BUDGETS[effort], max_output)
        if fit is None:
            changed.append("reasoning_effort")  # thinking stays off
        else:
            out["max_tokens"], budget = fit
            out["thinking"] = {"type": "enabled", "budget_tokens": budget}
            for k in ("temperature", "top_p", "top_k"):
                if out.pop(k, None) is not None:
                    changed.append(k)
            tc = out.get("tool_choice", {})
            if tc.get("type") in ("any", "tool"):
                # only auto/none are allowed with thinking
                out["tool_choice"] = {"type": "auto", **{k: v for k, v in tc.items() if k == "disable_parallel_tool_use"}}
                if tc.get("type") == "tool" and tc.get("name") == structured:  # the json tool was forced
                    out["system"] = _system_value([*system, {
                        "type": "text", "text": f"Give your final answer by calling the {structured} tool."}])
    if body.get("tool_choice") is not None and choice is not None and out.get("tool_choice") != choice:
        changed.append("tool_choice")  # replaced (structured output, thinking) or left out (no tools)
    if body.get("stream"):
        out["stream"] = True
    if dropped is not None:
        changed += [k for k in IGNORED_FIELDS if body.get(k) is not None]
        dropped.extend(k for k in changed if k not in dropped)
    return out


def translation_dropped(body: dict[str, Any], max_output: int | None = None) -> list[str]:
    """The client's parameters the Messages request leaves out or changes, sorted: `temperature` above 1
    (clamped to 1) or with thinking (removed, as `top_p`), `tool_choice` replaced (thinking allows only
    auto/none; a `json_schema` answer's tool: `auto` -> `any`, `none` -> that tool forced) or left out, `reasoning_effort` when thinking
    cannot be on (a tool loop without its thinking blocks, no room in the model's output), and the fields
    of `IGNORED_FIELDS` sent. [] for a body the translation refuses."""
    dropped: list[str] = []
    try:
        to_messages_request(body, "m", max_output, dropped)
    except (TranslationError, TypeError, ValueError, AttributeError, KeyError):
        return []
    return sorted(dropped)


# ---------------------------------------------------------------- response


@lru_cache(maxsize=1)
def _encoder() -> Any:
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base")
    except (ImportError, ValueError, OSError):  # pragma: no cover - offline without encodings
        return None


def estimate_tokens(text: str) -> int:
    """Token count of thinking text, for when Anthropic reports only the output total."""
    if not text:
        return 0
    enc = _encoder()
    if enc is None:  # pragma: no cover
        return max(1, len(text) // 4)
    return len(enc.encode(text, disallowed_special=()))


def usage_to_openai(u: dict[str, Any], thinking_text: str = "") -> dict[str, Any]:
    inp = int(u.get("input_tokens") or 0)
    read = int(u.get("cache_read_input_tokens") or 0)
    write = int(u.get("cache_creation_input_tokens") or 0)
    out = int(u.get("output_tokens") or 0)
    details = u.get("output_tokens_details") or {}
    reasoning = details.get("thinking_tokens", details.get("reasoning_tokens"))
    if reasoning is None:
        reasoning = min(out, estimate_tokens(thinking_text))
    prompt = inp + read + write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": out,
        "total_tokens": prompt + out,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": write, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": int(reasoning), "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def chat_id(anthropic_id: str | None) -> str:
    return f"chatcmpl-{anthropic_id}" if anthropic_id else "chatcmpl-anthropic"


def from_message(msg: dict[str, Any], model: str | None = None, structured: str | None = None) -> dict[str, Any]:
    """An Anthropic `Message` -> a `chat.completion` dict. `structured`: the forced json_schema tool,
    whose input becomes the message content."""
    texts: list[str] = []
    thinking: list[str] = []
    thinking_blocks: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    for block in msg.get("content") or []:
        t = block.get("type")
        if t == "text":
            texts.append(block.get("text", ""))
        elif t == "tool_use" and structured and block.get("name") == structured:
            texts.append(orjson.dumps(block.get("input") or {}).decode())
        elif t == "tool_use":
            tool_calls.append({"id": block.get("id", ""), "type": "function",
                               "function": {"name": block.get("name", ""),
                                            "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif t == "thinking":
            thinking.append(block.get("thinking", ""))
            thinking_blocks.append(block)
        elif t == "redacted_thinking":
            thinking_blocks.append(block)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None,
                               "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thinking_blocks:
        message["reasoning_content"] = "".join(thinking)
        message["thinking_blocks"] = thinking_blocks
    finish = FINISH_REASONS.get(msg.get("stop_reason") or "end_turn", "stop")
    if finish == "tool_calls" and not tool_calls:
        finish = "stop"  # the structured-output tool was the only call
    return {
        "id": chat_id(msg.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model or msg.get("model", ""),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage_to_openai(msg.get("usage") or {}, "".join(thinking)),
    }


@dataclass
class StreamTranslator:
    """Turns Anthropic stream events (parsed `data:` objects) into `chat.completion.chunk` dicts.

    `feed(event)` returns the chunks to send for that event (often none). When `include_usage` is set,
    every chunk carries `"usage": null` and the final usage chunk (choices == []) is produced at
    `message_stop`, as OpenAI streams with `stream_options.include_usage`. An `error` event raises
    `AnthropicStreamError`."""

    model: str
    include_usage: bool = True
    structured: str | None = None  # the forced json_schema tool: its input streams as content
    id: str = "chatcmpl-anthropic"
    created: int = field(default_factory=lambda: int(time.time()))
    usage: dict[str, Any] = field(default_factory=dict)
    finish_reason: str | None = None
    started: bool = False
    usage_final: bool = False  # a message_delta reported usage: `usage` is Anthropic's count, not message_start's
    _tool_index: dict[int, int] = field(default_factory=dict)  # anthropic block index -> OpenAI tool index
    _thinking: list[str] = field(default_factory=list)
    _content_blocks: set[int] = field(default_factory=set)  # structured-output tool blocks
    _thinking_blocks: dict[int, dict[str, Any]] = field(default_factory=dict)  # open (redacted_)thinking blocks
    _thinking_count: int = 0  # thinking blocks finished so far: the `index` of the next `thinking_blocks` entry
    _json_seen: set[int] = field(default_factory=set)  # tool_use blocks (anthropic index) that got some JSON

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if self.include_usage:  # as OpenAI streams with include_usage: `"usage": null` until the usage chunk
            chunk["usage"] = None
        return chunk

    def feed(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
        t = ev.get("type")
        if t == "message_start":
            msg = ev.get("message") or {}
            self.id = chat_id(msg.get("id"))
            self.usage.update(msg.get("usage") or {})
            self.started = True
            return [self._chunk({"role": "assistant", "content": ""})]
        if t == "content_block_start":
            block = ev.get("content_block") or {}
            if block.get("type") == "tool_use" and self.structured and block.get("name") == self.structured:
                self._content_blocks.add(int(ev.get("index", 0)))
                return []
            if block.get("type") == "tool_use":
                idx = len(self._tool_index)
                self._tool_index[int(ev.get("index", 0))] = idx
                return [self._chunk({"tool_calls": [{"index": idx, "id": block.get("id", ""), "type": "function",
                                                     "function": {"name": block.get("name", ""),
                                                                  "arguments": ""}}]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            if block.get("type") == "thinking":
                self._thinking_blocks[int(ev.get("index", 0))] = {
                    "type": "thinking", "thinking": str(block.get("thinking") or ""),
                    "signature": str(block.get("signature") or "")}
                if block.get("thinking"):
                    self._thinking.append(block["thinking"])
                    return [self._chunk({"reasoning_content": block["thinking"]})]
            elif block.get("type") == "redacted_thinking":
                self._thinking_blocks[int(ev.get("index", 0))] = dict(block)
            return []
        if t == "content_block_delta":
            d = ev.get("delta") or {}
            dt = d.get("type")
            if dt == "text_delta":
                return [self._chunk({"content": d.get("text", "")})]
            if dt == "input_json_delta":
                piece = str(d.get("partial_json") or "")
                if not piece:  # Anthropic opens every tool input with an empty delta (a no-argument tool: only that)
                    return []
                self._json_seen.add(int(ev.get("index", 0)))
                if int(ev.get("index", 0)) in self._content_blocks:
                    return [self._chunk({"content": piece})]
                idx = self._tool_index.get(int(ev.get("index", 0)), 0)
                return [self._chunk({"tool_calls": [{"index": idx, "function": {"arguments": piece}}]})]
            open_block = self._thinking_blocks.get(int(ev.get("index", 0)))
            if dt == "thinking_delta":
                self._thinking.append(d.get("thinking", ""))
                if open_block is not None:
                    open_block["thinking"] = open_block.get("thinking", "") + d.get("thinking", "")
                return [self._chunk({"reasoning_content": d.get("thinking", "")})]
            if dt == "signature_delta" and open_block is not None:
                open_block["signature"] = open_block.get("signature", "") + d.get("signature", "")
            return []  # citations_delta, unknown deltas
        if t == "content_block_stop":
            bi = int(ev.get("index", 0))
            if bi in self._tool_index or bi in self._content_blocks:
                if bi in self._json_seen:
                    return []
                # a tool input that ended with no JSON (a tool without parameters: Anthropic streams one empty
                # input_json_delta) is the empty object, as the non-streamed answer says: valid JSON arguments
                if bi in self._content_blocks:
                    return [self._chunk({"content": "{}"})]
                return [self._chunk({"tool_calls": [{"index": self._tool_index[bi], "function": {"arguments": "{}"}}]})]
            # a finished (redacted_)thinking block, signed, as the client must pass it back (thinking_blocks);
            # `index` (its place among the answer's thinking blocks) as every array delta entry has, so the
            # SDK's stream helpers (openai.lib.streaming accumulate_delta) build the list
            done = self._thinking_blocks.pop(bi, None)
            if done is None:
                return []
            entry = {"index": self._thinking_count, **done}
            self._thinking_count += 1
            return [self._chunk({"thinking_blocks": [entry]})]
        if t == "message_delta":
            d = ev.get("delta") or {}
            reported = {k: v for k, v in (ev.get("usage") or {}).items() if v is not None}
            self.usage.update(reported)
            if "output_tokens" in reported:
                self.usage_final = True
            if d.get("stop_reason"):
                self.finish_reason = FINISH_REASONS.get(d["stop_reason"], "stop")
                if self.finish_reason == "tool_calls" and not self._tool_index:
                    self.finish_reason = "stop"
                return [self._chunk({}, self.finish_reason)]
            return []
        if t == "message_stop":
            out = []
            if self.finish_reason is None:
                self.finish_reason = "stop"
                out.append(self._chunk({}, "stop"))
            if self.include_usage:
                out.append({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                            "model": self.model, "choices": [], "usage": self.openai_usage()})
            return out
        if t == "error":
            err = ev.get("error") or {}
            raise AnthropicStreamError(str(err.get("type") or "api_error"), str(err.get("message") or "stream error"))
        return []  # ping, unknown future events

    def openai_usage(self) -> dict[str, Any]:
        return usage_to_openai(self.usage, "".join(self._thinking))

    def reported_usage(self) -> dict[str, Any] | None:
        """The usage Anthropic reported for the answer, or None before its `message_delta`: until then
        `usage` holds message_start's placeholder (`output_tokens: 1`), and a stream cut short must be
        billed by the gateway's estimate of what it relayed, not by that placeholder."""
        return self.openai_usage() if self.usage_final else None


class AnthropicStreamError(Exception):
    """An `error` event inside a 200 stream (for example overloaded_error)."""

    def __init__(self, type: str, message: str) -> None:
        super().__init__(message)
        self.type = type
        self.message = message


# ---------------------------------------------------------------- errors

# Anthropic error type -> (status we report, OpenAI error type). 529 overloaded -> 503 (retryable).
ERROR_STATUS = {
    "invalid_request_error": (400, "invalid_request_error"),
    "authentication_error": (401, "authentication_error"),
    "billing_error": (402, "invalid_request_error"),
    "permission_error": (403, "permission_error"),
    "not_found_error": (404, "invalid_request_error"),
    "request_too_large": (413, "invalid_request_error"),
    "rate_limit_error": (429, "rate_limit_error"),
    "api_error": (500, "api_error"),
    "timeout_error": (504, "api_error"),
    "overloaded_error": (503, "api_error"),
}


def map_status(status: int, err_type: str | None) -> tuple[int, str]:
    """The status and OpenAI error type to report for an Anthropic error response."""
    if status == 529 or err_type == "overloaded_error":
        return 503, "api_error"
    if err_type in ERROR_STATUS and status in (200, 0):
        return ERROR_STATUS[err_type]
    if status >= 500:
        return status, "api_error"
    if err_type in ERROR_STATUS:
        return status, ERROR_STATUS[err_type][1]
    return status, "invalid_request_error"
