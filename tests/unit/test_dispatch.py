"""Dispatcher unit tests against an in-process scripted provider (no network): load balancing,
retries, fallbacks, context-window fallback, circuit breaking, timeouts and streaming failover."""

from __future__ import annotations

import asyncio
import collections
import random
import time
from typing import Any

import pytest

from tiergate.config import parse_config
from tiergate.dispatch.circuit import CLOSED, OPEN
from tiergate.dispatch.dispatcher import Dispatcher
from tiergate.dispatch.errors import ContextWindowExceeded, refused_before_upstream
from tiergate.metrics import Metrics
from tiergate.providers.base import ChatResult, Provider, RequestRefused, UpstreamError
from tiergate.providers.registry import register
from tiergate.wire.errors import GatewayError

# deployment id -> list of scripted actions (consumed in order; the last one repeats)
SCRIPTS: dict[str, list[Any]] = {}
CALLS: list[str] = []


def _completion(dep: str, text: str = "hello") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": dep,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def _chunk(dep: str, **delta: Any) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": dep,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}]}


@register("scripted")
class ScriptedProvider(Provider):
    """Behaves as its deployment's script says: "ok", ("status", code[, retry_after]), "hang",
    "connect", "cut" (stream cut after the first content chunk), "cut_before" (cut before any content),
    "stall" (stream stalls after the first content chunk), ("slow", seconds)."""

    name = "scripted"

    def _next(self) -> Any:
        CALLS.append(self.deployment.id)
        first = SCRIPTS.get("*")  # a global script consumed first, whatever deployment is called
        if first:
            return first.pop(0)
        s = SCRIPTS.setdefault(self.deployment.id, ["ok"])
        return s.pop(0) if len(s) > 1 else s[0]

    @staticmethod
    def _raise(action: Any) -> None:
        if isinstance(action, tuple) and action[0] == "status":
            code = action[1]
            ra = action[2] if len(action) > 2 else None
            raise UpstreamError(code, f"upstream said {code}", retry_after=ra, type="server_error",
                                usage={"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}
                                if code == 500 else None)
        if action == "connect":
            raise UpstreamError(502, "cannot reach upstream", kind="connect")

    async def chat(self, body, timeouts):
        action = self._next()
        self._raise(action)
        if action == "hang":
            await asyncio.sleep(3600)
        if isinstance(action, tuple) and action[0] == "slow":
            await asyncio.sleep(action[1])
        return ChatResult(body=_completion(self.deployment.id))

    async def chat_stream(self, body, timeouts):
        action = self._next()
        self._raise(action)
        if action == "hang":
            await asyncio.sleep(3600)
        if isinstance(action, tuple) and action[0] == "slow":
            await asyncio.sleep(action[1])
        dep = self.deployment.id
        yield _chunk(dep, role="assistant", content="")
        if action == "cut_before":
            raise UpstreamError(502, "cut", kind="stream_cut")
        yield _chunk(dep, content=f"from {dep}")
        if action == "cut":
            raise UpstreamError(502, "upstream closed mid-stream", kind="stream_cut",
                                usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})
        if action == "stall":
            await asyncio.sleep(3600)
        yield _chunk(dep, content=" done")
        yield {**_chunk(dep), "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]}
        yield {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": dep, "choices": [],
               "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


@pytest.fixture(autouse=True)
def _reset():
    SCRIPTS.clear()
    CALLS.clear()
    yield


def make_config(models: list[dict]) -> Any:
    for m in models:
        for i, d in enumerate(m["deployments"]):
            d.setdefault("provider", "scripted")
            d.setdefault("id", f"{m['name']}/{i}")
        m.setdefault("retry", {"backoff_base_s": 0.01, "backoff_max_s": 0.05})
        m.setdefault("timeouts", {"connect": 1, "first_token": 2, "stream_idle": 2, "total": 5})
    return parse_config({"models": models}, env={})


def shaper(ctx_limits: dict[str, int] | None = None, prompt: int = 10, refuse: set[str] | None = None):
    def shape(name: str) -> tuple[dict, list[str]]:
        if ctx_limits and name in ctx_limits and prompt > ctx_limits[name]:
            raise ContextWindowExceeded(name, prompt, ctx_limits[name])
        if refuse and name in refuse:
            raise GatewayError(400, f"{name} does not support tools", param="tools")
        return {"model": name, "messages": [{"role": "user", "content": "hi"}]}, ["temperature"]
    return shape


def two_deps(**model_kw: Any) -> Any:
    return make_config([{"name": "m", "deployments": [{}, {}], **model_kw}])


async def collect(stream) -> list[dict]:
    return [c async for c in stream]


def text_of(chunks: list[dict]) -> str:
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))


# ---------------------------------------------------------------------------- happy path


async def test_happy_path_non_stream():
    metrics = Metrics()
    d = Dispatcher(make_config([{"name": "m", "deployments": [{}]}]), None, metrics=metrics)
    out = await d.dispatch("m", shaper(), stream=False, request_id="r1", prompt_tokens=10)
    assert out.model == "m" and out.deployment.id == "m/0" and out.fallback_from is None
    assert out.result.body["choices"][0]["message"]["content"] == "hello"
    assert out.attempts == [] and out.dropped_params == ["temperature"] and out.body["model"] == "m"
    assert out.ttft_s is not None and out.ttft_s >= 0
    assert d.deployment_states("m")[0].inflight == 0
    assert metrics.attempts.get(("m", "m/0", "ok")) == 1
    await d.close()


