"""Router metrics: RouteLLM's two-model metrics exactly as its code computes them, and cost/quality
metrics for any number of candidates.

Two models (shared/data/README.md section 5; lm-sys/RouteLLM @ 0b64fda `evals/benchmarks.py`,
`evals/evaluate.py`). A router scores every prompt with s(p) ("the strong model wins");
- thresholds: the 11 edges of `pandas.qcut(s, 10, retbins=True)`, i.e. the 0 %, 10 %, ..., 100 %
  quantiles of s with linear interpolation (`numpy.quantile`, the same estimator);
- at each edge but the last the strong model gets the prompts with `s >= edge`, at the last (the
  maximum) those with `s > edge`; each edge gives a point (c = % of prompts sent to the strong model,
  r = mean score of the routed answers);
- AUC = trapezoid area under r over c/100 (points sorted by c); APGR = (AUC - r_weak*D) /
  ((r_strong - r_weak)*D), D = the c/100 range; CPT(x) = numpy.interp(r_weak + x*(r_strong - r_weak),
  r, c) over the points sorted by c (numpy.interp does not check that r rises with c, neither do we);
- the random router: s ~ random.uniform(0, 1) per prompt, 10 repetitions after random.seed(0), the
  points averaged per strong-call percentage, metrics on that average curve.
Scores stay in the data's units (0-1), so `auc` here is RouteLLM's AUC / 100 for accuracy benchmarks;
APGR and CPT do not depend on the unit. One deviation, for robustness only: pandas.qcut raises on
repeated edges (ties in s); we keep the repeated edges, which add zero-width segments and change no
metric.

Many models: each routing is a point (mean cost per prompt in USD, mean score); curves are swept over
the router's operating points; `cost_at_quality` reads the cheapest point of a curve that reaches a
fraction of the best single candidate's mean score (as CPT reads RouteLLM's curve).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NUM_BINS = 10
RANDOM_ITERS = 10
CPT_LEVELS = (0.2, 0.5, 0.8)


# ------------------------------------------------------------------------------------- two models


@dataclass(frozen=True)
class TwoModelCurve:
    c: np.ndarray  # % strong calls, sorted ascending
    r: np.ndarray  # mean routed score at each point
    r_strong: float
    r_weak: float


def threshold_edges(s: np.ndarray, bins: int = NUM_BINS) -> np.ndarray:
    """`pandas.qcut(s, bins, retbins=True)[1]`: the equal-count bin edges, linear interpolation."""
    return np.quantile(np.asarray(s, dtype=float), np.linspace(0.0, 1.0, bins + 1))


def sweep(s: np.ndarray, strong: np.ndarray, weak: np.ndarray, bins: int = NUM_BINS) -> tuple[np.ndarray, np.ndarray]:
    """The threshold sweep: one (c, r) per edge, in edge order (not sorted)."""
    s = np.asarray(s, dtype=float)
    strong = np.asarray(strong, dtype=float)
    weak = np.asarray(weak, dtype=float)
    edges = threshold_edges(s, bins)
    cs, rs = [], []
    for i, t in enumerate(edges):
        sel = s >= t if i != len(edges) - 1 else s > t
        cs.append(sel.sum() / len(s) * 100.0)
        rs.append(np.where(sel, strong, weak).mean())
    return np.array(cs), np.array(rs)


def make_curve(c: np.ndarray, r: np.ndarray, strong: np.ndarray, weak: np.ndarray) -> TwoModelCurve:
    order = np.argsort(c, kind="stable")
    return TwoModelCurve(np.asarray(c)[order], np.asarray(r)[order], float(np.mean(strong)), float(np.mean(weak)))


def router_curve(s: np.ndarray, strong: np.ndarray, weak: np.ndarray, bins: int = NUM_BINS) -> TwoModelCurve:
    c, r = sweep(s, strong, weak, bins)
    return make_curve(c, r, strong, weak)


def random_router_curve(
    strong: np.ndarray, weak: np.ndarray, iters: int = RANDOM_ITERS, seed: int = 0, bins: int = NUM_BINS
) -> TwoModelCurve:
    """RouteLLM's random router: `random.seed(seed)`, `iters` draws of uniform(0, 1) per prompt, the
    points grouped by exact strong-call percentage and averaged (pandas `groupby(...).mean()`)."""
    rng = random.Random(seed)  # same stream as random.seed(seed) + random.uniform, without global state
    groups: dict[float, list[float]] = {}
    n = len(strong)
    for _ in range(iters):
        s = np.array([rng.uniform(0, 1) for _ in range(n)])
        for c, r in zip(*sweep(s, strong, weak, bins), strict=True):
            groups.setdefault(float(c), []).append(float(r))
    cs = np.array(sorted(groups))
    rs = np.array([np.mean(groups[c]) for c in cs])
    return make_curve(cs, rs, strong, weak)


def auc(curve: TwoModelCurve) -> float:
    return float(np.trapezoid(curve.r, curve.c / 100.0))


def apgr(curve: TwoModelCurve) -> float:
    x = curve.c / 100.0
    d = float(np.trapezoid(np.ones_like(x), x))
    gap = (curve.r_strong - curve.r_weak) * d
    if gap == 0:
        return float("nan")
    return (auc(curve) - curve.r_weak * d) / gap


def pgr(curve: TwoModelCurve) -> np.ndarray:
    gap = curve.r_strong - curve.r_weak
    return (curve.r - curve.r_weak) / gap if gap else np.full_like(curve.r, np.nan)


def cpt(curve: TwoModelCurve, level: float) -> float:
    """% strong calls needed to recover `level` of the gap (numpy.interp over points sorted by c)."""
    target = curve.r_weak + level * (curve.r_strong - curve.r_weak)
    return float(np.interp(target, curve.r, curve.c))


def two_model_summary(curve: TwoModelCurve) -> dict[str, object]:
    return {
        "apgr": apgr(curve),
        "auc": auc(curve),
        "cpt": {f"{round(lv * 100)}": cpt(curve, lv) for lv in CPT_LEVELS},
        "points": [{"strong_pct": float(c), "score": float(r)} for c, r in zip(curve.c, curve.r, strict=True)],
    }


# ------------------------------------------------------------------------------------ many models


@dataclass(frozen=True)
class Point:
    cost_usd: float  # mean per prompt
    score: float  # mean per prompt
    label: str = ""


def routed_point(choice: np.ndarray, scores: np.ndarray, costs: np.ndarray, label: str = "") -> Point:
    """Mean score and cost when prompt i is sent to candidate `choice[i]`."""
    idx = np.arange(len(choice))
    return Point(float(np.mean(costs[idx, choice])), float(np.mean(scores[idx, choice])), label)


def single_points(candidates: Sequence[str], scores: np.ndarray, costs: np.ndarray) -> list[Point]:
    return [
        Point(float(np.mean(costs[:, j])), float(np.mean(scores[:, j])), c) for j, c in enumerate(candidates)
    ]


def best_single(candidates: Sequence[str], scores: np.ndarray, costs: np.ndarray) -> Point:
    """Highest mean score; ties go to the cheaper candidate."""
    pts = single_points(candidates, scores, costs)
    return max(pts, key=lambda p: (p.score, -p.cost_usd if np.isfinite(p.cost_usd) else -np.inf))


def oracle_choice(scores: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Per prompt, the cheapest candidate among those with the best score (unknown costs count as 0)."""
    best = scores.max(axis=1, keepdims=True)
    c = np.where(scores >= best - 1e-12, np.nan_to_num(costs, nan=0.0), np.inf)
    return np.argmin(c, axis=1)


