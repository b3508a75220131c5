"""Temporal-split study of the shipped router on the LiveCodeBench dev files: what the held-out files
(problems with contest_date >= 2024-08-01, later and harder than every dev problem) can be expected to show.

    nice -n 10 .venv/bin/python scripts/router_research/lcb_temporal.py [--test-fracs 0.30,0.45]
        [--kfold-seeds 0] [--json OUT.json] [--variant NAME ...] [--save-preds DIR]
    .venv/bin/python scripts/router_research/lcb_temporal.py --analyse DIR [--hard-shares 0.4,0.5]

(~25 min on the 2 shared cores for both files, two cuts, one fold seed: 14 fits of ~95 s.)

For each LiveCodeBench dev file and each cut (the test part = the last `frac` of the file's rows by
`meta.contest_date`, the cut placed on a date boundary):
- **temporal**: the shipped learner (`routing.quality.QualityModel`, default config, fitted on every
  candidate) is trained exactly as the shipped router is (all dev files) minus: the file's rows on or
  after the cut, the other LiveCodeBench snapshot's rows of those problems (joined on
  `meta.question_id` and on the normalised prompt, and every sibling row dated on or after the cut), and
  rows of other benchmarks sharing a 10-word passage with a test prompt (`evaluate._extra_keep`, the
  k-fold rule); it predicts the test part;
- **5-fold**: the out-of-fold predictions of `bench/router_eval.py` (`evaluate.kfold_splits` +
  `evaluate._extra_keep`, same features, same learner), scored on the *same test rows*;
- **mean**: each candidate's mean score on the file's training part (no per-prompt signal), same rule;
- the singles on the test rows.
All are scored with `evaluate.score_predictions` on the test rows: cost at 98% / 95% of the best single
(the quality target t swept on the test rows, as everywhere in this project) and the router's default
point (t = balanced), for all priced candidates and for the o-series + gpt-4o-mini subset.

Diagnostics (printed per file and cut): the latent difficulty (Rasch, `routing.difficulty.rasch`, fitted
on the whole file so train and test share a scale) vs the component's predicted difficulty (mean shift,
Spearman within the test part), per-candidate calibration (mean predicted vs actual on the test part),
and the shift of the prompt features (tokens, platform mix, LiveCodeBench's own difficulty label).

`--variant` adds prototype fixes (isolated here; nothing in src/ changes), scored on the same splits and
from the same fits: see `VARIANTS`. `--analyse DIR` reads the prediction matrices that `--save-preds DIR`
wrote: per-candidate rank correlation on the test part, the router's choices at the 98% point, and (with
`--hard-shares`) the cost at 98% with the test rows reweighted to a larger share of LiveCodeBench's
`hard` label - a crude stand-in for a harder period.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tiergate.routing import difficulty as D
from tiergate.routing import evaluate as E
from tiergate.routing.data import OutcomeRow, dev_files, load_outcomes
from tiergate.routing.quality import QualityModel
from tiergate.routing.tokens_model import is_reasoning_model

LCB = ("livecodebench-o1-dev", "livecodebench-o3o4-dev")
O_SERIES = {
    "livecodebench-o1-dev": ["o1@low", "o1@medium", "o1@high", "o1-mini", "o1-preview", "gpt-4o-mini"],
    "livecodebench-o3o4-dev": ["o3-mini@low", "o3-mini@medium", "o3-mini@high", "o4-mini@low",
                               "o4-mini@medium", "o4-mini@high", "gpt-4o-mini"],
}


# ------------------------------------------------------------------------------------------ variants
# A variant takes the fitted shipped model and its training rows/features and returns a model to predict
# with (the shipped fit is shared: only the difficulty components are refitted, which takes a second).


def _years(row: OutcomeRow) -> float:
    return float(np.datetime64(row.meta["contest_date"], "D").astype(np.int64)) / 365.25


def weighted_soft_logistic(X, y, w, C=10.0, iters=25):
    """`routing.difficulty.soft_logistic` with row weights."""
    return D.soft_logistic(X, y, C, iters, row_weights=w)


def logistic_with_se(X, y, C=10.0, iters=25):
    """(coefficients, standard errors): `routing.difficulty.soft_logistic` (same penalty) with the SEs from
    the inverse of the penalised Fisher information at the fit."""
    A = np.hstack([np.ones((len(X), 1)), X])
    beta = weighted_soft_logistic(X, y, np.ones(len(X)), C, iters)
    p = 1 / (1 + np.exp(-np.clip(A @ beta, -30, 30)))
    reg = np.full(A.shape[1], 1.0 / C)
    reg[0] = 1e-6
    H = (A * (p * (1 - p))[:, None]).T @ A + np.diag(reg)
    return beta, np.sqrt(np.diag(np.linalg.inv(H)))


_REASONING_NAMES = ("o1-preview", "qwq", "thinking", "deepseek-r1", "-r1")


def is_reasoning_key(key: str) -> bool:
    """A candidate key that names a reasoning model: any `model@effort` key, a model that
    `tokens_model.is_reasoning_model` recognises (o-series, gpt-5), or a known reasoning name without
    efforts (o1-preview, QwQ, R1, *thinking*)."""
    model = key.split("@")[0]
    return "@" in key or is_reasoning_model(model) or any(n in model.lower() for n in _REASONING_NAMES)


def date_slope_link(comp, link_in, Y, seen, age, cands, mode, min_z=2.0):
    """The shipped link `comp.link`, with a date slope for some candidates: the link refitted with
    (contest year - latest training year) as an extra input and then used at age 0 (the latest training
    date), i.e. without its date column. `date-nonreasoning`: for every candidate that is not a reasoning
    model (`is_reasoning_key`); `date-significant`: for every candidate whose date slope is more than
    `min_z` standard errors from zero (Fisher information of the logistic fit). Returns (link, {candidate:
    (slope, se)} of the candidates that got one)."""
    link = np.array(comp.link, np.float64, copy=True)
    A = np.hstack([link_in, age[:, None]])
    moved = {}
    for j, cand in enumerate(cands):
        if mode == "date-nonreasoning" and is_reasoning_key(cand):
            continue
        beta, se = logistic_with_se(A[seen[:, j]], Y[seen[:, j], j], D.DifficultyConfig().link_c)
        if mode == "date-significant" and abs(beta[-1]) <= min_z * se[-1]:
            continue
        link[j] = beta[:-1]
        moved[cand] = (float(beta[-1]), float(se[-1]))
    return link, moved


def align_recent_level(link, link_in, Y, seen, dates, share, shrink=50.0, min_z=0.0):
    """`link` with each candidate's intercept shifted so that its predicted level matches its mean score on
    the latest-dated `share` of its rows (ties at the date boundary included), shrunk by n / (n + `shrink`)
    and left alone unless the mean residual (observed - predicted) is at least `min_z` standard errors
    (sqrt(mean p(1 - p) / n)). `link_in` holds the cross-fitted predicted difficulty the link was fitted on.
    Idea: older non-reasoning models decline on later problems (likely contamination of the older ones),
    so a candidate's level should follow its latest training problems. Tried and rejected
    in docs/router-research.md, temporal section, "Recent-level alignment")."""
    out = np.array(link, np.float64, copy=True)
    A = np.hstack([np.ones((len(link_in), 1)), link_in])
    dates = np.asarray(dates)
    for j in range(out.shape[0]):
        rows = np.flatnonzero(seen[:, j])
        if len(rows) == 0:
            continue
        ordered = np.sort(dates[rows])
        first = ordered[min(len(ordered) - 1, int(np.floor((1 - share) * len(ordered))))]
        recent = rows[dates[rows] >= first]
        z = A[recent] @ out[j]
        p = 1 / (1 + np.exp(-np.clip(z, -30, 30)))
        y = Y[recent, j]
        n = len(recent)
        se = np.sqrt(max(float(np.mean(p * (1 - p))), 1e-9) / n)
        if abs(y.mean() - p.mean()) < min_z * se:
            continue
        target = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
        delta = 0.0  # Newton on mean(sigmoid(z + delta)) = target
        for _ in range(20):
            q = 1 / (1 + np.exp(-np.clip(z + delta, -30, 30)))
            step = (q.mean() - target) / max(float(np.mean(q * (1 - q))), 1e-6)
            delta -= step
            if abs(step) < 1e-8:
                break
        out[j, 0] += delta * n / (n + shrink)
    return out


def refit_component(comp: D.Component, rows, X, mode: str, tau: float = 0.5, share: float = 0.25,
                    shrink: float = 50.0, min_z: float = 0.0) -> D.Component:
    """`routing.difficulty.fit_component` again (same Rasch, same cross-fitted difficulty, same final
    regressor), with the link changed: `date` adds (contest year - latest training year) as a link input
    and predicts at age 0 (the latest training date), i.e. keeps the link without its date column; `recency` weights link rows by exp(-(latest - date) / tau years); `align` keeps the shipped link and
    moves its intercepts to the latest `share` of the rows (`align_recent_level`); `date-nonreasoning` and
    `date-significant` keep the shipped link except for some candidates' date slope (`date_slope_link`)."""
    cfg = D.DifficultyConfig()
    cands, Y, seen = D._score_matrix(rows, cfg)
    assert cands == comp.candidates
    d = D.rasch(Y, seen, prior=cfg.rasch_prior)
    X = np.asarray(X[:, : len(comp.mean)], np.float64)
    mean, std = X.mean(0), X.std(0) + 1e-6
    dhat = D.cross_fitted_difficulty((X - mean) / std, d, cfg)
    age = np.array([_years(r) for r in rows])
    age = age - age.max()  # <= 0, years before the latest training problem
    link_in = np.hstack([dhat[:, None], X[:, D._LINK_COLS]])
    if mode in ("date-nonreasoning", "date-significant"):
        link, moved = date_slope_link(comp, link_in, Y, seen, age, cands, mode)
        print(f"  {comp.source} {mode}: date slope (logit/year, SE) " + ", ".join(
            f"{c} {b:+.2f} ({s:.2f})" for c, (b, s) in moved.items()), file=sys.stderr)
        return D.Component(comp.source, comp.candidates, comp.mean, comp.std, comp.coef, comp.intercept, link,
                           comp.skill, comp.typical_resemblance)
    if mode == "date":
        link_in = np.hstack([link_in, age[:, None]])
        w = np.ones(len(rows))
    elif mode == "align":
        w = np.ones(len(rows))
    else:
        w = np.exp(age / tau)
    link = np.stack([weighted_soft_logistic(link_in[seen[:, j]], Y[seen[:, j], j], w[seen[:, j]], cfg.link_c)
                     for j in range(len(cands))])
    if mode == "date":  # predict at the latest training date: age 0, the date column drops out
        link = link[:, :-1]
    if mode == "align":
        link = align_recent_level(link, link_in, Y, seen, [r.meta["contest_date"] for r in rows], share, shrink,
                                  min_z)
    return D.Component(comp.source, comp.candidates, comp.mean, comp.std, comp.coef, comp.intercept, link, comp.skill,
               comp.typical_resemblance)


