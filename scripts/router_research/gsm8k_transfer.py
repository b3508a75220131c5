"""Cross-benchmark signals for the gpt-4-1106-preview vs Mixtral pair, scored leave-one-benchmark-out
(LOBO) on the five files that score that pair; the target is routellm-gsm8k (RouteLLM's 1,307
uncontaminated prompts), trained with no GSM8K data (`evaluate.lobo_training_rows`).

Protocol (as `pair_lobo.py`): every recipe is scored LOBO on GSM8K and on the four other pair files
(MMLU, ARC-C, Winogrande, MBPP); a recipe is chosen by the mean APGR on those four ("val"), never on
GSM8K. GSM8K is reported for every recipe.

What is new here (see docs/router-research-gsm8k.md):
- `question_text`: a generic, serving-feasible prompt clean-up (ZeroEval template stripped, few-shot
  blocks that end in `Answer: X` dropped), so counts describe the question actually asked.
- `step_features`: "reasoning steps" counts on the question (numbers, number words, quantity
  relations, conditionals, clauses, entities, units, ...), regex and token-set counts.
- `pair:KINDS`: ridge on the evaluated pair's own strong-minus-weak gap (files scoring both models),
  features centred within each file, each file weighted equally (R3's `gain-ridge`).
- `xpair:` / `xreason:` / `xonly:`: also (or only) the gap of OTHER model pairs (gpt-4o vs gpt-3.5 on
  MATH-L5 / CRUXEval, nemotron-49b vs mistral-7b on dcrouter, gpt-4 vs gpt-3.5 / llama-2-70b on
  RouterBench, ...; `PAIRS`), every file weighing 1 in total, split between its pairs.
- `...@zfile`: features z-scored within each file (training) and within the evaluated set (test;
  label-free, transductive: in serving this needs a reference distribution of recent traffic).
- `...@near`: training files weighted by resemblance of their mean feature vector to the evaluated
  prompts' (label-free).
- `...@win`: logistic regression on "strong score > weak score" instead of the ridge on the gap;
  `...@aN`: ridge alpha N (default 10, fixed a priori as in R3); `...@med`: median of per-file fits.
- `A & B`: rank average of recipes within the evaluated set (label-free but transductive); `A ~ B`:
  the serving-feasible form, each score mapped through its empirical CDF over 3,000 training prompts
  of the pair files; `len` = log words of the question; `shipped` = the production router
  (`quality.QualityModel`) trained on the same LOBO rows (cached: ~3 min per file), as served between
  the pair (since session 2 that includes the pair-gain blend of `routing.steps`); `base` = the same fit
  without the blend (what session 1's `shipped` rows were; session 1's `shipped ~ X` is `base ~ X`).
- session 5: `rare` (8 o200k token-rarity features, `rare_features`) and `arith` (5 arithmetic-load
  features, `arith_features`), as feature kinds (`pair:steps+rare@win`, ...); `singles --kinds rare+arith`.

Commands (from the repository root; `recipes` takes ~14 min the first time, training the production
router once per file, then ~2 min on one shared core):

    python scripts/router_research/build_cache.py struct extra
    python scripts/router_research/gsm8k_transfer.py singles      # single-feature APGR diagnostic
    python scripts/router_research/gsm8k_transfer.py recipes      # the recipe table
    python scripts/router_research/gsm8k_transfer.py recipes --recipes "pair:steps;pair:steps@win"
    python scripts/router_research/gsm8k_transfer.py detail --recipe pair:steps --ref pair:se
    python scripts/router_research/gsm8k_transfer.py detail --recipe "base ~ pair:steps@win" --ref base
    python scripts/router_research/gsm8k_transfer.py recipes --recipes "pair:steps+arith;base ~ pair:steps+rare@win"
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
import time

import numpy as np
from common import CACHE, STRONG, WEAK, E, all_rows, by_source, feature_matrix, two_model

from tiergate.routing.data import OutcomeRow

BENCHES = ["routellm-gsm8k", "routellm-mmlu", "routerbench-arc-c", "routerbench-winogrande", "routerbench-mbpp"]
TARGET = "routellm-gsm8k"

# ------------------------------------------------------------------------------- question clean-up

_FEWSHOT_END = re.compile(r"Answer:\s*[A-E]\s*\n\s*\n")


def question_text(prompt: str) -> str:
    """The question actually asked: ZeroEval's `## Question:` ... `## Instruction` extracted, few-shot
    examples that end in `Answer: <letter>` dropped. Generic (no file knowledge), so usable at serving."""
    q = prompt
    if "## Question:" in q:
        q = q.split("## Question:", 1)[1].split("## Instruction", 1)[0]
    return _FEWSHOT_END.split(q)[-1].strip()


# ------------------------------------------------------------------------------ reasoning-step counts

_NUMBER = re.compile(r"(?<![\w.])\$?\d+(?:,\d{3})*(?:\.\d+)?%?")
_WORD = re.compile(r"[a-z]+")


def _vocab(words: str) -> frozenset[str]:
    return frozenset(words.split())


_NUMWORD = _vocab(
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred "
    "thousand million dozen dozens half halves twice double triple thrice third thirds quarter "
    "quarters fourth fourths fifth fifths tenth tenths"
)
_RELATION = _vocab(
    "each per every percent ratio fraction remaining remainder rest left total altogether combined "
    "average difference sum product twice half increase increases increased decrease decreases "
    "decreased discount profit split share shares shared divided"
)
_RELATION2 = frozenset(["more than", "less than", "fewer than", "greater than", "times as", "as many", "as much"])
_COND = _vocab("if when after before until unless then while otherwise except instead only but")
_STEP = _vocab("then later first second third finally next remaining rest afterwards again")
_STEP2 = frozenset(["after that"])
_UNIT = _vocab(
    "dollar dollars cent cents hour hours minute minutes second seconds day days week weeks month "
    "months year years mile miles km kilometer kilometers meter meters feet foot inch inches pound "
    "pounds kg kilogram kilograms gram grams ounce ounces liter liters gallon gallons cup cups page "
    "pages mph"
)
_ASK = _vocab("calculate find compute determine")
_ASK2 = frozenset(["how many", "how much", "how long", "how far", "how old", "what is", "what was"])
_PRON = _vocab("he she they it his her their them him its")
_NEG = _vocab("not no never none neither nor")
_CLAUSE = _vocab("and but while")
_SENT = re.compile(r"[.?!](?:\s|$)")
_CAP = re.compile(r"(?<![.?!]\s)(?<!^)\b[A-Z][a-z]+")
_FRAC = re.compile(r"\d+/\d+|\d+\.\d+|\d+%")


def _count(words: list[str], bigrams: list[str], one: frozenset[str], two: frozenset[str] = frozenset()) -> int:
    return sum(w in one for w in words) + (sum(b in two for b in bigrams) if two else 0)


STEP_NAMES = ["q_words", "q_sentences", "q_numbers", "q_uniqnums", "q_numwords", "q_relations", "q_quantities",
              "q_conds", "q_clauses", "q_entities", "q_units", "q_asks", "q_fracs", "q_words_per_sent",
              "q_maxmag", "q_steps", "q_pronouns", "q_negs"]


def step_features(prompt: str) -> np.ndarray:
    """Regex counts of the reasoning load of the question (log1p), `STEP_NAMES` order."""
    q = question_text(prompt)
    low = q.lower()
    toks = _WORD.findall(low)  # lower-case word tokens: set look-ups are ~5x faster than big regex alternations
    bi = [f"{a} {b}" for a, b in itertools.pairwise(toks)]
    words = q.split()
    nums = _NUMBER.findall(q)
    vals = []
    for n in nums:
        try:
            vals.append(abs(float(n.strip("$%").replace(",", ""))))
        except ValueError:
            pass
    sents = max(1, len(_SENT.findall(q)))
    nw = _count(toks, bi, _NUMWORD)
    raw = [
        len(words), sents, len(nums), len(set(nums)), nw, _count(toks, bi, _RELATION, _RELATION2) + q.count("%"),
        len(nums) + nw, _count(toks, bi, _COND), q.count(",") + q.count(";") + _count(toks, bi, _CLAUSE),
        len(set(_CAP.findall(q))), _count(toks, bi, _UNIT) + q.count("$"), _count(toks, bi, _ASK, _ASK2),
        len(_FRAC.findall(q)), len(words) / sents, math.log10(1 + max(vals, default=0.0)),
        _count(toks, bi, _STEP, _STEP2), _count(toks, bi, _PRON), _count(toks, bi, _NEG) + low.count("n't"),
    ]
    return np.log1p(np.array(raw, dtype=np.float64)).astype(np.float32)


def steps_matrix(rows: list[OutcomeRow]) -> np.ndarray:
    """`step_features` for rows, cached over all dev rows in .cache/steps.npz (rebuilt if stale)."""
    path = CACHE / "steps.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        pos = {i: k for k, i in enumerate(z["ids"])}
        if len(z["X"][0]) == len(STEP_NAMES) and all(r.id in pos for r in rows):
            return z["X"][[pos[r.id] for r in rows]]
    allr = all_rows()
    X = np.stack([step_features(r.prompt) for r in allr])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=np.array([r.id for r in allr]), X=X)
    return steps_matrix(rows)


# ----------------------------------------------------------------- session 5: token rarity, arithmetic load
# Designed before any figure of them was seen (docs/router-research-gsm8k.md, session 5). Both on the question
# part cut to 2,000 characters (the serving cap of `routing.steps`).

RARE_NAMES = ["r_meanlog", "r_q90log", "r_maxlog", "r_gt20k", "r_gt50k", "r_gt100k", "r_multiword", "r_tokperword"]
ARITH_NAMES = ["a_optypes", "a_hardnums", "a_maxdec", "a_derived", "a_convs"]
QCAP = 2000
_ENC = None
_ALPHA_START: np.ndarray | None = None
_ALPHA_END: np.ndarray | None = None


def _o200k():
    """o200k_base and, per token id, whether its bytes start / end with an ASCII letter (built once)."""
    global _ENC, _ALPHA_START, _ALPHA_END
    if _ENC is None:
        from tiergate.accounting.tokens import get_encoding

        enc = get_encoding("o200k_base")
        n = enc.n_vocab
        st, en = np.zeros(n, bool), np.zeros(n, bool)
        for i in range(n):
            try:
                b = enc.decode_single_token_bytes(i)
            except KeyError:
                continue
            if b:
                st[i] = 65 <= b[0] <= 90 or 97 <= b[0] <= 122
                en[i] = 65 <= b[-1] <= 90 or 97 <= b[-1] <= 122
        _ENC, _ALPHA_START, _ALPHA_END = enc, st, en
    return _ENC, _ALPHA_START, _ALPHA_END


def rare_features(prompt: str) -> np.ndarray:
    """Vocabulary rarity of the question from its o200k token ids (ids ~ BPE merge order ~ rarity)."""
    q = question_text(prompt)[:QCAP]
    enc, st, en = _o200k()
    ids = np.array(enc.encode_ordinary(q), dtype=np.int64)
    if not len(ids):
        return np.zeros(len(RARE_NAMES))
    lg = np.log1p(ids)
    cont = st[ids[1:]] & en[ids[:-1]]  # a letter token glued to a letter token: the same word continues
    multi = int((cont & ~np.concatenate([[False], cont[:-1]])).sum())  # words with >= 1 continuation
    nwords = max(1, len(q.split()))
    return np.array([lg.mean(), np.quantile(lg, 0.9), lg.max(), (ids > 20_000).mean(), (ids > 50_000).mean(),
                     (ids > 100_000).mean(), math.log1p(multi), len(ids) / nwords])


_I = re.IGNORECASE
_A_NUM = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?")
_A_KINDS = {
    "percent": re.compile(r"%|\bpercent", _I),
    "fraction": re.compile(r"\d+/\d+|\b(?:half|halves|third|thirds|quarter|quarters|fourths?|fifths?|tenths?)\b", _I),
    "rate": re.compile(r"\b(?:per|each|every|mph)\b|\ban? (?:hour|minute|day|week|month|year)\b", _I),
    "mult": re.compile(r"\b(?:twice|double|triple|thrice|quadruple)\b|\b\d+ times\b|\btimes as\b", _I),
    "add": re.compile(r"\b(?:more|less|fewer|greater|older|younger|longer|shorter|taller) than\b", _I),
    "average": re.compile(r"\b(?:average|mean)\b", _I),
    "share": re.compile(r"\b(?:split|share|shares|shared|divided|divide|equally|evenly)\b", _I),
}
_A_DERIVED = re.compile(
    r"(?:\d+(?:\.\d+)?%|\d+/\d+|\b(?:half|third|thirds|quarter|quarters|fourths?|fifths?|tenths?|twice|double|"
    r"triple|thrice)|\b\d+ times)\s+(?:of\b|as\s+\w+(?:\s+\w+)?\s+as\b)", _I)
_A_UNITS = {
    "time": ["second", "minute", "hour", "day", "week", "month", "year"],
    "length": ["inch", "foot", "feet", "yard", "mile", "meter", "metre", "kilometer", "km", "centimeter", "cm"],
    "weight": ["ounce", "pound", "gram", "kilogram", "kg", "ton"],
    "money": ["dollar", "cent", "$"],
    "volume": ["cup", "pint", "quart", "gallon", "liter", "litre", "ml"],
}
_A_UNIT_RE = {d: [re.compile(r"\$" if u == "$" else rf"\b{u}(?:s|es)?\b", _I) for u in us] for d, us in _A_UNITS.items()}
_A_DOZEN = re.compile(r"\b(?:dozens?|pairs?)\b", _I)


def arith_features(prompt: str) -> np.ndarray:
    """Arithmetic load beyond counts: kinds of operation, hard operands, decimals, derived quantities,
    unit conversions."""
    q = question_text(prompt)[:QCAP]
    kinds = sum(bool(r.search(q)) for r in _A_KINDS.values())
    dims = sum(sum(bool(r.search(q)) for r in rs) >= 2 for rs in _A_UNIT_RE.values())
    conv = dims + (1 if _A_DOZEN.search(q) else 0)
    kinds += conv > 0
    hard, maxdec = 0, 0
    for n in _A_NUM.findall(q):
        n = n.replace(",", "")
        digits = n.replace(".", "").lstrip("0").rstrip("0")
        hard += len(digits) >= 3
        if "." in n:
            maxdec = max(maxdec, len(n.split(".", 1)[1]))
    return np.array([kinds, math.log1p(hard), maxdec, math.log1p(len(_A_DERIVED.findall(q))), conv], dtype=np.float64)


def _cached(name: str, fn, width: int, rows: list[OutcomeRow]) -> np.ndarray:
    path = CACHE / f"{name}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        pos = {i: k for k, i in enumerate(z["ids"])}
        if z["X"].shape[1] == width and all(r.id in pos for r in rows):
            return z["X"][[pos[r.id] for r in rows]]
    allr = all_rows()
    X = np.stack([fn(r.prompt) for r in allr])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=np.array([r.id for r in allr]), X=X.astype(np.float32))
    return _cached(name, fn, width, rows)


def rare_matrix(rows: list[OutcomeRow]) -> np.ndarray:
    return _cached("rare", rare_features, len(RARE_NAMES), rows)


def arith_matrix(rows: list[OutcomeRow]) -> np.ndarray:
    return _cached("arith", arith_features, len(ARITH_NAMES), rows)


def qse_matrix(rows: list[OutcomeRow]) -> np.ndarray:
    """struct + extra counts of `question_text` (not the whole prompt), cached in .cache/qse.npz."""
    path = CACHE / "qse.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        pos = {i: k for k, i in enumerate(z["ids"])}
        if all(r.id in pos for r in rows):
            return z["X"][[pos[r.id] for r in rows]]
    from common import extra_struct

    from tiergate.routing.features import structural

    allr = all_rows()
    X = np.stack([np.concatenate([structural(q), extra_struct(q)]) for q in (question_text(r.prompt) for r in allr)])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=np.array([r.id for r in allr]), X=X.astype(np.float32))
    return qse_matrix(rows)


def feats(rows: list[OutcomeRow], kinds: str) -> np.ndarray:
    """Feature kinds joined by '+': `se` = struct,extra (30 counts on the whole prompt), `qse` = the
    same 30 counts on the question part, `steps` = `step_features`."""
    get = {"se": lambda r: feature_matrix(r, ("struct", "extra")), "qse": qse_matrix, "steps": steps_matrix,
           "rare": rare_matrix, "arith": arith_matrix}
    return np.hstack([get[k](rows) for k in kinds.split("+")]).astype(np.float64)


# --------------------------------------------------------------------------------- training targets

_RB_PAIRS = [(STRONG, WEAK), (STRONG, "gpt-3.5-turbo-1106"), ("claude-v2", "llama-2-70b-chat")]
_ZE_PAIRS = [("gpt-4o-2024-08-06", "gpt-3.5-turbo-0125"), ("claude-3-5-sonnet-20241022", "llama-3.1-70b-instruct"),
             ("gpt-4o-2024-08-06", "gemini-1.5-flash")]
_DC_PAIRS = [("llama-3.3-nemotron-super-49b-v1", "mistral-7b-instruct-v0.3"),
             ("llama-3.1-nemotron-51b-instruct", "llama-3.1-8b-instruct")]
_LCB_PAIRS = [("gpt-4o-2024-08-06", "gpt-4o-mini"), ("claude-3-5-sonnet-20241022", "claude-3-haiku-20240307")]
# (strong, weak) pairs per source whose gap is a training target; "pair" = the evaluated pair only.
PAIRS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "pair": {s: [(STRONG, WEAK)] for s in BENCHES},
    "xpair": {
        "routellm-gsm8k": [(STRONG, WEAK)], "routellm-mmlu": [(STRONG, WEAK)],
        "routerbench-arc-c": _RB_PAIRS, "routerbench-winogrande": _RB_PAIRS, "routerbench-mbpp": _RB_PAIRS,
        "zeroeval-math-l5": _ZE_PAIRS, "zeroeval-crux": _ZE_PAIRS, "zeroeval-gsm": _ZE_PAIRS,
        "llmrouter-dcrouter": _DC_PAIRS, "livecodebench-o1": _LCB_PAIRS, "livecodebench-o3o4": _LCB_PAIRS,
    },
}
# reasoning-heavy files only (plus the evaluated pair's own rows): idea 1 of the brief
PAIRS["xreason"] = {s: p for s, p in PAIRS["xpair"].items()
                    if s in BENCHES or s in ("zeroeval-math-l5", "zeroeval-crux", "zeroeval-gsm", "llmrouter-dcrouter")}
# other pairs only: no gpt-4-1106/Mixtral row at all
PAIRS["xonly"] = {s: [p for p in ps if p != (STRONG, WEAK)] for s, ps in PAIRS["xpair"].items()}


def gap_targets(tr: list[OutcomeRow], pairs: dict[str, list[tuple[str, str]]]):
    """(row index, gap, weight, group) per (row, pair) unit; every source weighs 1 in total, split
    equally between its pairs."""
    idx, gap, grp = [], [], []
    for i, r in enumerate(tr):
        for s, w in pairs.get(r.source, []):
            if s in r.outcomes and w in r.outcomes:
                idx.append(i)
                gap.append(r.outcomes[s].score - r.outcomes[w].score)
                grp.append(r.source)
    grp_a = np.array(grp)
    wts = np.zeros(len(idx))
    for s in set(grp):
        m = grp_a == s
        wts[m] = 1.0 / m.sum()
    return np.array(idx), np.array(gap), wts / wts.mean(), grp_a


def _standardise_within(X: np.ndarray, groups: np.ndarray, scale: bool) -> np.ndarray:
    Xc = X.copy()
    for g in set(groups.tolist()):
        m = groups == g
        Xc[m] -= Xc[m].mean(0)
        if scale:
            Xc[m] /= Xc[m].std(0) + 1e-6
    return Xc


def _near_weights(Xtr: np.ndarray, src: np.ndarray, Xte: np.ndarray) -> dict[str, float]:
    """Per training source: exp(-d / median d), d = distance of its mean (globally standardised)
    feature vector to the evaluated prompts' mean. Label-free; fixed a priori."""
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    t = ((Xte - mu) / sd).mean(0)
    d = {s: float(np.linalg.norm(((Xtr[src == s] - mu) / sd).mean(0) - t)) for s in set(src.tolist())}
    med = float(np.median(list(d.values())))
    return {s: math.exp(-v / med) for s, v in d.items()}


