"""Circuit breaker state machine (local) and its Redis mirror shared by replicas."""

from __future__ import annotations

import asyncio
import os

import pytest

from tiergate.config import CircuitPolicy
from tiergate.dispatch.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


def test_opens_after_n_failures_within_the_window():
    cb = CircuitBreaker(CircuitPolicy(failures=3, window_s=10, cooldown_s=5))
    assert not cb.failure(0.0) and not cb.failure(1.0)
    assert cb.state == CLOSED and cb.available(1.0)
    assert cb.failure(2.0)
    assert cb.state == OPEN and not cb.available(3.0) and cb.recovers_in(3.0) == pytest.approx(4.0)


def test_failures_outside_the_window_do_not_count():
    cb = CircuitBreaker(CircuitPolicy(failures=3, window_s=10, cooldown_s=5))
    cb.failure(0.0)
    cb.failure(1.0)
    assert not cb.failure(12.0)  # the first two fell out of the window
    assert cb.state == CLOSED


def test_half_open_single_probe_then_close_on_success():
    changes = []
    cb = CircuitBreaker(CircuitPolicy(failures=1, window_s=10, cooldown_s=5), on_change=changes.append)
    cb.failure(0.0)
    assert cb.available(5.0) and cb.state == HALF_OPEN
    cb.begin()
    assert not cb.available(5.1)  # one probe at a time
    assert cb.success() and cb.state == CLOSED and cb.available(5.2)
    assert changes == [OPEN, HALF_OPEN, CLOSED]


def test_half_open_probe_failure_reopens():
    cb = CircuitBreaker(CircuitPolicy(failures=1, window_s=10, cooldown_s=5))
    cb.failure(0.0)
    assert cb.available(6.0)
    cb.begin()
    assert cb.failure(6.5) and cb.state == OPEN and not cb.available(11.0) and cb.available(11.6)


def test_abandoned_probe_frees_the_slot():
    cb = CircuitBreaker(CircuitPolicy(failures=1, window_s=10, cooldown_s=1))
    cb.failure(0.0)
    assert cb.available(1.0)
    cb.begin()
    assert not cb.available(1.0)
    cb.abandon()
    assert cb.available(1.0)


def test_trip_honours_the_longer_wait():
    cb = CircuitBreaker(CircuitPolicy())
    cb.trip(0.0, 10.0)
    cb.trip(1.0, 2.0)  # shorter: ignored
    assert cb.state == OPEN and cb.open_until == 10.0


# ---------------------------------------------------------------------------- shared through Redis


def _redis():
    redis = pytest.importorskip("redis.asyncio")
    return redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1, socket_connect_timeout=1)


async def _redis_or_skip():
    r = _redis()
    try:
        await r.ping()
    except Exception:  # noqa: BLE001
        await r.aclose()
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    return r


@pytest.mark.redis
async def test_replicas_share_circuit_state_through_redis():
    from tests.unit.test_dispatch import CALLS, SCRIPTS, make_config, shaper
    from tiergate.dispatch.dispatcher import Dispatcher
    from tiergate.wire.errors import GatewayError

    SCRIPTS.clear()
    CALLS.clear()
    r = await _redis_or_skip()
    dep_id = f"shared-{os.urandom(4).hex()}"
    cfg = make_config([{"name": "m", "deployments": [{"id": dep_id}], "retry": {"max_retries": 0},
                        "circuit": {"failures": 3, "window_s": 10, "cooldown_s": 0.6}}])
    a = Dispatcher(cfg, None, shared_state=r)
    b = Dispatcher(cfg, None, shared_state=r)
    a.shared.refresh_s = b.shared.refresh_s = 0.05
    try:
        SCRIPTS[dep_id] = [("status", 500), ("status", 500), ("status", 500), "ok"]
        # failures seen by two replicas add up in one shared window
        for d in (a, b, a):
            with pytest.raises(GatewayError):
                await d.dispatch("m", shaper(), stream=False, request_id="r")
        assert a.deployment_states("m")[0].circuit.state == OPEN
        await asyncio.sleep(0.15)  # b's background refresh picks the open state up
        assert b.deployment_states("m")[0].circuit.state == OPEN
        with pytest.raises(GatewayError) as ei:
            await b.dispatch("m", shaper(), stream=False, request_id="r")
        assert ei.value.code == "no_healthy_deployment" and len(CALLS) == 3
        await asyncio.sleep(0.6)
        # half-open: replicas race for the single probe; exactly one upstream call is made
        res = await asyncio.gather(a.dispatch("m", shaper(), stream=False, request_id="p1"),
                                   b.dispatch("m", shaper(), stream=False, request_id="p2"),
                                   return_exceptions=True)
        assert sum(not isinstance(x, BaseException) for x in res) == 1 and len(CALLS) == 4
        await asyncio.sleep(0.15)
        for d in (a, b):
            assert d.deployment_states("m")[0].circuit.state == CLOSED
    finally:
        await a.close()
        await b.close()
        await r.delete(f"tiergate:cb:{dep_id}:state", f"tiergate:cb:{dep_id}:fails", f"tiergate:cb:{dep_id}:probe")
        await r.aclose()


