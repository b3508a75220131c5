"""Escalation rules: which answers count as unusable, and which candidate is next up."""

from __future__ import annotations

from dataclasses import dataclass

from tiergate.server.escalation import next_candidate_up, unusable_reason

SCHEMA_REQ = {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {
    "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}}
TOOL_REQ = {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}}}]}


def _resp(content=None, finish="stop", tool_args=None, refusal=None):
    msg = {"role": "assistant", "content": content, "refusal": refusal}
    if tool_args is not None:
        msg["tool_calls"] = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": tool_args}}]
    return {"choices": [{"index": 0, "message": msg, "finish_reason": finish}]}


def test_good_answers_are_usable():
    assert unusable_reason({}, _resp("hello")) is None
    assert unusable_reason(SCHEMA_REQ, _resp('{"n": 3}')) is None
    assert unusable_reason(TOOL_REQ, _resp(None, "tool_calls", '{"x": "a"}')) is None
    # a custom tool's call carries free-form input, not JSON arguments (was: "arguments for None are not
    # valid JSON", so a good answer was escalated and paid twice)
    custom_req = {"tools": [{"type": "custom", "custom": {"name": "code_exec"}}, *TOOL_REQ["tools"]]}
    custom = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "custom", "custom": {"name": "code_exec", "input": "print(1 + 1)"}}]}}]}
    assert unusable_reason(custom_req, custom) is None


def test_unusable_answers():
    assert "not valid JSON" in unusable_reason(SCHEMA_REQ, _resp("{n: 3"))
    assert "schema" in unusable_reason(SCHEMA_REQ, _resp('{"n": "three"}'))
    assert "not valid JSON" in unusable_reason(TOOL_REQ, _resp(None, "tool_calls", "{x"))
    assert "schema" in unusable_reason(TOOL_REQ, _resp(None, "tool_calls", '{"y": 1}'))
    assert "length" in unusable_reason({}, _resp("", "length"))
    assert "refused" in unusable_reason({}, _resp(None, refusal="I can't help with that"))


@dataclass
class A:
    candidate: str
    predicted_quality: float
    est_cost_usd: float
    eligible: bool = True


@dataclass
class D:
    chosen: A
    assessments: list
    cost_cap: float | None = None


def test_next_candidate_up():
    cheap, mid, top, bad = A("mini", 0.6, 0.001), A("o3@low", 0.8, 0.01), A("o1@high", 0.9, 0.5), A("x", 0.99, 1, False)
    assert next_candidate_up(D(cheap, [cheap, mid, top, bad])).candidate == "o3@low"
    assert next_candidate_up(D(top, [cheap, mid, top, bad])) is None
    # a cost cap also bounds the escalation: a candidate estimated above it never competed (it used to
    # escalate a $0.001-capped request to o1@high, estimated at $0.64)
    assert next_candidate_up(D(cheap, [cheap, mid, top, bad], cost_cap=0.02)).candidate == "o3@low"
    assert next_candidate_up(D(mid, [cheap, mid, top, bad], cost_cap=0.02)) is None
    assert next_candidate_up(D(cheap, [cheap, mid, top, bad], cost_cap=0.005)) is None


def test_a_chosen_candidate_predicted_best_escalates_up_the_cost_ladder():
    """The cheap model was predicted best (0.999) and answered invalid JSON: there was no retry at all,
    though dearer candidates were eligible (item 7: "retries once on the next candidate up")."""
    best_cheap, o3_low, o3_high, o1 = (A("gpt-4o-mini", 0.999, 0.0004), A("o3-mini@low", 0.98, 0.004),
                                       A("o3-mini@high", 0.99, 0.02), A("o1@high", 0.97, 0.5))
    ds = [best_cheap, o3_low, o3_high, o1]
    assert next_candidate_up(D(best_cheap, ds)).candidate == "o3-mini@high"  # the best-predicted dearer one
    assert next_candidate_up(D(best_cheap, ds, cost_cap=0.01)).candidate == "o3-mini@low"  # within the cap
    assert next_candidate_up(D(best_cheap, ds, cost_cap=0.001)) is None
    top = A("o1@high", 0.9995, 0.5)
    assert next_candidate_up(D(top, [best_cheap, top])) is None  # predicted worse and cheaper: not "up"