def _refitted(mode: str, **kw) -> Callable:
    def variant(model, train_rows, X):
        dm = model.difficulty_model
        if dm is None:
            return model
        new = copy.copy(model)
        new.difficulty_model = D.DifficultyModel(config=dm.config)
        for comp in dm.components:
            if not comp.source.startswith("livecodebench"):  # dated files only
                new.difficulty_model.components.append(comp)
                continue
            idx = [i for i, r in enumerate(train_rows) if r.source == comp.source]
            new.difficulty_model.components.append(
                refit_component(comp, [train_rows[i] for i in idx], X[idx], mode, **kw))
        return new
    return variant


VARIANTS: dict[str, Callable] = {
    "shipped": lambda model, rows, X: model,
    "align-0.25-k50": _refitted("align", share=0.25, shrink=50.0),
    "align-0.35-k50": _refitted("align", share=0.35, shrink=50.0),
    "align-0.25-k100": _refitted("align", share=0.25, shrink=100.0),
    "align-0.35-k100": _refitted("align", share=0.35, shrink=100.0),
    "align-0.25-k50-z2": _refitted("align", share=0.25, shrink=50.0, min_z=2.0),
    "align-0.35-k50-z2": _refitted("align", share=0.35, shrink=50.0, min_z=2.0),
    "date-link": _refitted("date"),
    "date-nonreasoning": _refitted("date-nonreasoning"),
    "date-significant": _refitted("date-significant"),
    "recency-0.5y": _refitted("recency", tau=0.5),
    "recency-1y": _refitted("recency", tau=1.0),
}


