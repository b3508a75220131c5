"""The router: for a prompt and a list of (model, effort) candidates, predicted quality and estimated cost
of each, and one explained choice under a policy.

    router = Router.load()                                   # the artefacts shipped in the package
    router.assess("Prove that ...", ["o1@high", "o3-mini@low", "gpt-4o-mini"])   -> [Assessment]
    router.decide(messages, candidates, policy="auto:balanced", cost_cap_usd=0.01) -> Decision

Quality comes from the learned `QualityModel` when it has outcome data for the candidate (matched by
exact key, else through the catalogue's canonical name, so `gpt-4o` finds `gpt-4o-2024-08-06`, and a
reasoning model named without an effort runs at medium), otherwise from its profile
(`profiles.yaml`), otherwise from the mean of the learned candidates (said so in `quality_source`).
Cost: prompt tokens (accounting.tokens) x input price + (predicted answer + reasoning tokens) x output
price, prices from the catalogue. No I/O after `load`; one decision is one feature extraction and a few
small matrix products.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tiergate.routing.features import prompt_text
from tiergate.routing.policy import choose, resolve_target
from tiergate.routing.profiles import Profiles
from tiergate.routing.quality import ARTIFACTS_DIR, QualityModel
from tiergate.routing.tokens_model import TokensModel, cost_usd, is_reasoning_model


@dataclass(frozen=True)
class Candidate:
    model: str
    effort: str | None = None

    @classmethod
    def parse(cls, spec: str | Candidate) -> Candidate:
        """"o3-mini@low" -> Candidate("o3-mini", "low"); "gpt-4o-mini" -> Candidate("gpt-4o-mini", None)."""
        if isinstance(spec, Candidate):
            return spec
        model, _, effort = str(spec).strip().partition("@")
        if not model:
            raise ValueError(f"empty model name in routing candidate {spec!r}")
        return cls(model, effort or None)

    @property
    def key(self) -> str:
        return f"{self.model}@{self.effort}" if self.effort else self.model


@dataclass
class Assessment:
    candidate: str
    predicted_quality: float
    est_cost_usd: float  # NaN when the catalogue has no price for the model
    est_output_tokens: int
    est_reasoning_tokens: int
    prompt_tokens: int
    eligible: bool
    ineligible_reason: str | None
    quality_source: str  # "learned" | "profile" | "default"

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


class NoEligibleCandidate(ValueError):
    """Every candidate was ruled out; the message lists each one's reason."""


