"""`/v1/responses`: the Responses API in front of every deployment (wire facts §5).

`POST /v1/responses` takes two paths:
- **native** — an explicit model whose deployments all speak the Responses API (the `openai`
  provider): the body goes to the provider's `responses()` / `responses_stream()` unchanged (model
  name aside), with the same key check, budget reservation, failover across deployments and ledger
  row as a chat call. The SDK gets OpenAI's own Response object, or OpenAI's own stream events
  (relayed as they come; usage and cost from `response.completed`). `previous_response_id` goes
  upstream as sent.
- **translated** — everything else (`model: "auto"`, Chat-Completions-only and Anthropic
  deployments, models with fallbacks): `wire.responses` turns the request into a Chat Completions
  body, the chat pipeline (`server.chat.run_chat`) routes, budgets and dispatches it, and the answer
  (or the chunk stream) is turned back into a Response object (or the Responses stream events).
  `previous_response_id` is resolved from the store: the chain's input and output items lead the
  new input; instructions come only from the new request.

Every response returned (both paths, streamed or not) is stored unless the request says
`store: false` (`store.responses`: the object as returned, the normalised input items, instructions,
the creating key's id). A streamed response whose client hangs up mid-answer is stored as
`cancelled` with the output produced so far (the id from `response.created` stays retrievable). `GET` / `DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`
read it; a key sees only its own responses (the master key and an open gateway see all).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tiergate.accounting.pricing import cost_usd, max_cost_usd
from tiergate.accounting.tokens import (
    count_request,
    count_text,
    estimate_usage,
    estimated_reasoning_tokens,
    estimated_usage,
    usage_reported,
)
from tiergate.catalog.shaping import check_output_limit
from tiergate.config import responses_retention_s
from tiergate.dispatch.errors import refused_before_upstream
from tiergate.providers.base import Provider, UpstreamError
from tiergate.server.chat import (
    CallContext,
    default_output_limit,
    error_response,
    is_auto,
    read_options,
    record_call,
    record_rejected,
    request_timeouts,
    run_chat,
    settle_surely,
    upstream_error_text,
    validate_body,
)
from tiergate.server.streaming import BurstStreamingResponse
from tiergate.store.responses import ChainBroken, ResponseStore
from tiergate.wire import responses as wr
from tiergate.wire import sse
from tiergate.wire.errors import GatewayError, bad_request, not_found
from tiergate.wire.ids import new_id

if TYPE_CHECKING:
    from tiergate.server.gateway import Gateway

log = logging.getLogger("tiergate")

Saver = Callable[[dict[str, Any]], Awaitable[None]]
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def routes() -> list[Route]:
    out: list[Route] = []
    for prefix in ("/v1", ""):
        out += [Route(f"{prefix}/responses", create_response, methods=["POST"]),
                Route(f"{prefix}/responses/{{response_id}}", get_response, methods=["GET"]),
                Route(f"{prefix}/responses/{{response_id}}", delete_response, methods=["DELETE"]),
                Route(f"{prefix}/responses/{{response_id}}/input_items", list_input_items, methods=["GET"]),
                Route(f"{prefix}/responses/{{response_id}}/cancel", cancel_response, methods=["POST"])]
    return out


async def create_response(request: Request) -> Response:
    return await handle_responses(request.app.state.gateway, request)


# ---------------------------------------------------------------- storage


def response_store(gw: Gateway) -> ResponseStore:
    rs = gw.extras.get("response_store")
    if rs is None:
        retention = responses_retention_s(gw.config.extra.get("responses"))
        rs = gw.extras["response_store"] = ResponseStore(gw.accounting.store, retention_s=retention)
    return rs


def _owner(key: Any) -> str | None:
    """The id stored as a response's owner: the key's id ("master" for the master key), None when open."""
    return None if key is None else key.id


def _viewer(key: Any) -> str | None:
    """Whose responses a caller may read: None (all) for an open gateway or the master key."""
    return None if key is None or getattr(key, "is_master", False) else key.id


def _saver(gw: Gateway, ctx: CallContext, req: dict[str, Any], path: str) -> Saver:
    """Stores the response as returned to the client, unless the request says `store: false`. A
    storage failure is logged; the client still gets its answer."""
    async def save(resp: dict[str, Any]) -> None:
        if req.get("store") is False or not isinstance(resp, dict) or not isinstance(resp.get("id"), str):
            return
        try:
            await response_store(gw).save(resp, key_id=_owner(ctx.key), path=path,
                                          input_items=wr.input_items(req.get("input")),
                                          instructions=req.get("instructions"),
                                          previous_response_id=req.get("previous_response_id"))
        except Exception:  # the answer was produced and billed: it must still reach the client
            log.exception("could not store response %s (request %s)", resp.get("id"), ctx.request_id)
    return save


async def _with_history(gw: Gateway, ctx: CallContext, req: dict[str, Any]) -> dict[str, Any]:
    """The translated path's request with `previous_response_id` resolved: the stored chain's input
    and output items, oldest first, then the new input. `instructions` stay the new request's own.
    A chain with a response that is missing, deleted, expired or another key's is a 400 (on the
    native path too, before the id is sent upstream: all keys share the upstream's account)."""
    prev = req["previous_response_id"]
    if not isinstance(prev, str) or not prev:
        raise bad_request("previous_response_id must be a response id string (resp_...).",
                          param="previous_response_id", code="invalid_type")
    try:
        history = await response_store(gw).conversation(prev, _viewer(ctx.key))
    except ChainBroken as e:
        raise bad_request(f"Previous response with id '{e.response_id}' not found.",
                          param="previous_response_id", code="previous_response_not_found") from None
    inp = req.get("input")
    rest = {k: v for k, v in req.items() if k != "previous_response_id"}
    if isinstance(inp, str):
        rest["input"] = [*history, {"role": "user", "content": inp}]
    elif isinstance(inp, list):
        rest["input"] = [*history, *inp]
    return rest  # a missing or malformed input is left for to_chat_request to refuse


