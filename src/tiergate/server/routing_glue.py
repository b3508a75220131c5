"""`model: "auto"` in the request path: validate the routing options (`tiergate.policy`,
`quality_target`, `max_cost_usd`, `candidates`, a client-set `reasoning_effort`), turn the router's
decision into a concrete model and reasoning effort, considering only candidates that can serve this
request (context window, tools, json_schema, vision, streaming), and explain the choice in a header
and the ledger. Every refusal is a 400 with a stable `code` (listed in docs/routing.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from tiergate.accounting.tokens import count_request
from tiergate.catalog.catalog import ALL_REASONING_EFFORTS
from tiergate.catalog.shaping import check_capabilities, shape_request
from tiergate.routing.policy import POLICY_TARGETS
from tiergate.routing.router import NoEligibleCandidate, UnknownCandidate
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


def _policy(gw: Gateway, requested: str, option: Any) -> str | None:
    """The policy named by `auto:<policy>`, else by `tiergate.policy` (an `auto:` prefix allowed, as on
    the CLI), else None (plain `auto`: the caller applies the configured default); naming two different
    ones is a 400 rather than a silent choice."""
    in_model = requested.partition(":")[2]
    if requested.endswith(":") and not in_model:
        raise bad_request(f"model {requested!r} names no policy; use \"auto\" or \"auto:<policy>\" "
                          f"({', '.join('auto:' + k for k in sorted({**POLICY_TARGETS, **gw.config.routing.policies}))}).",
                          param="model", code="invalid_value")
    if option is None:
        return in_model or None
    if not isinstance(option, str) or not option.removeprefix("auto:"):
        raise bad_request("'tiergate.policy' must be a policy name such as \"balanced\" (or \"auto:balanced\").",
                          param="tiergate.policy", code="invalid_value")
    name = option.removeprefix("auto:")
    known = sorted({**POLICY_TARGETS, **gw.config.routing.policies})
    if name not in known:
        raise bad_request(f"unknown routing policy {option!r} in 'tiergate.policy'; use one of: {', '.join(known)}",
                          param="tiergate.policy", code="invalid_value")
    if in_model and in_model != name:
        raise bad_request(f"model {requested!r} and 'tiergate.policy' {option!r} name different policies; "
                          "set the policy in one place.", param="tiergate.policy", code="invalid_value")
    return name


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _request_candidates(gw: Gateway, option: Any) -> list[str]:
    """`tiergate.candidates`: a non-empty list of configured models, each optionally `@effort` with an
    effort the model's catalogue entry lists; duplicates are dropped (first one kept)."""
    if not isinstance(option, list) or not option:
        raise bad_request("'tiergate.candidates' must be a non-empty list of candidates such as "
                          "[\"gpt-4o-mini\", \"o3-mini@high\"]; got " + _shown(option) + ".",
                          param="tiergate.candidates", code="invalid_value")
    out: list[str] = []
    for c in option:
        if not isinstance(c, str) or not c.strip().partition("@")[0]:
            raise bad_request(f"'tiergate.candidates' must be a list of strings (`model` or `model@effort`); "
                              f"got the element {_shown(c)}.", param="tiergate.candidates", code="invalid_value")
        c = c.strip()
        model, _, effort = c.partition("@")
        if gw.config.model(model) is None:
            raise bad_request(f"routing candidate {c!r} is not a configured model; configured models: "
                              f"{', '.join(m.name for m in gw.config.models)}.",
                              param="tiergate.candidates", code="invalid_value")
        if effort:
            levels = tuple(gw.infos[model].capabilities.reasoning_efforts or ())
            if not levels:
                raise bad_request(f"routing candidate {c!r}: {model} takes no reasoning effort; name it without "
                                  "'@effort'.", param="tiergate.candidates", code="invalid_value")
            if effort not in levels:
                raise bad_request(f"routing candidate {c!r}: {model} has no reasoning effort {effort!r} "
                                  f"(efforts: {', '.join(levels)}).", param="tiergate.candidates",
                                  code="invalid_value")
        if c not in out:
            out.append(c)
    return out


def _effort_rank(effort: str) -> tuple[int, str]:
    known = ALL_REASONING_EFFORTS
    return (known.index(effort) if effort in known else len(known), effort)


