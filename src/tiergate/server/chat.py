"""The Chat Completions pipeline: validate -> authenticate -> route -> shape -> admit (budget, limits)
-> dispatch -> price -> ledger. `run_chat` is transport-free so the HTTP handler, the Responses API
and the batch runner all use the same path; `chat_completions` is the HTTP handler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tiergate.accounting.pricing import cost_usd, max_cost_usd, usage_breakdown
from tiergate.accounting.tokens import count_request, estimate_usage, usage_reported
from tiergate.catalog.shaping import check_capabilities, shape_request
from tiergate.dispatch.errors import ContextWindowExceeded, refused_before_upstream
from tiergate.logs import log_request
from tiergate.providers.base import Timeouts, UpstreamError
from tiergate.providers.registry import provider_class
from tiergate.routing.policy import POLICY_TARGETS
from tiergate.server import routing_glue
from tiergate.server.escalation import next_candidate_up, unusable_reason
from tiergate.server.streaming import BurstStreamingResponse
from tiergate.wire import sse
from tiergate.wire.anthropic import THINKING_BUDGETS
from tiergate.wire.errors import GatewayError, bad_request, not_found
from tiergate.wire.ids import new_id

if TYPE_CHECKING:
    from tiergate.server.gateway import Gateway

MAX_MODEL_NAME = 256  # characters of a client-sent model name kept in the ledger and logs
UNKNOWN_MODEL_LABEL = "(unknown)"  # the metrics label of every model name the gateway does not serve
# Output-token bound used when a request sets none: the reservation covers it and, for keys with a
# budget, it is also sent upstream so the real cost can never exceed the reservation (docs/accounting.md).
DEFAULT_MAX_OUTPUT = 4096
DEFAULT_MAX_OUTPUT_REASONING = 16384  # reasoning tokens count toward the limit
_TG_FIELD = "tiergate"  # per-request options, sent by the OpenAI SDK with extra_body={"tiergate": {...}}
ROUTING_OPTIONS = ("quality_target", "max_cost_usd", "policy", "candidates")  # only with model "auto"/"auto:*"
_TG_OPTIONS = {*ROUTING_OPTIONS, "cache", "timeouts"}


@dataclass
class CallContext:
    """Who is calling and how the answer will be delivered."""

    request_id: str
    key: Any = None  # accounting KeyInfo or None (open gateway)
    kind: str = "chat"  # chat | responses | batch
    batch_id: str | None = None
    batch_pricing: bool = False
    started: float = field(default_factory=time.perf_counter)
    #: appended to the request id of the rows a failed try writes (its `error` row, its failed attempts'
    #: `:aN` rows): the batch runner tries a line again under the line's own id after a gateway refusal
    #: (a rate limit, no healthy deployment), and the ledger keeps the first row of an id, so each try's
    #: failure rows get their own (`:try1`, `:try2`, ...) and the line's answered row keeps the line's id
    error_tag: str = ""


@dataclass
class ChatOutcome:
    """A finished non-streaming call (`body`) or an open stream (`chunks`), plus response headers."""

    headers: dict[str, str]
    body: dict[str, Any] | None = None
    chunks: AsyncIterator[bytes] | None = None
    status: int = 200


def validate_body(body: Any) -> None:
    """A Chat Completions body's shape and ranges (OpenAI's 400s), before anything is counted or sent."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("you must provide a model parameter", param="model", code="missing_required_parameter")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("'messages' must be a non-empty array of message objects.", param="messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool", "function"):
            raise bad_request(
                f"Invalid value for 'messages[{i}].role': expected one of system, developer, user, assistant, tool.",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        _check_content(m.get("content"), i)
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128):
        raise bad_request("'n' must be an integer between 1 and 128.", param="n", code="invalid_value")
    for name in ("max_completion_tokens", "max_tokens"):
        v = body.get(name)
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool):
            raise bad_request(f"Invalid type for '{name}': expected an integer, but got {type(v).__name__} instead.",
                              param=name, code="invalid_type")
        if v < 1:
            raise bad_request(f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {v} "
                              "instead.", param=name, code="integer_below_min_value")
    for name, lo, hi in _NUMBER_RANGES:
        v = body.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise bad_request(f"Invalid type for '{name}': expected a number, but got "
                              f"{_JSON_TYPE.get(type(v), 'another type')} instead.", param=name, code="invalid_type")
        if not lo <= v <= hi:
            above = v > hi
            raise bad_request(f"Invalid '{name}': decimal {'above maximum' if above else 'below minimum'} value. "
                              f"Expected a value {'<=' if above else '>='} {hi if above else lo}, but got {v} instead.",
                              param=name, code="decimal_above_max_value" if above else "decimal_below_min_value")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and all(isinstance(x, str) for x in stop)):
        raise bad_request(f"Invalid type for 'stop': expected a string or an array of strings, but got "
                          f"{_JSON_TYPE.get(type(stop), 'another type')} instead.", param="stop", code="invalid_type")
    if isinstance(stop, list) and len(stop) > 4:
        raise bad_request(f"Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array "
                          f"with length {len(stop)} instead.", param="stop", code="array_above_max_length")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None:
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20:
            raise bad_request(f"Invalid 'top_logprobs': expected an integer between 0 and 20, got {top_logprobs!r}.",
                              param="top_logprobs", code="invalid_value")
        if body.get("logprobs") is not True:
            raise bad_request("'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs",
                              code="invalid_value")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request(f"Invalid type for 'stream': expected a boolean, but got {type(stream).__name__} instead.",
                          param="stream", code="invalid_type")
    so = body.get("stream_options")
    if so is not None and not body.get("stream"):
        raise bad_request("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                          param="stream_options", code="invalid_value")
    for name, types in _FIELD_TYPES:
        v = body.get(name)
        if v is not None and (not isinstance(v, types) or (bool not in types and isinstance(v, bool))):
            want = " or ".join(_JSON_TYPE[t] for t in types)
            raise bad_request(f"Invalid type for '{name}': expected {want}, but got {_JSON_TYPE.get(type(v), type(v).__name__)} "
                              "instead.", param=name, code="invalid_type")
    for name in ("tools", "functions"):
        for i, t in enumerate(body.get(name) or ()):
            if not isinstance(t, dict):
                raise bad_request(f"Invalid type for '{name}[{i}]': expected an object, but got "
                                  f"{_JSON_TYPE.get(type(t), type(t).__name__)} instead.", param=f"{name}[{i}]",
                                  code="invalid_type")


#: Sampling settings checked against the API reference's ranges (a value out of range is OpenAI's 400)
_NUMBER_RANGES = (("temperature", 0, 2), ("top_p", 0, 1), ("presence_penalty", -2, 2), ("frequency_penalty", -2, 2))
_JSON_TYPE = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "an object", list: "an array"}
#: Fields whose JSON type is checked before anything reads them (a list as `reasoning_effort` reached the
#: ledger and jammed it; `tools: true` crashed a provider); values are checked where they are used
_FIELD_TYPES: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("reasoning_effort", (str,)), ("tools", (list,)), ("functions", (list,)), ("tool_choice", (str, dict)),
    ("function_call", (str, dict)), ("response_format", (dict,)), ("parallel_tool_calls", (bool,)),
    ("logprobs", (bool,)), ("seed", (int,)), ("user", (str,)), ("logit_bias", (dict,)), ("metadata", (dict,)),
    ("store", (bool,)), ("service_tier", (str,)), ("modalities", (list,)), ("prediction", (dict,)),
    ("stream_options", (dict,)),
)


