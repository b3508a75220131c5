"""Reasoning-step pair-gain component of the router's quality model (docs/router-research-gsm8k.md).

When a request is routed between exactly two learned candidates (RouteLLM's strong/weak setting), the
main model's predicted gain p_strong - p_weak is blended with a second, cheap opinion: how much
"reasoning load" the question carries, learned from the pair's own recorded outcomes.

Recipe (`shipped ~ pair:steps@win` in the research note):

1. **Features** (`step_features`, 18 log1p counts): on `question_text(prompt)` (ZeroEval's `## Question:`
   part, few-shot blocks ending in `Answer: <letter>` dropped; capped at `MAX_QUESTION_CHARS`): words,
   sentences, numbers, distinct numbers, number words, quantity relations, numbers + number words,
   conditionals, clauses, distinct capitalised words, units, asks, fractions, words per sentence,
   magnitude of the largest number, sequencing words, pronouns, negations. stdlib `re` + numpy,
   ~0.15 ms per prompt.
2. **Gain model per pair** (`PairGainModel.fit`): every candidate pair recorded together on at least
   `min_files` outcome files with at least `min_rows` rows in total. "strong" = the member with the higher
   mean score (files weighted equally). Features centred within each file and divided by the pooled
   within-file standard deviation; logistic regression (C = 0.1) on "strong score > weak score", rows
   weighted so every file counts equally. Serving: s_gain = (x / sd) . w (a constant shift does not
   change a CDF, so no centring).
3. **Blend** (`PairGainModel.blend`, only when the routed learned candidates are exactly a fitted pair):
   s = w F_router(p_strong - p_weak) + (1 - w) F_gain(s_gain), w = `router_weight` (0.25; 0.5 until
   session 8), F the empirical CDFs (101 stored quantiles)
   of the two scores over up to `reference_rows` training prompts of the pair (the main model's
   predictions on them are in-sample: the model was fitted on those prompts); s is mapped back to a gain
   by the inverse of F_router and p_strong' = p_weak + gain (clipped to [0, 1]). So the policy and
   `policy.two_model_score` rank the pair's prompts by s. The CDFs are piecewise linear between the
   quantiles and extended linearly beyond them (the ranking of the extreme prompts is kept).
   Decisions between more (or other) candidates are unchanged. `QualityModel` blends only prompts for
   which no neighbourhood component covering the pair is computed (`routing.neighbours` gate below
   `GATE_MIN`): the blend is the research's fallback for prompts without in-file evidence (it was
   measured leave-one-benchmark-out); on MMLU, which the MMLU neighbourhood component covers, an
   unconditional blend lowered the 5-fold APGR from 0.681 to 0.656.

Measured (research harness, leave-one-benchmark-out on routellm-gsm8k, gpt-4-1106-preview vs
mixtral-8x7b-instruct-v0.1): production router 0.579 APGR / CPT(50%) 38.8% / CPT(80%) 67.9% -> blend
0.616 / 35.2% / 63.5%; mean APGR on the 4 other pair files 0.528 -> 0.562. In production
(`bench/router_eval.py --only gsm8k --ablation`, same fits): 0.580 / 39.75% / 67.65% -> 0.615 / 34.41% /
63.79%; MMLU 5-fold unchanged (0.681 / 26.30%). With w = 0.25 (chosen in session 8 by the mean APGR on the
four other pair files, 0.572 vs 0.566, GSM8K not looked at): 0.614 / 35.00% / 64.52% (0.616 / 34.24% / 63.92%
with 0.5 on the same machine); MMLU and LiveCodeBench unchanged. Details: docs/routing-model.md ("Pair-gain
component"), docs/router-research-gsm8k.md (session 8).
sklearn is imported only when fitting.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tiergate.routing.data import OutcomeRow

FORMAT_VERSION = 1
NPZ, META = "steps.npz", "steps.json"
#: The question is cut to this many characters before counting (bounds the serving cost on any prompt).
MAX_QUESTION_CHARS = 2000
#: Only the last this many characters of a prompt are searched for the question (bounds the clean-up).
MAX_PROMPT_CHARS = 20_000
N_QUANTILES = 101

# ------------------------------------------------------------------------------- question clean-up

_FEWSHOT_END = re.compile(r"Answer:\s*[A-E]\s*\n\s*\n")


def question_text(prompt: str) -> str:
    """The question actually asked: ZeroEval's `## Question:` ... `## Instruction` part, few-shot examples
    that end in `Answer: <letter>` dropped, the first `MAX_QUESTION_CHARS` characters. Generic (no
    knowledge of the outcome files)."""
    q = prompt[-MAX_PROMPT_CHARS:]
    if "## Question:" in q:
        q = q.split("## Question:", 1)[1].split("## Instruction", 1)[0]
    return _FEWSHOT_END.split(q)[-1].strip()[:MAX_QUESTION_CHARS]


# ------------------------------------------------------------------------------ reasoning-step counts

# The matches of `(?<![\w.])\$?\d+(?:,\d{3})*(?:\.\d+)?%?`, ~2x faster: the first character is matched before the
# lookbehinds, so that the scan can skip to `$` and digits.
_NUMBER = re.compile(r"[$\d](?<![\w.][$\d])(?:(?<=\$)\d|(?<=\d))\d*(?:,\d{3})*(?:\.\d+)?%?")
_WORD = re.compile(r"[a-z]+")
#: ASCII characters other than a-z, mapped to a space: on ASCII text, `_WORD.findall` is a `translate` and a split.
_NON_AZ = {i: " " for i in range(128) if not "a" <= chr(i) <= "z"}


def _words(low: str) -> list[str]:
    """`_WORD.findall(low)` (~2x faster on ASCII text)."""
    return low.translate(_NON_AZ).split() if low.isascii() else _WORD.findall(low)



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
# A capitalised word not at the start of the text or of a sentence (the lookbehinds follow the capital so
# that the scan can skip to capitals; same matches as `(?<![.?!]\s)(?<!^)\b[A-Z][a-z]+`, ~7x faster).
_CAP = re.compile(r"[A-Z](?<=\b[A-Z])(?<![.?!]\s[A-Z])(?<!^[A-Z])[a-z]+")
# The matches of `\d+/\d+|\d+\.\d+|\d+%`, ~5x faster: tried at the start of a run of digits only (a match never
# starts inside one: from there the same suffixes are tried at the same place, the end of the run).
_FRAC = re.compile(r"\d(?<!\d\d)\d*(?:/\d+|\.\d+|%)")

STEP_NAMES = ["q_words", "q_sentences", "q_numbers", "q_uniqnums", "q_numwords", "q_relations", "q_quantities",
              "q_conds", "q_clauses", "q_entities", "q_units", "q_asks", "q_fracs", "q_words_per_sent",
              "q_maxmag", "q_steps", "q_pronouns", "q_negs"]
#: First words of the counted word pairs: only pairs starting with one of them are formed.
_BIGRAM_FIRST = frozenset(b.split()[0] for b in _RELATION2 | _STEP2 | _ASK2)


def _count(counts: Counter[str], one: frozenset[str]) -> int:
    """Occurrences of the vocabulary's words (or word pairs) in `counts`."""
    return sum(counts[w] for w in one.intersection(counts))


