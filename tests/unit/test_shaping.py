"""Request shaping from catalogue data: roles, output limit, dropped params, efforts, capability 400s."""

from __future__ import annotations

import copy
import dataclasses
import time

import pytest

from tiergate.catalog import Catalog, check_capabilities, required_capabilities, shape_request
from tiergate.wire.errors import GatewayError


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return Catalog.load()


@pytest.fixture(scope="module")
def configured(cat: Catalog) -> dict:
    # client-facing name -> catalogue entry, as the server builds it from the config
    return {"o1-mini": cat["o1-mini"], "gpt-4o-mini": cat["gpt-4o-mini"], "o3-mini": cat["o3-mini"],
            "o1-preview": cat["o1-preview"], "team-default": cat["gpt-4o"]}


def _body(model: str, **kw) -> dict:
    body = {"model": model, "messages": [{"role": "system", "content": "Be terse."},
                                         {"role": "user", "content": "Hi"}]}
    body.update(kw)
    return body


# ------------------------------------------------------------------ system / developer delivery


def test_o1_mini_gets_no_system_message(cat: Catalog) -> None:
    body = _body("o1-mini")
    out, dropped = shape_request(body, cat["o1-mini"])
    assert [m["role"] for m in out["messages"]] == ["user"]
    assert out["messages"][0]["content"] == "Be terse.\n\nHi"
    assert dropped == []


def test_fold_joins_system_and_developer_into_first_user_message_with_parts(cat: Catalog) -> None:
    body = {"model": "o1-preview", "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "Rule one."}]},
        {"role": "system", "content": "Rule two."},
        {"role": "assistant", "content": "Earlier answer"},
        {"role": "user", "content": [{"type": "text", "text": "Question"}]},
        {"role": "user", "content": "Second"},
    ]}
    out, _ = shape_request(body, cat["o1-preview"])
    roles = [m["role"] for m in out["messages"]]
    assert "system" not in roles and "developer" not in roles
    assert out["messages"][1]["content"] == [{"type": "text", "text": "Rule one.\n\nRule two."},
                                             {"type": "text", "text": "Question"}]
    assert out["messages"][2] is body["messages"][4]  # untouched messages are shared, not copied


def test_fold_without_any_user_message_becomes_a_user_message(cat: Catalog) -> None:
    body = {"model": "o1-mini", "messages": [{"role": "system", "content": "Only instructions"}]}
    out, _ = shape_request(body, cat["o1-mini"])
    assert out["messages"] == [{"role": "user", "content": "Only instructions"}]


def test_system_becomes_developer_for_o3_mini(cat: Catalog) -> None:
    out, _ = shape_request(_body("o3-mini"), cat["o3-mini"])
    assert [m["role"] for m in out["messages"]] == ["developer", "user"]
    assert out["messages"][0]["content"] == "Be terse."


def test_system_and_developer_become_one_developer_message_for_o3_mini(cat: Catalog) -> None:
    """Renaming alone sent two developer messages; the reasoning-model docs say not to send both."""
    body = {"model": "o3-mini", "messages": [{"role": "system", "content": "S"},
                                             {"role": "developer", "content": [{"type": "text", "text": "D"}]},
                                             {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
                                             {"role": "developer", "content": "answer in French"},
                                             {"role": "user", "content": "u2"}]}
    out, _ = shape_request(body, cat["o3-mini"])
    assert out["messages"] == [{"role": "developer", "content": "S\n\nD"}, {"role": "user", "content": "u1"},
                               {"role": "assistant", "content": "a1"},
                               {"role": "developer", "content": "answer in French"},  # stays in its place
                               {"role": "user", "content": "u2"}]
    assert body["messages"][0] == {"role": "system", "content": "S"}  # the caller's body is not changed
    two_system = {"model": "o3-mini", "messages": [{"role": "system", "content": "a"}, {"role": "system", "content": "b"},
                                                   {"role": "user", "content": "u"}]}
    out, _ = shape_request(two_system, cat["o3-mini"])  # one role only: renamed, as the client sent them
    assert [m["role"] for m in out["messages"]] == ["developer", "developer", "user"]


def test_developer_becomes_system_for_models_that_take_system(cat: Catalog) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "developer", "content": "x"},
                                                 {"role": "user", "content": "y"}]}
    out, _ = shape_request(body, cat["gpt-4o-mini"])
    assert [m["role"] for m in out["messages"]] == ["system", "user"]


