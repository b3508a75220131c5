"""Offline evaluation of a quality model as a router, with protocols that never score a prompt the
model was trained on.

Protocols (split by prompt; nothing is fitted or tuned on the fold it is scored on):
- `fixed`: a trained router (the one shipped in the package, or `--router DIR`) scores every row.
- `kfold`: k folds within the evaluated rows (default 5, seed 0). Rows with the same prompt text
  (normalised: case and whitespace) always fall in the same fold. By default (`extra_benchmarks`),
  every fold also trains on all other dev rows (other benchmarks, and other files of the same prompt
  family such as the second LiveCodeBench snapshot) except those sharing a 10-word passage with that
  fold's test prompts (rows of a same-family file, whose prompts are the evaluated file's, are
  grouped with the fold by prompt text instead), so a test prompt is never in training under any file's
  name. That is the
  out-of-fold analogue of the shipped router, which is trained on every dev file; `extra_benchmarks=False`
  trains on the evaluated file's other folds only, the default for rows outside the dev files (held-out
  MT-bench included: `HELD_OUT_FAMILIES`).
- `lobo` (leave one benchmark out): train on every other dev file, except (a) files of the same
  prompt family (`PROMPT_FAMILIES`: e.g. `routellm-gsm8k` and `zeroeval-gsm` are both GSM8K) and
  (b) any training row that shares a 10-word passage with an evaluated prompt (catches benchmarks
  copied into task mixes such as dcrouter). Passages found in more than 2 % of the evaluated prompts
  are instruction templates, not content, and are ignored.

The learned model is always fitted as it is shipped: on every candidate recorded in its training rows
(the prompt encoder is shared by all candidates of all files), not only on the evaluated candidates;
predictions are then read for the evaluated candidates. Fitting only the two RouteLLM models would
train the encoder on the one file that scores them (MMLU, under GSM8K leave-one-benchmark-out) and
measure a different, weaker model than the one tiergate serves.

The router under evaluation. For each prompt it has a predicted score per candidate (the quality
model) and an estimated cost per candidate (the README section 4 cost model on the prompt; for a
model the catalogue does not price, its mean recorded cost on the evaluated rows, i.e. its price
level). The serving policy picks the cheapest candidate whose predicted score is at least
`quality_target x` the best predicted score (`policy_choice`); sweeping the target from 0 to 1 gives
the router's quality-cost curve. For two candidates the RouteLLM score is s(p) = predicted(strong) -
predicted(weak); the strong candidate is the one with the higher mean score on the evaluated rows.
Costs used for *scoring* are the rows' recorded `cost_usd`, else the same cost model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from tiergate.routing import metrics as M
from tiergate.routing.data import (
    OutcomeMatrix,
    OutcomeRow,
    PriceLookup,
    TokenCounter,
    common_candidates,
    count_seen,
    dev_files,
    load_outcomes,
    normalise_prompt,
    outcome_matrix,
)
from tiergate.routing.policy import POLICY_TARGETS, choose_batch, resolve_target, two_model_score

# Files whose prompts come from the same upstream benchmark (keys: row `source`, without -dev/-heldout).
PROMPT_FAMILIES: dict[str, tuple[str, ...]] = {
    "gsm8k": ("routellm-gsm8k", "zeroeval-gsm"),
    "livecodebench": ("livecodebench-o1", "livecodebench-o3o4"),
    "mmlu": ("routellm-mmlu",),
    "mt-bench": ("routellm-mtbench",),
    "math": ("zeroeval-math-l5",),
    "cruxeval": ("zeroeval-crux",),
    "arc": ("routerbench-arc-c",),
    "mbpp": ("routerbench-mbpp",),
    "winogrande": ("routerbench-winogrande",),
    "dcrouter": ("llmrouter-dcrouter",),
}
#: Families with no dev file: MT-bench is held out whole (shared/data/README.md section 2), so the shipped
#: router never trains on it and k-fold on it is within the file by default, as for any non-dev file.
HELD_OUT_FAMILIES = frozenset({"mt-bench"})
DEV_FAMILIES = frozenset(PROMPT_FAMILIES) - HELD_OUT_FAMILIES
PROTOCOLS = ("fixed", "kfold", "lobo")
SHINGLE_WORDS = 10
TEMPLATE_FRACTION = 0.02
TARGET_GRID = np.round(np.linspace(0.0, 1.0, 201), 4)


class QualityPredictor(Protocol):
    def fit(self, rows: list[OutcomeRow], candidates: list[str] | None = None, progress: bool = False) -> Any: ...
    def predict(self, prompts: list[str]) -> dict[str, np.ndarray]: ...
    def candidates(self) -> list[str]: ...


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked; the message says what to change."""