def _check_content(content: Any, i: int) -> None:
    """A message's `content`: a string, null, or an array of part objects whose text parts hold strings
    (routing and token counting read them; a number there was a 500)."""
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise bad_request(f"Invalid type for 'messages[{i}].content': expected one of a string or array of objects, "
                          f"but got {_JSON_TYPE.get(type(content), 'another type')} instead.",
                          param=f"messages[{i}].content", code="invalid_type")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request(f"Invalid type for 'messages[{i}].content[{j}]': expected an object with a string "
                              "'type' (e.g. {\"type\": \"text\", \"text\": \"...\"}).",
                              param=f"messages[{i}].content[{j}]", code="invalid_type")
        if part["type"] == "image_url" and not isinstance(part.get("image_url"), dict | str):
            raise bad_request(f"Invalid type for 'messages[{i}].content[{j}].image_url': expected an object with a "
                              "`url`.", param=f"messages[{i}].content[{j}].image_url", code="invalid_type")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise bad_request(f"Invalid type for 'messages[{i}].content[{j}].text': expected a string, but got "
                              f"{_JSON_TYPE.get(type(part.get('text')), 'null')} instead.",
                              param=f"messages[{i}].content[{j}].text", code="invalid_type")


def is_auto(model: Any) -> bool:
    """`auto` or `auto:<policy>`: the router picks the model."""
    return isinstance(model, str) and (model == "auto" or model.startswith("auto:"))


def read_options(body: dict[str, Any], requested: Any) -> dict[str, Any]:
    """Pop the `tiergate` object from `body` and validate it: known option names only, and the routing
    options only with `model: "auto"` / `auto:<policy>` (with an explicit model they would be ignored)."""
    opts = body.pop(_TG_FIELD, None)
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        raise bad_request("'tiergate' must be an object, e.g. {\"quality_target\": 0.95}.", param="tiergate", code="invalid_type")
    unknown = sorted(set(opts) - _TG_OPTIONS)
    if unknown:
        raise bad_request(f"unknown option 'tiergate.{unknown[0]}'; allowed: {', '.join(sorted(_TG_OPTIONS))}",
                          param=f"tiergate.{unknown[0]}", code="unknown_parameter")
    routing_only = [k for k in ROUTING_OPTIONS if opts.get(k) is not None]
    if routing_only and not is_auto(requested):
        name = routing_only[0]
        raise bad_request(
            f"'tiergate.{name}' only applies when the router picks the model (model \"auto\" or "
            f"\"auto:<policy>\"); this request names the model {requested!r}, so it would be ignored. "
            f"Send model=\"auto\" to let the router choose, or remove 'tiergate.{name}' "
            f"(routing-only options: {', '.join(ROUTING_OPTIONS)}).",
            param=f"tiergate.{name}", code="unsupported_parameter")
    cache = opts.get("cache")
    if cache is not None and not isinstance(cache, bool):  # "no", "false", 1: a truthy string turned the cache on
        raise bad_request(f"tiergate.cache: expected true or false, got {_shown(cache)}", param="tiergate.cache",
                          code="invalid_type")
    return opts


