"""Development evaluation of the router's quality model (issue 3 item 6), out of fold only.

    python scripts/router_model_eval.py [--only gsm8k,mmlu,lcb] [--rank 16 ...]

- GSM8K leave-one-benchmark-out: fit on every dev file except routellm-gsm8k and zeroeval-gsm, score
  routellm-gsm8k (gpt-4-1106-preview vs mixtral-8x7b-instruct-v0.1, uncontaminated rows) with RouteLLM's
  APGR / CPT (routing.metrics). As in every protocol here, rows of other files sharing a 10-word passage
  with a scored prompt are left out of training (`routing.evaluate.shared_prompt_mask`).
- MMLU 5-fold by prompt: fit on every other file + 4/5 of routellm-mmlu, score the held-out fifth; the
  out-of-fold scores of all five folds are pooled and scored once.
- LiveCodeBench 5-fold by problem (folds shared by both snapshots, so a problem is never on both
  sides): the cost at which the policy's target sweep reaches 98% of the best single priced candidate,
  for all priced candidates and for the o-series + gpt-4o-mini subset.
Features are cached under ~/.cache/tiergate/.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np

from tiergate.routing import metrics
from tiergate.routing.data import dev_files, load_outcomes, outcome_matrix
from tiergate.routing.evaluate import shared_prompt_mask
from tiergate.routing.policy import POLICY_TARGETS, two_model_score
from tiergate.routing.quality import FitConfig, QualityModel

CACHE = Path.home() / ".cache" / "tiergate"
STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"


def cached_features(model: QualityModel, rows) -> np.ndarray:
    h = hashlib.sha256()
    for name in ("static_embedding.npz",):
        h.update((Path(__file__).parents[1] / "src/tiergate/routing/artifacts" / name).read_bytes())
    h.update(Path(__file__).parents[1].joinpath("src/tiergate/routing/features.py").read_bytes())
    h.update(str(len(rows)).encode())
    path = CACHE / f"router_features_{h.hexdigest()[:16]}.npy"
    if path.exists():
        return np.load(path)
    t = time.time()
    X = model.features([r.prompt for r in rows])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, X)
    print(f"features: {X.shape} in {time.time() - t:.1f}s")
    return X


def folds_by_prompt(rows, idx, k=5, seed=0):
    keys = sorted({rows[i].prompt for i in idx})
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(keys))
    fold_of = {keys[j]: pos % k for pos, j in enumerate(order)}
    return np.array([fold_of[rows[i].prompt] for i in idx])


def norm(text: str) -> str:
    return " ".join(text.split())[:300].lower()


def fit_predict(cfg, rows, X, train_idx, test_idx):
    if isinstance(cfg, list):  # an ensemble: average the members' probabilities
        preds = [fit_predict(c, rows, X, train_idx, test_idx) for c in cfg]
        return {k: np.mean([p[k] for p in preds], axis=0) for k in preds[0]}
    return _fit_predict(cfg, rows, X, train_idx, test_idx)


def _fit_predict(cfg, rows, X, train_idx, test_idx):
    """Fit on train_idx minus every row whose prompt also occurs in the test rows and every row of another
    file that shares a 10-word passage with a test prompt (`routing.evaluate.shared_prompt_mask`, the
    rule the official evaluation applies: dcrouter holds ~300 GSM8K test questions, not all verbatim or
    with the same first 300 characters), predict test_idx."""
    test_rows = [rows[i] for i in test_idx]
    test_prompts = {norm(r.prompt) for r in test_rows}
    test_sources = {r.source for r in test_rows}
    other = [i for i in train_idx if rows[i].source not in test_sources]
    shared = shared_prompt_mask([rows[i] for i in other], test_rows) if other else []
    drop = {i for i, s in zip(other, shared, strict=True) if s}
    train_idx = np.array([i for i in train_idx if i not in drop and norm(rows[i].prompt) not in test_prompts])
    qm = QualityModel(config=cfg)
    qm._extractor = base._extractor
    qm.fit([rows[i] for i in train_idx], features=X[train_idx])
    return qm.predict_features(X[test_idx])


def two_model_report(name, s, strong, weak):
    curve = metrics.router_curve(s, strong, weak)
    out = f"{name}: APGR {metrics.apgr(curve):.3f}  " + "  ".join(
        f"CPT({int(lv * 100)}%) {metrics.cpt(curve, lv):.2f}" for lv in metrics.CPT_LEVELS)
    print(out, flush=True)


def gsm8k(cfg, rows, X):
    test = [i for i, r in enumerate(rows) if r.source == "routellm-gsm8k" and not r.meta.get("routellm_contaminated")]
    train = [i for i, r in enumerate(rows) if r.source not in ("routellm-gsm8k", "zeroeval-gsm")]
    P = fit_predict(cfg, rows, X, train, test)
    strong = np.array([rows[i].outcomes[STRONG].score for i in test])
    weak = np.array([rows[i].outcomes[WEAK].score for i in test])
    two_model_report("GSM8K LOBO", two_model_score(P[STRONG], P[WEAK]), strong, weak)
    return P


def mmlu(cfg, rows, X):
    idx = np.array([i for i, r in enumerate(rows) if r.source == "routellm-mmlu"])
    other = np.array([i for i, r in enumerate(rows) if r.source != "routellm-mmlu"])
    f = folds_by_prompt(rows, idx)
    s = np.zeros(len(idx))
    for k in range(5):
        P = fit_predict(cfg, rows, X, np.concatenate([other, idx[f != k]]), idx[f == k])
        s[f == k] = two_model_score(P[STRONG], P[WEAK])
    keep = np.array([not rows[i].meta.get("routellm_contaminated") for i in idx])
    strong = np.array([rows[i].outcomes[STRONG].score for i in idx])[keep]
    weak = np.array([rows[i].outcomes[WEAK].score for i in idx])[keep]
    two_model_report("MMLU 5-fold", s[keep], strong, weak)


def lcb(cfg, rows, X, targets):
    from tiergate.routing.policy import choose_batch

    lcb_idx = np.array([i for i, r in enumerate(rows) if r.source.startswith("livecodebench")])
    f_all = folds_by_prompt(rows, lcb_idx)
    other = np.array([i for i, r in enumerate(rows) if not r.source.startswith("livecodebench")])
    preds: dict[int, dict[str, float]] = {}
    for k in range(5):
        tr = np.concatenate([other, lcb_idx[f_all != k]])
        te = lcb_idx[f_all == k]
        P = fit_predict(cfg, rows, X, tr, te)
        for pos, i in enumerate(te):
            preds[int(i)] = {c: float(v[pos]) for c, v in P.items()}
    for src in ("livecodebench-o1", "livecodebench-o3o4"):
        srows = [i for i in lcb_idx if rows[i].source == src]
        allc = sorted(rows[srows[0]].outcomes)
        om = outcome_matrix([rows[i] for i in srows], allc)
        priced = om.priced()
        subsets = {"priced": priced,
                   "o-series+mini": [c for c in priced if c.startswith("o") or c == "gpt-4o-mini"]}
        for name, cands in subsets.items():
            j = [allc.index(c) for c in cands]
            scores, costs, est = om.scores[:, j], om.costs[:, j], om.est_costs[:, j]
            est = np.where(np.isnan(est), costs, est)  # LiveCodeBench cost_usd is the pre-answer estimate
            pq = np.array([[preds[i][c] for c in cands] for i in srows])
            best = metrics.best_single(cands, scores, costs)
            pts = []
            for tgt in targets:
                ch = choose_batch(pq, est, tgt)
                pts.append(metrics.routed_point(ch, scores, costs, f"{tgt:.3f}"))
            tab = metrics.cost_at_quality_table(pts, best)
            orc = metrics.routed_point(metrics.oracle_choice(scores, costs), scores, costs)
            named = []
            for pol in ("cost", "balanced", "quality"):
                t = POLICY_TARGETS[pol]
                pt = metrics.routed_point(choose_batch(pq, est, t), scores, costs)
                named.append(f"auto:{pol}({t}) {pt.score / best.score:.1%} of quality at {pt.cost_usd / best.cost_usd:.1%}")
            print(f"{src} [{name}] named policies: " + "; ".join(named), flush=True)
            def fmt(d):
                return "n/a" if d["cost_usd"] is None else f"${d['cost_usd']:.4f} ({d['fraction_of_best_single']:.1%})"
            print(f"{src} [{name}] best {best.label} {best.score:.3f} ${best.cost_usd:.4f}; oracle {orc.score:.3f}; "
                  f"95%: {fmt(tab['0.95'])} 98%: {fmt(tab['0.98'])} 100%: {fmt(tab['1.0'])}", flush=True)


base = QualityModel()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="gsm8k,mmlu,lcb")
    ap.add_argument("--rank", type=int, default=FitConfig.rank)
    ap.add_argument("--steps", type=int, default=FitConfig.steps)
    ap.add_argument("--l2-direct", type=float, default=FitConfig.l2_direct)
    ap.add_argument("--l2-encoder", type=float, default=FitConfig.l2_encoder)
    ap.add_argument("--within-embed-dims", type=int, default=FitConfig.within_embed_dims)
    ap.add_argument("--no-lexical", action="store_true")
    ap.add_argument("--l2-lexical", type=float, default=FitConfig.l2_lexical)
    ap.add_argument("--ensemble", action="store_true", help="average E=16 and E=128 members")
    args = ap.parse_args()
    cfg = FitConfig(rank=args.rank, steps=args.steps, l2_direct=args.l2_direct, l2_encoder=args.l2_encoder,
                    within_embed_dims=args.within_embed_dims, lexical=not args.no_lexical,
                    l2_lexical=args.l2_lexical)
    if args.ensemble:
        from dataclasses import replace
        cfg = [replace(cfg, within_embed_dims=16, seed=0), replace(cfg, within_embed_dims=128, seed=1)]
    rows = load_outcomes(dev_files())
    X = cached_features(base, rows)
    t = time.time()
    if "gsm8k" in args.only:
        gsm8k(cfg, rows, X)
    if "mmlu" in args.only:
        mmlu(cfg, rows, X)
    if "lcb" in args.only:
        lcb(cfg, rows, X, np.concatenate([np.linspace(0.5, 0.9, 9), np.linspace(0.905, 1.0, 20)]))
    print(f"({time.time() - t:.0f}s)")


if __name__ == "__main__":
    main()
