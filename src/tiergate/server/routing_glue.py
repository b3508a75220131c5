"""`model: "auto"` in the request path: turn the router's decision into a concrete model and
reasoning effort, considering only candidates that can serve this request (context window, tools,
json_schema, vision, streaming), and explain the choice in a header and the ledger."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from tiergate.accounting.tokens import count_messages
from tiergate.catalog.shaping import check_capabilities
from tiergate.routing.policy import POLICY_TARGETS
from tiergate.routing.router import NoEligibleCandidate
from tiergate.wire.errors import GatewayError, bad_request

if TYPE_CHECKING:
    from tiergate.server.gateway import Gateway

def policy_target(gw: Gateway, name: str) -> float:
    """Named policy -> quality target: the chosen candidate's predicted quality must be within this
    fraction of the best eligible candidate's (docs/routing.md); config `routing.policies` overrides."""
    table = {**POLICY_TARGETS, **gw.config.routing.policies}
    if name not in table:
        raise bad_request(
            f"unknown routing policy 'auto:{name}'; use one of: {', '.join('auto:' + k for k in sorted(table))}",
            param="model",
            code="invalid_value",
        )
    return table[name]


def _policy(gw: Gateway, requested: str, option: Any) -> str:
    """The policy named by `auto:<policy>`, else by `tiergate.policy`, else the configured default;
    naming two different ones is a 400 rather than a silent choice."""
    in_model = requested.partition(":")[2]
    if option is not None:
        if not isinstance(option, str) or not option:
            raise bad_request("'tiergate.policy' must be a policy name such as \"balanced\".",
                              param="tiergate.policy", code="invalid_value")
        if in_model and in_model != option:
            raise bad_request(f"model {requested!r} and 'tiergate.policy' {option!r} name different policies; "
                              "set the policy in one place.", param="tiergate.policy", code="invalid_value")
        known = sorted({**POLICY_TARGETS, **gw.config.routing.policies})
        if option not in known:
            raise bad_request(f"unknown routing policy {option!r} in 'tiergate.policy'; use one of: {', '.join(known)}",
                              param="tiergate.policy", code="invalid_value")
        return option
    return in_model or gw.config.routing.default_policy


def route(gw: Gateway, body: dict[str, Any], opts: dict[str, Any], requested: str) -> tuple[dict[str, Any], dict]:
    if gw.router is None or not gw.config.routing.candidates:
        raise bad_request(
            "model 'auto' needs a `routing: candidates:` list in the gateway config (docs/routing.md).",
            param="model",
            code="routing_not_configured",
        )
    policy = _policy(gw, requested, opts.get("policy"))
    target = opts.get("quality_target")
    if target is None:
        target = policy_target(gw, policy)
    elif not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise bad_request("'tiergate.quality_target' must be a number in (0, 1].", param="tiergate.quality_target")
    cap = opts.get("max_cost_usd")
    if cap is not None and (not isinstance(cap, (int, float)) or cap <= 0):
        raise bad_request("'tiergate.max_cost_usd' must be a positive number of dollars.", param="tiergate.max_cost_usd")
    candidates = list(opts.get("candidates") or gw.config.routing.candidates)
    for c in candidates:
        if gw.config.model(c.partition("@")[0]) is None:
            raise bad_request(f"routing candidate {c!r} is not a configured model", param="tiergate.candidates")

    # counted once: the router prices with the o200k_base count, eligibility reuses it per tokenizer
    prompt_tokens = count_messages(body["messages"])
    tokens_cache: dict[str, int] = {"o200k_base": prompt_tokens}
    bound = body.get("max_completion_tokens", body.get("max_tokens"))
    max_output = bound if isinstance(bound, int) and not isinstance(bound, bool) and bound > 0 else None

    def eligible(cand: Any) -> str | None:
        name = cand.model if hasattr(cand, "model") else str(cand).partition("@")[0]
        effort = getattr(cand, "effort", None)
        info = gw.infos[name]
        probe = body if not effort else {**body, "reasoning_effort": effort}
        try:
            check_capabilities(probe, info, gw.infos, name)
        except GatewayError as e:
            return e.message
        tok = tokens_cache.get(info.tokenizer)
        if tok is None:
            tok = tokens_cache[info.tokenizer] = count_messages(body["messages"], info)
        if tok > info.context_window:
            return f"prompt of {tok} tokens exceeds the {info.context_window}-token context window"
        return None

    catalog_names = {m.name: m.catalog for m in gw.config.models}
    try:
        decision = gw.router.decide(
            body["messages"], candidates, policy=policy, quality_target=float(target),
            cost_cap_usd=cap, eligible=eligible, catalog_names=catalog_names, max_output_tokens=max_output,
            prompt_tokens=prompt_tokens,
        )
    except NoEligibleCandidate as e:
        raise bad_request(f"no routing candidate can serve this request: {e}", param="model",
                          code="no_eligible_candidate") from None
    ch = decision.chosen
    if ch is None or not ch.eligible:
        reasons = "; ".join(f"{a.candidate}: {a.ineligible_reason}" for a in decision.assessments)
        raise bad_request(f"no routing candidate can serve this request ({reasons})", param="model",
                          code="no_eligible_candidate")
    model, _, effort = ch.candidate.partition("@")
    new_body = dict(body)
    new_body["model"] = model
    if effort:
        new_body["reasoning_effort"] = effort
    header = (f"candidate={ch.candidate}; quality={ch.predicted_quality:.3f}; est_cost_usd={ch.est_cost_usd:.6f}; "
              f"policy={decision.policy}; reason={decision.reason.replace(';', ',')}")
    ledger = orjson.dumps({
        "policy": decision.policy, "target": decision.target, "cost_cap": decision.cost_cap,
        "chosen": ch.candidate, "reason": decision.reason,
        "candidates": [{"candidate": a.candidate, "q": round(a.predicted_quality, 4), "cost": a.est_cost_usd,
                        "eligible": a.eligible, "why_not": a.ineligible_reason} for a in decision.assessments],
    }).decode()
    # prompt tokens per tokenizer, counted here: the pipeline reuses them for the chosen model
    return new_body, {"header": header.encode("ascii", "replace").decode(), "ledger": ledger,
                      "decision": decision, "prompt_tokens": tokens_cache}
