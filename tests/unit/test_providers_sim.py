"""The sim provider: labelled, deterministic, realistic usage (prompt tokens counted, reasoning growing with
effort, limits honoured), tools and structured outputs valid for their schemas, n, stop, pacing and
failure injection."""

from __future__ import annotations

import time
from enum import Enum
from typing import Literal

import jsonschema
import orjson
import pytest
from pydantic import BaseModel, Field

from tiergate.accounting.tokens import count_request, count_text
from tiergate.providers.base import Deployment, Timeouts, UpstreamError
from tiergate.providers.http import SharedSession
from tiergate.providers.registry import provider_class
from tiergate.providers.sim import FINGERPRINT, SimProvider

T = Timeouts()
BODY = {"model": "o3-mini", "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Explain TCP slow start in two lines."}]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}


def sim(**options) -> SimProvider:
    dep = Deployment(id="o3-mini/0", model="o3-mini", provider="sim", options=options)
    p = provider_class("sim")(dep, SharedSession())
    assert isinstance(p, SimProvider)
    return p


async def stream_text(p, body):
    chunks = [c async for c in p.chat_stream(body, T)]
    return chunks, "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_labelled_as_simulated():
    p = sim()
    r = await p.chat(BODY, T)
    assert r.body["system_fingerprint"] == FINGERPRINT == "tiergate-sim"
    assert r.headers["x-tiergate-simulated"] == "true"
    assert p.response_headers["x-tiergate-simulated"] == "true"
    chunks, _ = await stream_text(p, {**BODY, "stream": True})
    assert all(c["system_fingerprint"] == "tiergate-sim" for c in chunks)
    assert r.body["object"] == "chat.completion" and r.body["id"].startswith("chatcmpl-")
    assert r.body["choices"][0]["message"]["role"] == "assistant"