# ------------------------------------------------------------------ output limit


def test_o3_mini_gets_max_completion_tokens(cat: Catalog) -> None:
    out, dropped = shape_request(_body("o3-mini", max_tokens=300), cat["o3-mini"])
    assert out["max_completion_tokens"] == 300 and "max_tokens" not in out and dropped == []


def test_both_limits_keep_the_models_own_field(cat: Catalog) -> None:
    out, dropped = shape_request(_body("o3-mini", max_tokens=300, max_completion_tokens=500), cat["o3-mini"])
    assert out["max_completion_tokens"] == 500 and "max_tokens" not in out and dropped == ["max_tokens"]


def test_max_tokens_only_models_get_the_reverse_rename(cat: Catalog) -> None:
    model = "mixtral-8x7b-instruct-v0.1"
    out, _ = shape_request(_body(model, max_completion_tokens=64), cat[model])
    assert out["max_tokens"] == 64 and "max_completion_tokens" not in out


def test_either_passes_the_limit_through(cat: Catalog) -> None:
    out, dropped = shape_request(_body("gpt-4o", max_tokens=10), cat["gpt-4o"])
    assert out["max_tokens"] == 10 and "max_completion_tokens" not in out and dropped == []


# ------------------------------------------------------------------ sampling params


def test_temperature_dropped_for_o3_mini_and_listed(cat: Catalog) -> None:
    body = _body("o3-mini", temperature=0.2, top_p=0.9, logprobs=True, seed=7, stop=["\n"])
    out, dropped = shape_request(body, cat["o3-mini"])
    assert dropped == ["logprobs", "temperature", "top_p"]
    assert "temperature" not in out and out["seed"] == 7 and out["stop"] == ["\n"]


def test_stop_dropped_for_o3(cat: Catalog) -> None:
    out, dropped = shape_request(_body("o3", stop="END"), cat["o3"])
    assert "stop" not in out and dropped == ["stop"]


def test_fixed_default_is_kept_other_values_dropped(cat: Catalog) -> None:
    out, dropped = shape_request(_body("o1-mini", temperature=1, presence_penalty=0), cat["o1-mini"])
    assert out["temperature"] == 1 and out["presence_penalty"] == 0 and dropped == []
    out, dropped = shape_request(_body("o1-mini", temperature=0.7, top_p=1.0), cat["o1-mini"])
    assert "temperature" not in out and out["top_p"] == 1.0 and dropped == ["temperature"]


def test_explicit_nulls_are_removed_silently(cat: Catalog) -> None:
    out, dropped = shape_request(_body("o3-mini", temperature=None, reasoning_effort=None), cat["o3-mini"])
    assert "temperature" not in out and "reasoning_effort" not in out and dropped == []


def test_unknown_fields_pass_through_and_upstream_model_is_set(cat: Catalog) -> None:
    body = _body("team-default", metadata={"a": "b"}, verbosity="low", prediction={"type": "content"})
    out, _ = shape_request(body, cat["gpt-4o"], upstream_model="gpt-4o-2024-11-20")
    assert out["model"] == "gpt-4o-2024-11-20"
    assert out["metadata"] == {"a": "b"} and out["verbosity"] == "low" and out["prediction"] == {"type": "content"}