def ridge_gap(tr, ev, kinds: str, pairs: str, alpha: float = 10.0, zfile: bool = False, near: bool = False,
              win: bool = False, med: bool = False):
    """Weighted ridge from within-file-centred features to the strong-minus-weak gap; returns s(ev).
    `win`: weighted logistic regression on "strong right, weak wrong" (gap > 0) instead, C = 1/alpha.
    `med`: one ridge per training source, the element-wise median of their coefficients (a direction
    most files agree on, rather than the pooled one)."""
    Xall, Xte = feats(tr, kinds), feats(ev, kinds)
    idx, y, w, grp = gap_targets(tr, PAIRS[pairs])
    src = np.array([r.source for r in tr])
    if near:
        nw = _near_weights(Xall, src, Xte)
        w = w * np.array([nw[g] for g in grp])
        w = w / w.mean()
    Xc = _standardise_within(Xall, src, zfile)[idx]
    sd = Xc.std(0) + 1e-6
    Z = Xc / sd
    if med:
        per = []
        for g in sorted(set(grp.tolist())):
            m = grp == g
            Zg = Z[m]
            per.append(np.linalg.solve(Zg.T @ Zg / m.sum() + alpha / len(y) * np.eye(Z.shape[1]), Zg.T @ y[m] / m.sum()))
        coef = np.median(np.array(per), 0)
    elif win:
        from sklearn.linear_model import LogisticRegression

        coef = LogisticRegression(C=1.0 / alpha, max_iter=3000).fit(Z, y > 0, sample_weight=w).coef_[0]
    else:
        A = (Z * w[:, None]).T @ Z + alpha * np.eye(Z.shape[1])
        coef = np.linalg.solve(A, (Z * w[:, None]).T @ y)
    Xt = (Xte - Xte.mean(0)) / (Xte.std(0) + 1e-6) if zfile else Xte
    return (Xt / sd) @ coef, coef