class UnknownCandidate(ValueError):
    """A candidate names a model, or a reasoning effort of a model, that nothing describes: no catalogue
    entry, no profile and no outcome data."""


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
        return cls(quality, Profiles.load(profiles), catalog)

    # ------------------------------------------------------------------------------------- lookups

    def _info(self, model: str) -> Any:
        if self.catalog is None:
            return None
        try:
            return self.catalog.get(model)
        except (KeyError, LookupError, ValueError):
            return None

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

    def check_candidates(
        self, candidates: Sequence[str | Candidate], catalog_names: dict[str, str] | None = None
    ) -> None:
        """Raise `UnknownCandidate` for a candidate whose model has no catalogue entry, profile or outcome
        data, or whose effort is neither one the catalogue lists for the model nor one with a profile or
        outcome data (`o3-mini@ultra`, `gpt-4o-mini@high`). `assess` itself accepts anything (it falls
        back to a default quality and an unknown cost), so callers taking user input check first."""
        problems: list[str] = []
        names = catalog_names or {}
        for spec in candidates:
            cand = Candidate.parse(spec)
            info = self._info(names.get(cand.key) or names.get(cand.model) or cand.model)
            learned_any = any(k == cand.model or k.startswith(f"{cand.model}@") for k in self._learned)
            if info is None and not learned_any and self.profiles.find(cand.model, None) is None \
                    and not self._has_profile_effort(cand.model):
                problems.append(f"{cand.key!r}: unknown model {cand.model!r} (not in the model catalogue, no "
                                "profile, no outcome data); check the spelling or add it to the catalogue")
                continue
            if cand.effort is None:
                continue
            efforts = tuple(info.capabilities.reasoning_efforts or ()) if info is not None else ()
            if cand.effort in efforts or self.learned_key(cand) is not None or self._has_profile_effort(
                    cand.model, cand.effort):
                continue
            known = ", ".join(efforts) if efforts else "none (not a reasoning model)"
            problems.append(f"{cand.key!r}: {cand.model} has no reasoning effort {cand.effort!r} "
                            f"(efforts: {known})")
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
    ) -> list[Assessment]:
        """Predicted quality and estimated cost of every candidate (in the given order).

        `catalog_names` maps a candidate key (or its model name) to the catalogue name to price it with
        (a configured model's catalogue entry), `prompt_tokens` overrides the token count (the gateway has usually counted already).
        Only the context window is checked here; `decide` applies the caller's other eligibility rules.
        """
        cands = [Candidate.parse(c) for c in candidates]
        if not cands:
            raise NoEligibleCandidate("no routing candidates configured (routing.candidates in the config)")
        text = prompt_text(prompt_or_messages)
        X = self.quality.features([text])
        keys = {k for k in map(self.learned_key, cands) if k is not None}
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
        for cand in cands:
            key = self.learned_key(cand)
            if key is not None:
                q, source = float(learned[0, col[key]]), "learned"
            else:
                if prof_inputs is None:
                    dom = self.profiles.domain_probs(self.quality.sources, self.quality.resemblance(X))
                    prof_inputs = (dom, self.quality.difficulty(X))
                profile = self.profiles.find(cand.model, cand.effort)
                if profile is not None:
                    q, source = float(Profiles.predict(profile, *prof_inputs)[0]), "profile"
                else:
                    if everyone is None:
                        everyone = float(np.mean(self.quality.predict_matrix(X, [text])[1][0]))
                    q = everyone
                    source = "default"
            names = catalog_names or {}
            price_name = names.get(cand.key) or names.get(cand.model) or cand.model
            info = self._info(price_name)
            efforts = info.capabilities.reasoning_efforts if info is not None else None
            est = self.tokens.estimate(
                text, cand.model, cand.effort, efforts=efforts, max_output_tokens=max_output_tokens,
                answer_tokens=answer,
            )
            cost = float("nan")
            eligible, why = True, None
            if info is not None:
                cost = cost_usd(prompt_tokens, est, info.input_price, info.output_price)
                need = prompt_tokens + est.output_tokens + est.reasoning_tokens
                if prompt_tokens > info.context_window:
                    eligible, why = False, f"prompt ({prompt_tokens} tokens) exceeds context window {info.context_window}"
                elif need > info.context_window:
                    eligible, why = False, f"prompt + expected answer ({need} tokens) exceed context window {info.context_window}"
            out.append(Assessment(cand.key, q, cost, est.output_tokens, est.reasoning_tokens, prompt_tokens,
                                  eligible, why, source))
        return out

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
    ) -> Decision:
        """Assess every candidate, drop the ineligible ones (`eligible(c)` returns a reason to drop, or
        None), and choose: the cheapest within `target` x the best predicted quality, the target being
        `quality_target` if given, else the policy's ("cost" | "balanced" | "quality", "auto:" prefix
        allowed). With `cost_cap_usd` only candidates estimated at or under the cap compete; with
        `policy=None` and a cap (no target) the best predicted quality under the cap wins."""
        if cost_cap_usd is not None and cost_cap_usd < 0:
            raise ValueError(f"cost_cap_usd must be >= 0, got {cost_cap_usd!r}")
        if quality_target is not None:
            target = resolve_target(None, quality_target)
        elif policy is None:
            target = None if cost_cap_usd is not None else resolve_target("balanced", None)
        else:
            target = resolve_target(policy, None)
        cands = [Candidate.parse(c) for c in candidates]
        assessments = self.assess(prompt_or_messages, cands, catalog_names=catalog_names,
                                  max_output_tokens=max_output_tokens, prompt_tokens=prompt_tokens)
        if eligible is not None:
            for cand, a in zip(cands, assessments, strict=True):
                if a.eligible:
                    why = eligible(cand)
                    if why:
                        a.eligible, a.ineligible_reason = False, why
        pool = [a for a in assessments if a.eligible]
        if not pool:
            reasons = "; ".join(f"{a.candidate}: {a.ineligible_reason}" for a in assessments)
            raise NoEligibleCandidate(f"no routing candidate can serve this request ({reasons})")
        choice = choose(
            [a.candidate for a in pool], [a.predicted_quality for a in pool], [a.est_cost_usd for a in pool],
            target=target, cost_cap=cost_cap_usd,
        )
        return Decision(pool[choice.index], assessments, choice.reason, policy, target, cost_cap_usd)
