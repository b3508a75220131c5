"""Responses API <-> Chat Completions translation (wire facts §5). Pure: no I/O.

`to_chat_request(req)` turns a `POST /v1/responses` body into a Chat Completions body: `input` (a
string, or message / function_call / function_call_output items) -> `messages`; `instructions` ->
a leading system message; `reasoning.effort` -> `reasoning_effort`; flat function tools -> nested
ones; `text.format` (flat) -> `response_format` (nested `json_schema`); `max_output_tokens` ->
`max_completion_tokens`. Things that need server-side state (`conversation`, `background`, item
references) or a built-in tool are refused with a clear 400; `previous_response_id` is resolved by the
server (its stored chain becomes leading input items) before this is called.

`input_items(input)` normalises a request's `input` to the item objects OpenAI's input_items list
returns (ids, `input_text` parts, `status`), which is how the store keeps them.

`to_response(chat, req, …)` turns a `chat.completion` into a Response object (reasoning, message and
function_call output items, `status`/`incomplete_details` from `finish_reason`, usage renamed to
input/output tokens).

Claude's thinking (chat `reasoning_content` + signed `thinking_blocks`) becomes a `reasoning` item:
the text as its summary, the blocks losslessly in `encrypted_content` (`encode_thinking`). Passed
back in `input` (or through `previous_response_id`), `to_chat_request(..., thinking_blocks=True)` —
for a request only Anthropic deployments can serve — puts the blocks back on the assistant message
that follows the item, so the Anthropic translation sends the signed thinking and a tool loop keeps
thinking on; otherwise reasoning items are dropped. `without_gateway_reasoning` removes them from a
native request's input. `StreamTranslator` turns `chat.completion.chunk` dicts into the Responses
stream events, in the order the SDK's stream accumulator expects, each with a `sequence_number`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import orjson

from tiergate.wire.errors import GatewayError, bad_request
from tiergate.wire.ids import new_id

_UNSUPPORTED_STATE = {
    # the server resolves previous_response_id from its store before translating (server/responses.py)
    "previous_response_id": "previous_response_id must be resolved into input items before translation.",
    "conversation": "conversation is not supported: this gateway does not store conversations. Send the whole "
                    "conversation in `input`, or continue a stored response with previous_response_id.",
    "prompt": "prompt templates are not supported; send `instructions` and `input` instead.",
}
_PASS = ("temperature", "top_p", "parallel_tool_calls", "user", "safety_identifier", "prompt_cache_key",
         "service_tier", "top_logprobs", "seed", "tiergate")


def _err(message: str, param: str, code: str = "unsupported_parameter") -> GatewayError:
    return bad_request(message, param=param, code=code)


# ---------------------------------------------------------------- reasoning items <-> Claude's thinking blocks

THINKING_PREFIX = "tg-thinking.v1."  # starts the encrypted_content of a reasoning item made here


def encode_thinking(blocks: list[dict[str, Any]]) -> str:
    """Claude's signed thinking / redacted_thinking blocks (chat `thinking_blocks`) -> the opaque
    `encrypted_content` of a reasoning item: lossless, so the blocks can be sent back to Anthropic."""
    return THINKING_PREFIX + base64.urlsafe_b64encode(orjson.dumps(blocks)).decode()


def is_gateway_reasoning(item: Any) -> bool:
    """A reasoning item this gateway made from Claude's thinking (no other API can read it)."""
    return (isinstance(item, dict) and item.get("type") == "reasoning"
            and str(item.get("encrypted_content") or "").startswith(THINKING_PREFIX))


