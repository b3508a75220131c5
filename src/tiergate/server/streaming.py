"""A streaming response for SSE relays that writes each burst of chunks with one send.

An upstream's SSE chunks arrive in bursts: one socket read often holds dozens of events. Starlette's
`StreamingResponse` sends once per chunk (one ASGI message through every middleware, one socket
write each) and watches for a client disconnect through an anyio task group; measured with
`bench/overhead.py` those per-chunk sends were the largest single cost of a streamed request.

`BurstStreamingResponse` keeps Starlette's headers and semantics but moves the chunk iterator into a
pump task that appends to a buffer, while the request's task sends whatever has accumulated each
time the pump has to wait for the upstream. A burst becomes one write; a chunk that arrives alone is
still sent as soon as it arrives, so time to first token is unchanged. The buffer is bounded
(`high_water` bytes): past it the pump waits for the client to catch up. When the client disconnects
(ASGI `http.disconnect`), the pump is cancelled, which closes the iterator so its `finally` runs
(the chat relay records the ledger row there).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

HIGH_WATER = 256 * 1024  # bytes buffered before the pump waits for the client


class _Pipe:
    """The buffer between the pump task and the sender, with its two wake-ups."""

    __slots__ = ("done", "drained", "gone", "parts", "size", "wake")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.done = False  # the iterator is exhausted (or failed)
        self.gone = False  # the client disconnected
        self.wake = asyncio.Event()  # something to send, the end, or the client left
        self.drained = asyncio.Event()  # the sender emptied the buffer

    def take(self) -> bytes:
        parts = self.parts  # emptied in place: the pump holds on to this list
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        self.size = 0
        return data


class BurstStreamingResponse(StreamingResponse):
    """`StreamingResponse` for an async iterator of bytes, sending bursts of chunks as one message."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        high_water: int = HIGH_WATER,
    ) -> None:
        super().__init__(content, status_code=status_code, headers=headers, media_type=media_type)
        self.high_water = high_water

    async def _pump(self, pipe: _Pipe) -> None:
        parts, wake, high_water = pipe.parts, pipe.wake, self.high_water
        try:
            async for chunk in self.body_iterator:
                if type(chunk) is not bytes:
                    chunk = bytes(chunk) if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset)
                parts.append(chunk)  # pipe.put, inlined: this runs once per SSE chunk
                pipe.size += len(chunk)
                wake.set()
                if pipe.size > high_water:
                    pipe.drained.clear()
                    await pipe.drained.wait()
        finally:
            pipe.done = True
            pipe.wake.set()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()  # no-op when exhausted; runs the iterator's `finally` when cut short

    @staticmethod
    async def _listen(receive: Receive, pipe: _Pipe) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        pipe.gone = True
        pipe.wake.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        pipe = _Pipe()
        loop = asyncio.get_running_loop()
        pump = loop.create_task(self._pump(pipe))
        listener = loop.create_task(self._listen(receive, pipe))
        try:
            while True:
                await pipe.wake.wait()
                pipe.wake.clear()
                if pipe.gone:
                    break
                if pipe.done and not (pump.done() and not pump.cancelled() and pump.exception()):
                    break  # the rest goes out with the end of the body: one write fewer
                if pipe.parts:
                    await send({"type": "http.response.body", "body": pipe.take(), "more_body": True})
                    pipe.drained.set()
                if pipe.done:
                    break
        finally:
            if not pump.done():
                pump.cancel()
            try:
                await pump  # re-raises an error from the iterator; a cancelled pump is expected
            except asyncio.CancelledError:
                if not pipe.gone:
                    raise
            finally:
                if not pipe.gone:
                    listener.cancel()
        if not pipe.gone:
            await send({"type": "http.response.body", "body": pipe.take(), "more_body": False})
        if self.background is not None:
            await self.background()
