"""MMLU (routellm-mmlu, 14,037 uncontaminated prompts), 5-fold by prompt (`evaluate.kfold_splits`, seed 0):
gpt-4-1106-preview vs Mixtral, RouteLLM APGR / CPT(50%) / CPT(80%) on the pooled out-of-fold s(p).

Hyperparameters marked "inner" are chosen per outer fold by a 3-fold CV inside its training rows
(criterion: APGR), so nothing is tuned on the scored fold.

    python scripts/router_research/mmlu_kfold.py --methods knn,tfidf-gain,lr-pair,gain-ridge
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import STRONG, WEAK, E, all_rows, by_source, feature_matrix, two_model
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge

KS = (25, 50, 100, 200, 400)


def knn_scores(Etr, gain, Ete, k, exclude_self=False):
    S = Ete @ Etr.T
    if hasattr(S, "toarray"):  # sparse TF-IDF rows
        S = S.toarray()
    if exclude_self:
        np.fill_diagonal(S, -np.inf)
    idx = np.argpartition(-S, k, axis=1)[:, :k]
    return gain[idx].mean(1)


def knn_inner(Etr, gain, Ete, rows_tr):
    """k chosen by a 3-fold inner CV on the training rows."""
    folds = E.kfold_splits(rows_tr, 3, 1)
    best = {}
    for k in KS:
        s = np.empty(len(gain))
        for a, b in folds:
            s[b] = knn_scores(Etr[a], gain[a], Etr[b], k)
        best[k] = two_model(s, *_sw(rows_tr))["apgr"]
    k = max(best, key=best.get)
    return knn_scores(Etr, gain, Ete, k), k


def _sw(rows):
    return (np.array([r.outcomes[STRONG].score for r in rows]), np.array([r.outcomes[WEAK].score for r in rows]))


def method_scores(m, rows, tr, te, feats):
    st, wk = _sw(rows)
    gain = st - wk
    name, _, arg = m.partition(":")
    if name == "knn":  # mean strong-minus-weak over the k nearest training prompts (cosine), k inner-CV
        if arg == "tfidf":  # cosine on TF-IDF word 1-2 grams (rows are L2-normalised)
            vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000)
            A = vec.fit_transform([rows[i].prompt for i in tr])
            s, k = knn_inner(A, gain[tr], vec.transform([rows[i].prompt for i in te]), [rows[i] for i in tr])
            return s, {"k": k}
        Em = feature_matrix(rows, (arg or "static",))
        s, k = knn_inner(Em[tr], gain[tr], Em[te], [rows[i] for i in tr])
        return s, {"k": k}
    if name == "tfidf-gain":  # ridge on TF-IDF word 1-2 grams, target strong - weak
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000)
        Xa = vec.fit_transform([rows[i].prompt for i in tr])
        r = Ridge(alpha=float(arg or 3.0)).fit(Xa, gain[tr])
        return r.predict(vec.transform([rows[i].prompt for i in te])), {}
    if name == "tfidf-inner":  # tfidf(+struct) ridge on the gain, alpha by 3-fold inner CV
        sub = [rows[i] for i in tr]
        best = {}
        for alpha in (3.0, 10.0, 30.0, 100.0):
            s_in = np.empty(len(tr))
            for a_, b_ in E.kfold_splits(sub, 3, 1):
                s_in[b_] = method_scores(f"{arg or 'tfidf-struct'}:{alpha}", sub, a_, b_, feats)[0]
            best[alpha] = two_model(s_in, st[tr], wk[tr])["apgr"]
        alpha = max(best, key=best.get)
        return method_scores(f"{arg or 'tfidf-struct'}:{alpha}", rows, tr, te, feats)[0], {"alpha": alpha}
    if name in ("tfidf-struct", "tfidf-pair", "tfidf-char"):
        from scipy import sparse

        if name == "tfidf-char":
            vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3, sublinear_tf=True,
                                  max_features=300_000)
        else:
            vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000)
        Xa = vec.fit_transform([rows[i].prompt for i in tr])
        Xb = vec.transform([rows[i].prompt for i in te])
        if name == "tfidf-struct":  # + the structural counts, standardised, weight 0.1 each
            D = feature_matrix(rows, ("struct", "extra"))
            mu, sd = D[tr].mean(0), D[tr].std(0) + 1e-6
            Xa = sparse.hstack([Xa, 0.1 * (D[tr] - mu) / sd]).tocsr()
            Xb = sparse.hstack([Xb, 0.1 * (D[te] - mu) / sd]).tocsr()
        if name == "tfidf-pair":
            C = float(arg or 1.0)
            p = [LogisticRegression(C=C, max_iter=3000).fit(Xa, y[tr] >= 0.5).predict_proba(Xb)[:, 1] for y in (st, wk)]
            return p[0] - p[1], {}
        return Ridge(alpha=float(arg or 3.0)).fit(Xa, gain[tr]).predict(Xb), {}
    X = feature_matrix(rows, feats)
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
    Z = (X - mu) / sd
    if name == "lr-pair":
        C = float(arg or 0.1)
        p = [LogisticRegression(C=C, max_iter=3000).fit(Z[tr], y[tr] >= 0.5).predict_proba(Z[te])[:, 1] for y in (st, wk)]
        return p[0] - p[1], {}
    if name == "gain-ridge":
        return Ridge(alpha=float(arg or 100.0)).fit(Z[tr], gain[tr]).predict(Z[te]), {}
    raise ValueError(m)


def rank(v):
    return np.argsort(np.argsort(v)) / (len(v) - 1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--feats", default="struct,static")
    ap.add_argument("--methods", default="lr-pair,gain-ridge,knn,tfidf-gain")
    ap.add_argument("--seed", type=int, default=0, help="outer fold seed")
    ap.add_argument("--combine", default="", help="rank-average these methods too, e.g. knn+tfidf-gain")
    a = ap.parse_args()
    rows = [r for r in by_source(all_rows(), "routellm-mmlu") if not r.meta.get("routellm_contaminated")]
    st, wk = _sw(rows)
    folds = E.kfold_splits(rows, 5, a.seed)
    feats = tuple(a.feats.split(","))
    oof: dict[str, np.ndarray] = {}
    for m in a.methods.split(","):
        t = time.time()
        s = np.empty(len(rows))
        extra = []
        for tr, te in folds:
            s_te, info = method_scores(m, rows, tr, te, feats)
            s[te] = rank(s_te)  # per-fold ranks: pooled thresholds compare like with like
            extra.append(info)
        oof[m] = s
        v = two_model(s, st, wk)
        print(f"{m:22s} APGR {v['apgr']:.3f} CPT50 {v['cpt50']:.1f}% CPT80 {v['cpt80']:.1f}% {extra if extra[0] else ''}"
              f" ({time.time() - t:.0f}s)", flush=True)
    for combo in filter(None, a.combine.split(";")):
        s = np.mean([oof[p] for p in combo.split("+")], 0)
        v = two_model(s, st, wk)
        print(f"{combo:22s} APGR {v['apgr']:.3f} CPT50 {v['cpt50']:.1f}% CPT80 {v['cpt80']:.1f}%")