def _shown(value: Any) -> str:
    text = orjson.dumps(value).decode() if isinstance(value, str | int | float | list | dict | bool) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def request_timeouts(base: Timeouts, override: Any) -> Timeouts:
    """The model's timeouts with the request's `tiergate.timeouts` applied."""
    if not override:
        return base
    from tiergate.config import ConfigError, parse_timeouts

    try:
        return parse_timeouts(override, "tiergate.timeouts", base)
    except ConfigError as e:
        raise bad_request(str(e), param=e.path or "tiergate.timeouts", code="invalid_value") from None


def _max_output(body: dict[str, Any]) -> int | None:
    v = body.get("max_completion_tokens") or body.get("max_tokens")
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def default_output_limit(info: Any, prompt_tokens: int | None = None) -> int:
    """The output limit counted (and, for a budgeted key, sent) when the request sets none: the gateway's
    default bound, within the model's maximum output and, given the prompt's size, within what its context
    window leaves (the upstream refuses a prompt + limit above the window: a budgeted key's 120k-token
    prompt to a 128k model was sent with 16,384 and refused)."""
    bound = DEFAULT_MAX_OUTPUT_REASONING if info.capabilities.reasoning_efforts else DEFAULT_MAX_OUTPUT
    if info.max_output_tokens:
        bound = min(bound, info.max_output_tokens)
    window = getattr(info, "context_window", None)
    if prompt_tokens is not None and window and window - prompt_tokens >= 1:
        bound = min(bound, window - prompt_tokens)
    return bound


