"""Per-request `tiergate` options end to end with the official SDK: the routing-only options
(`quality_target`, `max_cost_usd`, `policy`, `candidates`) sent with an explicit model are a 400
naming the option (not silently ignored) on Chat Completions, on `/v1/responses` (native and
translated) and on batch lines, and the refusal has its `rejected` ledger row; with `model: "auto"`
they still apply, `tiergate.policy` included."""

from __future__ import annotations

import json
import sqlite3
import time

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway

MSG = [{"role": "user", "content": "Say hi"}]
CANDIDATES = ["gpt-4o-mini", "o3-mini@low", "o3-mini@high"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("options") / "tiergate.db"
    with FakeOpenAI() as up:
        dep = [{"provider": "openai", "api_base": up.url, "api_key": "env:TG_OPT_KEY"}]
        cfg = {
            "models": [{"name": m, "deployments": dep} for m in ("gpt-4o-mini", "o3-mini")],
            "routing": {"candidates": CANDIDATES},
            "storage": f"sqlite:///{db}",
            "batches": {"concurrency": 2, "poll_s": 0.1, "lease_s": 5},
        }
        with running_gateway(cfg, env={"TG_OPT_KEY": "sk-opt"}) as url:
            yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=20), up, db


def _ledger(db, request_id: str, timeout: float = 5.0) -> list[tuple]:
    deadline = time.time() + timeout
    while True:
        con = sqlite3.connect(db)
        try:
            rows = con.execute("SELECT status, kind, requested_model, error FROM ledger WHERE request_id = ?",
                               (request_id,)).fetchall()
        except sqlite3.OperationalError:
            rows = []
        con.close()
        if rows or time.time() > deadline:
            return rows


@pytest.mark.parametrize(("option", "value"), [
    ("quality_target", 0.9), ("max_cost_usd", 0.01), ("policy", "cost"), ("candidates", ["o3-mini@low"]),
])
def test_routing_option_with_explicit_model_is_a_400(env, option, value):
    client, up, db = env
    up.clear()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, extra_body={"tiergate": {option: value}})
    err = e.value
    assert err.status_code == 400 and err.type == "invalid_request_error"
    assert err.param == f"tiergate.{option}" and err.code == "unsupported_parameter"
    assert "auto" in err.message and "gpt-4o-mini" in err.message
    assert up.requests == []  # nothing went upstream
    rows = _ledger(db, err.response.headers["x-request-id"])
    assert [(r[0], r[1], r[2]) for r in rows] == [("rejected", "chat", "gpt-4o-mini")]
    assert f"tiergate.{option}" in rows[0][3]


def test_non_routing_options_still_work_with_explicit_model(env):
    client, _, _ = env
    out = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, temperature=0,
                                         extra_body={"tiergate": {"cache": True, "timeouts": {"total": 20},
                                                                  "quality_target": None}})
    assert out.choices[0].message.content


def test_routing_options_apply_with_auto(env):
    client, _, _ = env
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=MSG, extra_body={"tiergate": {"quality_target": 0.9, "candidates": ["gpt-4o-mini"]}})
    assert "candidate=gpt-4o-mini" in raw.headers["x-tiergate-route"]
    # tiergate.policy is the same as model="auto:<policy>" (it used to be ignored)
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=MSG,
                                                           extra_body={"tiergate": {"policy": "cost"}})
    assert "policy=cost" in raw.headers["x-tiergate-route"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto:quality", messages=MSG, extra_body={"tiergate": {"policy": "cost"}})
    assert e.value.param == "tiergate.policy"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto", messages=MSG, extra_body={"tiergate": {"policy": "cheapest"}})
    assert e.value.param == "tiergate.policy" and "balanced" in e.value.message


@pytest.mark.parametrize("stream", [False, True])  # native path / translated path
def test_responses_refuse_routing_options_with_explicit_model(env, stream):
    client, up, db = env
    up.clear()
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-4o-mini", input="hi", stream=stream,
                                extra_body={"tiergate": {"max_cost_usd": 0.01}})
    assert e.value.param == "tiergate.max_cost_usd" and "auto" in e.value.message
    assert up.requests == []
    rows = _ledger(db, e.value.response.headers["x-request-id"])
    assert [(r[0], r[1]) for r in rows] == [("rejected", "responses")]