def _shown(value: Any) -> str:
    text = orjson.dumps(value).decode() if isinstance(value, (str, int, float, list, dict, bool)) or value is None \
        else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _pin_effort(gw: Gateway, candidates: list[str], effort: Any) -> tuple[list[str], dict[str, str]]:
    """A client-set `reasoning_effort` with `auto` pins the effort: a candidate whose model has effort
    levels is used at that effort only (`m` becomes `m@effort`; `m@other` is ruled out, with a reason),
    a candidate whose model takes no effort stays as it is. Returns the candidates (deduplicated) and
    the ruled-out ones with their reason; a 400 when the effort is malformed, offered by no candidate
    model, or leaves no candidate."""
    if not isinstance(effort, str) or not effort:
        raise bad_request("'reasoning_effort' must be a string such as \"high\".", param="reasoning_effort",
                          code="invalid_value")
    out: list[str] = []
    ruled_out: dict[str, str] = {}
    offered: set[str] = set()
    for c in candidates:
        model, _, own = c.partition("@")
        levels = tuple(gw.infos[model].capabilities.reasoning_efforts or ())
        offered.update(levels)
        if not levels:
            key = c
        elif own and own != effort:
            key = c
            ruled_out[c] = f"the request sets reasoning_effort {effort!r}; this candidate runs at {own!r}"
        elif effort not in levels:
            key = c
            ruled_out[c] = f"the request sets reasoning_effort {effort!r}; {model} offers {', '.join(levels)}"
        else:
            key = f"{model}@{effort}"
        if key not in out:
            out.append(key)
    if offered and effort not in offered:
        raise bad_request(f"reasoning_effort {effort!r} is not offered by any routing candidate's model "
                          f"(efforts: {', '.join(sorted(offered, key=_effort_rank))}).",
                          param="reasoning_effort", code="unsupported_value")
    if all(c in ruled_out for c in out):
        raise bad_request(f"reasoning_effort {effort!r} with model 'auto' pins the effort, and no routing candidate "
                          f"runs at it ({', '.join(out)}); remove reasoning_effort to let the router choose the "
                          f"effort, or list a candidate at {effort!r} in 'tiergate.candidates'.",
                          param="reasoning_effort", code="no_eligible_candidate")
    return out, ruled_out


def _output_allowance(info: Any, max_output: int | None, effort: str | None) -> int:
    """The output tokens the pipeline counts for this candidate (`server.chat.run_chat`): the request's
    limit, else the model's default one, plus Claude's thinking budget at `effort`."""
    from tiergate.server.chat import default_output_limit
    from tiergate.wire.anthropic import THINKING_BUDGETS

    out = max_output if max_output is not None else default_output_limit(info)
    if info.family == "anthropic" and isinstance(effort, str):
        out += THINKING_BUDGETS.get(effort, 0)
    return out


