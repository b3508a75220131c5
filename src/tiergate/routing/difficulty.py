"""Latent-difficulty component of the router's quality model (research recipe R1, docs/router-research.md).

For an outcome file where many candidates were scored on (nearly) every prompt, one number per prompt -
how hard it is - explains most of who succeeds. Per such file ("source"):

1. a Rasch / IRT fit on the file's score matrix, logit P(candidate m scores on p) = theta_m - d_p
   (alternating Newton steps, Gaussian prior), gives every training prompt a latent difficulty d_p;
2. ridge regression (alpha by leave-one-out, `sklearn.linear_model.RidgeCV`) from the prompt's dense
   features (structural counts + static embedding) to d_p; the training prompts' own predicted difficulty
   is taken out of fold (5 folds) so that the next step is calibrated on predictions of the kind it sees
   at serving;
3. per candidate, a logistic link score ~ [predicted difficulty, starter-code flag, competitive-programming
   sections], fitted on soft labels (the score in [0, 1]). Where the rows are dated (`meta.contest_date`),
   the link of each non-reasoning candidate also gets the problem's age and is used at age 0, the latest
   training date: on LiveCodeBench, older non-reasoning models score lower on later problems (likely
   memorised older ones; claude-3-5-sonnet-20241022 0.69 -> 0.42 over the dev period) while reasoning
   models do not, and prompts at serving are newer than any training problem. Measured on a temporal
   split of the dev files (docs/router-research.md, "Date slope for non-reasoning candidates").

`QualityModel` blends a component's prediction with its own for the candidates the component covers,
weighted by how much the prompt resembles the component's file. Serving is numpy only (two small dot
products per component); sklearn is imported only when fitting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tiergate.routing.features import STRUCT_NAMES

if TYPE_CHECKING:
    from tiergate.routing.data import OutcomeRow

FORMAT_VERSION = 1
NPZ, META = "difficulty.npz", "difficulty.json"
#: Structural features the link sees besides the predicted difficulty (platform: LeetCode-style starter
#: code vs stdin-style problem statements).
LINK_FEATURES: tuple[str, ...] = ("has_starter", "log_cp_sections")
_LINK_COLS = [STRUCT_NAMES.index(n) for n in LINK_FEATURES]


@dataclass(frozen=True)
class DifficultyConfig:
    min_candidates: int = 8  # a file qualifies with at least this many candidates ...
    min_coverage: float = 0.9  # ... each scored on at least this share of its rows
    min_rows: int = 200
    min_skill: float = 0.3  # ... and if out-of-fold predicted difficulty correlates with the latent one this much
    rasch_prior: float = 0.3
    link_c: float = 10.0  # inverse L2 strength of the per-candidate logistic link (as sklearn's C)
    date_slope_non_reasoning: bool = True  # dated rows: non-reasoning links used at the latest date (module doc)
    folds: int = 5
    seed: int = 0


def rasch(Y: np.ndarray, seen: np.ndarray, iters: int = 30, prior: float = 0.3) -> np.ndarray:
    """Difficulty d_p of logit P = theta_m - d_p with a Gaussian prior (precision `prior`) on d and theta."""
    n, m = Y.shape
    th, d = np.zeros(m), np.zeros(n)
    W = seen.astype(np.float64)
    Y = np.where(seen, Y, 0.0)
    for _ in range(iters):
        P = 1 / (1 + np.exp(-(th[None, :] - d[:, None])))
        th += (((Y - P) * W).sum(0) - prior * th) / ((P * (1 - P) * W).sum(0) + prior)
        P = 1 / (1 + np.exp(-(th[None, :] - d[:, None])))
        d += ((-(Y - P) * W).sum(1) - prior * d) / ((P * (1 - P) * W).sum(1) + prior)
    return d


def soft_logistic(X: np.ndarray, y: np.ndarray, C: float = 10.0, iters: int = 25,
                  row_weights: np.ndarray | None = None) -> np.ndarray:
    """Logistic regression on soft labels y in [0, 1] (Newton; L2 1/(2C) on the weights, not the
    intercept; optional weights per row). Returns [intercept, weights...]."""
    A = np.hstack([np.ones((len(X), 1)), X])
    w = np.zeros(A.shape[1])
    reg = np.full(A.shape[1], 1.0 / C)
    reg[0] = 1e-6
    rw = 1.0 if row_weights is None else row_weights
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(A @ w, -30, 30)))
        g = A.T @ (rw * (p - y)) + reg * w
        H = (A * (rw * p * (1 - p))[:, None]).T @ A + np.diag(reg)
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-7:
            break
    return w


def _ridge_cv(Z: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, float]:
    try:
        from sklearn.linear_model import RidgeCV
    except ImportError:
        raise ImportError("fitting the router (its difficulty and neighbourhood components) needs scikit-learn: "
                          "pip install 'tiergate[train]'") from None
    r = RidgeCV(alphas=(10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)).fit(Z, d)
    return np.asarray(r.coef_, np.float64), float(r.intercept_)


@dataclass
class Component:
    """One source file's difficulty regressor and per-candidate links (all numpy)."""

    source: str
    candidates: list[str]
    mean: np.ndarray  # (d,) feature standardisation
    std: np.ndarray
    coef: np.ndarray  # (d,) ridge on standardised features
    intercept: float
    link: np.ndarray  # (m, 1 + 1 + len(LINK_FEATURES)): intercept, difficulty, link features
    skill: float  # out-of-fold correlation of predicted and latent difficulty on the training rows
    typical_resemblance: float = 1.0  # mean resemblance of the file's own prompts to the file (gate scale)

    def predicted_difficulty(self, X: np.ndarray) -> np.ndarray:
        return (X[:, : len(self.mean)] - self.mean) @ (self.coef / self.std) + self.intercept

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(n, m) predicted scores of `self.candidates`."""
        d = self.predicted_difficulty(X)
        z = self.link[:, 0] + d[:, None] * self.link[:, 1] + X[:, _LINK_COLS] @ self.link[:, 2:].T
        return 1 / (1 + np.exp(-np.clip(z, -30, 30)))


def _score_matrix(rows: Sequence[OutcomeRow], cfg: DifficultyConfig) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """The file's (candidates, scores, seen) if it is dense enough, else None."""
    n = len(rows)
    counts: dict[str, int] = {}
    for r in rows:
        for k in r.outcomes:
            counts[k] = counts.get(k, 0) + 1
    cands = sorted(k for k, c in counts.items() if c >= cfg.min_coverage * n)
    if n < cfg.min_rows or len(cands) < cfg.min_candidates:
        return None
    col = {k: j for j, k in enumerate(cands)}
    Y = np.zeros((n, len(cands)))
    seen = np.zeros((n, len(cands)), dtype=bool)
    for i, r in enumerate(rows):
        for k, o in r.outcomes.items():
            j = col.get(k)
            if j is not None:
                Y[i, j], seen[i, j] = o.score, True
    return cands, Y, seen