def rank(v: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(v, kind="stable"), kind="stable") / (len(v) - 1)


def reference_rows(tr: list[OutcomeRow], n: int = 3000) -> list[OutcomeRow]:
    """A fixed sample of training prompts from the pair files (what serving would calibrate on:
    prompts the router was trained on, not the evaluated ones)."""
    pool = [r for r in tr if r.source in BENCHES and STRONG in r.outcomes and WEAK in r.outcomes]
    pick = np.random.default_rng(0).permutation(len(pool))[:n]
    return [pool[i] for i in sorted(pick)]


def shipped_lobo(ev: list[OutcomeRow], tr: list[OutcomeRow], base: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """s(p) of the production router (`quality.QualityModel`, default config, what
    `evaluate.out_of_fold_predictions` trains for protocol lobo) trained on the LOBO rows `tr`, for the
    evaluated rows and for `reference_rows(tr)`; cached per benchmark (one training takes minutes).
    Since session 2 the production router includes the pair-gain blend (`routing.steps`): `shipped` =
    as served (routed between the pair, blend on); `base=True` = the same fit without the blend (the
    router the doc's session-1 `shipped` rows describe, the base of the `base ~ ...` blends)."""
    ref = reference_rows(tr)
    path = CACHE / f"shipped_lobo_{ev[0].source}.npz"
    key = "s_base" if base else "s"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        if "s_base" in z and list(z["ids"]) == [r.id for r in ev] and list(z["ids_ref"]) == [r.id for r in ref]:
            return z[key], z[key + "_ref"]
    model = E.model_class("learned")().fit(tr, None)
    rows = ev + ref
    prompts = [r.prompt for r in rows]
    X = model.features(prompts)
    out = {}
    for k, only in (("s", {STRONG, WEAK}), ("s_base", None)):
        pred = model.predict_features(X, prompts, only=only)
        s = E.two_model_score(np.asarray(pred[STRONG], float), np.asarray(pred[WEAK], float))
        out[k], out[k + "_ref"] = s[:len(ev)], s[len(ev):]
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=np.array([r.id for r in ev]), ids_ref=np.array([r.id for r in ref]), **out)
    return out[key], out[key + "_ref"]


