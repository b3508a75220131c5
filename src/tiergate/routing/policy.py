"""Routing policies: from each candidate's predicted quality and estimated cost to one choice.

- Quality target (`auto:cost`, `auto:balanced`, `auto:quality`, or a request's own target t in (0, 1]):
  among the eligible candidates, the cheapest whose predicted quality is at least t x the best eligible
  candidate's predicted quality (ties: the higher predicted quality).
- Cost cap (a request's `cost_cap_usd`): the best predicted quality whose estimated cost is at most the
  cap; when no candidate fits under the cap, the cheapest one (the reason says so).
- Both: the target rule applied to the candidates under the cap.

The named targets were tuned out of fold on the dev outcome files (docs/routing-model.md): `quality`
keeps ~98-99% of the best single candidate's measured score on LiveCodeBench, `balanced` ~95-97%,
`cost` trades more quality for cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

POLICY_TARGETS: dict[str, float] = {"quality": 0.98, "balanced": 0.95, "cost": 0.85}


class PolicyError(ValueError):
    """An unknown policy name or an out-of-range target/cap (the message says which values work)."""


def resolve_target(policy: str | None, quality_target: float | None) -> float | None:
    """The quality target for a policy name ("balanced", "auto:balanced") or an explicit target."""
    if quality_target is not None:
        if not 0.0 < float(quality_target) <= 1.0:
            raise PolicyError(f"quality_target must be in (0, 1], got {quality_target!r}")
        return float(quality_target)
    if policy is None:
        return None
    name = policy.removeprefix("auto:").removeprefix("auto")
    if name == "":
        name = "balanced"
    if name not in POLICY_TARGETS:
        raise PolicyError(
            f"unknown routing policy {policy!r}; use one of "
            + ", ".join(f"auto:{k}" for k in POLICY_TARGETS) + " or set quality_target"
        )
    return POLICY_TARGETS[name]


@dataclass(frozen=True)
class Choice:
    index: int
    reason: str


def choose(
    names: Sequence[str],
    quality: Sequence[float],
    cost: Sequence[float],
    *,
    target: float | None,
    cost_cap: float | None = None,
) -> Choice:
    """Pick one of the candidates (all assumed eligible). `names` only feed the reason string."""
    n = len(names)
    if n == 0:
        raise PolicyError("no eligible candidate to route to")
    q = np.asarray(quality, dtype=float)
    c = np.nan_to_num(np.asarray(cost, dtype=float), nan=np.inf)
    pool = np.arange(n)
    cap_note = ""
    if cost_cap is not None:
        under = pool[c <= cost_cap]
        if under.size == 0:
            j = int(np.argmin(c))
            return Choice(j, f"no candidate under the cost cap ${cost_cap:.6g}: cheapest ({names[j]} "
                             f"est ${c[j]:.6g})")
        pool = under
        cap_note = f" under cap ${cost_cap:.6g}"
        if target is None:
            j = int(pool[np.lexsort((c[pool], -q[pool]))[0]])
            return Choice(j, f"best predicted quality{cap_note} ({names[j]} {q[j]:.3f}, est ${c[j]:.6g})")
    if target is None:
        j = int(np.lexsort((c, -q))[0])
        return Choice(j, f"best predicted quality ({names[j]} {q[j]:.3f})")
    best = int(pool[np.lexsort((c[pool], -q[pool]))[0]])
    ok = pool[q[pool] >= target * q[best] - 1e-12]
    j = int(ok[np.lexsort((-q[ok], c[ok]))[0]])
    if j == best:
        return Choice(j, f"best predicted{cap_note} ({names[j]} {q[j]:.3f}); nothing cheaper within "
                         f"{target:.0%} of it")
    return Choice(j, f"cheapest within {target:.0%} of best predicted{cap_note} ({names[best]} {q[best]:.3f}): "
                     f"{names[j]} {q[j]:.3f}, est ${c[j]:.6g} vs ${c[best]:.6g}")


def choose_batch(quality: np.ndarray, cost: np.ndarray, target: float) -> np.ndarray:
    """Vectorised target rule for evaluation: (n, k) predicted quality and estimated cost -> (n,) index."""
    q = np.asarray(quality, dtype=float)
    c = np.nan_to_num(np.asarray(cost, dtype=float), nan=np.inf)
    best = q.max(axis=1, keepdims=True)
    ok = q >= target * best - 1e-12
    # cheapest among ok; ties broken by higher quality (tiny epsilon on cost).
    key = np.where(ok, c - 1e-15 * q, np.inf)
    return np.argmin(key, axis=1)


def two_model_score(p_strong: np.ndarray, p_weak: np.ndarray) -> np.ndarray:
    """RouteLLM's s(p) for a strong/weak pair: the predicted gain of the strong model over the weak one.

    A prompt both answer well or both fail gains nothing from the strong model; the score is highest
    where the weak model is predicted to fail and the strong one to succeed.
    """
    return np.asarray(p_strong, dtype=float) - np.asarray(p_weak, dtype=float)