async def run_chat(gw: Gateway, body: dict[str, Any], ctx: CallContext, *,
                   _escalated_from: dict[str, Any] | None = None) -> ChatOutcome:
    """The whole pipeline for one Chat Completions request. Raises GatewayError for client-visible
    failures before any answer exists; records exactly one ledger row for the answer it returns.
    Upstream failures are recorded here (`failed_attempt` rows + `error`, `e.recorded` set); a refusal
    of the gateway's own before any upstream call (validation, shaping, a provider's `RequestRefused`)
    is raised unrecorded, for the HTTP handler's `record_rejected` (a batch line: its error file)."""
    validate_body(body)
    requested = body["model"]
    opts = read_options(body, requested if _escalated_from is None else _escalated_from["requested"])
    stream = bool(body.get("stream"))
    route_info: dict[str, Any] | None = None
    headers: dict[str, str] = {"x-request-id": ctx.request_id}
    if _escalated_from is not None:
        requested, route_info = _escalated_from["requested"], _escalated_from["route_info"]
        headers["x-tiergate-route"] = route_info["header"]
        headers["x-tiergate-escalated"] = _escalated_from["header"]

    if is_auto(requested) and _escalated_from is None:  # an escalation already names its candidate
        body, route_info = routing_glue.route(gw, body, opts, requested, key=ctx.key)
        headers["x-tiergate-route"] = route_info["header"]
    model = body["model"]
    mc = gw.config.model(model)
    if mc is None:
        if looks_like_a_key(model):  # never echoed (it would reach the ledger, the log and the client)
            raise not_found("The model name looks like an API key, so it is not repeated here: send your key as "
                            "the API key (Authorization: Bearer) and a model name as `model`. Configured models: "
                            f"{', '.join(m.name for m in gw.config.models)}.", param="model", code="model_not_found")
        raise not_found(
            f"The model '{model}' does not exist or is not configured on this gateway. "
            f"Configured models: {', '.join(m.name for m in gw.config.models)}.",
            param="model",
            code="model_not_found",
        )
    info = gw.infos[model]
    check_capabilities(body, info, gw.infos, model)
    # the prompt side of the request as billed: messages, tools/functions and a json_schema response format
    # (routing counted the same request, per tokenizer)
    counted: dict[str, int] = dict(route_info["prompt_tokens"]) if route_info is not None else {}
    prompt_tokens = counted.get(info.tokenizer)
    if prompt_tokens is None:
        prompt_tokens = counted[info.tokenizer] = count_request(body, info)
    routed_body = body  # what an escalation re-sends: without a default limit chosen for this model
    budgeted = getattr(ctx.key, "budget_usd", None) is not None
    chain = gw.dispatcher.chain(model) if budgeted else (model,)  # the models that may serve it
    max_out = _max_output(body)
    if max_out is None:
        max_out = default_output_limit(info, prompt_tokens)
        if budgeted and any(i.input_price or i.output_price for i in map(gw.infos.get, chain) if i is not None):
            body = {**body, "max_completion_tokens": max_out}  # a budgeted key's cost stays under its reservation
    # every choice is an answer billed on the one prompt; Claude's thinking budget comes on top of the
    # client's limit upstream (wire/anthropic.py), so it is reserved too
    effort = body.get("reasoning_effort")
    choices = body.get("n") or 1

    def out_tokens(target: Any) -> int:
        thinking = THINKING_BUDGETS.get(effort, 0) if target.family == "anthropic" and isinstance(effort, str) else 0
        return (max_out + thinking) * choices

    all_out = out_tokens(info)
    key = ctx.key
    restricted = key is not None and not getattr(key, "is_master", False) and getattr(key, "models", None) is not None

    def may_use(name: str) -> str | None:
        """Why the key may not be served by fallback `name` (the dispatcher then skips it), or None."""
        if restricted and not key.allows(name):
            return f"key '{key.name}' may not use model '{name}' (its models: {', '.join(key.models or ())})"
        return None

    # The reservation covers the dearest model the request may be served by: the requested one or any
    # fallback / context-window fallback the key may use (a fallback answers at its own prices).
    reserve_usd = max_cost_usd(prompt_tokens, all_out, info)
    for name in chain[1:]:  # (only a budgeted key's: the reservation is all this is for)
        target = gw.infos.get(name)
        if target is None or may_use(name):
            continue
        tok = counted.get(target.tokenizer)
        if tok is None:
            tok = counted[target.tokenizer] = count_request(body, target)
        reserve_usd = max(reserve_usd, max_cost_usd(tok, out_tokens(target), target))

    def shape(name: str) -> tuple[dict[str, Any], list[str]]:
        target_info = gw.infos[name]
        if name != model:
            check_capabilities(body, target_info, gw.infos, name)
        if prompt_tokens > target_info.context_window:
            raise ContextWindowExceeded(name, prompt_tokens, target_info.context_window)
        shaped, dropped = shape_request(body, target_info)
        shaped["model"] = target_info.name
        if stream and "stream_options" not in target_info.unsupported_params:
            so = dict(shaped.get("stream_options") or {})
            so["include_usage"] = True  # always ask for usage; the client gets it only if it asked
            shaped["stream_options"] = so
        return shaped, dropped

    if prompt_tokens > info.context_window and not mc.context_window_fallback:
        raise ContextWindowExceeded(model, prompt_tokens, info.context_window)

    timeouts = request_timeouts(mc.timeouts, opts.get("timeouts"))  # a bad override is a 400 before admission
    admission = await gw.accounting.admit(ctx.key, model, prompt_tokens, reserve_usd, prompt_tokens + all_out)
    headers.update(getattr(admission, "headers", None) or {})
    settled = False
    try:
        # an escalation's retry is cached by the request that escalated (as an escalated entry), not by itself
        cache = gw.accounting.cache if (not stream and _escalated_from is None and _cacheable(body, opts, ctx)) \
            else None
        scope = _cache_scope(cache, ctx, route_info) if cache is not None else None
        if cache is not None:
            hit = await cache.get(body, scope)
            if hit is not None and isinstance(hit.get(ESCALATED_ENTRY), dict):  # what this request escalated to
                esc = hit[ESCALATED_ENTRY]
                key = ctx.key
                if key is not None and not key.is_master and not key.allows(str(esc.get("model") or "")):
                    hit = None  # another key's escalation to a model this key may not use: not for it
                else:
                    served, effort_served = str(esc.get("model") or model), esc.get("effort")
                    headers["x-tiergate-escalated"] = _ascii(f"{esc.get('header')}; cached")
                    hit = hit.get("response") or {}
            elif hit is not None:
                served, effort_served = model, body.get("reasoning_effort")
            if hit is not None:
                headers.update({"x-tiergate-cache": "hit", "x-tiergate-model": served, "x-tiergate-cost-usd": "0"})
                record_call(gw, ctx, requested, served, None, effort_served, hit.get("usage"), 0.0,
                        "cache_hit", None, route_info, False, 0)
                await gw.accounting.settle(admission, 0.0, 0)
                settled = True
                return ChatOutcome(headers=headers, body=hit)
            headers["x-tiergate-cache"] = "miss"
        try:
            d = await gw.dispatcher.dispatch(
                model, shape, stream=stream, timeouts=timeouts, request_id=ctx.request_id,
                prompt_tokens=prompt_tokens, may_use=may_use if restricted else None,
            )
        except GatewayError as e:
            attempts = getattr(e, "attempts", ())
            if not attempts and refused_before_upstream(e):
                raise  # the gateway's own refusal (e.g. n=2 for Anthropic): the caller records it as `rejected`
            spent, spent_tokens = _record_attempts(gw, ctx, requested, attempts, info, body.get("reasoning_effort"),
                                                   route_info, stream)
            if spent or spent_tokens:  # what failed attempts were billed (a cut stream, an over-large answer)
                await gw.accounting.settle(admission, spent, spent_tokens)
                settled = True
            last_dep = attempts[-1].deployment_id if attempts else None
            record_call(gw, ctx, requested, model, last_dep, body.get("reasoning_effort"), None, 0.0, "error",
                        e.message, route_info, stream, len(attempts),
                        request_id=f"{ctx.request_id}{ctx.error_tag}" if ctx.error_tag else None)
            e.recorded = True  # type: ignore[attr-defined]
            e.headers.setdefault("x-tiergate-model", model)
            if last_dep:
                e.headers.setdefault("x-tiergate-deployment", last_dep)
            raise
        prior = _record_attempts(gw, ctx, requested, d.attempts, info, d.body.get("reasoning_effort"), route_info,
                                 stream)  # the failed attempts' cost and tokens, settled with the answer's
        served_info = gw.infos[d.model]
        headers["x-tiergate-model"] = d.model
        headers["x-tiergate-deployment"] = d.deployment.id
        if d.body.get("reasoning_effort"):
            headers["x-tiergate-reasoning-effort"] = str(d.body["reasoning_effort"])
        if d.dropped_params:
            headers["x-tiergate-dropped-params"] = ",".join(d.dropped_params)
        if d.fallback_from:
            headers["x-tiergate-fallback"] = f"{d.fallback_from}->{d.model}"
        headers.update(provider_class(d.deployment.provider).response_headers)  # e.g. the simulator's label
        if not stream:
            result = d.result.body
            usage = result.get("usage")
            if not usage_reported(usage):  # a host that sends `"usage": null` (or none): estimate, never free
                usage = estimate_usage(d.body, result.get("choices"), served_info)
                result["usage"] = usage
                headers["x-tiergate-usage"] = "estimated"
            cost = cost_usd(usage, served_info, batch=ctx.batch_pricing)
            headers["x-tiergate-cost-usd"] = f"{cost:.8f}"
            reason = None
            if route_info is not None and _escalated_from is None and gw.config.routing.escalate:
                reason = unusable_reason(body, result)
            nxt = next_candidate_up(route_info["decision"]) if reason else None
            status = "escalated" if nxt is not None else "ok"
            record_call(gw, ctx, requested, d.model, d.deployment.id, d.body.get("reasoning_effort"), usage, cost, status,
                    reason if nxt is not None else None, route_info, False, len(d.attempts) + 1,
                    ttft_ms=(d.ttft_s or 0) * 1000,
                    request_id=f"{ctx.request_id}:escalated" if nxt is not None else None)
            await gw.accounting.settle(admission, cost + prior[0], _total_tokens(usage) + prior[1])
            settled = True
            if nxt is not None:
                first = ChatOutcome(headers=headers, body=result)
                out = await _escalate(gw, routed_body, ctx, requested, route_info, nxt, reason, cost, first)
                if (cache is not None and out is not first and out.body is not None
                        and "x-tiergate-fallback" not in out.headers and unusable_reason(body, out.body) is None):
                    # cached under this request, so a repeat does not pay for the unusable first answer again
                    out.headers["x-tiergate-cache"] = "miss"
                    await cache.set(body, scope=scope, result={ESCALATED_ENTRY: {
                        "model": out.headers.get("x-tiergate-model"), "effort": out.headers.get("x-tiergate-reasoning-effort"),
                        "header": out.headers.get("x-tiergate-escalated", "").split("; first_cost_usd=")[0]},
                        "response": out.body})
                return out
            # never cached: an answer a fallback model gave (the requested model did not answer), nor an
            # unusable one (it would be served to every repeat, and to `auto` requests instead of escalating)
            if cache is not None and not d.fallback_from and (reason or unusable_reason(body, result)) is None:
                await cache.set(body, result, scope)
            return ChatOutcome(headers=headers, body=result)
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        settled = True  # the stream's finaliser settles
        return ChatOutcome(
            headers=headers,
            chunks=_relay(gw, ctx, d, admission, served_info, requested, route_info, wants_usage, prior),
        )
    finally:
        if not settled:
            await gw.accounting.settle(admission, 0.0, 0)


