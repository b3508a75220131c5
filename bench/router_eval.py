"""The router's accuracy targets (issue 3, item 6) measured on the dev outcome files, in one table.

    python bench/router_eval.py [--quick] [--json OUT.json] [--data-dir DIR] [--seed S] [--only ROW ...]

- GSM8K (`routellm-gsm8k`, RouteLLM's 1,307 uncontaminated prompts), leave one benchmark out:
  the learned model never sees GSM8K (nor `zeroeval-gsm`, nor the GSM8K questions copied into
  dcrouter); RouteLLM's APGR / CPT(50%) / CPT(80%) between gpt-4-1106-preview and Mixtral.
- MMLU (`routellm-mmlu`, 14,037 prompts), 5-fold by prompt, same metrics.
- LiveCodeBench dev files, 5-fold out of fold: the cost (as a fraction of the best single candidate's)
  at which the router reaches 98% (and 95%) of the best single candidate's mean score, for all priced
  candidates and for the o-series + gpt-4o-mini subset.
Every k-fold row trains each fold, as the shipped router is trained, on all other dev rows too (minus
any sharing a 10-word passage with the fold's test prompts): `tiergate router eval --protocol kfold`'s
default on a dev file. The LiveCodeBench rows are also given within the file only (`--within-file-only`).
`--quick` (~2 min) runs every k-fold row within the file only: for iterating, not the reported figures.
As everywhere in `routing.evaluate`, the learned model is fitted on every candidate of its training rows.
The random router (RouteLLM's definition) and RouteLLM's best published router are printed alongside.
Each row is one `tiergate router eval` invocation's figures; the equivalent commands are in docs/routing.md.
`--seed S` moves the k-fold rows' fold seed (the 98%-of-best and APGR figures move with it: compare
methods over several seeds); `--only mmlu` (repeatable: gsm8k, mmlu, lcb) runs a subset of the rows;
`--ablation` adds the GSM8K and MMLU figures of the same fitted models without the neighbourhood
component (`routing.neighbours`) and the pair-gain component (`routing.steps`), and without the latter only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tiergate.routing import evaluate as E
from tiergate.routing.data import dev_files, find_data_dir, load_outcomes

STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
ROUTELLM_BEST = {  # arXiv 2406.18665 v4, Tables 2-3 (shared/data/README.md section 6)
    "gsm8k": {"router": "causal_llm (aug)", "apgr": 0.622, "cpt50": 33.64, "cpt80": 63.26},
    "mmlu": {"router": "sw_ranking (aug)", "apgr": 0.603, "cpt50": 35.40, "cpt80": 71.55},
}
O_SERIES = {
    "livecodebench-o1-dev": ["o1@low", "o1@medium", "o1@high", "o1-mini", "o1-preview", "gpt-4o-mini"],
    "livecodebench-o3o4-dev": ["o3-mini@low", "o3-mini@medium", "o3-mini@high", "o4-mini@low",
                               "o4-mini@medium", "o4-mini@high", "gpt-4o-mini"],
}


def _two_model(name: str, protocol: str, data: Path, pool, progress: bool, extra: bool = True, seed: int = 0,
               ablation: bool = False) -> dict:
    rows = load_outcomes(data / f"{name}.jsonl.gz")
    t = time.perf_counter()
    if ablation:  # as E.evaluate, plus the same fits' predictions without texts
        rows = [r for r in rows if not r.meta.get("routellm_contaminated")]
        mat, _ = E.select_candidates(rows, [STRONG, WEAK], None, None)
        pred, info = E.out_of_fold_predictions(mat, protocol, seed=seed, pool=pool,
                                               extra_benchmarks=extra and protocol == "kfold", progress=progress,
                                               also_without_texts=True)
        base = E.score_predictions(mat, info.pop("predictions_without_texts")).summary["two_model"]
        no_pair = E.score_predictions(mat, info.pop("predictions_without_pair_gain")).summary["two_model"]
        summary = E.score_predictions(mat, pred).summary
        summary["protocol_info"] = info
        without = {"apgr": base["apgr"], "cpt50": base["cpt"]["50"], "cpt80": base["cpt"]["80"]}
        without_pair = {"apgr": no_pair["apgr"], "cpt50": no_pair["cpt"]["50"], "cpt80": no_pair["cpt"]["80"]}
    else:
        summary = E.evaluate(rows, candidates=[STRONG, WEAK], protocol=protocol, pool=pool, progress=progress,
                             extra_benchmarks=extra and protocol == "kfold", seed=seed).summary
        without = without_pair = None
    tm = summary["two_model"]
    out = {"n": summary["n"], "apgr": tm["apgr"], "cpt50": tm["cpt"]["50"], "cpt80": tm["cpt"]["80"],
           "random": tm["random"], "seconds": time.perf_counter() - t, "info": summary["protocol_info"]}
    if without is not None:
        out["without_neighbours"] = without  # (and without the pair-gain component: both read the words)
        out["without_pair_gain"] = without_pair
    return out


def _lcb(name: str, data: Path, extra: bool, pool, progress: bool, seed: int = 0) -> dict[str, dict]:
    rows = load_outcomes(data / f"{name}.jsonl.gz")
    mat, unpriced = E.select_candidates(rows, None, None, None)
    t = time.perf_counter()
    pred, info = E.out_of_fold_predictions(mat, "kfold", k=5, seed=seed, pool=pool, extra_benchmarks=extra,
                                           progress=progress)
    out = {}
    for subset, cands in (("all priced", mat.candidates), ("o-series + gpt-4o-mini", O_SERIES[name])):
        cols = [mat.candidates.index(c) for c in cands]
        s = E.score_predictions(mat.select(cands), pred[:, cols]).summary
        out[subset] = {
            "n": s["n"], "candidates": cands, "best_single": s["best_single"], "router": s["router"],
            "cost_at_quality": s["cost_at_quality"], "oracle": s["oracle"], "random": s["random"],
        }
    out["_meta"] = {"seconds": time.perf_counter() - t, "excluded_unpriced": unpriced,
                    "extra_rows_per_fold": info.get("extra_rows_per_fold", [])}
    return out


def _fmt_frac(v: float | None) -> str:
    return "not reached" if v is None else f"{100 * v:.1f}% of cost"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="k-fold within the file only (not the reported figures)")
    ap.add_argument("--json", type=Path, help="also write every figure to this file")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="fold seed of the k-fold rows (reported figures: 0)")
    ap.add_argument("--ablation", action="store_true",
                    help="GSM8K and MMLU rows: also the same models' figures without the pair-gain component, "
                         "and without it and the neighbourhood component")
    ap.add_argument("--only", choices=("gsm8k", "mmlu", "lcb"), action="append",
                    help="run only these rows (repeatable; default: all)")
    args = ap.parse_args(argv)
    only = set(args.only or ("gsm8k", "mmlu", "lcb"))
    data = args.data_dir or find_data_dir()
    progress = not args.quiet
    pool = load_outcomes(dev_files(data))
    results: dict = {}
    if "gsm8k" in only:
        results["gsm8k"] = _two_model("routellm-gsm8k", "lobo", data, pool, progress, ablation=args.ablation)
    if "mmlu" in only:
        results["mmlu"] = _two_model("routellm-mmlu", "kfold", data, pool, progress, extra=not args.quick,
                                     seed=args.seed, ablation=args.ablation)
    fold = "" if args.seed == 0 else f", fold seed {args.seed}"
    mmlu_label = (f"MMLU (5-fold, within the file only{fold})" if args.quick
                  else f"MMLU (5-fold + other dev files{fold})")
    for name in O_SERIES if "lcb" in only else ():
        results[name] = {}
        if not args.quick:
            results[name]["kfold + other dev files"] = _lcb(name, data, True, pool, progress, args.seed)
        results[name]["kfold, within the file only"] = _lcb(name, data, False, pool, progress, args.seed)

    lines = [("benchmark (protocol)", "metric", "tiergate", "target", "RouteLLM best", "random")]
    for key, label, targets in (
        ("gsm8k", "GSM8K (leave-one-benchmark-out)", {"apgr": "> 0.622", "cpt50": "< 33.64%", "cpt80": "< 63.26%"}),
        ("mmlu", mmlu_label, {"apgr": ">= 0.68", "cpt50": "<= 27%", "cpt80": "-"}),
    ):
        if key not in results:
            continue
        r, best = results[key], ROUTELLM_BEST[key]
        for m, nice in (("apgr", "APGR"), ("cpt50", "CPT(50%)"), ("cpt80", "CPT(80%)")):
            unit = "" if m == "apgr" else "%"
            rnd = r["random"]["apgr"] if m == "apgr" else r["random"]["cpt"][m[3:]]
            fmt = "{:.3f}" if m == "apgr" else "{:.2f}"
            lines.append((f"{label}, n={r['n']}", nice, fmt.format(r[m]) + unit, targets[m],
                          fmt.format(best[m]) + unit + f" {best['router']}", fmt.format(rnd) + unit))
            if "without_pair_gain" in r:
                lines.append((f"{label}, same fitted models without the pair-gain component", nice,
                              fmt.format(r["without_pair_gain"][m]) + unit, "", "", ""))
            if "without_neighbours" in r:
                lines.append((f"{label}, same fitted models without the neighbourhood + pair-gain components",
                              nice, fmt.format(r["without_neighbours"][m]) + unit, "", "", ""))
    for name in (n for n in O_SERIES if n in results):
        for proto, res in results[name].items():
            for subset, r in res.items():
                if subset.startswith("_"):
                    continue
                b = r["best_single"]
                label = f"{name} ({proto}), {subset}, n={r['n']}"
                for q, target in (("0.98", "<= 60% of cost"), ("0.95", "-")):
                    lines.append((label, f"cost at {float(q):.0%} of {b['candidate']} ({b['score']:.3f})",
                                  _fmt_frac(r["cost_at_quality"][q]["fraction_of_best_single"]), target, "n/a",
                                  (f"{100 * r['random']['score'] / b['score']:.0f}% quality at "
                                  f"{100 * r['random']['cost_usd'] / b['cost_usd']:.0f}% cost")))
                rr = r["router"]
                lines.append((label, f"router {rr['policy']} (t={rr['quality_target']:g}): score, cost",
                              f"{rr['score']:.3f}, {100 * rr['cost_usd'] / b['cost_usd']:.1f}% of cost", "-", "n/a",
                              ""))
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(lines[0]))]
    for n, row in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")
        print(f"\nfigures written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