def cdf_blend(parts: list[str], tr, ev, weights: tuple[float, ...] | None = None) -> np.ndarray:
    """Mean (or `weights`-weighted sum) over recipes of the empirical CDF of their score over
    `reference_rows(tr)`: the serving-feasible form of the rank average (no use of the evaluated prompts'
    score distribution)."""
    ref = reference_rows(tr)
    out = []
    for p in parts:
        if p in ("shipped", "base"):
            s_ev, s_ref = shipped_lobo(ev, tr, base=p == "base")
        else:
            s_all = recipe_score(p, tr, ev + ref)
            s_ev, s_ref = s_all[:len(ev)], s_all[len(ev):]
        out.append(np.searchsorted(np.sort(s_ref), s_ev, side="right") / len(s_ref))
    if weights is not None:
        return np.sum([w * o for w, o in zip(weights, out, strict=True)], 0)
    return np.mean(out, 0)


def recipe_score(name: str, tr, ev) -> np.ndarray:
    """Recipe names: `len` (question words), `feat:NAME` (one step feature), or
    `PAIRS:KINDS[@zfile][@near][@win][@aALPHA]` (ridge_gap), `shipped` (the production router, LOBO),
    `A & B` = rank average within the evaluated set, `A ~ B` = `cdf_blend` (serving-feasible)."""
    if " & " in name:
        parts = name.split(" & ")
        return np.mean([rank(recipe_score(p, tr, ev)) for p in parts], 0)
    if " ~ " in name:
        return cdf_blend(name.split(" ~ "), tr, ev)
    m = re.fullmatch(r"(.+) ~\[([0-9.]+)\] (.+)", name)
    if m:  # `A ~[w] B`: w F_A + (1 - w) F_B (production's `router_weight` is w for A = base)
        return cdf_blend([m.group(1), m.group(3)], tr, ev, weights=(float(m.group(2)), 1 - float(m.group(2))))
    if name in ("shipped", "base"):
        return shipped_lobo(ev, tr, base=name == "base")[0]
    if name == "len":
        return steps_matrix(ev)[:, STEP_NAMES.index("q_words")].astype(np.float64)
    if name.startswith("feat:"):
        return steps_matrix(ev)[:, STEP_NAMES.index(name[5:])].astype(np.float64)
    base, *flags = name.split("@")
    pairs, kinds = base.split(":")
    alpha = next((float(f[1:]) for f in flags if f.startswith("a")), 10.0)
    return ridge_gap(tr, ev, kinds, pairs, alpha, zfile="zfile" in flags, near="near" in flags, win="win" in flags,
                     med="med" in flags)[0]


