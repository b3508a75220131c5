"""BurstStreamingResponse: bursts become one send, lone chunks go out at once, a client disconnect
closes the iterator (so the relay's `finally` books the row), and errors still surface."""

from __future__ import annotations

import asyncio

import pytest

from tiergate.server.streaming import BurstStreamingResponse

SCOPE = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "method": "POST", "path": "/"}


class Client:
    """Records what the response sends; `receive` answers http.disconnect once `leave` is set."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.leave = asyncio.Event()

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    async def receive(self) -> dict:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body" and m.get("more_body")]


async def test_a_burst_is_one_send_and_the_stream_ends_properly():
    async def burst():
        for i in range(10):
            yield b"data: %d\n\n" % i

    client = Client()
    await BurstStreamingResponse(burst(), media_type="text/event-stream")(SCOPE, client.receive, client.send)
    assert client.sent[0]["type"] == "http.response.start"
    assert (b"content-type", b"text/event-stream; charset=utf-8") in client.sent[0]["headers"]
    assert len(client.sent) == 2  # the whole burst went out with the end of the body
    assert client.sent[-1] == {"type": "http.response.body", "more_body": False,
                               "body": b"".join(b"data: %d\n\n" % i for i in range(10))}


async def test_chunks_that_arrive_apart_are_sent_apart_without_waiting_for_more():
    seen_before_next: list[int] = []
    client = Client()

    async def slow():
        for i in range(3):
            yield b"%d" % i
            await asyncio.sleep(0.01)
            seen_before_next.append(len(client.bodies()))

    await BurstStreamingResponse(slow())(SCOPE, client.receive, client.send)
    assert client.bodies() == [b"0", b"1", b"2"]
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert seen_before_next == [1, 2, 3]  # each chunk was on the wire before the next one was produced


async def test_client_disconnect_closes_the_iterator_and_stops_sending():
    client = Client()
    closed = asyncio.Event()
    produced = 0

    async def endless():
        nonlocal produced
        try:
            while True:
                produced += 1
                yield b"x"
                if produced == 3:
                    client.leave.set()
                await asyncio.sleep(0.005)
        finally:
            closed.set()

    await asyncio.wait_for(BurstStreamingResponse(endless())(SCOPE, client.receive, client.send), 5)
    assert closed.is_set()
    assert produced < 10
    assert not any(m.get("more_body") is False for m in client.sent[1:])  # no end-of-body after the client left


async def test_an_error_in_the_iterator_is_raised_after_what_was_produced_is_sent():
    async def broken():
        yield b"first"
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    client = Client()
    with pytest.raises(RuntimeError, match="boom"):
        await BurstStreamingResponse(broken())(SCOPE, client.receive, client.send)
    assert client.bodies() == [b"first"]


async def test_the_buffer_is_bounded_when_the_client_is_slow():
    class SlowClient(Client):
        async def send(self, message: dict) -> None:
            await asyncio.sleep(0.01)
            self.sent.append(message)

    client = SlowClient()

    async def fast():
        for _ in range(20):
            yield b"y" * 100
            await asyncio.sleep(0)

    await BurstStreamingResponse(fast(), high_water=250)(SCOPE, client.receive, client.send)
    bodies = client.bodies()
    assert b"".join(bodies) + client.sent[-1]["body"] == b"y" * 2000
    assert max(len(b) for b in bodies) <= 300  # never more than high_water plus one chunk queued
