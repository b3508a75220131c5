"""The response cache end to end, with the official SDK against a gateway on loopback and fake upstreams:
what is never cached (an unusable answer, a fallback model's answer), who an entry is served to (the key
that stored it; an `auto` request that would have routed the same way), the `tiergate.cache` option's
type, the byte bound of the in-process cache, Redis TTLs in milliseconds and entries shared by replicas
per key, `tiergate_tokens_total` (billed tokens: hits add none) and schema order in the cache key."""

from __future__ import annotations

import re
import secrets
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.fakes.openai_upstream import FakeOpenAI, _example, _text
from tests.helpers import ledger_rows, running_gateway
from tests.unit.test_store_fixtures import REDIS_URL, _redis_up

MASTER = "sk-cache-scopes-master-0123456789"
CANDIDATES = ["gpt-4o-mini", "o3-mini@high"]


class CacheFake(FakeOpenAI):
    """The fake upstream, plus: gpt-4o-mini answers a prompt containing EMPTY with no content and
    `finish_reason: length` (an unusable answer); `BIG:<n>` is answered with n characters; a `json_schema`
    request gets JSON in the schema's key order."""

    def _completion(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        out = super()._completion(body, model)
        text = _text((body.get("messages") or [{}])[-1].get("content"))
        for ch in out["choices"]:
            if "EMPTY" in text and model == "gpt-4o-mini":
                ch["message"]["content"], ch["finish_reason"] = "", "length"
            elif text.startswith("BIG:"):
                ch["message"]["content"] = "x" * int(text.split(":")[1].split()[0])
            elif (body.get("response_format") or {}).get("type") == "json_schema":
                ch["message"]["content"] = orjson.dumps(_example(body["response_format"]["json_schema"]["schema"])).decode()
        return out


def _models(up: FakeOpenAI, down: FakeOpenAI) -> list[dict[str, Any]]:
    dep = [{"provider": "openai", "api_base": up.url, "api_key": "env:TG_CACHE_KEY"}]
    return [{"name": m, "deployments": dep} for m in ("gpt-4o-mini", "gpt-4o", "o3-mini")] + [
        {"name": "flaky", "catalog": "gpt-4o-mini", "retry": {"max_retries": 0}, "fallbacks": ["gpt-4o"],
         "deployments": [{"provider": "openai", "api_base": down.url, "api_key": "env:TG_CACHE_KEY"}]}]


class Env:
    def __init__(self, base: str, up: CacheFake, db) -> None:
        self.base, self.up, self.db = base, up, db
        self.admin = httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                                  headers={"authorization": f"Bearer {MASTER}"}, timeout=10)

    def client(self, key: str = MASTER) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base, api_key=key, max_retries=0, timeout=20)

    def key(self, **fields: Any) -> openai.OpenAI:
        r = self.admin.post("/keys", json={"name": "k", **fields})
        assert r.status_code == 200, r.text
        return self.client(r.json()["key"])


def _gateway(tmp_path_factory, name: str, cache: dict[str, Any] | None = None, redis: str | None = None):
    db = tmp_path_factory.mktemp(name) / "tiergate.db"
    return db, {"routing": {"candidates": ["gpt-4o-mini", "gpt-4o", "o3-mini@low", "o3-mini@high"]},
                "storage": f"sqlite:///{db}", **({"cache": cache} if cache else {}),
                **({"redis": redis} if redis else {})}


ENV = {"TG_CACHE_KEY": "sk-up", "TIERGATE_MASTER_KEY": MASTER}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A gateway with the cache's default settings (the options this file tests for are not needed)."""
    db, cfg = _gateway(tmp_path_factory, "cache-scopes")
    with CacheFake() as up, FakeOpenAI() as down:
        down.fail_every("500", 1)  # `flaky` never answers: gpt-4o, its fallback, does
        with running_gateway({**cfg, "models": _models(up, down)}, env=ENV) as base:
            e = Env(base, up, db)
            yield e
            e.admin.close()


def _chat(c: openai.OpenAI, content: str, **kw: Any):
    kw.setdefault("model", "gpt-4o-mini")
    return c.chat.completions.with_raw_response.create(
        messages=[{"role": "user", "content": content}], temperature=0, **kw)


