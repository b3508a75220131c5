"""Stored responses end to end with the official SDK, on SQLite and PostgreSQL: `responses.retrieve`,
`responses.delete`, `responses.input_items.list` after plain and streamed creates on both paths
(translated: the `sim` provider and a model with fallbacks on the recording fake OpenAI upstream;
native: the fake's Responses endpoint), `store: false`, ownership between the master key and two
virtual keys, and `previous_response_id` on the translated path (the upstream's chat request carries
the earlier turns, instructions are not inherited)."""

from __future__ import annotations

import asyncio
import secrets

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway
from tests.unit.test_store_fixtures import PG_BASE, _pg_up, drop_schema

MASTER = "sk-responses-store-master-0123456789"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gw(request, tmp_path_factory):
    schema = None
    if request.param == "sqlite":
        storage = f"sqlite:///{tmp_path_factory.mktemp('rstore') / 'tg.db'}"
    else:
        if not _pg_up():
            pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (db `test`, user postgres)")
        schema = f"tg_t_{secrets.token_hex(6)}"
        storage = f"{PG_BASE}?schema={schema}"
    with FakeOpenAI(api_key="sk-oai-rs") as up:
        oai = {"provider": "openai", "api_base": up.url, "api_key": "env:TG_RS_OAI"}
        cfg = {"models": [
            {"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]},
            {"name": "o3-mini", "deployments": [oai]},  # native Responses upstream
            {"name": "gpt-4o", "fallbacks": ["o3-mini"], "deployments": [oai]},  # translated, recorded upstream
        ], "storage": storage}
        with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER, "TG_RS_OAI": "sk-oai-rs"}) as base:
            with httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                              headers={"authorization": f"Bearer {MASTER}"}, timeout=10) as admin:
                keys = [admin.post("/keys", json={"name": f"team-{n}"}).json() for n in ("a", "b")]
            clients = [openai.OpenAI(base_url=base, api_key=k, max_retries=0)
                       for k in (MASTER, keys[0]["key"], keys[1]["key"])]
            yield clients, up, keys, base
    if schema:
        asyncio.run(drop_schema(schema))


def test_create_then_retrieve_equals_created_both_paths(gw):
    (_, a, _), _, _, _ = gw
    for model in ("gpt-4o-mini", "gpt-4o", "o3-mini"):  # sim, translated on the fake, native on the fake
        raw = a.responses.with_raw_response.create(model=model, input="remember me", instructions="be brief")
        created = raw.parse()
        got = a.responses.with_raw_response.retrieve(created.id)
        assert got.http_response.json() == raw.http_response.json(), model  # the object exactly as returned
        assert got.parse().output_text == created.output_text != ""
    translated = a.responses.create(model="gpt-4o-mini", input="x")
    assert translated.store is True and translated.previous_response_id is None


def test_streamed_responses_are_stored(gw):
    (_, a, _), _, _, _ = gw
    for model in ("gpt-4o-mini", "o3-mini"):  # translated stream, native relayed stream
        events = list(a.responses.create(model=model, input="stream me please", stream=True))
        final = events[-1].response
        assert events[-1].type == "response.completed"
        got = a.responses.retrieve(final.id)  # stored before the terminal event went out: no race
        assert got.model_dump() == final.model_dump(), model
        with a.responses.stream(model=model, input="stream me please") as stream:
            helper = stream.get_final_response()
        assert a.responses.retrieve(helper.id).output_text == helper.output_text != ""
        assert [i.content[0].text for i in a.responses.input_items.list(final.id).data] == ["stream me please"]


def test_store_false_and_delete(gw):
    (_, a, _), _, _, _ = gw
    r = a.responses.create(model="gpt-4o-mini", input="forget me", store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError) as e:
        a.responses.retrieve(r.id)
    assert e.value.body["code"] == "response_not_found" and r.id in e.value.body["message"]
    with a.responses.stream(model="gpt-4o-mini", input="forget me too", store=False) as stream:
        s = stream.get_final_response()
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(s.id)
    kept = a.responses.create(model="gpt-4o-mini", input="delete me")
    raw = a.responses.with_raw_response.delete(kept.id)
    assert raw.http_response.json() == {"id": kept.id, "object": "response", "deleted": True}
    for call in (lambda: a.responses.retrieve(kept.id), lambda: a.responses.delete(kept.id),
                 lambda: a.responses.input_items.list(kept.id)):
        with pytest.raises(openai.NotFoundError):
            call()