def test_callers_body_is_never_mutated(cat: Catalog) -> None:
    body = _body("o1-mini", max_tokens=5, temperature=0.3, reasoning_effort="high", logprobs=True)
    before = copy.deepcopy(body)
    for name in ("o1-mini", "o3-mini", "gpt-4o", "claude-3-7-sonnet", "mixtral-8x7b-instruct-v0.1"):
        try:
            shape_request(body, cat[name])
        except GatewayError:
            pass
    assert body == before


def test_nothing_to_change_shares_the_messages_list(cat: Catalog) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "temperature": 0.5}
    out, dropped = shape_request(body, cat["gpt-4o"])
    assert out == body and out is not body and out["messages"] is body["messages"] and dropped == []


# ------------------------------------------------------------------ reasoning effort


def test_reasoning_effort_kept_dropped_or_rejected(cat: Catalog) -> None:
    out, dropped = shape_request(_body("o3-mini", reasoning_effort="high"), cat["o3-mini"])
    assert out["reasoning_effort"] == "high" and dropped == []
    out, dropped = shape_request(_body("gpt-4o-mini", reasoning_effort="high"), cat["gpt-4o-mini"])
    assert "reasoning_effort" not in out and dropped == ["reasoning_effort"]
    with pytest.raises(GatewayError) as e:
        shape_request(_body("o3-mini", reasoning_effort="xhigh"), cat["o3-mini"])
    err = e.value
    assert err.status == 400 and err.param == "reasoning_effort" and err.code == "unsupported_value"
    assert "low, medium, high" in err.message and "o3-mini" in err.message


# ------------------------------------------------------------------ capabilities


def test_required_capabilities() -> None:
    body = {"model": "m", "stream": True, "reasoning_effort": "low", "tools": [{"type": "function"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "see"},
                                                      {"type": "image_url", "image_url": {"url": "data:,"}}]}]}
    assert required_capabilities(body) == {"streaming", "reasoning_effort", "tools", "json_schema", "vision"}
    assert required_capabilities({"messages": [{"role": "user", "content": "x"}]}) == set()
    assert required_capabilities({"functions": [{"name": "f"}], "response_format": {"type": "json_object"}}) == {
        "tools", "json_object"}


def test_tools_on_o1_mini_is_a_400_naming_models_that_have_tools(cat: Catalog, configured: dict) -> None:
    body = _body("o1-mini", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    with pytest.raises(GatewayError) as e:
        check_capabilities(body, cat["o1-mini"], configured, "o1-mini")
    err = e.value
    assert err.status == 400 and err.code == "unsupported_capability" and err.param == "tools"
    assert err.message == (
        "model 'o1-mini' does not support tools; configured models that do: gpt-4o-mini, o3-mini, team-default")
    assert err.to_dict()["error"]["type"] == "invalid_request_error"


def test_json_schema_on_o1_preview_is_a_400(cat: Catalog, configured: dict) -> None:
    body = _body("o1-preview", response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {}}})
    with pytest.raises(GatewayError) as e:
        check_capabilities(body, cat["o1-preview"], configured, "o1-preview")
    assert e.value.param == "response_format" and "json_schema" in e.value.message
    assert "gpt-4o-mini" in e.value.message and "o1-mini" not in e.value.message