def eval_sets():
    """(bench, evaluated rows, LOBO training rows) for the five pair files."""
    rows = all_rows()
    out = []
    for b in BENCHES:
        ev = [r for r in by_source(rows, b) if not r.meta.get("routellm_contaminated")
              and STRONG in r.outcomes and WEAK in r.outcomes]
        tr, _ = E.lobo_training_rows(ev, rows)
        out.append((b, ev, tr))
    return out


def _labels(ev):
    return (np.array([r.outcomes[STRONG].score for r in ev]), np.array([r.outcomes[WEAK].score for r in ev]))


def singles(sets, kinds: str = "steps") -> None:
    rng = np.random.default_rng(0)
    print(f"{'feature (question part)':24s} " + " ".join(f"{b.split('-', 1)[1][:10]:>10s}" for b in BENCHES) + "    val")
    mats = {"steps": (STEP_NAMES, steps_matrix), "rare": (RARE_NAMES, rare_matrix), "arith": (ARITH_NAMES, arith_matrix)}
    for n, j, mat in [(n, j, m) for k in kinds.split("+") for j, n in enumerate(mats[k][0]) for m in [mats[k][1]]]:
        a = []
        for _b, ev, _tr in sets:
            st, wk = _labels(ev)
            a.append(two_model(mat(ev)[:, j] + 1e-9 * rng.random(len(ev)), st, wk)["apgr"])
        print(f"{n:24s} " + " ".join(f"{v:10.3f}" for v in a) + f"  {np.mean(a[1:]):.3f}")


