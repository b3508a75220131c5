"""Escalation for routed requests: decide whether an answer is unusable (so `auto:*` retries once on
the next candidate up) and which candidate that is. Pure functions; the pipeline does the calling.

Unusable means (issue 3 item 7): invalid JSON, or JSON that does not match the schema, for a
`json_schema` request; tool-call arguments that are not JSON or do not match the tool's parameter
schema; `finish_reason: "length"` with no content and no tool call; a refusal.
"""

from __future__ import annotations

from typing import Any

import orjson


def _schema_errors(schema: dict[str, Any] | None, value: Any) -> str | None:
    if not isinstance(schema, dict) or not schema:
        return None
    import jsonschema  # imported lazily: only escalation checks need it

    try:
        err = next(iter(jsonschema.Draft202012Validator(schema).iter_errors(value)), None)
    except jsonschema.SchemaError:
        return None  # a schema we cannot check is not the answer's fault
    return None if err is None else err.message[:200]


def unusable_reason(request: dict[str, Any], response: dict[str, Any]) -> str | None:
    """Why the first choice of `response` cannot be used for `request`, or None when it is fine."""
    choices = response.get("choices") or []
    if not choices:
        return "no choices in the answer"
    choice = choices[0]
    msg = choice.get("message") or {}
    content = msg.get("content")
    tool_calls = msg.get("tool_calls") or []
    if msg.get("refusal"):
        return "the model refused"
    if choice.get("finish_reason") == "length" and not content and not tool_calls:
        return "finish_reason length with no content (output budget spent on reasoning)"
    tools = {t.get("function", {}).get("name"): t.get("function", {}) for t in request.get("tools") or []
             if isinstance(t, dict) and t.get("type", "function") == "function"}
    for call in tool_calls:
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            continue  # a custom tool's free-form input has no JSON arguments or schema to check
        fn = call.get("function") or {}
        spec = tools.get(fn.get("name"))
        if tools and spec is None:
            return f"tool call to unknown function {fn.get('name')!r}"
        try:
            args = orjson.loads(fn.get("arguments") or "")
        except orjson.JSONDecodeError:
            return f"tool call arguments for {fn.get('name')!r} are not valid JSON"
        if spec is not None and (why := _schema_errors(spec.get("parameters"), args)):
            return f"tool call arguments for {fn.get('name')!r} do not match its schema: {why}"
    rf = request.get("response_format") or {}
    if rf.get("type") in ("json_schema", "json_object") and not tool_calls:
        try:
            value = orjson.loads(content or "")
        except orjson.JSONDecodeError:
            return "structured output is not valid JSON"
        if rf.get("type") == "json_schema" and (
            why := _schema_errors((rf.get("json_schema") or {}).get("schema"), value)
        ):
            return f"structured output does not match the schema: {why}"
    return None


def next_candidate_up(decision: Any) -> Any | None:
    """The candidate an unusable answer is retried on: the eligible one with the next higher predicted
    quality than the chosen one (ties broken by higher estimated cost); when the chosen one was already
    predicted best, the best-predicted of those estimated dearer (the prediction was wrong for this prompt:
    the next step up the cost ladder). Only within the request's cost cap (`decision.cost_cap`: a candidate
    estimated above it never competed, so it is not escalated to either). None when there is none."""
    chosen = decision.chosen
    cap = decision.cost_cap
    others = [a for a in decision.assessments
              if a.eligible and a.candidate != chosen.candidate and (cap is None or a.est_cost_usd <= cap)]
    better = [a for a in others if (a.predicted_quality, a.est_cost_usd) > (chosen.predicted_quality, chosen.est_cost_usd)]
    if better:
        return min(better, key=lambda a: (a.predicted_quality, a.est_cost_usd))
    dearer = [a for a in others if a.est_cost_usd > chosen.est_cost_usd]
    if dearer:
        return max(dearer, key=lambda a: (a.predicted_quality, -a.est_cost_usd))
    return None