async def test_deterministic_for_same_body_and_seed():
    a, b = sim(seed=1), sim(seed=1)
    ra, rb = await a.chat(BODY, T), await b.chat(BODY, T)
    assert ra.body["choices"] == rb.body["choices"] and ra.body["usage"] == rb.body["usage"]
    _, streamed = await stream_text(a, {**BODY, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed == ra.body["choices"][0]["message"]["content"]
    other_seed = await sim(seed=2).chat(BODY, T)
    other_prompt = await a.chat({**BODY, "messages": [{"role": "user", "content": "Something else"}]}, T)
    text = ra.body["choices"][0]["message"]["content"]
    assert other_seed.body["choices"][0]["message"]["content"] != text
    assert other_prompt.body["choices"][0]["message"]["content"] != text


async def test_usage_is_counted():
    r = await sim().chat(BODY, T)
    u = r.body["usage"]
    assert u["prompt_tokens"] == count_request(BODY, "o200k_base")
    text = r.body["choices"][0]["message"]["content"]
    assert u["completion_tokens"] == count_text(text) > 0
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert u["prompt_tokens_details"]["cached_tokens"] == 0
    assert u["completion_tokens_details"]["reasoning_tokens"] == 0


async def test_reasoning_tokens_grow_with_effort():
    p = sim()
    usage = {}
    for effort in ("low", "medium", "high"):
        usage[effort] = (await p.chat({**BODY, "reasoning_effort": effort}, T)).body["usage"]
    r = {e: u["completion_tokens_details"]["reasoning_tokens"] for e, u in usage.items()}
    assert 0 < r["low"] < r["medium"] < r["high"]
    assert r["medium"] / r["low"] == pytest.approx(2.5, rel=0.02)
    assert r["high"] / r["low"] == pytest.approx(6.0, rel=0.02)
    for u in usage.values():  # reasoning is part of completion_tokens
        assert u["completion_tokens"] > u["completion_tokens_details"]["reasoning_tokens"]
    longer = {**BODY, "reasoning_effort": "low",
              "messages": [{"role": "user", "content": "word " * 2000}]}
    assert (await p.chat(longer, T)).body["usage"]["completion_tokens_details"]["reasoning_tokens"] > r["low"]


async def test_output_limit_is_honoured():
    p = sim()
    for limit in (20, 200, 2000):
        r = await p.chat({**BODY, "max_completion_tokens": limit}, T)
        assert r.body["usage"]["completion_tokens"] <= limit
    r = await p.chat({**BODY, "max_completion_tokens": 100, "reasoning_effort": "high"}, T)
    u = r.body["usage"]
    assert r.body["choices"][0]["finish_reason"] == "length"
    assert u["completion_tokens"] == u["completion_tokens_details"]["reasoning_tokens"] == 100
    assert r.body["choices"][0]["message"]["content"] == ""
    small = (await p.chat({**BODY, "max_tokens": 40}, T)).body["usage"]["completion_tokens"]
    assert small <= 40


async def test_answer_length_does_not_grow_with_the_limit():
    # a real model does not write more because it may: a budgeted key, to which the gateway adds an output
    # limit, must pay what an unbudgeted one does (the sim once wrote 25-75% of any limit: ~19x the cost)
    p = sim(completion_tokens=64)
    for limit in (None, 4096, 100_000):
        lengths = []
        for q in range(12):
            body = {**BODY, "messages": [{"role": "user", "content": f"Question {q}: explain TCP."}]}
            if limit:
                body["max_completion_tokens"] = limit
            r = await p.chat(body, T)
            assert r.body["choices"][0]["finish_reason"] == "stop"
            lengths.append(r.body["usage"]["completion_tokens"])
        assert 32 <= min(lengths) and max(lengths) <= 2 * 96, (limit, lengths)  # 50-150% of 64 words


async def test_tool_choice_rules():
    p = sim()
    ask = [{"role": "user", "content": "What's the weather in Paris? Use get_weather."}]
    plain = [{"role": "user", "content": "Tell me a joke."}]
    calls = (await p.chat({"model": "m", "messages": ask, "tools": [WEATHER, TIME]}, T)).body["choices"][0]
    assert calls["finish_reason"] == "tool_calls"
    (call,) = calls["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["id"].startswith("call_")
    jsonschema.validate(orjson.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])
    assert calls["message"]["content"] is None
    no_call = (await p.chat({"model": "m", "messages": plain, "tools": [WEATHER]}, T)).body["choices"][0]
    assert no_call["finish_reason"] == "stop" and "tool_calls" not in no_call["message"]
    required = (await p.chat({"model": "m", "messages": plain, "tools": [WEATHER, TIME],
                              "tool_choice": "required"}, T)).body["choices"][0]
    assert required["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    named = (await p.chat({"model": "m", "messages": ask, "tools": [WEATHER, TIME],
                           "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, T))
    assert named.body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"
    none = (await p.chat({"model": "m", "messages": ask, "tools": [WEATHER], "tool_choice": "none"}, T))
    assert "tool_calls" not in none.body["choices"][0]["message"]
    both = [{"role": "user", "content": "call get_weather and get_time"}]
    par = await p.chat({"model": "m", "messages": both, "tools": [WEATHER, TIME]}, T)
    assert len(par.body["choices"][0]["message"]["tool_calls"]) == 2
    seq = await p.chat({"model": "m", "messages": both, "tools": [WEATHER, TIME], "parallel_tool_calls": False}, T)
    assert len(seq.body["choices"][0]["message"]["tool_calls"]) == 1
    after_tool = ask + [{"role": "assistant", "content": None, "tool_calls": [call]},
                        {"role": "tool", "tool_call_id": call["id"], "content": "18C"}]
    answer = (await p.chat({"model": "m", "messages": after_tool, "tools": [WEATHER]}, T)).body["choices"][0]
    assert answer["finish_reason"] == "stop" and answer["message"]["content"]


async def test_streamed_tool_call_matches():
    p = sim()
    body = {"model": "m", "messages": [{"role": "user", "content": "use get_weather"}], "tools": [WEATHER]}
    whole = (await p.chat(body, T)).body["choices"][0]["message"]["tool_calls"][0]
    chunks = [c async for c in p.chat_stream(body, T)]
    deltas = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert deltas[0]["id"] == whole["id"] and deltas[0]["function"]["name"] == "get_weather"
    assert "".join(d["function"].get("arguments", "") for d in deltas) == whole["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


class Color(str, Enum):
    red = "red"
    blue = "blue"


class Address(BaseModel):
    street: str
    zip_code: str = Field(min_length=5, max_length=5)


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=130)
    score: float = Field(gt=0, lt=1)
    email: str | None
    favourite: Color
    kind: Literal["human", "robot"]
    addresses: list[Address] = Field(min_length=1, max_length=3)
    friends: list[Person] = []
    tags: list[str]


async def test_json_schema_outputs_are_valid():
    schema = Person.model_json_schema()
    p = sim()
    for i in range(5):
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"make person {i}"}],
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "Person", "schema": schema, "strict": True}}}
        r = await p.chat(body, T)
        content = r.body["choices"][0]["message"]["content"]
        jsonschema.validate(orjson.loads(content), schema)
        Person.model_validate_json(content)
        _, streamed = await stream_text(p, body)
        assert streamed == content
    obj = await p.chat({**BODY, "response_format": {"type": "json_object"}}, T)
    assert isinstance(orjson.loads(obj.body["choices"][0]["message"]["content"]), dict)


