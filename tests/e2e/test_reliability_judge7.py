"""Retry hints, failover and bounded reads, end to end: a real gateway on loopback, fake upstreams, the
official `openai` SDK (max_retries=0) as the client.

- ordinary `x-ratelimit-*` headers (nothing exhausted) on a 500/503/429 are no Retry-After: the retry
  backs off exponentially instead of waiting for the window's reset, and nothing trips the circuit;
- a Retry-After with a sub-millisecond fraction (retry-after-ms 250.3, an HTTP date) is waited for and
  the retry then happens (uvloop wakes timers up to ~1 ms early: the circuit tripped for the same time
  used to read still open), with and without Redis;
- a deployment whose own key is refused (401/403) or that lacks the model (404 model_not_found) fails
  over to the other deployment / the fallback model and opens its circuit; a client-caused 404 does not;
- upstream bodies are read with bounds (an error body at most 64 KiB, an answer at most
  `MAX_ANSWER_BODY`, a stream event at most `MAX_STREAM_EVENT`);
- no wasted backoff when the failure that just happened opened the only circuit;
- an idle Redis replica's first /metrics scrape shows the circuit another replica opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from email.utils import formatdate
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway
from tests.unit.test_store_fixtures import _redis_up

MSGS = [{"role": "user", "content": "hi"}]
REDIS = "redis://127.0.0.1:6379/0"
XRL = {"x-ratelimit-limit-requests": "5000", "x-ratelimit-remaining-requests": "4999",
       "x-ratelimit-reset-requests": "8.64s", "x-ratelimit-limit-tokens": "160000",
       "x-ratelimit-remaining-tokens": "159000", "x-ratelimit-reset-tokens": "6m0s"}



class Fake(FakeOpenAI):
    """FakeOpenAI plus faults it does not have: `x_status` (status, headers, body: any error with any
    headers), `trickle_error` (a 500 HTML page of `chunks` x 64 KiB, `delay` s apart; `self.trickled`
    counts the chunks written), `huge` (a 200 completion of `mb` MiB), `endless_event` (a 200 event
    stream whose first event never ends)."""

    trickled = 0

    async def _early_fault(self, request: web.Request, f: Any, stream: bool) -> web.StreamResponse | None:
        k, p = f.kind, f.params
        if k == "x_status":
            body = p.get("body") or {"error": {"message": "The server had an error while processing your request.",
                                               "type": "server_error", "param": None, "code": None}}
            return web.Response(status=int(p["status"]), body=orjson.dumps(body), headers=p.get("headers") or {},
                                content_type="application/json")
        if k == "trickle_error":
            resp = web.StreamResponse(status=500, headers={"Content-Type": "text/html"})
            await resp.prepare(request)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write(b"<html><body>")
                for _ in range(int(p.get("chunks", 100))):
                    await resp.write(b"x" * 65536)
                    self.trickled += 1
                    await asyncio.sleep(float(p.get("delay", 0.03)))
                await resp.write(b"</body></html>")
                await resp.write_eof()
            return resp
        if k == "huge":
            pad = "y" * int(float(p.get("mb", 2)) * 2**20)
            obj = {"id": "chatcmpl-huge", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": pad},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            return web.Response(status=200, body=orjson.dumps(obj), content_type="application/json")
        if k == "endless_event":
            resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write(b'data: {"id": "chatcmpl-x", "choices": [{"index": 0, "delta": {"content": "')
                for _ in range(int(p.get("chunks", 200))):
                    await resp.write(b"z" * 65536)
                    self.trickled += 1
                    await asyncio.sleep(0.005)
            return resp
        return await super()._early_fault(request, f, stream)


def _model(name: str, apis: list[str], *, keys: list[str | None] | None = None, **extra: Any) -> dict:
    deps = []
    for i, api in enumerate(apis):
        d: dict[str, Any] = {"id": f"{name}-d{i}", "provider": "openai_compatible", "api_base": api,
                             "model": "gpt-4o-mini"}
        if keys and keys[i]:
            d["api_key"] = keys[i]
        deps.append(d)
    return {"name": name, "catalog": "gpt-4o-mini", "deployments": deps,
            "timeouts": {"connect": 2, "first_token": 5, "stream_idle": 5, "total": 5},
            "retry": {"max_retries": 2, "backoff_base_s": 0.05, "backoff_max_s": 0.2, "max_retry_after_s": 30},
            "circuit": {"failures": 1000, "window_s": 30, "cooldown_s": 30}, **extra}


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30)


def _posts(up: FakeOpenAI) -> int:
    return sum(1 for r in up.requests if r.method == "POST")


def _circuit_state(url: str, dep: str) -> str | None:
    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("tiergate_circuit_state") and f'deployment="{dep}"' in line:
            return line.split()[-1]
    return None


# ---------------------------------------------------------------- 1. x-ratelimit-* is no hint unless exhausted


def test_ordinary_ratelimit_headers_on_errors_are_not_a_retry_hint():
    with Fake() as up, running_gateway({"models": [_model("m", [up.url])]}) as url:
        client = _client(url)
        # a 500 carrying the ordinary headers (remaining 4999, reset 8.64 s): three attempts with short
        # backoffs, not one attempt and a 9 s "retry-after" (or two 8.64 s waits)
        up.fail_every("x_status", 1, status=500, headers=XRL)
        t = time.perf_counter()
        with pytest.raises(openai.InternalServerError) as ei:
            client.chat.completions.create(model="m", messages=MSGS)
        assert time.perf_counter() - t < 3.0
        assert _posts(up) == 3
        assert ei.value.response.headers.get("retry-after") is None
        # a 503: the same, and no retry-after is passed to the client
        up.clear()
        up.fail_every("x_status", 1, status=503, headers=XRL)
        with pytest.raises(openai.InternalServerError) as ei:
            client.chat.completions.create(model="m", messages=MSGS)
        assert ei.value.status_code == 503 and _posts(up) == 3
        assert ei.value.response.headers.get("retry-after") is None
        # a 429 "engine overloaded" (no limit exhausted): retried with backoff, and it does not trip the
        # circuit for the window's reset: the next request with a healthy upstream is answered
        up.clear()
        up.fail_every("x_status", 1, status=429, headers=XRL, body={"error": {
            "message": "The engine is currently overloaded, please try again later", "type": "server_error",
            "param": None, "code": None}})
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=MSGS)
        assert _posts(up) == 3
        up.clear()
        assert client.chat.completions.create(model="m", messages=MSGS).choices[0].message.content == "echo: hi"
        # an exhausted limit is still a hint: 429 with remaining-tokens 0, reset 0.2 s, is waited for
        up.clear()
        up.fail_next("x_status", status=429, headers={**XRL, "x-ratelimit-remaining-tokens": "0",
                                                      "x-ratelimit-reset-tokens": "0.2s"})
        t = time.perf_counter()
        assert client.chat.completions.create(model="m", messages=MSGS).choices[0].message.content == "echo: hi"
        assert time.perf_counter() - t >= 0.19 and _posts(up) == 2


# ---------------------------------------------------------------- 2. a fractional Retry-After keeps its retry


@pytest.mark.parametrize("shared", [False, pytest.param(True, marks=[
    pytest.mark.redis, pytest.mark.skipif(not _redis_up(), reason="Redis is not running on 127.0.0.1:6379")])])
def test_fractional_retry_after_is_waited_for_and_retried(shared):
    prefix = f"tgtest:{os.urandom(6).hex()}:"
    cfg: dict[str, Any] = {"models": [_model("solo", [], retry={
        "max_retries": 2, "backoff_base_s": 0.05, "backoff_max_s": 0.2, "max_retry_after_s": 3})]}
    if shared:
        cfg["redis"] = f"{REDIS}?prefix={prefix}"
    try:
        with Fake() as up:
            cfg["models"][0]["deployments"] = [{"id": f"s1-{prefix}", "provider": "openai_compatible",
                                                "api_base": up.url, "model": "gpt-4o-mini"}]
            with running_gateway(cfg, loop="uvloop") as url:
                client = _client(url)
                outcomes = []
                # one 429 with a sub-ms fraction, then a healthy upstream: each request waits once and is
                # answered by the second attempt
                for i in range(12):
                    up.clear()
                    if i == 11:  # the HTTP-date form always has a fraction (date - now)
                        up.fail_next("x_status", status=429, headers={
                            "retry-after": formatdate(time.time() + 1.5, usegmt=True)})
                    else:
                        up.fail_next("x_status", status=429, headers={"retry-after-ms": f"{200 + i * 7}.3"})
                    try:
                        client.chat.completions.create(model="solo", messages=MSGS)
                        outcomes.append((200, _posts(up)))
                    except openai.APIStatusError as e:
                        outcomes.append((e.status_code, _posts(up)))
                assert outcomes == [(200, 2)] * 12
    finally:
        if shared:
            import redis

            r = redis.Redis.from_url(REDIS)
            keys = list(r.scan_iter(f"{prefix}*"))
            if keys:
                r.delete(*keys)


# ---------------------------------------------------------------- 3. a deployment's own fault fails over


def test_refused_key_on_one_deployment_fails_over_and_opens_its_circuit():
    with Fake(api_key="sk-upstream-right") as bad, Fake() as good, Fake() as fb:
        wrong = "env:TG_J7_WRONG_UPSTREAM_KEY"
        pair = _model("pair", [bad.url, good.url], keys=[wrong, None],
                      circuit={"failures": 3, "window_s": 60, "cooldown_s": 60})
        solo = _model("solo", [bad.url], keys=[wrong], fallbacks=["fb"])
        both = _model("both", [bad.url, bad.url], keys=[wrong, wrong])
        with running_gateway({"models": [pair, solo, both, _model("fb", [fb.url])]},
                             env={"TG_J7_WRONG_UPSTREAM_KEY": "sk-upstream-WRONG-0123456789"}) as url:
            client = _client(url)
            for _ in range(20):
                assert client.chat.completions.create(model="pair", messages=MSGS).choices[0].message.content \
                    == "echo: hi"
            assert _posts(bad) == 3  # 3 refusals opened its circuit; every request was answered by the other
            assert _circuit_state(url, "pair-d0") == "2" and _circuit_state(url, "pair-d1") == "0"
            # a model whose only deployment is refused: its fallback answers
            bad.clear()
            raw = client.chat.completions.with_raw_response.create(model="solo", messages=MSGS)
            assert raw.parse().choices[0].message.content == "echo: hi"
            assert raw.headers.get("x-tiergate-fallback") == "solo->fb" and _posts(bad) == 1
            # every deployment refused: 502 upstream_auth_failed, x-should-retry false, each tried once
            bad.clear()
            with pytest.raises(openai.InternalServerError) as ei:
                client.chat.completions.create(model="both", messages=MSGS)
            assert (ei.value.status_code, ei.value.code) == (502, "upstream_auth_failed")
            assert ei.value.response.headers.get("x-should-retry") == "false"
            assert _posts(bad) == 2


def test_permission_refused_on_one_deployment_fails_over():
    with Fake() as bad, Fake() as good:
        pair = _model("pair", [bad.url, good.url])
        with running_gateway({"models": [pair]}) as url:
            client = _client(url)
            bad.fail_every("status", 1, status=403, body={"error": {
                "message": "Project does not have access to this model", "type": "permission_error",
                "param": None, "code": None}})
            for _ in range(10):
                assert client.chat.completions.create(model="pair", messages=MSGS).choices[0].message.content \
                    == "echo: hi"
            assert _posts(good) == 10


def test_missing_model_fails_over_but_a_client_404_opens_no_circuit():
    with Fake() as bad, Fake() as good:
        pair = _model("pair", [bad.url, good.url], circuit={"failures": 3, "window_s": 60, "cooldown_s": 60})
        with running_gateway({"models": [pair]}) as url:
            client = _client(url)
            # a client-caused 404 (an id the client chose) is the client's answer: no failover, no circuit
            for f in (bad, good):
                f.fail_every("status", 1, status=404, body={"error": {
                    "message": "Previous response with id 'resp_model_gone' not found.",
                    "type": "invalid_request_error", "param": "previous_response_id",
                    "code": "previous_response_not_found"}})
            for _ in range(8):
                with pytest.raises(openai.NotFoundError):
                    client.chat.completions.create(model="pair", messages=MSGS)
            assert _posts(bad) + _posts(good) == 8
            assert _circuit_state(url, "pair-d0") == "0" and _circuit_state(url, "pair-d1") == "0"
            # the deployment lacks the model: fail over, and its circuit opens after 3
            for f in (bad, good):
                f.clear()
            bad.fail_every("status", 1, status=404, body={"error": {
                "message": "The model `gpt-4o-mini` does not exist or you do not have access to it.",
                "type": "invalid_request_error", "param": None, "code": "model_not_found"}})
            for _ in range(20):
                assert client.chat.completions.create(model="pair", messages=MSGS).choices[0].message.content \
                    == "echo: hi"
            assert _posts(bad) == 3 and _circuit_state(url, "pair-d0") == "2"


# ---------------------------------------------------------------- 4. bounded reads


def test_upstream_bodies_are_read_with_bounds(monkeypatch):
    from tiergate.providers import http

    monkeypatch.setattr(http, "MAX_ANSWER_BODY", 1 << 20, raising=False)  # 1 MiB (32 MiB by default)
    monkeypatch.setattr(http, "MAX_STREAM_EVENT", 1 << 20, raising=False)
    with Fake() as up, running_gateway({"models": [_model("m", [up.url], retry={"max_retries": 0})]}) as url:
        client = _client(url)
        # an answer larger than the limit: 502, the body was not passed on
        up.fail_next("huge", mb=2)
        with pytest.raises(openai.APIStatusError) as ei:
            client.chat.completions.create(model="m", messages=MSGS)
        assert (ei.value.status_code, ei.value.code) == (502, "upstream_answer_too_large")
        assert "larger than 1 MiB" in ei.value.message
        # an answer within it is served
        up.fail_next("huge", mb=0.5)
        out = client.chat.completions.create(model="m", messages=MSGS)
        assert len(out.choices[0].message.content) == 2**19
        # a 6.4 MB HTML error page sent slowly (3 s): the 500 is answered from its first 64 KiB, at once
        up.fail_next("trickle_error", chunks=100, delay=0.03)
        t = time.perf_counter()
        with pytest.raises(openai.InternalServerError) as ei:
            client.chat.completions.create(model="m", messages=MSGS)
        assert time.perf_counter() - t < 1.5
        assert "upstream returned HTTP 500" in ei.value.message
        # a stream event that never ends: stopped at the event limit (not buffered without bound)
        up.trickled = 0
        up.fail_next("endless_event", chunks=200)
        with pytest.raises(openai.APIStatusError) as ei:
            list(client.chat.completions.create(model="m", messages=MSGS, stream=True))
        assert ei.value.status_code == 502 and ei.value.code == "upstream_answer_too_large"
        assert up.trickled < 100


# ---------------------------------------------------------------- 5. no wasted wait


def test_no_backoff_when_the_failure_opened_the_only_circuit():
    with Fake() as up:
        m = _model("m", [up.url], retry={"max_retries": 2, "backoff_base_s": 2.0, "backoff_max_s": 2.0},
                   circuit={"failures": 1, "window_s": 30, "cooldown_s": 30})
        with running_gateway({"models": [m]}) as url:
            client = _client(url)
            up.fail_every("500", 1)
            t = time.perf_counter()
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="m", messages=MSGS)
            assert time.perf_counter() - t < 0.8  # the backoff (1-2 s) would have found nothing to retry
            assert _posts(up) == 1


# ---------------------------------------------------------------- 6. an idle replica's first scrape


@pytest.mark.redis
@pytest.mark.skipif(not _redis_up(), reason="Redis is not running on 127.0.0.1:6379")
def test_idle_replica_first_scrape_shows_the_shared_open_circuit(tmp_path):
    prefix = f"tgtest:{os.urandom(6).hex()}:"
    dep = f"cb-{os.urandom(3).hex()}"
    try:
        with Fake() as up:
            def cfg(db: str) -> dict:
                m = _model("cb", [up.url], retry={"max_retries": 0},
                           circuit={"failures": 2, "window_s": 30, "cooldown_s": 30})
                m["deployments"][0]["id"] = dep
                return {"redis": f"{REDIS}?prefix={prefix}", "storage": f"sqlite:///{tmp_path / db}", "models": [m]}

            with running_gateway(cfg("a.db")) as url_a, running_gateway(cfg("b.db")) as url_b:
                a = _client(url_a)
                up.fail_every("500", 1)
                for _ in range(2):
                    with pytest.raises(openai.InternalServerError):
                        a.chat.completions.create(model="cb", messages=MSGS)
                assert _circuit_state(url_a, dep) == "2"
                time.sleep(1.2)  # more than two of B's refresh intervals (0.5 s)
                assert _circuit_state(url_b, dep) == "2"  # B never served nor was scraped before
    finally:
        import redis

        r = redis.Redis.from_url(REDIS)
        keys = list(r.scan_iter(f"{prefix}*"))
        if keys:
            r.delete(*keys)