# ------------------------------------------------------------------------------------------ splits


def cut_date(rows: Sequence[OutcomeRow], frac: float) -> str:
    """The date boundary that puts the share of rows on or after it closest to `frac`."""
    dates = sorted(r.meta["contest_date"] for r in rows)
    best = min(sorted(set(dates)), key=lambda d: abs(sum(x >= d for x in dates) / len(dates) - frac))
    return best


def temporal_training(file_rows, extra, sibling, test_idx, cut) -> tuple[list[int], np.ndarray]:
    """(own training indices, keep mask over `extra`): the shipped router's training rows minus
    everything that shares a test problem or (sibling snapshot) lies on or after the cut."""
    test_rows = [file_rows[i] for i in test_idx]
    keep = E._extra_keep(extra, sibling, test_rows)
    test_qids = {r.meta.get("question_id") for r in test_rows}
    for i in np.flatnonzero(sibling):
        r = extra[i]
        if r.meta.get("question_id") in test_qids or r.meta.get("contest_date", "") >= cut:
            keep[i] = False
    test_set = set(test_idx.tolist())
    own = [i for i in range(len(file_rows)) if i not in test_set]
    return own, keep


# ------------------------------------------------------------------------------------------ fitting


@dataclass
class FileData:
    """One evaluated file's rows and features, and the other dev rows (`extra`) with theirs."""

    rows: list[OutcomeRow]
    X: np.ndarray
    extra: list[OutcomeRow]
    X_extra: np.ndarray
    texts: list[str]
    candidates: list[str]
    extractor: object


