"""A fast loopback fake OpenAI upstream for the overhead benchmark (bench/overhead.py).

It answers `POST /v1/chat/completions` instantly, non-streaming or as an SSE stream with a
realistic number of chunks, and `GET /v1/models`. It is a raw asyncio protocol (uvloop when
installed) with a tiny HTTP/1.1 parser and keep-alive, so that it costs far less CPU per
request than any gateway in front of it: the benchmark measures the gateway, not this.

Responses are built once per (model, stream, include_usage) shape and cached; only `id` and
`created` would differ in real traffic and a fixed value is fine for a benchmark.

    python bench/upstream.py --port 9100 [--chunks 32] [--ttft-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from typing import cast

import orjson

_CRLF2 = b"\r\n\r\n"
_MAX_HEADER = 64 * 1024
_TEXT = (
    "The quick brown fox jumps over the lazy dog while the gateway counts every token it sees "
    "and prices each one to the cent before the answer reaches the client"
)
_WORDS = _TEXT.split(" ")


def _completion_body(model: str, chunks: int) -> bytes:
    text = " ".join(_WORDS[i % len(_WORDS)] for i in range(chunks))
    return orjson.dumps(
        {
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion",
            "created": 1_760_000_000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(chunks),
            "service_tier": "default",
            "system_fingerprint": "fp_bench",
        }
    )


def _usage(chunks: int) -> dict[str, object]:
    return {
        "prompt_tokens": 24,
        "completion_tokens": chunks,
        "total_tokens": 24 + chunks,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _stream_events(model: str, chunks: int, include_usage: bool) -> list[bytes]:
    """One SSE event per list item, in order, ending with `data: [DONE]`."""
    base = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": 1_760_000_000,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_bench",
    }

    def chunk(delta: dict[str, object], finish: str | None) -> dict[str, object]:
        out: dict[str, object] = dict(base)
        out["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        if include_usage:
            out["usage"] = None
        return out

    payloads = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    for i in range(chunks):
        word = _WORDS[i % len(_WORDS)]
        payloads.append(chunk({"content": word if i == 0 else " " + word}, None))
    payloads.append(chunk({}, "stop"))
    if include_usage:
        final: dict[str, object] = dict(base)
        final["choices"] = []
        final["usage"] = _usage(chunks)
        payloads.append(final)
    events = [b"data: " + orjson.dumps(p) + b"\n\n" for p in payloads]
    events.append(b"data: [DONE]\n\n")
    return events


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Responses:
    """Caches the full HTTP response bytes for each request shape."""

    def __init__(self, chunks: int) -> None:
        self._chunks = chunks
        self._cache: dict[tuple[str, bool, bool], tuple[bytes, bytes]] = {}

    def chat(self, model: str, stream: bool, include_usage: bool) -> tuple[bytes, bytes]:
        """(head, rest): `head` is what a streaming client sees first (headers, the role chunk and the
        first content chunk); `--ttft-ms` pauses between the two."""
        key = (model, stream, include_usage)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if stream:
            events = _stream_events(model, self._chunks, include_usage)
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
            ) + b"".join(_http_chunk(e) for e in events[:2])
            rest = b"".join(_http_chunk(e) for e in events[2:]) + b"0\r\n\r\n"
            hit = (head, rest)
        else:
            body = _completion_body(model, self._chunks)
            hit = (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body),
                b"",
            )
        if len(self._cache) < 1024:
            self._cache[key] = hit
        return hit


def _simple(status: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        len(body),
        body,
    )


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests are handled strictly in order."""

    def __init__(self, responses: Responses, ttft_s: float) -> None:
        self._responses = responses
        self._ttft_s = ttft_s
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._drain()

    def _drain(self) -> None:
        while self._transport is not None and not self._busy:
            parsed = self._parse_one()
            if parsed is None:
                return
            method, path, body = parsed
            self._dispatch(method, path, body)

    def _parse_one(self) -> tuple[bytes, bytes, bytes] | None:
        buf = self._buf
        end = buf.find(_CRLF2)
        if end < 0:
            if len(buf) > _MAX_HEADER:
                self._fail(b"431 Request Header Fields Too Large")
            return None
        head = buf[:end].split(b"\r\n")
        try:
            method, path, _ = head[0].split(b" ", 2)
        except ValueError:
            self._fail(b"400 Bad Request")
            return None
        length = 0
        chunked = False
        for line in head[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        start = end + 4
        if chunked:
            decoded = _dechunk(buf, start)
            if decoded is None:
                return None
            body, consumed = decoded
            self._buf = buf[consumed:]
            return method, path, body
        if len(buf) - start < length:
            return None
        self._buf = buf[start + length :]
        return method, path, buf[start : start + length]

    def _dispatch(self, method: bytes, path: bytes, body: bytes) -> None:
        assert self._transport is not None
        path = path.split(b"?", 1)[0]
        if method == b"POST" and path.endswith(b"/chat/completions"):
            try:
                req = orjson.loads(body)
                model = str(req.get("model", "bench-model"))
                stream = bool(req.get("stream"))
                opts = req.get("stream_options") or {}
                include_usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False
            except (orjson.JSONDecodeError, AttributeError):
                self._transport.write(_simple(b"400 Bad Request", b'{"error":{"message":"bad json"}}'))
                return
            head, rest = self._responses.chat(model, stream, include_usage)
            if stream and self._ttft_s > 0:
                self._busy = True
                self._transport.write(head)
                asyncio.get_running_loop().call_later(self._ttft_s, self._finish, rest)
                return
            self._transport.write(head + rest if rest else head)
        elif method == b"GET" and path.endswith(b"/models"):
            self._transport.write(
                _simple(b"200 OK", b'{"object":"list","data":[{"id":"bench-model","object":"model",'
                        b'"created":1760000000,"owned_by":"bench"}]}')
            )
        elif method == b"GET" and path in (b"/health", b"/"):
            self._transport.write(_simple(b"200 OK", b'{"status":"ok"}'))
        else:
            self._transport.write(_simple(b"404 Not Found", b'{"error":{"message":"not found"}}'))

    def _finish(self, rest: bytes) -> None:
        self._busy = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(rest)
            self._drain()

    def _fail(self, status: bytes) -> None:
        if self._transport is not None:
            self._transport.write(_simple(status, b'{"error":{"message":"bad request"}}'))
            self._transport.close()
            self._transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def _dechunk(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at `pos`; None when it is not complete yet."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 2
        if len(buf) < pos + size + 2:
            return None
        parts.append(buf[pos : pos + size])
        pos += size + 2


async def serve(host: str, port: int, chunks: int, ttft_ms: float) -> None:
    loop = asyncio.get_running_loop()
    responses = Responses(chunks)
    server = await loop.create_server(
        lambda: UpstreamProtocol(responses, ttft_ms / 1000.0), host, port, backlog=1024, reuse_address=True
    )
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    print(f"upstream listening on http://{host}:{port}/v1 pid={os.getpid()} t={time.time():.0f}", flush=True)
    async with server:
        await stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=32, help="content chunks per stream (= completion tokens)")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="pause after a stream's first content chunk")
    args = parser.parse_args()
    coro = serve(args.host, args.port, args.chunks, args.ttft_ms)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()
