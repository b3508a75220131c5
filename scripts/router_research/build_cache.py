"""Compute and cache every feature kind for all dev rows: `python scripts/router_research/build_cache.py [KIND...]`."""

from __future__ import annotations

import sys
import time

from common import all_rows, features

if __name__ == "__main__":
    rows = all_rows()
    for kind in sys.argv[1:] or ["struct", "extra", "static", "minilm"]:  # also: static2 ($STATIC2_DIR)
        t = time.time()
        X = features(rows, kind)
        print(kind, X.shape, f"{time.time() - t:.1f}s", flush=True)
