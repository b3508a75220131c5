"""Claude's extended thinking across turns of `/v1/responses` (translated path), with the official SDK
against the wire-checking fake Anthropic upstream, which refuses a tool-using assistant turn without its
signed thinking block when thinking is on, and any thinking block whose text or signature was altered.

The answer's `output` carries a `reasoning` item (thinking text as its summary, the signed blocks in
`encrypted_content`) before the function call; passed back (via `previous_response_id` from the store,
or in `input`), it becomes the signed thinking block again, so the follow-up turn keeps thinking on.
OpenAI-family models never see those items (translated: dropped; native: removed from `input`)."""

from __future__ import annotations

import json

import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropicThread, sign
from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway

CLAUDE = "claude-3-7-sonnet"
TOOLS = [{"type": "function", "name": "lookup", "description": "find things",
          "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("claude_thinking") / "tiergate.db"
    with FakeOpenAI(api_key="sk-oai-think") as up, FakeAnthropicThread("sk-ant-think") as ant:
        cfg = {
            "models": [
                {"name": CLAUDE, "deployments": [{"provider": "anthropic", "api_base": ant.base_url,
                                                  "api_key": "env:TG_THINK_ANT", "model": "claude-3-7-sonnet-20250219"}]},
                {"name": "gpt-4o-mini", "deployments": [{"provider": "openai", "api_base": up.url,
                                                         "api_key": "env:TG_THINK_OAI"}]},
                # fallbacks: the translated path through Chat Completions
                {"name": "gpt-4o", "fallbacks": ["gpt-4o-mini"],
                 "deployments": [{"provider": "openai", "api_base": up.url, "api_key": "env:TG_THINK_OAI"}]},
            ],
            "storage": f"sqlite:///{db}",
        }
        with running_gateway(cfg, env={"TG_THINK_ANT": "sk-ant-think", "TG_THINK_OAI": "sk-oai-think"}) as url:
            yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0), up, ant


@pytest.fixture
def clean(env):
    client, up, ant = env
    ant.problems.clear()
    ant.redacted_thinking = False
    up.clear()
    yield client, up, ant
    ant.redacted_thinking = False


def _assistant_turns(sent: dict) -> list[list[dict]]:
    return [m["content"] for m in sent["messages"] if m["role"] == "assistant"]


def _first_turn(client: openai.OpenAI, **kw):
    r = client.responses.create(model=CLAUDE, input="find the answer", tools=TOOLS, reasoning={"effort": "low"}, **kw)
    assert [o.type for o in r.output] == ["reasoning", "function_call"]
    return r, r.output[0], r.output[1]


def test_reasoning_item_then_previous_response_id_keeps_thinking(clean):
    client, _, ant = clean
    r1, rs, call = _first_turn(client)
    assert ant.requests[-1]["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    thought = f"Let me think step by step about this: {'find the answer'!r}."  # the fake's thinking text
    assert rs.id.startswith("rs_") and rs.encrypted_content
    assert [(s.type, s.text) for s in rs.summary] == [("summary_text", thought)]
    assert r1.usage.output_tokens_details.reasoning_tokens > 0
    # the stored response keeps the item (what previous_response_id reads)
    assert client.responses.retrieve(r1.id).output[0].encrypted_content == rs.encrypted_content

    r2 = client.responses.create(model=CLAUDE, previous_response_id=r1.id, tools=TOOLS, reasoning={"effort": "low"},
                                 input=[{"type": "function_call_output", "call_id": call.call_id, "output": "42"}])
    sent = ant.requests[-1]
    assert ant.problems == []
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}  # thinking stays on
    turn = _assistant_turns(sent)[0]
    assert turn[0] == {"type": "thinking", "thinking": thought, "signature": sign(thought)}  # lossless
    assert turn[1]["type"] == "tool_use" and turn[1]["id"] == call.call_id
    assert r2.status == "completed" and r2.output_text.startswith("echo:")
    assert r2.output[0].type == "reasoning" and r2.usage.output_tokens_details.reasoning_tokens > 0

    # a third and fourth turn on the same chain: a new tool round, both earlier turns' thinking sent back
    r3 = client.responses.create(model=CLAUDE, previous_response_id=r2.id, tools=TOOLS, reasoning={"effort": "low"},
                                 input="and once more")
    call3 = next(o for o in r3.output if o.type == "function_call")
    r4 = client.responses.create(model=CLAUDE, previous_response_id=r3.id, tools=TOOLS, reasoning={"effort": "low"},
                                 input=[{"type": "function_call_output", "call_id": call3.call_id, "output": "43"}])
    sent = ant.requests[-1]
    assert ant.problems == [] and sent["thinking"]["budget_tokens"] == 1024
    assert [t[0]["type"] for t in _assistant_turns(sent)] == ["thinking"] * 3
    assert r4.status == "completed" and r4.usage.output_tokens_details.reasoning_tokens > 0


def test_reasoning_item_passed_back_in_input_stateless(clean):
    client, _, ant = clean
    ant.redacted_thinking = True  # a redacted_thinking block rides along, as opaque as Anthropic made it
    r1, rs, call = _first_turn(client, store=False)
    items = [{"role": "user", "content": "find the answer"}, *[o.model_dump(exclude_none=True) for o in r1.output],
             {"type": "function_call_output", "call_id": call.call_id, "output": "42"}]
    r2 = client.responses.create(model=CLAUDE, input=items, tools=TOOLS, reasoning={"effort": "low"}, store=False)
    sent = ant.requests[-1]
    assert ant.problems == []
    assert sent["thinking"]["budget_tokens"] == 1024
    turn = _assistant_turns(sent)[0]
    assert [b["type"] for b in turn] == ["thinking", "redacted_thinking", "tool_use"]
    assert r2.status == "completed" and r2.usage.output_tokens_details.reasoning_tokens > 0

    # an altered encrypted_content is the client's error, said before anything goes upstream
    before = len(ant.requests)
    bad = [dict(it) for it in items]
    bad[1]["encrypted_content"] = rs.encrypted_content[:-6] + "!!!!!!"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=CLAUDE, input=bad, tools=TOOLS, reasoning={"effort": "low"}, store=False)
    assert e.value.body["param"] == "input[1].encrypted_content" and len(ant.requests) == before


