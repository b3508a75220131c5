"""Prompt difficulty learned from many models' outcomes, as a transferable routing signal.

- `row_difficulty`: per training row, a latent difficulty. `mean`: 1 - mean score over the models the
  row's file scored, z-scored within the file. `irt`: a Rasch-style fit per file, logit P(m ok on p) =
  theta_m - d_p (alternating Newton steps with a weak prior), d z-scored within the file.
- `within_centre`: features minus their own file's mean, so a regressor learns what makes a prompt
  harder *than others of its benchmark* (the part that carries to an unseen benchmark), not which
  benchmark it is.
- `DifficultyRegressor`: ridge (closed form) from within-file-centred, standardised features to the
  within-file difficulty, each file weighted equally.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tiergate.routing.data import OutcomeRow


def _files(rows: list[OutcomeRow]) -> dict[str, list[int]]:
    g: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        g[r.source].append(i)
    return g


def _z(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / (v.std() + 1e-9)


def row_difficulty(rows: list[OutcomeRow], how: str = "mean", only: tuple[str, ...] | None = None) -> np.ndarray:
    """Within-file z-scored difficulty per row (higher = harder). `only`: restrict to these models
    (rows scoring none of them get NaN)."""
    d = np.full(len(rows), np.nan)
    for idx in _files(rows).values():
        models = sorted({k for i in idx for k in rows[i].outcomes if only is None or k in only})
        if not models:
            continue
        col = {m: j for j, m in enumerate(models)}
        Y = np.full((len(idx), len(models)), np.nan)
        for a, i in enumerate(idx):
            for k, o in rows[i].outcomes.items():
                if k in col:
                    Y[a, col[k]] = o.score
        seen = ~np.isnan(Y)
        ok = seen.any(1)
        if how == "mean" or len(models) < 3:
            raw = 1 - np.nanmean(np.where(seen, Y, np.nan)[ok], axis=1)
        elif how == "irt":
            raw = _rasch(np.nan_to_num(Y[ok]), seen[ok])
        else:
            raise ValueError(how)
        d[np.asarray(idx)[ok]] = _z(raw)
    return d


def _rasch(Y: np.ndarray, seen: np.ndarray, iters: int = 30, prior: float = 0.5) -> np.ndarray:
    """Difficulty d_p of logit P = theta_m - d_p, Gaussian prior (precision `prior`) on d and theta."""
    n, m = Y.shape
    th, d = np.zeros(m), np.zeros(n)
    W = seen.astype(float)
    for _ in range(iters):
        P = 1 / (1 + np.exp(-(th[None, :] - d[:, None])))
        g = ((Y - P) * W).sum(0) - prior * th
        h = (P * (1 - P) * W).sum(0) + prior
        th += g / h
        P = 1 / (1 + np.exp(-(th[None, :] - d[:, None])))
        g = (-(Y - P) * W).sum(1) - prior * d
        h = (P * (1 - P) * W).sum(1) + prior
        d += g / h
    return d


def within_centre(X: np.ndarray, rows: list[OutcomeRow]) -> np.ndarray:
    Xc = np.array(X, dtype=np.float64, copy=True)
    for idx in _files(rows).values():
        Xc[idx] -= Xc[idx].mean(0)
    return Xc


class DifficultyRegressor:
    """Ridge from within-file-centred features to within-file difficulty (files weighted equally)."""

    def __init__(self, alpha: float = 10.0) -> None:
        self.alpha = alpha

    def fit(self, X: np.ndarray, rows: list[OutcomeRow], y: np.ndarray) -> DifficultyRegressor:
        ok = ~np.isnan(y)
        Xc = within_centre(X, rows)
        self.scale = Xc[ok].std(0) + 1e-6
        Z = Xc / self.scale
        files = _files(rows)
        w = np.zeros(len(rows))
        for idx in files.values():
            ii = np.asarray(idx)[ok[idx]]
            if len(ii):
                w[ii] = 1.0 / len(ii)
        w = w / w.sum() * ok.sum()
        Zk, yk, wk = Z[ok], y[ok], w[ok]
        A = (Zk * wk[:, None]).T @ Zk + self.alpha * np.eye(Z.shape[1])
        self.coef = np.linalg.solve(A, (Zk * wk[:, None]).T @ yk)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, np.float64) / self.scale) @ self.coef  # shift-free: ranking within a file
