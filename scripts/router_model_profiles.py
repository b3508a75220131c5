"""Regenerate src/tiergate/routing/profiles.yaml: `measured:` from the dev outcome files and `published:`
from the published benchmark figures in scripts/router_model_profiles_published.yaml.

measured: for every model key in the outcome files, its mean score per domain (the files grouped into
domains as in profiles.yaml `domains:`; a domain's score is the mean of its files' means), each with its
source (file and row count).

published: figures from published sources for models without outcome data, put on the scale of the
measured domain means. For a benchmark B standing for domain D, a least-squares line
logit(measured D mean) = a + b * x(B) is fitted on the calibration models (those with a published B
figure and a measured D mean; x = logit(B / 100) for percentages, Elo / 1000 for Elo ratings), and each
target's published figure is mapped through it. A fit needs >= 3 models and a positive slope. Every
published score's `source` names the figure, where it was read, and the fit (models, a, b, residual).
Deterministic: the same inputs give the same file.

    python scripts/router_model_profiles.py [--data shared/data]   # both sections
    python scripts/router_model_profiles.py --published            # published only (no outcome files read)
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

PROFILES = Path(__file__).parents[1] / "src" / "tiergate" / "routing" / "profiles.yaml"
PUBLISHED = Path(__file__).with_name("router_model_profiles_published.yaml")
MIN_FIT_MODELS = 3


def _logit(p: float) -> float:
    p = min(max(p, 1e-3), 1 - 1e-3)
    return math.log(p / (1 - p))


def _x(value: float, scale: str) -> float:
    if scale == "percent":
        return _logit(value / 100.0)
    if scale == "elo":
        return value / 1000.0
    raise ValueError(f"unknown benchmark scale {scale!r}")


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares y = a + b x; returns (a, b, RMS residual)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx > 0 else 0.0
    a = my - b * mx
    rms = math.sqrt(sum((a + b * x - y) ** 2 for x, y in zip(xs, ys, strict=True)) / n)
    return a, b, rms


def published_profiles(measured: dict[str, Any], table: dict[str, Any]) -> tuple[dict, list[str]]:
    """The `published:` section from the table of figures; also a log of the fits (and what was dropped)."""
    benches = table["benchmarks"]
    log: list[str] = []
    fits: dict[str, tuple[float, float, float, list[str]]] = {}
    for bench, spec in sorted(benches.items()):
        dom, scale = spec["domain"], spec["scale"]
        pts = [(c["key"], _x(float(c["value"]), scale), measured[c["key"]][dom]["score"])
               for c in table.get("calibration") or []
               if c["benchmark"] == bench and dom in measured.get(c["key"], {})]
        missing = [c["key"] for c in table.get("calibration") or []
                   if c["benchmark"] == bench and dom not in measured.get(c["key"], {})]
        if missing:
            log.append(f"{bench}: calibration models without a measured {dom} mean (not used): {missing}")
        if len(pts) < MIN_FIT_MODELS:
            log.append(f"{bench} -> {dom}: only {len(pts)} calibration models; no fit, targets dropped")
            continue
        a, b, rms = _fit([p[1] for p in pts], [_logit(p[2]) for p in pts])
        if b <= 0:
            log.append(f"{bench} -> {dom}: non-positive slope {b:.3f}; targets dropped")
            continue
        fits[bench] = (a, b, rms, [p[0] for p in pts])
        log.append(f"{bench} -> {dom}: logit(score) = {a:.3f} + {b:.3f} * x on {len(pts)} models "
                   f"{[p[0] for p in pts]}, RMS residual {rms:.3f} logits")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for t in table.get("targets") or []:
        bench = t["benchmark"]
        if bench not in fits:
            continue
        dom, scale = benches[bench]["domain"], benches[bench]["scale"]
        a, b, rms, models = fits[bench]
        score = 1.0 / (1.0 + math.exp(-(a + b * _x(float(t["value"]), scale))))
        xdesc = "logit(B/100)" if scale == "percent" else "Elo/1000"
        cal = (f"mapped to the {dom} scale by logit(score) = {a:.3f} + {b:.3f} * {xdesc}, fitted on "
               f"{', '.join(models)} (RMS residual {rms:.2f} logits; scripts/router_model_profiles.py)")
        out.setdefault(t["key"], {})[dom] = {"score": round(score, 3), "benchmark": f"{bench} {t['value']}",
                                             "source": f"{t['source']}; {cal}"}
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}, log


def measured_profiles(data: Path | None, domain_of: dict[str, str]) -> dict[str, Any]:
    from tiergate.routing.data import dev_files, load_outcomes

    rows = load_outcomes(dev_files(data))
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
    return measured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--published", action="store_true", help="regenerate only `published:` (keeps `measured:`)")
    args = ap.parse_args()
    doc = yaml.safe_load(PROFILES.read_text())
    domain_of = {src: dom for dom, srcs in doc["domains"].items() for src in srcs}
    if not args.published:
        doc["measured"] = measured_profiles(args.data, domain_of)
    table = yaml.safe_load(PUBLISHED.read_text())
    doc["published"], log = published_profiles(doc["measured"], table)
    for line in log:
        print(line)
    header = PROFILES.read_text().split("\ndomains:", 1)[0]
    body = yaml.safe_dump({k: doc[k] for k in ("domains", "published", "measured")}, sort_keys=False, width=110)
    PROFILES.write_text(header + "\n" + body)
    print(f"wrote {PROFILES}: {len(doc['measured'])} measured models, {len(doc['published'])} published")


if __name__ == "__main__":
    main()
