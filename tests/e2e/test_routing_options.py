"""The `model: "auto"` request options end to end (official SDK, real gateway on loopback, `sim`
provider): a cost cap alone picks the best predicted quality under the cap, `tiergate.candidates` must
be a non-empty list of valid candidates, `tiergate.policy` takes an `auto:` prefix, a client-set
`reasoning_effort` pins the effort, and every routing refusal is a 400 with a stable code and a
message that does not repeat itself."""

from __future__ import annotations

import openai
import orjson
import pytest

from tests.helpers import ledger_rows, running_gateway

MODELS = ("gpt-4o-mini", "o1-mini", "o3-mini", "o1")
CANDIDATES = ["gpt-4o-mini", "o1-mini", "o3-mini@low", "o3-mini@medium", "o3-mini@high", "o1@high"]
HARD = ("Let n be a positive integer. Prove that the number of partitions of n into distinct parts equals the "
        "number of partitions of n into odd parts, then compute both for n = 30 and give a bijection.")
MSGS = [{"role": "user", "content": HARD}]
CAP = 0.01


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("routing-options") / "tiergate.db"
    cfg = {
        "models": [{"name": m, "deployments": [{"provider": "sim"}]} for m in MODELS],
        # the default policy is a near-"cheapest" one, so that applying it under a cap is visible
        "routing": {"candidates": CANDIDATES, "default_policy": "cheap", "policies": {"cheap": 0.01}},
        "storage": f"sqlite:///{db}",
    }
    with running_gateway(cfg) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=20), db


def _route_header(raw) -> dict[str, str]:
    return dict(part.split("=", 1) for part in raw.headers["x-tiergate-route"].split("; "))


def _ledger(db, request_id: str) -> tuple | None:
    rows = ledger_rows(db, "request_id = ?", request_id, columns="status, served_model, reasoning_effort, route, error")
    return tuple(rows[0].values()) if rows else None


def _auto(client, db, **kw) -> tuple[dict[str, str], dict, tuple]:
    raw = client.chat.completions.with_raw_response.create(model=kw.pop("model", "auto"),
                                                           messages=kw.pop("messages", MSGS), **kw)
    row = _ledger(db, raw.headers["x-request-id"])
    return _route_header(raw), orjson.loads(row[3]), row


def _refused(client, **kw) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=kw.pop("model", "auto"), messages=kw.pop("messages", MSGS), **kw)
    return e.value


def test_cost_cap_alone_picks_the_best_quality_under_the_cap(env):
    client, db = env
    header, route, _ = _auto(client, db, extra_body={"tiergate": {"max_cost_usd": CAP}})
    fits = [c for c in route["candidates"] if c["eligible"] and c["cost"] <= CAP]
    best = max(fits, key=lambda c: c["q"])
    cheapest = min(fits, key=lambda c: c["cost"])
    assert best["q"] > cheapest["q"]  # the cap leaves a real choice, so the rule shows
    assert header["candidate"] == route["chosen"] == best["candidate"]
    assert header["policy"] == "none" and route["policy"] is None and route["target"] is None
    assert route["cost_cap"] == CAP and "best predicted quality under cap" in route["reason"]

    # a named policy keeps its target rule under the cap (here the near-cheapest `cheap`) ...
    for kw in ({"model": "auto:cheap"}, {"extra_body": {"tiergate": {"policy": "cheap", "max_cost_usd": CAP}}}):
        kw.setdefault("extra_body", {"tiergate": {"max_cost_usd": CAP}})
        h, r, _ = _auto(client, db, **kw)
        assert h["candidate"] == cheapest["candidate"] and h["policy"] == "cheap" and r["target"] == 0.01
    # ... and so does an explicit target
    h, r, _ = _auto(client, db, extra_body={"tiergate": {"max_cost_usd": CAP, "quality_target": 0.01}})
    assert h["candidate"] == cheapest["candidate"] and r["target"] == 0.01
    # without a cap plain auto is the default policy
    h, _, _ = _auto(client, db)
    assert h["policy"] == "cheap"


@pytest.mark.parametrize("value", ["o1@high", [], {"o1@high": 1}, 3, [1], [""], ["@high"]])
def test_candidates_must_be_a_non_empty_list_of_strings(env, value):
    client, _ = env
    err = _refused(client, extra_body={"tiergate": {"candidates": value}})
    assert err.param == "tiergate.candidates" and err.code == "invalid_value"
    assert "list" in err.message and "'o'" not in err.message


