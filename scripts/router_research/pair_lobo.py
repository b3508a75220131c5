"""Two-model (gpt-4-1106-preview vs Mixtral) leave-one-benchmark-out on every file that scores both:
routellm-gsm8k (the target) and, as a validation suite for choosing a recipe without looking at GSM8K,
routellm-mmlu, routerbench-arc-c, routerbench-winogrande, routerbench-mbpp.

For each evaluated benchmark: training rows = every other dev file except the same prompt family,
minus rows sharing a 10-word passage with an evaluated prompt (`evaluate.lobo_training_rows`; for
GSM8K this also removes zeroeval-gsm and 294 dcrouter rows). Nothing is fitted on the evaluated file.

    python scripts/router_research/pair_lobo.py --feats struct,extra --methods gain-ridge,diff-mean
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from common import CACHE, STRONG, WEAK, E, all_rows, by_source, feature_matrix, two_model
from difficulty import DifficultyRegressor, row_difficulty, within_centre
from sklearn.linear_model import LogisticRegression

from tiergate.routing.features import STRUCT_NAMES

NAMES = list(STRUCT_NAMES) + ["maxpow", "samples", "uniqnums", "qwords", "ops", "ratio", "leet", "stdin"]
BENCHES = ["routellm-gsm8k", "routellm-mmlu", "routerbench-arc-c", "routerbench-winogrande", "routerbench-mbpp"]


def _pair_rows(tr):
    return [i for i, r in enumerate(tr) if STRONG in r.outcomes and WEAK in r.outcomes]


def _file_weights(rows, idx):
    cnt: dict[str, int] = {}
    for i in idx:
        cnt[rows[i].source] = cnt.get(rows[i].source, 0) + 1
    w = np.array([1.0 / cnt[rows[i].source] for i in idx])
    return w / w.mean()


def score(method: str, tr, Xtr, Xte) -> np.ndarray:
    """s(p) for the evaluated prompts (higher = send to the strong model)."""
    name, _, arg = method.partition(":")
    if name == "lr-pair":  # plain reference: per-model logistic regression on raw features
        C = float(arg or 0.1)
        out = []
        for m in (STRONG, WEAK):
            idx = [i for i, r in enumerate(tr) if m in r.outcomes]
            y = np.array([tr[i].outcomes[m].score >= 0.5 for i in idx])
            mu, sd = Xtr[idx].mean(0), Xtr[idx].std(0) + 1e-6
            lr = LogisticRegression(C=C, max_iter=3000).fit((Xtr[idx] - mu) / sd, y)
            out.append(lr.predict_proba((Xte - mu) / sd)[:, 1])
        return out[0] - out[1]
    if name in ("gain-ridge", "win-lr"):  # the pair's own label on files scoring both, within-file centred
        alpha = float(arg or 10.0)
        idx = _pair_rows(tr)
        rows = [tr[i] for i in idx]
        Xc = within_centre(Xtr[idx], rows)
        sd = Xc.std(0) + 1e-6
        Z = Xc / sd
        w = _file_weights(tr, idx)
        st = np.array([r.outcomes[STRONG].score for r in rows])
        wk = np.array([r.outcomes[WEAK].score for r in rows])
        if name == "gain-ridge":
            y = st - wk
            A = (Z * w[:, None]).T @ Z + alpha * np.eye(Z.shape[1])
            coef = np.linalg.solve(A, (Z * w[:, None]).T @ y)
            return (Xte / sd) @ coef
        lr = LogisticRegression(C=1.0 / alpha, max_iter=3000).fit(Z, (st > wk), sample_weight=w)
        return (Xte / sd) @ lr.coef_[0]
    if name == "weakfail":  # ridge on the weak model's failure, within-file centred, pair files only
        alpha = float(arg or 10.0)
        y = row_difficulty(tr, "mean", only=(WEAK,))
        return DifficultyRegressor(alpha).fit(Xtr, tr, y).predict(Xte)
    if name in ("diff-mean", "diff-irt"):  # many-model latent difficulty, all files
        alpha = float(arg or 10.0)
        y = row_difficulty(tr, name.split("-")[1])
        return DifficultyRegressor(alpha).fit(Xtr, tr, y).predict(Xte)
    raise ValueError(method)


def rank(v: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(v)) / (len(v) - 1)


def run(feats, methods, benches, cols=None):
    rows = all_rows()
    res: dict[str, dict[str, dict[str, float]]] = {}
    for b in benches:
        ev = [r for r in by_source(rows, b) if not r.meta.get("routellm_contaminated")
              and STRONG in r.outcomes and WEAK in r.outcomes]
        tr, _info = E.lobo_training_rows(ev, rows)
        Xtr, Xte = feature_matrix(tr, feats), feature_matrix(ev, feats)
        if cols is not None:
            Xtr, Xte = Xtr[:, cols], Xte[:, cols]
        st = np.array([r.outcomes[STRONG].score for r in ev])
        wk = np.array([r.outcomes[WEAK].score for r in ev])
        cache: dict[str, np.ndarray] = {}
        for m in methods:
            t = time.time()
            if "+" in m:  # rank average of component methods
                s = np.mean([rank(cache[p] if p in cache else score(p, tr, Xtr, Xte)) for p in m.split("+")], 0)
            else:
                s = cache[m] = score(m, tr, Xtr, Xte)
            res.setdefault(m, {})[b] = two_model(s, st, wk) | {"secs": time.time() - t}
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--feats", default="struct,extra")
    ap.add_argument("--methods", default="lr-pair,gain-ridge,win-lr,weakfail,diff-mean,diff-irt")
    ap.add_argument("--benches", default=",".join(BENCHES))
    ap.add_argument("--cols", default="", help="keep only these struct/extra feature names")
    a = ap.parse_args()
    feats = tuple(a.feats.split(","))
    benches = a.benches.split(",")
    cols = [NAMES.index(c) for c in a.cols.split(",")] if a.cols else None
    res = run(feats, a.methods.split(","), benches, cols)
    print(f"LOBO two-model, feats={a.feats}; APGR per benchmark (CPT50/CPT80 for GSM8K); val = mean APGR of the others")
    print(f"{'method':28s} " + " ".join(f"{b.split('-', 1)[1][:10]:>10s}" for b in benches) + "   val   gsm8k CPT50/CPT80")
    for m, per in res.items():
        val = np.mean([per[b]["apgr"] for b in benches if b != "routellm-gsm8k"])
        g = per.get("routellm-gsm8k", {})
        print(f"{m:28s} " + " ".join(f"{per[b]['apgr']:10.3f}" for b in benches)
              + f"  {val:.3f}  {g.get('cpt50', float('nan')):.1f}/{g.get('cpt80', float('nan')):.1f}")
    out = CACHE / f"pair_lobo_{a.feats.replace(',', '+')}{'_cols' if a.cols else ''}.json"
    out.write_text(json.dumps(res, indent=1))