# ------------------------------------------------------------------------------ a reference baseline


class MeanScoreBaseline:
    """Baseline, not a router: predicts each candidate's mean training score for every prompt.

    It knows no prompt, so its curves show what the candidates' price/quality levels alone give;
    a learned model must beat it. Same interface as `routing.quality.QualityModel`.
    """

    def __init__(self) -> None:
        self._means: dict[str, float] = {}

    def fit(self, rows: list[OutcomeRow], candidates: list[str] | None = None, progress: bool = False):
        cands = candidates or common_candidates(rows, 0.0)
        for c in cands:
            vals = [r.outcomes[c].score for r in rows if c in r.outcomes]
            if not vals:
                raise EvaluationError(f"no training row scores candidate {c!r}")
            self._means[c] = float(np.mean(vals))
        return self

    def predict(self, prompts: list[str]) -> dict[str, np.ndarray]:
        return {c: np.full(len(prompts), m) for c, m in self._means.items()}

    def candidates(self) -> list[str]:
        return list(self._means)

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "mean_baseline.json").write_bytes(orjson.dumps({"kind": "mean-baseline", "means": self._means}))

    @classmethod
    def load(cls, directory: str | Path) -> MeanScoreBaseline:
        m = cls()
        m._means = orjson.loads((Path(directory) / "mean_baseline.json").read_bytes())["means"]
        return m


MODEL_KINDS = ("learned", "mean-baseline")


def model_class(kind: str = "learned") -> Any:
    """The class of quality model to train: B2's learned `QualityModel`, or the mean baseline."""
    if kind == "mean-baseline":
        return MeanScoreBaseline
    if kind != "learned":
        raise EvaluationError(f"unknown model kind {kind!r}; use one of {', '.join(MODEL_KINDS)}")
    try:
        from tiergate.routing.quality import QualityModel
    except ImportError as e:  # pragma: no cover - depends on the learned model being installed
        raise EvaluationError(f"the learned quality model is not available ({e})") from None
    return QualityModel


def load_model(directory: str | Path | None) -> Any:
    """A trained quality model from `directory`, or the one shipped in the package."""
    if directory is not None and (Path(directory) / "mean_baseline.json").exists():
        return MeanScoreBaseline.load(directory)
    cls = model_class("learned")
    if directory is None:
        directory = shipped_router_dir()
    return cls.load(directory)


def shipped_router_dir() -> Path:
    """Where the package's trained router artefacts live."""
    try:
        from tiergate.routing import quality

        default = getattr(quality, "DEFAULT_ARTIFACTS", None) or getattr(quality, "ARTIFACTS_DIR", None)
        if default is not None:
            return Path(default)
    except ImportError:  # pragma: no cover
        pass
    return Path(__file__).resolve().parent / "artifacts"


def policy_targets() -> dict[str, float]:
    """Policy name -> quality target, as the serving router defines them (`routing.policy`)."""
    return dict(POLICY_TARGETS)


# ------------------------------------------------------------------------------------------- splits


normalise = normalise_prompt  # the name the splits below use


def family_of(source: str) -> str:
    base = re.sub(r"-(dev|heldout|test|train)$", "", source)
    for fam, members in PROMPT_FAMILIES.items():
        if base in members:
            return fam
    return base