def decode_thinking(item: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """The thinking blocks in a reasoning item's `encrypted_content` (see `encode_thinking`); a 400 when
    they were altered past reading."""
    raw = str(item.get("encrypted_content"))[len(THINKING_PREFIX):]
    try:
        blocks = orjson.loads(base64.urlsafe_b64decode(raw.encode()))
    except (binascii.Error, ValueError):
        blocks = None
    if not isinstance(blocks, list) or not blocks or not all(
            isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking") for b in blocks):
        raise _err("encrypted_content of this reasoning item could not be read; pass the item back exactly as "
                   "it was returned", f"{path}.encrypted_content", "invalid_encrypted_content")
    return blocks


def without_gateway_reasoning(inp: Any) -> Any:
    """`input` without the reasoning items made here from Claude's thinking, for an upstream Responses
    API (which cannot read them, and would refuse their ids)."""
    if not isinstance(inp, list):
        return inp
    return [item for item in inp if not is_gateway_reasoning(item)]


# ---------------------------------------------------------------- request


def _parts(content: Any, path: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _err("content must be a string or a list of content parts", f"{path}.content", "invalid_value")
    out: list[dict[str, Any]] = []
    for i, p in enumerate(content):
        t = p.get("type") if isinstance(p, dict) else None
        if t in ("input_text", "output_text", "text"):
            if not isinstance(p.get("text"), str):
                raise _err(f"{t} needs a string `text`, got {type(p.get('text')).__name__}",
                           f"{path}.content[{i}].text", "invalid_type")
            out.append({"type": "text", "text": p["text"]})
        elif t == "refusal":
            out.append({"type": "text", "text": str(p.get("refusal", ""))})
        elif t == "input_image":
            if not p.get("image_url"):
                raise _err("input_image needs image_url (file_id images are not supported)",
                           f"{path}.content[{i}].image_url")
            img: dict[str, Any] = {"url": p["image_url"]}
            if p.get("detail"):
                img["detail"] = p["detail"]
            out.append({"type": "image_url", "image_url": img})
        else:
            raise _err(f"content part type {t!r} is not supported here (use input_text or input_image)",
                       f"{path}.content[{i}].type")
    if all(x["type"] == "text" for x in out):
        return "".join(x["text"] for x in out) if len(out) <= 1 else "\n".join(x["text"] for x in out)
    return out


def _output_to_text(output: Any) -> str | list[dict[str, Any]]:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return _parts(output, "output")
    return "" if output is None else str(output)


def _input_messages(inp: Any, thinking_blocks: bool = False) -> list[dict[str, Any]]:
    if isinstance(inp, str):
        return [{"role": "user", "content": inp}]
    if not isinstance(inp, list) or not inp:
        raise _err("input must be a string or a non-empty list of input items", "input", "invalid_value")
    msgs: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []  # thinking blocks of reasoning items, for the assistant turn they lead to

    def attach() -> None:  # to the assistant message just added or extended
        if pending:
            msgs[-1].setdefault("thinking_blocks", []).extend(pending)
            pending.clear()

    for i, item in enumerate(inp):
        path = f"input[{i}]"
        if not isinstance(item, dict):
            raise _err("each input item must be an object", path, "invalid_value")
        t = item.get("type", "message")
        if t == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _err("role must be user, assistant, system or developer", f"{path}.role", "invalid_value")
            content = _parts(item.get("content", ""), path)
            if role == "assistant" and not isinstance(content, str):
                content = "".join(p.get("text", "") for p in content if p["type"] == "text")
            msgs.append({"role": role, "content": content})
            if role == "assistant":
                attach()
            else:
                pending.clear()
        elif t == "function_call":
            call = {"id": item.get("call_id") or item.get("id") or new_id("call_"), "type": "function",
                    "function": {"name": item.get("name", ""), "arguments": item.get("arguments") or "{}"}}
            last = msgs[-1] if msgs else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant" and isinstance(last.get("content"), str):
                last["tool_calls"] = [call]
            else:
                msgs.append({"role": "assistant", "content": None, "tool_calls": [call]})
            attach()
        elif t == "function_call_output":
            if not item.get("call_id"):
                raise _err("function_call_output needs call_id", f"{path}.call_id", "missing_required_parameter")
            msgs.append({"role": "tool", "tool_call_id": item["call_id"], "content": _output_to_text(item.get("output"))})
            pending.clear()
        elif t == "reasoning":
            # Claude's signed thinking, made here, goes back on the assistant message it led to (chat
            # `thinking_blocks`, which the Anthropic translation sends back as thinking blocks); any other
            # reasoning item has no place in Chat Completions and is dropped
            if thinking_blocks and is_gateway_reasoning(item):
                blocks = decode_thinking(item, path)
                if msgs and msgs[-1]["role"] == "assistant":
                    msgs[-1].setdefault("thinking_blocks", []).extend(blocks)
                else:
                    pending.extend(blocks)
        elif t == "item_reference":
            raise _err("item_reference items are not resolved by this gateway; pass the item itself, or continue a "
                       "stored response with previous_response_id", f"{path}.type")
        else:
            raise _err(f"input item type {t!r} is not supported here", f"{path}.type")
    return msgs


def _content_parts(content: Any, text_type: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        part: dict[str, Any] = {"type": text_type, "text": content}
        if text_type == "output_text":
            part["annotations"] = []
        return [part]
    return [dict(p) for p in content] if isinstance(content, list) else []


def input_items(inp: Any) -> list[dict[str, Any]]:
    """A request's (already validated) `input` -> item objects as OpenAI's `GET
    /v1/responses/{id}/input_items` returns them: a string is one user message; messages get an id,
    `status` and a content list (`input_text` parts; assistant text as `output_text`); function calls
    and their outputs get an id and `status`. Ids the client sent are kept."""
    items = [{"role": "user", "content": inp}] if isinstance(inp, str) else list(inp or [])
    out: list[dict[str, Any]] = []
    for raw in items:
        item = dict(raw)
        t = item.setdefault("type", "message")
        if t == "message":
            assistant = item.get("role") == "assistant"
            item["content"] = _content_parts(item.get("content", ""), "output_text" if assistant else "input_text")
            item["status"] = item.get("status") or "completed"
            out.append({"id": item.pop("id", None) or new_id("msg_"), **item})
            continue
        prefix = {"function_call": "fc_", "function_call_output": "fco_", "reasoning": "rs_"}.get(t, "item_")
        if t in ("function_call", "function_call_output"):
            item["status"] = item.get("status") or "completed"
        out.append({"id": item.pop("id", None) or new_id(prefix), **item})
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(tools or []):
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else t
            raise _err(f"tool type {kind!r} is not supported through this gateway; only function tools are",
                       f"tools[{i}].type")
        fn: dict[str, Any] = {"name": t.get("name", "")}
        for k in ("description", "parameters", "strict"):
            if t.get(k) is not None:
                fn[k] = t[k]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(tc: Any) -> Any:
    if tc is None or tc in ("auto", "none", "required"):
        return tc
    if isinstance(tc, dict) and tc.get("type") == "function" and tc.get("name"):
        return {"type": "function", "function": {"name": tc["name"]}}
    raise _err("tool_choice must be auto, none, required or {type: function, name}", "tool_choice", "invalid_value")


def _response_format(text: Any) -> dict[str, Any] | None:
    if not text:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        if not fmt.get("name") or not isinstance(fmt.get("schema"), dict):
            raise _err("text.format json_schema needs name and schema", "text.format", "invalid_value")
        js = {k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": js}
    raise _err(f"text.format type {fmt.get('type')!r} is not supported", "text.format.type", "invalid_value")


_REASONING_SUMMARIES = ("auto", "concise", "detailed")


def _reasoning(reasoning: Any) -> str | None:
    """The `reasoning` object's effort, once the object is checked: an object (or null) whose `effort` is
    null or a known effort and whose `summary` / `generate_summary` is null or auto, concise, detailed."""
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise _err(f"reasoning must be an object such as {{\"effort\": \"low\"}}, got {_json_type(reasoning)}",
                   "reasoning", "invalid_type")
    from tiergate.catalog.catalog import ALL_REASONING_EFFORTS

    effort = reasoning.get("effort")
    if effort is not None and not isinstance(effort, str):
        raise _err(f"reasoning.effort must be a string, got {_json_type(effort)}", "reasoning.effort", "invalid_type")
    if effort is not None and effort not in ALL_REASONING_EFFORTS:
        raise _err(f"reasoning.effort must be one of {', '.join(ALL_REASONING_EFFORTS)}, got {effort[:50]!r}",
                   "reasoning.effort", "invalid_value")
    for k in ("summary", "generate_summary"):
        v = reasoning.get(k)
        if v is not None and v not in _REASONING_SUMMARIES:
            got = repr(v[:50]) if isinstance(v, str) else _json_type(v)
            raise _err(f"reasoning.{k} must be one of {', '.join(_REASONING_SUMMARIES)}, got {got}",
                       f"reasoning.{k}", "invalid_value" if isinstance(v, str) else "invalid_type")
    return effort


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    return "an array" if isinstance(v, list) else "an object"


def to_chat_request(req: Any, *, thinking_blocks: bool = False) -> dict[str, Any]:
    """A Responses request body -> a Chat Completions body. Raises GatewayError (400) on what cannot map.

    `thinking_blocks`: reasoning items made here from Claude's thinking become `thinking_blocks` on the
    assistant message that follows them (the gateway's paths that shape the body per model: shaping drops
    the field for any model that is not Claude, whose API would refuse it); without it they are dropped
    (bodies sent to an OpenAI-family API as they are, e.g. OpenAI Batch API forwarding)."""
    if not isinstance(req, dict):
        raise bad_request("The request body must be a JSON object.")
    if not isinstance(req.get("model"), str) or not req["model"]:
        raise bad_request("you must provide a model parameter", param="model", code="missing_required_parameter")
    for k, msg in _UNSUPPORTED_STATE.items():
        if req.get(k) is not None:
            raise _err(msg, k)
    if req.get("background"):
        raise _err("background responses are not supported; use the Batch API for deferred work", "background")
    if "input" not in req:
        raise bad_request("input is required", param="input", code="missing_required_parameter")
    msgs = _input_messages(req["input"], thinking_blocks)
    instructions = req.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _err(f"instructions must be a string, got {type(instructions).__name__}", "instructions", "invalid_type")
    if instructions:
        msgs.insert(0, {"role": "system", "content": instructions})
    body: dict[str, Any] = {"model": req["model"], "messages": msgs}
    for k in _PASS:
        if req.get(k) is not None:
            body[k] = req[k]
    if body.get("top_logprobs") is not None:
        body["logprobs"] = True  # Chat Completions needs it for top_logprobs; Responses has no such switch
    effort = _reasoning(req.get("reasoning"))
    if effort is not None:
        body["reasoning_effort"] = effort
    mot = req.get("max_output_tokens")
    if mot is not None:
        if not isinstance(mot, int) or isinstance(mot, bool) or mot < 16:
            raise _err("max_output_tokens must be an integer >= 16", "max_output_tokens", "invalid_value")
        body["max_completion_tokens"] = mot
    if req.get("tools"):
        body["tools"] = _tools(req["tools"])
    tc = _tool_choice(req.get("tool_choice"))
    if tc is not None:
        body["tool_choice"] = tc
    rf = _response_format(req.get("text"))
    if rf is not None:
        body["response_format"] = rf
    verbosity = (req.get("text") or {}).get("verbosity") if isinstance(req.get("text"), dict) else None
    if verbosity is not None:
        body["verbosity"] = verbosity
    if req.get("stream"):
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


# ---------------------------------------------------------------- response


def usage_to_responses(u: dict[str, Any] | None) -> dict[str, Any] | None:
    if not u:
        return None
    pin = u.get("prompt_tokens_details") or {}
    pout = u.get("completion_tokens_details") or {}
    inp, out = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": int(pin.get("cached_tokens") or 0),
                                                          "cache_write_tokens": int(pin.get("cache_write_tokens") or 0)},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": int(pout.get("reasoning_tokens") or 0)},
            "total_tokens": int(u.get("total_tokens") or inp + out)}


def _status(finish: str | None) -> tuple[str, dict[str, str] | None]:
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def skeleton(req: dict[str, Any], resp_id: str, created_at: int, model: str) -> dict[str, Any]:
    """The Response object with the request's settings echoed and no output yet (`in_progress`)."""
    text = req.get("text") if isinstance(req.get("text"), dict) else None
    return {
        "id": resp_id, "object": "response", "created_at": created_at, "status": "in_progress",
        "background": False, "error": None, "incomplete_details": None,
        "instructions": req.get("instructions"), "max_output_tokens": req.get("max_output_tokens"),
        "model": model, "output": [], "parallel_tool_calls": req.get("parallel_tool_calls", True),
        "previous_response_id": req.get("previous_response_id"),
        "reasoning": {"effort": (req.get("reasoning") or {}).get("effort"),
                      "summary": (req.get("reasoning") or {}).get("summary")},
        "service_tier": req.get("service_tier"), "store": req.get("store") is not False,
        "temperature": req.get("temperature", 1.0), "text": text or {"format": {"type": "text"}},
        "tool_choice": req.get("tool_choice", "auto"), "tools": req.get("tools") or [],
        "top_p": req.get("top_p", 1.0), "truncation": req.get("truncation", "disabled"),
        "usage": None, "user": req.get("user"), "metadata": req.get("metadata") or {},
    }


def _message_item(item_id: str, text: str | None, refusal: str | None, status: str,
                  logprobs: list[Any] | None = None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call_id: str, name: str, args: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": args,
            "status": status}


def _reasoning_item(item_id: str, text: str, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """A reasoning output item: the thinking text as its summary, the signed blocks (if any) as its
    `encrypted_content`, from which the next turn rebuilds them."""
    item: dict[str, Any] = {"type": "reasoning", "id": item_id,
                            "summary": [{"type": "summary_text", "text": text}] if text else []}
    if blocks:
        item["encrypted_content"] = encode_thinking(blocks)
    return item


def to_response(chat: dict[str, Any], req: dict[str, Any], resp_id: str, created_at: int) -> dict[str, Any]:
    """A `chat.completion` -> a Response object."""
    resp = skeleton(req, resp_id, created_at, chat.get("model") or req.get("model", ""))
    choice = (chat.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    status, incomplete = _status(choice.get("finish_reason"))
    output: list[dict[str, Any]] = []
    blocks = [b for b in msg.get("thinking_blocks") or [] if isinstance(b, dict)]
    if blocks or msg.get("reasoning_content"):
        text = msg.get("reasoning_content") or "".join(str(b.get("thinking") or "") for b in blocks)
        output.append(_reasoning_item(new_id("rs_"), str(text), blocks))
    if msg.get("content") or msg.get("refusal"):
        item_status = "incomplete" if status == "incomplete" else "completed"
        # chat's logprobs.content entries ({token, logprob, bytes, top_logprobs}) are Responses' shape too
        lp = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
        output.append(_message_item(new_id("msg_"), msg.get("content"), msg.get("refusal"), item_status,
                                    lp if isinstance(lp, list) else None))
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") or {}
        output.append(_call_item(new_id("fc_"), tc.get("id") or new_id("call_"), fn.get("name", ""),
                                 fn.get("arguments") or ""))
    resp.update(status=status, incomplete_details=incomplete, output=output, usage=usage_to_responses(chat.get("usage")))
    return resp


# ---------------------------------------------------------------- streaming


@dataclass
class _Open:
    kind: str  # message | function_call | reasoning
    output_index: int
    item_id: str
    text: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    part: str | None = None  # output_text | refusal (the open content part of a message); summary_text
    blocks: list[dict[str, Any]] = field(default_factory=list)  # a reasoning item's thinking blocks
    logprobs: list[Any] = field(default_factory=list)  # a message's token logprobs (chat's logprobs.content)


class RelayedOutput:
    """The output items of a relayed (native) Responses event stream, as far as it got: finished items
    from `response.output_item.done`, an item still open from its `added` event plus its text deltas.
    `items()` is what a response cut off by its client's hang-up is stored with."""

    __slots__ = ("_done", "_open", "_text")

    def __init__(self) -> None:
        self._done: dict[int, dict[str, Any]] = {}
        self._open: dict[int, dict[str, Any]] = {}
        self._text: dict[int, list[str]] = {}

    def feed(self, ev: dict[str, Any]) -> None:
        etype, idx = ev.get("type"), ev.get("output_index")
        if not isinstance(idx, int):
            return
        item = ev.get("item")
        if etype == "response.output_item.added" and isinstance(item, dict):
            self._open[idx] = item
            self._text[idx] = []
        elif etype == "response.output_item.done" and isinstance(item, dict):
            self._done[idx] = item
            self._open.pop(idx, None)
            self._text.pop(idx, None)
        elif etype == "response.output_text.delta" and idx in self._text:
            self._text[idx].append(str(ev.get("delta") or ""))

    def items(self) -> list[dict[str, Any]]:
        out = []
        for idx in sorted({*self._done, *self._open}):
            item = self._done.get(idx)
            if item is None:
                item = dict(self._open[idx], status="incomplete")
                if item.get("type") == "message":
                    item = _message_item(str(item.get("id") or ""), "".join(self._text[idx]) or None, None,
                                         "incomplete")
            out.append(item)
        return out


@dataclass
class StreamTranslator:
    """`chat.completion.chunk` dicts -> `(event_name, data)` Responses stream events.

    Call `start()` once, `feed(chunk)` per chunk, then `finish()` (or `fail(...)` on an error). Every
    event carries `type` and a running `sequence_number`."""

    req: dict[str, Any]
    resp_id: str
    created_at: int
    model: str
    seq: int = 0
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    _items: dict[int, dict[str, Any]] = field(default_factory=dict)  # output_index -> finished output item
    _open_msg: _Open | None = None
    _open_rs: _Open | None = None  # the reasoning item (Claude's thinking) being streamed
    _calls: dict[int, _Open] = field(default_factory=dict)  # chat tool index -> open call
    _next_index: int = 0

    def _ev(self, type_: str, **data: Any) -> tuple[str, dict[str, Any]]:
        ev = {"type": type_, "sequence_number": self.seq, **data}
        self.seq += 1
        return type_, ev

    def _snapshot(self, status: str) -> dict[str, Any]:
        r = skeleton(self.req, self.resp_id, self.created_at, self.model)
        r["status"] = status
        return r

    def start(self) -> list[tuple[str, dict[str, Any]]]:
        return [self._ev("response.created", response=self._snapshot("in_progress")),
                self._ev("response.in_progress", response=self._snapshot("in_progress"))]

    # -- reasoning item (chat `reasoning_content` deltas, then the signed `thinking_blocks`)
    def _ensure_reasoning(self) -> list[tuple[str, dict[str, Any]]]:
        if self._open_rs is not None:
            return []
        out = self._close_msg()
        self._open_rs = _Open("reasoning", self._next_index, new_id("rs_"))
        self._next_index += 1
        out.append(self._ev("response.output_item.added", output_index=self._open_rs.output_index,
                            item={"type": "reasoning", "id": self._open_rs.item_id, "summary": []}))
        return out

    def _reasoning_delta(self, text: str) -> list[tuple[str, dict[str, Any]]]:
        out = self._ensure_reasoning()
        r = self._open_rs
        assert r is not None
        if r.part is None:
            r.part = "summary_text"
            out.append(self._ev("response.reasoning_summary_part.added", item_id=r.item_id,
                                output_index=r.output_index, summary_index=0,
                                part={"type": "summary_text", "text": ""}))
        r.text.append(text)
        out.append(self._ev("response.reasoning_summary_text.delta", item_id=r.item_id,
                            output_index=r.output_index, summary_index=0, delta=text))
        return out

    def _close_reasoning(self) -> list[tuple[str, dict[str, Any]]]:
        r = self._open_rs
        if r is None:
            return []
        out = []
        text = "".join(r.text)
        if r.part is not None:
            out.append(self._ev("response.reasoning_summary_text.done", item_id=r.item_id,
                                output_index=r.output_index, summary_index=0, text=text))
            out.append(self._ev("response.reasoning_summary_part.done", item_id=r.item_id,
                                output_index=r.output_index, summary_index=0,
                                part={"type": "summary_text", "text": text}))
        item = _reasoning_item(r.item_id, text, r.blocks)
        self._items[r.output_index] = item
        out.append(self._ev("response.output_item.done", output_index=r.output_index, item=item))
        self._open_rs = None
        return out

    # -- message item
    def _ensure_msg(self, part: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        if self._open_msg is None:
            out += self._close_reasoning()
            self._open_msg = _Open("message", self._next_index, new_id("msg_"))
            self._next_index += 1
            out.append(self._ev("response.output_item.added", output_index=self._open_msg.output_index,
                                item=_message_item(self._open_msg.item_id, None, None, "in_progress")))
        m = self._open_msg
        if m.part != part:
            out += self._close_part()
            m.part = part
            content_index = (1 if m.text else 0) if part == "refusal" else 0
            p = ({"type": "output_text", "text": "", "annotations": [], "logprobs": []} if part == "output_text"
                 else {"type": "refusal", "refusal": ""})
            out.append(self._ev("response.content_part.added", item_id=m.item_id, output_index=m.output_index,
                                content_index=content_index, part=p))
        return out

    def _close_part(self) -> list[tuple[str, dict[str, Any]]]:
        m = self._open_msg
        if m is None or m.part is None:
            return []
        out = []
        if m.part == "output_text":
            text = "".join(m.text)
            out.append(self._ev("response.output_text.done", item_id=m.item_id, output_index=m.output_index,
                                content_index=0, text=text, logprobs=list(m.logprobs)))
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": list(m.logprobs)}
            ci = 0
        else:
            refusal = "".join(m.refusal)
            ci = 1 if m.text else 0
            out.append(self._ev("response.refusal.done", item_id=m.item_id, output_index=m.output_index,
                                content_index=ci, refusal=refusal))
            part = {"type": "refusal", "refusal": refusal}
        out.append(self._ev("response.content_part.done", item_id=m.item_id, output_index=m.output_index,
                            content_index=ci, part=part))
        m.part = None
        return out

    def _close_msg(self, status: str = "completed") -> list[tuple[str, dict[str, Any]]]:
        m = self._open_msg
        if m is None:
            return []
        out = self._close_part()
        item = _message_item(m.item_id, "".join(m.text) or None, "".join(m.refusal) or None, status,
                             list(m.logprobs) or None)
        self._items[m.output_index] = item
        out.append(self._ev("response.output_item.done", output_index=m.output_index, item=item))
        self._open_msg = None
        return out

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if not self.model and chunk.get("model"):
            self.model = chunk["model"]
        out: list[tuple[str, dict[str, Any]]] = []
        for ch in chunk.get("choices") or []:
            if ch.get("index", 0) != 0:
                continue
            d = ch.get("delta") or {}
            if d.get("reasoning_content"):
                out += self._reasoning_delta(str(d["reasoning_content"]))
            if d.get("thinking_blocks"):
                out += self._ensure_reasoning()
                assert self._open_rs is not None
                self._open_rs.blocks += [b for b in d["thinking_blocks"] if isinstance(b, dict)]
            if d.get("content"):
                out += self._ensure_msg("output_text")
                m = self._open_msg
                m.text.append(d["content"])
                lp = ch.get("logprobs")
                lp = lp.get("content") if isinstance(lp, dict) else None
                lp = lp if isinstance(lp, list) else []
                m.logprobs += lp
                out.append(self._ev("response.output_text.delta", item_id=m.item_id, output_index=m.output_index,
                                    content_index=0, delta=d["content"], logprobs=lp))
            if d.get("refusal"):
                out += self._ensure_msg("refusal")
                m = self._open_msg
                m.refusal.append(d["refusal"])
                out.append(self._ev("response.refusal.delta", item_id=m.item_id, output_index=m.output_index,
                                    content_index=1 if m.text else 0, delta=d["refusal"]))
            for tc in d.get("tool_calls") or []:
                idx = int(tc.get("index", 0))
                fn = tc.get("function") or {}
                call = self._calls.get(idx)
                if call is None:
                    out += self._close_reasoning()
                    out += self._close_msg()
                    call = _Open("function_call", self._next_index, new_id("fc_"),
                                 call_id=tc.get("id") or new_id("call_"), name=fn.get("name") or "")
                    self._next_index += 1
                    self._calls[idx] = call
                    out.append(self._ev("response.output_item.added", output_index=call.output_index,
                                        item=_call_item(call.item_id, call.call_id, call.name, "", "in_progress")))
                if fn.get("arguments"):
                    call.text.append(fn["arguments"])
                    out.append(self._ev("response.function_call_arguments.delta", item_id=call.item_id,
                                        output_index=call.output_index, delta=fn["arguments"]))
            if ch.get("finish_reason"):
                self.finish_reason = ch["finish_reason"]
        return out

    def _close_all(self, status: str) -> list[tuple[str, dict[str, Any]]]:
        out = self._close_reasoning()
        out += self._close_msg("incomplete" if status == "incomplete" else "completed")
        for call in sorted(self._calls.values(), key=lambda c: c.output_index):
            args = "".join(call.text)
            out.append(self._ev("response.function_call_arguments.done", item_id=call.item_id,
                                output_index=call.output_index, name=call.name, arguments=args))
            item = _call_item(call.item_id, call.call_id, call.name, args)
            self._items[call.output_index] = item
            out.append(self._ev("response.output_item.done", output_index=call.output_index, item=item))
        self._calls = {}
        return out

    def output(self) -> list[dict[str, Any]]:
        return [self._items[i] for i in sorted(self._items)]

    def finish(self) -> list[tuple[str, dict[str, Any]]]:
        status, incomplete = _status(self.finish_reason)
        out = self._close_all(status)
        resp = self._snapshot(status)
        resp.update(incomplete_details=incomplete, usage=usage_to_responses(self.usage),
                    output=self.output())
        out.append(self._ev("response.completed" if status == "completed" else "response.incomplete", response=resp))
        return out

    def cancelled(self) -> dict[str, Any]:
        """The response as stored when the client hung up before the end: status `cancelled`, the
        output produced so far (open items closed as `incomplete`), no events (nobody is listening)."""
        self._close_all("incomplete")
        resp = self._snapshot("cancelled")
        resp.update(usage=usage_to_responses(self.usage), output=self.output())
        return resp

    def fail(self, message: str, code: str = "server_error") -> list[tuple[str, dict[str, Any]]]:
        out = self._close_all("incomplete")
        resp = self._snapshot("failed")
        resp.update(error={"code": code, "message": message}, usage=usage_to_responses(self.usage),
                    output=self.output())
        out.append(self._ev("response.failed", response=resp))
        return out