def _tag() -> str:
    return secrets.token_hex(4)  # a new gateway per module: only where routing does not read the prompt


def _auto(**tg: Any) -> dict[str, Any]:
    return {"model": "auto", "extra_body": {"tiergate": {"quality_target": 0.01, "cache": True, **tg}}}


# ------------------------------------------------------------------ 1: unusable answers


def test_an_unusable_answer_is_never_cached(env):
    """An empty `finish_reason: length` answer that could not escalate (one candidate) was cached in the
    routed scope and served to every later `auto` request, even one that could escalate; explicit
    requests' unusable answers are not cached either."""
    prompt = "EMPTY say hi, unusable"  # fixed: the router's predictions (and so escalation) read it
    c = env.client()
    alone = _chat(c, prompt, **_auto(candidates=["gpt-4o-mini"]))
    assert alone.parse().choices[0].finish_reason == "length" and alone.headers["x-tiergate-cache"] == "miss"
    again = _chat(c, prompt, **_auto(candidates=["gpt-4o-mini"]))
    assert again.headers["x-tiergate-cache"] == "miss" and again.parse().id != alone.parse().id
    full = _chat(c, prompt, **_auto())  # may escalate: gets a usable answer, not the cached empty one
    assert full.headers["x-tiergate-cache"] == "miss" and full.headers["x-tiergate-model"] != "gpt-4o-mini"
    assert full.parse().choices[0].message.content
    explicit = [_chat(c, prompt, extra_body={"tiergate": {"cache": True}}) for _ in range(2)]
    assert [r.headers["x-tiergate-cache"] for r in explicit] == ["miss", "miss"]


# ------------------------------------------------------------------ 2: routed entries


def test_an_escalated_entry_is_served_only_to_requests_that_route_the_same_way(env):
    """The routed entry was keyed by the first candidate's body alone: o3-mini's escalated answer reached
    requests whose candidates or cost cap rule o3-mini out."""
    prompt = "EMPTY say hi scoped"  # fixed: o3-mini@high is predicted better than gpt-4o-mini for it
    c = env.client()
    first = _chat(c, prompt, **_auto(candidates=CANDIDATES))
    assert first.headers["x-tiergate-model"] == "o3-mini" and first.headers["x-tiergate-cache"] == "miss"
    hit = _chat(c, prompt, **_auto(candidates=CANDIDATES))
    assert hit.headers["x-tiergate-cache"] == "hit" and hit.headers["x-tiergate-model"] == "o3-mini"
    for tg in ({"candidates": ["gpt-4o-mini"]}, {"candidates": CANDIDATES, "max_cost_usd": 0.01}):
        r = _chat(c, prompt, **_auto(**tg))
        assert r.headers["x-tiergate-model"] == "gpt-4o-mini", tg
        assert r.headers["x-tiergate-cache"] == "miss" and "x-tiergate-escalated" not in r.headers, tg


# ------------------------------------------------------------------ 3: tenancy


def test_entries_are_kept_per_key_even_when_a_request_turns_the_cache_on(env):
    """Entries were shared by every key (another key's hit told it the exact prompt was sent, with the
    first key's completion id), also for a key created with `cache: false` that turned the cache on per
    request. Now each key sees only its own entries."""
    prompt = f"secret prompt {_tag()}"
    a, b = env.key(cache=True), env.key(cache=True)
    first = _chat(a, prompt)
    assert first.headers["x-tiergate-cache"] == "miss"
    assert _chat(a, prompt).headers["x-tiergate-cache"] == "hit"
    other = _chat(b, prompt)
    assert other.headers["x-tiergate-cache"] == "miss" and other.parse().id != first.parse().id
    off = env.key(cache=False)
    assert "x-tiergate-cache" not in _chat(off, prompt).headers  # the key's flag is the default
    on = [_chat(off, prompt, extra_body={"tiergate": {"cache": True}}) for _ in range(2)]
    assert [r.headers["x-tiergate-cache"] for r in on] == ["miss", "hit"]  # its own entry, not a's
    assert on[0].parse().id != first.parse().id and on[1].parse().id == on[0].parse().id
    assert "x-tiergate-cache" not in _chat(a, prompt, extra_body={"tiergate": {"cache": False}}).headers


