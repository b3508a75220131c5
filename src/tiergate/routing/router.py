"""The router: for a prompt and a list of (model, effort) candidates, predicted quality and estimated cost
of each, and one explained choice under a policy.

    router = Router.load()                                   # the artefacts shipped in the package
    router.assess("Prove that ...", ["o1@high", "o3-mini@low", "gpt-4o-mini"])   -> [Assessment]
    router.decide(messages, candidates, policy="auto:balanced", cost_cap_usd=0.01) -> Decision

A configured alias (`catalog_names={"team-default": "gpt-4o"}`, as the gateway passes its config's
`name -> catalog`) is assessed as its catalogue model: quality, tokens and price. Quality comes from the
learned `QualityModel` when it has outcome data for the candidate (matched by exact key, else through
the catalogue's canonical name, so `gpt-4o` finds `gpt-4o-2024-08-06`, and a reasoning model named
without an effort runs at medium), otherwise from its profile (`profiles.yaml`), otherwise from the mean
of the learned candidates (said so in `quality_source`). A candidate that nothing describes (a model
with no catalogue entry, profile, outcome data or `catalog_names` entry; an effort the model does not
have) is an `UnknownCandidate` error, not a guess. A reasoning candidate whose expected reasoning
tokens alone reach the request's output bound (`max_output_tokens`) cannot answer and is ineligible,
unless every candidate is so: then the one with the fewest expected reasoning tokens is kept.
Capabilities are checked as the gateway checks them (`catalog.shaping.check_capabilities`): image parts
in the messages need vision, and `tools=`, `response_format=`, `stream=` or a whole Chat Completions
`request=` body need tools, json_schema/json_object and streaming; a candidate whose catalogue entry
lacks one is ineligible with the gateway's reason.
Cost: prompt tokens (accounting.tokens) x input price + (predicted answer + reasoning tokens) x output
price, prices from the catalogue. No I/O after `load`; one decision is one feature extraction and a few
small matrix products.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import numpy as np

from tiergate.routing.features import prompt_text
from tiergate.routing.policy import choose, resolve_target
from tiergate.routing.profiles import Profiles
from tiergate.routing.quality import ARTIFACTS_DIR, QualityModel
from tiergate.routing.tokens_model import TokenEstimate, TokensModel, cost_usd, is_reasoning_model


@dataclass(frozen=True)
class Candidate:
    model: str
    effort: str | None = None

    @classmethod
    def parse(cls, spec: str | Candidate) -> Candidate:
        """"o3-mini@low" -> Candidate("o3-mini", "low"); "gpt-4o-mini" -> Candidate("gpt-4o-mini", None).
        An empty model (`@high`) or an empty effort (`o3-mini@`) is an `UnknownCandidate` (a `ValueError`,
        which the gateway answers with a 400), not a candidate at the model's default effort."""
        if isinstance(spec, Candidate):
            return spec
        model, at, effort = str(spec).strip().partition("@")
        if not model:
            raise UnknownCandidate(f"routing candidate {spec!r}: empty model name; write `model` or `model@effort`")
        if at and not effort:
            raise UnknownCandidate(f"routing candidate {spec!r}: empty reasoning effort after '@'; write "
                                   f"{model!r} (the model's default effort) or {model + '@low'!r} (an effort)")
        return cls(model, effort or None)

    @property
    def key(self) -> str:
        return f"{self.model}@{self.effort}" if self.effort else self.model


@dataclass
class Assessment:
    candidate: str
    predicted_quality: float
    est_cost_usd: float  # NaN when neither the catalogue nor the training rows price the model
    est_output_tokens: int
    est_reasoning_tokens: int
    prompt_tokens: int
    eligible: bool
    ineligible_reason: str | None
    quality_source: str  # "learned" | "profile" | "default"
    #: For a "profile" quality: the profile entry used and where its figures come from (`profiles.yaml`'s
    #: per-domain `source` citations, or the override file's); None for "learned" and "default".
    profile_source: str | None = None
    #: Where `est_cost_usd` comes from: "catalogue" (tokens x the model's prices), "recorded" (a model the
    #: catalogue does not price: its mean recorded `cost_usd` in the router's training rows, per answer)
    #: or None (no price anywhere: NaN, ranked after every priced candidate)
    cost_source: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Decision:
    chosen: Assessment
    assessments: list[Assessment]
    reason: str
    policy: str | None
    target: float | None
    cost_cap: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen.candidate,
            "reason": self.reason,
            "policy": self.policy,
            "target": self.target,
            "cost_cap": self.cost_cap,
            "assessments": [a.as_dict() for a in self.assessments],
        }