async def _relay(gw, ctx, d, admission, info, requested, route_info, wants_usage,
                 prior: tuple[float, int] = (0.0, 0)) -> AsyncIterator[bytes]:
    """Forward upstream chunks to the client as SSE; always finish the books, even when the client
    goes away mid-stream (the generator is closed) or the upstream cuts the stream. Without an upstream
    usage report the usage is estimated from what was relayed (`estimate_usage`), and a client that
    asked for `stream_options.include_usage` gets that estimate as its usage chunk (`"estimated": true`)."""
    usage: dict[str, Any] | None = None
    answer = _StreamedAnswer()
    status, error = "client_disconnected", None
    add, dumps = answer.add, orjson.dumps  # (per chunk: no attribute look-ups, no encode call of its own)
    try:
        async for chunk in d.stream:
            u = chunk.get("usage")
            if u:
                usage = u
            if not answer.head:
                answer.meta(chunk)
            if u and not chunk.get("choices"):
                if wants_usage:
                    yield sse.encode(chunk)
                continue
            if not wants_usage and "usage" in chunk:
                del chunk["usage"]
            add(chunk)
            yield b"data: " + dumps(chunk) + b"\n\n"  # sse.encode
        status = "ok"
    except UpstreamError as e:
        status, error = "error", upstream_error_text(e)
        usage = usage or e.usage
        if not usage_reported(usage):
            usage = estimate_usage(d.body, answer.choices(), info)
        event: dict[str, Any] = {"error": {"message": f"The upstream stream failed after it started: {e.message}",
                                           "type": "api_error", "param": None, "code": "upstream_stream_cut"}}
        if wants_usage:  # the client asked for usage: what it is billed (the usage chunk will not come)
            event["usage"] = usage
        yield sse.encode(event)
    finally:
        if not usage_reported(usage):  # no usage chunk (cut, abandoned, or a host that sends none): estimate
            usage = estimate_usage(d.body, answer.choices(), info)
        cost = cost_usd(usage, info, batch=ctx.batch_pricing)
        record_call(gw, ctx, requested, d.model, d.deployment.id, d.body.get("reasoning_effort"), usage, cost, status,
                error, route_info, True, len(d.attempts) + 1, ttft_ms=(d.ttft_s or 0) * 1000)
        await settle_surely(gw, admission, cost + prior[0], _total_tokens(usage) + prior[1])
    if status == "ok":
        if usage.get("estimated"):
            if wants_usage:
                yield sse.encode({**answer.head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
            yield b": x-tiergate-usage=estimated\n\n"
        yield f": x-tiergate-cost-usd={cost:.8f}\n\n".encode()
        yield sse.DONE


class _StreamedAnswer:
    """What a stream has relayed, accumulated per choice into `choices` (message shape) for
    `count_completion`, plus the chunk id/created/model for a usage chunk of our own. Pieces are kept in
    lists and joined once at the end (a chunk costs a few dict look-ups and an append)."""

    __slots__ = ("_msgs", "head")

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self._msgs: dict[int, tuple[list[str], list[str], dict[int, tuple[list[str], list[str]]]]] = {}

    def meta(self, chunk: dict[str, Any]) -> None:
        if not self.head:
            self.head = {k: chunk[k] for k in ("id", "created", "model", "system_fingerprint") if k in chunk}

    def add(self, chunk: dict[str, Any]) -> None:
        for ch in chunk.get("choices") or ():
            delta = ch.get("delta") if isinstance(ch, dict) else None
            if not delta:
                continue
            i = ch.get("index") or 0
            msg = self._msgs.get(i)
            if msg is None:
                msg = self._msgs[i] = ([], [], {})
            c = delta.get("content")
            if c and isinstance(c, str):
                msg[0].append(c)
                if len(delta) == 1:  # the common chunk, a piece of text and nothing else
                    continue
            r = delta.get("refusal")
            if r and isinstance(r, str):
                msg[1].append(r)
            calls = delta.get("tool_calls")
            fc = delta.get("function_call")
            if isinstance(fc, dict):
                calls = [{"index": -1, "function": fc}]
            if not calls or not isinstance(calls, list):
                continue
            for tc in calls:
                if not isinstance(tc, dict):
                    continue
                acc = msg[2].get(tc.get("index") or 0)
                if acc is None:
                    acc = msg[2][tc.get("index") or 0] = ([], [])
                fn = tc.get("function") or {}
                if isinstance(fn.get("name"), str):
                    acc[0].append(fn["name"])
                if isinstance(fn.get("arguments"), str):
                    acc[1].append(fn["arguments"])

    def choices(self) -> list[dict[str, Any]]:
        return [{"message": {"content": "".join(content), "refusal": "".join(refusal),
                             "tool_calls": [{"function": {"name": "".join(n), "arguments": "".join(a)}}
                                            for n, a in calls.values()]}}
                for content, refusal, calls in self._msgs.values()]


# A cache entry holding the answer an escalation returned, stored under the first candidate's request
ESCALATED_ENTRY = "tiergate_escalated"
ROUTED_SCOPE = "routed"  # the response cache's scope for `model: auto` requests


async def _escalate(gw: Gateway, body: dict[str, Any], ctx: CallContext, requested: str, route_info: dict,
                    nxt: Any, reason: str, first_cost: float, first: ChatOutcome) -> ChatOutcome:
    """Retry once on the next candidate up; the first call is already in the ledger as `escalated`. `body`
    is the routed request as the client sent it (a default output limit chosen for the first model is
    chosen again for the next). The answer's `x-tiergate-cost-usd` is what the client pays for it: both
    calls. When the retry cannot be served (an upstream error, a refusal of the gateway's), the first
    answer is returned rather than an error about a model the client never named, and the header says so."""
    model, _, effort = nxt.candidate.partition("@")
    body2 = {k: v for k, v in body.items() if k != "reasoning_effort"}
    body2["model"] = model
    if effort:
        body2["reasoning_effort"] = effort
    chosen = route_info["decision"].chosen.candidate
    header = f"from={chosen}; to={nxt.candidate}; reason={reason}; first_cost_usd={first_cost:.8f}"
    try:
        out = await run_chat(gw, body2, ctx, _escalated_from={
            "requested": requested, "route_info": route_info, "header": _ascii(header)})
    except GatewayError as e:
        if not getattr(e, "recorded", False):  # refused before any upstream call: still one row for it
            record_call(gw, ctx, requested, model, None, effort or None, None, 0.0, "rejected", e.message[:500],
                        route_info, False, 0, request_id=f"{ctx.request_id}:escalation")
        failed = e.message[:200].replace(";", ",")
        first.headers["x-tiergate-escalated"] = _ascii(f"{header}; failed={e.status} {failed}")
        return first
    second = float(out.headers.get("x-tiergate-cost-usd") or 0.0)
    out.headers["x-tiergate-cost-usd"] = f"{first_cost + second:.8f}"
    return out


def _ascii(text: str) -> str:
    """A header value: ASCII, and no control characters (an upstream message with a newline in it made the
    server drop the connection: "Invalid HTTP header value")."""
    return "".join(c if " " <= c < "\x7f" else " " if c in "\t\r\n" else "?" for c in text)


def _record_attempts(gw: Gateway, ctx: CallContext, requested: str, attempts, info, effort, route_info,
                     stream: bool) -> tuple[float, int]:
    """One `failed_attempt` row per upstream attempt that did not answer, billed at what the upstream
    reported (zero when it reported nothing; an over-large answer at the request's output limit). Returns
    their total cost and tokens, which the caller settles against the key's budget."""
    total, tokens = 0.0, 0
    for i, a in enumerate(attempts):
        a_info = gw.infos.get(a.model, info)
        a_cost = cost_usd(a.usage, a_info, batch=ctx.batch_pricing) if a.usage else 0.0
        total += a_cost
        tokens += _total_tokens(a.usage)
        record_call(gw, ctx, requested, a.model, a.deployment_id, effort, a.usage, a_cost, "failed_attempt",
                    upstream_error_text(a.error), route_info, stream, i + 1, request_id=f"{ctx.request_id}{ctx.error_tag}:a{i + 1}",
                    latency_ms=a.latency_s * 1000)
    return total, tokens


def _cacheable(body: dict[str, Any], opts: dict[str, Any], ctx: CallContext) -> bool:
    """Whether this request uses the response cache: `tiergate.cache` when the request says (true or false),
    else the key's `cache` flag (off for the master key and an open gateway). Entries are kept per key
    (`_cache_scope`), so turning it on exposes nothing of another key's; a deployment that must store no
    answers at all sets `cache.enabled: false`. Deterministic requests only."""
    key_on = bool(getattr(ctx.key, "cache_enabled", False))
    wanted = opts.get("cache")
    if wanted is None:
        wanted = key_on
    if not wanted:
        return False
    return body.get("temperature") == 0 or body.get("seed") is not None


def _cache_scope(cache: Any, ctx: CallContext, route_info: dict[str, Any] | None) -> str | None:
    """What keeps this request's cache entries apart from others' with the same body: the key's id (the
    master key and an open gateway share one scope; config `cache.shared_across_keys` drops it), and for
    an `auto` request the routing inputs (policy, target, cost cap, candidates) and the candidate an
    escalation would go to, so an escalated answer is only served to requests that would have routed the
    same way (the routed body names the first candidate only)."""
    parts: list[str] = []
    key = ctx.key
    if key is not None and not getattr(key, "is_master", False) and not cache.shared_across_keys:
        parts.append(f"key={key.id}")
    if route_info is not None:
        d = route_info["decision"]
        nxt = next_candidate_up(d)
        parts.append(orjson.dumps([ROUTED_SCOPE, d.policy, d.target, d.cost_cap, [a.candidate for a in d.assessments],
                                   nxt.candidate if nxt is not None else None]).decode())
    return "\0".join(parts) or None


_SETTLING: set[asyncio.Task] = set()  # settlements shielded from their stream's cancellation (kept referenced)


async def settle_surely(gw: Gateway, admission: Any, cost: float, tokens: int) -> None:
    """Settle a stream's admission from its finaliser: a client that hangs up cancels the response task, and
    the cancellation reaches every await of the finaliser, so a settlement of several round trips (Redis,
    PostgreSQL) was cut off after the ledger row was written (the hold stayed reserved, spend was short). The
    settlement runs as its own task, shielded: it completes even when the awaiting task is cancelled. One with
    nothing to wait for (no reservation, no TPM correction) is done in place: a task of its own would only
    cost a loop iteration, and split the stream's last burst in two writes."""
    if gw.accounting.settles_at_once(admission, tokens):
        await gw.accounting.settle(admission, cost, tokens)
        return
    task = asyncio.ensure_future(gw.accounting.settle(admission, cost, tokens))
    _SETTLING.add(task)
    task.add_done_callback(_SETTLING.discard)
    await asyncio.shield(task)


def looks_like_a_key(name: str) -> bool:
    """A `model` that is a secret pasted in the wrong field: a tiergate (`tg-`) or OpenAI/Anthropic-style
    (`sk-`) key of at least 20 characters (also used by `GET /v1/models/{id}`). Other long tokens are not
    detected (a model name may be long too)."""
    return name.startswith(("tg-", "sk-")) and len(name) >= 20




def _total_tokens(usage: dict[str, Any] | None) -> int:
    if not usage:
        return 0
    return int(usage.get("total_tokens") or (usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)))


def upstream_error_text(e: BaseException | None) -> str | None:
    """`<status> <kind>: <message>` of an upstream error, for the ledger's `error` column."""
    if e is None:
        return None
    status = getattr(e, "status", None)
    return f"{status} {getattr(e, 'kind', '')}: {getattr(e, 'message', str(e))}"[:500]


def _served_name(gw: Gateway, name: str) -> bool:
    """Whether `name` is a model this gateway serves (a configured model, `auto` or `auto:<policy>`)."""
    if gw.config.model(name) is not None or name == "auto":
        return True
    policy = name.removeprefix("auto:")
    return policy != name and (policy in POLICY_TARGETS or policy in gw.config.routing.policies)


def record_call(gw, ctx: CallContext, requested, served, deployment, effort, usage, cost, status, error, route_info,
            stream, attempt, *, request_id: str | None = None, latency_ms: float | None = None,
            ttft_ms: float | None = None, key_id: str | None = None) -> None:
    row = {
        "request_id": request_id or ctx.request_id,
        "ts": time.time(),
        "key_id": getattr(ctx.key, "id", None) or key_id,
        "kind": ctx.kind,
        # the client's text, bounded: a 1 MB model name sent without a key was stored whole
        "requested_model": requested[:MAX_MODEL_NAME] if isinstance(requested, str) else requested,
        "served_model": served,
        "deployment": deployment,
        "reasoning_effort": effort,
        **usage_breakdown(usage),
        "cost_usd": cost,
        "latency_ms": latency_ms if latency_ms is not None else (time.perf_counter() - ctx.started) * 1000,
        "ttft_ms": ttft_ms,
        "status": status,
        "error": error,
        "route": route_info["ledger"] if route_info else None,
        "stream": stream,
        "attempt": attempt,
        "batch_id": ctx.batch_id,
    }
    if isinstance(usage, dict) and usage.get("estimated"):
        row["metadata"] = {"usage_estimated": True}  # counted by the gateway, not reported by the upstream
    gw.accounting.record(row)
    if gw.metrics is not None:
        if served is None and isinstance(requested, str) and not _served_name(gw, requested):
            # a name this gateway does not serve is not a metrics label (unauthenticated clients could
            # otherwise add a series per name to /metrics): one placeholder for all of them
            gw.metrics.observe_request({**row, "requested_model": UNKNOWN_MODEL_LABEL})
        else:
            gw.metrics.observe_request(row)
    log_request(row["request_id"], status=status, model=served, requested_model=row["requested_model"],
                deployment=deployment,
                latency_ms=round(row["latency_ms"], 2), cost_usd=cost, key_id=row["key_id"], error=error)


# ----------------------------------------------------------------------------- HTTP


async def chat_completions(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    ctx = CallContext(request_id=new_id("req_"))  # ours, never the client's: it keys the ledger row
    body: Any = None
    try:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise bad_request("We could not parse the JSON body of your request. The body must be valid JSON.") from None
        ctx.key = await gw.accounting.authenticate(request.headers.get("authorization"))
        out = await run_chat(gw, body, ctx)
    except GatewayError as e:
        record_rejected(gw, ctx, body, e)
        return error_response(e, ctx.request_id)
    if out.chunks is not None:
        return BurstStreamingResponse(out.chunks, media_type="text/event-stream", headers=out.headers)
    return Response(orjson.dumps(out.body), media_type="application/json", headers=out.headers)


def record_rejected(gw: Gateway, ctx: CallContext, body: Any, e: GatewayError) -> None:
    """A request refused before any upstream call still gets its one ledger row, status `rejected`
    (errors already recorded by the pipeline carry `e.recorded`)."""
    if getattr(e, "recorded", False):
        return
    model = body.get("model") if isinstance(body, dict) else None
    record_call(gw, ctx, model if isinstance(model, str) else None, None, None, None, None, 0.0,
                "rejected", f"{e.status} {e.code or e.type}: {e.message}"[:500], None,
                bool(isinstance(body, dict) and body.get("stream")), 0,
                key_id=getattr(e, "key_id", None))  # a revoked key's id (never the key itself)


def error_response(e: GatewayError, request_id: str) -> Response:
    headers = {"x-request-id": request_id, **e.headers}
    return Response(e.to_json(), status_code=e.status, media_type="application/json", headers=headers)