# ------------------------------------------------------------------ 4: fallback answers


def test_an_answer_from_a_fallback_model_is_not_cached(env):
    """`flaky` failed and gpt-4o answered; the answer was cached under `flaky` and a hit then reported
    `flaky` as the model served (header and ledger)."""
    prompt = f"fallback {_tag()}"
    c = env.client()
    out = [_chat(c, prompt, model="flaky", extra_body={"tiergate": {"cache": True}}) for _ in range(2)]
    for r in out:
        assert r.headers["x-tiergate-cache"] == "miss"
        assert r.headers["x-tiergate-model"] == "gpt-4o" and r.headers["x-tiergate-fallback"] == "flaky->gpt-4o"
    rows = ledger_rows(env.db, "request_id = ?", out[1].headers["x-request-id"], columns="status, served_model")
    assert rows == [{"status": "ok", "served_model": "gpt-4o"}]


# ------------------------------------------------------------------ 6: option type, metrics, key order


@pytest.mark.parametrize("value", ["no", "false", 1])
def test_a_cache_option_that_is_not_a_boolean_is_a_400(env, value):
    with pytest.raises(openai.BadRequestError) as e:
        _chat(env.client(), f"o {_tag()}", extra_body={"tiergate": {"cache": value}})
    assert e.value.body["param"] == "tiergate.cache" and "tiergate.cache" in e.value.message


def _tokens_total(env) -> float:
    text = httpx.get(env.base.removesuffix("/v1") + "/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^tiergate_tokens_total\{[^}]*\} (\S+)$", text, re.MULTILINE))


def test_a_cache_hit_adds_no_billed_tokens_to_the_metrics(env):
    """`tiergate_tokens_total` is "Tokens billed"; a hit (billed $0) added the cached answer's usage."""
    c, prompt = env.client(), f"metrics {_tag()}"
    assert _chat(c, prompt, extra_body={"tiergate": {"cache": True}}).headers["x-tiergate-cache"] == "miss"
    before = _tokens_total(env)
    hit = _chat(c, prompt, extra_body={"tiergate": {"cache": True}})
    assert hit.headers["x-tiergate-cache"] == "hit"
    ledger_rows(env.db, "request_id = ?", hit.headers["x-request-id"])  # the hit's row is recorded (and observed)
    assert _tokens_total(env) == before


def test_schema_property_order_is_part_of_the_cache_key(env):
    """Structured output follows the schema's key order, so two schemas that differ only in the order of
    `properties` are two requests (every nested object was sorted into one key)."""
    def schema(order: list[str]) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": {"name": "s", "schema": {
            "type": "object", "properties": {k: {"type": "string"} for k in order}}}}

    c, prompt = env.client(), f"order {_tag()}"
    a = _chat(c, prompt, response_format=schema(["zeta", "alpha"]), extra_body={"tiergate": {"cache": True}})
    b = _chat(c, prompt, response_format=schema(["alpha", "zeta"]), extra_body={"tiergate": {"cache": True}})
    assert (a.headers["x-tiergate-cache"], b.headers["x-tiergate-cache"]) == ("miss", "miss")
    assert list(orjson.loads(b.parse().choices[0].message.content)) == ["alpha", "zeta"]
    assert list(env.up.last.body["response_format"]["json_schema"]["schema"]["properties"]) == ["alpha", "zeta"]
    reordered = c.chat.completions.with_raw_response.create(  # top-level and message key order still do not matter
        temperature=0, messages=[{"content": prompt, "role": "user"}], model="gpt-4o-mini",
        response_format=schema(["alpha", "zeta"]), extra_body={"tiergate": {"cache": True}})
    assert reordered.headers["x-tiergate-cache"] == "hit"


# ------------------------------------------------------------------ 5, 3: byte bound, shared_across_keys