#: spec `IncludeEnum`: what `include` may ask for
INCLUDABLE = frozenset({"file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
                        "message.input_image.image_url", "computer_call_output.output.image_url",
                        "code_interpreter_call.outputs", "reasoning.encrypted_content",
                        "message.output_text.logprobs"})
_BOOLEANS = ("stream", "store", "background", "parallel_tool_calls")


def _check_types(req: dict[str, Any]) -> None:
    """Fields read as flags or lists before anything else: a wrong JSON type is OpenAI's 400, not a guess
    (`"stream": "yes"` streamed)."""
    for name in _BOOLEANS:
        v = req.get(name)
        if v is not None and not isinstance(v, bool):
            raise bad_request(f"Invalid type for '{name}': expected a boolean, but got {type(v).__name__} instead.",
                              param=name, code="invalid_type")
    inc = req.get("include")
    if inc is None:
        return
    if not isinstance(inc, list):
        raise bad_request("Invalid type for 'include': expected an array of strings.", param="include",
                          code="invalid_type")
    for i, v in enumerate(inc):
        if not isinstance(v, str) or v not in INCLUDABLE:
            raise bad_request(f"Invalid value for 'include[{i}]': {v!r}. Supported values are: "
                              + ", ".join(f"'{x}'" for x in sorted(INCLUDABLE)) + ".",
                              param=f"include[{i}]", code="invalid_value")


_CHAT_LIMITS = re.compile(r"\bmax_tokens / max_completion_tokens\b|\bmax_completion_tokens\b|\bmax_tokens\b")


def _in_responses_terms(e: GatewayError, req: Any) -> None:
    """An error raised on the translated request names the Chat Completions field; the client sent the
    Responses one (`max_output_tokens` became `max_completion_tokens`): say it in the client's terms."""
    if e.param == "max_completion_tokens" and isinstance(req, dict) and "max_output_tokens" in req:
        e.param = "max_output_tokens"
        e.message = e.message.replace("max_completion_tokens", "max_output_tokens")
    # advice such as a budget refusal's "lower max_tokens / max_completion_tokens" or a rate limit's "or lower
    # max_tokens": the client has neither on this endpoint
    e.message = _CHAT_LIMITS.sub("max_output_tokens", e.message)


async def _answered_here(gw: Gateway, ctx: CallContext, response_id: Any) -> bool:
    """Whether `response_id` is a stored response (visible to this caller) that the translated path
    produced, i.e. one no upstream Responses API knows."""
    if not isinstance(response_id, str) or not response_id:
        return False
    stored = await response_store(gw).get(response_id, _viewer(ctx.key))
    return stored is not None and stored.path == "translated"


