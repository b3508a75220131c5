"""GSM8K leave-one-benchmark-out: gpt-4-1106-preview vs Mixtral on RouteLLM's 1,307 prompts.

Training rows: every dev file except routellm-gsm8k and zeroeval-gsm, minus rows sharing a 10-word
passage with a GSM8K test prompt (`evaluate.lobo_training_rows`: drops 294 dcrouter rows). Nothing is
fitted on GSM8K outcomes. Prints APGR / CPT(50%) / CPT(80%) per method.

    python scripts/router_research/gsm8k_lobo.py [--bench routellm-gsm8k] [--feats struct,extra,static]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import STRONG, WEAK, E, all_rows, by_source, feature_matrix, two_model
from difficulty import DifficultyRegressor, row_difficulty, within_centre
from sklearn.linear_model import LogisticRegression


def per_model_lr(Xtr, tr, Xte, model, C=0.1):
    idx = [i for i, r in enumerate(tr) if model in tr[i].outcomes]
    y = np.array([tr[i].outcomes[model].score >= 0.5 for i in idx])
    mu, sd = Xtr[idx].mean(0), Xtr[idx].std(0) + 1e-6
    lr = LogisticRegression(C=C, max_iter=2000).fit((Xtr[idx] - mu) / sd, y)
    return lr.predict_proba((Xte - mu) / sd)[:, 1]


def run(bench: str, feats: tuple[str, ...], methods: list[str]) -> dict[str, dict[str, float]]:
    rows = all_rows()
    ev = [r for r in by_source(rows, bench) if not r.meta.get("routellm_contaminated")]
    tr, info = E.lobo_training_rows(ev, rows)
    strong = np.array([r.outcomes[STRONG].score for r in ev])
    weak = np.array([r.outcomes[WEAK].score for r in ev])
    Xtr, Xte = feature_matrix(tr, feats), feature_matrix(ev, feats)
    out: dict[str, dict[str, float]] = {}
    for m in methods:
        t = time.time()
        if m == "lr-pair":  # per-model LR on raw features, s = p_strong - p_weak (the plain reference)
            s = per_model_lr(Xtr, tr, Xte, STRONG) - per_model_lr(Xtr, tr, Xte, WEAK)
        elif m == "lr-weakfail":  # only the weak model's failure probability
            s = -per_model_lr(Xtr, tr, Xte, WEAK)
        elif m.startswith("diff-"):  # within-file difficulty ridge: diff-{mean|irt|weak}[-alpha]
            parts = m.split("-")
            how = parts[1]
            alpha = float(parts[2]) if len(parts) > 2 else 10.0
            y = row_difficulty(tr, "mean", only=(WEAK,)) if how == "weak" else row_difficulty(tr, how)
            s = DifficultyRegressor(alpha).fit(Xtr, tr, y).predict(Xte)
        elif m.startswith("lrw-"):  # per-model LR on within-file-centred features (no benchmark identity)
            C = float(m.split("-")[1])
            Xc = within_centre(Xtr, tr)
            Xe = Xte - Xte.mean(0)  # shift only; an LR's ranking ignores it
            s = per_model_lr(Xc, tr, Xe, STRONG, C) - per_model_lr(Xc, tr, Xe, WEAK, C)
        else:
            raise ValueError(m)
        out[m] = two_model(s, strong, weak) | {"secs": time.time() - t}
    out["_info"] = info  # type: ignore[assignment]
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="routellm-gsm8k")
    ap.add_argument("--feats", default="struct,extra,static")
    ap.add_argument("--methods", default="lr-pair,lr-weakfail,lrw-0.1,diff-mean,diff-irt,diff-weak")
    a = ap.parse_args()
    res = run(a.bench, tuple(a.feats.split(",")), a.methods.split(","))
    print(f"{a.bench} LOBO feats={a.feats} train_rows={res['_info']['train_rows']}")
    for m, v in res.items():
        if not m.startswith("_"):
            print(f"  {m:14s} APGR {v['apgr']:.3f}  CPT50 {v['cpt50']:.1f}%  CPT80 {v['cpt80']:.1f}%  ({v['secs']:.1f}s)")