def test_the_in_process_cache_is_bounded_by_bytes_and_may_be_shared_across_keys(tmp_path_factory):
    """40 distinct 2 MB answers took the gateway from 203 to 400 MB (entries were bounded by count only):
    `cache.max_bytes` bounds the stored bytes (least recently used out first) and an answer larger than
    1/16 of it is not stored. `shared_across_keys: true` serves one key's entry to another."""
    db, cfg = _gateway(tmp_path_factory, "cache-bytes", cache={"max_bytes": 1_000_000, "shared_across_keys": True})
    with CacheFake() as up, FakeOpenAI() as down, running_gateway({**cfg, "models": _models(up, down)}, env=ENV) as base:
        e = Env(base, up, db)
        c = e.client()
        tg = {"extra_body": {"tiergate": {"cache": True}}}
        big = [_chat(c, "BIG:70000 one", **tg) for _ in range(2)]  # over 1,000,000 / 16: not stored
        assert [r.headers["x-tiergate-cache"] for r in big] == ["miss", "miss"]
        for i in range(25):  # 25 x 50 KB: more than the bound
            assert _chat(c, f"BIG:50000 {i}", **tg).headers["x-tiergate-cache"] == "miss"
        assert _chat(c, "BIG:50000 24", **tg).headers["x-tiergate-cache"] == "hit"
        assert _chat(c, "BIG:50000 0", **tg).headers["x-tiergate-cache"] == "miss"  # evicted
        a, b = e.key(cache=True), e.key(cache=True)
        prompt = f"shared {_tag()}"
        assert _chat(a, prompt).headers["x-tiergate-cache"] == "miss"
        assert _chat(b, prompt).headers["x-tiergate-cache"] == "hit"
        routed = {"model": "auto", "extra_body": {"tiergate": {"quality_target": 0.01, "candidates": CANDIDATES}}}
        assert _chat(a, "EMPTY say hi scoped", **routed).headers["x-tiergate-model"] == "o3-mini"
        assert _chat(b, "EMPTY say hi scoped", **routed).headers["x-tiergate-cache"] == "hit"
        narrow = _chat(e.key(cache=True, models=["gpt-4o-mini"]), "EMPTY say hi scoped", **routed)
        assert narrow.headers["x-tiergate-model"] == "gpt-4o-mini"  # o3-mini's answer is not for this key
        assert narrow.headers["x-tiergate-cache"] == "miss"
        e.admin.close()


# ------------------------------------------------------------------ 6b, 3: Redis


@pytest.mark.skipif(not _redis_up(), reason=f"Redis is not reachable at {REDIS_URL}")
def test_redis_entries_live_ttl_ms_and_are_shared_by_replicas_per_key(tmp_path_factory):
    """Two replicas on one Redis: a key's entry stored by one is a hit on the other, another key's request
    is not; the TTL is set in milliseconds (`EX` truncated ttl_s 2.9 to 2 s and 0.5 to 1 s)."""
    import redis as redis_lib

    prefix = f"tgtest:{secrets.token_hex(6)}:"
    db, cfg = _gateway(tmp_path_factory, "cache-redis", cache={"ttl_s": 2.9}, redis=f"{REDIS_URL}?prefix={prefix}")
    r = redis_lib.Redis.from_url(REDIS_URL)
    try:
        with CacheFake() as up, FakeOpenAI() as down:
            full = {**cfg, "models": _models(up, down)}
            with running_gateway(full, env=ENV) as base1, running_gateway(full, env=ENV) as base2:
                e1, e2 = Env(base1, up, db), Env(base2, up, db)
                made = e1.admin.post("/keys", json={"name": "a", "cache": True}).json()["key"]
                a1, a2, b2 = e1.client(made), e2.client(made), e2.key(cache=True)
                prompt = f"replicas {_tag()}"
                first = _chat(a1, prompt)
                assert first.headers["x-tiergate-cache"] == "miss"
                keys = list(r.scan_iter(f"{prefix}cache:*"))
                assert len(keys) == 1 and 2000 < r.pttl(keys[0]) <= 2900
                again = _chat(a2, prompt)
                assert again.headers["x-tiergate-cache"] == "hit" and again.parse().id == first.parse().id
                assert _chat(b2, prompt).headers["x-tiergate-cache"] == "miss"
                e1.admin.close()
                e2.admin.close()
    finally:
        for k in r.scan_iter(f"{prefix}*"):
            r.delete(k)
        r.close()