@pytest.mark.redis
async def test_a_probe_ending_without_a_verdict_frees_the_shared_probe_lock():
    """Replica a's half-open probe times out by the request's own (stricter) limit: no verdict on the
    deployment, and replica b may probe at once instead of waiting for a's lock (5 s here) to expire."""
    from tests.unit.test_dispatch import CALLS, SCRIPTS, make_config, shaper
    from tiergate.dispatch.dispatcher import Dispatcher
    from tiergate.providers.base import Timeouts
    from tiergate.wire.errors import GatewayError

    SCRIPTS.clear()
    CALLS.clear()
    r = await _redis_or_skip()
    dep_id = f"probe-{os.urandom(4).hex()}"
    cfg = make_config([{"name": "m", "deployments": [{"id": dep_id}], "retry": {"max_retries": 0},
                        "timeouts": {"connect": 1, "first_token": 2, "stream_idle": 2, "total": 5},
                        "circuit": {"failures": 1, "window_s": 10, "cooldown_s": 0.3}}])
    a = Dispatcher(cfg, None, shared_state=r)
    b = Dispatcher(cfg, None, shared_state=r)
    a.shared.refresh_s = b.shared.refresh_s = 0.05
    try:
        SCRIPTS[dep_id] = [("status", 500), ("slow", 0.2), "ok"]
        with pytest.raises(GatewayError):
            await a.dispatch("m", shaper(), stream=False, request_id="r")
        await asyncio.sleep(0.4)  # cooldown over: half-open on both replicas
        with pytest.raises(GatewayError):  # a's probe: its own first_token 0.05 s fires, no verdict
            await a.dispatch("m", shaper(), stream=False, request_id="p1",
                             timeouts=Timeouts(connect=1, first_token=0.05, stream_idle=2, total=5))
        assert await r.get(f"tiergate:cb:{dep_id}:probe") is None  # the lock is gone, not left for 5 s
        out = await b.dispatch("m", shaper(), stream=False, request_id="p2")  # b probes and closes it
        assert out.deployment.id == dep_id and len(CALLS) == 3
        assert b.deployment_states("m")[0].circuit.state == CLOSED
    finally:
        await a.close()
        await b.close()
        await r.delete(f"tiergate:cb:{dep_id}:state", f"tiergate:cb:{dep_id}:fails", f"tiergate:cb:{dep_id}:probe")
        await r.aclose()


@pytest.mark.redis
async def test_retry_after_trip_is_shared():
    from tests.unit.test_dispatch import SCRIPTS, make_config, shaper
    from tiergate.dispatch.dispatcher import Dispatcher
    from tiergate.wire.errors import GatewayError

    SCRIPTS.clear()
    r = await _redis_or_skip()
    dep_id = f"shared-{os.urandom(4).hex()}"
    cfg = make_config([{"name": "m", "deployments": [{"id": dep_id}], "retry": {"max_retry_after_s": 0.1}}])
    a = Dispatcher(cfg, None, shared_state=r)
    b = Dispatcher(cfg, None, shared_state=r)
    try:
        SCRIPTS[dep_id] = [("status", 429, 30)]
        with pytest.raises(GatewayError):
            await a.dispatch("m", shaper(), stream=False, request_id="r")
        await b.shared.refresh()
        assert b.deployment_states("m")[0].circuit.state == OPEN
        assert b.deployment_states("m")[0].circuit.recovers_in(asyncio.get_running_loop().time()) > 25
        with pytest.raises(GatewayError) as ei:  # every replica answers 429 while the upstream's wait lasts
            await b.dispatch("m", shaper(), stream=False, request_id="r2")
        assert ei.value.status == 429 and ei.value.code == "deployment_rate_limited"
    finally:
        await a.close()
        await b.close()
        await r.delete(f"tiergate:cb:{dep_id}:state", f"tiergate:cb:{dep_id}:fails", f"tiergate:cb:{dep_id}:probe")
        await r.aclose()