def kfold_splits(rows: Sequence[OutcomeRow], k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays; rows with the same normalised prompt share a fold."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(normalise(r.prompt), []).append(i)
    keys = list(groups)
    if len(keys) < k:
        raise EvaluationError(f"{len(keys)} distinct prompts cannot make {k} folds")
    order = np.random.default_rng(seed).permutation(len(keys))
    fold_of = np.empty(len(rows), dtype=int)
    for pos, gi in enumerate(order):
        fold_of[groups[keys[gi]]] = pos % k
    all_idx = np.arange(len(rows))
    return [(all_idx[fold_of != f], all_idx[fold_of == f]) for f in range(k)]


def _shingles(text: str) -> set[int]:
    words = normalise(text).split(" ")
    if len(words) < SHINGLE_WORDS:
        return {hash(" ".join(words))}
    return {hash(" ".join(words[i : i + SHINGLE_WORDS])) for i in range(len(words) - SHINGLE_WORDS + 1)}


def shared_prompt_mask(
    train: Sequence[OutcomeRow], test: Sequence[OutcomeRow], progress: bool = False
) -> np.ndarray:
    """True for training rows that share a (non-template) 10-word passage with a test prompt."""
    counts: dict[int, int] = {}
    for r in test:
        for h in _shingles(r.prompt):
            counts[h] = counts.get(h, 0) + 1
    limit = max(2, math.ceil(TEMPLATE_FRACTION * len(test)))
    content = {h for h, c in counts.items() if c <= limit}
    rows = _bar(train, progress, desc="leaving out training rows sharing a passage", unit="row")
    return np.array([not content.isdisjoint(_shingles(r.prompt)) for r in rows], dtype=bool)


def lobo_training_rows(
    eval_rows: Sequence[OutcomeRow], pool: Sequence[OutcomeRow], progress: bool = False
) -> tuple[list[OutcomeRow], dict[str, Any]]:
    """Training rows for leave-one-benchmark-out, and a record of what was left out and why."""
    fams = {family_of(r.source) for r in eval_rows}
    other = [r for r in pool if family_of(r.source) not in fams]
    shared = shared_prompt_mask(other, eval_rows, progress) if other else np.zeros(0, dtype=bool)
    train = [r for r, s in zip(other, shared, strict=True) if not s]
    excluded_sources = sorted({r.source for r in pool if family_of(r.source) in fams})
    dropped: dict[str, int] = {}
    for r, s in zip(other, shared, strict=True):
        if s:
            dropped[r.source] = dropped.get(r.source, 0) + 1
    info = {"families": sorted(fams), "excluded_sources": excluded_sources, "dropped_shared_prompts": dropped,
            "train_rows": len(train), "train_sources": sorted({r.source for r in train})}
    return train, info


# --------------------------------------------------------------------------------------- the policy


def policy_choice(pred: np.ndarray, est_cost: np.ndarray, quality_target: float) -> np.ndarray:
    """Per prompt: the cheapest candidate whose predicted score >= target x the best predicted score
    (ties: the higher predicted score)."""
    return choose_batch(pred, est_cost, quality_target)  # the serving rule, vectorised


# ------------------------------------------------------------------------------------- the pipeline


@dataclass
class Evaluation:
    """Everything one evaluation measured; `summary` is the JSON object the CLI prints."""

    summary: dict[str, Any]
    matrix: OutcomeMatrix
    predictions: np.ndarray
    router_points: list[M.Point]
    singles: list[M.Point]
    oracle: M.Point
    random: M.Point
    two_model_curves: dict[str, M.TwoModelCurve] = field(default_factory=dict)


def select_candidates(
    rows: Sequence[OutcomeRow], candidates: Sequence[str] | None, prices: PriceLookup | None, counter: TokenCounter | None
) -> tuple[OutcomeMatrix, list[str]]:
    """The outcome matrix to evaluate on, and the candidates left out (unpriced) with a reason."""
    if candidates:
        missing = [c for c in candidates if not any(c in r.outcomes for r in rows)]
        if missing:
            have = ", ".join(common_candidates(rows, 0.0))
            raise EvaluationError(f"no row scores {', '.join(missing)}; candidates in this file: {have}")
        mat = outcome_matrix(rows, candidates, prices, counter)
        unpriced = [c for c in mat.candidates if c not in mat.priced()]
        if len(mat.candidates) > 2 and unpriced:
            raise EvaluationError(
                f"no price for {', '.join(unpriced)} (no cost_usd in the rows, not in the catalogue): "
                "leave them out of --candidates or add their prices to the catalogue"
            )
        notes: list[str] = []
    else:
        cands = common_candidates(rows)
        if not rows:
            raise EvaluationError("no outcome rows to evaluate")
        if not cands:
            raise EvaluationError("no candidate is scored on every row; pass --candidates")
        mat = outcome_matrix(rows, cands, prices, counter)
        priced = mat.priced()
        notes = []
        if len(cands) > 2 and len(priced) >= 2 and len(priced) < len(cands):
            notes = [c for c in cands if c not in priced]
            mat = mat.select(priced)
    if len(mat.candidates) < 2:
        raise EvaluationError("routing needs at least two candidates")
    if mat.n == 0:
        raise EvaluationError("no row is scored for every selected candidate")
    return mat, notes


def _predict(model: Any, rows: Sequence[OutcomeRow], candidates: Sequence[str], progress: bool = False) -> np.ndarray:
    """Predictions as the serving router asks for them: for the candidates routed between (`only`), which
    turns on the pair-gain component when they are exactly one fitted pair (routing.steps); in batches
    with a progress bar."""
    prompts = [r.prompt for r in rows]
    if hasattr(model, "predict_features"):
        parts = [_columns(model.predict_features(model.features(chunk), chunk, only=set(candidates)), model,
                          candidates) for _lo, chunk in _batches(prompts, progress, "features and predictions")]
        return np.vstack(parts) if parts else np.empty((0, len(candidates)))
    return _columns(model.predict(prompts), model, candidates)


#: Prompts per batch when the serving router's predictions are computed for a whole file.
PREDICT_BATCH = 1024


def serving_predictions(
    router: Any, rows: Sequence[OutcomeRow], candidates: Sequence[str], progress: bool = False
) -> tuple[np.ndarray, dict[str, str], dict[str, str]]:
    """Predicted quality (n, k) of every candidate for every row exactly as the serving router
    (`routing.router.Router.assess`) predicts it, batched: from the quality model for the candidates it has
    outcome data for (matched as `Router.learned_key` matches them: exact key, catalogue canonical name,
    a reasoning model's default effort), routed between those candidates (`only`, as serving does); else
    from the candidate's profile (`profiles.yaml` or an override), shifted by the prompt's domain mixture
    and difficulty; else the mean prediction of every learned candidate (the "default"). Also returns
    candidate -> quality source ("learned" | "profile" | "default") and candidate -> profile citation
    (`Assessment.profile_source`) for the profile ones. Raises `EvaluationError` for a candidate nothing
    describes (as `Router.check_candidates`)."""
    from tiergate.routing.profiles import Profiles
    from tiergate.routing.router import Candidate, UnknownCandidate, profile_citation

    try:
        router.check_candidates(list(candidates))
    except UnknownCandidate as e:
        raise EvaluationError(str(e)) from None
    model = router.quality
    parsed = [Candidate.parse(c) for c in candidates]
    keys = [router.learned_key(c) for c in parsed]
    profiles = [None if k is not None else router.profile_for(c.model, c.effort) for c, k in zip(parsed, keys,
                                                                                                  strict=True)]
    sources = {c: "learned" if k is not None else "profile" if p is not None else "default"
               for c, k, p in zip(candidates, keys, profiles, strict=True)}
    cited = {c: profile_citation(p) for c, p in zip(candidates, profiles, strict=True) if p is not None}
    only = {k for k in keys if k is not None}
    prompts = [r.prompt for r in rows]
    out = np.empty((len(prompts), len(candidates)))
    for lo, texts in _batches(prompts, progress, "features and predictions"):
        X = model.features(texts)
        learned_keys, P = model.predict_matrix(X, texts, only=only)
        col = {k: j for j, k in enumerate(learned_keys)}
        dom = diff = everyone = None
        for j, (key, prof) in enumerate(zip(keys, profiles, strict=True)):
            if key is not None:
                out[lo : lo + len(texts), j] = P[:, col[key]]
            elif prof is not None:
                if dom is None:
                    dom = router.profiles.domain_probs(model.sources, model.resemblance(X))
                    diff = model.difficulty(X)
                out[lo : lo + len(texts), j] = Profiles.predict(prof, dom, diff)
            else:
                if everyone is None:  # every learned candidate, not only the routed ones (as serving)
                    everyone = model.predict_matrix(X, texts)[1].mean(axis=1)
                out[lo : lo + len(texts), j] = everyone
    return out, sources, cited


def _bar(it: Any, progress: bool, **kw: Any) -> Any:
    """`it` with a tqdm progress bar on stderr that stays visible when done (`progress=False`: as is)."""
    if not progress:
        return it
    from tqdm import tqdm

    return tqdm(it, leave=True, **kw)


def _batches(prompts: Sequence[str], progress: bool, desc: str) -> Any:
    """(start, prompts[start:start + PREDICT_BATCH]) for every batch, with a progress bar counted in prompts
    that stays visible when done."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(prompts), desc=desc, unit="prompt", leave=True)
    try:
        for lo in range(0, len(prompts), PREDICT_BATCH):
            chunk = list(prompts[lo : lo + PREDICT_BATCH])
            yield lo, chunk
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()


def batched_features(model: Any, prompts: Sequence[str], progress: bool = False, desc: str = "features") -> np.ndarray:
    """`model.features(prompts)` in batches, with a progress bar (the same matrix: features are per prompt)."""
    parts = [model.features(chunk) for _lo, chunk in _batches(prompts, progress, desc)]
    return np.vstack(parts) if parts else model.features([])


def _step(progress: bool, what: str, started: float) -> None:
    """A one-line summary on stderr of a slow step whose own progress bar is not kept (`progress`)."""
    if progress:
        import sys
        import time

        print(f"{what} in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def _columns(pred: dict[str, np.ndarray], model: Any, candidates: Sequence[str]) -> np.ndarray:
    missing = [c for c in candidates if c not in pred]
    if missing:
        raise EvaluationError(
            f"the router has no prediction for {', '.join(missing)}; it knows {', '.join(model.candidates())}. "
            "Train one that covers them (tiergate router train) or use --protocol kfold/lobo"
        )
    return np.column_stack([np.asarray(pred[c], dtype=float) for c in candidates])


def default_extra_benchmarks(rows: Sequence[OutcomeRow]) -> bool:
    """Whether k-fold should also train every fold on the other dev files by default: yes when the
    evaluated rows are dev-file rows (the shipped router is trained on every dev file, so that is its
    out-of-fold analogue); no for other outcome files, held-out MT-bench included (a router trained on
    them alone)."""
    return bool(rows) and all(family_of(r.source) in DEV_FAMILIES for r in rows)


def _extra_keep(extra: Sequence[OutcomeRow], sibling: np.ndarray, test_rows: Sequence[OutcomeRow]) -> np.ndarray:
    """Which extra rows a k-fold fold may train on. Rows of another file of the evaluated file's prompt
    family (the other LiveCodeBench snapshot: the same prompts) follow the fold rule itself: out when
    their normalised prompt is one of the fold's test prompts, in otherwise (as the shipped router trains
    on both). Rows of other benchmarks are out when they share a 10-word passage with a test prompt."""
    test_prompts = {normalise(r.prompt) for r in test_rows}
    keep = np.ones(len(extra), dtype=bool)
    sib = np.flatnonzero(sibling)
    keep[sib] = [normalise(extra[i].prompt) not in test_prompts for i in sib]
    rest = np.flatnonzero(~sibling)
    if rest.size:
        keep[rest] = ~shared_prompt_mask([extra[i] for i in rest], test_rows)
    return keep


def trained_on(model: Any, rows: Sequence[OutcomeRow]) -> dict[str, Any]:
    """What a trained router records about its training rows, against the evaluated rows: `train_sources`
    (the `source`s it was fitted on; None when it records none, like the mean baseline),
    `seen_sources` (those of an evaluated row's prompt family: scored on them the router may be scored
    on rows it was trained on; None when unknown) and `seen_prompts` (how many evaluated rows' prompts
    are among its training prompts, from the fingerprints it keeps; None for a router saved without
    them)."""
    sources = getattr(model, "sources", None)
    if not sources:
        return {"train_sources": None, "seen_sources": None, "seen_prompts": None}
    fams = {family_of(r.source) for r in rows}
    prints = getattr(model, "prompt_prints", None)
    return {"train_sources": sorted(sources), "seen_sources": sorted(s for s in sources if family_of(s) in fams),
            "seen_prompts": None if prints is None else count_seen([r.prompt for r in rows], prints)}


def _fit_candidates(model_kind: str, cands: Sequence[str]) -> list[str] | None:
    """What to fit: the learned model learns every candidate in its training rows, as the shipped router
    does (None); the mean baseline only needs the evaluated ones."""
    return None if model_kind == "learned" else list(cands)


def out_of_fold_predictions(
    mat: OutcomeMatrix,
    protocol: str,
    *,
    model_kind: str = "learned",
    router_dir: str | Path | None = None,
    k: int = 5,
    seed: int = 0,
    pool: Sequence[OutcomeRow] | None = None,
    extra_benchmarks: bool = True,
    progress: bool = False,
    also_without_texts: bool = False,
    profiles: str | Path | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Predicted scores (n, k) for every evaluated row, none from a model that saw that row.

    `also_without_texts` (kfold / lobo, learned model): `info["predictions_without_texts"]` also holds the same
    fold models' predictions from the features alone, i.e. without the components that read the
    prompt's words (`routing.neighbours`, `routing.steps`), and `info["predictions_without_pair_gain"]` their
    predictions with the words but not for exactly the evaluated candidates (so without the pair-gain
    blend of `routing.steps` only): ablations from the same fits."""
    cands = mat.candidates
    if profiles is not None and protocol != "fixed":
        raise EvaluationError("--profiles applies to --protocol fixed (the serving router); kfold and lobo score "
                              "every candidate from a model trained on its outcome rows")
    if protocol == "fixed" and (router_dir is None or not (Path(router_dir) / "mean_baseline.json").exists()) \
            and model_kind == "learned":
        # the learned router: every candidate predicted as the serving router predicts it (outcome data,
        # else its profile, else the default), as `tiergate route` and the gateway do
        from tiergate.routing.profiles import ProfileError
        from tiergate.routing.router import Router

        try:
            router = Router.load(router_dir, profiles=profiles)
        except ProfileError as e:
            raise EvaluationError(f"--profiles: {e}") from None
        pred, sources, cited = serving_predictions(router, mat.rows, cands, progress=progress)
        info = {"router": str(router_dir or shipped_router_dir()), **trained_on(router.quality, mat.rows),
                "model": "learned", "quality_sources": sources, "profile_sources": cited}
        if profiles is not None:
            info["profiles"] = str(profiles)
        return pred, info
    if protocol == "fixed":
        model = load_model(router_dir) if model_kind == "learned" or router_dir else None
        if model is None:
            raise EvaluationError("--protocol fixed needs --router DIR for the mean baseline")
        info = {"router": str(router_dir or shipped_router_dir()), **trained_on(model, mat.rows),
                "model": "mean-baseline" if isinstance(model, MeanScoreBaseline) else "learned"}
        return _predict(model, mat.rows, cands), info
    cls = model_class(model_kind)
    if protocol == "kfold":
        pred = np.empty((mat.n, len(cands)))
        folds = kfold_splits(mat.rows, k, seed)
        info: dict[str, Any] = {"folds": k, "seed": seed}
        extra: list[OutcomeRow] = []
        if extra_benchmarks:  # every fold also trains on the other files, minus rows sharing its prompts
            own = {r.id for r in mat.rows}
            extra = [r for r in (pool if pool is not None else load_outcomes(dev_files())) if r.id not in own]
            info["extra_sources"] = sorted({r.source for r in extra})
            info["extra_rows_per_fold"] = []
        fit_cands = _fit_candidates(model_kind, cands)
        proto = cls()
        feats = extra_feats = None
        if hasattr(proto, "predict_features"):  # embed every prompt once, not once per fold
            feats = batched_features(proto, [r.prompt for r in mat.rows], progress, "features (evaluated rows)")
            extra_feats = batched_features(proto, [r.prompt for r in extra], progress,
                                           "features (other files' rows)") if extra else None
        # each fold: leave out the rows sharing its prompts, fit, predict
        it: Any = _bar(folds, progress, desc=f"{k}-fold: filter, fit and predict", unit="fold")
        fams = {family_of(r.source) for r in mat.rows}
        without = np.empty_like(pred) if also_without_texts and feats is not None else None
        without_pair = np.empty_like(pred) if without is not None else None
        sibling = np.array([family_of(r.source) in fams for r in extra], dtype=bool)
        for train_idx, test_idx in it:
            test_rows = [mat.rows[i] for i in test_idx]
            keep = _extra_keep(extra, sibling, test_rows) if extra else np.zeros(0, dtype=bool)
            if extra:
                info["extra_rows_per_fold"].append(int(keep.sum()))
            train_rows = [mat.rows[i] for i in train_idx] + [r for r, ok in zip(extra, keep, strict=True) if ok]
            if feats is None:
                model = cls().fit(train_rows, fit_cands)
                pred[test_idx] = _predict(model, test_rows, cands)
            else:
                X = feats[train_idx] if extra_feats is None else np.vstack([feats[train_idx], extra_feats[keep]])
                model = cls(proto.extractor).fit(train_rows, fit_cands, features=X)
                texts = [r.prompt for r in test_rows]
                pred[test_idx] = _columns(model.predict_features(feats[test_idx], texts, only=set(cands)),
                                          model, cands)
                if without is not None:
                    without[test_idx] = _columns(model.predict_features(feats[test_idx]), model, cands)
                    without_pair[test_idx] = _columns(model.predict_features(feats[test_idx], texts), model, cands)
        if without is not None:
            info["predictions_without_texts"] = without
            info["predictions_without_pair_gain"] = without_pair
        return pred, info
    if protocol == "lobo":
        if pool is None:
            pool = load_outcomes(dev_files())
        train, info = lobo_training_rows(mat.rows, pool, progress)
        covered = [c for c in cands if any(c in r.outcomes for r in train)]
        if len(covered) < len(cands):
            lacking = sorted(set(cands) - set(covered))
            raise EvaluationError(
                f"leave-one-benchmark-out has no training rows for {', '.join(lacking)} (no other dev file scores "
                "them, and lobo scores a candidate only from a model trained on its outcome rows); use --protocol "
                "kfold for candidates recorded on this benchmark only, or --protocol fixed to score them as the "
                "serving router does (from a profile or the default)"
            )
        import time

        proto = cls()
        fit_kw: dict[str, Any] = {}
        if hasattr(proto, "predict_features"):  # features with a bar of their own, then the fit
            fit_kw["features"] = batched_features(proto, [r.prompt for r in train], progress,
                                                  "features (training rows)")
            proto = cls(proto.extractor)
        if progress:
            import sys

            print(f"fitting the {model_kind} model on {len(train)} rows ...", file=sys.stderr)
        started = time.perf_counter()
        model = proto.fit(train, _fit_candidates(model_kind, cands), progress=progress, **fit_kw)
        _step(progress, f"fitted the {model_kind} model on {len(train)} rows", started)
        if also_without_texts and hasattr(model, "predict_features"):
            X = model.features([r.prompt for r in mat.rows])
            info["predictions_without_texts"] = _columns(model.predict_features(X), model, cands)
            info["predictions_without_pair_gain"] = _columns(
                model.predict_features(X, [r.prompt for r in mat.rows]), model, cands)
        return _predict(model, mat.rows, cands, progress), info
    raise EvaluationError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")


