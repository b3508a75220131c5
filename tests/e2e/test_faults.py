"""The fault matrix, end to end: the real gateway (tests.helpers.running_gateway) driven by the
official `openai` SDK, in front of two loopback fake OpenAI upstreams (tests/fakes/openai_upstream.py).

For every fault (429 + Retry-After, 500, 503, hang, connection reset, malformed JSON, SSE cut midway,
stall between chunks) x (streaming, non-streaming):
- `test_fault_with_a_healthy_second_deployment`: the faulty deployment is chosen first (weight), the
  client still gets the one correct answer, served by the healthy deployment, and the failed attempt
  shows in /metrics;
- `test_fault_with_no_healthy_deployment`: the only deployment keeps failing; the client gets the
  OpenAI-shaped error for that fault (status, type) within the configured total timeout.
Streams cut or stalled *after* the first content token cannot fail over without sending two answers;
`test_stream_cut_after_first_token_ends_with_an_error_event` checks they end with an error event instead.

`bench/fault_matrix.py` reuses `FAULTS`, `EXPECTED` and `gateway_config` to measure success rate and
added latency per fault.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway

TIMEOUTS = {"connect": 1.0, "first_token": 0.5, "stream_idle": 0.5, "total": 4.0}
RETRY = {"max_retries": 2, "backoff_base_s": 0.05, "backoff_max_s": 0.2, "max_retry_after_s": 2}

# fault name -> (fake upstream kind, params). `after: 1` cuts/stalls/breaks a stream after the role chunk,
# i.e. before the first content token, where failover must be invisible.
FAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "429+retry-after": ("429", {"retry_after": 1}),
    "500": ("500", {}),
    "503": ("503", {}),
    "hang": ("hang", {"seconds": 30}),
    "reset": ("reset", {}),
    "malformed-json": ("malformed", {"after": 1}),
    "sse-cut-midway": ("cut", {"after": 1}),
    "stall-between-chunks": ("stall", {"after": 1, "seconds": 30}),
}

# what the client must get when no deployment is healthy: (HTTP status, OpenAI error type)
EXPECTED: dict[str, tuple[int, str]] = {
    "429+retry-after": (429, "rate_limit_error"),
    "500": (500, "api_error"),
    "503": (503, "api_error"),
    "hang": (504, "timeout_error"),
    "reset": (502, "api_error"),
    "malformed-json": (502, "api_error"),
    "sse-cut-midway": (502, "api_error"),
    "stall-between-chunks": (504, "timeout_error"),
}


def slug(fault: str) -> str:
    return fault.replace("+", "-")


def gateway_config(bad: FakeOpenAI, good: FakeOpenAI, db: str, *, circuit: dict | None = None) -> dict[str, Any]:
    """Per fault and mode: `dual-<fault>-<mode>` (faulty deployment first by weight, healthy second) and
    `solo-<fault>-<mode>` (the faulty deployment only). Separate deployments keep circuits apart."""
    models = []
    for fault in FAULTS:
        for mode in ("stream", "plain"):
            common = {"catalog": "gpt-4o-mini", "timeouts": TIMEOUTS, "retry": RETRY,
                      "circuit": circuit or {"failures": 5, "window_s": 30, "cooldown_s": 30}}
            models.append({"name": f"dual-{slug(fault)}-{mode}", **common, "deployments": [
                {"id": f"bad-{slug(fault)}-{mode}", "provider": "openai_compatible", "api_base": bad.url,
                 "model": "gpt-4o-mini", "weight": 1e6},
                {"id": f"good-{slug(fault)}-{mode}", "provider": "openai_compatible", "api_base": good.url,
                 "model": "gpt-4o-mini", "weight": 1e-6}]})
            models.append({"name": f"solo-{slug(fault)}-{mode}", **common, "deployments": [
                {"id": f"solo-{slug(fault)}-{mode}", "provider": "openai_compatible", "api_base": bad.url,
                 "model": "gpt-4o-mini"}]})
    return {"models": models, "storage": f"sqlite:///{db}"}


def ask(client: openai.OpenAI, model: str, stream: bool) -> tuple[str, dict[str, str]]:
    """One chat completion; returns (answer text, response headers)."""
    msgs = [{"role": "user", "content": "hello there"}]
    if not stream:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=msgs)
        return raw.parse().choices[0].message.content or "", dict(raw.headers)
    with client.chat.completions.with_streaming_response.create(model=model, messages=msgs, stream=True) as raw:
        text = "".join((c.choices[0].delta.content or "") for c in raw.parse() if c.choices)
        return text, dict(raw.headers)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("faults") / "tiergate.db"
    with FakeOpenAI() as bad, FakeOpenAI() as good, running_gateway(gateway_config(bad, good, str(db))) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=15)
        yield bad, good, client, url
        bad.clear_faults()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_with_a_healthy_second_deployment(env, fault, stream):
    bad, good, client, url = env
    kind, params = FAULTS[fault]
    mode = "stream" if stream else "plain"
    bad.clear()
    good.clear()
    bad.fail_next(kind, **params)
    t = time.perf_counter()
    text, headers = ask(client, f"dual-{slug(fault)}-{mode}", stream)
    elapsed = time.perf_counter() - t
    assert text == "echo: hello there"  # one whole answer, never two interleaved
    assert headers["x-tiergate-deployment"] == f"good-{slug(fault)}-{mode}"
    assert len(bad.requests) == 1 and len(good.requests) == 1
    assert elapsed < TIMEOUTS["total"]
    metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
    model, s = f"dual-{slug(fault)}-{mode}", slug(fault)
    assert f'tiergate_upstream_attempts_total{{model="{model}",deployment="bad-{s}-{mode}",outcome=' in metrics
    assert f'tiergate_requests_total{{model="{model}",deployment="good-{s}-{mode}",status="ok"}} 1' in metrics
    assert f'tiergate_tokens_total{{model="{model}",deployment="good-{s}-{mode}",kind="completion"}}' in metrics


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_with_no_healthy_deployment(env, fault, stream):
    bad, _good, client, _url = env
    kind, params = FAULTS[fault]
    mode = "stream" if stream else "plain"
    bad.clear()
    bad.fail_every(kind, 1, **params)
    try:
        t = time.perf_counter()
        with pytest.raises(openai.APIStatusError) as ei:
            ask(client, f"solo-{slug(fault)}-{mode}", stream)
        elapsed = time.perf_counter() - t
    finally:
        bad.clear_faults()
    status, etype = EXPECTED[fault]
    e = ei.value
    assert e.status_code == status, e.message
    body = e.body if isinstance(e.body, dict) else {}
    assert body.get("type") == etype and body.get("message")  # the SDK unwraps {"error": {...}}
    assert set(body) >= {"message", "type", "param", "code"}
    assert elapsed < TIMEOUTS["total"] + 0.5
    assert 1 <= len(bad.requests) <= 1 + RETRY["max_retries"]
    if fault == "429+retry-after":
        assert e.response.headers.get("retry-after") == "1"


@pytest.mark.parametrize("kind", ["cut", "stall", "error_event"])
def test_stream_cut_after_first_token_ends_with_an_error_event(env, kind):
    bad, good, client, _url = env
    bad.clear()
    good.clear()
    bad.fail_next(kind, after=2, seconds=30)
    got = []
    with pytest.raises(openai.APIError) as ei:  # the error arrives while iterating
        for c in client.chat.completions.create(model="dual-500-stream", stream=True,
                                                messages=[{"role": "user", "content": "hello there"}]):
            got.extend(ch.delta.content or "" for ch in c.choices)
    assert "".join(got) == "echo:"  # the first word reached the client, then the error; no second answer
    assert "upstream" in str(ei.value.message).lower()
    assert len(good.requests) == 0


def test_open_circuit_answers_503_fast_then_recovers(tmp_path):
    """After N failures the deployment is skipped without a call until the cooldown, then one probe."""
    with FakeOpenAI() as bad, FakeOpenAI() as good:
        cfg = gateway_config(bad, good, str(tmp_path / "t.db"),
                             circuit={"failures": 2, "window_s": 30, "cooldown_s": 1.0})
        with running_gateway(cfg) as url:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=15)
            bad.fail_every("500", 1)
            with pytest.raises(openai.InternalServerError):
                ask(client, "solo-500-plain", False)  # two attempts: the circuit opens
            n = len(bad.requests)
            t = time.perf_counter()
            with pytest.raises(openai.APIStatusError) as ei:
                ask(client, "solo-500-plain", False)
            assert time.perf_counter() - t < 0.3 and len(bad.requests) == n
            assert ei.value.status_code == 503 and ei.value.code == "no_healthy_deployment"
            assert ei.value.response.headers.get("retry-after")
            bad.clear_faults()
            gauge = 'tiergate_circuit_state{model="solo-500-plain",deployment="solo-500-plain"} '
            assert gauge + "2" in httpx.get(url.removesuffix("/v1") + "/metrics").text
            time.sleep(1.1)  # no request in between: the gauge still reads the state at scrape time
            assert gauge + "1" in httpx.get(url.removesuffix("/v1") + "/metrics").text
            text, _ = ask(client, "solo-500-plain", False)
            assert text == "echo: hello there"
            metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
            assert 'tiergate_circuit_state{model="solo-500-plain",deployment="solo-500-plain"} 0' in metrics


def _one_slow_deployment(up: FakeOpenAI, db: str, **circuit: float) -> dict[str, Any]:
    return {"models": [{"name": "m", "catalog": "gpt-4o-mini", "timeouts": TIMEOUTS, "retry": RETRY,
                        "circuit": {"failures": 3, "window_s": 30, "cooldown_s": 30, **circuit},
                        "deployments": [{"id": "m/0", "provider": "openai_compatible", "api_base": up.url,
                                         "model": "gpt-4o-mini"}]}],
            "storage": f"sqlite:///{db}"}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_clients_own_tight_timeout_does_not_open_the_circuit_for_everyone(tmp_path, stream):
    """Acceptance audit: a healthy deployment answering in 200 ms, `circuit: {failures: 3}`; a request with
    its own first_token of 50 ms times out, and the next normal requests are still served."""
    with FakeOpenAI() as up:
        up.fail_every("slow", 1, seconds=0.2)
        with running_gateway(_one_slow_deployment(up, str(tmp_path / "t.db"))) as url:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=15)
            msgs = [{"role": "user", "content": "hello there"}]
            for _ in range(4):  # more than `failures`
                with pytest.raises(openai.APIStatusError) as ei:
                    r = client.chat.completions.create(
                        model="m", messages=msgs, stream=stream,
                        extra_body={"tiergate": {"timeouts": {"first_token": 0.05}}})
                    if stream:
                        list(r)
                assert ei.value.status_code == 504 and "first_token limit (0.05s)" in ei.value.message
            assert len(up.requests) == 4  # one attempt each: the same limit would fail the same way again
            text, headers = ask(client, "m", stream)
            assert text == "echo: hello there" and headers["x-tiergate-deployment"] == "m/0"
            metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
            assert 'tiergate_circuit_state{model="m",deployment="m/0"} 0' in metrics


def test_a_deployment_slower_than_its_configured_timeout_still_opens_the_circuit(tmp_path):
    with FakeOpenAI() as up:
        up.fail_every("slow", 1, seconds=TIMEOUTS["first_token"] + 0.3)
        with running_gateway(_one_slow_deployment(up, str(tmp_path / "t.db"))) as url:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=15)
            with pytest.raises(openai.APIStatusError) as ei:
                ask(client, "m", False)
            assert ei.value.status_code == 504 and len(up.requests) == 3
            with pytest.raises(openai.APIStatusError) as ei:
                ask(client, "m", False)
            assert ei.value.status_code == 503 and ei.value.code == "no_healthy_deployment"
            metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
            assert 'tiergate_circuit_state{model="m",deployment="m/0"} 2' in metrics
