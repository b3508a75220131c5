"""The Anthropic Messages API behind the Chat Completions interface (wire facts §10).

`POST {api_base}/v1/messages` with `x-api-key` and `anthropic-version: 2023-06-01`. The body
translation lives in `tiergate.wire.anthropic` (pure); this module does the HTTP: timeouts, the SSE
stream, and mapping Anthropic errors to `UpstreamError` (529 overloaded -> retryable 503, `error`
events inside a 200 stream -> `stream_cut`). A request the translation cannot express (`n` > 1, an
audio part, …) raises `RequestRefused` from `check` before the dispatcher's first attempt (and from
`build`, should it get that far): the gateway's own 400, never sent, never an upstream failure.
Deployment options: none required; `api_base` defaults to https://api.anthropic.com; extra headers
(e.g. `anthropic-beta`) come from the deployment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Any

import aiohttp
import orjson

from tiergate.providers import http as _http
from tiergate.providers.base import ChatResult, Deployment, Provider, RequestRefused, Timeouts, UpstreamError
from tiergate.providers.http import (
    BodyTooLarge,
    parse_retry_after,
    read_answer,
    read_error_body,
    scrub,
    too_large_error,
    transport_failure,
)
from tiergate.providers.registry import register
from tiergate.wire import anthropic as wa
from tiergate.wire.sse import iter_data

DEFAULT_BASE = "https://api.anthropic.com"


def _client_timeout(t: Timeouts) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, connect=t.connect)


@register("anthropic")
class AnthropicProvider(Provider):
    name = "anthropic"

    def __init__(self, deployment: Deployment, session_factory: Any) -> None:
        super().__init__(deployment, session_factory)
        _packaged_catalog()  # read now (max output per model), not on the first request

    # ------------------------------------------------------------ request building

    def url(self) -> str:
        base = (self.deployment.api_base or DEFAULT_BASE).rstrip("/")
        return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"

    def headers(self) -> dict[str, str]:
        h = {"content-type": "application/json", "anthropic-version": wa.ANTHROPIC_VERSION}
        h.update(dict(self.deployment.headers))
        if self.deployment.api_key is not None:
            h["x-api-key"] = self.deployment.api_key.value
        return h

    def translate(self, body: dict[str, Any], stream: bool) -> dict[str, Any]:
        """The Messages request for `body`, or `RequestRefused` (nothing is sent)."""
        catalog_name = str(body.get("model", ""))
        upstream = self.upstream_model(catalog_name)
        return translate_request(body, stream, upstream, self.max_output(upstream, catalog_name))

    def dropped_params(self, body: dict[str, Any]) -> list[str]:
        """The client's parameters (of `body`, shaped for the model) that the translation to a Messages
        request leaves out or changes (`wire.anthropic.translation_dropped`: `temperature` clamped to 1 or
        removed with thinking, `top_p` removed with thinking, ...), for `x-tiergate-dropped-params` on
        top of what the request shaping dropped."""
        catalog_name = str(body.get("model", ""))
        return wa.translation_dropped(body, self.max_output(self.upstream_model(catalog_name), catalog_name))

    def max_output(self, upstream: str, catalog_name: str = "") -> int | None:
        """The most `max_tokens` this deployment may send (`max_output_tokens`)."""
        return max_output_tokens(upstream, catalog_name, options=self.deployment.options,
                                 headers=self.deployment.headers)

    def check(self, body: dict[str, Any], *, stream: bool, operation: str = "chat") -> None:
        if operation == "chat":
            self.translate(body, stream)

    def build(self, body: dict[str, Any], stream: bool) -> bytes:
        return orjson.dumps(self.translate(body, stream))

    def _secrets(self) -> tuple[str, ...]:
        return (self.deployment.api_key.value,) if self.deployment.api_key else ()

    def _timeout(self, phase: str, t: Timeouts, usage: dict[str, Any] | None = None) -> UpstreamError:
        dep = self.deployment.id
        v = getattr(t, phase)
        if v is None:  # that phase has no limit: aiohttp's own total timer fired
            phase, v = "total", t.total
        limit = "?" if v is None else f"{v:g}"
        msg = {"connect": f"could not connect to upstream {dep} within {limit}s (connect timeout)",
               "first_token": f"upstream {dep} sent no answer within {limit}s (first_token timeout)",
               "stream_idle": f"upstream {dep} sent nothing for {limit}s mid-stream (stream_idle timeout)",
               }.get(phase, f"upstream {dep} did not finish within {limit}s (total timeout)")
        return UpstreamError(504, msg, kind="timeout", type="timeout_error", code="upstream_timeout", usage=usage,
                             phase=phase)

    def _transport(self, e: BaseException, *, after_headers: bool,
                   usage: dict[str, Any] | None = None) -> UpstreamError:
        kind, code, message, detail = transport_failure(e, self.deployment.id, after_headers=after_headers,
                                                        secrets=self._secrets())
        return UpstreamError(502, message, kind=kind, type="api_error", code=code, usage=usage, detail=detail)

    async def _error(self, resp: aiohttp.ClientResponse, catalog_name: str = "") -> UpstreamError:
        raw = await read_error_body(resp)  # at most 64 KiB: the message is all that is used
        err_type, message = None, raw[:500].decode("utf-8", "replace") or resp.reason or "upstream error"
        try:
            obj = orjson.loads(raw)
            err = obj.get("error") or {}
            err_type, message = err.get("type"), str(err.get("message") or message)
        except (orjson.JSONDecodeError, AttributeError):
            pass
        status, oa_type = wa.map_status(resp.status, err_type)
        hdrs = {k.lower(): v for k, v in resp.headers.items()}
        message = f"anthropic: {scrub(message, self._secrets())}"
        if resp.status == 404:
            # the client's model is configured: what Anthropic did not find is this deployment's upstream
            # model name (or, answered without Anthropic's error body, its api_base path)
            message += (f" (Anthropic did not find the upstream model '{self.upstream_model(catalog_name)}' "
                        f"that deployment '{self.deployment.id}' sends: check the deployment's `model:` "
                        "and `api_base` in the gateway config)")
        return UpstreamError(status, message, type=oa_type, code=err_type,
                             retry_after=parse_retry_after(hdrs, resp.status), headers=_pick(hdrs))

    # ------------------------------------------------------------ non-streaming

    async def chat(self, body: dict[str, Any], timeouts: Timeouts) -> ChatResult:
        data = self.build(body, stream=False)
        cm = asyncio.timeout(timeouts.total)
        resp = None
        try:
            async with cm:
                resp = await asyncio.wait_for(
                    self.session.post(self.url(), data=data, headers=self.headers(),
                                      timeout=_client_timeout(timeouts)),
                    timeouts.first_token)
                async with resp:
                    if resp.status != 200:
                        raise await self._error(resp, str(body.get("model", "")))
                    raw = await read_answer(resp)
                    hdrs = _pick({k.lower(): v for k, v in resp.headers.items()})
        except UpstreamError:
            raise
        except TimeoutError as e:
            phase = ("total" if cm.expired() else "connect" if isinstance(e, aiohttp.ConnectionTimeoutError)
                     else "first_token")
            raise self._timeout(phase, timeouts) from None
        except aiohttp.ClientError as e:
            raise self._transport(e, after_headers=resp is not None) from None
        except BodyTooLarge as e:
            raise too_large_error(self.deployment.id, e) from None
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(502, "anthropic: response is not JSON", kind="protocol") from None
        if not isinstance(msg, dict) or msg.get("type") == "error":
            err = msg.get("error") if isinstance(msg, dict) else None
            status, oa_type = wa.map_status(200, (err or {}).get("type"))
            raise UpstreamError(status, f"anthropic: {(err or {}).get('message', 'bad response')}", type=oa_type,
                                kind="protocol" if err is None else "status")
        return ChatResult(body=wa.from_message(msg, structured=wa.structured_tool(body)), headers=hdrs)

    # ------------------------------------------------------------ streaming

    async def chat_stream(self, body: dict[str, Any], timeouts: Timeouts) -> AsyncIterator[dict[str, Any]]:
        data = self.build(body, stream=True)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage", True))
        tr = wa.StreamTranslator(model=str(body.get("model", "")), include_usage=include_usage,
                                 structured=wa.structured_tool(body))
        loop = asyncio.get_running_loop()
        deadline = None if timeouts.total is None else loop.time() + timeouts.total
        try:
            resp = await asyncio.wait_for(
                self.session.post(self.url(), data=data, headers=self.headers(), timeout=_client_timeout(timeouts)),
                timeouts.first_token)
        except TimeoutError as e:
            raise self._timeout("connect" if isinstance(e, aiohttp.ConnectionTimeoutError) else "first_token",
                                timeouts) from None
        except aiohttp.ClientError as e:
            raise self._transport(e, after_headers=False) from None
        async with resp:
            if resp.status != 200:
                raise await self._error(resp, str(body.get("model", "")))
            sent_any = False
            reads = _timed_reads(resp, timeouts, deadline, loop)
            try:
                async for payload in iter_data(reads):
                    try:
                        ev = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        raise UpstreamError(502, "anthropic: bad stream event", kind="protocol") from None
                    try:
                        chunks = tr.feed(ev)
                    except wa.AnthropicStreamError as e:
                        status, oa_type = wa.map_status(200, e.type)
                        raise UpstreamError(status, f"anthropic: {scrub(e.message, self._secrets())}", type=oa_type,
                                            code=e.type, kind="stream_cut" if sent_any else "status",
                                            usage=tr.reported_usage()) from None
                    for c in chunks:
                        sent_any = True
                        yield c
                    if ev.get("type") == "message_stop":
                        return
            except UpstreamError:
                raise
            except TimeoutError:
                phase = ("total" if deadline is not None and loop.time() >= deadline - 0.01
                         else "stream_idle" if sent_any else "first_token")
                err = self._timeout(phase, timeouts, usage=tr.reported_usage())
                if sent_any:
                    err.kind = "stream_cut"
                raise err from None
            except aiohttp.ClientError as e:
                raise self._transport(e, after_headers=True, usage=tr.reported_usage()) from None
            except BodyTooLarge as e:
                raise too_large_error(self.deployment.id, e, tr.reported_usage()) from None
            raise UpstreamError(502, "anthropic: stream ended before message_stop", kind="stream_cut",
                                usage=tr.reported_usage())


BETA_OUTPUT_128K = "output-128k-2025-02-19"  # anthropic-beta flag: Claude 3.7 Sonnet writes up to 128,000 tokens


@lru_cache(maxsize=1)
def _packaged_catalog() -> Any:
    from tiergate.catalog.catalog import Catalog

    return Catalog.load()


@lru_cache(maxsize=256)
def _catalog_entry(*names: str) -> tuple[str, int] | None:
    """(catalogue name, max output tokens) of the first of `names` the packaged catalogue lists."""
    from tiergate.catalog.catalog import UNKNOWN_CONTEXT_WINDOW

    catalog = _packaged_catalog()
    for name in names:
        info = catalog.get(name) if name else None
        if info is not None and 0 < info.max_output_tokens < UNKNOWN_CONTEXT_WINDOW:
            return info.name, int(info.max_output_tokens)
    return None


def _catalog_max_output(*names: str) -> int | None:
    entry = _catalog_entry(*names)
    return None if entry is None else entry[1]


def max_output_tokens(upstream: str, catalog_name: str = "", *, options: Any = None,
                      headers: Any = ()) -> int | None:
    """The model's maximum output tokens, which `max_tokens` (thinking budget included) may not exceed:
    the deployment's `options.max_output_tokens` when set, else the packaged catalogue's
    `max_output_tokens` for the upstream model name (or the catalogue name), 128,000 for Claude 3.7
    Sonnet when the deployment sends `anthropic-beta: output-128k-2025-02-19`; None when unknown."""
    set_by_operator = (options or {}).get("max_output_tokens")
    if isinstance(set_by_operator, int) and not isinstance(set_by_operator, bool) and set_by_operator > 0:
        return set_by_operator
    entry = _catalog_entry(upstream, catalog_name)
    if entry is None:
        return None
    name, most = entry
    beta = ",".join(v for k, v in headers if k.lower() == "anthropic-beta")
    if name == "claude-3-7-sonnet" and BETA_OUTPUT_128K in beta:
        most = max(most, 128_000)
    return most


def translate_request(body: dict[str, Any], stream: bool, model: str, max_output: int | None = None) -> dict[str, Any]:
    """`wire.anthropic.to_messages_request`, its refusals as `RequestRefused` (the gateway's 400, worded
    as the gateway's: the request never reached Anthropic). A body malformed in a way the translation
    trips over (a wrong type the validation let through) is refused the same way, not taken for a
    provider failure. `max_output`: the model's maximum output; when None, the packaged catalogue's
    for `model` (the upstream name) or the body's `model`."""
    if max_output is None:
        max_output = _catalog_max_output(model, str(body.get("model") or ""))
    try:
        return wa.to_messages_request({**body, "stream": stream}, model, max_output)
    except wa.TranslationError as e:
        raise RequestRefused(str(e), param=e.param, code=e.code) from None
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise RequestRefused(f"cannot translate this request to Anthropic's Messages API ({type(e).__name__}: {e})",
                             code="invalid_value") from None


async def _timed_reads(resp: aiohttp.ClientResponse, t: Timeouts, deadline: float | None,
                       loop: asyncio.AbstractEventLoop) -> AsyncIterator[bytes]:
    """Raw body pieces; the first must come within `first_token`, later ones within `stream_idle`. More
    than `http.MAX_STREAM_EVENT` bytes without an event boundary (a blank line) raise `BodyTooLarge`: the SSE
    decoder buffers an unfinished event whole."""
    first = True
    pending = 0  # bytes since the last blank line (about)
    while True:
        limit = t.first_token if first else t.stream_idle
        if deadline is not None:
            left = deadline - loop.time()
            limit = left if limit is None else min(limit, left)
        piece = await asyncio.wait_for(resp.content.readany(), limit)
        if not piece:
            return
        first = False
        j = max(piece.rfind(b"\n\n"), piece.rfind(b"\n\r\n"))
        pending = len(piece) - j if j >= 0 else pending + len(piece)
        if pending > _http.MAX_STREAM_EVENT:
            raise BodyTooLarge(_http.MAX_STREAM_EVENT, "a stream event")
        yield piece


def _pick(h: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in h.items() if k.startswith("anthropic-ratelimit-") or k in ("retry-after",)}
    if "request-id" in h:
        out["x-request-id"] = h["request-id"]
    return out
