"""An upstream that reports no usage (`"usage": null`, no usage at all, or no usage chunk in a stream,
as some OpenAI-compatible hosts do) is billed at an estimate, never at $0: the prompt counted locally
from the body sent upstream, the completion from the returned content and tool calls. The answer says
so (`x-tiergate-usage: estimated`, `usage.estimated`), the ledger row carries
`metadata.usage_estimated`, the key's budget is settled with the estimate, and a streaming client that
asked for `stream_options.include_usage` still gets a usage chunk (the estimate). Driven with the
official openai SDK against a loopback fake upstream."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import ledger_rows, running_gateway
from tiergate.accounting.tokens import count_completion, count_request, count_text

MASTER = "sk-usage-estimated-master-0123456789"
GPT4O_MINI = (0.15, 0.60)  # catalogue $/1M input, output


class NoUsageOpenAI(FakeOpenAI):
    """The fake upstream, but without usage: `mode` "null" sends `"usage": null`, "absent" leaves the
    field out; streams never send the usage chunk (even when asked)."""

    mode: str = "null"

    def _completion(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        out = super()._completion(body, model)
        if self.mode == "null":
            out["usage"] = None
        else:
            out.pop("usage", None)
        return out

    def _response_obj(self, body: dict[str, Any], azure_dep: str | None) -> dict[str, Any]:
        out = super()._response_obj(body, azure_dep)  # native Responses API answers lose their usage too
        if self.mode == "null":
            out["usage"] = None
        else:
            out.pop("usage", None)
        return out

    def _chunks(self, body: dict[str, Any], model: str) -> list[bytes]:
        kept = []
        for raw in super()._chunks(body, model):
            if raw.startswith(b"data: {"):
                c = json.loads(raw[6:])
                if not c.get("choices"):
                    continue  # the usage chunk
                c.pop("usage", None)
                raw = b"data: " + json.dumps(c).encode() + b"\n\n"
            kept.append(raw)
        return kept


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("usage-est") / "tiergate.db"
    with NoUsageOpenAI() as up:
        # a compatible host that has its own /responses (native path): it must say so
        dep = {"provider": "openai_compatible", "api_base": up.url, "model": "gpt-4o-mini",
               "options": {"responses_api": True}}
        cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [dep]}], "storage": f"sqlite:///{db}"}
        with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
            admin = httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                                 headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
            r = admin.post("/keys", json={"name": "budgeted", "budget_usd": 5.0})
            assert r.status_code == 200, r.text
            kid, secret = r.json()["id"], r.json()["key"]
            yield up, openai.OpenAI(base_url=base, api_key=secret, max_retries=0, timeout=20), admin, kid, db
            admin.close()


def _row(db, request_id: str) -> dict:
    rows = ledger_rows(db, "request_id = ?", request_id,
                       columns="status, input_tokens, output_tokens, cost_usd, metadata")
    assert rows, f"no ledger row for {request_id}"
    return rows[0]


def _spent(admin: httpx.Client, kid: str) -> float:
    return admin.get(f"/keys/{kid}").json()["usage"]["spent_usd"]


def _cost(prompt: int, completion: int) -> float:
    return (prompt * GPT4O_MINI[0] + completion * GPT4O_MINI[1]) / 1e6


@pytest.mark.parametrize("mode", ["null", "absent"])
def test_non_streaming_answer_without_usage_is_estimated_and_billed(env, mode):
    up, client, admin, kid, db = env
    up.mode = mode
    spent_before = _spent(admin, kid)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there general kenobi"}])
    r = raw.parse()
    sent = up.last.body
    prompt = count_request(sent, "o200k_base")
    completion = count_text("echo: hello there general kenobi")
    assert raw.headers["x-tiergate-usage"] == "estimated"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt, completion)
    assert r.usage.model_extra.get("estimated") is True
    cost = float(raw.headers["x-tiergate-cost-usd"])
    assert cost == pytest.approx(_cost(prompt, completion), abs=1e-8) and cost > 0  # before: 0.00000000
    row = _row(db, raw.headers["x-request-id"])
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == ("ok", prompt, completion)
    assert row["cost_usd"] == pytest.approx(_cost(prompt, completion))
    assert json.loads(row["metadata"])["usage_estimated"] is True
    assert _spent(admin, kid) - spent_before == pytest.approx(_cost(prompt, completion), abs=1e-8)


def test_tool_calls_count_toward_the_estimate(env):
    up, client, _, _, db = env
    up.mode = "null"
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", tools=tools, messages=[{"role": "user", "content": "weather?"}])
    r = raw.parse()
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    expected = count_completion([{"message": {"tool_calls": [{"function": {
        "name": "get_weather", "arguments": call.function.arguments}}]}}])
    assert r.usage.completion_tokens == expected > 3 + len("get_weather") // 4
    assert r.usage.prompt_tokens == count_request(up.last.body) > count_request({"messages": up.last.body["messages"]})
    assert _row(db, raw.headers["x-request-id"])["output_tokens"] == expected


def test_stream_without_usage_sends_the_estimated_usage_chunk_when_asked(env):
    up, client, admin, kid, db = env
    spent_before = _spent(admin, kid)
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there general kenobi"}],
            stream=True, stream_options={"include_usage": True}) as raw:
        rid = raw.headers["x-request-id"]
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there general kenobi"
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and usage_chunks[0].choices == []
    u = usage_chunks[0].usage
    prompt, completion = count_request(up.last.body), count_text(text)
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (prompt, completion, prompt + completion)
    assert u.model_extra.get("estimated") is True
    assert usage_chunks[0].id == chunks[0].id and usage_chunks[0].model == chunks[0].model
    row = _row(db, rid)
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == ("ok", prompt, completion)
    assert json.loads(row["metadata"])["usage_estimated"] is True
    assert _spent(admin, kid) - spent_before == pytest.approx(_cost(prompt, completion), abs=1e-8)


def test_stream_without_usage_and_not_asked_gets_no_usage_chunk(env):
    _, client, _, _, db = env
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True) as raw:
        rid = raw.headers["x-request-id"]
        chunks = list(raw.parse())
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    row = _row(db, rid)
    assert row["output_tokens"] == count_text("echo: hi") and row["cost_usd"] > 0


def test_a_reported_usage_is_not_marked_estimated(tmp_path):
    with FakeOpenAI() as up:
        dep = {"provider": "openai_compatible", "api_base": up.url, "model": "gpt-4o-mini"}
        cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [dep]}], "storage": f"sqlite:///{tmp_path / 'x.db'}"}
        with running_gateway(cfg) as base:
            client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=20)
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
            assert "x-tiergate-usage" not in raw.headers
            assert "estimated" not in (raw.parse().usage.model_extra or {})
            row = _row(tmp_path / "x.db", raw.headers["x-request-id"])
            assert "usage_estimated" not in json.loads(row["metadata"] or "{}") and row["input_tokens"] == 5  # the fake's own count: 4 + 1 word


def test_native_responses_answer_without_usage_is_estimated_and_billed(env):
    up, client, admin, kid, db = env
    up.mode = "null"
    spent_before = _spent(admin, kid)
    raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hello there general kenobi")
    assert raw.headers["x-tiergate-responses"] == "native" and up.last.path.endswith("/responses")
    assert raw.headers["x-tiergate-usage"] == "estimated"
    cost = float(raw.headers["x-tiergate-cost-usd"])
    assert cost > 0  # before: 0.00000000
    row = _row(db, raw.headers["x-request-id"])
    assert row["status"] == "ok" and row["input_tokens"] > 0 and row["output_tokens"] > 0
    assert row["cost_usd"] == pytest.approx(cost, abs=1e-8)
    assert json.loads(row["metadata"])["usage_estimated"] is True
    assert _spent(admin, kid) - spent_before == pytest.approx(cost, abs=1e-8)


# ------------------------------------------------------------------ reasoning models: the unseen reasoning

O3_MINI = (1.10, 4.40)  # catalogue $/1M input, output


@pytest.fixture(scope="module")
def reasoning_env(tmp_path_factory):
    db = tmp_path_factory.mktemp("usage-est-reasoning") / "tiergate.db"
    with NoUsageOpenAI() as up:
        def dep(model: str) -> dict:  # a compatible host with its own /responses
            return {"provider": "openai_compatible", "api_base": up.url, "model": model,
                    "options": {"responses_api": True}}

        cfg = {"models": [{"name": "o3-mini", "deployments": [dep("o3-mini")]},
                          {"name": "local-reasoner", "deployments": [dep("local-reasoner")]}],  # not catalogued
               "storage": f"sqlite:///{db}"}
        with running_gateway(cfg) as base:
            yield up, openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=20), db


@pytest.mark.parametrize(("effort", "limit", "reasoning"), [
    ("high", None, 10_000), ("low", None, 1_500), (None, None, 4_000),  # no effort: the model's default, medium
    ("high", 3_000, None),  # capped: what the output limit leaves after the visible answer
])
def test_reasoning_model_answer_without_usage_bills_the_assumed_reasoning(reasoning_env, effort, limit, reasoning):
    """Reasoning is billed as output but never relayed: an estimate from the visible text alone billed
    o3-mini@high as if it had not reasoned (here 7 tokens instead of ~10,000)."""
    up, client, db = reasoning_env
    up.mode = "null"
    extra = {k: v for k, v in (("reasoning_effort", effort), ("max_completion_tokens", limit)) if v is not None}
    raw = client.chat.completions.with_raw_response.create(
        model="o3-mini", messages=[{"role": "user", "content": "hello there general kenobi"}], **extra)
    r = raw.parse()
    visible = count_text("echo: hello there general kenobi")
    prompt = count_request(up.last.body)
    reasoning = limit - visible if reasoning is None else reasoning
    assert raw.headers["x-tiergate-usage"] == "estimated"
    assert r.usage.completion_tokens == visible + reasoning
    assert r.usage.completion_tokens_details.reasoning_tokens == reasoning
    cost = (prompt * O3_MINI[0] + (visible + reasoning) * O3_MINI[1]) / 1e6
    assert float(raw.headers["x-tiergate-cost-usd"]) == pytest.approx(cost, abs=1e-8)
    row = ledger_rows(db, "request_id = ?", raw.headers["x-request-id"],
                      columns="output_tokens, reasoning_tokens, cost_usd")[0]
    assert (row["output_tokens"], row["reasoning_tokens"]) == (visible + reasoning, reasoning)
    assert row["cost_usd"] == pytest.approx(cost)


def test_reasoning_stream_without_usage_reports_the_assumed_reasoning(reasoning_env):
    _, client, db = reasoning_env
    with client.chat.completions.with_streaming_response.create(
            model="o3-mini", reasoning_effort="low", messages=[{"role": "user", "content": "hi"}],
            stream=True, stream_options={"include_usage": True}) as raw:
        rid = raw.headers["x-request-id"]
        chunks = list(raw.parse())
    u = chunks[-1].usage
    assert u.completion_tokens == count_text("echo: hi") + 1_500 and u.completion_tokens_details.reasoning_tokens == 1_500
    row = ledger_rows(db, "request_id = ?", rid, columns="output_tokens, reasoning_tokens")[0]
    assert row["reasoning_tokens"] == 1_500


def test_client_leaving_a_reasoning_stream_is_billed_the_assumed_reasoning(reasoning_env):
    """A client that closes the stream before the end (no usage chunk ever reaches the gateway) is billed
    the reasoning the upstream did before answering, not only the text relayed so far."""
    up, client, db = reasoning_env
    up.chunk_delay = 0.05
    try:
        with client.chat.completions.with_streaming_response.create(
                model="o3-mini", reasoning_effort="medium", stream=True,
                messages=[{"role": "user", "content": "one two three four five six seven eight nine ten"}]) as raw:
            rid = raw.headers["x-request-id"]
            for _ in raw.parse():
                break  # leave after the first chunk
        rows = ledger_rows(db, "request_id = ?", rid, columns="status, output_tokens, reasoning_tokens, metadata")
    finally:
        up.chunk_delay = 0.0
    assert rows[0]["status"] == "client_disconnected"
    assert rows[0]["reasoning_tokens"] == 4_000 and rows[0]["output_tokens"] >= 4_000
    assert json.loads(rows[0]["metadata"])["usage_estimated"] is True


def test_a_model_the_catalogue_does_not_list_gets_no_assumed_reasoning(reasoning_env):
    up, client, db = reasoning_env
    up.mode = "null"
    raw = client.chat.completions.with_raw_response.create(
        model="local-reasoner", reasoning_effort="high", messages=[{"role": "user", "content": "hello"}])
    assert raw.parse().usage.completion_tokens == count_text("echo: hello")
    row = ledger_rows(db, "request_id = ?", raw.headers["x-request-id"], columns="reasoning_tokens")[0]
    assert row["reasoning_tokens"] == 0


def test_native_responses_reasoning_answer_without_usage_bills_the_assumed_reasoning(reasoning_env):
    up, client, db = reasoning_env
    up.mode = "null"
    raw = client.responses.with_raw_response.create(model="o3-mini", input="hello", reasoning={"effort": "high"})
    assert raw.headers["x-tiergate-responses"] == "native" and raw.headers["x-tiergate-usage"] == "estimated"
    row = ledger_rows(db, "request_id = ?", raw.headers["x-request-id"], columns="output_tokens, reasoning_tokens")[0]
    assert row["reasoning_tokens"] == 10_000 and row["output_tokens"] > 10_000


def test_native_responses_reasoning_stream_without_usage_bills_the_assumed_reasoning(reasoning_env):
    up, client, db = reasoning_env
    up.mode = "null"
    with client.responses.with_streaming_response.create(model="o3-mini", input="hello", stream=True,
                                                         reasoning={"effort": "low"}, max_output_tokens=1_000) as raw:
        rid = raw.headers["x-request-id"]
        events = list(raw.parse())
    assert events[-1].type == "response.completed"
    row = ledger_rows(db, "request_id = ?", rid, columns="status, output_tokens, reasoning_tokens")[0]
    visible = row["output_tokens"] - row["reasoning_tokens"]
    assert row["status"] == "ok" and 0 < visible < 20
    assert row["reasoning_tokens"] == 1_000 - visible  # 1,500 assumed for low, capped by max_output_tokens
