"""Regenerate the data-derived part of src/tiergate/routing/profiles.yaml from the dev outcome files.

For every model key in the outcome files: its mean score per domain (the files grouped into domains
as in profiles.yaml `domains:`), each with its source (file and row count). Hand-written entries
(published figures for models without outcome data) live under `published:` and are kept as they are.

    python scripts/router_model_profiles.py [--data shared/data]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import yaml

from tiergate.routing.data import dev_files, load_outcomes

PROFILES = Path(__file__).parents[1] / "src" / "tiergate" / "routing" / "profiles.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    args = ap.parse_args()
    doc = yaml.safe_load(PROFILES.read_text())
    domain_of = {src: dom for dom, srcs in doc["domains"].items() for src in srcs}
    rows = load_outcomes(dev_files(args.data))
    acc: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        dom = domain_of.get(r.source)
        if dom is None:
            continue
        for key, o in r.outcomes.items():
            acc[key][dom][r.source].append(o.score)
    measured: dict[str, dict[str, dict[str, object]]] = {}
    for key in sorted(acc):
        measured[key] = {}
        for dom in sorted(acc[key]):
            per_file = acc[key][dom]
            n = sum(len(v) for v in per_file.values())
            # domain score: mean of the files' means (each benchmark counts once)
            score = sum(sum(v) / len(v) for v in per_file.values()) / len(per_file)
            files = ", ".join(f"{f} ({len(v)} rows)" for f, v in sorted(per_file.items()))
            measured[key][dom] = {"score": round(score, 3), "n": n, "source": f"shared/data mean score: {files}"}
    doc["measured"] = measured
    header = PROFILES.read_text().split("\ndomains:", 1)[0]
    body = yaml.safe_dump({k: doc[k] for k in ("domains", "published", "measured")}, sort_keys=False, width=110)
    PROFILES.write_text(header + "\n" + body)
    print(f"wrote {PROFILES}: {len(measured)} measured models, {len(doc['published'] or {})} published")


if __name__ == "__main__":
    main()