def test_image_to_o3_mini_is_a_400(cat: Catalog, configured: dict) -> None:
    body = {"model": "o3-mini", "messages": [
        {"role": "system", "content": "x"},
        {"role": "user", "content": [{"type": "text", "text": "what is this"},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}
    with pytest.raises(GatewayError) as e:
        check_capabilities(body, cat["o3-mini"], configured, "o3-mini")
    assert e.value.param == "messages[1].content[1]" and "vision" in e.value.message
    assert "configured models that do: gpt-4o-mini, team-default" in e.value.message


def test_capable_model_passes_and_missing_everywhere_says_so(cat: Catalog, configured: dict) -> None:
    body = _body("gpt-4o-mini", stream=True, tools=[{"type": "function", "function": {"name": "f"}}],
                 response_format={"type": "json_object"})
    check_capabilities(body, cat["gpt-4o-mini"], configured, "gpt-4o-mini")  # no error
    no_stream = dataclasses.replace(cat["gpt-4o"], capabilities=dataclasses.replace(
        cat["gpt-4o"].capabilities, streaming=False))
    with pytest.raises(GatewayError) as e:
        check_capabilities(_body("x", stream=True), no_stream, {"x": no_stream}, "x")
    assert e.value.param == "stream" and e.value.message.endswith("no configured model does")


def test_rules_come_from_data_not_model_names(cat: Catalog) -> None:
    # gpt-4o's entry with o1-mini's rules behaves like o1-mini: no branch looks at the name
    rules = {f: getattr(cat["o1-mini"], f) for f in
             ("system_role_as", "output_limit_param", "unsupported_params", "fixed_params", "capabilities")}
    disguised = dataclasses.replace(cat["gpt-4o"], **rules)
    body = _body("gpt-4o", max_tokens=9, temperature=0.2)
    assert shape_request(body, disguised) == shape_request(body, cat["o1-mini"])


def test_shaping_is_cheap(cat: Catalog) -> None:
    body = _body("o3-mini", max_tokens=256, temperature=0.2, stream=True, stream_options={"include_usage": True})
    info = cat["o3-mini"]
    n = 2000
    t = time.perf_counter()
    for _ in range(n):
        check_capabilities(body, info, {}, "o3-mini")
        shape_request(body, info)
    per_call = (time.perf_counter() - t) / n
    assert per_call < 200e-6, f"{per_call * 1e6:.1f} µs per call"  # typically ~5 µs; loose for shared CI


def test_output_limit_above_the_catalogue_maximum_is_a_400(cat: Catalog, configured: dict) -> None:
    info = cat.get("gpt-4o-mini")
    for field in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(GatewayError) as ei:
            check_capabilities(_body("gpt-4o-mini", **{field: 16385}), info, configured, "gpt-4o-mini")
        e = ei.value
        assert (e.status, e.param, e.code, e.type) == (400, field, "invalid_value", "invalid_request_error")
        assert e.message == (f"{field} is too large: 16385. This model supports at most 16384 completion tokens, "
                             "whereas you provided 16385.")
        check_capabilities(_body("gpt-4o-mini", **{field: 16384}), info, configured, "gpt-4o-mini")
    # both sent: the first too large one is named
    with pytest.raises(GatewayError) as ei:
        check_capabilities(_body("gpt-4o-mini", max_tokens=100, max_completion_tokens=20000), info, configured, "x")
    assert ei.value.param == "max_completion_tokens"
    unknown = cat.unknown("llama3.1:8b")
    check_capabilities(_body("llama3.1:8b", max_tokens=5_000_000), unknown, configured, "llama3.1:8b")


def test_claude_thinking_blocks_are_dropped_for_other_families(cat: Catalog) -> None:
    """A conversation started on Claude carries signed `thinking_blocks` on its assistant turns; OpenAI's
    API does not know the field, so it is removed (and reported) for every non-Anthropic model."""
    block = {"type": "thinking", "thinking": "Let me see.", "signature": "sig"}
    msgs = [{"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "thinking_blocks": [block], "reasoning_content": "Let me see."},
            {"role": "user", "content": "And?"}]
    body = {"model": "gpt-4o-mini", "messages": msgs}
    out, dropped = shape_request(body, cat["gpt-4o-mini"])
    assert all("thinking_blocks" not in m and "reasoning_content" not in m for m in out["messages"])
    assert {"messages[].thinking_blocks", "messages[].reasoning_content"} <= set(dropped)
    assert msgs[1]["thinking_blocks"] == [block]  # the client's body is not changed
    kept, dropped = shape_request({"model": "claude-3-7-sonnet", "messages": msgs}, cat["claude-3-7-sonnet"])
    assert kept["messages"][1]["thinking_blocks"] == [block] and dropped == []
    _, dropped = shape_request(_body("gpt-4o-mini"), cat["gpt-4o-mini"])
    assert dropped == []
