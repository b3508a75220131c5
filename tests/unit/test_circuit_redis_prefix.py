"""The shared circuit state and rpm/tpm windows live under the `redis:` URL's `?prefix=` (as budgets,
rate limits and the cache do): a circuit opened by one fleet is in `<prefix>cb:<deployment>:state`, never
in `tiergate:cb:…`, and a fleet under another prefix on the same Redis does not see it."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from tests.unit.test_store_fixtures import _redis_up
from tiergate.config import parse_config
from tiergate.dispatch.circuit import CLOSED, OPEN
from tiergate.dispatch.dispatcher import Dispatcher
from tiergate.providers.base import Provider, UpstreamError
from tiergate.providers.registry import register
from tiergate.wire.errors import GatewayError

DB = 7  # a Redis database of its own, as in the audit's `redis://127.0.0.1:6379/7?prefix=judge:`
pytestmark = pytest.mark.skipif(not _redis_up(), reason="Redis is not reachable on 127.0.0.1:6379")


@register("always_500")
class _Failing(Provider):
    name = "always_500"

    async def chat(self, body, timeouts):
        raise UpstreamError(500, "upstream said 500", type="server_error")

    async def chat_stream(self, body, timeouts):  # pragma: no cover - not streamed here
        raise UpstreamError(500, "upstream said 500", type="server_error")
        yield {}


def _config(dep: str, redis_url: str | None) -> Any:
    raw: dict[str, Any] = {"models": [{
        "name": "m", "retry": {"max_retries": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.02},
        "circuit": {"failures": 2, "window_s": 30, "cooldown_s": 30},
        "timeouts": {"connect": 1, "first_token": 2, "stream_idle": 2, "total": 5},
        "deployments": [{"id": dep, "provider": "always_500"}]}]}
    if redis_url:
        raw["redis"] = redis_url
    return parse_config(raw, env={})


def _shape(name: str) -> tuple[dict, list[str]]:
    return {"model": name, "messages": [{"role": "user", "content": "hi"}]}, []


@pytest.fixture
def sync_redis():
    import redis

    r = redis.Redis.from_url(f"redis://127.0.0.1:6379/{DB}")
    made: list[str] = []
    yield r, made
    for pattern in made:
        keys = list(r.scan_iter(pattern))
        if keys:
            r.delete(*keys)
    r.close()


async def _open_circuit(d: Dispatcher) -> None:
    with pytest.raises(GatewayError):
        await d.dispatch("m", _shape, stream=False, request_id="req-1")
    assert d.states[0].circuit.state == OPEN


async def test_circuit_keys_use_the_redis_url_prefix(sync_redis):
    r, made = sync_redis
    tag = secrets.token_hex(5)
    dep, prefix = f"dep-{tag}", f"tgtest:cb{tag}:"
    made += [f"{prefix}*", f"tiergate:cb:{dep}:*"]
    d = Dispatcher(_config(dep, f"redis://127.0.0.1:6379/{DB}?prefix={prefix}"), None)
    try:
        await _open_circuit(d)
        assert d.shared is not None and d.shared.prefix == f"{prefix}cb:"
        assert r.get(f"{prefix}cb:{dep}:state") is not None
        assert r.get(f"tiergate:cb:{dep}:state") is None
    finally:
        await d.close()


async def test_fleets_under_different_prefixes_do_not_share_circuits(sync_redis):
    """Replicas get the accounting's Redis client (`shared_state`, connected to the URL without its
    prefix) and must still take the prefix from the `redis:` URL."""
    from tiergate.accounting.service import connect_redis, split_redis_url

    r, made = sync_redis
    tag = secrets.token_hex(5)
    dep = f"dep-{tag}"
    url_a = f"redis://127.0.0.1:6379/{DB}?prefix=tgtest:a{tag}:"
    url_b = f"redis://127.0.0.1:6379/{DB}?prefix=tgtest:b{tag}:"
    made += [f"tgtest:a{tag}:*", f"tgtest:b{tag}:*", f"tiergate:cb:{dep}:*"]
    clients = [connect_redis(split_redis_url(u)[0]) for u in (url_a, url_a, url_b)]
    a1, a2, b = (Dispatcher(_config(dep, u), None, shared_state=c) for u, c in zip((url_a, url_a, url_b), clients))
    try:
        await _open_circuit(a1)
        await a2.shared.refresh()
        await b.shared.refresh()
        assert a2.states[0].circuit.state == OPEN  # the same fleet shares it
        assert b.states[0].circuit.state == CLOSED  # the other fleet does not
        assert r.get(f"tgtest:a{tag}:cb:{dep}:state") is not None
        assert r.get(f"tiergate:cb:{dep}:state") is None
    finally:
        for d in (a1, a2, b):
            await d.close()
        for c in clients:
            await c.aclose()


async def test_without_a_prefix_the_default_is_unchanged(sync_redis):
    r, made = sync_redis
    dep = f"dep-{secrets.token_hex(5)}"
    made.append(f"tiergate:cb:{dep}:*")
    d = Dispatcher(_config(dep, f"redis://127.0.0.1:6379/{DB}"), None)
    try:
        await _open_circuit(d)
        assert r.get(f"tiergate:cb:{dep}:state") is not None
    finally:
        await d.close()
