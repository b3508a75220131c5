"""LiveCodeBench dev files, 5-fold out of fold by prompt (`evaluate.kfold_splits`, seed 0): the cost, as a
fraction of the best single priced candidate's, at which the serving policy (cheapest candidate within
t x the best predicted score, t swept; `evaluate.score_predictions`) reaches 98% of the best single's
mean score; for all priced candidates and for the o-series + gpt-4o-mini subset.

Methods produce an (n, k) matrix of predicted scores, each fold fitted on its training prompts only.
`irt*` methods also use, for the *training* prompts, the other snapshot's models (same problems, joined
on `meta.question_id`): more models per prompt make the latent difficulty sharper; no test prompt's
outcome is ever used.

    python scripts/router_research/lcb_kfold.py --methods mean,lr,knn,irt,irt-gbm
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import O_SERIES, E, all_rows, by_source, cost_at, feature_matrix, fmt
from difficulty import _rasch
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge


def joint_outcomes(rows_all, rows):
    """Per row: the union of both snapshots' outcomes for the same problem (model keys prefixed by file
    when they clash, e.g. deepseek-v3, which was re-run)."""
    by_q: dict[str, dict[str, float]] = {}
    for r in rows_all:
        if r.source.startswith("livecodebench"):
            d = by_q.setdefault(str(r.meta["question_id"]), {})
            for k, o in r.outcomes.items():
                d[f"{r.source}:{k}"] = o.score
    keys = sorted({k for d in by_q.values() for k in d})
    Y = np.full((len(rows), len(keys)), np.nan)
    col = {k: j for j, k in enumerate(keys)}
    for i, r in enumerate(rows):
        for k, v in by_q[str(r.meta["question_id"])].items():
            Y[i, col[k]] = v
    return Y


def latent_difficulty(Y: np.ndarray) -> np.ndarray:
    seen = ~np.isnan(Y)
    return _rasch(np.nan_to_num(Y), seen, prior=0.3)


def difficulty_regression(kind, Z, texts, a, b, d_a):
    """Predicted difficulty of rows `b` from a regressor fitted on rows `a` (global indices)."""
    from sklearn.linear_model import RidgeCV

    alphas = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
    if kind == "irt":
        return Ridge(alpha=300.0).fit(Z[a], d_a).predict(Z[b])
    if kind == "irt-gbm":
        return HistGradientBoostingRegressor(max_iter=150, learning_rate=0.05, max_leaf_nodes=15,
                                             min_samples_leaf=20, l2_regularization=1.0).fit(Z[a], d_a).predict(Z[b])
    dense = RidgeCV(alphas=alphas).fit(Z[a], d_a).predict(Z[b])
    if kind in ("irt-cv", "irt2", "irt4"):
        return dense
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    A = vec.fit_transform([texts[i] for i in a])
    words = RidgeCV(alphas=(0.3, 1.0, 3.0, 10.0, 30.0)).fit(A, d_a).predict(vec.transform([texts[i] for i in b]))
    if kind == "irt5":
        return np.stack([dense, words], axis=1)
    return 0.5 * dense + 0.5 * words


def fit_predict(method, X, S, Yj, tr, te, rows):
    """Predicted (len(te), k) scores for the candidates' score matrix S, trained on `tr` only."""
    name, _, arg = method.partition(":")
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
    Z = (X - mu) / sd
    if name == "mean":
        return np.tile(S[tr].mean(0), (len(te), 1))
    if name == "lr":  # per-candidate ridge on the features
        return np.clip(Ridge(alpha=float(arg or 300.0)).fit(Z[tr], S[tr]).predict(Z[te]), 0, 1)
    if name == "meta-ceiling":  # NOT deployable: per-candidate mean score of the training prompts with the same
        # meta.difficulty (easy/medium/hard): what a perfect difficulty-class predictor would give
        md = np.array([r.meta["difficulty"] for r in rows])
        return np.stack([S[tr][md[tr] == md[i]].mean(0) for i in te])
    if name == "knn":  # per-candidate mean over the k nearest training prompts (cosine on the static embedding)
        k = int(arg or 50)
        Em = feature_matrix(rows, ("static",))
        sim = Em[te] @ Em[tr].T
        idx = np.argpartition(-sim, k, axis=1)[:, :k]
        return S[tr][idx].mean(1)
    if name in ("irt", "irt-gbm", "irt-cv", "irt2", "irt3", "irt4", "irt5"):
        # 1) latent difficulty of every training prompt from all models of both snapshots;
        # 2) regressor features -> difficulty; cross-fitted predictions on the training prompts;
        # 3) per-candidate logistic link score ~ predicted difficulty (calibrated on cross-fitted d-hat).
        d = latent_difficulty(Yj[tr])
        sub = [rows[i] for i in tr]

        texts = [r.prompt for r in rows]
        tr = np.asarray(tr)
        dhat_tr = np.empty((len(tr), 2)) if name == "irt5" else np.empty(len(tr))
        for a, b in E.kfold_splits(sub, 5, 1):
            dhat_tr[b] = difficulty_regression(name, Z, texts, tr[a], tr[b], d[a])
        dhat_te = difficulty_regression(name, Z, texts, tr, te, d)
        out = np.empty((len(te), S.shape[1]))
        for j in range(S.shape[1]):
            y = S[tr, j]
            # soft labels: duplicate rows with weights score / 1 - score (pass@1 in steps of 0.1)
            L_tr, L_te = dhat_tr.reshape(len(tr), -1), dhat_te.reshape(len(te), -1)
            if name in ("irt2", "irt3", "irt5"):  # link also sees the platform (LeetCode starter code vs stdin)
                P = feature_matrix(rows, ("extra",))[:, 6:8]
                L_tr, L_te = np.hstack([L_tr, P[tr]]), np.hstack([L_te, P[te]])
            if name == "irt4":  # link sees platform, prompt length and the largest constraint power
                P = np.hstack([feature_matrix(rows, ("extra",))[:, [6, 7, 0]], feature_matrix(rows, ("struct",))[:, :1]])
                P = (P - P[tr].mean(0)) / (P[tr].std(0) + 1e-6)
                L_tr, L_te = np.hstack([L_tr, P[tr]]), np.hstack([L_te, P[te]])
            xx = np.concatenate([L_tr, L_tr])
            yy = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
            ww = np.concatenate([y, 1 - y]) + 1e-6
            lr = LogisticRegression(C=10.0).fit(xx, yy, sample_weight=ww)
            out[:, j] = lr.predict_proba(L_te)[:, 1]
        return out
    raise ValueError(method)