def test_a_deleted_native_response_is_continued_by_nobody(gw):
    """The upstream keeps its own copy of a native response (one account for every key): deleted here, its
    id was still continued upstream for the master key."""
    (master, a, _), up, _, _ = gw
    r = a.responses.create(model="o3-mini", input="secret")  # native: the fake's Responses endpoint
    assert master.responses.create(model="o3-mini", input="and then?", previous_response_id=r.id).output_text
    a.responses.delete(r.id)
    up.clear()
    for client in (a, master):
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model="o3-mini", input="and then?", previous_response_id=r.id)
        assert e.value.body["code"] == "previous_response_not_found" and e.value.body["param"] == "previous_response_id"
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(r.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.delete(r.id)
    assert not up.requests  # nothing sent upstream
    # nor through a later turn: the upstream would resolve the chain back to the deleted one
    first = a.responses.create(model="o3-mini", input="secret too")
    second = a.responses.create(model="o3-mini", input="more", previous_response_id=first.id)
    a.responses.delete(first.id)
    up.clear()
    for client in (a, master):
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model="o3-mini", input="and then?", previous_response_id=second.id)
        assert e.value.body["code"] == "previous_response_not_found" and first.id in e.value.body["message"]
    assert not up.requests
    # an id the gateway never stored (made upstream outside it) is still the master key's to continue
    assert master.responses.create(model="o3-mini", input="x", previous_response_id="resp_made_elsewhere").output_text


