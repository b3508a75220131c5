"""Server-sent events as the OpenAI API frames them: `data: {json}\\n\\n`, ending with `data: [DONE]`
(wire facts §2c). Encoding for the client side, incremental decoding for the upstream side."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def encode(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def encode_event(event: str, obj: Any) -> bytes:
    """A named event, as the Responses API streams them (`event: name` + `data:`)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


class DataDecoder:
    """Incremental decoder of `data:` fields, synchronous so that a reader parses a whole socket read
    at once: `feed(piece)` returns the payloads completed by that read (multi-line fields joined with
    newlines; comment lines and `event:`/`id:` fields skipped); `close()` returns a last field cut off
    without its blank line."""

    __slots__ = ("_buf", "_lines")

    def __init__(self) -> None:
        self._buf = b""
        self._lines: list[bytes] = []

    def feed(self, piece: bytes) -> list[bytes]:
        buf = self._buf + piece if self._buf else bytes(piece)
        out: list[bytes] = []
        lines = self._lines
        pos = 0  # scan by index: slicing the rest of the buffer per line would copy it once per line
        if not lines and b"\r" not in buf:
            # the common framing, one `data: {...}` line per event: an event is taken whole (a search for its
            # blank line, one for a second line) instead of line by line; anything else (comments, other
            # fields, multi-line data, CRLF, a payload starting with a space) goes through the loop below
            find, startswith = buf.find, buf.startswith
            while True:
                end = find(b"\n\n", pos)
                if end < 0 or not startswith(b"data: ", pos) or buf[pos + 6] == 32 or find(b"\n", pos, end) >= 0:
                    break
                out.append(buf[pos + 6:end])
                pos = end + 2
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            line = buf[pos:nl].rstrip(b"\r")
            pos = nl + 1
            if not line:
                if lines:
                    out.append(lines[0] if len(lines) == 1 else b"\n".join(lines))
                    lines = []
                continue
            if line.startswith(b"data:"):
                lines.append(line[5:].lstrip(b" "))
        self._lines = lines
        self._buf = buf[pos:] if pos else buf
        return out

    def close(self) -> list[bytes]:
        rest, lines = self._buf.strip(), self._lines
        self._buf, self._lines = b"", []
        if rest.startswith(b"data:"):
            lines.append(rest[5:].lstrip(b" "))
        return [b"\n".join(lines)] if lines else []


class iter_data_batches:  # (lower case: it replaced a generator function of this name)
    """The payloads of `iter_data`, one non-empty list per read: one step per read rather than per event
    (an upstream read often holds dozens of events).

    A plain async iterator, not an async generator: a relay that stops at `[DONE]` drops it unfinished, and
    an unfinished async generator is finalised through the event loop (`call_soon_threadsafe`: an eventfd
    write and read, and a task to run its `aclose`), per stream and per generator."""

    __slots__ = ("_decoder", "_done", "_next")

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._next = chunks.__aiter__().__anext__
        self._decoder = DataDecoder()
        self._done = False

    def __aiter__(self) -> iter_data_batches:
        return self

    async def __anext__(self) -> list[bytes]:
        if self._done:
            raise StopAsyncIteration
        feed = self._decoder.feed
        while True:
            try:
                piece = await self._next()
            except StopAsyncIteration:
                self._done = True
                tail = self._decoder.close()
                if tail:
                    return tail
                raise
            batch = feed(piece)
            if batch:
                return batch


class iter_data:  # (lower case: it replaced a generator function of this name)
    """The payload of every `data:` field from a byte stream, joined across reads (a plain async iterator,
    for the reason `iter_data_batches` gives).

    Multi-line data fields are joined with newlines, per the SSE specification. Comment lines
    (`: keep-alive`) and `event:`/`id:` fields are skipped."""

    __slots__ = ("_batches", "_pending")

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._batches = iter_data_batches(chunks)
        self._pending: list[bytes] = []

    def __aiter__(self) -> iter_data:
        return self

    async def __anext__(self) -> bytes:
        if not self._pending:
            self._pending = await self._batches.__anext__()
            self._pending.reverse()
        return self._pending.pop()