# ---------------------------------------------------------------- POST /v1/responses


async def handle_responses(gw: Gateway, request: Request) -> Response:
    ctx = CallContext(request_id=new_id("req_"), kind="responses")  # ours, never the client's: it keys the ledger row
    req: Any = None
    try:
        try:
            req = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise bad_request("We could not parse the JSON body of your request. The body must be valid JSON.") from None
        ctx.key = await gw.accounting.authenticate(request.headers.get("authorization"))
        if isinstance(req, dict):
            _check_types(req)
        native = isinstance(req, dict) and _native_ok(gw, req)
        chat_req = req
        if isinstance(req, dict) and req.get("previous_response_id") is not None:
            prev = req["previous_response_id"]
            gone = await response_store(gw).deleted_in_chain(prev) if native and isinstance(prev, str) else None
            if gone is not None:
                # it (or an earlier turn of its chain) was deleted here: no caller continues it upstream (the
                # upstream still holds its copy), as the chain walk refuses it for a virtual key
                raise bad_request(f"Previous response with id '{gone}' not found.",
                                  param="previous_response_id", code="previous_response_not_found")
            if native and _viewer(ctx.key) is not None:
                # a virtual key: the upstream would resolve any id it knows, whichever key made it (they share
                # its account), so the chain must be this key's, stored here; the master key and an open
                # gateway may also continue ids the upstream made outside the gateway
                await _with_history(gw, ctx, req)
            if native and await _answered_here(gw, ctx, req["previous_response_id"]):
                # the previous turn was answered by the translated path: the upstream has never seen its id,
                # so the chain is expanded here and sent as input, as on the translated path
                chat_req = await _with_history(gw, ctx, req)
                chat_body = wr.to_chat_request(chat_req)
                validate_body(chat_body)
                opts = read_options(dict(req), req.get("model"))
                return await _native(gw, chat_req, chat_body, ctx, opts, _saver(gw, ctx, req, "native"),
                                     echo={"previous_response_id": req["previous_response_id"]})
            if native:  # the upstream resolves it; token counting sees only the new input
                chat_req = {k: v for k, v in req.items() if k != "previous_response_id"}
            else:
                chat_req = await _with_history(gw, ctx, req)
        # validates; also used for token counting on the native path
        # Claude's thinking in reasoning items goes back as thinking_blocks; shaping drops them for any
        # model of another family (a fallback, or `auto` routing elsewhere)
        chat_body = wr.to_chat_request(chat_req, thinking_blocks=not native)
        if native:
            validate_body(chat_body)  # the same ranges and shapes as chat (sent upstream as given otherwise)
            opts = read_options(dict(req), req.get("model"))  # the same checks as the chat path
            return await _native(gw, req, chat_body, ctx, opts, _saver(gw, ctx, req, "native"))
        out = await run_chat(gw, chat_body, ctx)
    except GatewayError as e:
        _in_responses_terms(e, req)
        record_rejected(gw, ctx, req, e)
        return error_response(e, ctx.request_id)
    resp_id = new_id("resp_")
    created = int(time.time())
    save = _saver(gw, ctx, req, "translated")
    echo = _as_served(req, out.headers)
    if out.chunks is not None:
        tr = wr.StreamTranslator(req=echo, resp_id=resp_id, created_at=created, model="")
        return StreamingResponse(_events(out.chunks, tr, save), media_type="text/event-stream", headers=out.headers)
    body = wr.to_response(out.body or {}, echo, resp_id, created)
    await save(body)
    return Response(orjson.dumps(body), media_type="application/json", headers=out.headers)


_ECHOED_SETTINGS = ("temperature", "top_p", "parallel_tool_calls")  # Response fields named as on chat


