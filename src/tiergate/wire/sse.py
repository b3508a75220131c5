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


async def iter_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yield the payload of every `data:` field from a byte stream, joined across reads.

    Multi-line data fields are joined with newlines, per the SSE specification. Comment lines
    (`: keep-alive`) and `event:`/`id:` fields are skipped."""
    buf = b""
    data_lines: list[bytes] = []
    async for piece in chunks:
        buf = buf + piece if buf else bytes(piece)
        pos = 0  # scan by index: slicing the rest of the buffer per line copied it once per line
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            line = buf[pos:nl].rstrip(b"\r")
            pos = nl + 1
            if not line:
                if data_lines:
                    yield data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
                    data_lines = []
                continue
            if line.startswith(b"data:"):
                data_lines.append(line[5:].lstrip(b" "))
        buf = buf[pos:] if pos else buf
    if buf.strip().startswith(b"data:"):
        data_lines.append(buf.strip()[5:].lstrip(b" "))
    if data_lines:
        yield b"\n".join(data_lines)