async def test_unreachable_redis_falls_back_to_local_state(monkeypatch, caplog):
    import time
    import types

    redis = pytest.importorskip("redis.asyncio")
    from tests.unit.test_dispatch import SCRIPTS, make_config, shaper
    from tiergate.dispatch.dispatcher import Dispatcher
    from tiergate.wire.errors import GatewayError

    SCRIPTS.clear()
    dead = redis.Redis(host="127.0.0.1", port=1, socket_timeout=0.2, socket_connect_timeout=0.2)
    cfg = make_config([{"name": "m", "deployments": [{"id": "x"}], "retry": {"max_retries": 0},
                        "circuit": {"failures": 2, "cooldown_s": 30}}])
    d = Dispatcher(cfg, None, shared_state=dead)
    # a process on a machine up for under a minute (monotonic clock 5 s) still warns the first time
    monkeypatch.setattr("tiergate.dispatch.shared.time", types.SimpleNamespace(monotonic=lambda: 5.0, time=time.time))
    caplog.set_level("WARNING", logger="tiergate")
    try:
        SCRIPTS["x"] = [("status", 500), ("status", 500), "ok"]
        for _ in range(2):
            with pytest.raises(GatewayError) as ei:
                await d.dispatch("m", shaper(), stream=False, request_id="r")
            assert ei.value.status == 500
        assert d.deployment_states("m")[0].circuit.state == OPEN and not d.shared.healthy
        warned = [r.getMessage() for r in caplog.records if "redis unavailable" in r.getMessage()]
        assert len(warned) == 1, warned  # once, not once per failed call
    finally:
        await d.close()
        await dead.aclose()


@pytest.mark.redis
async def test_rpm_cap_is_shared_by_replicas():
    from tests.unit.test_dispatch import CALLS, SCRIPTS, make_config, shaper
    from tiergate.dispatch.dispatcher import Dispatcher
    from tiergate.wire.errors import GatewayError

    SCRIPTS.clear()
    CALLS.clear()
    r = await _redis_or_skip()
    dep_id = f"shared-{os.urandom(4).hex()}"
    cfg = make_config([{"name": "m", "deployments": [{"id": dep_id, "rpm": 6, "tpm": 100000}]}])
    a = Dispatcher(cfg, None, shared_state=r)
    b = Dispatcher(cfg, None, shared_state=r)
    try:
        for i in range(4):
            await a.dispatch("m", shaper(), stream=False, request_id=f"a{i}", prompt_tokens=10)
        await a.shared.refresh()  # push a's 4 requests
        await b.shared.refresh()  # b learns them
        for i in range(2):
            await b.dispatch("m", shaper(), stream=False, request_id=f"b{i}", prompt_tokens=10)
        with pytest.raises(GatewayError) as ei:  # 6 used across the two replicas
            await b.dispatch("m", shaper(), stream=False, request_id="b3", prompt_tokens=10)
        assert ei.value.status == 429 and ei.value.code == "deployment_rate_limited"
        await b.shared.refresh()
        await a.shared.refresh()
        with pytest.raises(GatewayError):
            await a.dispatch("m", shaper(), stream=False, request_id="a5", prompt_tokens=10)
        assert len(CALLS) == 6
        tpm = a.deployment_states("m")[0].tpm
        assert tpm is not None and tpm.level(asyncio.get_running_loop().time()) >= 6 * 10
    finally:
        await a.close()
        await b.close()
        keys = [k async for k in r.scan_iter(f"tiergate:cb:{dep_id}:*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()
