"""Diagnostic, not a router: APGR of each single structural feature used as s(p) (higher = strong model),
on every file that scores gpt-4-1106-preview and Mixtral. Shows which cheap signals carry a two-model
gain at all, and that none carries across all benchmarks. The GSM8K column is *not* used to choose a
recipe (recipes are chosen on the other four files).

    python scripts/router_research/single_feature_apgr.py
"""

from __future__ import annotations

import numpy as np
from common import STRONG, WEAK, all_rows, by_source, feature_matrix, two_model
from pair_lobo import BENCHES, NAMES

if __name__ == "__main__":
    rows = all_rows()
    res = {}
    rng = np.random.default_rng(0)
    for b in BENCHES:
        ev = [r for r in by_source(rows, b) if not r.meta.get("routellm_contaminated")
              and STRONG in r.outcomes and WEAK in r.outcomes]
        X = feature_matrix(ev, ("struct", "extra"))
        st = np.array([r.outcomes[STRONG].score for r in ev])
        wk = np.array([r.outcomes[WEAK].score for r in ev])
        jitter = 1e-9 * rng.random(len(ev))  # ties broken at random, as a constant feature is a random router
        res[b] = [two_model(X[:, j] + jitter, st, wk)["apgr"] for j in range(X.shape[1])]
    print(f"{'feature':22s} " + " ".join(f"{b.split('-', 1)[1][:10]:>10s}" for b in BENCHES))
    for j, n in enumerate(NAMES):
        print(f"{n:22s} " + " ".join(f"{res[b][j]:10.3f}" for b in BENCHES))