async def test_happy_path_stream():
    d = Dispatcher(make_config([{"name": "m", "deployments": [{}]}]), None)
    out = await d.dispatch("m", shaper(), stream=True, request_id="r1")
    st = d.deployment_states("m")[0]
    assert st.inflight == 1  # held until the stream ends
    chunks = await collect(out.stream)
    assert text_of(chunks) == "from m/0 done"
    assert chunks[-1]["usage"]["total_tokens"] == 5
    assert st.inflight == 0


async def test_unknown_model_is_404():
    d = Dispatcher(make_config([{"name": "m", "deployments": [{}]}]), None)
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("nope", shaper(), stream=False, request_id="r")
    assert ei.value.status == 404 and ei.value.code == "model_not_found"


# ---------------------------------------------------------------------------- retries


@pytest.mark.parametrize("fault", [("status", 500), ("status", 502), ("status", 503), ("status", 504),
                                   ("status", 429), "connect"])
async def test_retryable_failure_goes_to_the_other_deployment(fault):
    d = Dispatcher(two_deps(), None, rng=random.Random(1))
    SCRIPTS["*"] = [fault]
    out = await d.dispatch("m", shaper(), stream=False, request_id="r")
    assert len(out.attempts) == 1
    assert out.attempts[0].deployment_id != out.deployment.id  # the retry went elsewhere
    assert CALLS == [out.attempts[0].deployment_id, out.deployment.id]


@pytest.mark.parametrize("code", [400, 404, 422])
async def test_client_errors_are_never_retried(code):
    d = Dispatcher(make_config(
        [{"name": "m", "deployments": [{}, {}], "fallbacks": ["f"]}, {"name": "f", "deployments": [{}]}]), None)
    SCRIPTS["m/0"] = [("status", code)]
    SCRIPTS["m/1"] = [("status", code)]
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("m", shaper(), stream=False, request_id="r")
    assert ei.value.status == code
    assert len(CALLS) == 1
    assert len(ei.value.attempts) == 1  # the failed attempt travels with the error, for the ledger


@pytest.mark.parametrize("code", [401])
async def test_refused_upstream_credentials_fail_over_but_never_retry_the_same_deployment(code):
    """401: the upstream refused the gateway's own key for that deployment (docs/reliability.md): the
    other deployments and the fallback are tried, each once; when all refuse, 502 upstream_auth_failed.
    (A 403 does so only when it says it is about the credentials: tests/unit/test_reaudit7.py.)"""
    d = Dispatcher(make_config(
        [{"name": "m", "deployments": [{}, {}], "fallbacks": ["f"]}, {"name": "f", "deployments": [{}]}]), None)
    for dep in ("m/0", "m/1", "f/0"):
        SCRIPTS[dep] = [("status", code)]
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("m", shaper(), stream=False, request_id="r")
    assert (ei.value.status, ei.value.code) == (502, "upstream_auth_failed")
    assert "Deployment 'f/0'" in ei.value.message
    assert sorted(CALLS) == ["f/0", "m/0", "m/1"] and len(ei.value.attempts) == 3


async def test_failed_attempt_carries_upstream_usage():
    d = Dispatcher(two_deps(), None)
    SCRIPTS["*"] = [("status", 500)]
    out = await d.dispatch("m", shaper(), stream=False, request_id="r")
    a = out.attempts[0]
    assert a.ok is False and a.error.status == 500 and a.usage == {"prompt_tokens": 3, "completion_tokens": 0,
                                                                     "total_tokens": 3}


async def test_same_deployment_retry_backs_off():
    d = Dispatcher(make_config([{"name": "m", "deployments": [{}],
                                 "retry": {"backoff_base_s": 0.1, "backoff_max_s": 1}}]), None)
    SCRIPTS["m/0"] = [("status", 503), "ok"]
    t = time.perf_counter()
    out = await d.dispatch("m", shaper(), stream=False, request_id="r")
    waited = time.perf_counter() - t
    assert out.deployment.id == "m/0" and len(out.attempts) == 1
    assert 0.05 <= waited < 0.5  # equal jitter: between base/2 and base


async def test_retry_after_is_honoured_on_the_only_deployment():
    d = Dispatcher(make_config([{"name": "m", "deployments": [{}]}]), None)
    SCRIPTS["m/0"] = [("status", 429, 0.3), "ok"]
    t = time.perf_counter()
    out = await d.dispatch("m", shaper(), stream=False, request_id="r")
    assert out.deployment.id == "m/0"
    assert time.perf_counter() - t >= 0.3