RECIPES = [
    "pair:se", "pair:steps", "pair:se+steps",
    "xpair:se", "xpair:steps", "xpair:se+steps",
    "xreason:steps", "xreason:se+steps", "xonly:steps", "xonly:se+steps",
    "pair:steps@zfile", "xpair:steps@zfile", "xpair:se+steps@zfile", "xreason:steps@zfile",
    "xpair:steps@near", "xpair:se+steps@near", "xreason:se+steps@near",
    "len", "feat:q_quantities",
    "pair:se & len", "xpair:steps & len", "xpair:se+steps & len", "xreason:steps & len",
    "pair:se & xpair:steps",
    "pair:qse", "pair:qse+steps", "pair:steps@a1", "pair:steps@a100", "pair:steps@win", "pair:qse+steps@win",
    "xpair:qse+steps", "xreason:qse+steps",
    "pair:steps & xpair:steps", "pair:steps & xreason:steps", "pair:steps & pair:se", "pair:steps & len",
    "pair:steps@med", "xpair:steps@med", "xreason:steps@med", "xpair:qse+steps@med", "xreason:qse+steps@med",
    "pair:qse+steps@med",
    "shipped", "shipped & pair:steps", "shipped & pair:se", "shipped & len", "shipped & xpair:steps",
    "shipped & pair:steps@win", "shipped ~ pair:steps", "shipped ~ pair:steps@win", "shipped ~ pair:se",
]