def test_duplicate_candidates_are_dropped(env):
    client, db = env
    _, route, _ = _auto(client, db, extra_body={"tiergate": {"candidates": ["o1@high", "gpt-4o-mini", "o1@high"]}})
    assert [c["candidate"] for c in route["candidates"]] == ["o1@high", "gpt-4o-mini"]


@pytest.mark.parametrize(("cand", "words"), [
    ("o3-mini@ultra", ("o3-mini@ultra", "ultra", "low, medium, high")),
    ("gpt-4o-mini@high", ("gpt-4o-mini@high", "no reasoning effort")),
    ("nope@low", ("nope@low", "not a configured model")),
])
def test_bad_candidate_names_the_candidate_option(env, cand, words):
    client, _ = env
    err = _refused(client, extra_body={"tiergate": {"candidates": ["gpt-4o-mini", cand]}})
    assert err.param == "tiergate.candidates" and err.code == "invalid_value"
    for w in words:
        assert w in err.message


def test_policy_option_takes_the_auto_prefix(env):
    client, db = env
    h, _, _ = _auto(client, db, extra_body={"tiergate": {"policy": "auto:cost"}})
    assert h["policy"] == "cost"
    h, _, _ = _auto(client, db, model="auto:cost", extra_body={"tiergate": {"policy": "auto:cost"}})
    assert h["policy"] == "cost"
    err = _refused(client, model="auto:quality", extra_body={"tiergate": {"policy": "auto:cost"}})
    assert err.param == "tiergate.policy" and err.code == "invalid_value"
    err = _refused(client, extra_body={"tiergate": {"policy": "auto:fastest"}})
    assert err.param == "tiergate.policy" and "balanced" in err.message


def test_client_reasoning_effort_pins_the_effort(env):
    client, db = env
    # default candidates: o3-mini@low/@medium are out, o3-mini@high, o1@high, gpt-4o-mini, o1-mini compete
    for target in (0.01, 1.0):
        h, route, row = _auto(client, db, reasoning_effort="high",
                              extra_body={"tiergate": {"quality_target": target}})
        assert h["pinned_effort"] == "high" and route["pinned_effort"] == "high"
        model, _, effort = h["candidate"].partition("@")
        assert effort in ("", "high") and row[1] == model and row[2] == (effort or None)
        why = {c["candidate"]: c["why_not"] for c in route["candidates"]}
        assert "reasoning_effort 'high'" in why["o3-mini@low"] and "reasoning_effort 'high'" in why["o3-mini@medium"]
        assert why["gpt-4o-mini"] is None and why["o1-mini"] is None and why["o3-mini@high"] is None
    # a bare effort-capable model is used at the client's effort
    h, route, row = _auto(client, db, reasoning_effort="low", extra_body={"tiergate": {"candidates": ["o3-mini"]}})
    assert h["candidate"] == "o3-mini@low" and row[1:3] == ("o3-mini", "low")
    # a model without effort levels stays eligible and is sent no effort
    h, route, row = _auto(client, db, reasoning_effort="high",
                          extra_body={"tiergate": {"candidates": ["gpt-4o-mini", "o3-mini@low"]}})
    assert h["candidate"] == "gpt-4o-mini" and row[1:3] == ("gpt-4o-mini", None)
    # nothing left at that effort, or an effort no candidate offers: a clear 400
    err = _refused(client, reasoning_effort="high", extra_body={"tiergate": {"candidates": ["o3-mini@low"]}})
    assert err.param == "reasoning_effort" and err.code == "no_eligible_candidate"
    assert "o3-mini@low" in err.message and "'high'" in err.message
    err = _refused(client, reasoning_effort="ultra")
    assert err.param == "reasoning_effort" and err.code == "unsupported_value" and "low, medium, high" in err.message


def test_no_eligible_candidate_message_says_it_once(env):
    client, db = env
    image = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {
        "type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]
    err = _refused(client, messages=image, extra_body={"tiergate": {"candidates": ["o3-mini@low", "o1-mini"]}})
    assert err.code == "no_eligible_candidate" and err.param == "model"
    assert err.message.count("no routing candidate can serve this request") == 1
    assert "o3-mini@low: " in err.message and "vision" in err.message
    row = _ledger(db, err.response.headers["x-request-id"])
    assert row[0] == "rejected" and "no_eligible_candidate" in row[4]


@pytest.mark.parametrize(("opts", "param"), [
    ({"quality_target": 7}, "tiergate.quality_target"),
    ({"quality_target": True}, "tiergate.quality_target"),
    ({"max_cost_usd": -1}, "tiergate.max_cost_usd"),
    ({"max_cost_usd": "0.01"}, "tiergate.max_cost_usd"),
    ({"policy": ""}, "tiergate.policy"),
])
def test_malformed_routing_options_have_a_code(env, opts, param):
    client, _ = env
    err = _refused(client, extra_body={"tiergate": opts})
    assert err.param == param and err.code == "invalid_value"


@pytest.mark.parametrize(("tg", "param", "code"), [
    ("fast please", "tiergate", "invalid_type"),
    ({"qualty_target": 0.9}, "tiergate.qualty_target", "unknown_parameter"),
])
def test_malformed_tiergate_object_has_a_code(env, tg, param, code):
    client, _ = env
    err = _refused(client, extra_body={"tiergate": tg})
    assert err.param == param and err.code == code


def test_auto_without_routing_config_has_a_code(tmp_path):
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
           "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
    with running_gateway(cfg) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=20)
        err = _refused(client)
    assert err.code == "routing_not_configured" and err.param == "model"