def fit_predict(ctx: FileData, variants: Sequence[str], own_idx, keep, test_idx) -> dict[str, tuple]:
    """variant -> (model, (n_test, k) predictions), all from one shipped fit on the file's `own_idx` rows
    plus the `keep`-masked other dev rows."""
    train_rows = [ctx.rows[i] for i in own_idx] + [r for r, k in zip(ctx.extra, keep, strict=True) if k]
    X = np.vstack([ctx.X[own_idx], ctx.X_extra[keep]])
    shipped = QualityModel(ctx.extractor).fit(train_rows, None, features=X)
    out = {}
    for variant in variants:
        model = VARIANTS[variant](shipped, train_rows, X)
        p = model.predict_features(ctx.X[test_idx], [ctx.texts[i] for i in test_idx], only=set(ctx.candidates))
        out[variant] = model, np.column_stack([p[c] for c in ctx.candidates])
    return out


# ------------------------------------------------------------------------------------------ scoring


def score(mat, pred: np.ndarray, name: str) -> dict:
    out = {}
    for subset, cands in (("all", mat.candidates), ("o", O_SERIES[name])):
        cols = [mat.candidates.index(c) for c in cands]
        s = E.score_predictions(mat.select(cands), pred[:, cols]).summary
        b = s["best_single"]
        cq = s["cost_at_quality"]
        out[subset] = {
            "best": b["candidate"], "best_score": b["score"], "best_cost": b["cost_usd"],
            "c98": cq["0.98"]["fraction_of_best_single"], "c95": cq["0.95"]["fraction_of_best_single"],
            "default_score": s["router"]["score"] / b["score"], "default_cost": s["router"]["cost_usd"] / b["cost_usd"],
            "oracle": s["oracle"]["cost_usd"] / b["cost_usd"],
        }
    return out


def fmt(v: float | None) -> str:
    return "n.r." if v is None else f"{100 * v:.1f}%"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