def _as_served(req: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """The request as the Response object should echo it: settings the model does not take (dropped for
    it, `x-tiergate-dropped-params`) at their defaults, which is what it ran with, and the reasoning
    effort it was sent (routing chooses one for `auto`)."""
    dropped = set((headers.get("x-tiergate-dropped-params") or "").split(","))
    echo = {k: v for k, v in req.items() if not (k in _ECHOED_SETTINGS and k in dropped)}
    effort = headers.get("x-tiergate-reasoning-effort")
    reasoning = echo.get("reasoning") if isinstance(echo.get("reasoning"), dict) else {}
    if "reasoning_effort" in dropped:  # the model takes no effort (auto may route a pinned effort to one)
        echo["reasoning"] = {**reasoning, "effort": None}
    elif effort and not reasoning.get("effort"):
        echo["reasoning"] = {**reasoning, "effort": effort}
    return echo


async def _terminal(events: list[tuple[str, dict[str, Any]]], save: Saver) -> AsyncIterator[bytes]:
    """Encode events, storing the final response before its terminal event goes out (so a client that
    reads `response.completed` and retrieves the id at once finds it)."""
    for name, ev in events:
        if name in _TERMINAL and isinstance(ev.get("response"), dict):
            await save(ev["response"])
        yield sse.encode_event(name, ev)


async def _events(chunks: AsyncIterator[bytes], tr: wr.StreamTranslator, save: Saver) -> AsyncIterator[bytes]:
    """Chat SSE bytes from the pipeline -> Responses SSE events (`event:` + `data:`), no [DONE]."""
    started = False
    failed = False
    ended = False  # a terminal event was produced (and the response stored)
    try:
        async for data in sse.iter_data(chunks):
            if data == b"[DONE]":
                break
            obj = orjson.loads(data)
            _plain_thinking_blocks(obj)
            if not started:
                tr.model = obj.get("model") or tr.model
                started = True
                for name, ev in tr.start():
                    yield sse.encode_event(name, ev)
            if obj.get("error") is not None:
                failed = True
                err = obj["error"]
                ended = True
                if obj.get("usage"):  # what the pipeline bills for the cut answer (its usage chunk never came)
                    tr.usage = obj["usage"]
                async for b in _terminal(tr.fail(str(err.get("message") or "upstream error"), "server_error"), save):
                    yield b
                break
            for name, ev in tr.feed(obj):
                yield sse.encode_event(name, ev)
        if not started:
            for name, ev in tr.start():
                yield sse.encode_event(name, ev)
        if not failed:
            ended = True
            async for b in _terminal(tr.finish(), save):
                yield b
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()  # let the pipeline finish its books if the client went away
        if not ended:  # the client hung up mid-answer: keep what was produced, retrievable by its id
            await _save_cut(save, tr.cancelled())


def _plain_thinking_blocks(chunk: dict[str, Any]) -> None:
    """A streamed chunk's `thinking_blocks` entries without their delta `index` (the chat stream's array
    delta position): the reasoning item keeps Claude's blocks as Anthropic sent them, as unstreamed."""
    for ch in chunk.get("choices") or ():
        blocks = (ch.get("delta") or {}).get("thinking_blocks") if isinstance(ch, dict) else None
        if isinstance(blocks, list):
            ch["delta"]["thinking_blocks"] = [{k: v for k, v in b.items() if k != "index"} if isinstance(b, dict)
                                              else b for b in blocks]


async def _save_cut(save: Saver, resp: dict[str, Any]) -> None:
    """Store a response cut short by its client's hang-up. Runs while the stream's task is being
    cancelled, so the write is shielded: it finishes even though nobody waits for it."""
    try:
        await asyncio.shield(save(resp))
    except asyncio.CancelledError:
        pass


# ---------------------------------------------------------------- GET / DELETE /v1/responses/{id}, input_items


def _json(obj: Any, request_id: str) -> Response:
    return Response(orjson.dumps(obj), media_type="application/json", headers={"x-request-id": request_id})


async def _stored(request: Request) -> tuple[Gateway, Any, str]:
    gw: Gateway = request.app.state.gateway
    key = await gw.accounting.authenticate(request.headers.get("authorization"))
    return gw, key, request.path_params["response_id"]


def _absent(response_id: str) -> GatewayError:
    return not_found(f"Response with id '{response_id}' not found.", param="response_id", code="response_not_found")


async def get_response(request: Request) -> Response:
    rid = new_id("req_")
    try:
        gw, key, response_id = await _stored(request)
        if request.query_params.get("stream", "").lower() == "true":
            raise bad_request("stream=true is for background responses, which this gateway does not run; "
                              "retrieve the stored response without it.", param="stream",
                              code="unsupported_parameter")
        s = await response_store(gw).get(response_id, _viewer(key))
        if s is None:
            raise _absent(response_id)
    except GatewayError as e:
        return error_response(e, rid)
    return _json(s.response, rid)


async def cancel_response(request: Request) -> Response:
    """Only a background response can be cancelled; this gateway answers every response before it returns
    it (`background` is refused), so a stored one is finished: a 400 saying so, a 404 for an unknown id."""
    rid = new_id("req_")
    try:
        gw, key, response_id = await _stored(request)
        if await response_store(gw).get(response_id, _viewer(key)) is None:
            raise _absent(response_id)
        raise bad_request(f"Response '{response_id}' is already complete: only background responses can be "
                          "cancelled, and this gateway does not run background responses.",
                          param="response_id", code="invalid_value")
    except GatewayError as e:
        return error_response(e, rid)


async def delete_response(request: Request) -> Response:
    rid = new_id("req_")
    try:
        gw, key, response_id = await _stored(request)
        if not await response_store(gw).delete(response_id, _viewer(key)):
            raise _absent(response_id)
    except GatewayError as e:
        return error_response(e, rid)
    return _json({"id": response_id, "object": "response", "deleted": True}, rid)


async def list_input_items(request: Request) -> Response:
    """The stored response's own input items (not earlier turns' of a previous_response_id chain),
    paginated as OpenAI: `limit` 1-100 (default 20), `order` asc|desc (default desc), `after` an item id."""
    rid = new_id("req_")
    q = request.query_params
    try:
        gw, key, response_id = await _stored(request)
        raw_limit = q.get("limit", "20")
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise bad_request(f"limit must be an integer from 1 to 100, got {raw_limit!r}.", param="limit",
                              code="invalid_value")
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request(f"order must be 'asc' or 'desc', got {order!r}.", param="order", code="invalid_value")
        s = await response_store(gw).get(response_id, _viewer(key))
        if s is None:
            raise _absent(response_id)
        items = s.input_items if order == "asc" else list(reversed(s.input_items))
        start = 0
        after = q.get("after")
        if after:
            pos = next((i for i, it in enumerate(items) if it.get("id") == after), None)
            if pos is None:
                raise bad_request(f"after: response '{response_id}' has no input item with id '{after}'.",
                                  param="after", code="invalid_value")
            start = pos + 1
        page = items[start:start + limit]
    except GatewayError as e:
        return error_response(e, rid)
    return _json({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                  "last_id": page[-1]["id"] if page else None, "has_more": start + limit < len(items)}, rid)


# ---------------------------------------------------------------- native path


def _native_ok(gw: Gateway, req: dict[str, Any]) -> bool:
    model = req.get("model")
    if not isinstance(model, str) or is_auto(model):
        return False
    mc = gw.config.model(model)
    if mc is None or mc.fallbacks or mc.context_window_fallback:
        # a fallback answers through the chat pipeline, which shapes the body for it, applies the key's
        # allow-list to it and prices the budget reservation at the dearest model it may use
        return False
    states = gw.dispatcher.deployment_states(model)
    method = "responses_stream" if req.get("stream") else "responses"
    default = getattr(Provider, method)
    # an OpenAI-compatible host (vLLM, Ollama, llama.cpp, ...) rarely has /responses: translated unless its
    # deployment says `options: {responses_api: true}`
    return bool(states) and all(getattr(type(st.provider), method) is not default
                                and (st.dep.provider != "openai_compatible" or st.dep.options.get("responses_api") is True)
                                for st in states)


async def _native(gw: Gateway, req: dict[str, Any], chat_body: dict[str, Any], ctx: CallContext,
                  opts: dict[str, Any], save: Saver, echo: dict[str, Any] | None = None) -> Response:
    """Send the Responses request unchanged to the deployments' native endpoint, through the
    dispatcher (balancing, retries, circuits as for chat; a stream fails over until its first
    answer-bearing event), budgeted and recorded like chat. `echo`: fields set on the response
    objects returned (what the client sent but the upstream was not given, e.g. a resolved
    `previous_response_id`)."""
    model = req["model"]
    stream = bool(req.get("stream"))
    info = gw.infos[model]
    check_output_limit(chat_body, info)  # max_output_tokens above the model's maximum: refused as on chat
    timeouts = request_timeouts(gw.config.model(model).timeouts, opts.get("timeouts"))
    prompt_tokens = count_request(chat_body, info)  # tools and a json_schema format are prompt too
    max_out = req.get("max_output_tokens")
    capped = isinstance(max_out, int) and not isinstance(max_out, bool) and max_out > 0
    if not capped:
        max_out = default_output_limit(info, prompt_tokens)  # the same default bound as chat (docs/accounting.md)
    admission = await gw.accounting.admit(ctx.key, model, prompt_tokens, max_cost_usd(prompt_tokens, max_out, info),
                                          prompt_tokens + max_out)
    effort = (req.get("reasoning") or {}).get("effort")
    upstream_body = {k: v for k, v in req.items() if k != "tiergate"}  # our own options stay here
    if "input" in upstream_body:  # reasoning items made here from Claude's thinking mean nothing upstream
        upstream_body["input"] = wr.without_gateway_reasoning(upstream_body["input"])
    upstream_body["model"] = info.name
    if (not capped and getattr(ctx.key, "budget_usd", None) is not None
            and any(i.input_price or i.output_price for i in map(gw.infos.get, gw.dispatcher.chain(model))
                    if i is not None)):
        # a budgeted key's cost stays under its reservation; an unpriced model (a local host) costs nothing
        # and may have a small context that the added limit would overflow (as on chat)
        upstream_body["max_output_tokens"] = max_out
    cost, tokens = 0.0, 0
    settled = False
    try:
        try:
            d = await gw.dispatcher.dispatch(model, lambda _name: (upstream_body, []), stream=stream,
                                             timeouts=timeouts, request_id=ctx.request_id,
                                             prompt_tokens=prompt_tokens, operation="responses")
        except GatewayError as e:
            if not getattr(e, "attempts", ()) and refused_before_upstream(e):
                raise  # the gateway's own refusal, nothing sent: the handler records it as `rejected`
            _record_attempts(gw, ctx, model, info, effort, getattr(e, "attempts", ()), stream)
            record_call(gw, ctx, model, model, None, effort, None, 0.0, "error", e.message[:500], None, stream, 0)
            e.recorded = True  # type: ignore[attr-defined]
            raise
        _record_attempts(gw, ctx, model, info, effort, d.attempts, stream)
        headers = {"x-request-id": ctx.request_id, "x-tiergate-model": model, "x-tiergate-deployment": d.deployment.id,
                   "x-tiergate-responses": "native"}
        if isinstance(effort, str) and effort:  # as on chat: the effort the model was sent
            headers["x-tiergate-reasoning-effort"] = effort
        if stream:
            settled = True  # the relay's finaliser settles
            relay = _native_events(gw, ctx, d, admission, info, model, effort, prompt_tokens, save, echo)
            return BurstStreamingResponse(relay, media_type="text/event-stream", headers=headers)
        if echo and isinstance(d.result.body, dict):
            d.result.body.update(echo)
        usage = d.result.body.get("usage")
        if not usage_reported(usage):  # an upstream that reports no usage is estimated, never free
            usage = estimate_usage(chat_body, _as_choices(d.result.body), info)
            headers["x-tiergate-usage"] = "estimated"
        cost = cost_usd(usage, info) if usage else 0.0
        tokens = int((usage or {}).get("total_tokens") or 0)
        record_call(gw, ctx, model, model, d.deployment.id, effort, usage, cost, "ok", None, None, False,
                    len(d.attempts) + 1, ttft_ms=(d.ttft_s or 0) * 1000)
        headers["x-tiergate-cost-usd"] = f"{cost:.8f}"
        await save(d.result.body)
        return Response(orjson.dumps(d.result.body), media_type="application/json", headers=headers)
    finally:
        if not settled:
            await gw.accounting.settle(admission, cost, tokens)


def _as_choices(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A Responses `response`'s output as Chat Completions choices, for counting its tokens: output
    text, refusals and function calls (name + arguments)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            calls.append({"function": {"name": str(item.get("name") or ""),
                                       "arguments": str(item.get("arguments") or "")}})
        for part in item.get("content") or ():
            if isinstance(part, dict):
                texts.append(str(part.get("text") or part.get("refusal") or ""))
    return [{"message": {"content": "".join(texts), "tool_calls": calls}}]


def _record_attempts(gw: Gateway, ctx: CallContext, model: str, info: Any, effort: Any, attempts: Any,
                     stream: bool) -> None:
    for i, a in enumerate(attempts):
        record_call(gw, ctx, model, a.model, a.deployment_id, effort, a.usage,
                    cost_usd(a.usage, info) if a.usage else 0.0, "failed_attempt",
                    upstream_error_text(a.error), None, stream, i + 1,
                    request_id=f"{ctx.request_id}:a{i + 1}", latency_ms=a.latency_s * 1000)


def _response_error_code(e: UpstreamError) -> str:
    """A Response's `error.code` (the spec's ResponseErrorCode enum) for an upstream failure mid-stream."""
    return "rate_limit_exceeded" if e.status == 429 or e.code == "rate_limit_exceeded" else "server_error"


async def _native_events(gw: Gateway, ctx: CallContext, d: Any, admission: Any, info: Any, model: str, effort: Any,
                         prompt_tokens: int, save: Saver, echo: dict[str, Any] | None = None
                         ) -> AsyncIterator[bytes]:
    """Relay the upstream's Responses events as they come (`event:` + `data:`, no [DONE]); take usage
    from the final `response.completed` / `response.incomplete`, and always finish the books, even
    when the client goes away or the upstream cuts the stream (then the client gets a
    `response.failed` event and the usage is what the upstream reported, else an estimate)."""
    usage: dict[str, Any] | None = None
    snapshot: dict[str, Any] = {}
    relayed = wr.RelayedOutput()
    ended = False  # a terminal event was relayed (and the response stored)
    text_parts: list[str] = []
    last_seq = -1
    status, error = "client_disconnected", None

    def _estimated(parts: list[str]) -> dict[str, Any]:
        visible = count_text("".join(parts), info.tokenizer)
        return estimated_usage(prompt_tokens, visible, estimated_reasoning_tokens(info, d.body, visible))

    try:
        async for ev in d.stream:
            etype = ev.get("type") or "message"
            resp = ev.get("response")
            if isinstance(resp, dict):
                if echo:
                    resp.update(echo)
                snapshot = resp
                if resp.get("usage"):
                    usage = resp["usage"]
            elif etype == "response.output_text.delta":
                text_parts.append(str(ev.get("delta") or ""))
            relayed.feed(ev)
            seq = ev.get("sequence_number")
            if isinstance(seq, int):
                last_seq = seq
            if etype in _TERMINAL and isinstance(resp, dict):
                ended = True
                await save(resp)  # before the client sees the end, so an immediate retrieve finds it
            yield sse.encode_event(etype, ev)
        status = "ok"
    except UpstreamError as e:
        status, error = "error", upstream_error_text(e)
        usage = usage or e.usage or _estimated(text_parts)
        # the output relayed so far (open items as `incomplete`), as the translated path and a client's
        # hang-up keep it; `error.code` from the spec's ResponseErrorCode (the gateway's own code, e.g.
        # upstream_stream_cut, is in the message); `usage` is what is billed (the spec's Response.usage
        # is an object, not null)
        failed = {**snapshot, "status": "failed", "output": relayed.items(),
                  "usage": usage if "input_tokens" in usage else wr.usage_to_responses(usage),
                  "error": {"code": _response_error_code(e),
                            "message": f"The upstream stream failed after it started: {e.message}"
                                       + (f" ({e.code})" if e.code else "")}}
        if snapshot.get("id"):
            ended = True
            await save(failed)
        yield sse.encode_event("response.failed", {"type": "response.failed", "response": failed,
                                                   "sequence_number": last_seq + 1})
    finally:
        aclose = getattr(d.stream, "aclose", None)
        if aclose is not None:
            await aclose()  # the deployment's in-flight slot goes back now, not at garbage collection
        if usage is None:  # cut or abandoned before the final event: estimate what was produced
            usage = _estimated(text_parts)
        cost = cost_usd(usage, info)
        record_call(gw, ctx, model, model, d.deployment.id, effort, usage, cost, status, error, None, True,
                    len(d.attempts) + 1, ttft_ms=(d.ttft_s or 0) * 1000)
        tokens = int(usage.get("total_tokens") or 0)
        try:
            await settle_surely(gw, admission, cost, tokens)  # completes even if the client hung up
        finally:
            if not ended and snapshot.get("id"):  # the client hung up mid-answer: keep what was produced
                await _save_cut(save, {**snapshot, "status": "cancelled", "output": relayed.items()})
    if status == "ok":
        yield f": x-tiergate-cost-usd={cost:.8f}\n\n".encode()
