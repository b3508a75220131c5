"""Upstream back-off hints, circuit timing slack, deployment faults and bounded reads, unit by unit:
`parse_retry_after` (an `x-ratelimit-reset-*` is a hint only for an exhausted limit), the circuit's
timer slack (uvloop wakes a timer up to ~1 ms early), `deployment_fault` / `model_missing` (a
deployment's own bad key or missing model fails over; a client-caused 404 does not), the stream-event
bound, and the providers' bounded body reads against a tiny loopback server."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

import pytest
from aiohttp import web

from tiergate.config import CircuitPolicy
from tiergate.dispatch.circuit import HALF_OPEN, OPEN, CircuitBreaker
from tiergate.dispatch.retry import (
    counts_against_circuit,
    deployment_fault,
    fails_over,
    model_missing,
    retryable,
)
from tiergate.providers import http
from tiergate.providers.base import Deployment, Secret, Timeouts, UpstreamError
from tiergate.providers.http import BodyTooLarge, SharedSession, bounded_events, parse_retry_after
from tiergate.providers.registry import provider_class

XRL = {"x-ratelimit-limit-requests": "5000", "x-ratelimit-remaining-requests": "4999",
       "x-ratelimit-reset-requests": "8.64s", "x-ratelimit-limit-tokens": "160000",
       "x-ratelimit-remaining-tokens": "159000", "x-ratelimit-reset-tokens": "6m0s"}


# ---------------------------------------------------------------- parse_retry_after


@pytest.mark.parametrize("status", [429, 500, 503])
def test_ordinary_ratelimit_headers_are_no_hint(status):
    assert parse_retry_after(XRL, status) is None


def test_an_exhausted_limit_is_a_hint():
    assert parse_retry_after({**XRL, "x-ratelimit-remaining-tokens": "0"}, 429) == 360.0
    assert parse_retry_after({**XRL, "x-ratelimit-remaining-requests": "0"}, 500) == pytest.approx(8.64)
    both = {**XRL, "x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "0"}
    assert parse_retry_after(both, 429) == 360.0  # both used up: wait for the later reset
    # a 429 that does not say what remains: the shortest reset; any other status: no hint
    resets = {"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "6m0s"}
    assert parse_retry_after(resets, 429) == 2.0
    assert parse_retry_after(resets, 503) is None
    # explicit headers still win, whatever the status
    assert parse_retry_after({**XRL, "retry-after-ms": "250.3"}, 500) == pytest.approx(0.2503)
    assert parse_retry_after({**XRL, "retry-after": "3"}, 503) == 3.0


def test_upstream_error_from_the_openai_provider_has_no_hint_for_ordinary_headers():
    p = provider_class("openai")(Deployment(id="d", model="m", provider="openai"), lambda: None)
    err = p._status_error(500, b'{"error": {"message": "boom", "type": "server_error"}}', XRL)
    assert err.retry_after is None
    err = p._status_error(429, b'{"error": {"message": "slow down"}}',
                          {**XRL, "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "0.2503s"})
    assert err.retry_after == pytest.approx(0.2503)


# ---------------------------------------------------------------- circuit timer slack


def test_a_circuit_tripped_for_a_fraction_is_over_when_a_timer_wakes_a_little_early():
    cb = CircuitBreaker(CircuitPolicy(failures=5, window_s=30, cooldown_s=30))
    ra = parse_retry_after({"retry-after": formatdate(time.time() + 2, usegmt=True)})
    assert ra is not None and ra != int(ra)
    cb.trip(100.0, 0.2503)
    assert not cb.available(100.1)
    assert cb.recovers_in(100.1) == pytest.approx(0.1503)
    # uvloop rounds the sleep to 250 ms and its clock to whole ms: it wakes at 100.2495
    assert cb.state_at(100.2495) == HALF_OPEN
    assert cb.recovers_in(100.2495) == 0.0
    assert cb.available(100.2495)
    cb.trip(200.0, 1.0)
    assert cb.state == OPEN and not cb.available(200.9)  # the slack is a few ms, not more


# ---------------------------------------------------------------- deployment faults


def _err(status: int, message: str = "x", code: str | None = None, kind: str = "status") -> UpstreamError:
    return UpstreamError(status, message, code=code, kind=kind)


@pytest.mark.parametrize("e", [
    _err(401, "Incorrect API key provided", "invalid_api_key"),
    _err(403, "Your API key does not have permission", "permission_error"),
    _err(404, "The model `gpt-4o-mini` does not exist or you do not have access to it.", "model_not_found"),
    _err(404, "The API deployment for this resource does not exist.", "DeploymentNotFound"),
    _err(404, "anthropic: model: claude-9 (Anthropic did not find the upstream model ...)", "not_found_error"),
    _err(404, "The model `llama-9` does not exist.", "404"),  # vLLM
    _err(404, 'model "llama9" not found, try pulling it first'),  # Ollama
])
def test_a_deployments_own_fault_fails_over_and_counts(e):
    assert deployment_fault(e) and fails_over(e) and counts_against_circuit(e)
    assert not retryable(e)  # never the same deployment again


@pytest.mark.parametrize("e", [
    _err(404, "Previous response with id 'resp_x' not found.", "previous_response_not_found"),
    _err(404, "Previous response with id 'model x not found' not found."),  # a client-chosen id
    _err(404, "No such File object: file-abc"),
    _err(404, "anthropic: File not found: file_abc", "not_found_error"),
    _err(404, "upstream returned HTTP 404"),
    _err(400, "The model `x` does not exist", "model_not_found"),
    _err(422, "bad"),
])
def test_a_client_caused_error_neither_fails_over_nor_counts(e):
    assert not model_missing(e) and not deployment_fault(e)
    assert not fails_over(e) and not counts_against_circuit(e)


# ---------------------------------------------------------------- bounded reads


async def _pieces(*parts: bytes):
    for p in parts:
        yield p


async def test_stream_event_bound():
    ok = [b"data: " + b"a" * 600 + b"\n\n"] * 10  # many events, each under the limit
    assert [p async for p in bounded_events(_pieces(*ok), limit=1000)] == ok
    split = [b"data: " + b"a" * 600 + b"\n", b"\n" + b"data: " + b"b" * 600, b"\n\n"]  # boundary across reads
    assert len([p async for p in bounded_events(_pieces(*split), limit=1000)]) == 3
    with pytest.raises(BodyTooLarge, match="a stream event larger than 1000 bytes"):
        async for _ in bounded_events(_pieces(b"data: ", *[b"z" * 300] * 10), limit=1000):
            pass


@pytest.fixture
async def server():
    """A loopback server whose answer each test sets: `state["handler"] = async fn(request)`."""
    state: dict = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        return await state["handler"](request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


def _anthropic(url: str, sessions: SharedSession):
    dep = Deployment(id="claude/0", model="claude-3-5-haiku", provider="anthropic", api_base=url,
                     api_key=Secret("env:K", "sk-ant-test-0123456789"), upstream_model="claude-3-5-haiku-20241022")
    return provider_class("anthropic")(dep, sessions)


BODY = {"model": "claude-3-5-haiku", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


async def test_anthropic_missing_model_is_a_deployment_fault_and_bodies_are_bounded(server, monkeypatch):
    async with SharedSession() as sessions:
        p = _anthropic(server["url"], sessions)

        async def missing(_request):
            return web.json_response({"type": "error", "error": {"type": "not_found_error",
                                                                 "message": "model: claude-3-5-haiku-20241022"}},
                                     status=404)

        server["handler"] = missing
        with pytest.raises(UpstreamError) as ei:
            await p.chat(dict(BODY), Timeouts())
        assert ei.value.status == 404 and model_missing(ei.value) and deployment_fault(ei.value)

        async def no_file(_request):
            return web.json_response({"type": "error", "error": {"type": "not_found_error",
                                                                 "message": "File not found: file_011"}}, status=404)

        server["handler"] = no_file
        with pytest.raises(UpstreamError) as ei:
            await p.chat(dict(BODY), Timeouts())
        assert ei.value.status == 404 and not deployment_fault(ei.value)

        # a 3 MB error page sent over 1 s: only its first 64 KiB is read (at once), the message is a snippet
        async def big_error(request):
            resp = web.StreamResponse(status=500, headers={"Content-Type": "text/html"})
            await resp.prepare(request)
            try:
                for _ in range(50):
                    await resp.write(b"<p>" + b"x" * 65533)
                    await asyncio.sleep(0.02)
            except (ConnectionError, RuntimeError):
                pass
            return resp

        server["handler"] = big_error
        t = time.perf_counter()
        with pytest.raises(UpstreamError) as ei:
            await p.chat(dict(BODY), Timeouts())
        assert time.perf_counter() - t < 0.5
        assert ei.value.status == 500 and len(ei.value.message) < 1000

        # an answer over the limit: a protocol error naming the limit
        monkeypatch.setattr(http, "MAX_ANSWER_BODY", 4096)

        async def huge(_request):
            return web.json_response({"id": "msg_1", "type": "message", "role": "assistant", "model": "c",
                                      "content": [{"type": "text", "text": "y" * 10000}], "stop_reason": "end_turn",
                                      "usage": {"input_tokens": 1, "output_tokens": 1}})

        server["handler"] = huge
        with pytest.raises(UpstreamError) as ei:
            await p.chat(dict(BODY), Timeouts())
        assert ei.value.status == 502 and ei.value.kind == "protocol" and "larger than 4 KiB" in ei.value.message

        # a stream whose first event never ends
        monkeypatch.setattr(http, "MAX_STREAM_EVENT", 4096)

        async def endless(request):
            resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            try:
                await resp.write(b'event: message_start\ndata: {"type": "message_start", "message": {"x": "')
                for _ in range(100):
                    await resp.write(b"z" * 1000)
            except (ConnectionError, RuntimeError):
                pass
            return resp

        server["handler"] = endless
        with pytest.raises(UpstreamError) as ei:
            async for _ in p.chat_stream({**BODY, "stream": True}, Timeouts()):
                pass
        assert ei.value.status == 502 and "a stream event larger than 4 KiB" in ei.value.message