def route(gw: Gateway, body: dict[str, Any], opts: dict[str, Any], requested: str,
          key: Any = None) -> tuple[dict[str, Any], dict]:
    """Decide the (model, effort) for an `auto` request: the new body (model and effort set) and the route
    info (header, ledger JSON, decision, prompt tokens per tokenizer). With `key`, candidates whose model
    the key may not use, or whose prompt + output limit exceeds the key's TPM limit, are ineligible (they
    would be refused after routing)."""
    if gw.router is None or not gw.config.routing.candidates:
        raise bad_request(
            "model 'auto' needs a `routing: candidates:` list in the gateway config (docs/routing.md).",
            param="model",
            code="routing_not_configured",
        )
    named = _policy(gw, requested, opts.get("policy"))
    policy = named or gw.config.routing.default_policy
    target = opts.get("quality_target")
    if target is not None and (not _number(target) or not 0 < target <= 1):
        raise bad_request("'tiergate.quality_target' must be a number in (0, 1].", param="tiergate.quality_target",
                          code="invalid_value")
    cap = opts.get("max_cost_usd")
    if cap is not None and (not _number(cap) or not cap > 0):
        raise bad_request("'tiergate.max_cost_usd' must be a positive number of dollars.",
                          param="tiergate.max_cost_usd", code="invalid_value")
    if target is None:
        if cap is not None and named is None:
            # a cap with no policy and no target: the best predicted quality under the cap wins
            policy, target = None, None
        else:
            target = policy_target(gw, policy)
    option = opts.get("candidates")
    candidates = _request_candidates(gw, option) if option is not None else list(gw.config.routing.candidates)
    pinned = body.get("reasoning_effort")
    ruled_out: dict[str, str] = {}
    if pinned is not None:
        candidates, ruled_out = _pin_effort(gw, candidates, pinned)

    # counted once: the router prices with the o200k_base count, eligibility reuses it per tokenizer; the
    # whole prompt side (messages, tools/functions, a json_schema response format), as the pipeline reserves it
    prompt_tokens = count_request(body)
    tokens_cache: dict[str, int] = {"o200k_base": prompt_tokens}
    bound = body.get("max_completion_tokens", body.get("max_tokens"))
    max_output = bound if isinstance(bound, int) and not isinstance(bound, bool) and bound > 0 else None
    plain = {k: v for k, v in body.items() if k != "reasoning_effort"}
    allowed = None if key is None or getattr(key, "is_master", False) else getattr(key, "models", None)
    tpm = None if key is None or getattr(key, "is_master", False) else getattr(key, "tpm", None)
    choices = body.get("n") or 1

    def may_use(name: str) -> bool:
        return allowed is None or name in allowed

    def eligible(cand: Any) -> str | None:
        name = cand.model if hasattr(cand, "model") else str(cand).partition("@")[0]
        effort = getattr(cand, "effort", None)
        key = f"{name}@{effort}" if effort else name
        if key in ruled_out:
            return ruled_out[key]
        if not may_use(name):
            return f"this API key may not use {name} (its models: {', '.join(allowed or ())})"
        info = gw.infos[name]
        probe = plain if not effort else {**plain, "reasoning_effort": effort}
        try:
            check_capabilities(probe, info, gw.infos, name)
        except GatewayError as e:
            return e.message
        tok = tokens_cache.get(info.tokenizer)
        if tok is None:
            tok = tokens_cache[info.tokenizer] = count_request(body, info)
        if tok > info.context_window:
            return f"prompt of {tok} tokens exceeds the {info.context_window}-token context window"
        if tpm:
            out = _output_allowance(info, max_output, effort)
            need = tok + out * choices
            if need > tpm:  # the pipeline would refuse it as "Request too large" for this key
                limit = "output limit" if max_output is not None else "default output limit"
                return (f"needs up to {need} tokens ({tok} prompt + {limit} {out}"
                        f"{f' x {choices} choices' if choices > 1 else ''}), over this API key's limit of {tpm} "
                        "tokens per minute")
        return gw.dispatcher.refusal(name, lambda: {**shape_request(probe, info)[0], "model": info.name},
                                     stream=bool(body.get("stream")))

    catalog_names = {m.name: m.catalog for m in gw.config.models}
    try:
        decision = gw.router.decide(
            body["messages"], candidates, policy=policy,
            quality_target=float(target) if target is not None else None,
            cost_cap_usd=cap, eligible=eligible, catalog_names=catalog_names, max_output_tokens=max_output,
            prompt_tokens=prompt_tokens, choices=body.get("n") or 1,  # every choice is billed (validated 1..128)
        )
    except UnknownCandidate as e:  # a candidate the router cannot describe (checked above for the catalogue)
        raise bad_request(str(e), param="tiergate.candidates" if option is not None else "model",
                          code="invalid_value") from None
    except NoEligibleCandidate as e:  # its message already says "no routing candidate can serve ..."
        raise bad_request(str(e), param="model", code="no_eligible_candidate") from None
    ch = decision.chosen
    if ch is None or not ch.eligible:
        reasons = "; ".join(f"{a.candidate}: {a.ineligible_reason}" for a in decision.assessments)
        raise bad_request(f"no routing candidate can serve this request ({reasons})", param="model",
                          code="no_eligible_candidate")
    model, _, effort = ch.candidate.partition("@")
    new_body = dict(plain)  # a pinned effort only goes to a model that takes one (it is the chosen effort)
    new_body["model"] = model
    if effort:
        new_body["reasoning_effort"] = effort
    pin = f"pinned_effort={pinned}; " if pinned is not None else ""
    header = (f"candidate={ch.candidate}; quality={ch.predicted_quality:.3f}; est_cost_usd={ch.est_cost_usd:.6f}; "
              f"policy={decision.policy or 'none'}; {pin}reason={decision.reason.replace(';', ',')}")
    ledger = orjson.dumps({
        "policy": decision.policy, "target": decision.target, "cost_cap": decision.cost_cap,
        "pinned_effort": pinned, "chosen": ch.candidate, "reason": decision.reason,
        "candidates": [{"candidate": a.candidate, "q": round(a.predicted_quality, 4), "cost": a.est_cost_usd,
                        "eligible": a.eligible, "why_not": a.ineligible_reason} for a in decision.assessments],
    }).decode()
    # prompt tokens per tokenizer, counted here: the pipeline reuses them for the chosen model
    return new_body, {"header": header.encode("ascii", "replace").decode(), "ledger": ledger,
                      "decision": decision, "prompt_tokens": tokens_cache}
