"""Quality profiles: the prior for candidates the learned quality model has no outcome data for.

`profiles.yaml` (packaged) gives per-domain scores with sources: `published` figures and `measured`
means from the dev outcome files. A user file in the same shape is merged on top (entry by entry).
For a prompt, a profile's prediction is

    sigmoid(logit(sum_d P(d | prompt) * score_d) - difficulty(prompt))

where P(d | prompt) adds up the quality model's benchmark-resemblance probabilities per domain and
difficulty is the quality model's within-benchmark difficulty (0 for a typical prompt of its kind),
clipped to +-2 logits so a figure is a prior that the prompt shifts, not overrides.
Domains a profile lacks take the mean of the domains it has. `model@effort` uses its own entry, else the
model's entry, but only when the model has no per-effort entries (a figure published for o3@high and the
default effort says nothing about o3@low).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PROFILES_PATH = Path(__file__).with_name("profiles.yaml")
DOMAINS: tuple[str, ...] = ("code", "math", "knowledge", "reasoning", "general")
#: A profile's published figure moves by at most this many logits with the prompt's difficulty.
MAX_DIFFICULTY_SHIFT = 2.0
_DATE = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")


class ProfileError(ValueError):
    """A malformed profiles file (the message names the file and entry)."""


@dataclass(frozen=True)
class Profile:
    key: str
    scores: dict[str, float]  # domain -> score in [0, 1]
    sources: dict[str, str]  # domain -> where the figure comes from

    def vector(self) -> np.ndarray:
        """Scores in DOMAINS order; missing domains take the mean of the present ones."""
        fill = float(np.mean(list(self.scores.values())))
        return np.array([self.scores.get(d, fill) for d in DOMAINS], dtype=float)


def _parse_entries(raw: Any, label: str) -> dict[str, Profile]:
    out: dict[str, Profile] = {}
    if not raw:
        return out
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{label}: expected a mapping of model -> domain -> {{score, source}}")
    for key, doms in raw.items():
        if not isinstance(doms, Mapping) or not doms:
            raise ProfileError(f"{label}: {key}: expected domain -> {{score, source}}")
        scores, sources = {}, {}
        for dom, val in doms.items():
            if dom not in DOMAINS:
                raise ProfileError(f"{label}: {key}: unknown domain {dom!r} (use {', '.join(DOMAINS)})")
            if not isinstance(val, Mapping) or "score" not in val or "source" not in val:
                raise ProfileError(f"{label}: {key}.{dom}: needs `score` (0-1) and `source`")
            score = val["score"]
            if isinstance(score, bool) or not isinstance(score, int | float) or not 0.0 <= score <= 1.0:
                raise ProfileError(f"{label}: {key}.{dom}.score must be a number in [0, 1], got {score!r}")
            score = float(score)
            scores[dom], sources[dom] = score, str(val["source"])
        out[str(key).lower()] = Profile(str(key).lower(), scores, sources)
    return out


class Profiles:
    """Profiles by candidate key; published figures win over measured ones, user entries over both."""

    def __init__(self, domains: Mapping[str, Sequence[str]], entries: Mapping[str, Profile]) -> None:
        self.domain_of = {src: dom for dom, srcs in domains.items() for src in srcs}
        self.entries = dict(entries)

    @classmethod
    def load(cls, override: str | Path | None = None, base: str | Path | None = None) -> Profiles:
        base = Path(base) if base is not None else PROFILES_PATH
        doc = yaml.safe_load(base.read_text()) or {}
        domains = doc.get("domains") or {}
        entries = _parse_entries(doc.get("measured"), f"{base}: measured")
        entries.update(_parse_entries(doc.get("published"), f"{base}: published"))
        if override is not None:
            over = yaml.safe_load(Path(override).read_text()) or {}
            if not isinstance(over, Mapping):
                raise ProfileError(f"{override}: expected a mapping with `published:` (and optionally `domains:`, "
                                   f"`measured:`), got {type(over).__name__}")
            if "domains" in over:
                domains = {**domains, **over["domains"]}
            for section in ("measured", "published", "profiles"):
                entries.update(_parse_entries(over.get(section), f"{override}: {section}"))
        return cls(domains, entries)

    def find(self, model: str, effort: str | None) -> Profile | None:
        """The profile for `model@effort`, else `model` (without a dated suffix too) unless the model has
        entries for other efforts only."""
        names = [model.lower()]
        undated = _DATE.sub("", model.lower())
        if undated != names[0]:
            names.append(undated)
        for name in names:
            if effort and f"{name}@{effort}" in self.entries:
                return self.entries[f"{name}@{effort}"]
            # the model's entry stands for its efforts only when it has no per-effort entries: a figure
            # published for some efforts (o3@high, o3@medium) says nothing about the others (o3@low)
            if name in self.entries and not (effort and any(k.startswith(f"{name}@") for k in self.entries)):
                return self.entries[name]
        # a dated profile key for an undated candidate name (gpt-4o -> gpt-4o-2024-08-06): latest date
        dated = sorted((k for k in self.entries if _DATE.sub("", k.split("@")[0]) == names[-1]), reverse=True)
        for k in dated:
            if ("@" in k) == bool(effort) and (not effort or k.endswith(f"@{effort}")):
                return self.entries[k]
        return None

    def domain_probs(self, sources: Sequence[str], source_probs: np.ndarray) -> np.ndarray:
        """(n, len(DOMAINS)) domain mixture from the quality model's per-file resemblance."""
        M = np.zeros((len(sources), len(DOMAINS)))
        for i, src in enumerate(sources):
            M[i, DOMAINS.index(self.domain_of.get(src, "general"))] = 1.0
        return source_probs @ M

    @staticmethod
    def predict(profile: Profile, domain_probs: np.ndarray, difficulty: np.ndarray) -> np.ndarray:
        base = np.clip(domain_probs @ profile.vector(), 1e-3, 1 - 1e-3)
        logit = np.log(base / (1 - base)) - np.clip(difficulty, -MAX_DIFFICULTY_SHIFT, MAX_DIFFICULTY_SHIFT)
        return 1.0 / (1.0 + np.exp(-logit))

