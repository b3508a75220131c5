"""PNG plots of a router evaluation (matplotlib, imported only here and only when a plot is asked for).

- Two candidates: RouteLLM's figure, mean score against % calls to the strong model, for the router
  and the random router, with both single models as horizontal lines.
- Priced candidates: mean score against mean cost per prompt (log scale): the router's curve over its
  quality targets, every single candidate, the oracle and the random choice.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tiergate.routing.evaluate import Evaluation


def plot_evaluation(ev: Evaluation, path: str | Path, title: str | None = None) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install 'tiergate[plot]'") from e

    s = ev.summary
    priced = s["best_single"]["cost_usd"] is not None
    panels = (["two"] if "two_model" in s else []) + (["cost"] if priced else [])
    if not panels:
        raise RuntimeError("nothing to plot: two candidates or priced candidates are needed")
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5.6), squeeze=False)
    for ax, kind in zip(axes[0], panels, strict=True):
        (_two_model if kind == "two" else _cost_quality)(ax, ev)
    seen = (s.get("protocol_info") or {}).get("seen_prompts")
    sample = f" (in-sample: {seen} of the prompts trained on)" if seen else ""
    text = title or f"{', '.join(s['sources'])}: {s['n']} prompts, protocol {s.get('protocol', '?')}{sample}"
    # wrapped to the figure's width (~11 characters per inch at the default size): a one-panel figure cut a
    # long title at both ends
    fig.suptitle(textwrap.fill(text, width=int(11 * 7.5 * len(panels))))
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def _two_model(ax, ev: Evaluation) -> None:
    tm = ev.summary["two_model"]
    for name, style in (("router", "o-"), ("random", "x--")):
        c = ev.two_model_curves[name]
        label = f"{name} (APGR {tm['apgr']:.3f})" if name == "router" else f"random (APGR {tm['random']['apgr']:.3f})"
        ax.plot(c.c, c.r, style, label=label)
    ax.axhline(tm["r_strong"], color="red", linestyle=":", label=f"{tm['strong']} only")
    ax.axhline(tm["r_weak"], color="grey", linestyle=":", label=f"{tm['weak']} only")
    ax.set_xlabel(f"calls to {tm['strong']} (%)")
    ax.set_ylabel("mean score")
    cpt = tm["cpt"]
    ax.set_title(f"CPT(50%) {cpt['50']:.1f}%  CPT(80%) {cpt['80']:.1f}%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def _cost_quality(ax, ev: Evaluation) -> None:
    s = ev.summary
    pts = sorted(ev.router_points, key=lambda p: p.cost_usd)
    ax.plot([p.cost_usd for p in pts], [p.score for p in pts], "-", color="tab:blue", alpha=0.5,
            label="router (quality target 0..1)")
    front = s["pareto"]
    ax.plot([p["cost_usd"] for p in front], [p["score"] for p in front], "o", color="tab:blue", ms=3)
    r = s["router"]
    if r["cost_usd"] is not None:
        ax.plot([r["cost_usd"]], [r["score"]], "*", color="tab:blue", ms=14,
                label=f"router, {r['policy']} (target {r['quality_target']:g})")
    for p in ev.singles:
        ax.plot([p.cost_usd], [p.score], "s", color="tab:gray", ms=5)
        ax.annotate(p.label, (p.cost_usd, p.score), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.plot([ev.oracle.cost_usd], [ev.oracle.score], "P", color="tab:green", ms=10, label="oracle")
    ax.plot([ev.random.cost_usd], [ev.random.score], "X", color="tab:orange", ms=9, label="random")
    best = s["best_single"]
    for f, style in (("0.95", ":"), ("0.98", "--")):
        ax.axhline(float(f) * best["score"], color="tab:red", linestyle=style, lw=0.8,
                   label=f"{float(f):.0%} of {best['candidate']}")
    ax.set_xscale("log")
    costs = [p.cost_usd for p in ev.singles if np.isfinite(p.cost_usd) and p.cost_usd > 0]
    if costs:
        ax.set_xlim(min(costs) / 2, max(costs) * 2)
    ax.set_xlabel("mean cost per prompt (USD, log scale)")
    ax.set_ylabel("mean score")
    ax.set_title("quality vs cost")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