async def test_retry_after_too_long_fails_fast_with_429_and_header():
    d = Dispatcher(make_config([{"name": "m", "deployments": [{}],
                                 "retry": {"max_retry_after_s": 1}}]), None)
    SCRIPTS["m/0"] = [("status", 429, 20)]
    t = time.perf_counter()
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("m", shaper(), stream=False, request_id="r")
    assert time.perf_counter() - t < 0.5
    assert ei.value.status == 429 and ei.value.type == "rate_limit_error"
    assert ei.value.headers["retry-after"] == "20"
    # the deployment now cools down for the upstream's Retry-After: the next request is refused at once
    with pytest.raises(GatewayError) as ei2:
        await d.dispatch("m", shaper(), stream=False, request_id="r2")
    assert ei2.value.status == 429 and ei2.value.code == "deployment_rate_limited"
    assert 18 <= int(ei2.value.headers["retry-after"]) <= 20
    assert len(CALLS) == 1


async def test_request_meeting_the_probe_after_a_429_cooldown_is_rate_limited_not_unhealthy():
    """After a 429 + Retry-After cooldown the deployment is half-open and one probe is in flight: a request
    arriving meanwhile is refused as rate limited (429 with Retry-After), not as an unhealthy deployment."""
    d = Dispatcher(make_config([{"name": "m", "deployments": [{}], "retry": {"max_retry_after_s": 0}}]), None)
    SCRIPTS["m/0"] = [("status", 429, 0.05), ("slow", 0.3), "ok"]
    with pytest.raises(GatewayError):
        await d.dispatch("m", shaper(), stream=False, request_id="r1")
    await asyncio.sleep(0.08)  # the cooldown is over: the next request becomes the half-open probe
    probe = asyncio.create_task(d.dispatch("m", shaper(), stream=False, request_id="probe"))
    await asyncio.sleep(0.05)
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("m", shaper(), stream=False, request_id="r2")
    assert ei.value.status == 429 and ei.value.code == "deployment_rate_limited", ei.value
    assert ei.value.headers["retry-after"] == "1"
    assert (await probe).deployment.id == "m/0"