def _finite(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _point(p: M.Point | None, name: str = "") -> dict[str, Any] | None:
    if p is None:
        return None
    out: dict[str, Any] = {"score": p.score, "cost_usd": _finite(p.cost_usd)}
    if name:
        out = {name: p.label, **out}
    return out


def score_predictions(mat: OutcomeMatrix, pred: np.ndarray, policy: str = "balanced") -> Evaluation:
    """All metrics for out-of-fold predictions `pred` on `mat`."""
    scores, costs = mat.scores, mat.costs
    cands = mat.candidates
    est = mat.est_costs.copy()
    for j in range(len(cands)):
        if np.isnan(est[:, j]).any():
            recorded = costs[:, j][np.isfinite(costs[:, j])]
            # No catalogue price: the candidate's mean recorded cost (its price level, not per prompt);
            # with no cost at all, the column order (only the two-model metrics are then meaningful).
            fallback = float(recorded.mean()) if recorded.size else float(j)
            est[:, j] = np.where(np.isnan(est[:, j]), fallback, est[:, j])
    targets = policy_targets()
    default_target = resolve_target(policy, None) or targets["balanced"]

    router_pts = []
    for t in TARGET_GRID:
        p = M.routed_point(policy_choice(pred, est, float(t)), scores, costs, f"{t:g}")
        router_pts.append(p)
    default_pt = M.routed_point(policy_choice(pred, est, default_target), scores, costs, f"{default_target:g}")
    singles = M.single_points(cands, scores, costs)
    best = M.best_single(cands, scores, costs)
    oracle = M.routed_point(M.oracle_choice(scores, costs), scores, costs, "oracle")
    rnd = M.random_point(scores, costs)
    priced = bool(np.isfinite(costs).all())
    front = M.pareto(router_pts) if priced else []
    cost_table = M.cost_at_quality_table(front if priced else [], best)

    summary: dict[str, Any] = {
        "n": mat.n,
        "sources": sorted({r.source for r in mat.rows}),
        "candidates": list(cands),
        "best_single": {"candidate": best.label, "score": best.score, "cost_usd": _finite(best.cost_usd)},
        "router": {"score": default_pt.score, "cost_usd": _finite(default_pt.cost_usd), "policy": policy,
                   "quality_target": default_target},
        "cost_at_quality": cost_table,
        "oracle": _point(oracle),
        "random": _point(rnd),
        "singles": [_point(p, "candidate") for p in singles],
        "pareto": [{"quality_target": float(p.label), "score": p.score, "cost_usd": p.cost_usd} for p in front],
        # costs need a price for every candidate on every row (cost_usd in the rows, else the catalogue)
        "cost_measurable": priced,
        "unpriced_candidates": [c for j, c in enumerate(cands) if not np.isfinite(costs[:, j]).all()],
    }
    curves: dict[str, M.TwoModelCurve] = {}
    if len(cands) == 2:
        means = scores.mean(axis=0)
        si = 0 if (means[0], -np.nan_to_num(est[:, 0].mean())) >= (means[1], -np.nan_to_num(est[:, 1].mean())) else 1
        wi = 1 - si
        s = two_model_score(pred[:, si], pred[:, wi])
        curves["router"] = M.router_curve(s, scores[:, si], scores[:, wi])
        curves["random"] = M.random_router_curve(scores[:, si], scores[:, wi])
        tm = M.two_model_summary(curves["router"])
        rm = M.two_model_summary(curves["random"])
        summary["two_model"] = {
            "strong": cands[si], "weak": cands[wi], "r_strong": float(means[si]), "r_weak": float(means[wi]),
            "apgr": tm["apgr"], "auc": tm["auc"], "cpt": tm["cpt"], "points": tm["points"],
            "random": {"apgr": rm["apgr"], "auc": rm["auc"], "cpt": rm["cpt"]},
        }
    return Evaluation(summary, mat, pred, router_pts, singles, oracle, rnd, curves)


def evaluate(
    rows: Sequence[OutcomeRow],
    *,
    candidates: Sequence[str] | None = None,
    protocol: str = "fixed",
    model_kind: str = "learned",
    router_dir: str | Path | None = None,
    k: int = 5,
    seed: int = 0,
    pool: Sequence[OutcomeRow] | None = None,
    policy: str = "balanced",
    include_contaminated: bool = False,
    extra_benchmarks: bool | None = None,
    prices: PriceLookup | None = None,
    counter: TokenCounter | None = None,
    progress: bool = False,
    profiles: str | Path | None = None,
) -> Evaluation:
    """Evaluate a router on `rows` under `protocol`; see the module docstring.

    `extra_benchmarks` (kfold only): None = `default_extra_benchmarks(rows)`."""
    dropped = 0
    if not include_contaminated:
        kept = [r for r in rows if not r.meta.get("routellm_contaminated")]
        dropped, rows = len(rows) - len(kept), kept
        if dropped and not rows:
            raise EvaluationError(f"all {dropped} rows are marked contaminated by RouteLLM "
                                  "(meta.routellm_contaminated); pass --include-contaminated to score them")
    mat, unpriced = select_candidates(rows, candidates, prices, counter)
    coverage = candidate_coverage(rows, candidates)
    if extra_benchmarks is None:
        extra_benchmarks = protocol == "kfold" and default_extra_benchmarks(mat.rows)
    pred, info = out_of_fold_predictions(
        mat, protocol, model_kind=model_kind, router_dir=router_dir, k=k, seed=seed, pool=pool,
        extra_benchmarks=extra_benchmarks, progress=progress, profiles=profiles,
    )
    ev = score_predictions(mat, pred, policy)
    sources = info.pop("quality_sources", None) or {c: "learned" for c in mat.candidates}
    ev.summary.update({"protocol": protocol, "model": info.pop("model", model_kind), "protocol_info": info,
                       "excluded_unpriced": unpriced, "excluded_contaminated": dropped,
                       "quality_sources": sources, "profile_sources": info.pop("profile_sources", {}),
                       **coverage, "rows_dropped_missing_candidates": len(rows) - mat.n})
    return ev


def candidate_coverage(rows: Sequence[OutcomeRow], candidates: Sequence[str] | None) -> dict[str, Any]:
    """How the rows cover the candidates, for the report: `rows_total`; without named candidates,
    `excluded_partial` (candidate -> rows scoring it, for those scored on some rows but not all: left out);
    with them, `missing_by_candidate` (candidate -> rows lacking it: those rows are left out)."""
    counts: dict[str, int] = {}
    for r in rows:
        for c in r.outcomes:
            counts[c] = counts.get(c, 0) + 1
    n = len(rows)
    if candidates:
        missing = {c: n - counts.get(c, 0) for c in candidates if counts.get(c, 0) < n}
        return {"rows_total": n, "excluded_partial": {}, "missing_by_candidate": missing}
    return {"rows_total": n, "excluded_partial": {c: k for c, k in counts.items() if k < n},
            "missing_by_candidate": {}}


def to_json(summary: dict[str, Any]) -> bytes:
    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError

    def clean(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    return orjson.dumps(clean(summary), default=default, option=orjson.OPT_SERIALIZE_NUMPY)