#: Reasoning models whose names `tokens_model.is_reasoning_model` does not recognise (it knows the o-series
#: and gpt-5 by name; any `model@effort` key is a reasoning model too).
_REASONING_NAMES = ("o1-preview", "qwq", "thinking", "deepseek-r1", "-r1", "gemini-2.5")


def is_reasoning_key(key: str) -> bool:
    """Does this candidate key name a reasoning model?"""
    from tiergate.routing.tokens_model import is_reasoning_model

    model = key.split("@")[0]
    return "@" in key or is_reasoning_model(model) or any(n in model.lower() for n in _REASONING_NAMES)


def problem_ages(rows: Sequence[OutcomeRow]) -> np.ndarray | None:
    """Years between each row's `meta.contest_date` and the latest one (<= 0); None unless every row has one."""
    dates = [r.meta.get("contest_date") for r in rows]
    if not dates or not all(isinstance(d, str) for d in dates):
        return None
    try:
        days = np.array([np.datetime64(d[:10], "D") for d in dates]).astype(np.int64)
    except ValueError:
        return None
    return (days - days.max()) / 365.25


def cross_fitted_difficulty(Z: np.ndarray, d: np.ndarray, cfg: DifficultyConfig) -> np.ndarray:
    """Each prompt's difficulty predicted from its standardised features `Z` by a ridge fitted on the
    other folds (`cfg.folds`, seeded): what the link is fitted on, as a new prompt's would be."""
    n = len(d)
    order = np.random.default_rng(cfg.seed).permutation(n)
    dhat = np.empty(n)
    for f in range(cfg.folds):
        te = order[f::cfg.folds]
        tr = np.setdiff1d(order, te)
        coef, b = _ridge_cv(Z[tr], d[tr])
        dhat[te] = Z[te] @ coef + b
    return dhat