def step_features(prompt: str) -> np.ndarray:
    """The question's reasoning-load counts (log1p, float64), in `STEP_NAMES` order."""
    q = question_text(prompt)
    low = q.lower()
    toks = _words(low)
    uni = Counter(toks)
    bi = Counter(map(" ".join, itertools.compress(itertools.pairwise(toks), map(_BIGRAM_FIRST.__contains__, toks))))
    words = q.split()
    nums = _NUMBER.findall(q)
    vals = []
    for n in set(nums):  # (only their maximum is used)
        try:
            vals.append(abs(float(n.strip("$%").replace(",", ""))))
        except ValueError:
            pass
    sents = max(1, len(_SENT.findall(q)))
    nw = _count(uni, _NUMWORD)
    raw = [
        len(words), sents, len(nums), len(set(nums)), nw, _count(uni, _RELATION) + _count(bi, _RELATION2) + q.count("%"),
        len(nums) + nw, _count(uni, _COND), q.count(",") + q.count(";") + _count(uni, _CLAUSE),
        len(set(_CAP.findall(q))), _count(uni, _UNIT) + q.count("$"), _count(uni, _ASK) + _count(bi, _ASK2),
        len(_FRAC.findall(q)), len(words) / sents, math.log10(1 + min(max(vals, default=0.0), 1e300)),
        _count(uni, _STEP) + _count(bi, _STEP2), _count(uni, _PRON), _count(uni, _NEG) + low.count("n't"),
    ]
    return np.log1p(np.array(raw, dtype=np.float64))


def steps_matrix(texts: Sequence[str]) -> np.ndarray:
    """`step_features` of each text, (n, 18)."""
    if not texts:
        return np.zeros((0, len(STEP_NAMES)))
    return np.stack([step_features(t) for t in texts])


