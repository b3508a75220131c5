"""`tiergate route`, `tiergate router train` and `tiergate router eval`.

`tiergate/cli.py` calls `add_router_commands(subparsers)`; `python -m tiergate.cli_router ...` runs
the same commands on their own. Heavy imports (numpy models, matplotlib) happen inside commands so
`tiergate --help` stays fast. Human output is plain aligned text; `--json` prints one object.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

POLICY_CHOICES = ("cost", "balanced", "quality", "auto:cost", "auto:balanced", "auto:quality")


# ------------------------------------------------------------------------------------------ helpers


def _csv(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None) -> str:
    """Plain aligned columns (numbers right-aligned by default when `right` is not given)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if right is None:
        right = [i > 0 for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        parts = [c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _usd(x: float | None) -> str:
    if x is None or math.isnan(x):  # no price
        return "n/a"
    return f"${x:.6f}" if x < 0.01 else f"${x:.4f}"


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _err(msg: str) -> int:
    print(f"tiergate: {msg}", file=sys.stderr)
    return 2


def _no_router(directory: str | None, missing: str | None) -> int:
    """The error for a router directory with no trained router in it (`route`, `router eval`)."""
    return _err(f"no trained router at {directory or 'the package artefacts'} ({missing} is missing): "
                "train one with `tiergate router train --outcomes FILE... --out DIR` and pass --router DIR")


def _router_file_missing(directory: str) -> str | None:
    """The file a `--router DIR` lacks to be loaded, or None when it holds a router."""
    from pathlib import Path

    d = Path(directory)
    if (d / "mean_baseline.json").is_file() or (d / "quality.json").is_file():
        return None
    return str(d / "quality.json")


def profiles_problem(path: str) -> str | None:
    """Why the quality-profile file `path` cannot be used (unreadable, not YAML, malformed), or None."""
    import yaml

    from tiergate.routing.profiles import ProfileError, Profiles

    try:
        Profiles.load(path)
    except OSError as e:
        return f"--profiles {path}: cannot read it ({e.strerror or e})"
    except (yaml.YAMLError, ProfileError, ValueError, TypeError, AttributeError) as e:
        return f"--profiles {path}: not a quality-profile file ({e})"
    return None


# -------------------------------------------------------------------------------------------- route


#: The value given to an `env:NAME` secret that is not set, for the read-only `tiergate route`: routing
#: reads candidates, policies and catalogue names, never a key, so it needs none to be exported.
UNSET_SECRET = "<unset: not needed by tiergate route>"


def _env_refs(node: Any) -> set[str]:
    """Every NAME of an `env:NAME` string in a parsed YAML document."""
    if isinstance(node, str):
        return {node[4:]} if node.startswith("env:") and len(node) > 4 else set()
    if isinstance(node, dict):
        return set().union(*(_env_refs(v) for v in node.values()), set())
    if isinstance(node, list):
        return set().union(*(_env_refs(v) for v in node), set())
    return set()


def routing_env(path: str | None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment to read a config with when only its routing is needed: the real one, plus a
    placeholder for every `env:NAME` secret the file references that is not set, so `tiergate route
    --config FILE` works on a machine without the gateway's API keys (the values are never used; a
    malformed file is reported by `load_config` as usual)."""
    import os

    import yaml

    env = dict(os.environ if environ is None else environ)
    if path is None:
        return env
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return env
    for name in _env_refs(raw):
        if not env.get(name):
            env[name] = UNSET_SECRET
    return env


def route_target(
    policy: str | None,
    quality_target: float | None,
    cost_cap_usd: float | None,
    *,
    default_policy: str = "balanced",
    overrides: dict[str, float] | None = None,
) -> tuple[str | None, float | None]:
    """(policy name, quality target) as the gateway resolves them (server/routing_glue.py `route`): a
    named policy (`auto:` prefix allowed; plain `auto` names none), else the config's `default_policy`;
    its target from the built-in table with the config's `routing.policies` on top; an explicit
    `quality_target` wins; a cost cap with no named policy and no target gives (None, None): the best
    predicted quality under the cap. A `ValueError` names an unknown policy and the known ones."""
    from tiergate.routing.policy import POLICY_TARGETS

    named = None
    if policy is not None:
        named = policy.removeprefix("auto:") if policy != "auto" else None
        if named is not None and not named.strip():
            raise ValueError(f"{policy!r} names no policy; use one of: "
                             f"{', '.join('auto:' + k for k in sorted({**POLICY_TARGETS, **(overrides or {})}))}")
    table = {**POLICY_TARGETS, **(overrides or {})}
    name = named or default_policy
    if quality_target is not None:
        if named is not None and named not in table:
            raise ValueError(_unknown_policy(policy, table))
        return name, float(quality_target)
    if cost_cap_usd is not None and named is None:
        return None, None
    if name not in table:
        raise ValueError(_unknown_policy(policy if named else f"auto:{name}", table)
                         + ("" if named else " (the config's routing.default_policy)"))
    return name, float(table[name])


def _unknown_policy(given: str | None, table: dict[str, float]) -> str:
    return f"unknown routing policy {given!r}; use one of: {', '.join('auto:' + k for k in sorted(table))}"


def _route(args: argparse.Namespace) -> int:
    import orjson

    from tiergate.routing.router import Router

    if args.max_cost_usd is not None and not (args.max_cost_usd > 0 and math.isfinite(args.max_cost_usd)):
        return _err(f"--max-cost-usd must be a positive number of dollars, got {args.max_cost_usd:g}")
    if args.quality_target is not None and not 0 < args.quality_target <= 1:
        return _err(f"--quality-target must be in (0, 1], got {args.quality_target:g}")
    candidates = _csv(args.candidates)
    if args.candidates is not None and not candidates:
        return _err("--candidates is empty: name at least one `model` or `model@effort` (a,b,...), or leave it out "
                    "to use the config's routing.candidates")
    catalog_names: dict[str, str] | None = None
    default_policy, overrides, router_dir = "balanced", {}, args.router
    profiles = args.profiles
    catalog = None  # the packaged catalogue, unless the config names a catalog_file
    if candidates is None or args.config:
        from tiergate.config import ConfigError, load_config

        try:
            config = load_config(args.config, env=routing_env(args.config))
        except ConfigError as e:
            return _err(f"configuration error: {e}")
        # configured models are routed as their catalogue entries (`catalog:`), as the gateway does
        catalog_names = {m.name: m.catalog for m in config.models}
        if candidates is None:
            candidates = list(config.routing.candidates)
        if not candidates:
            return _err("no candidates: pass --candidates a,b,... or list them under `routing.candidates` in the config")
        # the gateway's policy table, default policy and router
        default_policy, overrides = config.routing.default_policy, dict(config.routing.policies)
        if router_dir is None:
            router_dir = config.routing.router_dir
        if profiles is None:  # the gateway's router reads the config's profile override too
            profiles = config.routing.profiles
        catalog = config.load_catalog()  # with the config's catalog_file, as the gateway prices
    try:
        policy, target = route_target(args.policy, args.quality_target, args.max_cost_usd,
                                      default_policy=default_policy, overrides=overrides)
    except ValueError as e:
        return _err(f"--policy: {e}" if args.policy is not None else f"configuration error: {e}")
    if profiles is not None:
        problem = profiles_problem(profiles)
        if problem:
            return _err(problem if args.profiles else f"configuration error: routing.{problem.lstrip('-')}")
    try:
        router = Router.load(router_dir, profiles=profiles, catalog=catalog)
        router.check_candidates(candidates, catalog_names)
        decision = router.decide(
            args.prompt, candidates, policy=policy, quality_target=target,
            cost_cap_usd=args.max_cost_usd, catalog_names=catalog_names,
        )
    except FileNotFoundError as e:
        return _no_router(router_dir, e.filename)
    except (ValueError, KeyError) as e:
        return _err(str(e).strip("'\""))
    chosen = getattr(decision.chosen, "candidate", decision.chosen)  # an Assessment (or its key)
    if args.json:
        out = {
            "chosen": chosen,
            "reason": decision.reason,
            "policy": decision.policy,
            "quality_target": decision.target,
            "cost_cap_usd": decision.cost_cap,
            "candidates": [
                {
                    "candidate": a.candidate,
                    "predicted_quality": a.predicted_quality,
                    "est_cost_usd": a.est_cost_usd,
                    "prompt_tokens": a.prompt_tokens,
                    "est_output_tokens": a.est_output_tokens,
                    "est_reasoning_tokens": a.est_reasoning_tokens,
                    "eligible": a.eligible,
                    "ineligible_reason": a.ineligible_reason,
                    "quality_source": a.quality_source,
                    "profile_source": a.profile_source,
                    "cost_source": a.cost_source,
                    "chosen": a.candidate == chosen,
                }
                for a in decision.assessments
            ],
        }
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    rows = []
    for a in decision.assessments:
        rows.append([
            ("* " if a.candidate == chosen else "  ") + a.candidate,
            "n/a" if a.predicted_quality is None else f"{a.predicted_quality:.3f}",
            _usd(a.est_cost_usd) + (" (recorded)" if a.cost_source == "recorded" else ""),
            f"{a.prompt_tokens}+{a.est_output_tokens}+{a.est_reasoning_tokens}",
            "yes" if a.eligible else f"no ({a.ineligible_reason})",
            a.quality_source,
        ])
    print(table(["candidate", "pred. quality", "est. cost", "tokens in+out+reasoning", "eligible", "quality from"],
                rows, right=[False, True, True, True, False, False]))
    cited = [a for a in decision.assessments if a.profile_source]
    if cited:
        print("\nprofile sources:")
        for a in cited:
            print(f"  {a.candidate}: {a.profile_source}")
    target = "none" if decision.target is None else f"{decision.target:g}"
    cap = "none" if decision.cost_cap is None else _usd(decision.cost_cap)
    print(f"\nchosen: {chosen}  (policy {decision.policy or 'none'}, quality target {target}, cost cap {cap})")
    print(f"reason: {decision.reason}")
    return 0


# -------------------------------------------------------------------------------------------- train


def _train(args: argparse.Namespace) -> int:
    from tiergate.routing.data import OutcomeDataError, common_candidates, load_outcomes
    from tiergate.routing.evaluate import EvaluationError, model_class

    try:
        rows = load_outcomes(args.outcomes)
        cls = model_class(args.model)
    except (OutcomeDataError, EvaluationError) as e:
        return _err(str(e))
    if not rows:
        return _err(f"{', '.join(args.outcomes)}: no outcome rows (empty file)")
    candidates = _csv(args.candidates)
    if candidates:
        have = common_candidates(rows, 0.0)
        unknown = [c for c in candidates if c not in have]
        if unknown:
            return _err(f"no row of {', '.join(args.outcomes)} scores {', '.join(unknown)}; "
                        f"candidates in the file(s): {', '.join(have)}")
    print(f"training on {len(rows)} rows from {len(args.outcomes)} file(s)", file=sys.stderr)
    model = cls().fit(rows, candidates, progress=not args.quiet)
    model.save(args.out)
    cands = model.candidates()
    print(f"saved a router for {len(cands)} candidates to {args.out}: {', '.join(cands)}")
    lost = _packaged_candidates_left_out(cands)
    if lost:
        print(f"note: the packaged router has outcome data for {len(lost)} candidates these files do not score "
              f"({', '.join(lost[:6])}{', ...' if len(lost) > 6 else ''}); this router predicts them from "
              "their profiles (or the learned mean). To keep them learned, train on the dev outcome files "
              "too: --outcomes ../shared/data/*.jsonl.gz YOUR_FILE", file=sys.stderr)
    return 0


def _packaged_candidates_left_out(trained: Sequence[str]) -> list[str]:
    """The packaged router's learned candidates a newly trained router has no outcome data for."""
    import json

    from tiergate.routing.quality import ARTIFACTS_DIR

    try:
        packaged = json.loads((ARTIFACTS_DIR / "quality.json").read_text())["candidates"]
    except (OSError, ValueError, KeyError):
        return []
    have = set(trained)
    return [c for c in packaged if c not in have]


# --------------------------------------------------------------------------------------------- eval


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tiergate.routing.data import OutcomeDataError, dev_files
    from tiergate.routing.evaluate import EvaluationError, default_extra_benchmarks, evaluate, to_json

    protocol = args.protocol or "fixed"
    if args.with_other_benchmarks is not None and protocol != "kfold":
        return _err("--with-other-benchmarks / --within-file-only only apply to --protocol kfold")
    if args.router and protocol != "fixed":
        return _err("--router evaluates a trained router as is; --protocol kfold/lobo trains its own per fold. "
                    "Pass one of them")
    if args.router:
        missing = _router_file_missing(args.router)
        if missing:
            return _no_router(args.router, missing)
    if args.profiles is not None:
        if protocol != "fixed":
            return _err("--profiles applies to --protocol fixed (the serving router); kfold and lobo score every "
                        "candidate from a model trained on its outcome rows")
        problem = profiles_problem(args.profiles)
        if problem:
            return _err(problem)
    try:
        rows = load_files(args.outcomes, not args.quiet, "loading the evaluated outcome files")
        if not rows:
            return _err(f"{', '.join(args.outcomes)}: no outcome rows (empty file)")
        extra = args.with_other_benchmarks
        if protocol == "kfold" and extra is None:
            extra = default_extra_benchmarks(rows)
        pool = None
        if protocol == "lobo" or (protocol == "kfold" and extra):
            files = dev_files(Path(args.data_dir) if args.data_dir else None)
            pool = load_files(files, not args.quiet, "loading the dev outcome files")
        ev = evaluate(
            rows, candidates=_csv(args.candidates), protocol=protocol, model_kind=args.model,
            router_dir=args.router, k=args.folds, seed=args.seed, pool=pool, policy=args.policy,
            include_contaminated=args.include_contaminated, extra_benchmarks=bool(extra),
            progress=not args.quiet, profiles=args.profiles,
        )
    except (OutcomeDataError, EvaluationError) as e:
        return _err(str(e))
    except FileNotFoundError as e:  # the packaged artefacts, or a router directory emptied meanwhile
        return _no_router(args.router, e.filename)
    if args.plot:
        from tiergate.routing.plot import plot_evaluation

        try:
            path = plot_evaluation(ev, args.plot)
        except RuntimeError as e:
            return _err(str(e))
        print(f"plot written to {path}", file=sys.stderr)
    if args.json:
        sys.stdout.write(to_json(ev.summary).decode() + "\n")
    else:
        print(render_eval(ev.summary))
    return 0


def load_files(paths: Sequence[str], progress: bool, desc: str) -> list[Any]:
    """`load_outcomes(paths)` file by file with a progress bar on stderr (kept when done); ids must be unique
    across the files, as `load_outcomes` requires."""
    from pathlib import Path

    from tiergate.routing.data import OutcomeDataError, load_outcomes

    if not progress:
        return load_outcomes(paths)
    from tqdm import tqdm

    rows: list[Any] = []
    seen: dict[str, str] = {}
    for p in tqdm(list(paths), desc=desc, unit="file", leave=True):
        part = load_outcomes(p)
        for r in part:
            if r.id in seen:
                raise OutcomeDataError(f"{p}: duplicate id {r.id!r} (first seen in {Path(seen[r.id])})")
            seen[r.id] = str(p)
        rows += part
    return rows


def fixed_protocol_note(info: dict[str, Any], n: int | None = None) -> str | None:
    """Under `--protocol fixed`, whether the router is scored on prompts it was trained on. From the
    fingerprints of its training prompts when it keeps them (`seen_prompts`): how many of the `n`
    evaluated prompts it was trained on, or that none was although it was trained on their prompt family
    (e.g. later LiveCodeBench problems). Without them: a warning when it was trained on the evaluated
    rows' prompt family (`seen_sources`), a conditional one when it records nothing, none otherwise."""
    if info.get("train_sources") is None:
        return ("note: this router does not record what it was trained on; if it was trained on these rows it "
                "looks better than it is here (--protocol kfold or lobo give out-of-sample figures)")
    seen = info.get("seen_sources") or []
    k = info.get("seen_prompts")
    these = "these" if n is None else f"these {n}"
    if k == 0:
        return None if not seen else (
            f"note: none of {these} prompts is among this router's training prompts (it was trained on "
            f"{', '.join(seen)}, the same prompt family, on other prompts): these figures are out of sample")
    if k is not None:
        return (f"note: {k} of {these} prompts are among this router's training prompts; scored on them it "
                "looks better than it is, so use --protocol kfold or lobo for out-of-sample figures on them")
    if not seen:
        return None
    return (f"note: this router was trained on {', '.join(seen)}, the same prompt family as these rows; scored "
            "on rows it was trained on it looks better than it is, so use --protocol kfold or lobo for "
            "out-of-sample figures on them")


def quality_sources_note(s: dict[str, Any]) -> str | None:
    """Which candidates the router has no outcome data for and were scored as the serving router predicts
    them: from their profile (with its sources) or the default (the learned candidates' mean)."""
    other = {c: src for c, src in (s.get("quality_sources") or {}).items() if src != "learned"}
    if not other:
        return None
    cited = s.get("profile_sources") or {}
    parts = [f"{c} from its profile {cited.get(c, '')}".rstrip() if src == "profile" else
             f"{c} from the default (the mean of the learned candidates' predictions)" for c, src in other.items()]
    return (f"note: the router has no outcome data for {', '.join(other)}; scored as the serving router "
            f"predicts them (quality_sources in --json): {'; '.join(parts)}")


def render_eval(s: dict[str, Any]) -> str:
    """The human-readable report of `router eval`."""
    info = s.get("protocol_info", {})
    proto = s.get("protocol", "?")
    if proto == "kfold":
        proto += f" ({info.get('folds')} folds, seed {info.get('seed')}"
        if info.get("extra_rows_per_fold"):
            proto += f"; + ~{min(info['extra_rows_per_fold'])} rows of other files per fold"
        else:
            proto += "; within the file only"
        proto += ")"
    elif proto == "lobo":
        proto += f" (trained on {info.get('train_rows')} rows of {', '.join(info.get('train_sources', []))})"
    elif proto == "fixed":
        proto += f" (router {info.get('router')})"
    out = [(f"{', '.join(s['sources'])}: {s['n']} prompts, {len(s['candidates'])} candidates, protocol {proto}, "
           f"model {s.get('model')}")]
    if s.get("protocol") == "fixed":
        note = fixed_protocol_note(info, s.get("n"))
        if note:
            out.append(note)
    note = quality_sources_note(s)
    if note:
        out.append(note)
    if s.get("excluded_contaminated"):
        out.append(f"left out {s['excluded_contaminated']} prompts RouteLLM marks contaminated "
                   "(--include-contaminated keeps them)")
    total = s.get("rows_total")
    if s.get("excluded_partial"):
        out.append("left out candidates not scored on every row: "
                   + ", ".join(f"{c} ({k} of {total} rows)" for c, k in s["excluded_partial"].items())
                   + " (name them in --candidates to score them on the rows that have them)")
    if s.get("rows_dropped_missing_candidates"):
        miss = s.get("missing_by_candidate") or {}
        out.append(f"scored on the {s['n']} of {total} rows that have every --candidates model"
                   + (f" (missing: {', '.join(f'{c} on {k} rows' for c, k in miss.items())})" if miss else ""))
    if s.get("excluded_unpriced"):
        out.append(f"left out unpriced candidates: {', '.join(s['excluded_unpriced'])}")
    best = s["best_single"]
    bc = best["cost_usd"]

    def rel(cost: float | None) -> str:
        return "n/a" if cost is None or not bc else f"{100 * cost / bc:.1f}%"

    r = s["router"]
    rows = [[f"router ({r['policy']}, target {r['quality_target']:g})", f"{r['score']:.4f}", _usd(r["cost_usd"]),
             rel(r["cost_usd"]), f"{100 * r['score'] / best['score']:.1f}%" if best["score"] else "n/a"]]
    for name in ("oracle", "random"):
        p = s[name]
        rows.append([name, f"{p['score']:.4f}", _usd(p["cost_usd"]), rel(p["cost_usd"]),
                     f"{100 * p['score'] / best['score']:.1f}%" if best["score"] else "n/a"])
    for p in sorted(s["singles"], key=lambda p: -p["score"]):
        mark = " (best single)" if p["candidate"] == best["candidate"] else ""
        rows.append([f"always {p['candidate']}{mark}", f"{p['score']:.4f}", _usd(p["cost_usd"]), rel(p["cost_usd"]),
                     f"{100 * p['score'] / best['score']:.1f}%" if best["score"] else "n/a"])
    out += ["", table(["", "mean score", "cost/prompt", "cost vs best", "score vs best"], rows)]

    unpriced = s.get("unpriced_candidates") or []
    if s.get("cost_measurable") is False and unpriced:
        if len(unpriced) == len(s["candidates"]):
            why = "no candidate has a price"
        else:
            why = f"no price for {', '.join(unpriced)} on every row"
        out += ["", (f"cost to reach a share of the best single's score: cost not measurable: {why} (no "
                     "cost_usd in the rows, not in the catalogue)")]
    else:
        out += ["", f"cost to reach a share of the best single's score ({best['candidate']} {best['score']:.4f}):"]
        crow = []
        for key, v in s["cost_at_quality"].items():
            crow.append([f"{float(key):.0%}", _usd(v["cost_usd"]) if v["cost_usd"] is not None else "not reached",
                         _pct(v["fraction_of_best_single"]), "" if v.get("score") is None else f"{v['score']:.4f}"])
        out.append(table(["quality", "router cost/prompt", "of best single's cost", "router score"], crow))

    tm = s.get("two_model")
    if tm:
        out += ["", (f"RouteLLM metrics (strong {tm['strong']} {tm['r_strong']:.4f}, weak {tm['weak']} "
                    f"{tm['r_weak']:.4f}; CPT = % calls to the strong model):")]
        trow = []
        for name, m in (("router", tm), ("random", tm["random"])):
            trow.append([name, f"{m['apgr']:.3f}", f"{m['auc']:.4f}",
                         *(f"{m['cpt'][lv]:.2f}%" for lv in ("20", "50", "80"))])
        out.append(table(["", "APGR", "AUC", "CPT(20%)", "CPT(50%)", "CPT(80%)"], trow))
    if s.get("pareto"):
        front = s["pareto"]
        shown = front if len(front) <= 12 else [front[round(i * (len(front) - 1) / 11)] for i in range(12)]
        out += ["", (f"router's quality-cost Pareto curve (quality target swept 0..1; {len(shown)} of "
                    f"{len(front)} points, all in --json):")]
        prow = [[f"{p['quality_target']:g}", f"{p['score']:.4f}", _usd(p["cost_usd"]), rel(p["cost_usd"])]
                for p in shown]
        out.append(table(["target", "mean score", "cost/prompt", "cost vs best"], prow))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ parsers


def add_router_commands(sub: argparse._SubParsersAction) -> None:
    """Add `route` and `router {train,eval}` to the `tiergate` command."""
    r = sub.add_parser("route", help="show how the router would route one prompt (all candidates, the choice, why)")
    r.add_argument("prompt", help="the prompt text")
    r.add_argument("--candidates", help="comma-separated `model` or `model@effort` (default: the config's "
                                        "routing.candidates)")
    r.add_argument("--policy", help="named policy, `auto:` prefix allowed: cost, balanced, quality or one the "
                                    "config's routing.policies defines (default: the config's "
                                    "routing.default_policy, balanced without a config)")
    r.add_argument("--quality-target", type=float, help="own quality target in (0, 1] (overrides --policy)")
    r.add_argument("--max-cost-usd", type=float, help="cost cap per request in USD (> 0); without --policy or "
                                                      "--quality-target: the best predicted quality under it")
    r.add_argument("--router", help="trained router directory (default: the config's routing.router_dir, else "
                                    "the one shipped in the package)")
    r.add_argument("--config", "-c", help="gateway YAML config: its models (aliases, catalog:), "
                                          "routing.candidates, policies, default_policy, router_dir and "
                                          "profiles are used as the gateway uses them; env: API keys need not "
                                          "be set")
    r.add_argument("--profiles", metavar="PATH",
                   help="a YAML file of quality profiles over the packaged ones (docs/routing-model.md), for "
                        "candidates without outcome data (default: the config's routing.profiles)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=_route)

    rt = sub.add_parser("router", help="train and evaluate the learned router")
    rsub = rt.add_subparsers(dest="router_command", metavar="{train,eval}")
    rt.set_defaults(func=lambda _a: (rt.print_help(), 2)[1])

    t = rsub.add_parser("train", help="fit a router on outcome files and save it")
    t.add_argument("--outcomes", nargs="+", required=True, metavar="FILE", help="outcome JSONL(.gz) files")
    t.add_argument("--out", required=True, metavar="DIR", help="directory to write the router to")
    t.add_argument("--candidates", help="only these candidates (comma-separated; default: every one seen)")
    t.add_argument("--model", default="learned", choices=("learned", "mean-baseline"),
                   help="learned quality model (default) or the prompt-blind mean-score baseline")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_train)

    e = rsub.add_parser("eval", help="evaluate a router on outcome files (RouteLLM metrics, cost at quality)")
    e.add_argument("--outcomes", nargs="+", required=True, metavar="FILE", help="outcome JSONL(.gz) files to score on")
    e.add_argument("--router", metavar="DIR", help="trained router to evaluate (default: the one in the package)")
    e.add_argument("--candidates", help="comma-separated candidates (default: every one scored on all rows)")
    e.add_argument("--profiles", metavar="PATH",
                   help="--protocol fixed: a YAML file of quality profiles over the packaged ones, for candidates "
                        "the router has no outcome data for (scored as the serving router predicts them)")
    e.add_argument("--protocol", choices=("fixed", "kfold", "lobo"),
                   help="fixed: the router as trained (default); kfold: k folds within the file; lobo: train "
                        "on the other benchmarks")
    e.add_argument("--folds", type=int, default=5, help="k for --protocol kfold (default 5)")
    e.add_argument("--seed", type=int, default=0, help="fold assignment seed (default 0)")
    e.add_argument("--model", default="learned", choices=("learned", "mean-baseline"),
                   help="model trained per fold by kfold/lobo (default learned)")
    e.add_argument("--policy", default="balanced", choices=POLICY_CHOICES,
                   help="policy of the headline router point (default balanced)")
    oth = e.add_mutually_exclusive_group()
    oth.add_argument("--with-other-benchmarks", dest="with_other_benchmarks", action="store_const", const=True,
                     default=None,
                     help="kfold: each fold also trains on the other dev files, minus rows sharing its prompts "
                          "(the default when the evaluated file is a dev file: the shipped router is trained "
                          "on all of them; not for held-out MT-bench)")
    oth.add_argument("--within-file-only", dest="with_other_benchmarks", action="store_const", const=False,
                     help="kfold: train each fold on the evaluated file's other folds only (the default for "
                          "files outside the dev files, MT-bench included)")
    e.add_argument("--data-dir", help="dev outcome folder for --protocol lobo (default $TIERGATE_DATA_DIR or "
                                      "../shared/data)")
    e.add_argument("--include-contaminated", action="store_true",
                   help="keep the prompts RouteLLM marks contaminated (left out by default)")
    e.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    e.add_argument("--plot", metavar="PNG", help="write a plot of the curves to this PNG file")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=_eval)


def main(argv: list[str] | None = None) -> int:
    """`python -m tiergate.cli_router …` is the same as `tiergate …`."""
    from tiergate.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