@pytest.mark.parametrize("model", ["auto", "gpt-4o-mini"])
@pytest.mark.parametrize(("content", "param"), [
    (42, "messages[0].content"),
    ({"text": "hi"}, "messages[0].content"),
    ([{"type": "text", "text": 5}], "messages[0].content[0].text"),
    ([{"type": "text", "text": None}], "messages[0].content[0].text"),
    (["hi"], "messages[0].content[0]"),
    ([{"type": "image_url", "image_url": 5}], "messages[0].content[0].image_url"),
])
def test_malformed_message_content_is_a_named_400(env, model, content, param):
    """A number, an object or a non-string text part as `content` was a 500 (TypeError in routing and
    token counting) for `auto`, and was sent upstream for an explicit model."""
    client, _ = env
    e = _refused(client, model=model, messages=[{"role": "user", "content": content}])
    assert e.code == "invalid_type" and e.param == param, e.body


@pytest.mark.parametrize(("kw", "param", "code"), [
    ({"temperature": 5}, "temperature", "decimal_above_max_value"),
    ({"temperature": -0.1}, "temperature", "decimal_below_min_value"),
    ({"temperature": "hot"}, "temperature", "invalid_type"),
    ({"top_p": 1.5}, "top_p", "decimal_above_max_value"),
    ({"presence_penalty": 3}, "presence_penalty", "decimal_above_max_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length"),
    ({"stop": 5}, "stop", "invalid_type"),
    ({"top_logprobs": 3}, "top_logprobs", "invalid_value"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
])
def test_out_of_range_sampling_settings_are_400s(env, kw, param, code):
    """Values outside the API reference's ranges were accepted (200) where OpenAI answers 400."""
    client, _ = env
    e = _refused(client, model="gpt-4o-mini", **kw)
    assert (e.param, e.code) == (param, code), e.body
    ok = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, temperature=2, top_p=0,
                                        stop=["a", "b", "c", "d"], logprobs=True, top_logprobs=20)
    assert ok.choices


@pytest.mark.parametrize(("kw", "param"), [
    ({"reasoning_effort": []}, "reasoning_effort"),
    ({"reasoning_effort": {"level": "low"}}, "reasoning_effort"),
    ({"tools": True}, "tools"),
    ({"tools": ["get_weather"]}, "tools[0]"),
    ({"tool_choice": 1}, "tool_choice"),
    ({"response_format": "json"}, "response_format"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"seed": 1.5}, "seed"),
    ({"seed": True}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"stream": True, "stream_options": "usage"}, "stream_options"),  # was accepted
])
def test_fields_of_the_wrong_json_type_are_400s_naming_them(env, kw, param):
    """A list as `reasoning_effort` reached the ledger (and jammed every flush after it); `tools: true`
    crashed the provider and opened its circuit for everyone. Both are OpenAI's `invalid_type` 400s."""
    client, _ = env
    for model in ("gpt-4o-mini", "o3-mini"):
        e = _refused(client, model=model, extra_body=kw)
        assert (e.status_code, e.param, e.code) == (400, param, "invalid_type"), e.body


def test_a_key_pasted_as_the_model_is_not_echoed(env):
    """A client that put its key in `model` got it back in the 404 message, which also went to the ledger's
    error column and the request log."""
    client, db = env
    secret = "tg-" + "a1b2c3d4e5f6" * 3
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model=secret, messages=MSGS)
    assert e.value.code == "model_not_found" and e.value.param == "model"
    assert secret[:12] not in e.value.message and "looks like an API key" in e.value.message
    rows = ledger_rows(db, "error LIKE ?", "%looks like an API key%", columns="error, requested_model")
    assert rows and all(secret[:12] not in str(v) for r in rows for v in r.values())
