"""`POST /v1/responses`: the Responses API in front of every deployment (wire facts §5).

Two paths:
- **native** — an explicit model whose deployments all speak the Responses API (the `openai`
  provider): the body goes to the provider's `responses()` / `responses_stream()` unchanged (model
  name aside), with the same key check, budget reservation, failover across deployments and ledger
  row as a chat call. The SDK gets OpenAI's own Response object, or OpenAI's own stream events
  (relayed as they come; usage and cost from `response.completed`).
- **translated** — everything else (`model: "auto"`, Chat-Completions-only and Anthropic
  deployments, models with fallbacks): `wire.responses` turns the request into a Chat Completions
  body, the chat pipeline (`server.chat.run_chat`) routes, budgets and dispatches it, and the answer
  (or the chunk stream) is turned back into a Response object (or the Responses stream events).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tiergate.accounting.pricing import cost_usd, max_cost_usd
from tiergate.accounting.tokens import count_messages, count_text
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
    upstream_error_text,
)
from tiergate.server.streaming import BurstStreamingResponse
from tiergate.wire import responses as wr
from tiergate.wire import sse
from tiergate.wire.errors import GatewayError, bad_request
from tiergate.wire.ids import new_id

if TYPE_CHECKING:
    from tiergate.server.gateway import Gateway


def routes() -> list[Route]:
    return [Route("/v1/responses", create_response, methods=["POST"]),
            Route("/responses", create_response, methods=["POST"])]


async def create_response(request: Request) -> Response:
    return await handle_responses(request.app.state.gateway, request)


async def handle_responses(gw: Gateway, request: Request) -> Response:
    ctx = CallContext(request_id=new_id("req_"), kind="responses")  # ours, never the client's: it keys the ledger row
    req: Any = None
    try:
        try:
            req = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise bad_request("We could not parse the JSON body of your request. The body must be valid JSON.") from None
        ctx.key = await gw.accounting.authenticate(request.headers.get("authorization"))
        chat_body = wr.to_chat_request(req)  # validates; also used for token counting on the native path
        if _native_ok(gw, req):
            opts = read_options(dict(req), req.get("model"))  # the same checks as the chat path
            return await _native(gw, req, chat_body, ctx, opts)
        out = await run_chat(gw, chat_body, ctx)
    except GatewayError as e:
        record_rejected(gw, ctx, req, e)
        return error_response(e, ctx.request_id)
    resp_id = new_id("resp_")
    created = int(time.time())
    if out.chunks is not None:
        tr = wr.StreamTranslator(req=req, resp_id=resp_id, created_at=created, model="")
        return StreamingResponse(_events(out.chunks, tr), media_type="text/event-stream", headers=out.headers)
    body = wr.to_response(out.body or {}, req, resp_id, created)
    return Response(orjson.dumps(body), media_type="application/json", headers=out.headers)


async def _events(chunks: AsyncIterator[bytes], tr: wr.StreamTranslator) -> AsyncIterator[bytes]:
    """Chat SSE bytes from the pipeline -> Responses SSE events (`event:` + `data:`), no [DONE]."""
    started = False
    failed = False
    try:
        async for data in sse.iter_data(chunks):
            if data == b"[DONE]":
                break
            obj = orjson.loads(data)
            if not started:
                tr.model = obj.get("model") or tr.model
                started = True
                for name, ev in tr.start():
                    yield sse.encode_event(name, ev)
            if obj.get("error") is not None:
                failed = True
                err = obj["error"]
                for name, ev in tr.fail(str(err.get("message") or "upstream error"), "server_error"):
                    yield sse.encode_event(name, ev)
                break
            for name, ev in tr.feed(obj):
                yield sse.encode_event(name, ev)
        if not started:
            for name, ev in tr.start():
                yield sse.encode_event(name, ev)
        if not failed:
            for name, ev in tr.finish():
                yield sse.encode_event(name, ev)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()  # let the pipeline finish its books if the client went away


# ---------------------------------------------------------------- native path


def _native_ok(gw: Gateway, req: dict[str, Any]) -> bool:
    model = req.get("model")
    if not isinstance(model, str) or is_auto(model):
        return False
    mc = gw.config.model(model)
    if mc is None or mc.fallbacks:
        return False
    states = gw.dispatcher.deployment_states(model)
    method = "responses_stream" if req.get("stream") else "responses"
    default = getattr(Provider, method)
    return bool(states) and all(getattr(type(st.provider), method) is not default for st in states)


async def _native(gw: Gateway, req: dict[str, Any], chat_body: dict[str, Any], ctx: CallContext,
                  opts: dict[str, Any]) -> Response:
    """Send the Responses request unchanged to the deployments' native endpoint, through the
    dispatcher (balancing, retries, circuits as for chat; a stream fails over until its first
    answer-bearing event), budgeted and recorded like chat."""
    model = req["model"]
    stream = bool(req.get("stream"))
    info = gw.infos[model]
    timeouts = request_timeouts(gw.config.model(model).timeouts, opts.get("timeouts"))
    prompt_tokens = count_messages(chat_body["messages"], info)
    max_out = req.get("max_output_tokens")
    capped = isinstance(max_out, int) and not isinstance(max_out, bool) and max_out > 0
    if not capped:
        max_out = default_output_limit(info)  # the same default bound as chat (docs/accounting.md)
    admission = await gw.accounting.admit(ctx.key, model, prompt_tokens, max_cost_usd(prompt_tokens, max_out, info),
                                          prompt_tokens + max_out)
    effort = (req.get("reasoning") or {}).get("effort")
    upstream_body = {k: v for k, v in req.items() if k != "tiergate"}  # our own options stay here
    upstream_body["model"] = info.name
    if not capped and getattr(ctx.key, "budget_usd", None) is not None:
        upstream_body["max_output_tokens"] = max_out  # a budgeted key's cost stays under its reservation
    cost, tokens = 0.0, 0
    settled = False
    try:
        try:
            d = await gw.dispatcher.dispatch(model, lambda _name: (upstream_body, []), stream=stream,
                                             timeouts=timeouts, request_id=ctx.request_id,
                                             prompt_tokens=prompt_tokens, operation="responses")
        except GatewayError as e:
            _record_attempts(gw, ctx, model, info, effort, getattr(e, "attempts", ()), stream)
            record_call(gw, ctx, model, model, None, effort, None, 0.0, "error", e.message[:500], None, stream, 0)
            e.recorded = True  # type: ignore[attr-defined]
            raise
        _record_attempts(gw, ctx, model, info, effort, d.attempts, stream)
        headers = {"x-request-id": ctx.request_id, "x-tiergate-model": model, "x-tiergate-deployment": d.deployment.id,
                   "x-tiergate-responses": "native"}
        if stream:
            settled = True  # the relay's finaliser settles
            relay = _native_events(gw, ctx, d, admission, info, model, effort, prompt_tokens)
            return BurstStreamingResponse(relay, media_type="text/event-stream", headers=headers)
        usage = d.result.body.get("usage")
        cost = cost_usd(usage, info) if usage else 0.0
        tokens = int((usage or {}).get("total_tokens") or 0)
        record_call(gw, ctx, model, model, d.deployment.id, effort, usage, cost, "ok", None, None, False,
                    len(d.attempts) + 1, ttft_ms=(d.ttft_s or 0) * 1000)
        headers["x-tiergate-cost-usd"] = f"{cost:.8f}"
        return Response(orjson.dumps(d.result.body), media_type="application/json", headers=headers)
    finally:
        if not settled:
            await gw.accounting.settle(admission, cost, tokens)


def _record_attempts(gw: Gateway, ctx: CallContext, model: str, info: Any, effort: Any, attempts: Any,
                     stream: bool) -> None:
    for i, a in enumerate(attempts):
        record_call(gw, ctx, model, a.model, a.deployment_id, effort, a.usage,
                    cost_usd(a.usage, info) if a.usage else 0.0, "failed_attempt",
                    upstream_error_text(a.error), None, stream, i + 1,
                    request_id=f"{ctx.request_id}:a{i + 1}", latency_ms=a.latency_s * 1000)


async def _native_events(gw: Gateway, ctx: CallContext, d: Any, admission: Any, info: Any, model: str, effort: Any,
                         prompt_tokens: int) -> AsyncIterator[bytes]:
    """Relay the upstream's Responses events as they come (`event:` + `data:`, no [DONE]); take usage
    from the final `response.completed` / `response.incomplete`, and always finish the books, even
    when the client goes away or the upstream cuts the stream (then the client gets a
    `response.failed` event and the usage is what the upstream reported, else an estimate)."""
    usage: dict[str, Any] | None = None
    snapshot: dict[str, Any] = {}
    text_parts: list[str] = []
    last_seq = -1
    status, error = "client_disconnected", None
    try:
        async for ev in d.stream:
            etype = ev.get("type") or "message"
            resp = ev.get("response")
            if isinstance(resp, dict):
                snapshot = resp
                if resp.get("usage"):
                    usage = resp["usage"]
            elif etype == "response.output_text.delta":
                text_parts.append(str(ev.get("delta") or ""))
            seq = ev.get("sequence_number")
            if isinstance(seq, int):
                last_seq = seq
            yield sse.encode_event(etype, ev)
        status = "ok"
    except UpstreamError as e:
        status, error = "error", upstream_error_text(e)
        usage = usage or e.usage
        failed = {**snapshot, "status": "failed",
                  "error": {"code": e.code or "server_error",
                            "message": f"The upstream stream failed after it started: {e.message}"}}
        yield sse.encode_event("response.failed", {"type": "response.failed", "response": failed,
                                                   "sequence_number": last_seq + 1})
    finally:
        aclose = getattr(d.stream, "aclose", None)
        if aclose is not None:
            await aclose()  # the deployment's in-flight slot goes back now, not at garbage collection
        if usage is None:  # cut or abandoned before the final event: estimate what was produced
            completion = count_text("".join(text_parts), info.tokenizer)
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                     "total_tokens": prompt_tokens + completion, "estimated": True}
        cost = cost_usd(usage, info)
        record_call(gw, ctx, model, model, d.deployment.id, effort, usage, cost, status, error, None, True,
                    len(d.attempts) + 1, ttft_ms=(d.ttft_s or 0) * 1000)
        tokens = int(usage.get("total_tokens") or 0)
        await gw.accounting.settle(admission, cost, tokens)
    if status == "ok":
        yield f": x-tiergate-cost-usd={cost:.8f}\n\n".encode()
