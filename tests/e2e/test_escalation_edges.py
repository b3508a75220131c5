"""Escalation and multi-choice requests at their edges, with the official SDK against loopback fake
upstreams: an escalation stays under the request's cost cap, re-chooses the output limit for the model
it goes to, reports what the client pays for both calls, and falls back to the first answer when the
retry cannot be served; `n` choices are reserved against a key's budget and priced by the router as
`n` answers; malformed output limits, `stream` and `auto:` are OpenAI-shaped 400s."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import ledger_rows, running_gateway

MASTER = "sk-escalation-edges-master-0123456789"
FAKES: dict[str, FakeOpenAI] = {}  # "down": o1's always-failing upstream, for tests that change its fault
MSG = [{"role": "user", "content": "Say hi"}]


class RefusingOpenAI(FakeOpenAI):
    """The fake upstream, but `gpt-4o-mini` refuses every request (a refusal is an unusable answer)."""

    def _completion(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        out = super()._completion(body, model)
        if model == "gpt-4o-mini":
            for ch in out["choices"]:
                ch["message"].update({"content": None, "refusal": "I can't help with that."})
        return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("escalation-edges") / "tiergate.db"
    with RefusingOpenAI() as up, FakeOpenAI() as down:
        down.fail_every("500", 1)  # o1's only deployment always fails
        FAKES["down"] = down
        dep = [{"provider": "openai", "api_base": up.url, "api_key": "env:TG_ESC_KEY"}]
        cfg = {
            "models": [{"name": "gpt-4o-mini", "deployments": dep}, {"name": "o3-mini", "deployments": dep},
                       {"name": "o1", "retry": {"max_retries": 0},
                        "deployments": [{"provider": "openai", "api_base": down.url, "api_key": "env:TG_ESC_KEY"}]}],
            "routing": {"candidates": ["gpt-4o-mini", "o3-mini@high"]},
            "storage": f"sqlite:///{db}",
        }
        with running_gateway(cfg, env={"TG_ESC_KEY": "sk-esc", "TIERGATE_MASTER_KEY": MASTER}) as base:
            admin = httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                                 headers={"authorization": f"Bearer {MASTER}"}, timeout=10)

            def client(**fields: Any) -> openai.OpenAI:
                r = admin.post("/keys", json={"name": "k", **fields})
                assert r.status_code == 200, r.text
                return openai.OpenAI(base_url=base, api_key=r.json()["key"], max_retries=0, timeout=20)

            yield up, client, db
            admin.close()


def _rows(db, request_id: str, expected: int) -> list[dict]:
    """The request's ledger rows, once `expected` of them are written (each is written just after its call)."""
    return ledger_rows(db, "request_id LIKE ?", request_id + "%", columns="request_id, status, served_model, cost_usd, error",
                       ready=lambda rows: len(rows) >= expected)


def _cheap_first(**tg: Any) -> dict[str, Any]:
    return {"tiergate": {"quality_target": 0.01, **tg}}  # the cheapest candidate, gpt-4o-mini, is chosen


def test_escalation_stays_under_the_cost_cap(env):
    """o3-mini@high (estimated ~$0.05) never competed under a $0.002 cap, so the refusal is not escalated
    to it (it was: the cap bounded the first choice only)."""
    up, client, db = env
    up.clear()
    raw = client().chat.completions.with_raw_response.create(
        model="auto", messages=MSG, extra_body=_cheap_first(max_cost_usd=0.002))
    r = raw.parse()
    assert r.choices[0].message.refusal and "x-tiergate-escalated" not in raw.headers
    assert [q.body["model"] for q in up.requests] == ["gpt-4o-mini"]
    assert [row["status"] for row in _rows(db, raw.headers["x-request-id"], 1)] == ["ok"]


def test_escalation_re_chooses_the_output_limit_and_reports_both_costs(env):
    """A budgeted key gets a default output limit per model; the retry on o3-mini@high used to be sent
    gpt-4o-mini's 4,096 (below its ~10,000 expected reasoning tokens) instead of the reasoning default."""
    up, client, db = env
    up.clear()
    raw = client(budget_usd=5.0).chat.completions.with_raw_response.create(
        model="auto", messages=MSG, extra_body=_cheap_first())
    assert raw.headers["x-tiergate-escalated"].startswith("from=gpt-4o-mini; to=o3-mini@high; reason=the model refused")
    sent = [(q.body["model"], q.body.get("max_completion_tokens"), q.body.get("reasoning_effort")) for q in up.requests]
    assert sent == [("gpt-4o-mini", 4096, None), ("o3-mini", 16384, "high")]
    rows = _rows(db, raw.headers["x-request-id"], 2)
    assert sorted(r["status"] for r in rows) == ["escalated", "ok"]
    total = sum(r["cost_usd"] for r in rows)
    assert float(raw.headers["x-tiergate-cost-usd"]) == pytest.approx(total, abs=1e-8)  # both calls
    first = float(raw.headers["x-tiergate-escalated"].split("first_cost_usd=")[1])
    assert 0 < first < total


