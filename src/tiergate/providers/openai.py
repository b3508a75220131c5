"""The OpenAI wire protocol: api.openai.com and every OpenAI-compatible host (vLLM, Ollama, OpenRouter).

Registered as `openai` and `openai_compatible`. Requests go to `{api_base}/chat/completions` and
`{api_base}/responses` with `Authorization: Bearer <key>` (no header when the deployment has no key,
for local hosts). The body is sent as given, except `model`, which becomes the deployment's upstream
model name. Every failure becomes an `UpstreamError` (see `_transport_error` and `_status_error` for
the mapping, docs/providers.md for the table); no message or header ever carries the key.

Timeouts (`Timeouts`): `connect` bounds the TCP/TLS connect, `first_token` bounds the silence before
the response headers and, for streams, before the first chunk, `stream_idle` bounds the silence
between chunks (and while a non-streaming body is read), `total` bounds the whole call. They are
enforced by aiohttp's own socket timers, so a healthy request pays for no extra timer objects.
Azure (`providers/azure.py`) subclasses this and overrides the small `_…` hooks only.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from yarl import URL

from tiergate.providers.base import ChatResult, Deployment, Provider, SessionFactory, Timeouts, UpstreamError
from tiergate.providers.http import (
    BodyTooLarge,
    bounded_events,
    parse_retry_after,
    pick_headers,
    read_answer,
    read_error_body,
    scrub,
    too_large_error,
    transport_failure,
)
from tiergate.providers.registry import register
from tiergate.wire.sse import iter_data_batches

DEFAULT_API_BASE = "https://api.openai.com/v1"
_JSON = "application/json"
_DONE = b"[DONE]"

# error `type` from an SSE error event -> the HTTP status it stands for
_STATUS_FOR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "server_error": 500,
    "api_error": 500,
    "overloaded_error": 503,
    "timeout_error": 504,
}


def _repair_tool_calls(calls: Any, index_of: dict[str, int] | None) -> None:
    """Tool calls as OpenAI's SDKs read them, in place: a string `arguments` (an object is serialised), an
    `id` and `type` on a call's first appearance, and on stream chunks (`index_of`: the stream's call id ->
    index) an `index`: a new id takes the next one, a continuation without an id the last one."""
    if not isinstance(calls, list):
        return
    for tc in calls:
        if not isinstance(tc, dict):
            continue
        fn = tc.get("function")
        if isinstance(fn, dict) and fn.get("arguments") is not None and not isinstance(fn["arguments"], str):
            fn["arguments"] = orjson.dumps(fn["arguments"]).decode()
        if index_of is None:  # a complete message
            if not tc.get("id"):
                tc["id"] = f"call_{uuid.uuid4().hex[:24]}"
            tc.setdefault("type", "function")
            continue
        if isinstance(tc.get("index"), int):
            if tc.get("id"):
                index_of[str(tc["id"])] = tc["index"]
            continue
        new_call = bool(tc.get("id")) or not index_of or (isinstance(fn, dict) and fn.get("name"))
        if new_call:
            if not tc.get("id"):
                tc["id"] = f"call_{uuid.uuid4().hex[:24]}"
            tc.setdefault("type", "function")
            tc["index"] = index_of.setdefault(str(tc["id"]), len(index_of))
        else:
            tc["index"] = len(index_of) - 1


#: finish_reason values OpenAI's SDKs declare (`ChatCompletion.Choice.finish_reason`)
OPENAI_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
#: What local and other OpenAI-compatible hosts write instead (TGI `eos_token`, llama.cpp/Ollama `eos`,
#: Anthropic-style `end_turn` / `stop_sequence` / `max_tokens` / `tool_use`, vLLM's `abort` when it dropped
#: the request), in OpenAI's words; anything else unknown reads as "stop" (the answer ended)
_HOST_FINISH_REASONS = {
    "eos": "stop", "eos_token": "stop", "end_turn": "stop", "stop_sequence": "stop", "end": "stop",
    "max_tokens": "length", "max_length": "length", "model_length": "length", "abort": "length",
    "tool_use": "tool_calls", "tool_call": "tool_calls", "function": "tool_calls", "content_filtered": "content_filter",
}


def _normalize_finish_reason(choice: Any, had_tool_calls: bool) -> None:
    """A host's non-standard `finish_reason` in `choice`, in place, as one of OpenAI's (the SDKs declare a
    closed set and code compares against it: `parse()` raises on "length", agents loop on "tool_calls"); the
    host's own value is kept beside it as `native_finish_reason` (as OpenRouter does). A tool-use reason
    becomes "tool_calls" only when the answer carried tool calls (`had_tool_calls`), else "stop"."""
    if not isinstance(choice, dict):
        return
    fr = choice.get("finish_reason")
    if fr is None or fr in OPENAI_FINISH_REASONS:
        return
    native = str(fr)
    low = native.lower()
    mapped = low if low in OPENAI_FINISH_REASONS else _HOST_FINISH_REASONS.get(low, "stop")
    if mapped == "tool_calls" and not had_tool_calls:
        mapped = "stop"  # an agent loop would read message.tool_calls as None
    choice["finish_reason"] = mapped
    choice["native_finish_reason"] = native


#: ClientTimeout objects kept per deployment (the configured timeouts and a few request overrides); a client
#: varying `tiergate.timeouts` per request made this grow by one entry per distinct value, forever
MAX_CACHED_TIMEOUTS = 64


@register("openai", "openai_compatible")
class OpenAIProvider(Provider):
    """Chat Completions and Responses over the OpenAI wire protocol."""

    name = "openai"

    def __init__(self, deployment: Deployment, session_factory: SessionFactory) -> None:
        super().__init__(deployment, session_factory)
        self._api_base = (deployment.api_base or DEFAULT_API_BASE).rstrip("/")
        self._secrets: tuple[str, ...] = (deployment.api_key.value,) if deployment.api_key else ()
        headers = {"Content-Type": _JSON, "Accept": _JSON}
        headers.update(deployment.headers)
        headers.update(self._auth_headers())
        self._headers = headers
        self._stream_headers = {**headers, "Accept": "text/event-stream"}
        self._chat_url = URL(self._url("chat"))
        self._responses_url = URL(self._url("responses"))
        self._client_timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}
        # local hosts (Ollama, llama.cpp, ...) send tool calls OpenAI's SDKs cannot read: no `id`, no `index`
        # on stream chunks, `arguments` as an object; repaired for `openai_compatible` deployments only
        self._repair_tools = deployment.provider == "openai_compatible"

    # ------------------------------------------------------------ hooks (Azure overrides these)

    def _url(self, endpoint: str) -> str:
        """`endpoint` is "chat" or "responses"."""
        return f"{self._api_base}/{'chat/completions' if endpoint == 'chat' else 'responses'}"

    def _auth_headers(self) -> dict[str, str]:
        key = self.deployment.api_key
        return {"Authorization": f"Bearer {key.value}"} if key else {}

    def _body_model(self, requested: str) -> str:
        return self.upstream_model(requested)

    def _normalize_chunk(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """Return the chunk to yield, or None to skip it."""
        return chunk

    def _status_error(self, status: int, raw: bytes, headers: Any) -> UpstreamError:
        """An HTTP error status -> UpstreamError, fields taken from an OpenAI-shaped body when there is one."""
        message: str | None = None
        etype = code = param = None
        try:
            payload = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            payload = None
        if isinstance(payload, dict):
            err = payload.get("error", payload)
            if isinstance(err, dict):
                message = _str_or_none(err.get("message")) or _str_or_none(err.get("detail"))
                etype = _str_or_none(err.get("type"))
                code = _str_or_none(err.get("code"))
                param = _str_or_none(err.get("param"))
            elif isinstance(err, str):
                message = err
            if message is None and isinstance(payload.get("detail"), str):
                message = payload["detail"]  # FastAPI-style hosts (vLLM)
        if not message:
            snippet = raw[:200].decode("utf-8", "replace").strip() if raw and payload is None else ""
            message = f"upstream returned HTTP {status}" + (f": {snippet}" if snippet else "")
        return UpstreamError(
            status,
            scrub(message, self._secrets),
            type=etype,
            code=code,
            param=param,
            retry_after=parse_retry_after(headers, status),
            headers=pick_headers(headers),
        )

    # ------------------------------------------------------------ the interface

    async def chat(self, body: dict[str, Any], timeouts: Timeouts) -> ChatResult:
        payload = dict(body)
        payload["model"] = self._body_model(body["model"])
        payload.pop("stream", None)
        payload.pop("stream_options", None)
        result = await self._post(self._chat_url, payload, timeouts)
        if not isinstance(result.body.get("choices"), list) or not result.body["choices"]:
            # an empty list too: no answer to give (a local host's glitch), and a failover may have one
            raise self._protocol_error("a chat completion without `choices`", result.headers)
        if self._repair_tools:
            for c in result.body["choices"]:
                msg = c.get("message") if isinstance(c, dict) else None
                _normalize_finish_reason(c, isinstance(msg, dict) and bool(msg.get("tool_calls")))
                if isinstance(msg, dict) and msg.get("tool_calls"):
                    _repair_tool_calls(msg["tool_calls"], None)
        return result

    async def responses(self, body: dict[str, Any], timeouts: Timeouts) -> ChatResult:
        payload = dict(body)
        payload["model"] = self._body_model(body["model"])
        payload.pop("stream", None)
        return await self._post(self._responses_url, payload, timeouts)

    async def responses_stream(self, body: dict[str, Any], timeouts: Timeouts) -> AsyncIterator[dict[str, Any]]:
        payload = dict(body)
        payload["model"] = self._body_model(body["model"])
        payload["stream"] = True
        phase = "first_token"
        usage: dict[str, Any] | None = None
        complete = False  # a terminal event was seen: the response was read to its end
        resp: aiohttp.ClientResponse | None = None
        try:
            resp = await self.session.post(
                self._responses_url, data=orjson.dumps(payload), headers=self._stream_headers,
                timeout=self._client_timeout(timeouts),
            )
            await self._check_stream(resp)
            protocol = resp.connection.protocol if resp.connection is not None else None
            async for batch in iter_data_batches(bounded_events(resp.content.iter_any())):
                for data in batch:
                    try:
                        event = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        raise UpstreamError(502, f"upstream {self.deployment.id} sent a malformed stream event",
                                            kind="protocol", type="api_error", code="upstream_protocol_error",
                                            usage=usage) from None
                    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                        raise UpstreamError(502, f"upstream {self.deployment.id} sent a stream event without a "
                                            "type", kind="protocol", type="api_error",
                                            code="upstream_protocol_error", usage=usage)
                    etype = event["type"]
                    response = event.get("response")
                    if isinstance(response, dict) and response.get("usage"):
                        usage = response["usage"]
                    if etype == "error":  # {type: error, code, message, param}
                        nested = event.get("error")
                        raise self._stream_error_event(
                            nested if isinstance(nested, dict) else
                            {"code": event.get("code"), "message": event.get("message"), "param": event.get("param")},
                            usage)
                    if etype == "response.failed":
                        raise self._stream_error_event((response or {}).get("error") or {}, usage)
                    if phase == "first_token":
                        phase = "stream_idle"
                        if protocol is not None:
                            protocol.read_timeout = timeouts.stream_idle
                    yield event
                    if etype in ("response.completed", "response.incomplete"):
                        complete = True
                        break
                if complete:
                    break
            if not complete:
                raise UpstreamError(502, f"upstream {self.deployment.id} ended the stream before the response was "
                                    "complete", kind="stream_cut", type="api_error", code="upstream_stream_cut",
                                    usage=usage)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc, phase, timeouts, after_headers=resp is not None,
                                        usage=usage) from None
        except BodyTooLarge as exc:
            raise too_large_error(self.deployment.id, exc, usage) from None
        finally:
            if resp is not None:
                if complete:
                    resp.release()
                else:
                    resp.close()

    async def _check_stream(self, resp: aiohttp.ClientResponse) -> None:
        """Raise the UpstreamError for a streaming request's response that is not an event stream."""
        if resp.status >= 400:
            raise self._status_error(resp.status, await read_error_body(resp), resp.headers)
        ctype = resp.headers.get("Content-Type", "")
        if not ctype.startswith("text/event-stream"):
            raw = await read_error_body(resp)  # not a stream: at most an error's worth is read
            if ctype.startswith(_JSON) and b'"error"' in raw:
                raise self._status_error(502, raw, resp.headers)
            raise self._protocol_error(f"a stream with content-type {ctype or 'none'!r}", pick_headers(resp.headers))

    async def chat_stream(self, body: dict[str, Any], timeouts: Timeouts) -> AsyncIterator[dict[str, Any]]:
        payload = dict(body)
        payload["model"] = self._body_model(body["model"])
        payload["stream"] = True
        phase = "first_token"
        usage: dict[str, Any] | None = None
        tool_index: dict[str, int] | None = {} if self._repair_tools else None  # call id -> index, this stream
        with_tools: set[Any] = set()  # choice indexes whose deltas carried tool calls
        finished = False  # a finish_reason or [DONE] was seen
        complete = False  # the upstream's response was read to its end
        resp: aiohttp.ClientResponse | None = None
        try:
            resp = await self.session.post(
                self._chat_url, data=orjson.dumps(payload), headers=self._stream_headers,
                timeout=self._client_timeout(timeouts),
            )
            await self._check_stream(resp)
            protocol = resp.connection.protocol if resp.connection is not None else None
            # one generator step per socket read, not per event: a read often holds dozens of events
            async for batch in iter_data_batches(bounded_events(resp.content.iter_any())):
                for data in batch:
                    if data == _DONE:
                        finished = complete = True
                        break
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        raise UpstreamError(502, f"upstream {self.deployment.id} sent a malformed stream chunk",
                                            kind="protocol", type="api_error", code="upstream_protocol_error",
                                            usage=usage) from None
                    if not isinstance(chunk, dict):
                        raise UpstreamError(502, f"upstream {self.deployment.id} sent a stream chunk that is "
                                            "not an object", kind="protocol", type="api_error",
                                            code="upstream_protocol_error", usage=usage)
                    if chunk.get("error") is not None:
                        raise self._stream_error_event(chunk["error"], usage)
                    if phase == "first_token":
                        phase = "stream_idle"
                        if protocol is not None:
                            protocol.read_timeout = timeouts.stream_idle
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for c in chunk.get("choices") or ():
                        if tool_index is not None and isinstance(c.get("delta"), dict) and c["delta"].get("tool_calls"):
                            _repair_tool_calls(c["delta"]["tool_calls"], tool_index)
                            with_tools.add(c.get("index", 0))
                        if c.get("finish_reason"):
                            finished = True
                            if tool_index is not None:  # an openai_compatible host
                                _normalize_finish_reason(c, c.get("index", 0) in with_tools)
                    out = self._normalize_chunk(chunk)
                    if out is not None:
                        yield out
                if complete:
                    break
            else:
                complete = True
                if not finished:
                    raise UpstreamError(502, f"upstream {self.deployment.id} ended the stream before it was "
                                        "complete", kind="stream_cut", type="api_error",
                                        code="upstream_stream_cut", usage=usage)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc, phase, timeouts, after_headers=resp is not None,
                                        usage=usage) from None
        except BodyTooLarge as exc:
            raise too_large_error(self.deployment.id, exc, usage) from None
        finally:
            if resp is not None:
                if complete:
                    resp.release()  # back to the keep-alive pool
                else:
                    resp.close()  # failed, or the consumer stopped early: drop the connection

    # ------------------------------------------------------------ plumbing

    async def _post(self, url: URL, payload: dict[str, Any], timeouts: Timeouts) -> ChatResult:
        resp: aiohttp.ClientResponse | None = None
        try:
            resp = await self.session.post(url, data=orjson.dumps(payload), headers=self._headers,
                                           timeout=self._client_timeout(timeouts))
            conn = resp.connection
            if conn is not None and conn.protocol is not None:
                conn.protocol.read_timeout = timeouts.stream_idle
            # an error's body is read only as far as its message can go; an answer up to MAX_ANSWER_BODY
            raw = await (read_error_body(resp) if resp.status >= 400 else read_answer(resp))
        except (TimeoutError, aiohttp.ClientError) as exc:
            if resp is not None:
                resp.close()
            raise self._transport_error(exc, "first_token" if resp is None else "stream_idle", timeouts,
                                        after_headers=resp is not None) from None
        except BodyTooLarge as exc:
            raise too_large_error(self.deployment.id, exc) from None
        status = resp.status
        if status >= 400:
            raise self._status_error(status, raw, resp.headers)
        headers = pick_headers(resp.headers)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise self._protocol_error("a body that is not JSON", headers) from None
        if not isinstance(body, dict):
            raise self._protocol_error("a JSON body that is not an object", headers)
        return ChatResult(body=body, headers=headers, status=status)

    def _client_timeout(self, t: Timeouts) -> aiohttp.ClientTimeout:
        ct = self._client_timeouts.get(t)
        if ct is None:
            ct = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.first_token)
            if len(self._client_timeouts) >= MAX_CACHED_TIMEOUTS:  # per-request `tiergate.timeouts` vary freely
                self._client_timeouts.clear()
            self._client_timeouts[t] = ct
        return ct

    def _protocol_error(self, what: str, headers: dict[str, str]) -> UpstreamError:
        return UpstreamError(502, f"upstream {self.deployment.id} answered with {what}", kind="protocol",
                             type="api_error", code="upstream_protocol_error", headers=headers)

    def _transport_error(
        self,
        exc: BaseException,
        phase: str,
        t: Timeouts,
        *,
        after_headers: bool,
        usage: dict[str, Any] | None = None,
    ) -> UpstreamError:
        dep = self.deployment.id
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return _timeout(f"could not connect to upstream {dep} within {t.connect}s (connect timeout)", usage,
                            "connect")
        if isinstance(exc, aiohttp.SocketTimeoutError):
            if phase == "stream_idle":
                return _timeout(f"upstream {dep} sent nothing for {t.stream_idle}s (stream_idle timeout)", usage,
                                "stream_idle")
            what = "the first chunk" if after_headers else "a response"
            return _timeout(f"upstream {dep} sent {what} after more than {t.first_token}s (first_token timeout)",
                            usage, "first_token")
        if isinstance(exc, asyncio.TimeoutError):
            return _timeout(f"upstream {dep} did not finish within {t.total}s (total timeout)", usage, "total")
        kind, code, message, detail = transport_failure(exc, dep, after_headers=after_headers, secrets=self._secrets)
        return UpstreamError(502, message, kind=kind, type="api_error", code=code,
                             usage=usage if kind == "stream_cut" else None, detail=detail)

    def _stream_error_event(self, err: Any, usage: dict[str, Any] | None) -> UpstreamError:
        if not isinstance(err, dict):
            err = {"message": str(err)}
        etype = _str_or_none(err.get("type"))
        code = _str_or_none(err.get("code"))
        status = _STATUS_FOR_TYPE.get(etype or "", 0) or _STATUS_FOR_TYPE.get(code or "", 0) or 502
        kind = "status" if 400 <= status < 500 and status not in (408, 409, 429) else "stream_cut"
        message = scrub(_str_or_none(err.get("message")) or "upstream sent an error event mid-stream", self._secrets)
        return UpstreamError(status, message, kind=kind, type=etype, code=code,
                             param=_str_or_none(err.get("param")), usage=usage)


def _timeout(message: str, usage: dict[str, Any] | None, phase: str) -> UpstreamError:
    return UpstreamError(504, message, kind="timeout", type="timeout_error", code="upstream_timeout", usage=usage,
                         phase=phase)


def _str_or_none(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else str(v)
