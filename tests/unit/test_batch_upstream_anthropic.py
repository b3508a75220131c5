"""Pieces of Anthropic batch forwarding that need no HTTP: custom-id mapping and result translation."""

from __future__ import annotations

import orjson

from tiergate.batches.upstream_anthropic import CUSTOM_ID, AnthropicBatchClient, upstream_custom_ids


def _rows(*cids: str) -> list[dict]:
    body = orjson.dumps({"model": "claude-3-7-sonnet", "messages": [{"role": "user", "content": "hi"}]}).decode()
    return [{"line_no": i, "custom_id": c, "body": body} for i, c in enumerate(cids)]


def test_only_refused_custom_ids_are_mapped_and_never_collide() -> None:
    rows = _rows("ok-1", "x" * 65, "tg-1", "tg-3", "has space", "")
    remap = upstream_custom_ids(rows)
    assert remap == {"tg-1_": 1, "tg-4": 4, "tg-5": 5}  # "tg-1" is a client's own id: the mapped one differs
    sent = [c for c in (r["custom_id"] for r in rows) if CUSTOM_ID.fullmatch(c)] + list(remap)
    assert len(sent) == len(set(sent)) == len(rows) and all(CUSTOM_ID.fullmatch(c) for c in sent)


def test_result_types_become_openai_batch_lines() -> None:
    client = AnthropicBatchClient.__new__(AnthropicBatchClient)
    client.endpoint = "/v1/chat/completions"
    row = _rows("a")[0]
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-7-sonnet-20250219",
           "content": [{"type": "text", "text": "hello"}], "stop_reason": "max_tokens",
           "usage": {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 2}}
    ok = client._line_result(row, {"type": "succeeded", "message": msg})
    assert ok.ok and ok.status_code == 200 and ok.body["object"] == "chat.completion"
    assert ok.body["choices"][0]["finish_reason"] == "length" and ok.usage["prompt_tokens"] == 12
    err = client._line_result(row, {"type": "errored", "error": {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}}})
    assert (err.ok, err.status_code, err.body["error"]["code"]) == (False, 503, "overloaded_error")
    for kind, code in (("canceled", "batch_cancelled"), ("expired", "batch_expired")):
        lost = client._line_result(row, {"type": kind})
        assert lost.status_code is None and lost.body is None and lost.error["code"] == code


def test_untranslatable_lines_are_refused_as_the_gateways_own_400() -> None:
    from types import SimpleNamespace

    from tiergate.catalog.catalog import Catalog

    info = Catalog.load().get("claude-3-7-sonnet")
    client = AnthropicBatchClient.__new__(AnthropicBatchClient)
    client.gw, client.model, client.info = SimpleNamespace(infos={"claude-3-7-sonnet": info}), "claude-3-7-sonnet", info
    client.endpoint, client.upstream_model = "/v1/chat/completions", "claude-3-7-sonnet-20250219"
    rows = _rows("ok", "two", "hot")
    for r, extra in zip(rows[1:], ({"n": 2}, {"temperature": "hot"}), strict=True):
        r["body"] = orjson.dumps({**orjson.loads(r["body"]), **extra}).decode()
    requests, refused = client._requests(rows, {})
    assert [r["custom_id"] for r in requests] == ["ok"]
    two, hot = (x.body["error"] for x in refused)
    assert [x.status_code for x in refused] == [400, 400]
    assert two["message"] == "this line cannot be sent to Anthropic: Anthropic models return one choice; n must be 1"
    assert (two["param"], two["code"]) == ("n", "unsupported_value")
    assert hot["message"].startswith("this line cannot be sent to Anthropic: ") and hot["code"] == "invalid_value"
    assert not any(x["message"].startswith("anthropic:") for x in (two, hot))


def test_a_lines_reservation_counts_its_tools() -> None:
    """A forwarded line's prompt reservation counted only its messages: a line whose tool schema is most
    of its prompt was admitted against the key's budget and TPM as if it had none."""
    from types import SimpleNamespace

    from tiergate.catalog.catalog import Catalog

    info = Catalog.load().get("claude-3-7-sonnet")
    client = AnthropicBatchClient.__new__(AnthropicBatchClient)
    client.gw, client.model, client.info = SimpleNamespace(infos={"claude-3-7-sonnet": info}), "claude-3-7-sonnet", info
    client.endpoint, client.upstream_model = "/v1/chat/completions", "claude-3-7-sonnet-20250219"
    body = {"model": "claude-3-7-sonnet", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {
        f"field_{i}": {"type": "string", "description": "a long description of this field"} for i in range(200)}}}}
    plain, _ = client.reservation(body, True)
    with_tools, _ = client.reservation({**body, "tools": [tool]}, True)
    assert with_tools > plain + 1_000