def test_failed_escalation_returns_the_first_answer(env):
    """When the next candidate up cannot answer, the client gets the first (refused) answer with the
    reason in the header, not a 500 about o1, a model it never asked for."""
    up, client, db = env
    up.clear()
    hard = [{"role": "user", "content": "Prove there are infinitely many primes."}]  # o1@high predicted better
    raw = client().chat.completions.with_raw_response.create(
        model="auto", messages=hard, extra_body=_cheap_first(candidates=["gpt-4o-mini", "o1@high"]))
    r = raw.parse()
    assert raw.http_response.status_code == 200 and r.choices[0].message.refusal
    esc = raw.headers["x-tiergate-escalated"]
    assert esc.startswith("from=gpt-4o-mini; to=o1@high;") and "; failed=500 " in esc
    assert raw.headers["x-tiergate-model"] == "gpt-4o-mini"
    rows = _rows(db, raw.headers["x-request-id"], 3)
    assert sorted(r["status"] for r in rows) == ["error", "escalated", "failed_attempt"]
    first = next(r for r in rows if r["status"] == "escalated")
    assert first["cost_usd"] > 0
    assert float(raw.headers["x-tiergate-cost-usd"]) == pytest.approx(first["cost_usd"], abs=1e-8)


def test_n_choices_are_reserved_against_the_budget(env):
    """50 answers of up to 4,000 tokens on o3-mini can cost $0.88: a $0.05 key is refused before any
    upstream call (the reservation counted one answer, $0.018, and such a key ended far over its budget)."""
    up, client, _ = env
    up.clear()
    c = client(budget_usd=0.05)
    with pytest.raises(openai.RateLimitError) as ei:
        c.chat.completions.create(model="o3-mini", messages=MSG, n=50, max_completion_tokens=4000)
    assert ei.value.code == "insufficient_quota" and up.requests == []
    ok = c.chat.completions.create(model="o3-mini", messages=MSG, n=2, max_completion_tokens=100)
    assert len(ok.choices) == 2  # a reservation that fits is admitted


def test_the_router_prices_every_choice(env):
    _, client, db = env
    costs = {}
    for n in (1, 4):
        raw = client().chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Prove there are infinitely many primes."}], n=n,
            extra_body={"tiergate": {"candidates": ["o3-mini@low", "o3-mini@high"], "quality_target": 0.01}})
        route = json.loads(ledger_rows(db, "request_id = ?", raw.headers["x-request-id"], columns="route")[0]["route"])
        costs[n] = {c["candidate"]: c["cost"] for c in route["candidates"]}
    for cand in ("o3-mini@low", "o3-mini@high"):
        assert costs[4][cand] > 3.9 * costs[1][cand]  # four answers and their reasoning on one prompt


@pytest.mark.parametrize(("field", "value", "code"), [
    ("max_completion_tokens", "5", "invalid_type"), ("max_completion_tokens", 0, "integer_below_min_value"),
    ("max_tokens", -5, "integer_below_min_value"), ("max_tokens", 2.5, "invalid_type"),
    ("stream", "yes", "invalid_type"),
])
def test_malformed_output_limits_and_stream_are_400(env, field, value, code):
    up, client, _ = env
    up.clear()
    for model in ("auto", "gpt-4o-mini"):  # the router used to read a bad bound as no bound and route anyway
        with pytest.raises(openai.BadRequestError) as ei:
            client().chat.completions.create(model=model, messages=MSG, extra_body={field: value})
        assert ei.value.param == field and ei.value.code == code
    assert up.requests == []


def test_auto_with_an_empty_policy_is_400(env):
    _, client, _ = env
    with pytest.raises(openai.BadRequestError) as ei:
        client().chat.completions.create(model="auto:", messages=MSG)
    assert ei.value.param == "model" and "auto:balanced" in ei.value.message