def test_input_items_order_limit_after(gw):
    (_, a, _), _, _, base = gw
    inp = [{"role": "developer", "content": "d"}, {"role": "user", "content": "u1"},
           {"type": "message", "role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
           {"role": "user", "content": [{"type": "input_text", "text": "u3"}]}]
    r = a.responses.create(model="gpt-4o-mini", input=inp)
    page = a.responses.input_items.list(r.id)  # default: desc, 20
    texts = [i.content[0].text for i in page.data]
    assert texts == ["u3", "u2", "a1", "u1", "d"] and page.has_more is False
    assert page.data[2].role == "assistant" and page.data[2].content[0].type == "output_text"
    assert page.data[0].content[0].type == "input_text" and page.data[0].id.startswith("msg_")
    asc = a.responses.input_items.list(r.id, order="asc", limit=2)
    assert [i.content[0].text for i in asc.data] == ["d", "u1"] and asc.has_more is True
    assert [i.content[0].text for i in asc] == ["d", "u1", "a1", "u2", "u3"]  # SDK pages on with `after`
    nxt = a.responses.input_items.list(r.id, order="asc", limit=2, after=asc.data[-1].id)
    assert [i.content[0].text for i in nxt.data] == ["a1", "u2"]
    body = httpx.get(f"{base}/responses/{r.id}/input_items", params={"limit": 5, "order": "asc"},
                     headers={"authorization": a.api_key.join(("Bearer ", ""))}).json()
    assert body["object"] == "list" and body["has_more"] is False
    assert (body["first_id"], body["last_id"]) == (body["data"][0]["id"], body["data"][-1]["id"])
    for bad in ({"limit": 0}, {"limit": 101}, {"order": "up"}, {"after": "msg_nope"}):
        with pytest.raises(openai.BadRequestError) as e:
            a.responses.input_items.list(r.id, **bad)
        assert e.value.body["param"] == next(iter(bad))


def test_previous_response_id_two_turns_on_translated_path(gw):
    (_, a, _), up, _, _ = gw
    up.clear()
    r1 = a.responses.create(model="gpt-4o", input="my name is Ada", instructions="first rules")
    r2 = a.responses.create(model="gpt-4o", input="what is my name?", instructions="second rules",
                            previous_response_id=r1.id)
    sent = up.last.body["messages"]
    assert up.last.path.endswith("/chat/completions")
    assert sent == [{"role": "system", "content": "second rules"},  # instructions are not inherited
                    {"role": "user", "content": "my name is Ada"},
                    {"role": "assistant", "content": "echo: my name is Ada"},
                    {"role": "user", "content": "what is my name?"}]
    assert r2.previous_response_id == r1.id and a.responses.retrieve(r2.id).previous_response_id == r1.id
    assert [i.content[0].text for i in a.responses.input_items.list(r2.id).data] == ["what is my name?"]
    # a third turn through a tool call: function_call output items come back as assistant tool_calls
    tools = [{"type": "function", "name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}]
    r3 = a.responses.create(model="gpt-4o", input="look it up", tools=tools, previous_response_id=r2.id)
    call = next(o for o in r3.output if o.type == "function_call")
    with a.responses.stream(model="gpt-4o", tools=tools, previous_response_id=r3.id,
                            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Ada"}]) as s:
        r4 = s.get_final_response()
    sent = up.last.body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user", "assistant", "user", "assistant", "tool"]
    assert sent[5]["tool_calls"][0]["id"] == call.call_id and sent[6]["tool_call_id"] == call.call_id
    assert r4.previous_response_id == r3.id and r4.status == "completed"
    with pytest.raises(openai.BadRequestError) as e:
        a.responses.create(model="gpt-4o", input="x", previous_response_id="resp_missing")
    assert e.value.body["code"] == "previous_response_not_found"
    assert e.value.body["param"] == "previous_response_id" and "resp_missing" in e.value.body["message"]


def test_another_key_cannot_see_your_response(gw):
    (master, a, b), _, _, _ = gw
    r = a.responses.create(model="gpt-4o-mini", input="private")
    for call in (lambda: b.responses.retrieve(r.id), lambda: b.responses.input_items.list(r.id),
                 lambda: b.responses.delete(r.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError) as e:  # nor continue it
        b.responses.create(model="gpt-4o-mini", input="x", previous_response_id=r.id)
    assert e.value.body["code"] == "previous_response_not_found"
    assert a.responses.retrieve(r.id).id == r.id  # still there after b's delete attempt
    assert master.responses.retrieve(r.id).id == r.id  # the master key sees every key's responses
    m = master.responses.create(model="gpt-4o-mini", input="master's")
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(m.id)


def test_cancel_is_an_explained_400_for_a_stored_response_and_404_for_an_unknown_one(gw):
    (_, a, b), _, _, _ = gw
    r = a.responses.create(model="gpt-4o-mini", input="finished before it is returned")
    with pytest.raises(openai.BadRequestError) as e:
        a.responses.cancel(r.id)
    assert "only background responses can be cancelled" in e.value.message and e.value.param == "response_id"
    for client, rid in ((a, "resp_does_not_exist"), (b, r.id)):  # unknown, and another key's
        with pytest.raises(openai.NotFoundError) as nf:
            client.responses.cancel(rid)
        assert nf.value.body["code"] == "response_not_found"


def test_native_turn_after_a_translated_one_gets_the_chain_as_input(gw):
    """The upstream Responses API never saw a translated-path response id: continuing it on a native
    deployment sends the stored chain as input (no previous_response_id); continuing a native response
    natively still passes the id upstream."""
    (_, a, _), up, _, _ = gw
    up.clear()
    r1 = a.responses.create(model="gpt-4o", input="my name is Ada")  # translated (chat upstream)
    r2 = a.responses.create(model="o3-mini", input="what is my name?", previous_response_id=r1.id)  # native
    sent = up.last.body
    assert up.last.path.endswith("/responses") and "previous_response_id" not in sent
    texts = [(i.get("role"), i["content"] if isinstance(i["content"], str) else i["content"][0]["text"])
             for i in sent["input"]]
    assert texts == [("user", "my name is Ada"), ("assistant", "echo: my name is Ada"),
                     ("user", "what is my name?")]
    assert r2.previous_response_id == r1.id
    stored = a.responses.retrieve(r2.id)
    assert stored.previous_response_id == r1.id
    assert [i.content[0].text for i in a.responses.input_items.list(r2.id).data] == ["what is my name?"]
    with a.responses.stream(model="o3-mini", input="stream it", previous_response_id=r1.id) as s:
        streamed = s.get_final_response()
    assert streamed.previous_response_id == r1.id and "previous_response_id" not in up.last.body
    assert len(up.last.body["input"]) == 3
    a.responses.create(model="o3-mini", input="and again?", previous_response_id=r2.id)
    assert up.last.body["previous_response_id"] == r2.id and up.last.body["input"] == "and again?"


def test_native_path_does_not_forward_a_chain_the_key_may_not_continue(gw):
    """On the native path the id used to go upstream unchecked: every key shares the upstream account, so
    another key's response (or one deleted here) was continued upstream. Now it is a 400 before any
    upstream call; the owner's own live chain still goes upstream by id."""
    (_, a, b), up, _, _ = gw
    r1 = a.responses.create(model="o3-mini", input="secret plan")  # native
    r2 = a.responses.create(model="o3-mini", input="and then?", previous_response_id=r1.id)
    assert up.last.body["previous_response_id"] == r1.id  # the owner's chain: by id, upstream
    up.clear()
    with pytest.raises(openai.BadRequestError) as e:  # another key
        b.responses.create(model="o3-mini", input="tell me", previous_response_id=r2.id)
    assert e.value.body["code"] == "previous_response_not_found" and e.value.param == "previous_response_id"
    assert up.requests == []
    a.responses.delete(r1.id)  # a deleted link breaks the chain for its owner too
    with pytest.raises(openai.BadRequestError) as e:
        a.responses.create(model="o3-mini", input="more", previous_response_id=r2.id)
    assert f"'{r1.id}' not found" in e.value.message and up.requests == []
