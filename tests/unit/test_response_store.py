"""The stored-Responses table (migration 0200) in both dialects: save/get round trip, ownership, delete,
the previous_response_id chain (oldest first, input then output items, a missing link named), and the
input-item normalisation the store keeps."""

from __future__ import annotations

import pytest

from tests.unit.test_store_fixtures import fx_pg_available, fx_store_url  # noqa: F401 (fixtures)
from tiergate.store import open_store
from tiergate.store.responses import ChainBroken, ResponseStore
from tiergate.wire.responses import input_items


def _resp(rid: str, text: str) -> dict:
    return {"id": rid, "object": "response", "created_at": 1700000000, "model": "m", "status": "completed",
            "output": [{"type": "message", "id": f"msg_{rid}", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}]}


async def test_save_get_delete_chain_and_owners(store_url):
    store = await open_store(store_url)
    try:
        rs = ResponseStore(store)
        first = input_items("hi")
        assert await rs.save(_resp("resp_1", "hello"), key_id="k1", path="translated", input_items=first,
                             instructions="be brief")
        assert not await rs.save(_resp("resp_1", "other"), key_id="k2", path="translated", input_items=[])
        second = input_items([{"role": "user", "content": "and then?"}])
        await rs.save(_resp("resp_2", "then this"), key_id="k1", path="translated", input_items=second,
                      previous_response_id="resp_1")
        got = await rs.get("resp_1", "k1")
        assert got is not None and got.response == _resp("resp_1", "hello") and got.instructions == "be brief"
        assert got.key_id == "k1" and got.input_items == first and got.path == "translated"
        assert await rs.get("resp_1", "k2") is None  # another key: absent
        assert (await rs.get("resp_1", None)) == got  # master / open gateway: sees all
        chain = await rs.conversation("resp_2", "k1")
        assert [i.get("role") for i in chain] == ["user", "assistant", "user", "assistant"]
        assert chain[0]["content"] == [{"type": "input_text", "text": "hi"}]
        assert chain[3]["content"][0]["text"] == "then this"
        with pytest.raises(ChainBroken) as e:
            await rs.conversation("resp_2", "k2")
        assert e.value.response_id == "resp_2"
        assert not await rs.delete("resp_1", "k2")  # not the owner: nothing removed
        assert await rs.delete("resp_1", "k1")
        assert await rs.get("resp_1", None) is None and not await rs.delete("resp_1", None)
        with pytest.raises(ChainBroken) as e:  # a deleted link breaks the chain, naming it
            await rs.conversation("resp_2", "k1")
        assert e.value.response_id == "resp_1"
    finally:
        await store.close()


def test_input_items_normalised():
    items = input_items([
        {"role": "user", "content": [{"type": "input_text", "text": "a"},
                                     {"type": "input_image", "image_url": "https://x/y.png"}]},
        {"type": "message", "role": "assistant", "content": "b", "id": "msg_keep"},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        {"role": "developer", "content": "c", "id": None},
    ])
    assert [i["type"] for i in items] == ["message", "message", "function_call", "function_call_output", "message"]
    assert items[0]["id"].startswith("msg_") and items[0]["status"] == "completed"
    assert items[0]["content"][1] == {"type": "input_image", "image_url": "https://x/y.png"}
    assert items[1]["id"] == "msg_keep"
    assert items[1]["content"] == [{"type": "output_text", "text": "b", "annotations": []}]
    assert items[2]["id"].startswith("fc_") and items[2]["status"] == "completed"
    assert items[3]["id"].startswith("fco_") and items[3]["output"] == "42"
    assert items[4]["id"].startswith("msg_") and items[4]["content"] == [{"type": "input_text", "text": "c"}]
    assert len({i["id"] for i in items}) == 5


async def test_retention_hides_and_purges_old_responses(store_url, monkeypatch):
    import time

    # A process started soon after the machine booted (monotonic clock below the purge interval) still
    # purges on its first save: the first purge used to wait until monotonic() passed PURGE_EVERY_S.
    monkeypatch.setattr("tiergate.store.responses.monotonic", lambda: 5.0)
    store = await open_store(store_url)
    try:
        rs = ResponseStore(store, retention_s=3600.0)
        now = time.time()
        old, new = _resp("resp_old", "old"), _resp("resp_new", "new")
        old["created_at"], new["created_at"] = now - 7200, now
        await rs.save(old, key_id="k", path="native", input_items=[])  # the save also purges (first time)
        await rs.save(new, key_id="k", path="native", input_items=[])
        assert await rs.get("resp_old", None) is None and await rs.get("resp_new", "k") is not None
        assert await store.fetchone("SELECT id FROM responses WHERE id = ?", "resp_old") is None  # purged
        keep = ResponseStore(store)  # retention None: kept until deleted
        await keep.save(old, key_id="k", path="native", input_items=[])
        assert await keep.get("resp_old", "k") is not None and await keep.purge() == 0
        assert await rs.purge() == 1
    finally:
        await store.close()


def test_responses_retention_setting():
    from tiergate.config import ConfigError, responses_retention_s

    assert responses_retention_s(None) == 30 * 86400
    assert responses_retention_s({"retention_days": 7}) == 7 * 86400
    assert responses_retention_s({"retention_days": None}) is None
    for bad in (0, -1, "30", True, float("nan")):
        with pytest.raises(ConfigError, match=r"responses\.retention_days"):
            responses_retention_s({"retention_days": bad})
    with pytest.raises(ConfigError, match="responses"):
        responses_retention_s({"retention": 3})


def test_refusals_on_the_responses_endpoint_name_its_own_output_limit():
    """A TPM refusal said "or lower max_tokens." to a /v1/responses client (its parameter is max_output_tokens)."""
    from tiergate.accounting import budget, ratelimit
    from tiergate.server.responses import _in_responses_terms

    errors = [ratelimit.refusal("k", None, 400, 350, ratelimit.Decision(False, {}, 31.9, "tokens")),
              ratelimit.too_large("k", 400, 5000, "gpt-4o"),
              budget.over_budget("k", 0.01, 9_000_000, 0, 20_000_000, "total")]
    for e in errors:
        _in_responses_terms(e, {"model": "gpt-4o", "input": "x"})
        assert "max_output_tokens" in e.message and "max_tokens" not in e.message.replace("max_output_tokens", ""), \
            e.message
