"""Shape a Chat Completions body for one model, driven only by its catalogue entry.

Pure functions on the hot path, no per-model code: which capabilities a request needs, a 400 when
the model lacks one (naming the configured models that have it), and `shape_request`, which returns
a new body with the output-limit field renamed, system/developer messages delivered the way the
model takes them, and parameters the model rejects dropped (their names are returned for the
`x-tiergate-dropped-params` header). The caller's dict is never mutated; only what changes is copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tiergate.catalog.catalog import UNKNOWN_CONTEXT_WINDOW, ModelInfo
from tiergate.wire.errors import GatewayError

# capability -> the request field a 400 points at, and how the message names it
_CHECKED = ("tools", "json_schema", "json_object", "vision", "streaming")
_PARAM = {
    "tools": "tools",
    "json_schema": "response_format",
    "json_object": "response_format",
    "vision": "messages",
    "streaming": "stream",
    "reasoning_effort": "reasoning_effort",
}
_LABEL = {
    "tools": "tools",
    "json_schema": "json_schema (structured outputs)",
    "json_object": "json_object (JSON mode)",
    "vision": "vision (image input)",
    "streaming": "streaming",
    "reasoning_effort": "reasoning_effort",
}
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
_SYSTEMISH = frozenset({"system", "developer"})


def _image_param(messages: Any) -> str | None:
    """The path of the first image content part (`messages[i].content[j]`), or None."""
    if not isinstance(messages, list):
        return None
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") in _IMAGE_PARTS:
                    return f"messages[{i}].content[{j}]"
    return None


def required_capabilities(body: Mapping[str, Any]) -> set[str]:
    """Capabilities a Chat Completions body needs: tools, json_schema, json_object, vision,
    streaming, reasoning_effort."""
    need: set[str] = set()
    if body.get("tools") or body.get("functions"):
        need.add("tools")
    rf = body.get("response_format")
    if isinstance(rf, dict):
        kind = rf.get("type")
        if kind == "json_schema":
            need.add("json_schema")
        elif kind == "json_object":
            need.add("json_object")
    if body.get("stream"):
        need.add("streaming")
    if body.get("reasoning_effort") is not None:
        need.add("reasoning_effort")
    if _image_param(body.get("messages")) is not None:
        need.add("vision")
    return need


def capability_error(
    capability: str,
    model_name: str,
    configured: Mapping[str, ModelInfo],
    *,
    param: str | None = None,
) -> GatewayError:
    """A 400 naming the missing capability and the configured client-facing models that have it."""
    have = sorted(n for n, info in configured.items() if n != model_name and info.capabilities.has(capability))
    label = _LABEL.get(capability, capability)
    if have:
        tail = f"configured models that do: {', '.join(have)}"
    else:
        tail = "no configured model does"
    return GatewayError(
        400,
        f"model '{model_name}' does not support {label}; {tail}",
        param=param or _PARAM.get(capability, capability),
        code="unsupported_capability",
    )


def check_capabilities(
    body: Mapping[str, Any],
    info: ModelInfo,
    configured: Mapping[str, ModelInfo],
    model_name: str,
) -> None:
    """Raise a 400 `unsupported_capability` for the first capability the body needs and `info` lacks,
    and OpenAI's 400 `invalid_value` for an output limit above the model's maximum (`check_output_limit`).

    `configured` maps the client-facing model names of this gateway to their catalogue entries.
    `reasoning_effort` is not checked here: `shape_request` drops it for models without effort
    levels and rejects a level the model does not offer."""
    check_output_limit(body, info)
    caps = info.capabilities
    if (body.get("tools") or body.get("functions")) and not caps.tools:
        raise capability_error("tools", model_name, configured, param="tools" if body.get("tools") else "functions")
    rf = body.get("response_format")
    if isinstance(rf, dict):
        kind = rf.get("type")
        if kind == "json_schema" and not caps.json_schema:
            raise capability_error("json_schema", model_name, configured)
        if kind == "json_object" and not caps.json_object:
            raise capability_error("json_object", model_name, configured)
    if not caps.vision:
        where = _image_param(body.get("messages"))
        if where is not None:
            raise capability_error("vision", model_name, configured, param=where)
    if body.get("stream") and not caps.streaming:
        raise capability_error("streaming", model_name, configured)


def check_output_limit(body: Mapping[str, Any], info: ModelInfo) -> None:
    """A 400 `invalid_value` (OpenAI's shape and words, `param` = the field the client sent) when
    `max_completion_tokens` or `max_tokens` is above the catalogue's `max_output_tokens` for the model.
    Models the catalogue does not list (no known maximum) are not checked."""
    most = info.max_output_tokens
    if not most or most >= UNKNOWN_CONTEXT_WINDOW:
        return
    for field in ("max_completion_tokens", "max_tokens"):
        v = body.get(field)
        if isinstance(v, int) and not isinstance(v, bool) and v > most:
            raise GatewayError(
                400,
                f"{field} is too large: {v}. This model supports at most {most} completion tokens, "
                f"whereas you provided {v}.",
                param=field,
                code="invalid_value",
            )


# ------------------------------------------------------------------ messages


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _rename_roles(messages: list[Any], src: str, dst: str) -> list[Any]:
    out: list[Any] | None = None
    for i, m in enumerate(messages):
        if isinstance(m, dict) and m.get("role") == src:
            if out is None:
                out = list(messages)
            out[i] = {**m, "role": dst}
    return messages if out is None else out


def _fold_into_user(messages: list[Any]) -> list[Any]:
    """Remove system/developer messages and put their text in front of the first user message."""
    texts: list[str] = []
    rest: list[Any] = []
    first_sys = -1
    for m in messages:
        if isinstance(m, dict) and m.get("role") in _SYSTEMISH:
            if first_sys < 0:
                first_sys = len(rest)
            t = _text_of(m.get("content"))
            if t:
                texts.append(t)
        else:
            rest.append(m)
    if first_sys < 0:
        return messages
    if not texts:
        return rest
    folded = "\n\n".join(texts)
    for i, m in enumerate(rest):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                new_content: Any = [{"type": "text", "text": folded}, *content]
            elif isinstance(content, str) and content:
                new_content = f"{folded}\n\n{content}"
            else:
                new_content = folded
            rest[i] = {**m, "content": new_content}
            return rest
    rest.insert(first_sys, {"role": "user", "content": folded})
    return rest


def _merge_instructions(messages: list[Any], role: str) -> list[Any]:
    """Adjacent system and developer messages, for a model that takes one of the two roles: one `role`
    message with their texts in order, in their place (sending both to a reasoning model is what its docs
    say not to do; renaming alone made two messages of one role). Instructions elsewhere in the
    conversation stay where they are."""
    roles = {m.get("role") for m in messages if isinstance(m, dict)}
    if not _SYSTEMISH <= roles:
        return messages
    out: list[Any] = []
    run: list[dict[str, Any]] = []

    def flush() -> None:
        if len(run) > 1 and {m.get("role") for m in run} == _SYSTEMISH:
            out.append({"role": role, "content": "\n\n".join(t for t in (_text_of(m.get("content")) for m in run) if t)})
        else:
            out.extend(run)
        run.clear()

    for m in messages:
        if isinstance(m, dict) and m.get("role") in _SYSTEMISH:
            run.append(m)
        else:
            flush()
            out.append(m)
    flush()
    return out


def _shape_messages(messages: list[Any], role_as: str) -> list[Any]:
    if role_as == "developer":
        return _rename_roles(_merge_instructions(messages, "developer"), "system", "developer")
    if role_as == "system":
        return _rename_roles(messages, "developer", "system")
    return _fold_into_user(messages)


_THINKING_FIELDS = ("thinking_blocks", "reasoning_content")


def _without_thinking_blocks(messages: list[Any], dropped: list[str]) -> list[Any]:
    """Claude's thinking on assistant messages (the signed `thinking_blocks` and the `reasoning_content`
    text a Claude answer carries back into the next turn) removed for any other model, whose API does not
    know these fields (strict hosts refuse them); each reported once."""
    present = [f for f in _THINKING_FIELDS if any(isinstance(m, dict) and f in m for m in messages)]
    if not present:
        return messages
    dropped.extend(f"messages[].{f}" for f in present)
    return [{k: v for k, v in m.items() if k not in _THINKING_FIELDS}
            if isinstance(m, dict) and any(f in m for f in present) else m for m in messages]


# ------------------------------------------------------------------ the body


def shape_request(
    body: Mapping[str, Any],
    info: ModelInfo,
    *,
    upstream_model: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """A new body shaped for `info`, and the sorted names of the parameters dropped from it.

    - `max_tokens` <-> `max_completion_tokens` per `info.output_limit_param` (when both are sent,
      the model's own field wins and the other is dropped);
    - system/developer messages delivered per `info.system_role_as` (system | developer | user-fold);
    - `info.unsupported_params` dropped; `info.fixed_params` kept only at their allowed value;
    - `reasoning_effort` dropped for models without effort levels, 400 for a level not offered;
    - Claude's `thinking_blocks` / `reasoning_content` on assistant messages dropped for other families;
    - `model` set to `upstream_model` when given. Unknown fields pass through unchanged.
    Explicit nulls of dropped fields are removed without being reported."""
    out = dict(body)
    dropped: list[str] = []

    if upstream_model is not None:
        out["model"] = upstream_model

    limit = info.output_limit_param
    if limit != "either":
        other = "max_tokens" if limit == "max_completion_tokens" else "max_completion_tokens"
        if other in out:
            value = out.pop(other)
            if out.get(limit) is None:
                if value is not None:
                    out[limit] = value
            elif value is not None:
                dropped.append(other)

    messages = out.get("messages")
    if isinstance(messages, list):
        shaped = _shape_messages(messages, info.system_role_as)
        if info.family != "anthropic":
            shaped = _without_thinking_blocks(shaped, dropped)
        if shaped is not messages:
            out["messages"] = shaped

    for name in info.unsupported_params:
        if name in out and out.pop(name) is not None:
            dropped.append(name)
    for name, allowed in info.fixed_params.items():
        if name in out:
            value = out[name]
            if value is None:
                del out[name]
            elif value != allowed or isinstance(value, bool) != isinstance(allowed, bool):
                del out[name]
                dropped.append(name)

    if "reasoning_effort" in out:
        effort = out["reasoning_effort"]
        levels = info.capabilities.reasoning_efforts
        if effort is None:
            del out["reasoning_effort"]
        elif not levels:
            del out["reasoning_effort"]
            dropped.append("reasoning_effort")
        elif effort not in levels:
            name = body.get("model") or info.name
            raise GatewayError(
                400,
                f"reasoning_effort {effort!r} is not supported by model '{name}'; "
                f"allowed values: {', '.join(levels)}",
                param="reasoning_effort",
                code="unsupported_value",
            )

    if len(dropped) > 1:
        dropped.sort()
    return out, dropped