def test_responses_native_ignores_client_request_id_for_the_ledger(env):
    client, _, db = env
    raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi",
                                                    extra_headers={"x-request-id": "client-chosen"})
    rid = raw.headers["x-request-id"]
    assert rid != "client-chosen" and rid.startswith("req_")
    assert [r[0] for r in _ledger(db, rid)] == ["ok"]


def test_batch_line_with_routing_option_and_explicit_model_fails_alone(env):
    client, _, _ = env
    lines = [
        {"custom_id": "ok", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": MSG}},
        {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": MSG, "tiergate": {"quality_target": 0.9}}},
    ]
    f = client.files.create(file=("in.jsonl", b"".join(json.dumps(x).encode() + b"\n" for x in lines)),
                            purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.time() + 30
    while b.status not in ("completed", "failed"):
        assert time.time() < deadline, b.status
        time.sleep(0.1)
        b = client.batches.retrieve(b.id)
    assert b.status == "completed" and b.request_counts.completed == 1 and b.request_counts.failed == 1
    out = {r["custom_id"]: r for r in map(json.loads, client.files.content(b.output_file_id).text.splitlines())}
    errs = {r["custom_id"]: r for r in map(json.loads, client.files.content(b.error_file_id).text.splitlines())}
    assert out["ok"]["response"]["status_code"] == 200
    bad = errs["bad"]["response"]
    assert bad["status_code"] == 400 and bad["body"]["error"]["param"] == "tiergate.quality_target"


def test_native_responses_bound_a_budgeted_keys_output(tmp_path):
    """As on chat: a budgeted key's request without an output limit is sent with the default limit its
    reservation assumed, so its cost cannot exceed the reservation; other keys are not limited."""
    import httpx

    master = "sk-options-master-0123456789"
    with FakeOpenAI() as up:
        cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [
                   {"provider": "openai", "api_base": up.url, "api_key": "env:TG_OPT_KEY"}]}],
               "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
        with running_gateway(cfg, env={"TG_OPT_KEY": "sk-opt", "TIERGATE_MASTER_KEY": master}) as url:
            admin = httpx.Client(base_url=url.removesuffix("/v1") + "/admin",
                                 headers={"authorization": f"Bearer {master}"}, timeout=10)
            budgeted = admin.post("/keys", json={"name": "b", "budget_usd": 5}).json()["key"]
            free = admin.post("/keys", json={"name": "f"}).json()["key"]
            admin.close()

            def sent(key: str, **kw) -> dict:
                client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=20)
                raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi", **kw)
                assert raw.headers["x-tiergate-responses"] == "native"
                return up.last.body

            assert sent(budgeted)["max_output_tokens"] == 4096  # gpt-4o-mini's default bound (docs/accounting.md)
            assert sent(budgeted, max_output_tokens=50)["max_output_tokens"] == 50
            assert "max_output_tokens" not in sent(free)


def test_escalation_serves_the_next_candidate_not_a_new_routing(env):
    """The escalated call must go to the candidate the header names (`to=`), with its effort; it used
    to be routed again, which picked the first candidate a second time."""
    client, up, _ = env
    up.clear()
    up.reply = "this is not json"
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="auto:cost", messages=[{"role": "user", "content": "Give a JSON object with n"}],
            response_format={"type": "json_schema", "json_schema": {"name": "n", "strict": True, "schema": {
                "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
                "additionalProperties": False}}})
    finally:
        up.reply = None
    esc = dict(part.split("=", 1) for part in raw.headers["x-tiergate-escalated"].split("; "))
    assert esc["from"] != esc["to"]
    model, _, effort = esc["to"].partition("@")
    assert raw.headers["x-tiergate-model"] == model and len(up.requests) == 2
    assert up.requests[1].body["model"] == model and up.requests[1].body.get("reasoning_effort") == (effort or None)
    assert f"candidate={esc['from']};" in raw.headers["x-tiergate-route"]  # the decision that was made