def recipes(sets, names: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    res: dict[str, dict[str, dict[str, float]]] = {}
    for b, ev, tr in sets:
        st, wk = _labels(ev)
        for n in names:
            s = recipe_score(n, tr, ev)
            res.setdefault(n, {})[b] = two_model(s + 1e-9 * np.random.default_rng(0).random(len(s)), st, wk)
    print(f"{'recipe':28s} " + " ".join(f"{b.split('-', 1)[1][:10]:>10s}" for b in BENCHES) + "    val  gsm8k CPT50/CPT80")
    for n, per in res.items():
        val = np.mean([per[b]["apgr"] for b in BENCHES if b != TARGET])
        g = per[TARGET]
        print(f"{n:28s} " + " ".join(f"{per[b]['apgr']:10.3f}" for b in BENCHES)
              + f"  {val:.3f}  {g['cpt50']:.1f}/{g['cpt80']:.1f}", flush=True)
    best = max(res, key=lambda n: np.mean([res[n][b]["apgr"] for b in BENCHES if b != TARGET]))
    print(f"val criterion picks: {best}")
    return res


def detail(sets, name: str, ref: str, boots: int = 300) -> None:
    """For recipe `name` on GSM8K: the fitted coefficients, a bootstrap 90% interval of APGR, the paired
    bootstrap difference to recipe `ref`, and the serving cost of `step_features` per prompt."""
    _b, ev, tr = sets[0]
    base, *flags = name.split("@")
    if " & " not in name and base.split(":")[0] in PAIRS:
        pairs, kinds = base.split(":")
        coef = ridge_gap(tr, ev, kinds, pairs, win="win" in flags)[1]
        known = {"steps": STEP_NAMES, "rare": RARE_NAMES, "arith": ARITH_NAMES}
        names = ([n for k in kinds.split("+") for n in known[k]] if all(k in known for k in kinds.split("+"))
                 else [f"f{j}" for j in range(len(coef))])
        print(f"{name} coefficients (GSM8K fold, standardised):",
              ", ".join(f"{n} {c:+.3f}" for n, c in sorted(zip(names, coef, strict=True), key=lambda t: -abs(t[1]))))
    s = recipe_score(name, tr, ev)
    r = recipe_score(ref, tr, ev)
    st, wk = _labels(ev)
    rng = np.random.default_rng(1)
    a, d = [], []
    for _ in range(boots):
        i = rng.integers(0, len(ev), len(ev))
        j = 1e-9 * rng.random(len(i))
        x = two_model(s[i] + j, st[i], wk[i])["apgr"]
        a.append(x)
        d.append(x - two_model(r[i] + j, st[i], wk[i])["apgr"])
    print(f"GSM8K APGR {name}: bootstrap 5/50/95% {np.percentile(a, [5, 50, 95]).round(3)}; "
          f"minus {ref}: {np.percentile(d, [5, 50, 95]).round(3)}, P(diff <= 0) = {np.mean(np.array(d) <= 0):.3f}")
    texts = [r.prompt for _b, e, _t in sets for r in e]
    t = time.perf_counter()
    for x in texts:
        step_features(x)
    per = (time.perf_counter() - t) / len(texts)
    longest = max(all_rows(), key=lambda r: len(r.prompt)).prompt
    t = time.perf_counter()
    for _ in range(20):
        step_features(longest)
    print(f"step_features: {1e6 * per:.0f} us/prompt mean over the {len(texts)} pair prompts; "
          f"{1e6 * (time.perf_counter() - t) / 20:.0f} us on the longest dev prompt ({len(longest)} chars)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["singles", "recipes", "detail"])
    ap.add_argument("--recipe", default="pair:steps", help="detail: the recipe to examine")
    ap.add_argument("--ref", default="pair:se", help="detail: the recipe to compare with (paired bootstrap)")
    ap.add_argument("--kinds", default="steps", help="singles: feature kinds joined by '+' (steps, rare, arith)")
    ap.add_argument("--recipes", default=";".join(RECIPES), help="';'-separated recipe names")
    a = ap.parse_args()
    t0 = time.time()
    sets = eval_sets()
    if a.what == "singles":
        singles(sets, a.kinds)
    elif a.what == "detail":
        detail(sets, a.recipe, a.ref)
    else:
        out = recipes(sets, a.recipes.split(";"))
        path = CACHE / "gsm8k_transfer.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(old | out, indent=1))
    print(f"({time.time() - t0:.0f}s)", file=sys.stderr)