def fit_component(
    source: str, rows: Sequence[OutcomeRow], X: np.ndarray, cfg: DifficultyConfig | None = None
) -> Component | None:
    """Fit one source's component on its rows and their dense features (None if the file does not
    qualify: too sparse, too few candidates, or difficulty not predictable from the prompt)."""
    cfg = cfg or DifficultyConfig()
    sm = _score_matrix(rows, cfg)
    if sm is None:
        return None
    cands, Y, seen = sm
    d = rasch(Y, seen, prior=cfg.rasch_prior)
    X = np.asarray(X, np.float64)
    mean, std = X.mean(0), X.std(0) + 1e-6
    Z = (X - mean) / std
    dhat = cross_fitted_difficulty(Z, d, cfg)
    skill = float(np.corrcoef(dhat, d)[0, 1]) if np.std(dhat) > 0 else 0.0
    if not skill >= cfg.min_skill:
        return None
    coef, b = _ridge_cv(Z, d)
    link_in = np.hstack([dhat[:, None], X[:, _LINK_COLS]])
    link = np.stack([soft_logistic(link_in[seen[:, j]], Y[seen[:, j], j], cfg.link_c) for j in range(len(cands))])
    ages = problem_ages(rows) if cfg.date_slope_non_reasoning else None
    if ages is not None:
        dated = np.hstack([link_in, ages[:, None]])
        for j, cand in enumerate(cands):
            if not is_reasoning_key(cand):  # the age column's weight drops out at age 0
                link[j] = soft_logistic(dated[seen[:, j]], Y[seen[:, j], j], cfg.link_c)[:-1]
    return Component(source, cands, mean, std, coef, b, link, skill)