def test_streamed_reasoning_item_and_follow_up(clean):
    client, _, ant = clean
    ant.redacted_thinking = True
    with client.responses.stream(model=CLAUDE, input="find the answer", tools=TOOLS,
                                 reasoning={"effort": "low"}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for t in ("response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
              "response.reasoning_summary_text.done", "response.reasoning_summary_part.done"):
        assert t in types
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert [i.type for i in done] == ["reasoning", "function_call"] and done[0].encrypted_content
    assert [o.type for o in final.output] == ["reasoning", "function_call"]
    assert final.output[0].encrypted_content == done[0].encrypted_content
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert deltas == final.output[0].summary[0].text and deltas.startswith("Let me think")
    call = final.output[1]
    assert json.loads(call.arguments) == {"q": "test"}

    with client.responses.stream(model=CLAUDE, previous_response_id=final.id, tools=TOOLS, reasoning={"effort": "low"},
                                 input=[{"type": "function_call_output", "call_id": call.call_id,
                                         "output": "42"}]) as stream:
        r2 = stream.get_final_response()
    sent = ant.requests[-1]
    assert ant.problems == [] and sent["thinking"]["budget_tokens"] == 1024
    assert [b["type"] for b in _assistant_turns(sent)[0]] == ["thinking", "redacted_thinking", "tool_use"]
    assert r2.output_text.startswith("echo:") and r2.usage.output_tokens_details.reasoning_tokens > 0


def test_chat_stream_carries_signed_thinking_blocks(clean):
    """The Chat Completions stream gives the signed blocks too (what the Responses stream is built from),
    so a streaming chat client can pass them back as the non-streamed message's thinking_blocks."""
    client, _, ant = clean
    tools = [{"type": "function", "function": {"name": t["name"], "parameters": t["parameters"]}} for t in TOOLS]
    chunks = list(client.chat.completions.create(model=CLAUDE, stream=True, reasoning_effort="low", tools=tools,
                                                 messages=[{"role": "user", "content": "find it"}]))
    blocks = [b for c in chunks if c.choices for b in (getattr(c.choices[0].delta, "thinking_blocks", None) or [])]
    assert len(blocks) == 1 and blocks[0]["signature"] == sign(blocks[0]["thinking"])
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    msgs = [{"role": "user", "content": "find it"},
            {"role": "assistant", "content": None, "thinking_blocks": blocks,
             "tool_calls": [{"id": calls[0].id, "type": "function",
                             "function": {"name": "lookup", "arguments": "{\"q\":\"test\"}"}}]},
            {"role": "tool", "tool_call_id": calls[0].id, "content": "42"}]
    c = client.chat.completions.create(model=CLAUDE, reasoning_effort="low", tools=tools, messages=msgs)
    assert ant.problems == [] and ant.requests[-1]["thinking"]["budget_tokens"] == 1024
    assert c.choices[0].message.content.startswith("echo:")


def test_openai_family_models_never_see_claude_reasoning(clean):
    client, up, _ = clean
    r1, rs, call = _first_turn(client)
    items = [{"role": "user", "content": "find the answer"}, *[o.model_dump(exclude_none=True) for o in r1.output],
             {"type": "function_call_output", "call_id": call.call_id, "output": "42"}]
    # translated (Chat Completions upstream): dropped, no thinking_blocks field reaches OpenAI
    r = client.responses.create(model="gpt-4o", input=items, tools=TOOLS, reasoning={"effort": "low"})
    assert r.status == "completed" and up.last.path.endswith("/chat/completions")
    assert all("thinking_blocks" not in m for m in up.last.body["messages"])
    # native (Responses upstream): removed from input, given directly or through previous_response_id
    client.responses.create(model="gpt-4o-mini", input=items, tools=TOOLS)
    assert up.last.path.endswith("/responses")
    assert [i.get("type", "message") for i in up.last.body["input"]] == ["message", "function_call",
                                                                          "function_call_output"]
    client.responses.create(model="gpt-4o-mini", previous_response_id=r1.id, tools=TOOLS,
                            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "42"}])
    sent = up.last.body["input"]
    assert up.last.path.endswith("/responses") and all(i.get("type") != "reasoning" for i in sent)
    assert rs.id not in json.dumps(sent)