def profile_citation(profile: Any) -> str:
    """A profile's sources in one line: `key (domain: source; ...)`, one entry per distinct source."""
    by_source: dict[str, list[str]] = {}
    for dom, src in profile.sources.items():
        by_source.setdefault(src, []).append(dom)
    return f"{profile.key} (" + "; ".join(f"{', '.join(d)}: {s}" for s, d in by_source.items()) + ")"


class NoEligibleCandidate(ValueError):
    """Every candidate was ruled out; the message lists each one's reason."""


class UnknownCandidate(NoEligibleCandidate):
    """A candidate names a model, or a reasoning effort of a model, that nothing describes: no catalogue
    entry, no profile, no outcome data and no `catalog_names` entry. A `ValueError`; also a
    `NoEligibleCandidate`, so a caller that turns that into a client error (the gateway's 400) does the
    same for a bad candidate in a request."""


def _needs_capabilities(body: Mapping[str, Any]) -> bool:
    """Whether a Chat Completions body needs a capability the catalogue may lack: tools, a JSON response
    format, streaming, or image input (`catalog.shaping.required_capabilities`)."""
    try:
        from tiergate.catalog.shaping import required_capabilities
    except ImportError:  # pragma: no cover - the catalogue is part of the package
        return False
    return bool(required_capabilities(body) - {"reasoning_effort"})


def _bounded(body: Mapping[str, Any]) -> bool:
    return body.get("max_completion_tokens") is not None or body.get("max_tokens") is not None


#: The efforts a configured model outside the catalogue accepts (`Catalog.unknown` passes any through).
try:
    from tiergate.catalog.catalog import ALL_REASONING_EFFORTS as _ANY_EFFORT
except ImportError:  # pragma: no cover - the catalogue is part of the package
    _ANY_EFFORT = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


