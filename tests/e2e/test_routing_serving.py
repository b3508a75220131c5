"""`model: "auto"` end to end: the official SDK against a real gateway whose candidates are served by a
recording fake upstream. Checks the decision is explained (header + ledger), the chosen effort is
sent upstream, policies and per-request targets/caps work, ineligible candidates are skipped, and an
unusable answer is escalated once."""

from __future__ import annotations

import sqlite3
import time

import openai
import orjson
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway

CANDIDATES = ["gpt-4o-mini", "o1-mini", "o3-mini@low", "o3-mini@high", "o1@high"]
HARD = ("Let n be a positive integer. Prove that the number of partitions of n into distinct parts equals the "
        "number of partitions of n into odd parts, then compute both for n = 30 and give a bijection.")


def _route(headers) -> dict[str, str]:
    return dict(part.split("=", 1) for part in headers["x-tiergate-route"].split("; "))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("route") / "tiergate.db"
    with FakeOpenAI() as up:
        dep = [{"provider": "openai_compatible", "api_base": up.url}]
        cfg = {
            "models": [{"name": m, "deployments": dep} for m in ("gpt-4o-mini", "o1-mini", "o3-mini", "o1")],
            "routing": {"candidates": CANDIDATES},
            "storage": f"sqlite:///{db}",
        }
        with running_gateway(cfg) as url:
            yield up, openai.OpenAI(base_url=url, api_key="unused", max_retries=0), db


def _ledger(db, request_id_like: str, timeout: float = 5.0) -> list[tuple]:
    deadline = time.time() + timeout
    while True:
        con = sqlite3.connect(db)
        try:
            rows = con.execute("SELECT request_id, status, served_model, reasoning_effort, route, cost_usd FROM ledger "
                               "WHERE request_id LIKE ? ORDER BY request_id", (request_id_like,)).fetchall()
        except sqlite3.OperationalError:
            rows = []
        con.close()
        if rows or time.time() > deadline:
            return rows


def test_auto_routes_explains_and_sends_effort(env):
    up, client, db = env
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": HARD}])
    r = _route(raw.headers)
    assert r["candidate"] in CANDIDATES
    assert 0.0 <= float(r["quality"]) <= 1.0 and float(r["est_cost_usd"]) > 0
    model, _, effort = r["candidate"].partition("@")
    assert raw.headers["x-tiergate-model"] == model
    sent = up.last.body
    assert sent["model"] == model
    if effort:
        assert sent["reasoning_effort"] == effort
    rows = _ledger(db, raw.headers["x-request-id"])
    assert len(rows) == 1 and rows[0][1] == "ok"
    route = orjson.loads(rows[0][4])
    assert route["chosen"] == r["candidate"] and len(route["candidates"]) == len(CANDIDATES)


def test_policies_trade_quality_for_cost(env):
    _, client, _ = env
    msgs = [{"role": "user", "content": HARD}]
    cost = _route(client.chat.completions.with_raw_response.create(model="auto:cost", messages=msgs).headers)
    quality = _route(client.chat.completions.with_raw_response.create(model="auto:quality", messages=msgs).headers)
    assert float(cost["est_cost_usd"]) <= float(quality["est_cost_usd"])
    assert float(cost["quality"]) <= float(quality["quality"]) + 1e-9


def test_cost_cap_and_target_via_extra_body(env):
    _, client, _ = env
    msgs = [{"role": "user", "content": HARD}]
    capped = _route(client.chat.completions.with_raw_response.create(
        model="auto", messages=msgs, extra_body={"tiergate": {"max_cost_usd": 0.002}}).headers)
    assert float(capped["est_cost_usd"]) <= 0.002
    strict = _route(client.chat.completions.with_raw_response.create(
        model="auto", messages=msgs, extra_body={"tiergate": {"quality_target": 1.0}}).headers)
    loose = _route(client.chat.completions.with_raw_response.create(
        model="auto", messages=msgs, extra_body={"tiergate": {"quality_target": 0.5}}).headers)
    assert float(loose["est_cost_usd"]) <= float(strict["est_cost_usd"])


def test_output_bound_caps_the_estimated_cost(env):
    """A request's max_completion_tokens bounds the answer + reasoning tokens the router prices (o1@high would
    otherwise be priced at 10,000 reasoning tokens)."""
    _, client, db = env
    msgs = [{"role": "user", "content": HARD}]

    def o1_high_cost(**kw) -> float:
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=msgs, **kw)
        route = orjson.loads(_ledger(db, raw.headers["x-request-id"])[0][4])
        return next(c["cost"] for c in route["candidates"] if c["candidate"] == "o1@high")

    unbounded, bounded = o1_high_cost(), o1_high_cost(max_completion_tokens=100)
    prompt_cost = unbounded - (600 + 10_000) * 60 / 1e6  # o1: $60 per 1M output tokens
    assert bounded == pytest.approx(prompt_cost + 100 * 60 / 1e6, rel=1e-6)


def test_ineligible_candidates_are_skipped(env):
    _, client, db = env
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    for target in (0.5, 1.0):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "call f"}], tools=tools,
            extra_body={"tiergate": {"quality_target": target}})
        assert _route(raw.headers)["candidate"] != "o1-mini"  # o1-mini has no tools
        route = orjson.loads(_ledger(db, raw.headers["x-request-id"])[0][4])
        o1mini = next(c for c in route["candidates"] if c["candidate"] == "o1-mini")
        assert o1mini["eligible"] is False and "tools" in o1mini["why_not"]


def test_bad_routing_requests_are_400(env):
    _, client, _ = env
    with pytest.raises(openai.BadRequestError, match="auto:"):
        client.chat.completions.create(model="auto:fastest", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="quality_target"):
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"tiergate": {"quality_target": 7}})


def test_unusable_answer_is_escalated_once(env):
    up, client, db = env
    up.reply = "this is not json"
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="auto:cost", messages=[{"role": "user", "content": "Give a JSON object with n"}],
            response_format={"type": "json_schema", "json_schema": {"name": "n", "strict": True, "schema": {
                "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
                "additionalProperties": False}}})
    finally:
        up.reply = None
    esc = raw.headers["x-tiergate-escalated"]
    first = _route(raw.headers)["candidate"]
    assert f"from={first}" in esc and "not valid JSON" in esc
    rows = _ledger(db, raw.headers["x-request-id"] + "%")
    statuses = sorted(r[1] for r in rows)
    assert statuses == ["escalated", "ok"], rows
    ok = next(r for r in rows if r[1] == "ok")
    assert ok[0] == raw.headers["x-request-id"]
    assert ok[2] == raw.headers["x-tiergate-model"]


def test_no_eligible_candidate_is_400(env):
    _, client, _ = env
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "call f"}], tools=tools,
                                       extra_body={"tiergate": {"candidates": ["o1-mini"]}})
    assert ei.value.code == "no_eligible_candidate" and "tools" in ei.value.message