# ------------------------------------------------------------------------------- empirical CDFs

def strictly_increasing(q: np.ndarray) -> np.ndarray:
    """Sorted quantiles with ties broken by a tiny increment (so that they can be interpolated both ways)."""
    q = np.sort(np.asarray(q, np.float64))
    span = max(float(q[-1] - q[0]), 1e-6)
    return q + np.arange(len(q)) * 1e-9 * span


def cdf(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Piecewise-linear CDF through the quantiles `q` (at 0, 1/(n-1), ..., 1), linear beyond them."""
    x = np.asarray(x, np.float64)
    p = np.linspace(0.0, 1.0, len(q))
    y = np.interp(x, q, p)
    step = p[1]
    y = np.where(x < q[0], (x - q[0]) / (q[1] - q[0]) * step, y)
    return np.where(x > q[-1], 1.0 + (x - q[-1]) / (q[-1] - q[-2]) * step, y)


def inverse_cdf(y: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The inverse of `cdf`."""
    y = np.asarray(y, np.float64)
    p = np.linspace(0.0, 1.0, len(q))
    x = np.interp(y, p, q)
    step = p[1]
    x = np.where(y < 0.0, q[0] + y / step * (q[1] - q[0]), x)
    return np.where(y > 1.0, q[-1] + (y - 1.0) / step * (q[-1] - q[-2]), x)


# ------------------------------------------------------------------------------- the component

@dataclass(frozen=True)
class StepsConfig:
    min_files: int = 3  # a pair qualifies when recorded together on at least this many outcome files ...
    min_rows: int = 1000  # ... with at least this many rows in total
    c: float = 0.1  # inverse L2 strength of the logistic regression (sklearn's C)
    reference_rows: int = 3000  # training prompts per pair whose score distributions are stored
    # weight of F_router in the blend (F_gain gets the rest): 0.25, chosen on the four other pair files
    # (docs/router-research-gsm8k.md, session 8); 0.5 before
    router_weight: float = 0.25
    seed: int = 0


@dataclass
class PairGain:
    """One fitted pair: the gain model and the two score distributions of the blend."""

    strong: str
    weak: str
    sd: np.ndarray  # (18,) pooled within-file standard deviation of the features
    weights: np.ndarray  # (18,) logistic-regression weights on x / sd
    gain_quantiles: np.ndarray  # (101,) of s_gain over the reference prompts
    router_quantiles: np.ndarray  # (101,) of the main model's p_strong - p_weak over the same prompts
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._coef = np.asarray(self.weights, np.float64) / np.asarray(self.sd, np.float64)
        self._rq = strictly_increasing(self.router_quantiles)
        self._gq = strictly_increasing(self.gain_quantiles)
        self._rq_list, self._gq_list = self._rq.tolist(), self._gq.tolist()

    def gain_score(self, F: np.ndarray) -> np.ndarray:
        return np.asarray(F, np.float64) @ self._coef

    def blended_gain(self, router_gain: np.ndarray, F: np.ndarray,
                     router_weight: float = StepsConfig.router_weight) -> np.ndarray:
        """The main model's gain p_strong - p_weak after the blend (a monotone function of s)."""
        router_gain = np.asarray(router_gain, np.float64)
        if router_gain.shape == (1,) and np.ndim(router_weight) == 0:  # one prompt (serving): plain floats
            g = float(np.asarray(F, np.float64)[0] @ self._coef)
            s = (router_weight * _cdf_one(float(router_gain[0]), self._rq_list)
                 + (1 - router_weight) * _cdf_one(g, self._gq_list))
            return np.array([_inverse_cdf_one(s, self._rq_list)])
        s = router_weight * cdf(router_gain, self._rq) + (1 - router_weight) * cdf(self.gain_score(F), self._gq)
        return inverse_cdf(s, self._rq)


def _cdf_one(x: float, q: list[float]) -> float:
    """`cdf` for one value (bisection on a list: a few microseconds instead of a dozen numpy calls)."""
    n = len(q)
    if x < q[0]:
        return (x - q[0]) / (q[1] - q[0]) / (n - 1)
    if x >= q[-1]:
        return 1.0 + (x - q[-1]) / (q[-1] - q[-2]) / (n - 1)
    j = bisect.bisect_right(q, x) - 1
    return (j + (x - q[j]) / (q[j + 1] - q[j])) / (n - 1)


def _inverse_cdf_one(y: float, q: list[float]) -> float:
    """`inverse_cdf` for one value."""
    n = len(q)
    t = y * (n - 1)
    if t < 0:
        return q[0] + t * (q[1] - q[0])
    if t >= n - 1:
        return q[-1] + (t - (n - 1)) * (q[-1] - q[-2])
    j = int(t)
    return q[j] + (t - j) * (q[j + 1] - q[j])


class PairGainModel:
    """The step-count gain models of every qualifying candidate pair."""

    def __init__(self, pairs: list[PairGain] | None = None, config: StepsConfig | None = None) -> None:
        self.pairs = pairs or []
        self.config = config or StepsConfig()
        self._index = {frozenset((p.strong, p.weak)): p for p in self.pairs}

    def pair(self, candidates: Sequence[str] | set[str] | None) -> PairGain | None:
        """The fitted pair made of exactly these candidates, if any."""
        if candidates is None:
            return None
        key = frozenset(candidates)
        return self._index.get(key) if len(key) == 2 else None

    def qualifying_pairs(self, rows: Sequence[OutcomeRow]) -> list[tuple[str, str]]:
        """Candidate pairs recorded together on >= min_files files with >= min_rows rows in total."""
        files: dict[tuple[str, str], set[str]] = {}
        counts: dict[tuple[str, str], int] = {}
        for r in rows:
            for a, b in itertools.combinations(sorted(r.outcomes), 2):
                files.setdefault((a, b), set()).add(r.source)
                counts[(a, b)] = counts.get((a, b), 0) + 1
        return sorted(p for p, f in files.items()
                      if len(f) >= self.config.min_files and counts[p] >= self.config.min_rows)

    def fit(
        self, rows: Sequence[OutcomeRow], predict_main: Callable[[np.ndarray], dict[str, np.ndarray]],
        steps: np.ndarray | None = None,
    ) -> PairGainModel:
        """Fit every qualifying pair. `predict_main(idx)`: the main model's predicted scores (candidate ->
        (len(idx),)) for rows[idx], as served (called once, on the union of the pairs' reference rows);
        `steps`: precomputed `steps_matrix` of the rows' prompts (else computed for the rows needed)."""
        linear_model = _sklearn_linear_model()
        cfg = self.config
        pairs = self.qualifying_pairs(rows)
        src = np.array([r.source for r in rows])
        order_key = np.random.default_rng(cfg.seed).random(len(rows))  # reference rows: lowest keys
        fitted: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]] = []
        F = np.full((len(rows), len(STEP_NAMES)), np.nan) if steps is None else np.asarray(steps, np.float64)
        for a, b in pairs:
            idx = np.array([i for i, r in enumerate(rows) if a in r.outcomes and b in r.outcomes])
            sa = np.array([rows[i].outcomes[a].score for i in idx])
            sb = np.array([rows[i].outcomes[b].score for i in idx])
            files = sorted(set(src[idx].tolist()))
            w = np.zeros(len(idx))
            for f in files:
                m = src[idx] == f
                w[m] = 1.0 / m.sum()
            strong, weak, ss, sw = (a, b, sa, sb) if (w * sa).sum() >= (w * sb).sum() else (b, a, sb, sa)
            y = ss > sw
            if y.all() or not y.any():
                continue
            todo = idx[np.isnan(F[idx, 0])]
            if len(todo):
                F[todo] = steps_matrix([rows[i].prompt for i in todo])
            Xc = F[idx].copy()
            for f in files:
                m = src[idx] == f
                Xc[m] -= Xc[m].mean(axis=0)
            sd = Xc.std(axis=0) + 1e-6
            lr = linear_model.LogisticRegression(C=cfg.c, max_iter=3000)
            lr.fit(Xc / sd, y, sample_weight=w / w.mean())
            ref = idx[np.argsort(order_key[idx], kind="stable")[:cfg.reference_rows]]
            info = {"files": files, "rows": len(idx), "strong_wins": round(float((w * y).sum() / w.sum()), 4)}
            fitted.append((strong, weak, sd, lr.coef_[0].astype(np.float64), ref, info))
        self.pairs = []
        if fitted:
            union = np.unique(np.concatenate([f[4] for f in fitted]))
            main = predict_main(union)
            pos = {i: k for k, i in enumerate(union)}
            probs = np.linspace(0.0, 1.0, N_QUANTILES)
            for strong, weak, sd, coef, ref, info in fitted:
                at = np.array([pos[i] for i in ref])
                gain = np.asarray(main[strong])[at] - np.asarray(main[weak])[at]
                info["reference_rows"] = len(ref)
                self.pairs.append(PairGain(strong, weak, sd, coef, np.quantile((F[ref] / sd) @ coef, probs),
                                           np.quantile(gain, probs), info))
        self._index = {frozenset((p.strong, p.weak)): p for p in self.pairs}
        return self

    def blend(
        self, base: dict[str, np.ndarray], texts: Sequence[str] | None, only: Sequence[str] | set[str] | None,
        active: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """`base` with the pair's strong member's prediction moved to p_weak + blended gain, when `only`
        (the routed learned candidates) is exactly a fitted pair and the texts are given; else `base`.
        `active` (bool per prompt): only these prompts are blended (the others keep `base`)."""
        pg = self.pair(only)
        if pg is None or texts is None or pg.strong not in base or pg.weak not in base:
            return base
        strong = self._blended_strong(pg, base[pg.strong], base[pg.weak], texts, active)
        return base if strong is None else {**base, pg.strong: strong}

    def blend_matrix(
        self, B: np.ndarray, keys: Sequence[str], texts: Sequence[str] | None, only: Sequence[str] | set[str] | None,
        active: np.ndarray | None = None,
    ) -> np.ndarray:
        """`blend` on a matrix: `B` (n, len(keys)) the predictions of `keys`; `B` itself when nothing changes,
        else a copy with the strong member's column replaced."""
        pg = self.pair(only)
        if pg is None or texts is None or pg.strong not in keys or pg.weak not in keys:
            return B
        js, jw = keys.index(pg.strong), keys.index(pg.weak)
        strong = self._blended_strong(pg, B[:, js], B[:, jw], texts, active)
        if strong is None:
            return B
        B = B.copy()
        B[:, js] = strong
        return B

    def _blended_strong(
        self, pg: PairGain, strong: np.ndarray, weak: np.ndarray, texts: Sequence[str], active: np.ndarray | None,
    ) -> np.ndarray | None:
        """The strong member's predictions after the blend (on the `active` prompts); None when none is."""
        rows = np.arange(len(texts)) if active is None else np.flatnonzero(active)
        if not len(rows):
            return None
        weak = np.asarray(weak, np.float64)
        strong = np.array(strong, np.float64)
        gain = pg.blended_gain(strong[rows] - weak[rows], steps_matrix([texts[i] for i in rows]),
                               self.config.router_weight)
        strong[rows] = np.clip(weak[rows] + gain, 0.0, 1.0)
        return strong

    # --------------------------------------------------------------------------------- persistence

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        arrays = {
            "sd": np.array([p.sd for p in self.pairs], np.float64).reshape(-1, len(STEP_NAMES)),
            "weights": np.array([p.weights for p in self.pairs], np.float64).reshape(-1, len(STEP_NAMES)),
            "gain_quantiles": np.array([p.gain_quantiles for p in self.pairs], np.float64).reshape(-1, N_QUANTILES),
            "router_quantiles": np.array([p.router_quantiles for p in self.pairs], np.float64).reshape(-1, N_QUANTILES),
        }
        meta = {"format": FORMAT_VERSION, "features": STEP_NAMES, "max_question_chars": MAX_QUESTION_CHARS,
                "config": self.config.__dict__,
                "pairs": [{"strong": p.strong, "weak": p.weak, "info": p.info} for p in self.pairs]}
        np.savez_compressed(directory / NPZ, **arrays)
        (directory / META).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> PairGainModel | None:
        """The saved model, or None when the directory has none."""
        directory = Path(directory)
        if not (directory / META).exists():
            return None
        meta = json.loads((directory / META).read_text())
        if meta.get("format") != FORMAT_VERSION or meta.get("features") != STEP_NAMES:
            raise ValueError(f"{directory}: pair-gain (steps) model format {meta.get('format')} is not "
                             f"{FORMAT_VERSION} or its features differ; retrain the router (tiergate router train)")
        with np.load(directory / NPZ) as z:
            arr = {k: z[k].astype(np.float64) for k in ("sd", "weights", "gain_quantiles", "router_quantiles")}
        pairs = [PairGain(p["strong"], p["weak"], arr["sd"][i], arr["weights"][i], arr["gain_quantiles"][i],
                          arr["router_quantiles"][i], dict(p.get("info", {}))) for i, p in enumerate(meta["pairs"])]
        return cls(pairs, StepsConfig(**meta["config"]))


def _sklearn_linear_model() -> Any:
    try:
        from sklearn import linear_model
    except ImportError:
        raise ImportError("fitting the router (its pair-gain component) needs scikit-learn: "
                          "pip install 'tiergate[train]'") from None
    return linear_model