class Router:
    def __init__(
        self,
        quality: QualityModel,
        profiles: Profiles | None = None,
        catalog: Any = None,
        tokens: TokensModel | None = None,
    ) -> None:
        self.quality = quality
        self.profiles = profiles or Profiles.load()
        self.catalog = catalog
        self.tokens = tokens or TokensModel()
        self._learned = set(quality.candidates())
        self._key_cache: dict[str, str | None] = {}
        self._problem_cache: dict[tuple[str, str, bool], str | None] = {}
        self._columns: dict[tuple[str, ...], dict[str, int]] = {}  # the quality model's keys -> column
        self._canon: dict[str, list[str]] = {}
        if catalog is not None:
            for key in sorted(self._learned, reverse=True):  # later dates first
                model, _, effort = key.partition("@")
                info = self._info(model)
                if info is not None:
                    self._canon.setdefault(f"{info.name}@{effort}" if effort else info.name, []).append(key)

    @classmethod
    def load(
        cls, directory: str | Path | None = None, catalog: Any = None, profiles: str | Path | None = None
    ) -> Router:
        """Load a trained router (default: the packaged artefacts) and the catalogue (default: packaged)."""
        quality = QualityModel.load(directory if directory is not None else ARTIFACTS_DIR)
        if catalog is None:
            try:
                from tiergate.catalog.catalog import Catalog

                catalog = Catalog.load()
            except ImportError:
                catalog = None
        try:
            from tiergate.accounting.tokens import get_encoding

            get_encoding("o200k_base")  # counts prompts: built now, not in the first decision (~0.5 s)
        except ImportError:
            pass
        return cls(quality, Profiles.load(profiles), catalog)

    # ------------------------------------------------------------------------------------- lookups

    def _info(self, model: str) -> Any:
        if self.catalog is None:
            return None
        try:
            return self.catalog.get(model)
        except (KeyError, LookupError, ValueError):
            return None

    def profile_for(self, model: str, effort: str | None) -> Any:
        """The quality profile for `model@effort`: by its name, else by its catalogue entry's name (an alias
        such as `ft:gpt-4o-mini:acme::abc123` uses the profile of the entry it names, acme-ft); None when
        neither has one."""
        profile = self.profiles.find(model, effort)
        if profile is None:
            info = self._info(model)
            if info is not None and info.name != model:
                profile = self.profiles.find(info.name, effort)
        return profile

    def learned_key(self, cand: Candidate) -> str | None:
        """The quality model's key for a candidate, or None if it has no outcome data for it."""
        if cand.key in self._key_cache:
            return self._key_cache[cand.key]
        found: str | None = None
        efforts = [cand.effort] if cand.effort else [None]
        info = self._info(cand.model)
        if cand.effort is None and is_reasoning_model(cand.model, info.capabilities.reasoning_efforts if info else None):
            efforts.append("medium")  # the API default effort
        for eff in efforts:
            key = f"{cand.model}@{eff}" if eff else cand.model
            if key in self._learned:
                found = key
                break
            if info is not None:
                keys = self._canon.get(f"{info.name}@{eff}" if eff else info.name)
                if keys:
                    found = keys[0]
                    break
        self._key_cache[cand.key] = found
        return found

    @staticmethod
    def _target(cand: Candidate, names: dict[str, str] | None) -> Candidate:
        """The candidate as the catalogue knows it: a configured alias (`catalog_names`, keyed by the
        candidate key or its model name) becomes its catalogue model, with the same effort."""
        if names:
            target = names.get(cand.key) or names.get(cand.model)
            if target and target != cand.model:
                return Candidate(str(target), cand.effort)
        return cand

    def _problem(self, cand: Candidate, names: dict[str, str] | None) -> str | None:
        """Why nothing describes `cand` (its model or its effort), or None when something does."""
        target = self._target(cand, names)
        configured = bool(names) and (cand.key in names or cand.model in names)  # type: ignore[operator]
        ck = (cand.key, target.key, configured)
        if ck in self._problem_cache:
            return self._problem_cache[ck]
        info = self._info(target.model)
        model = target.model
        learned_any = any(k == model or k.startswith(f"{model}@") for k in self._learned)
        shown = cand.model if target.model == cand.model else f"{cand.model} (catalogue {target.model})"
        problem: str | None = None
        if info is None and not configured and not learned_any and self.profiles.find(model, None) is None \
                and not self._has_profile_effort(model):
            if names:
                allowed = "configured models: " + ", ".join(sorted(names))
            else:
                close = get_close_matches(model, sorted(self._known_names()), n=3, cutoff=0.6)
                allowed = f"did you mean {', '.join(close)}?" if close else \
                    "check the spelling or add it to the catalogue"
            problem = (f"{cand.key!r}: unknown model {cand.model!r} (not in the model catalogue, no profile, no "
                       f"outcome data); {allowed}")
        elif cand.effort is not None:
            if info is not None:
                efforts = tuple(info.capabilities.reasoning_efforts or ())
            else:
                efforts = _ANY_EFFORT if configured else ()
            if not (cand.effort in efforts or self.learned_key(target) is not None
                    or self._has_profile_effort(model, cand.effort)):
                learned = sorted(k.partition("@")[2] for k in self._learned if k.startswith(f"{model}@"))
                known = ", ".join(dict.fromkeys([*efforts, *learned])) or "none (not a reasoning model)"
                problem = f"{cand.key!r}: {shown} has no reasoning effort {cand.effort!r} (efforts: {known})"
        self._problem_cache[ck] = problem
        return problem

    def _known_names(self) -> set[str]:
        names = {k.partition("@")[0] for k in self._learned} | {k.partition("@")[0] for k in self.profiles.entries}
        names_fn = getattr(self.catalog, "names", None)
        if callable(names_fn):
            names |= set(names_fn())
        return names

    def check_candidates(
        self, candidates: Sequence[str | Candidate], catalog_names: dict[str, str] | None = None
    ) -> None:
        """Raise `UnknownCandidate` for a candidate whose model has no catalogue entry, profile, outcome
        data or `catalog_names` entry, or whose effort is neither one the catalogue lists for the model
        nor one with a profile or outcome data (`o3-mini@ultra`, `gpt-4o-mini@high`); the message names
        every such candidate and what is allowed. `assess` and `decide` run the same check."""
        problems = [p for p in (self._problem(Candidate.parse(c), catalog_names) for c in candidates) if p]
        if problems:
            raise UnknownCandidate("unknown routing candidate " + "; ".join(problems))

    def _has_profile_effort(self, model: str, effort: str | None = None) -> bool:
        """Whether a profile exists for `model@effort` (any effort when None), exactly, not a fallback."""
        p = self.profiles.find(model, effort) if effort else None
        if effort:
            return p is not None and p is not self.profiles.find(model, None)
        return any(k.startswith(f"{model.lower()}@") for k in self.profiles.entries)

    # ------------------------------------------------------------------------------------ assessing

    def assess(
        self,
        prompt_or_messages: str | Sequence[Any],
        candidates: Sequence[str | Candidate],
        *,
        catalog_names: dict[str, str] | None = None,
        max_output_tokens: int | None = None,
        prompt_tokens: int | None = None,
        choices: int | None = None,
        request: Mapping[str, Any] | None = None,
        tools: Sequence[Any] | None = None,
        response_format: Mapping[str, Any] | None = None,
        stream: bool | None = None,
    ) -> list[Assessment]:
        """Predicted quality and estimated cost of every candidate (in the given order).

        `catalog_names` maps a candidate key (or its model name) to its catalogue name (a configured
        model's `catalog:`): the candidate is assessed as that catalogue model (quality, tokens, price)
        and counts as known. `max_output_tokens` is the request's output bound: it caps the priced
        tokens, and a reasoning candidate whose expected reasoning tokens alone reach it is ineligible
        (unless every candidate is). `prompt_tokens` overrides the token count (the gateway has usually
        counted already). `choices` is the request's `n`: every choice is a separate answer (and reasoning)
        billed on one prompt, so the estimated cost counts the output and reasoning tokens that many times
        (the token columns stay per answer; default: the request's `n`, else 1). Raises `UnknownCandidate`
        (a `ValueError`) for a candidate nothing describes.

        Capabilities, as the gateway checks them (`catalog.shaping.check_capabilities`): `request` is the
        Chat Completions body (`messages`, `tools`/`functions`, `response_format`, `stream`,
        `max_completion_tokens`/`max_tokens`, `n`); `tools`, `response_format` and `stream` set those
        fields on their own. A candidate whose catalogue entry lacks what the request needs (vision for
        image parts in the messages, detected with no other argument; tools; `json_schema` or
        `json_object`; streaming; an output bound above the model's maximum) is ineligible, with the
        gateway's reason in `ineligible_reason` ("model 'o3-mini' does not support vision (image input);
        ..."). The request's output bound and `n` are used when `max_output_tokens` / `choices` are not
        given. Also checked: the context window and the output bound; `decide` applies the caller's
        other eligibility rules.
        """
        body = self.request_body(prompt_or_messages, request, tools=tools, response_format=response_format,
                                 stream=stream)
        max_output_tokens, choices = self._bounds(body, max_output_tokens, choices)
        out, blocked, cands = self._assess(prompt_or_messages, candidates, catalog_names=catalog_names,
                                           max_output_tokens=max_output_tokens, prompt_tokens=prompt_tokens,
                                           choices=choices)
        self._check_capabilities(body, cands, out, blocked, catalog_names)
        self._keep_one(out, blocked)
        return out

    @staticmethod
    def request_body(
        prompt_or_messages: str | Sequence[Any],
        request: Mapping[str, Any] | None = None,
        *,
        tools: Sequence[Any] | None = None,
        response_format: Mapping[str, Any] | None = None,
        stream: bool | None = None,
    ) -> dict[str, Any]:
        """The Chat Completions body whose capabilities `assess`/`decide` check: `request` (or an empty
        body), its `messages` defaulting to the routed messages, and `tools`, `response_format` and
        `stream` set when given."""
        prompt_text(prompt_or_messages)  # a prompt of the wrong type is a TypeError that says what is expected
        body = dict(request or {})
        if "messages" not in body and not isinstance(prompt_or_messages, str):
            body["messages"] = list(prompt_or_messages)
        for key, value in (("tools", tools), ("response_format", response_format), ("stream", stream)):
            if value is not None:
                body[key] = value
        return body

    @staticmethod
    def _bounds(body: Mapping[str, Any], max_output_tokens: int | None, choices: int | None) -> tuple[int | None, int]:
        """`max_output_tokens` and `choices`, defaulting to the request's output bound (as the gateway
        reads it: `max_completion_tokens`, else `max_tokens`, a positive integer) and `n` (else 1)."""
        if max_output_tokens is None:
            bound = body.get("max_completion_tokens", body.get("max_tokens"))
            if isinstance(bound, int) and not isinstance(bound, bool) and bound > 0:
                max_output_tokens = bound
        if choices is None:
            n = body.get("n")
            choices = n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1
        return max_output_tokens, choices

    def capability_problem(
        self, body: Mapping[str, Any], cand: str | Candidate, catalog_names: dict[str, str] | None = None,
        configured: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Why `cand`'s model cannot serve the Chat Completions `body` (the gateway's 400 message from
        `catalog.shaping.check_capabilities`: tools, json_schema/json_object, vision, streaming, an output
        bound above the model's maximum), or None when it can or the catalogue does not describe it
        (a model outside the catalogue is assumed capable, as the gateway serves it). `configured` maps
        model names to catalogue entries for the message's "configured models that do: ..." (default:
        `catalog_names`' models)."""
        from tiergate.catalog.shaping import check_capabilities
        from tiergate.wire.errors import GatewayError

        c = Candidate.parse(cand)
        info = self._info(self._target(c, catalog_names).model)
        if info is None:
            return None
        if configured is None:
            configured = self._configured(catalog_names or {}, [c])
        probe = body if not c.effort else {**body, "reasoning_effort": c.effort}
        try:
            check_capabilities(probe, info, configured, c.model)
        except GatewayError as e:
            return e.message
        return None

    def _configured(self, names: Mapping[str, str], cands: Sequence[Candidate]) -> dict[str, Any]:
        """Client-facing model name -> catalogue entry, as the gateway's `infos`: every `catalog_names`
        model, and the candidates' models; a model outside the catalogue gets its permissive stand-in."""
        out: dict[str, Any] = {}
        for name in [*names, *(c.model for c in cands)]:
            if name in out:
                continue
            target = self._target(Candidate(name), dict(names)).model
            info = self._info(target)
            if info is None and callable(getattr(self.catalog, "unknown", None)):
                info = self.catalog.unknown(target)
            if info is not None:
                out[name] = info
        return out

    def _check_capabilities(
        self,
        body: Mapping[str, Any],
        cands: Sequence[Candidate],
        assessments: list[Assessment],
        blocked: dict[int, int],
        catalog_names: dict[str, str] | None,
    ) -> None:
        """Rule out (with the gateway's reason) the candidates still in the running whose model lacks a
        capability `body` needs; nothing to do for a plain text request without an output bound."""
        if self.catalog is None or not (_needs_capabilities(body) or _bounded(body)):
            return
        configured: dict[str, Any] | None = None
        for i, (cand, a) in enumerate(zip(cands, assessments, strict=True)):
            if not (a.eligible or i in blocked):
                continue
            if configured is None:
                configured = self._configured(catalog_names or {}, cands)
            why = self.capability_problem(body, cand, catalog_names, configured)
            if why:
                a.eligible, a.ineligible_reason = False, why
                blocked.pop(i, None)

    def _assess(
        self,
        prompt_or_messages: str | Sequence[Any],
        candidates: Sequence[str | Candidate],
        *,
        catalog_names: dict[str, str] | None,
        max_output_tokens: int | None,
        prompt_tokens: int | None,
        choices: int | None = 1,
    ) -> tuple[list[Assessment], dict[int, int], list[Candidate]]:
        """Assessments, {index: expected reasoning tokens} of the candidates ruled out by the output
        bound alone, and the parsed candidates."""
        if choices is None:
            choices = 1
        if isinstance(choices, bool) or not isinstance(choices, int) or choices < 1:
            raise ValueError(f"choices must be a positive integer, got {choices!r}")
        if isinstance(candidates, str | bytes) or not isinstance(candidates, Sequence):
            raise TypeError("candidates must be a list of `model` or `model@effort` names, e.g. "
                            f"['gpt-4o-mini', 'o3-mini@low'], got {type(candidates).__name__} {candidates!r:.40}")
        for name, value, least in (("max_output_tokens", max_output_tokens, 1), ("prompt_tokens", prompt_tokens, 0)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r:.40}")
            if value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")
        cands = [Candidate.parse(c) for c in candidates]
        if not cands:
            raise NoEligibleCandidate("no routing candidates configured (routing.candidates in the config)")
        names = catalog_names or {}
        problems = [p for p in (self._problem(c, names) for c in cands) if p]
        if problems:
            raise UnknownCandidate("unknown routing candidate " + "; ".join(problems))
        targets = [self._target(c, names) for c in cands]
        text = prompt_text(prompt_or_messages)
        X = self.quality.features([text])
        keys = {k for k in map(self.learned_key, targets) if k is not None}
        learned_keys, learned = self.quality.predict_matrix(X, [text], only=keys)
        col = self._columns.get(learned_keys)
        if col is None:
            col = self._columns[learned_keys] = {k: j for j, k in enumerate(learned_keys)}
        everyone: float | None = None  # the mean over every learned candidate, the "default" quality
        prof_inputs: tuple[np.ndarray, np.ndarray] | None = None
        if prompt_tokens is None:
            prompt_tokens = self._count(prompt_or_messages, text)
        answer = self.tokens.answer_tokens(text)
        out: list[Assessment] = []
        blocked: dict[int, int] = {}
        for i, (cand, target) in enumerate(zip(cands, targets, strict=True)):
            key = self.learned_key(target)
            cited: str | None = None
            if key is not None:
                q, source = float(learned[0, col[key]]), "learned"
            else:
                if prof_inputs is None:
                    dom = self.profiles.domain_probs(self.quality.sources, self.quality.resemblance(X))
                    prof_inputs = (dom, self.quality.difficulty(X))
                profile = self.profile_for(target.model, target.effort)
                if profile is not None:
                    q, source = float(Profiles.predict(profile, *prof_inputs)[0]), "profile"
                    cited = profile_citation(profile)
                else:
                    if everyone is None:
                        everyone = float(np.mean(self.quality.predict_matrix(X, [text])[1][0]))
                    q = everyone
                    source = "default"
            info = self._info(target.model)
            efforts = info.capabilities.reasoning_efforts if info is not None else None
            est = self.tokens.estimate(
                text, target.model, target.effort, efforts=efforts, max_output_tokens=max_output_tokens,
                answer_tokens=answer,
            )
            cost, cost_source = float("nan"), None
            eligible, why = True, None
            if info is not None:
                billed = est if choices == 1 else TokenEstimate(est.output_tokens * choices,
                                                                 est.reasoning_tokens * choices)
                cost, cost_source = cost_usd(prompt_tokens, billed, info.input_price, info.output_price), "catalogue"
                need = prompt_tokens + est.output_tokens + est.reasoning_tokens
                if prompt_tokens > info.context_window:
                    eligible, why = False, f"prompt ({prompt_tokens} tokens) exceeds context window {info.context_window}"
                elif max_output_tokens is not None and prompt_tokens + max_output_tokens > info.context_window:
                    # the upstream refuses a prompt + output limit above the window, whatever the answer's length
                    eligible, why = False, (f"prompt + max_completion_tokens ({prompt_tokens + max_output_tokens} "
                                            f"tokens) exceed context window {info.context_window}")
                elif need > info.context_window:
                    eligible, why = False, f"prompt + expected answer ({need} tokens) exceed context window {info.context_window}"
            elif key is not None and key in self.quality.recorded_cost_usd:
                # not in the catalogue, but its outcome rows record what it cost: ranked at that price level
                # (as `router eval` scores it), not after every priced candidate
                cost, cost_source = self.quality.recorded_cost_usd[key] * choices, "recorded"
            if eligible and max_output_tokens is not None:
                reasoning = self.tokens.reasoning_tokens(target.model, target.effort, efforts)
                if reasoning and reasoning >= max_output_tokens:
                    blocked[i] = reasoning
                    eligible = False
                    if reasoning > max_output_tokens:
                        why = (f"max_completion_tokens {max_output_tokens} is below the ~{reasoning} reasoning "
                               f"tokens {cand.key} is expected to use")
                    else:
                        why = (f"max_completion_tokens {max_output_tokens} leaves no room for an answer after the "
                               f"~{reasoning} reasoning tokens {cand.key} is expected to use")
            out.append(Assessment(cand.key, q, cost, est.output_tokens, est.reasoning_tokens, prompt_tokens,
                                  eligible, why, source, cited, cost_source))
        return out, blocked, cands

    @staticmethod
    def _keep_one(assessments: list[Assessment], blocked: dict[int, int]) -> Assessment | None:
        """When nothing is eligible but some candidates were ruled out by the output bound alone, make
        the one with the fewest expected reasoning tokens eligible again (and return it)."""
        if not blocked or any(a.eligible for a in assessments):
            return None
        i = min(blocked, key=lambda j: (blocked[j], j))
        a = assessments[i]
        a.eligible, a.ineligible_reason = True, None
        return a

    def _count(self, prompt_or_messages: str | Sequence[Any], text: str) -> int:
        try:
            from tiergate.accounting.tokens import count_messages, count_text
        except ImportError:
            return max(1, len(text) // 4)
        if isinstance(prompt_or_messages, str):
            return count_text(prompt_or_messages)
        return count_messages(list(prompt_or_messages))

    # ------------------------------------------------------------------------------------- deciding

    def decide(
        self,
        prompt_or_messages: str | Sequence[Any],
        candidates: Sequence[str | Candidate],
        *,
        policy: str | None = "balanced",
        quality_target: float | None = None,
        cost_cap_usd: float | None = None,
        eligible: Callable[[Candidate], str | None] | None = None,
        catalog_names: dict[str, str] | None = None,
        max_output_tokens: int | None = None,
        prompt_tokens: int | None = None,
        choices: int | None = None,
        request: Mapping[str, Any] | None = None,
        tools: Sequence[Any] | None = None,
        response_format: Mapping[str, Any] | None = None,
        stream: bool | None = None,
    ) -> Decision:
        """Assess every candidate, drop the ineligible ones (`eligible(c)` returns a reason to drop, or
        None), and choose: the cheapest within `target` x the best predicted quality, the target being
        `quality_target` if given, else the policy's ("cost" | "balanced" | "quality", "auto:" prefix
        allowed). With `cost_cap_usd` only candidates estimated at or under the cap compete; with
        `policy=None` and a cap (no target) the best predicted quality under the cap wins. `choices`: the
        request's `n` (see `assess`): the cap applies to the cost of all of them. `request`, `tools`,
        `response_format`, `stream`: the request's capabilities, checked as `assess` says (after the
        caller's `eligible`, so its reasons come first); image parts in the messages need vision even
        without them."""
        if cost_cap_usd is not None:
            if isinstance(cost_cap_usd, bool) or not isinstance(cost_cap_usd, int | float):
                raise TypeError(f"cost_cap_usd must be a number of dollars, got {type(cost_cap_usd).__name__} "
                                f"{cost_cap_usd!r:.40}")
            if not math.isfinite(cost_cap_usd) or cost_cap_usd < 0:
                raise ValueError(f"cost_cap_usd must be a finite number >= 0, got {cost_cap_usd!r}")
        if quality_target is not None:
            target = resolve_target(None, quality_target)
        elif policy is None:
            target = None if cost_cap_usd is not None else resolve_target("balanced", None)
        else:
            target = resolve_target(policy, None)
        body = self.request_body(prompt_or_messages, request, tools=tools, response_format=response_format,
                                 stream=stream)
        max_output_tokens, choices = self._bounds(body, max_output_tokens, choices)
        assessments, blocked, cands = self._assess(
            prompt_or_messages, candidates, catalog_names=catalog_names, max_output_tokens=max_output_tokens,
            prompt_tokens=prompt_tokens, choices=choices,
        )
        if eligible is not None:
            for i, (cand, a) in enumerate(zip(cands, assessments, strict=True)):
                if a.eligible or i in blocked:
                    why = eligible(cand)
                    if why:
                        a.eligible, a.ineligible_reason = False, why
                        blocked.pop(i, None)
        self._check_capabilities(body, cands, assessments, blocked, catalog_names)
        kept = self._keep_one(assessments, blocked)
        pool = [a for a in assessments if a.eligible]
        if not pool:
            reasons = "; ".join(f"{a.candidate}: {a.ineligible_reason}" for a in assessments)
            raise NoEligibleCandidate(f"no routing candidate can serve this request ({reasons})")
        choice = choose(
            [a.candidate for a in pool], [a.predicted_quality for a in pool], [a.est_cost_usd for a in pool],
            target=target, cost_cap=cost_cap_usd,
        )
        reason = choice.reason
        if kept is not None:
            reason += (f"; kept {kept.candidate} although max_completion_tokens {max_output_tokens} is at or "
                       f"below its ~{blocked[assessments.index(kept)]} expected reasoning tokens (no candidate "
                       "fits the bound, it needs the fewest), so its answer may be cut off")
        return Decision(pool[choice.index], assessments, reason, policy, target, cost_cap_usd)