def random_point(scores: np.ndarray, costs: np.ndarray) -> Point:
    """A uniformly random candidate per prompt, in expectation."""
    return Point(float(np.mean(costs)), float(np.mean(scores)), "random")


def pareto(points: Sequence[Point]) -> list[Point]:
    """Non-dominated points (lower cost, higher score), sorted by cost."""
    out: list[Point] = []
    for p in sorted(points, key=lambda p: (p.cost_usd, -p.score)):
        if not out or p.score > out[-1].score + 1e-12:
            out.append(p)
    return out


def cost_at_quality(points: Sequence[Point], target_score: float) -> Point | None:
    """The cheapest point whose score reaches `target_score` (None if no point does)."""
    ok = [p for p in points if p.score >= target_score - 1e-12]
    return min(ok, key=lambda p: p.cost_usd) if ok else None


def cost_at_quality_table(
    points: Sequence[Point], best: Point, fractions: Sequence[float] = (0.95, 0.98, 1.0)
) -> dict[str, dict[str, float | None]]:
    """For each fraction f of the best single's score: the cheapest reaching point's cost, also as a
    fraction of the best single's cost. Keys are `"0.95"`, `"0.98"`, `"1.0"`."""
    out: dict[str, dict[str, float | None]] = {}
    for f in fractions:
        p = cost_at_quality(points, f * best.score)
        cost = None if p is None else p.cost_usd
        frac = None if cost is None or not best.cost_usd else cost / best.cost_usd
        out[repr(float(f))] = {"cost_usd": cost, "fraction_of_best_single": frac, "score": None if p is None else p.score}
    return out
