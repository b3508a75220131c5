"""End to end: the official `openai` SDK (sync and async) against a real tiergate server on a loopback
port, serving catalogue models from the labelled `sim` provider."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from tests.helpers import running_gateway

MODELS = ["gpt-4o-mini", "o3-mini", "o1-mini", "o1-preview", "gpt-4o"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    db = tmp_path_factory.mktemp("gw") / "tiergate.db"
    cfg = {
        "models": [{"name": m, "deployments": [{"provider": "sim"}]} for m in MODELS]
        + [{"name": "broken", "catalog": "gpt-4o-mini", "retry": {"max_retries": 0},
            "deployments": [{"provider": "sim", "options": {"failure_rate": 1.0, "fail_status": 500}}]},
           {"name": "slow-stream", "catalog": "gpt-4o-mini",
            "deployments": [{"provider": "sim", "options": {"tokens_per_s": 40, "completion_tokens": 400}}]}],
        "storage": f"sqlite:///{db}",
    }
    with running_gateway(cfg) as url:
        yield url, db


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway[0], api_key="unused", max_retries=0)


def test_plain_completion_with_headers(client):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}]
    )
    r = raw.parse()
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert raw.headers["x-tiergate-model"] == "gpt-4o-mini"
    assert raw.headers["x-tiergate-deployment"] == "gpt-4o-mini/0"
    assert float(raw.headers["x-tiergate-cost-usd"]) > 0
    assert raw.headers["x-request-id"]
    assert raw.headers["x-tiergate-simulated"] == "true"


def test_stream_without_usage_sends_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Count to five"}], stream=True
    ))
    assert chunks, "no chunks"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.choices for c in chunks), "a usage-only chunk reached a client that did not ask for usage"
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_with_include_usage(client):
    chunks = list(client.chat.completions.create(
        model="o3-mini", messages=[{"role": "user", "content": "Count to five"}], stream=True,
        stream_options={"include_usage": True}, reasoning_effort="high",
    ))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens_details.reasoning_tokens > 0
    assert last.usage.completion_tokens >= last.usage.completion_tokens_details.reasoning_tokens


def test_reasoning_effort_grows_reasoning_tokens(client):
    low = client.chat.completions.create(model="o3-mini", reasoning_effort="low",
                                         messages=[{"role": "user", "content": "Prove 2+2=4"}])
    high = client.chat.completions.create(model="o3-mini", reasoning_effort="high",
                                          messages=[{"role": "user", "content": "Prove 2+2=4"}])
    assert high.usage.completion_tokens_details.reasoning_tokens > low.usage.completion_tokens_details.reasoning_tokens


def test_developer_message_and_dropped_params(client):
    raw = client.chat.completions.with_raw_response.create(
        model="o3-mini", temperature=0.2, max_tokens=300,
        messages=[{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
    )
    assert raw.parse().choices[0].message.content
    assert "temperature" in raw.headers["x-tiergate-dropped-params"]


def test_tool_call_round_trip(client):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False}}}]
    msgs = [{"role": "user", "content": "What's the weather in Paris?"}]
    r = client.chat.completions.create(model="gpt-4o-mini", messages=msgs, tools=tools, tool_choice="required")
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    msgs += [r.choices[0].message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    r2 = client.chat.completions.create(model="gpt-4o-mini", messages=msgs, tools=tools)
    assert r2.choices[0].message.content


class Answer(BaseModel):
    city: str
    population: int


def test_structured_output_parse(client):
    r = client.chat.completions.parse(
        model="gpt-4o-mini", response_format=Answer,
        messages=[{"role": "user", "content": "Largest city in France, as JSON"}],
    )
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Answer)


def test_capability_error_names_alternatives(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(
            model="o1-mini", messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )
    msg = ei.value.message
    assert "tools" in msg and "gpt-4o-mini" in msg


def test_context_window_400_before_upstream(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "word " * 140_000}])
    assert ei.value.code == "context_length_exceeded"


def test_unknown_model_404(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.code == "model_not_found"


def test_upstream_5xx_is_openai_shaped(client):
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code >= 500
    assert isinstance(ei.value.body, dict) and "message" in ei.value.body


def test_bad_json_body_is_400(gateway):
    import httpx

    r = httpx.post(gateway[0] + "/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_models_endpoints(client):
    ids = [m.id for m in client.models.list()]
    assert set(MODELS) <= set(ids)
    assert client.models.retrieve("o3-mini").id == "o3-mini"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


async def test_async_client_plain_and_stream(gateway):
    ac = openai.AsyncOpenAI(base_url=gateway[0], api_key="unused", max_retries=0)
    r = await ac.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content
    stream = await ac.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                              stream=True, stream_options={"include_usage": True})
    got = [c async for c in stream]
    assert got[-1].usage is not None
    await ac.close()


def _ledger_rows(db, request_id, timeout=5.0):
    import sqlite3
    import time

    deadline = time.time() + timeout
    while True:
        con = sqlite3.connect(db)
        try:
            rows = con.execute("SELECT status, served_model, cost_usd, input_tokens, output_tokens, stream "
                               "FROM ledger WHERE request_id = ?", (request_id,)).fetchall()
        except sqlite3.OperationalError:
            rows = []
        finally:
            con.close()
        if rows or time.time() > deadline:
            return rows
        time.sleep(0.05)


def test_each_answer_has_exactly_one_ledger_row(gateway, client):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "ledger me"}])
    rows = _ledger_rows(gateway[1], raw.headers["x-request-id"])
    assert len(rows) == 1
    status, served, cost, inp, out, stream = rows[0]
    assert (status, served, stream) == ("ok", "gpt-4o-mini", 0)
    assert cost == pytest.approx(float(raw.headers["x-tiergate-cost-usd"]), rel=1e-6)
    assert inp == raw.parse().usage.prompt_tokens and out == raw.parse().usage.completion_tokens

    with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "stream me"}]) as resp:
        rid = resp.headers["x-request-id"]
        list(resp.iter_lines())
    rows = _ledger_rows(gateway[1], rid)
    assert len(rows) == 1 and rows[0][0] == "ok" and rows[0][4] > 0 and rows[0][5] == 1


def test_client_disconnect_mid_stream_is_recorded(gateway):
    import httpx

    with httpx.Client(timeout=10) as h, h.stream("POST", gateway[0] + "/chat/completions", json={
            "model": "slow-stream", "stream": True, "messages": [{"role": "user", "content": "long story"}]}) as r:
        rid = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line.replace(" ", ""):
                break  # got a content token; hang up
    rows = _ledger_rows(gateway[1], rid, timeout=10)
    assert len(rows) == 1
    assert rows[0][0] == "client_disconnected"
    assert rows[0][3] > 0  # prompt tokens recorded even though the upstream's usage never arrived


def test_refused_and_failed_requests_are_in_the_ledger(gateway, client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    rid = ei.value.response.headers["x-request-id"]
    rows = _ledger_rows(gateway[1], rid)
    assert len(rows) == 1 and rows[0][0] == "rejected"
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.response.headers["x-tiergate-model"] == "broken"
    assert ei.value.response.headers["x-tiergate-deployment"] == "broken/0"
    rid = ei.value.response.headers["x-request-id"]
    assert [r[0] for r in _ledger_rows(gateway[1], rid)] == ["error"]
    assert [r[0] for r in _ledger_rows(gateway[1], rid + ":a1")] == ["failed_attempt"]