async def test_all_attempts_fail_gives_last_error_within_bounds():
    d = Dispatcher(two_deps(retry={"max_retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.02}), None)
    SCRIPTS["m/0"] = [("status", 500)]
    SCRIPTS["m/1"] = [("status", 500)]
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("m", shaper(), stream=False, request_id="r")
    e = ei.value
    assert e.status == 500 and e.type == "api_error" and "after 4 attempts" in e.message
    assert len(CALLS) == 4


# ---------------------------------------------------------------------------- fallbacks


async def test_ordered_fallbacks():
    cfg = make_config([{"name": "m", "deployments": [{}], "fallbacks": ["f1", "f2"]},
                       {"name": "f1", "deployments": [{}]}, {"name": "f2", "deployments": [{}]}])
    metrics = Metrics()
    d = Dispatcher(cfg, None, metrics=metrics)
    SCRIPTS["m/0"] = [("status", 503)]
    SCRIPTS["f1/0"] = [("status", 503)]
    out = await d.dispatch("m", shaper(), stream=False, request_id="r")
    assert out.model == "f2" and out.fallback_from == "m" and out.body["model"] == "f2"
    assert [a.model for a in out.attempts][-1] == "f1"
    assert metrics.fallbacks.get(("m", "f2")) == 1


async def test_capability_error_on_a_fallback_skips_it():
    cfg = make_config([{"name": "m", "deployments": [{}], "fallbacks": ["f1", "f2"]},
                       {"name": "f1", "deployments": [{}]}, {"name": "f2", "deployments": [{}]}])
    d = Dispatcher(cfg, None)
    SCRIPTS["m/0"] = [("status", 500)]
    out = await d.dispatch("m", shaper(refuse={"f1"}), stream=False, request_id="r")
    assert out.model == "f2" and "f1/0" not in CALLS


async def test_capability_error_on_the_requested_model_is_raised():
    d = Dispatcher(make_config([{"name": "m", "deployments": [{}]}]), None)
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("m", shaper(refuse={"m"}), stream=False, request_id="r")
    assert ei.value.status == 400 and CALLS == []


async def test_context_window_fallback():
    cfg = make_config([{"name": "small", "deployments": [{}], "context_window_fallback": "big"},
                       {"name": "big", "deployments": [{}]}])
    d = Dispatcher(cfg, None)
    out = await d.dispatch("small", shaper({"small": 100, "big": 1000}, prompt=500), stream=False, request_id="r")
    assert out.model == "big" and out.fallback_from == "small" and CALLS == ["big/0"]
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("small", shaper({"small": 100, "big": 1000}, prompt=5000), stream=False, request_id="r")
    assert ei.value.code == "context_length_exceeded"


async def test_upstream_context_error_uses_the_context_window_fallback():
    cfg = make_config([{"name": "small", "deployments": [{}], "context_window_fallback": "big"},
                       {"name": "big", "deployments": [{}]}])
    d = Dispatcher(cfg, None)

    async def chat(body, timeouts):
        CALLS.append("small/0")
        raise UpstreamError(400, "too long", code="context_length_exceeded", type="invalid_request_error")

    d.deployment_states("small")[0].provider.chat = chat
    out = await d.dispatch("small", shaper(), stream=False, request_id="r")
    assert out.model == "big" and CALLS == ["small/0", "big/0"]


# ---------------------------------------------------------------------------- circuit breaking


async def test_circuit_opens_then_half_open_probe_closes_it():
    cfg = make_config([{"name": "m", "deployments": [{}],
                        "retry": {"max_retries": 0},
                        "circuit": {"failures": 3, "window_s": 10, "cooldown_s": 0.3}}])
    metrics = Metrics()
    d = Dispatcher(cfg, None, metrics=metrics)
    SCRIPTS["m/0"] = [("status", 500), ("status", 500), ("status", 500), "ok"]
    for _ in range(3):
        with pytest.raises(GatewayError):
            await d.dispatch("m", shaper(), stream=False, request_id="r")
    st = d.deployment_states("m")[0]
    assert st.circuit.state == OPEN and metrics.circuit.get(("m", "m/0")) == 2
    t = time.perf_counter()
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("m", shaper(), stream=False, request_id="r")
    assert ei.value.status == 503 and ei.value.code == "no_healthy_deployment"
    assert "retry-after" in ei.value.headers and time.perf_counter() - t < 0.05
    assert len(CALLS) == 3  # the open circuit was not called
    await asyncio.sleep(0.35)
    out = await d.dispatch("m", shaper(), stream=False, request_id="probe")
    assert out.deployment.id == "m/0" and st.circuit.state == 0 and metrics.circuit.get(("m", "m/0")) == 0


def _gauge(metrics: Metrics, model: str, dep: str) -> str:
    line = f'tiergate_circuit_state{{model="{model}",deployment="{dep}"}} '
    return next(ln for ln in metrics.render().decode().splitlines() if ln.startswith(line)).removeprefix(line)


async def test_circuit_gauge_reflects_the_state_at_scrape_time():
    """The gauge is computed when /metrics is rendered: open -> half-open once the cooldown has ended,
    with no request in between to move the breaker; closed after the probe succeeds."""
    cfg = make_config([{"name": "m", "deployments": [{}], "retry": {"max_retries": 0},
                        "circuit": {"failures": 1, "window_s": 10, "cooldown_s": 0.2}}])
    metrics = Metrics()
    d = Dispatcher(cfg, None, metrics=metrics)
    assert _gauge(metrics, "m", "m/0") == "0"
    SCRIPTS["m/0"] = [("status", 500), "ok"]
    with pytest.raises(GatewayError):
        await d.dispatch("m", shaper(), stream=False, request_id="r")
    assert _gauge(metrics, "m", "m/0") == "2"
    await asyncio.sleep(0.25)
    assert d.deployment_states("m")[0].circuit.state == OPEN  # nothing has touched the breaker...
    assert _gauge(metrics, "m", "m/0") == "1"  # ...but a probe would be let through: half-open
    assert d.deployment_states("m")[0].circuit.state == OPEN  # scraping changed nothing
    await d.dispatch("m", shaper(), stream=False, request_id="probe")
    assert _gauge(metrics, "m", "m/0") == "0"


async def test_half_open_lets_a_single_probe_through():
    cfg = make_config([{"name": "m", "deployments": [{}], "retry": {"max_retries": 0},
                        "circuit": {"failures": 1, "window_s": 10, "cooldown_s": 0.1}}])
    d = Dispatcher(cfg, None)
    SCRIPTS["m/0"] = [("status", 500), ("slow", 0.2), "ok"]
    with pytest.raises(GatewayError):
        await d.dispatch("m", shaper(), stream=False, request_id="r")
    await asyncio.sleep(0.12)
    results = await asyncio.gather(*[d.dispatch("m", shaper(), stream=False, request_id=f"p{i}")
                                     for i in range(5)], return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, GatewayError) and r.code == "no_healthy_deployment"]
    assert len(ok) == 1 and len(refused) == 4


async def test_open_circuit_sends_traffic_to_the_healthy_deployment():
    cfg = two_deps(retry={"max_retries": 1, "backoff_base_s": 0.01},
                   circuit={"failures": 2, "window_s": 10, "cooldown_s": 30})
    d = Dispatcher(cfg, None, rng=random.Random(3))
    SCRIPTS["m/0"] = [("status", 500)]
    for i in range(30):
        out = await d.dispatch("m", shaper(), stream=False, request_id=f"r{i}")
        assert out.deployment.id == "m/1"
    assert CALLS.count("m/0") == 2  # then its circuit opened


async def test_all_fallbacks_cooling_down_is_503():
    cfg = make_config([{"name": "m", "deployments": [{}], "fallbacks": ["f"], "retry": {"max_retries": 0},
                        "circuit": {"failures": 1, "cooldown_s": 30}},
                       {"name": "f", "deployments": [{}], "retry": {"max_retries": 0},
                        "circuit": {"failures": 1, "cooldown_s": 30}}])
    d = Dispatcher(cfg, None)
    SCRIPTS["m/0"] = [("status", 503)]
    SCRIPTS["f/0"] = [("status", 503)]
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("m", shaper(), stream=False, request_id="r")
    assert ei.value.status == 503 and ei.value.code != "no_healthy_deployment"
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("m", shaper(), stream=False, request_id="r")
    assert ei.value.status == 503 and ei.value.code == "no_healthy_deployment"
    assert "'m'" in ei.value.message and "'f'" in ei.value.message


# ---------------------------------------------------------------------------- timeouts


async def test_hang_times_out_on_first_token_and_fails_over():
    cfg = two_deps(timeouts={"first_token": 0.2, "stream_idle": 0.2, "total": 3})
    d = Dispatcher(cfg, None)
    for stream in (False, True):
        CALLS.clear()
        SCRIPTS["*"] = ["hang"]
        t = time.perf_counter()
        out = await d.dispatch("m", shaper(), stream=stream, request_id="r")
        if stream:
            assert "done" in text_of(await collect(out.stream))
        assert len(out.attempts) == 1 and out.attempts[0].error.kind == "timeout"
        assert 0.18 < time.perf_counter() - t < 1.0


async def test_total_timeout_bounds_the_whole_request():
    cfg = two_deps(retry={"max_retries": 5}, timeouts={"first_token": 0.3, "total": 0.5})
    d = Dispatcher(cfg, None)
    SCRIPTS["m/0"] = ["hang"]
    SCRIPTS["m/1"] = ["hang"]
    t = time.perf_counter()
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("m", shaper(), stream=False, request_id="r")
    assert time.perf_counter() - t < 0.7
    assert ei.value.status == 504 and ei.value.type == "timeout_error"


async def test_per_request_timeouts_override_the_model():
    from tiergate.providers.base import Timeouts

    d = Dispatcher(make_config([{"name": "m", "deployments": [{}]}]), None)
    SCRIPTS["m/0"] = ["hang"]
    t = time.perf_counter()
    with pytest.raises(GatewayError):
        await d.dispatch("m", shaper(), stream=False, request_id="r",
                         timeouts=Timeouts(connect=1, first_token=0.1, stream_idle=0.1, total=0.25))
    assert time.perf_counter() - t < 0.5


def _circuit_model(timeouts: dict, n_deps: int = 1, **extra: Any) -> Any:
    return make_config([{"name": "m", "deployments": [{} for _ in range(n_deps)], "timeouts": timeouts,
                         "retry": {"max_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.02},
                         "circuit": {"failures": 3, "window_s": 30, "cooldown_s": 30}, **extra}])


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_requests_own_stricter_timeout_does_not_open_the_circuit(stream):
    """Audit scenario: one healthy 200 ms deployment, failures: 3; a request with first_token 0.05 times
    out, but the deployment met its configured limit, so its circuit stays closed for everyone."""
    from tiergate.providers.base import Timeouts

    base = {"connect": 1, "first_token": 2, "stream_idle": 2, "total": 5}
    d = Dispatcher(_circuit_model(base), None, metrics=Metrics())
    SCRIPTS["m/0"] = [("slow", 0.2)]
    strict = Timeouts(connect=1, first_token=0.05, stream_idle=2, total=5)
    for _ in range(3):  # more than `failures` such requests
        CALLS.clear()
        with pytest.raises(GatewayError) as ei:
            await d.dispatch("m", shaper(), stream=stream, request_id="r", timeouts=strict)
        assert ei.value.status == 504 and ei.value.type == "timeout_error"
        assert "first_token limit (0.05s) is stricter than the model's configured 2s" in ei.value.message
        assert CALLS == ["m/0"]  # no waiting to re-try a deployment the same limit just failed
    st = d.deployment_states("m")[0]
    assert st.circuit.state == CLOSED and not st.circuit._failures
    assert st.ewma_ttft is None  # nor did it feed the latency stats
    out = await d.dispatch("m", shaper(), stream=stream, request_id="next")  # served, not 503
    assert out.deployment.id == "m/0"
    if stream:
        assert "done" in text_of(await collect(out.stream))


async def test_own_timeout_still_fails_over_to_an_untried_deployment():
    from tiergate.providers.base import Timeouts

    d = Dispatcher(_circuit_model({"first_token": 2, "total": 5}, n_deps=2), None)
    SCRIPTS["*"] = [("slow", 0.2)]  # the first deployment tried is slow, the other answers at once
    out = await d.dispatch("m", shaper(), stream=False, request_id="r",
                           timeouts=Timeouts(connect=1, first_token=0.05, stream_idle=2, total=5))
    assert len(out.attempts) == 1 and out.deployment.id != out.attempts[0].deployment_id
    assert all(st.circuit.state == CLOSED and not st.circuit._failures for st in d.deployment_states("m"))


@pytest.mark.parametrize("override", [None, 0.15], ids=["configured", "looser-override"])
async def test_a_genuinely_slow_deployment_still_opens_the_circuit(override):
    """Timing out under the configured limit (or a looser per-request one) is the deployment's failure."""
    from tiergate.providers.base import Timeouts

    d = Dispatcher(_circuit_model({"connect": 1, "first_token": 0.05, "stream_idle": 2, "total": 5}), None)
    SCRIPTS["m/0"] = ["hang"]
    t = None if override is None else Timeouts(connect=1, first_token=override, stream_idle=2, total=5)
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("m", shaper(), stream=False, request_id="r", timeouts=t)
    assert ei.value.status == 504 and "stricter" not in ei.value.message
    assert len(CALLS) == 3 and d.deployment_states("m")[0].circuit.state == OPEN
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("m", shaper(), stream=False, request_id="r2")
    assert ei.value.code == "no_healthy_deployment" and len(CALLS) == 3


async def test_own_stream_idle_timeout_after_the_first_token_is_not_counted():
    from tiergate.providers.base import Timeouts

    d = Dispatcher(_circuit_model({"connect": 1, "first_token": 2, "stream_idle": 2, "total": 5},
                                  circuit={"failures": 1, "window_s": 30, "cooldown_s": 30}), None)
    SCRIPTS["m/0"] = ["stall"]
    out = await d.dispatch("m", shaper(), stream=True, request_id="r",
                           timeouts=Timeouts(connect=1, first_token=2, stream_idle=0.05, total=5))
    with pytest.raises(UpstreamError) as ei:
        await collect(out.stream)
    assert ei.value.kind == "stream_cut" and "stream_idle limit (0.05s)" in ei.value.message
    assert d.deployment_states("m")[0].circuit.state == CLOSED


async def test_own_timeout_on_a_half_open_probe_leaves_it_half_open():
    from tiergate.providers.base import Timeouts

    d = Dispatcher(_circuit_model({"connect": 1, "first_token": 2, "stream_idle": 2, "total": 5},
                                  circuit={"failures": 1, "window_s": 30, "cooldown_s": 0.1}), None)
    SCRIPTS["m/0"] = [("status", 500), ("slow", 0.2), "ok"]
    with pytest.raises(GatewayError):
        await d.dispatch("m", shaper(), stream=False, request_id="r")
    cb = d.deployment_states("m")[0].circuit
    assert cb.state == OPEN
    await asyncio.sleep(0.12)
    with pytest.raises(GatewayError):  # the probe times out by its own 0.05 s: no verdict
        await d.dispatch("m", shaper(), stream=False, request_id="probe",
                         timeouts=Timeouts(connect=1, first_token=0.05, stream_idle=2, total=5))
    assert cb.state != OPEN and not cb.probing
    await d.dispatch("m", shaper(), stream=False, request_id="probe2")
    assert cb.state == CLOSED


async def test_external_cancellation_is_not_a_timeout():
    d = Dispatcher(make_config([{"name": "m", "deployments": [{}]}]), None)
    SCRIPTS["m/0"] = ["hang"]
    task = asyncio.ensure_future(d.dispatch("m", shaper(), stream=False, request_id="r"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    st = d.deployment_states("m")[0]
    assert st.inflight == 0 and st.circuit.state == 0


# ---------------------------------------------------------------------------- streaming failover


@pytest.mark.parametrize("fault", ["cut_before", ("status", 503), "hang", "connect"])
async def test_stream_failure_before_first_token_is_invisible(fault):
    cfg = two_deps(timeouts={"first_token": 0.2, "stream_idle": 0.2, "total": 3})
    d = Dispatcher(cfg, None, rng=random.Random(0))
    SCRIPTS["*"] = [fault]
    out = await d.dispatch("m", shaper(), stream=True, request_id="r")
    chunks = await collect(out.stream)
    assert text_of(chunks) == f"from {out.deployment.id} done"  # one answer, from one deployment
    assert {c["model"] for c in chunks} == {out.deployment.id}
    assert len(out.attempts) == 1


async def test_stream_cut_after_first_token_raises_stream_cut_and_never_switches():
    d = Dispatcher(two_deps(), None)
    SCRIPTS["m/0"] = ["cut"]
    SCRIPTS["m/1"] = ["cut"]
    out = await d.dispatch("m", shaper(), stream=True, request_id="r")
    got = []
    with pytest.raises(UpstreamError) as ei:
        async for c in out.stream:
            got.append(c)
    assert ei.value.kind == "stream_cut" and ei.value.usage["completion_tokens"] == 1
    assert text_of(got) == f"from {out.deployment.id}" and len(CALLS) == 1
    assert d.deployment_states("m")[0].inflight == 0 and d.deployment_states("m")[1].inflight == 0


async def test_stream_stall_after_first_token_times_out_as_stream_cut():
    d = Dispatcher(two_deps(timeouts={"first_token": 1, "stream_idle": 0.2, "total": 5}), None)
    SCRIPTS["m/0"] = ["stall"]
    SCRIPTS["m/1"] = ["stall"]
    out = await d.dispatch("m", shaper(), stream=True, request_id="r")
    t = time.perf_counter()
    with pytest.raises(UpstreamError) as ei:
        await collect(out.stream)
    assert 0.18 < time.perf_counter() - t < 0.6
    assert ei.value.kind == "stream_cut" and "stream_idle" in ei.value.message


async def test_slow_consumer_is_not_upstream_idleness():
    d = Dispatcher(make_config([{"name": "m", "deployments": [{}],
                                 "timeouts": {"first_token": 1, "stream_idle": 0.1, "total": 5}}]), None)
    out = await d.dispatch("m", shaper(), stream=True, request_id="r")
    chunks = []
    async for c in out.stream:
        chunks.append(c)
        await asyncio.sleep(0.15)  # longer than stream_idle, but spent on our side
    assert text_of(chunks) == "from m/0 done"


async def test_abandoned_stream_releases_the_deployment():
    d = Dispatcher(make_config([{"name": "m", "deployments": [{}]}]), None)
    out = await d.dispatch("m", shaper(), stream=True, request_id="r")
    async for _ in out.stream:
        break
    await out.stream.aclose()
    assert d.deployment_states("m")[0].inflight == 0


# ---------------------------------------------------------------------------- strategies and caps


async def test_weighted_random_follows_weights():
    cfg = make_config([{"name": "m", "deployments": [{"weight": 3}, {"weight": 1}]}])
    d = Dispatcher(cfg, None, rng=random.Random(7))
    for i in range(400):
        await d.dispatch("m", shaper(), stream=False, request_id=f"r{i}")
    share = CALLS.count("m/0") / len(CALLS)
    assert 0.68 < share < 0.82


async def test_least_inflight_spreads_concurrent_requests():
    cfg = make_config([{"name": "m", "strategy": "least_inflight", "deployments": [{}, {}, {}]}])
    d = Dispatcher(cfg, None, rng=random.Random(1))
    for dep in ("m/0", "m/1", "m/2"):
        SCRIPTS[dep] = [("slow", 0.05)]
    await asyncio.gather(*[d.dispatch("m", shaper(), stream=False, request_id=f"r{i}") for i in range(9)])
    assert collections.Counter(CALLS) == {"m/0": 3, "m/1": 3, "m/2": 3}


async def test_lowest_latency_prefers_the_fast_deployment():
    cfg = make_config([{"name": "m", "strategy": "lowest_latency", "deployments": [{}, {}]}])
    d = Dispatcher(cfg, None, rng=random.Random(1))
    SCRIPTS["m/0"] = [("slow", 0.03)]
    SCRIPTS["m/1"] = [("slow", 0.001)]
    for i in range(20):
        await d.dispatch("m", shaper(), stream=False, request_id=f"r{i}")
    assert CALLS[:2].count("m/0") == 1  # both were measured first
    assert CALLS[2:].count("m/1") == 18


async def test_lowest_cost_uses_prices():
    cfg = make_config([{"name": "m", "strategy": "lowest_cost", "deployments": [
        {"options": {"input_price": 2.5, "output_price": 10}}, {"options": {"input_price": 0.15, "output_price": 0.6}}]}])
    d = Dispatcher(cfg, None)
    for i in range(10):
        await d.dispatch("m", shaper(), stream=False, request_id=f"r{i}")
    assert set(CALLS) == {"m/1"}


async def test_lowest_cost_from_the_catalog():
    class Info:
        def __init__(self, i, o):
            self.input_price, self.output_price = i, o

    class Cat:
        def get(self, name):
            return {"cheap": Info(0.1, 0.4), "dear": Info(5, 15)}.get(name)

    cfg = make_config([{"name": "m", "strategy": "lowest_cost", "deployments": [{"model": "dear"}, {"model": "cheap"}]}])
    d = Dispatcher(cfg, None, catalog=Cat())
    await d.dispatch("m", shaper(), stream=False, request_id="r")
    assert CALLS == ["m/1"]


async def test_rpm_cap_moves_traffic_then_refuses_with_429():
    cfg = make_config([{"name": "m", "deployments": [{"rpm": 2}, {"rpm": 3}]}])
    d = Dispatcher(cfg, None)
    for i in range(5):
        await d.dispatch("m", shaper(), stream=False, request_id=f"r{i}")
    assert collections.Counter(CALLS) == {"m/0": 2, "m/1": 3}
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("m", shaper(), stream=False, request_id="r6")
    assert ei.value.status == 429 and ei.value.code == "deployment_rate_limited" and "retry-after" in ei.value.headers


async def test_tpm_cap_counts_prompt_tokens():
    cfg = make_config([{"name": "m", "deployments": [{"tpm": 1000}, {}]}])
    d = Dispatcher(cfg, None, rng=random.Random(0))
    for i in range(20):
        await d.dispatch("m", shaper(), stream=False, request_id=f"r{i}", prompt_tokens=300)
    # m/0 may take at most 3 requests of 300 prompt (+2 completion) tokens in the minute
    assert CALLS.count("m/0") <= 3 and CALLS.count("m/1") >= 17


async def test_total_timeout_also_bounds_a_stalled_stream_body():
    d = Dispatcher(make_config([{"name": "m", "deployments": [{}],
                                 "timeouts": {"first_token": 1, "stream_idle": None, "total": 0.4}}]), None)
    SCRIPTS["m/0"] = ["stall"]
    t = time.perf_counter()
    out = await d.dispatch("m", shaper(), stream=True, request_id="r")
    with pytest.raises(UpstreamError) as ei:
        await collect(out.stream)
    assert 0.35 < time.perf_counter() - t < 0.8
    assert ei.value.kind == "stream_cut" and "total timeout" in ei.value.message


async def test_stream_dropped_before_it_is_read_releases_the_deployment():
    import gc

    d = Dispatcher(make_config([{"name": "m", "deployments": [{}]}]), None)
    out = await d.dispatch("m", shaper(), stream=True, request_id="r")
    assert d.deployment_states("m")[0].inflight == 1
    del out
    gc.collect()
    await asyncio.sleep(0)
    assert d.deployment_states("m")[0].inflight == 0


# ---------------------------------------------------------------------------- the gateway's own refusals


@register("scripted_picky")
class PickyProvider(ScriptedProvider):
    """A scripted provider that, like Anthropic, cannot send `n` > 1: it says so in `check`, before any
    attempt, and (should a body get that far) from `chat` without calling out (nothing is scripted)."""

    name = "scripted_picky"

    def check(self, body, *, stream, operation="chat"):
        if (body.get("n") or 1) > 1:
            raise RequestRefused("one choice only; n must be 1", param="n")

    async def chat(self, body, timeouts):
        self.check(body, stream=False)
        return await super().chat(body, timeouts)


def shaper_n(n: int):
    def shape(name: str) -> tuple[dict, list[str]]:
        return {"model": name, "n": n, "messages": [{"role": "user", "content": "hi"}]}, []
    return shape


def picky_config(**model_kw: Any) -> Any:
    return make_config([{"name": "m", "deployments": [{"provider": "scripted_picky"}, {"provider": "scripted_picky"}],
                         "circuit": {"failures": 1}, **model_kw}, {"name": "f", "deployments": [{}]}])


@pytest.mark.parametrize("stream", [False, True])
async def test_a_provider_refusal_is_no_attempt_no_retry_no_failover(stream):
    metrics = Metrics()
    d = Dispatcher(picky_config(fallbacks=["f"]), None, metrics=metrics)
    for _ in range(3):  # one counted failure would open a circuit (failures: 1)
        with pytest.raises(RequestRefused) as ei:
            await d.dispatch("m", shaper_n(2), stream=stream, request_id="r")
        assert ei.value.status == 400 and ei.value.param == "n"
        assert ei.value.attempts == [] and refused_before_upstream(ei.value)
    assert CALLS == []  # no deployment called, the fallback `f` neither
    assert all(st.circuit.state == CLOSED and st.inflight == 0 for st in d.deployment_states("m"))
    assert metrics.attempts.values == {} and metrics.fallbacks.values == {}
    out = await d.dispatch("m", shaper_n(1), stream=False, request_id="r")  # an acceptable body is served
    assert out.model == "m" and out.attempts == []


async def test_a_fallback_that_refuses_is_skipped():
    cfg = make_config([{"name": "m", "deployments": [{}], "fallbacks": ["p", "f"]},
                       {"name": "p", "deployments": [{"provider": "scripted_picky"}]}, {"name": "f", "deployments": [{}]}])
    d = Dispatcher(cfg, None)
    SCRIPTS["m/0"] = [("status", 503)]
    out = await d.dispatch("m", shaper_n(2), stream=False, request_id="r")
    assert out.model == "f" and "p/0" not in CALLS and CALLS[-1] == "f/0"
    assert [a.deployment_id for a in out.attempts] == ["m/0"] * (len(CALLS) - 1)  # m's retries only


async def test_a_refusal_at_send_time_passes_through_untouched():
    """Belt and braces: a `RequestRefused` from the provider call itself (no `check` override caught it)
    is not an upstream failure either: no attempt, no retry on the other deployment, circuit closed."""
    d = Dispatcher(picky_config(), None)
    for st in d.deployment_states("m"):
        st.circuit.open(0.0)  # cooled down: the next request is the half-open probe
    d._models["m"].checkers = ()  # as if the check had let it through
    with pytest.raises(RequestRefused) as ei:
        await d.dispatch("m", shaper_n(2), stream=False, request_id="r")
    assert ei.value.attempts == [] and refused_before_upstream(ei.value)
    states = d.deployment_states("m")
    assert all(not st.circuit.probing and st.inflight == 0 for st in states)  # the probe was given back
    out = await d.dispatch("m", shaper_n(1), stream=False, request_id="r")  # and the next request probes
    assert out.attempts == [] and out.deployment.id in CALLS


async def test_shaping_refusals_of_the_requested_model_are_marked_before_upstream():
    d = Dispatcher(make_config([{"name": "m", "deployments": [{}], "context_window_fallback": "big"},
                                {"name": "big", "deployments": [{}]}]), None)
    with pytest.raises(GatewayError) as ei:
        await d.dispatch("m", shaper(refuse={"m"}), stream=False, request_id="r")
    assert refused_before_upstream(ei.value) and ei.value.attempts == []
    with pytest.raises(ContextWindowExceeded) as ei:  # too long for the model and its larger-window fallback
        await d.dispatch("m", shaper({"m": 5, "big": 5}), stream=False, request_id="r")
    assert refused_before_upstream(ei.value) and CALLS == []
    SCRIPTS["m/0"] = [("status", 400)]
    with pytest.raises(GatewayError) as ei:  # an upstream's own 400 is not
        await d.dispatch("m", shaper(), stream=False, request_id="r")
    assert not refused_before_upstream(ei.value) and len(ei.value.attempts) == 1
