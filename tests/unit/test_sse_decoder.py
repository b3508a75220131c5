"""wire/sse.py decoding: DataDecoder, iter_data_batches (one list per read) and iter_data agree with
a plain line-by-line reading of the SSE format, however the bytes are split across reads."""

from __future__ import annotations

import asyncio
import random

from tiergate.wire.sse import DataDecoder, iter_data, iter_data_batches


def reference(blob: bytes) -> list[bytes]:
    """The SSE rules as the gateway applies them, on the whole stream at once."""
    out: list[bytes] = []
    lines: list[bytes] = []
    *complete, rest = blob.split(b"\n")
    for raw in complete:
        line = raw.rstrip(b"\r")
        if not line:
            if lines:
                out.append(b"\n".join(lines))
                lines = []
        elif line.startswith(b"data:"):
            lines.append(line[5:].lstrip(b" "))
    if rest.strip().startswith(b"data:"):
        lines.append(rest.strip()[5:].lstrip(b" "))
    if lines:
        out.append(b"\n".join(lines))
    return out


async def _reads(parts: list[bytes]):
    for p in parts:
        yield p


def _collect(gen) -> list:
    async def run():
        return [x async for x in gen]

    return asyncio.run(run())


def test_events_comments_multiline_crlf_and_a_cut_tail():
    blob = (b": keep-alive\n\ndata: {\"a\":1}\n\nevent: x\nid: 7\ndata: line1\r\ndata:line2\r\n\r\n"
            b"data: [DONE]")
    assert reference(blob) == [b'{"a":1}', b"line1\nline2", b"[DONE]"]
    d = DataDecoder()
    assert d.feed(blob[:10]) == []
    assert d.feed(blob[10:]) == [b'{"a":1}', b"line1\nline2"]
    assert d.close() == [b"[DONE]"]
    assert d.close() == []


def test_one_batch_per_read_that_completes_events():
    parts = [b"data: 1\n\ndata: 2\n\ndata: 3", b"\n\n", b": ping\n\n", b"data: 4\n\n"]
    assert _collect(iter_data_batches(_reads(parts))) == [[b"1", b"2"], [b"3"], [b"4"]]


def test_any_split_of_random_streams_decodes_like_the_reference():
    rng = random.Random(7)
    pieces = [b"data: ", b"data:", b"x", b'{"a":1}', b"\n", b"\r\n", b"\n\n", b": ping\n", b"event: e\n",
              b"id: 3\n", b" ", b"[DONE]", b"\r"]
    for _ in range(1500):
        blob = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        cuts = sorted(rng.sample(range(len(blob) + 1), min(len(blob) + 1, rng.randint(0, 6))))
        parts = [blob[i:j] for i, j in zip([0, *cuts], [*cuts, len(blob)], strict=True)]
        expected = reference(blob)
        assert _collect(iter_data(_reads(parts))) == expected
        assert [x for batch in _collect(iter_data_batches(_reads(parts))) for x in batch] == expected