# ------------------------------------------------------------------------------------------ study


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test-fracs", default="0.30,0.45")
    ap.add_argument("--kfold-seeds", default="0", help="fold seeds of the 5-fold comparison ('' = none)")
    ap.add_argument("--variant", action="append", default=None, help=f"one of {', '.join(VARIANTS)}")
    ap.add_argument("--files", default=",".join(LCB))
    ap.add_argument("--json", default=None)
    ap.add_argument("--analyse", default=None, help="only analyse a --save-preds directory (no fitting)")
    ap.add_argument("--hard-shares", default="", help="with --analyse: reweight the test rows to these shares of 'hard'")
    ap.add_argument("--save-preds", default=None, help="directory: every prediction matrix as .npz, for analysis")
    args = ap.parse_args(argv)
    if args.analyse:
        analyse(args.analyse, [float(h) for h in args.hard_shares.split(",") if h])
        return 0
    variants = args.variant or ["shipped"]
    fracs = [float(f) for f in args.test_fracs.split(",") if f]
    seeds = [int(s) for s in args.kfold_seeds.split(",") if s]

    t0 = time.perf_counter()
    pool = load_outcomes(dev_files())
    proto = QualityModel()
    feats = proto.features([r.prompt for r in pool])
    print(f"features for {len(pool)} rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    fid = {r.id: i for i, r in enumerate(pool)}
    results: dict = {}
    for name in args.files.split(","):
        src = name.removesuffix("-dev")
        rows = [r for r in pool if r.source == src]
        mat, _ = E.select_candidates(rows, None, None, None)
        file_rows = mat.rows
        Xf = feats[[fid[r.id] for r in file_rows]]
        extra = [r for r in pool if r.source != src]
        Xe = feats[[fid[r.id] for r in extra]]
        sibling = np.array([E.family_of(r.source) == "livecodebench" for r in extra], dtype=bool)
        cands = mat.candidates
        texts = [r.prompt for r in file_rows]
        dates = np.array([r.meta["contest_date"] for r in file_rows])
        # latent difficulty on the whole file (one scale for train and test): diagnostics only
        sm = D._score_matrix(file_rows, D.DifficultyConfig())
        d_true = D.rasch(sm[1], sm[2]) if sm is not None else None
        results[name] = {}

        ctx = FileData(file_rows, Xf, extra, Xe, texts, cands, proto.extractor)

        # 5-fold out-of-fold predictions over the whole file (as bench/router_eval.py)
        oof: dict[tuple[str, int], np.ndarray] = {}
        oof_dhat: dict[tuple[str, int], np.ndarray] = {}
        for seed in seeds:
            preds = {v: np.empty((len(file_rows), len(cands))) for v in variants}
            dhs = {v: np.full(len(file_rows), np.nan) for v in variants}
            for train_idx, test_idx in E.kfold_splits(file_rows, 5, seed):
                keep = E._extra_keep(extra, sibling, [file_rows[i] for i in test_idx])
                for variant, (model, p) in fit_predict(ctx, variants, train_idx, keep, test_idx).items():
                    preds[variant][test_idx] = p
                    dhs[variant][test_idx] = _component_dhat(model, src, Xf[test_idx])
            for variant in variants:
                oof[variant, seed], oof_dhat[variant, seed] = preds[variant], dhs[variant]
                full = score(mat, preds[variant], name)
                results[name][f"kfold-all/{variant}/seed{seed}"] = full
                print(f"{name} 5-fold seed {seed} {variant}, all rows: all {fmt(full['all']['c98'])} "
                      f"o {fmt(full['o']['c98'])} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

        for frac in fracs:
            cut = cut_date(file_rows, frac)
            test_idx = np.flatnonzero(dates >= cut)
            own_idx, keep = temporal_training(file_rows, extra, sibling, test_idx, cut)
            tmat = mat.subset(test_idx)
            key = f"test>={cut}"
            res: dict = {"cut": cut, "n_test": len(test_idx), "n_train_own": len(own_idx),
                         "n_train_sibling": int((keep & sibling).sum()), "n_train_total": len(own_idx) + int(keep.sum())}
            mb = E.MeanScoreBaseline().fit([file_rows[i] for i in own_idx], cands)
            res["mean"] = score(tmat, np.column_stack([mb.predict(["x"] * len(test_idx))[c] for c in cands]), name)
            res["singles"] = {c: {"score": float(tmat.scores[:, j].mean()),
                                  "cost": float(tmat.costs[:, j].mean())} for j, c in enumerate(cands)}
            fitted = fit_predict(ctx, variants, own_idx, keep, test_idx)
            for variant in variants:
                model, pred = fitted[variant]
                res[f"temporal/{variant}"] = score(tmat, pred, name)
                res[f"diag/{variant}"] = _diagnose(model, src, Xf, own_idx, test_idx, pred, tmat, d_true,
                                                   file_rows, cands)
                for seed in seeds:
                    res[f"kfold/{variant}/seed{seed}"] = score(tmat, oof[variant, seed][test_idx], name)
                    dh = oof_dhat[variant, seed][test_idx]
                    if d_true is not None and np.isfinite(dh).all():
                        res[f"diag/{variant}"][f"kfold_seed{seed}_spearman_test"] = spearman(dh, d_true[test_idx])
                print(f"{name} {key} {variant}: temporal all {fmt(res[f'temporal/{variant}']['all']['c98'])} "
                      f"o {fmt(res[f'temporal/{variant}']['o']['c98'])} ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr)
            results[name][key] = res
            if args.save_preds:
                arrays = {f"temporal/{v}": fitted[v][1] for v in variants}
                arrays.update({f"kfold/{v}/seed{s}": oof[v, s][test_idx] for v in variants for s in seeds})
                np.savez(f"{args.save_preds}/{name}_{cut}.npz", test_idx=test_idx, scores=tmat.scores,
                         costs=tmat.costs, est=tmat.est_costs, candidates=np.array(cands), **arrays)
    _print(results, variants, seeds)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=float)
    return 0


def _component_dhat(model, src: str, X: np.ndarray) -> np.ndarray:
    dm = getattr(model, "difficulty_model", None)
    for c in (dm.components if dm is not None else []):
        if c.source == src:
            return c.predicted_difficulty(X)
    return np.full(len(X), np.nan)


def _diagnose(model, src, Xf, own_idx, test_idx, pred, tmat, d_true, file_rows, cands) -> dict:
    out: dict = {}
    own_idx = np.asarray(own_idx)
    if d_true is not None:
        dh_tr, dh_te = _component_dhat(model, src, Xf[own_idx]), _component_dhat(model, src, Xf[test_idx])
        out["d_true_shift"] = float(d_true[test_idx].mean() - d_true[own_idx].mean())
        out["d_true_sd_train"] = float(d_true[own_idx].std())
        out["dhat_shift"] = float(dh_te.mean() - dh_tr.mean())  # in-sample on train: its mean equals the latent mean
        out["spearman_test"] = spearman(dh_te, d_true[test_idx])
        out["spearman_train_insample"] = spearman(dh_tr, d_true[own_idx])
    out["calibration"] = {c: {"pred": float(pred[:, j].mean()), "actual": float(tmat.scores[:, j].mean())}
                          for j, c in enumerate(cands)}
    tr = [file_rows[i] for i in own_idx]
    te = [file_rows[i] for i in test_idx]

    def share(rs, f):
        return float(np.mean([f(r) for r in rs]))

    for label, f in (("tokens", lambda r: r.meta.get("prompt_tokens_o200k", 0)),
                     ("atcoder", lambda r: r.meta.get("platform") == "atcoder"),
                     ("leetcode", lambda r: r.meta.get("platform") == "leetcode"),
                     ("hard", lambda r: r.meta.get("difficulty") == "hard"),
                     ("easy", lambda r: r.meta.get("difficulty") == "easy")):
        out[f"{label}_train"], out[f"{label}_test"] = share(tr, f), share(te, f)
    return out


def _weighted_c98(P, Y, C, est, w, frac=0.98):
    """Cost (fraction of the best single's) at `frac` of the best single, rows weighted by `w`."""
    w = w / w.sum()
    means, costs = w @ Y, w @ C
    bi = int(np.argmax(means - 1e-9 * costs))
    best = None
    for t in E.TARGET_GRID:
        ch = E.policy_choice(P, est, float(t))
        r = np.arange(len(ch))
        q, c = w @ Y[r, ch], w @ C[r, ch]
        if q >= frac * means[bi] and (best is None or c < best[1]):
            best = (float(t), c)
    return bi, means, (None if best is None else best[0]), (None if best is None else best[1] / costs[bi])


def analyse(directory: str, hard_shares: Sequence[float] = ()) -> None:
    """From `--save-preds` files: per prediction set, the rank correlation of predicted and actual score
    per candidate on the test rows, and the router's choices at the cheapest swept target that reaches 98%
    of the best single (share of prompts per candidate, mean actual score of those prompts). With
    `hard_shares`, also the cost at 98% when the test rows are reweighted so that LiveCodeBench's `hard`
    label has that share (a harder test period, as the held-out files are said to be)."""
    import glob

    labels: dict[str, np.ndarray] = {}
    for path in sorted(glob.glob(f"{directory}/*.npz")):
        z = np.load(path)
        cands = [str(c) for c in z["candidates"]]
        Y, C, est = z["scores"], z["costs"], z["est"]
        name = path.split("/")[-1].split("_")[0]
        if hard_shares and name not in labels:
            file_rows = load_outcomes([f for f in dev_files() if f.name.startswith(name)])
            mat, _ = E.select_candidates(file_rows, None, None, None)
            labels[name] = np.array([r.meta.get("difficulty") == "hard" for r in mat.rows])
        for subset, keep in (("all", cands), ("o", O_SERIES[name])):
            cols = [cands.index(c) for c in keep]
            Ys, Cs, Es = Y[:, cols], C[:, cols], est[:, cols]
            bi, means, _, _ = _weighted_c98(Ys[:, :1], Ys, Cs, Es, np.ones(len(Ys)))
            print(f"\n{path.split('/')[-1]} [{subset}] best {keep[bi]} {means[bi]:.3f}")
            hard = labels[name][z["test_idx"]] if hard_shares else None
            for key in (k for k in z.files if "/" in k):
                P = z[key][:, cols]
                rho = {c: spearman(P[:, j], Ys[:, j]) for j, c in enumerate(keep) if Ys[:, j].std() > 0}
                print(f"  {key:<28} rho " + " ".join(f"{c.split('-2024')[0][:14]}={r:.2f}" for c, r in rho.items()))
                _, _, best_t, frac = _weighted_c98(P, Ys, Cs, Es, np.ones(len(Ys)))
                if best_t is None:
                    print("    98%: not reached")
                else:
                    ch = E.policy_choice(P, Es, best_t)
                    shares = [(keep[j], float(np.mean(ch == j)), float(Ys[ch == j, j].mean()))
                              for j in range(len(keep)) if np.any(ch == j)]
                    print(f"    98% at t={best_t:g}, cost {100 * frac:.1f}%: " + ", ".join(
                        f"{c} {100 * sh:.0f}% (score {sc:.2f})" for c, sh, sc in shares))
                for h in hard_shares:
                    w = np.where(hard, h / hard.mean(), (1 - h) / (1 - hard.mean()))
                    hb, hm, _, hf = _weighted_c98(P, Ys, Cs, Es, w)
                    print(f"    hard share {hard.mean():.2f} -> {h:.2f}: best {keep[hb]} {hm[hb]:.3f}, "
                          f"cost at 98% {fmt(hf)}")


def _print(results: dict, variants: Sequence[str], seeds: Sequence[int]) -> None:
    for name, per in results.items():
        print(f"\n## {name}")
        for key, res in per.items():
            if key.startswith("kfold-all"):
                print(f"{key}: all {fmt(res['all']['c98'])} / o {fmt(res['o']['c98'])}")
                continue
            print(f"\n{key}: n_test {res['n_test']}, train own {res['n_train_own']} + sibling "
                  f"{res['n_train_sibling']} (total {res['n_train_total']})")
            b = res["mean"]
            for sub in ("all", "o"):
                print(f"  [{sub}] best single {b[sub]['best']} {b[sub]['best_score']:.3f} "
                      f"${b[sub]['best_cost']:.4f}; oracle cost {fmt(b[sub]['oracle'])}")
            print("  method                    | all: c98   c95    default(q, cost)   | o-series: c98   c95    default(q, cost)")
            rowsets = [("mean (no prompt signal)", res["mean"])]
            for v in variants:
                rowsets.append((f"temporal {v}", res[f"temporal/{v}"]))
                rowsets += [(f"5-fold {v} s{s}", res[f"kfold/{v}/seed{s}"]) for s in seeds]
            for label, r in rowsets:
                cells = []
                for sub in ("all", "o"):
                    x = r[sub]
                    cells.append(f"{fmt(x['c98']):>7} {fmt(x['c95']):>7}  ({100 * x['default_score']:.1f}%, "
                                 f"{100 * x['default_cost']:.1f}%)")
                print(f"  {label:<25} | {cells[0]} | {cells[1]}")
            sing = res["singles"]
            print("  singles on test: " + ", ".join(f"{c} {v['score']:.3f}/${v['cost']:.4f}" for c, v in sing.items()))
            for v in variants:
                d = res[f"diag/{v}"]
                print(f"  diag {v}: " + ", ".join(f"{k} {x:.3f}" for k, x in d.items() if isinstance(x, float)))
                print("    calibration (pred/actual): " + ", ".join(
                    f"{c} {x['pred']:.3f}/{x['actual']:.3f}" for c, x in d["calibration"].items()))


if __name__ == "__main__":
    sys.exit(main())