def test_a_key_allow_list_limits_routing_and_the_model_list(env):
    """A key that may use only o3-mini: `auto` routes among the candidates it may use (it used to pick
    gpt-4o-mini and then refuse it with 403 model_not_allowed), and /v1/models lists only what it may use."""
    up, client, db = env
    up.clear()
    c = client(models=["o3-mini"])
    raw = c.chat.completions.with_raw_response.create(model="auto", messages=MSG, extra_body=_cheap_first())
    assert raw.headers["x-tiergate-model"] == "o3-mini"
    route = json.loads(ledger_rows(db, "request_id = ?", raw.headers["x-request-id"], columns="route")[0]["route"])
    mini = next(x for x in route["candidates"] if x["candidate"] == "gpt-4o-mini")
    assert mini["eligible"] is False and "may not use gpt-4o-mini" in mini["why_not"]
    listed = [m.id for m in c.models.list()]
    assert listed == ["o3-mini", "auto", "auto:cost", "auto:balanced", "auto:quality"]
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4o-mini")
    assert c.models.retrieve("o3-mini").id == "o3-mini"
    assert {"gpt-4o-mini", "o3-mini", "o1"} <= {m.id for m in client().models.list()}  # no allow-list: all
    only_o1 = [m.id for m in client(models=["o1"]).models.list()]
    assert only_o1 == ["o1"]  # o1 is no routing candidate: no auto aliases


def test_failed_escalation_with_a_multi_line_upstream_message_still_answers(env):
    """The retry's error text goes into the x-tiergate-escalated header: a newline in it (an upstream 400
    "Invalid value.\nSee the docs.") made the server drop the connection (Invalid HTTP header value)."""
    _, client, _ = env
    down = FAKES["down"]
    down.clear_faults()
    down.fail_every("status", 1, status=400, body={"error": {
        "message": "Invalid value.\nSee the docs. Modèle", "type": "invalid_request_error", "param": None,
        "code": None}})
    try:
        raw = client().chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Prove there are infinitely many primes."}],
            extra_body=_cheap_first(candidates=["gpt-4o-mini", "o1@high"]))
    finally:
        down.clear_faults()
        down.fail_every("500", 1)
    assert raw.parse().choices[0].message.refusal
    assert "; failed=400 " in raw.headers["x-tiergate-escalated"]
    assert "Invalid value. See the docs. Mod?le" in raw.headers["x-tiergate-escalated"]


def test_a_cached_escalated_answer_is_served_without_the_first_call(env):
    """With the response cache on, a repeat of a request that escalated is answered from the cache with
    the escalated answer: no upstream call at all (the unusable first answer used to be paid for again
    on every repeat, before the escalation found the cached second answer)."""
    up, client, db = env
    c = client()
    kw = {"model": "auto", "messages": [{"role": "user", "content": "Say hi, cached"}], "temperature": 0,
          "extra_body": _cheap_first(cache=True)}
    up.clear()
    first = c.chat.completions.with_raw_response.create(**kw)
    assert first.headers["x-tiergate-model"] == "o3-mini" and first.headers["x-tiergate-cache"] == "miss"
    assert len(up.requests) == 2  # gpt-4o-mini's refusal, then o3-mini
    up.clear()
    again = c.chat.completions.with_raw_response.create(**kw)
    assert len(up.requests) == 0
    assert again.headers["x-tiergate-cache"] == "hit" and again.headers["x-tiergate-cost-usd"] == "0"
    assert again.headers["x-tiergate-model"] == "o3-mini"
    assert again.headers["x-tiergate-escalated"].startswith("from=gpt-4o-mini; to=o3-mini@high; reason=")
    assert again.headers["x-tiergate-escalated"].endswith("; cached")
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    rows = _rows(db, again.headers["x-request-id"], 1)
    assert [(r["status"], r["served_model"], r["cost_usd"]) for r in rows] == [("cache_hit", "o3-mini", 0)]


def test_a_cached_escalated_answer_stays_with_routed_requests_it_may_serve(env):
    """The escalated answer is cached under the first candidate's body: an explicit request for that model
    (never escalated) was served o3-mini's answer from it, and so was a key whose allow-list excludes
    o3-mini (its `auto` routes to gpt-4o-mini alone)."""
    up, client, _ = env
    kw = {"messages": [{"role": "user", "content": "Say hi, scoped"}], "temperature": 0}
    c = client(cache=True)  # entries are kept per key: one key for both
    first = c.chat.completions.with_raw_response.create(model="auto", extra_body=_cheap_first(cache=True), **kw)
    assert first.headers["x-tiergate-model"] == "o3-mini"  # escalated from gpt-4o-mini, cached
    up.clear()
    explicit = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", extra_body={"tiergate": {"cache": True}}, **kw)
    assert explicit.headers["x-tiergate-cache"] == "miss" and explicit.headers["x-tiergate-model"] == "gpt-4o-mini"
    assert "x-tiergate-escalated" not in explicit.headers and len(up.requests) == 1
    up.clear()
    narrow = client(models=["gpt-4o-mini"]).chat.completions.with_raw_response.create(
        model="auto", extra_body=_cheap_first(cache=True), **kw)
    assert narrow.headers["x-tiergate-model"] == "gpt-4o-mini" and narrow.headers["x-tiergate-cache"] == "miss"
    assert len(up.requests) == 1
