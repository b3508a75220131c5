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


async def iter_data_batches(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """The payloads of `iter_data`, one non-empty list per read: one generator step per read rather
    than per event (an upstream read often holds dozens of events)."""
    decoder = DataDecoder()
    async for piece in chunks:
        batch = decoder.feed(piece)
        if batch:
            yield batch
    tail = decoder.close()
    if tail:
        yield tail


async def iter_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yield the payload of every `data:` field from a byte stream, joined across reads.

    Multi-line data fields are joined with newlines, per the SSE specification. Comment lines
    (`: keep-alive`) and `event:`/`id:` fields are skipped."""
    async for batch in iter_data_batches(chunks):
        for data in batch:
            yield data