async def test_n_choices_and_stop():
    p = sim()
    r = await p.chat({**BODY, "n": 3}, T)
    texts = [c["message"]["content"] for c in r.body["choices"]]
    assert [c["index"] for c in r.body["choices"]] == [0, 1, 2] and len(set(texts)) == 3
    assert r.body["usage"]["completion_tokens"] == sum(count_text(t) for t in texts)
    full = (await p.chat(BODY, T)).body["choices"][0]["message"]["content"]
    stop = full.split(" ")[3]
    cut = (await p.chat({**BODY, "stop": [stop]}, T)).body["choices"][0]
    assert stop not in cut["message"]["content"] and cut["finish_reason"] == "stop"
    chunks = [c async for c in p.chat_stream({**BODY, "n": 2}, T)]
    assert {c["choices"][0]["index"] for c in chunks} == {0, 1}


async def test_stream_shape():
    p = sim()
    chunks = [c async for c in p.chat_stream({**BODY, "stream_options": {"include_usage": True}}, T)]
    first, finish, last = chunks[0], chunks[-2], chunks[-1]
    assert first["choices"][0]["delta"]["role"] == "assistant" and first["choices"][0]["delta"]["content"] == ""
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["choices"][0]["delta"] == {}
    assert last["choices"] == [] and last["usage"]["total_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1
    plain = [c async for c in p.chat_stream(BODY, T)]
    assert all("usage" not in c and c["choices"] for c in plain)


async def test_latency_and_pacing():
    p = sim(latency_ms=150)
    t0 = time.perf_counter()
    await p.chat(BODY, T)
    assert time.perf_counter() - t0 >= 0.15
    p = sim(tokens_per_s=400, completion_tokens=40)
    t0 = time.perf_counter()
    first_at = None
    n = 0
    async for c in p.chat_stream({**BODY, "reasoning_effort": "low"}, T):
        first_at = first_at or time.perf_counter() - t0
        n += 1
    total = time.perf_counter() - t0
    assert first_at >= 0.3  # ~200 reasoning tokens at 400/s before the first chunk
    assert total >= first_at + (n - 3) / 400 * 0.9


async def test_failure_injection():
    p = sim(failure_rate=1.0, fail_status=429, retry_after_s=2)
    with pytest.raises(UpstreamError) as ei:
        await p.chat(BODY, T)
    assert (ei.value.status, ei.value.retry_after, ei.value.type) == (429, 2.0, "rate_limit_error")
    assert "simulated" in ei.value.message and ei.value.retryable
    with pytest.raises(UpstreamError):
        [c async for c in p.chat_stream(BODY, T)]
    p = sim(failure_rate=0.5, seed=7)
    outcomes = []
    for _ in range(40):
        try:
            await p.chat(BODY, T)
            outcomes.append(200)
        except UpstreamError as e:
            outcomes.append(e.status)
    assert 8 <= outcomes.count(200) <= 32 and set(outcomes) <= {200, 500, 503, 429}
    again = sim(failure_rate=0.5, seed=7)
    replay = []
    for _ in range(40):
        try:
            await again.chat(BODY, T)
            replay.append(200)
        except UpstreamError as e:
            replay.append(e.status)
    assert replay == outcomes  # failure sequence is reproducible with a seed


async def test_structured_output_and_tool_calls_are_cut_to_the_limit_in_tokens():
    """A JSON answer was cut by characters (its text counted more tokens than the reported usage) and tool calls
    ignored the limit altogether (21 completion tokens under max_tokens 5)."""
    p = sim()
    for fmt in ({"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "w", "schema":
                                                                                 WEATHER["function"]["parameters"]}}):
        for limit in (2, 8, 10):
            r = await p.chat({**BODY, "response_format": fmt, "max_tokens": limit, "n": 3}, T)
            used = 0
            for ch in r.body["choices"]:
                text = ch["message"]["content"]
                assert ch["finish_reason"] == "length" and count_text(text, "o200k_base") <= limit
                used += count_text(text, "o200k_base")
            assert r.body["usage"]["completion_tokens"] == used
    body = {**BODY, "messages": [{"role": "user", "content": "get_weather and get_time for Paris"}],
            "tools": [WEATHER, TIME]}
    full = await p.chat(body, T)
    assert full.body["choices"][0]["finish_reason"] == "tool_calls"
    for limit in (3, 5, 12, 20):  # a full answer here is ~37 tokens (the body, limit included, seeds the text)
        r = await p.chat({**body, "max_tokens": limit}, T)
        ch = r.body["choices"][0]
        assert ch["finish_reason"] == "length" and r.body["usage"]["completion_tokens"] <= limit, (limit, r.body)
        chunks = [c async for c in p.chat_stream({**body, "max_tokens": limit, "stream": True,
                                                  "stream_options": {"include_usage": True}}, T)]
        assert chunks[-1]["usage"] == r.body["usage"]