JOINT = True
POLICY = "target"


def utility_cost_at(mat, pred, frac=0.98):
    """Like `common.cost_at`, but for the rule argmax_m (predicted score - lam x estimated cost), lam swept
    over a log grid (an alternative to the serving policy, for comparison only)."""
    from tiergate.routing import metrics as M

    est = np.nan_to_num(mat.est_costs, nan=float(np.nanmean(mat.costs)))
    pts = [M.routed_point(np.argmax(pred - lam * est, axis=1), mat.scores, mat.costs)
           for lam in [0.0, *np.logspace(-2, 4, 200)]]
    best = M.best_single(mat.candidates, mat.scores, mat.costs)
    return M.cost_at_quality_table(M.pareto(pts), best, (frac,))[repr(float(frac))]["fraction_of_best_single"]


def run(source, methods, feats, seed=0):
    rows_all = all_rows()
    rows = by_source(rows_all, source)
    mat, _unpriced = E.select_candidates(rows, None, None, None)
    rows = mat.rows
    X = feature_matrix(rows, feats)
    Yj = joint_outcomes(rows_all, rows) if JOINT else mat.scores
    folds = E.kfold_splits(rows, 5, seed)
    res = {}
    for m in methods:
        t = time.time()
        pred = np.empty(mat.scores.shape)
        for tr, te in folds:
            pred[te] = fit_predict(m, X, mat.scores, Yj, tr, te, rows)
        sub = O_SERIES[f"{source}-dev"]
        cols = [mat.candidates.index(c) for c in sub]
        if POLICY == "utility":
            res[m] = {"all": utility_cost_at(mat, pred), "o-series": utility_cost_at(mat.select(sub), pred[:, cols]),
                      "all95": utility_cost_at(mat, pred, 0.95), "secs": time.time() - t}
        else:
            res[m] = {"all": cost_at(mat, pred), "o-series": cost_at(mat.select(sub), pred[:, cols]),
                      "all95": cost_at(mat, pred, 0.95), "secs": time.time() - t}
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sources", default="livecodebench-o1,livecodebench-o3o4")
    ap.add_argument("--methods", default="mean,lr,knn,irt,irt-gbm")
    ap.add_argument("--feats", default="struct,extra,static")
    ap.add_argument("--own-file-only", action="store_true",
                    help="latent difficulty from the evaluated file's priced candidates only (no other snapshot)")
    ap.add_argument("--policy", default="target", choices=("target", "utility"),
                    help="target: the serving rule (cheapest within t x best); utility: argmax score - lam x cost")
    ap.add_argument("--seeds", default="0", help="fold seeds; figures per seed and their median")
    a = ap.parse_args()
    for src in a.sources.split(","):
        JOINT = not a.own_file_only
        POLICY = a.policy
        seeds = [int(x) for x in a.seeds.split(",")]
        per = [run(src, a.methods.split(","), tuple(a.feats.split(",")), sd) for sd in seeds]
        print(f"{src}-dev 5-fold seeds={a.seeds}, feats={a.feats}: cost at 98% of best single, per seed "
              "(all priced / o-series+4o-mini) -> median; n/r = 98% never reached")
        for m in per[0]:
            cells = " ".join(f"{fmt(p[m]['all'])}/{fmt(p[m]['o-series'])}" for p in per)
            med = [np.median([np.inf if p[m][key] is None else p[m][key] for p in per]) for key in ("all", "o-series")]
            print(f"  {m:10s} {cells}  -> median {fmt(med[0])} / {fmt(med[1])}", flush=True)