class DifficultyModel:
    """The difficulty components of every qualifying training file."""

    def __init__(self, components: list[Component] | None = None, config: DifficultyConfig | None = None) -> None:
        self.components = components or []
        self.config = config or DifficultyConfig()
        self._stack: tuple[np.ndarray, ...] | None = None  # serving caches (`_stacked`, `_plan`)
        self._stack_ident: tuple[int, ...] | None = None
        self._plans: dict[tuple[str, ...], tuple[np.ndarray, ...] | None] = {}

    def fit(
        self, rows: Sequence[OutcomeRow], X: np.ndarray, own_resemblance: np.ndarray | None = None
    ) -> DifficultyModel:
        """`X`: the rows' dense features (columns as `features.FeatureExtractor`, token slots dropped);
        `own_resemblance`: per row, how much it resembles its own file (scales the serving gate, so that a
        prompt as typical of the file as its own prompts gets the component's prediction in full, even when
        the resemblance classifier splits such prompts between look-alike files)."""
        by_src: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_src.setdefault(r.source, []).append(i)
        self.components = []
        for src in sorted(by_src):
            idx = by_src[src]
            comp = fit_component(src, [rows[i] for i in idx], X[idx], self.config)
            if comp is not None:
                if own_resemblance is not None:
                    comp.typical_resemblance = float(np.clip(np.mean(own_resemblance[idx]), 1e-3, 1.0))
                self.components.append(comp)
        return self

    @property
    def sources(self) -> list[str]:
        return [c.source for c in self.components]

    def covered(self) -> set[str]:
        return {k for c in self.components for k in c.candidates}

    def predict(self, X: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Per component (in `sources` order): candidate -> predicted score for each prompt."""
        out = []
        for c in self.components:
            P = c.predict(X)
            out.append({k: P[:, j] for j, k in enumerate(c.candidates)})
        return out

    def blend(
        self, base: dict[str, np.ndarray], X: np.ndarray, resemblance: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """`base` with each covered candidate moved towards the components' predictions: weight
        resemblance[source] / the component's typical resemblance, at most 1, per component covering it;
        candidates not covered keep `base`."""
        if not self.components:
            return base
        keys = list(base)
        B = np.stack([np.asarray(base[k], np.float64) for k in keys], axis=1)
        R = np.stack([np.asarray(resemblance[c.source], np.float64) for c in self.components], axis=1)
        P = self.blend_matrix(B, tuple(keys), X, R)
        return {k: P[:, j] for j, k in enumerate(keys)}

    def blend_matrix(self, B: np.ndarray, keys: tuple[str, ...], X: np.ndarray, R: np.ndarray) -> np.ndarray:
        """`blend` on matrices: `B` (n, len(keys)) the base predictions of `keys`, `R` (n, components) each
        component's resemblance (in `sources` order); all components in one pass (serving: a few small
        products instead of a dozen numpy calls per component)."""
        if not self.components:
            return B
        st = self._stacked()
        if st is None:  # components of different feature widths: one at a time
            return self._blend_each(B, keys, X, R)
        WnT, offset, link_cols = st
        plan = self._plan(keys)
        if plan is None:
            return B
        scatter, comp, L0, L1, L2T = plan
        # (n, components) predicted difficulty: (x - mean) . (coef / std) + intercept
        D = np.asarray(X[:, : WnT.shape[0]], np.float64) @ WnT + offset
        Z = L0 + D[:, comp] * L1 + np.asarray(X[:, link_cols], np.float64) @ L2T
        P = 1 / (1 + np.exp(-np.clip(Z, -30, 30)))  # (n, covered columns)
        typical = np.array([c.typical_resemblance for c in self.components], np.float64)
        G = np.clip(R / typical, 0.0, 1.0)[:, comp]
        num, wsum = (G * P) @ scatter, G @ scatter
        w = np.minimum(wsum, 1.0)
        return (1 - w) * B + w * (num / np.maximum(wsum, 1e-12))

    def _blend_each(self, B: np.ndarray, keys: tuple[str, ...], X: np.ndarray, R: np.ndarray) -> np.ndarray:
        pos = {k: j for j, k in enumerate(keys)}
        num, wsum = np.zeros_like(B), np.zeros_like(B)
        for i, comp in enumerate(self.components):
            cols = [(j, pos[k]) for j, k in enumerate(comp.candidates) if k in pos]
            if not cols:
                continue
            src, dst = (np.array(c) for c in zip(*cols, strict=True))
            g = np.clip(R[:, i] / comp.typical_resemblance, 0.0, 1.0)
            num[:, dst] += g[:, None] * comp.predict(X)[:, src]
            wsum[:, dst] += g[:, None]
        w = np.minimum(wsum, 1.0)
        return (1 - w) * B + w * (num / np.maximum(wsum, 1e-12))

    def _stacked(self) -> tuple[np.ndarray, ...] | None:
        """Every component's difficulty regression stacked (cached per `components` list; a component's arrays
        are not modified in place after fitting or loading): (coef / std) as columns (d, c), the intercepts
        less mean . (coef / std) (c,), the link feature columns. None when the components differ in feature
        width."""
        ident = tuple(map(id, self.components))
        if self._stack_ident == ident:
            return self._stack
        st: tuple[np.ndarray, ...] | None = None
        if len({len(c.mean) for c in self.components}) == 1:
            Wn = np.stack([np.asarray(c.coef, np.float64) / np.asarray(c.std, np.float64) for c in self.components])
            M = np.stack([np.asarray(c.mean, np.float64) for c in self.components])
            b = np.array([c.intercept for c in self.components], np.float64)
            st = (np.ascontiguousarray(Wn.T), b - (M * Wn).sum(axis=1), np.array(_LINK_COLS))
        self._stack, self._stack_ident, self._plans = st, ident, {}
        return st

    def _plan(self, keys: tuple[str, ...]) -> tuple[np.ndarray, ...] | None:
        """For base columns `keys` (cached per `keys`): the (component, candidate) pairs among them as columns
        - the (columns, len(keys)) 0/1 matrix that adds each to its candidate's base column, the component
        of each, and their links (intercept, difficulty weight, link-feature weights transposed); None when
        no component covers any of `keys`."""
        if keys in self._plans:
            return self._plans[keys]
        pos = {k: j for j, k in enumerate(keys)}
        pairs = [(i, k, row) for i, c in enumerate(self.components) for k, row in zip(c.candidates, c.link, strict=True)
                 if k in pos]
        plan: tuple[np.ndarray, ...] | None = None
        if pairs:
            scatter = np.zeros((len(pairs), len(keys)), np.float64)
            scatter[np.arange(len(pairs)), [pos[k] for _, k, _ in pairs]] = 1.0
            L = np.array([row for _, _, row in pairs], np.float64)
            plan = (scatter, np.array([i for i, _, _ in pairs]), L[:, 0], L[:, 1], np.ascontiguousarray(L[:, 2:].T))
        self._plans[keys] = plan
        return plan

    # --------------------------------------------------------------------------------- persistence

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"format": FORMAT_VERSION, "config": self.config.__dict__,
                                "link_features": list(LINK_FEATURES), "components": []}
        for i, c in enumerate(self.components):
            arrays.update({f"{i}_mean": c.mean.astype(np.float32), f"{i}_std": c.std.astype(np.float32),
                           f"{i}_coef": c.coef.astype(np.float32), f"{i}_link": c.link.astype(np.float32)})
            meta["components"].append({"source": c.source, "candidates": c.candidates,
                                       "intercept": c.intercept, "skill": round(c.skill, 4),
                                       "typical_resemblance": c.typical_resemblance})
        np.savez_compressed(directory / NPZ, **arrays)
        (directory / META).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> DifficultyModel | None:
        """The saved model, or None when the directory has none."""
        directory = Path(directory)
        if not (directory / META).exists():
            return None
        meta = json.loads((directory / META).read_text())
        if meta.get("format") != FORMAT_VERSION or meta.get("link_features") != list(LINK_FEATURES):
            raise ValueError(f"{directory}: difficulty model format {meta.get('format')} is not {FORMAT_VERSION}")
        comps = []
        with np.load(directory / NPZ) as z:
            for i, c in enumerate(meta["components"]):
                comps.append(Component(c["source"], list(c["candidates"]), z[f"{i}_mean"].astype(np.float64),
                                       z[f"{i}_std"].astype(np.float64), z[f"{i}_coef"].astype(np.float64),
                                       float(c["intercept"]), z[f"{i}_link"].astype(np.float64), float(c["skill"]),
                                       float(c.get("typical_resemblance", 1.0))))
        return cls(comps, DifficultyConfig(**meta["config"]))
