"""Neighbourhood component of the router's quality model (research recipe R2', docs/router-research.md).

For a large outcome file (default >= 5,000 rows: on the dev files that is `routellm-mmlu` and
`llmrouter-dcrouter`) the prompts of the file itself say more about who succeeds on a new prompt of
the same kind than the shared, cross-benchmark encoder of `QualityModel` can. Per such file
("source") and its candidates (those scored on >= 90% of its rows):

(a) **TF-IDF word n-gram head.** A word 1-2 gram TF-IDF vocabulary fitted on the file's training
    prompts (sklearn's default token pattern, lower-cased; `min_df` 2, sublinear tf, capped at
    `max_features` terms so the artefact stays a few MB) and per candidate a logistic regression on
    the score (soft labels).
(b) **kNN head.** Per candidate, the mean score of the k training prompts of the file most similar to
    the prompt: cosine on a second static embedding, `artifacts/knn_embedding.npz` (same format and
    tokenizer as the main table, distilled for kNN: research "tokenlearn" section), which is used for
    this head only; without that file (older artefact directories) the columns `FeatureExtractor`
    already computes. The component records which embedding it was fitted with (`info["knn_embedding"]`
    and the table's digest), and serving refuses a mismatch. k is chosen inside the training rows (Brier
    score of the cross-fitted kNN means).
(c) **Stack.** Per candidate a small soft-label logistic regression on [TF-IDF logit, kNN logit],
    fitted on cross-fitted (a) and (b) predictions of the file's training rows (3 folds, prompts with
    the same text in one fold), plus the main model's logit centred on its mean over the file, at a
    fixed weight (`main_weight`, 0.5). The main model's training-row predictions are in-sample (refitting
    it per inner fold would multiply the training time), so a fitted weight for it is over-confident
    (about 4 on MMLU, which makes the ranking worse than the main model alone); the fixed half weight
    adds its evidence to the stack's instead.

`QualityModel` blends the stacked prediction with its own for the covered candidates, weighted by how
much the prompt resembles the file (as `routing.difficulty`): a prompt unlike the file keeps the main
model's prediction.

Measured: R2 in docs/router-research.md (research scripts: rank average of (a) and (b) gives MMLU
APGR 0.677-0.683 / CPT(50%) 26.0-28.0% over 3 fold seeds); the production figures of this component
are in docs/routing-model.md ("Neighbourhood component"). Serving is numpy + `re` only (a dictionary
look-up per word 1-2 gram, the prompt's kNN embedding (the second table, per component whose gate opens),
one (rows x 128) mat-vec and a partial sort per file); sklearn is imported only when fitting.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from itertools import pairwise, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tiergate.routing.difficulty import soft_logistic
from tiergate.routing.embed import StaticEmbedder
from tiergate.routing.features import STRUCT_NAMES

if TYPE_CHECKING:
    from tiergate.routing.data import OutcomeRow

FORMAT_VERSION = 1
NPZ, META = "neighbours.npz", "neighbours.json"
#: sklearn's default `token_pattern`, applied to the lower-cased text (as `TfidfVectorizer` does).
TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")
_EMB_START = len(STRUCT_NAMES)
#: Stride of the sample that sets the kNN head's pre-selection threshold (`_top_k`).
_TOPK_STRIDE = 16
_CLIP = 0.01  # scores are clipped to [_CLIP, 1 - _CLIP] before taking logits
#: A prompt whose gate (resemblance to the file / typical resemblance) is below this keeps the main
#: model's prediction exactly, and the component is not computed for it (serving cost, and no noise
#: from a file the prompt does not resemble).
GATE_MIN = 0.05
#: The kNN head's own embedding table (same npz format and tokenizer as the main `static_embedding.npz`).
KNN_TABLE = Path(__file__).parent / "artifacts" / "knn_embedding.npz"
#: `info["knn_embedding"]` of a component whose kNN head uses the main feature matrix's embedding columns.
FEATURE_EMBEDDING = "features"


@dataclass(frozen=True)
class KnnEmbedder:
    """The kNN head's static embedder and the digest of its table (what a component records)."""

    embedder: StaticEmbedder
    digest: str


@cache
def knn_embedder(table: Path = KNN_TABLE) -> KnnEmbedder | None:
    """The kNN embedder (loaded once per process), or None when `table` is absent. The tokenizer is the
    main table's (`tokenizer.json` beside it)."""
    if not table.exists():
        return None
    raw = table.read_bytes()
    with np.load(table) as z:
        if "q" in z:
            vectors = z["q"].astype(np.float32) * z["scale"].astype(np.float32)[:, None]
        else:
            vectors = z["table"].astype(np.float32)
    return KnnEmbedder(StaticEmbedder(vectors, table.parent / "tokenizer.json"),
                       hashlib.sha256(raw).hexdigest()[:16])


@dataclass(frozen=True)
class NeighbourConfig:
    min_rows: int = 5000  # a file qualifies with at least this many rows ...
    min_coverage: float = 0.9  # ... for the candidates scored on at least this share of them
    max_features: int = 40_000  # TF-IDF vocabulary cap (word 1-2 grams)
    min_df: int = 2
    tfidf_c: float = 1.0  # inverse L2 strength of the per-candidate TF-IDF logistic regression
    ks: tuple[int, ...] = (25, 50, 100, 200, 400)  # kNN sizes tried (inside the training rows)
    stack_c: float = 1.0  # inverse L2 strength of the stacker
    folds: int = 3  # cross-fitting folds for the stacker's inputs (and k)
    stack_main: bool = False  # fit the main model's weight in the stacker (its logit is in-sample: over-confident)
    main_weight: float = 0.5  # else: the main model's logit, centred on the file, added at this fixed weight
    seed: int = 0


def sklearn_module(name: str) -> Any:
    """Import a scikit-learn module (fitting only), with an actionable message when it is missing."""
    import importlib

    try:
        return importlib.import_module(f"sklearn.{name}")
    except ImportError:
        raise ImportError("fitting the router (its difficulty and neighbourhood components) needs scikit-learn: "
                          "pip install 'tiergate[train]'") from None


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _CLIP, 1 - _CLIP)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


#: ASCII characters that `\w` does not match, mapped to a space (`word_grams` on ASCII text).
_NON_WORD = {i: " " for i in range(128) if not (chr(i).isalnum() or chr(i) == "_")}


def word_grams(text: str) -> list[str]:
    """Word 1-2 grams of `text` as sklearn's `TfidfVectorizer(ngram_range=(1, 2))` forms them."""
    low = text.lower()
    if low.isascii():  # the tokens of TOKEN_PATTERN: runs of 2+ word characters (~2x faster than the regex)
        toks = [t for t in low.translate(_NON_WORD).split() if len(t) > 1]
    else:
        toks = TOKEN_PATTERN.findall(low)
    return toks + list(map(" ".join, pairwise(toks)))


def gram_counts(text: str) -> Counter[str]:
    """How often each word 1-2 gram occurs in `text`."""
    return Counter(word_grams(text))


def normalised_embedding(X: np.ndarray, dims: int) -> np.ndarray:
    """The static-embedding columns of a feature matrix, each row L2-normalised (float32)."""
    E = np.asarray(X[:, _EMB_START:_EMB_START + dims], np.float32)
    return E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-6)


class TfidfWords:
    """A fitted word 1-2 gram TF-IDF transform (sublinear tf, idf, L2 norm), numpy only at serving."""

    def __init__(self, terms: list[str], idf: np.ndarray) -> None:
        self.terms = terms
        self.idf = np.asarray(idf, np.float32)
        self.index = {t: j for j, t in enumerate(terms)}

    @classmethod
    def fit(cls, texts: Sequence[str], max_features: int, min_df: int) -> tuple[TfidfWords, Any]:
        """The transform and the training texts' sparse matrix (sklearn, fitting only)."""
        vec = sklearn_module("feature_extraction.text").TfidfVectorizer(ngram_range=(1, 2), min_df=min_df, sublinear_tf=True, max_features=max_features,
                              dtype=np.float32)
        A = vec.fit_transform(list(texts))
        terms = [""] * len(vec.vocabulary_)
        for t, j in vec.vocabulary_.items():
            terms[j] = t
        return cls(terms, vec.idf_), A.tocsr()

    def transform_one(self, text: str | Counter[str]) -> tuple[np.ndarray, np.ndarray]:
        """(column indices, L2-normalised weights) of one text (or its `gram_counts`)."""
        grams = gram_counts(text) if isinstance(text, str) else text
        # column of each gram (-1: not in the vocabulary) and its count, in the grams' order
        at = np.fromiter(map(self.index.get, grams, repeat(-1)), np.int64, len(grams))
        known = at >= 0
        if not known.any():
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        cols = at[known]
        tf = np.fromiter(grams.values(), np.float32, len(grams))[known]
        w = (1.0 + np.log(tf)) * self.idf[cols]
        return cols, w / max(float(np.linalg.norm(w)), 1e-12)

    def transform(self, texts: Sequence[str]) -> Any:
        """Sparse (n, vocabulary) matrix (scipy; for fitting and tests)."""
        from scipy import sparse

        indptr, indices, data = [0], [], []
        for t in texts:
            c, w = self.transform_one(t)
            indices.append(c)
            data.append(w)
            indptr.append(indptr[-1] + len(c))
        return sparse.csr_matrix((np.concatenate(data) if data else np.zeros(0, np.float32),
                                  np.concatenate(indices) if indices else np.zeros(0, np.int64), indptr),
                                 shape=(len(texts), len(self.terms)), dtype=np.float32)


def _fit_tfidf_heads(A: Any, Y: np.ndarray, seen: np.ndarray, C: float) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate a logistic regression on soft labels: (coef (m, V), intercept (m,))."""
    LogisticRegression = sklearn_module("linear_model").LogisticRegression

    m = Y.shape[1]
    coef = np.zeros((m, A.shape[1]), np.float32)
    icpt = np.zeros(m, np.float32)
    for j in range(m):
        rows = np.flatnonzero(seen[:, j])
        y = Y[rows, j]
        soft = ((y > 0) & (y < 1)).any()
        if soft:  # soft labels: each row twice, weighted by the score and its complement
            from scipy import sparse

            Xj = sparse.vstack([A[rows], A[rows]]).tocsr()
            yj = np.r_[np.ones(len(rows)), np.zeros(len(rows))]
            wj = np.r_[y, 1 - y] + 1e-9
        else:
            Xj, yj, wj = A[rows], (y >= 0.5).astype(int), None
        if len(np.unique(yj)) < 2:
            icpt[j] = float(_logit(np.array([y.mean()]))[0])
            continue
        lr = LogisticRegression(C=C, max_iter=1000).fit(Xj, yj, sample_weight=wj)
        coef[j], icpt[j] = lr.coef_[0], lr.intercept_[0]
    return coef, icpt


def _knn_means(E_ref: np.ndarray, S_ref: np.ndarray, E_q: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """For each k: per query the mean of S_ref (rows, m) over its k most similar reference rows."""
    kmax = min(max(ks), len(E_ref))
    if len(E_q) == 1 and len(ks) == 1:
        return {ks[0]: _knn_mean_one(E_ref, S_ref, E_q[0], kmax)[None]}
    out = {k: np.empty((len(E_q), S_ref.shape[1]), np.float32) for k in ks}
    for start in range(0, len(E_q), 512):
        sims = E_q[start:start + 512] @ E_ref.T
        idx = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]
        order = np.argsort(-np.take_along_axis(sims, idx, axis=1), axis=1)
        idx = np.take_along_axis(idx, order, axis=1)
        csum = np.cumsum(S_ref[idx], axis=1)  # (q, kmax, m)
        for k in ks:
            out[k][start:start + 512] = csum[:, min(k, kmax) - 1] / min(k, kmax)
    return out


def _knn_mean_one(E_ref: np.ndarray, S_ref: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """`_knn_means` for one query and one k (serving): the same neighbours, summed in the same order (most
    similar first), without the batch path's (q, kmax, m) cumulative sums."""
    sims = _mat_vec(E_ref, q)
    idx = _top_k(sims, k)
    idx = idx[np.argsort(-sims[idx])]
    return S_ref[idx].sum(axis=0) / k


def _mat_vec(E: np.ndarray, q: np.ndarray) -> np.ndarray:
    """E @ q for one vector, single-threaded (einsum). A multi-threaded BLAS call costs 10x more when its threads
    wait for busy cores; BLAS calls on blocks of rows (single-threaded) are 2x faster while E is in the cache but
    slower from memory, where E (the MMLU index: 7 MB) is when other work shares the cores; in decisions the
    two measured the same (MMLU prompts, load average 2.5)."""
    return np.einsum("ij,j->i", E, q)


def _top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values of `sims` (any order). A partial sort of the whole vector costs ~10 ns
    a row; instead, a threshold that a sample of every `_TOPK_STRIDE`-th value puts a few hundred rows above
    (in expectation) selects the rows to sort, with the whole vector as fallback when fewer than k pass."""
    n = len(sims)
    j = 2 * (k // _TOPK_STRIDE) + 8  # the j-th largest of the sample: ~_TOPK_STRIDE * j rows pass
    sample = sims[::_TOPK_STRIDE]
    if n >= 4 * _TOPK_STRIDE * j and j < len(sample):
        t = np.partition(sample, len(sample) - j)[len(sample) - j]
        rows = np.flatnonzero(sims >= t)
        if len(rows) >= k:
            return rows[np.argpartition(-sims[rows], k - 1)[:k]]
    return np.argpartition(-sims, k - 1)[:k]


def _group_folds(texts: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Fold id per row; rows with the same normalised text share a fold."""
    groups: dict[str, int] = {}
    gid = np.array([groups.setdefault(" ".join(t.lower().split()), len(groups)) for t in texts])
    perm = np.random.default_rng(seed).permutation(len(groups))
    return (perm % folds)[gid]


@dataclass
class Component:
    """One file's TF-IDF heads, kNN index and stacker (all numpy)."""

    source: str
    candidates: list[str]
    tfidf: TfidfWords
    coef: np.ndarray  # (m, V) TF-IDF logistic weights
    intercept: np.ndarray  # (m,)
    emb: np.ndarray  # (rows, dims) L2-normalised static embedding of the training prompts (float16 on disk)
    scores: np.ndarray  # (rows, m) their scores (NaN-free: unseen cells hold the candidate's mean)
    k: int
    stack: np.ndarray  # (m, 4): intercept, weights on [main logit, tfidf logit, knn logit]
    typical_resemblance: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)

    def query_embedding(self, X: np.ndarray, prompts: Sequence[str] | None) -> np.ndarray:
        """The prompts' embedding in the space of the kNN index (`info["knn_embedding"]`)."""
        used = self.info.get("knn_embedding", FEATURE_EMBEDDING)
        if used == FEATURE_EMBEDDING:
            return normalised_embedding(X, self.emb.shape[1])
        ke = knn_embedder()
        if ke is None or ke.digest != self.info.get("knn_digest"):
            raise ValueError(f"neighbourhood component {self.source!r} was fitted with kNN table {used} "
                             f"(digest {self.info.get('knn_digest')}), but {KNN_TABLE} is "
                             f"{'absent' if ke is None else 'digest ' + ke.digest}: retrain the router "
                             "(tiergate router train) or restore the table it was fitted with")
        if prompts is None:
            raise ValueError(f"neighbourhood component {self.source!r} embeds the prompt texts: pass them")
        return ke.embedder.embed(list(prompts))

    def head_logits(
        self, X: np.ndarray, texts: Sequence[str | Counter[str]], prompts: Sequence[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(TF-IDF logits, kNN logits), each (n, m); `texts`: the prompts or their `gram_counts`;
        `prompts`: the prompt texts (defaults to `texts` when those are strings)."""
        T = np.empty((len(texts), len(self.candidates)), np.float32)
        for i, t in enumerate(texts):
            c, w = self.tfidf.transform_one(t)
            T[i] = self.coef[:, c] @ w if len(c) else 0.0
        T += self.intercept
        if prompts is None and all(isinstance(t, str) for t in texts):
            prompts = [str(t) for t in texts]
        E = self.query_embedding(X, prompts)
        K = _knn_means(self.emb, self.scores, E, (self.k,))[self.k]
        return T, _logit(K)

    def predict(
        self, X: np.ndarray, texts: Sequence[str | Counter[str]], main: np.ndarray, prompts: Sequence[str] | None = None,
    ) -> np.ndarray:
        """(n, m) stacked predicted scores; `main`: the main model's predicted scores (n, m)."""
        T, K = self.head_logits(X, texts, prompts)
        z = self.stack[:, 0] + _logit(main) * self.stack[:, 1] + T * self.stack[:, 2] + K * self.stack[:, 3]
        return _sigmoid(z)


def fit_component(
    source: str, rows: Sequence[OutcomeRow], X: np.ndarray, main: dict[str, np.ndarray],
    cfg: NeighbourConfig | None = None, dims: int = 128,
) -> Component | None:
    """Fit one file's component on its rows, their features and the main model's (in-sample) predicted
    scores `main` (candidate -> (rows,)). None if the file is too small or no candidate qualifies."""
    cfg = cfg or NeighbourConfig()
    n = len(rows)
    if n < cfg.min_rows:
        return None
    counts: dict[str, int] = {}
    for r in rows:
        for k in r.outcomes:
            counts[k] = counts.get(k, 0) + 1
    cands = sorted(k for k, c in counts.items() if c >= cfg.min_coverage * n and k in main)
    if not cands:
        return None
    col = {k: j for j, k in enumerate(cands)}
    Y = np.zeros((n, len(cands)), np.float32)
    seen = np.zeros((n, len(cands)), bool)
    for i, r in enumerate(rows):
        for k, o in r.outcomes.items():
            j = col.get(k)
            if j is not None:
                Y[i, j], seen[i, j] = o.score, True
    means = (Y * seen).sum(0) / seen.sum(0)
    S = np.where(seen, Y, means).astype(np.float32)
    texts = [r.prompt for r in rows]
    ke = knn_embedder()
    if ke is not None:
        E = ke.embedder.embed(texts)
        used: dict[str, Any] = {"knn_embedding": KNN_TABLE.name, "knn_digest": ke.digest}
    else:
        E = normalised_embedding(X, dims)
        used = {"knn_embedding": FEATURE_EMBEDDING}
    fold = _group_folds(texts, cfg.folds, cfg.seed)
    # cross-fitted head predictions for the stacker (and the choice of k)
    T_oof = np.zeros((n, len(cands)), np.float32)
    K_oof = {k: np.zeros((n, len(cands)), np.float32) for k in cfg.ks}
    for f in range(cfg.folds):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        tf, A = TfidfWords.fit([texts[i] for i in tr], cfg.max_features, cfg.min_df)
        coef, icpt = _fit_tfidf_heads(A, Y[tr], seen[tr], cfg.tfidf_c)
        T_oof[te] = np.asarray(tf.transform([texts[i] for i in te]) @ coef.T) + icpt
        for k, v in _knn_means(E[tr], S[tr], E[te], cfg.ks).items():
            K_oof[k][te] = v
    brier = {k: float(((K_oof[k] - Y) ** 2 * seen).sum() / seen.sum()) for k in cfg.ks}
    k = min(brier, key=lambda kk: brier[kk])
    K_l = _logit(K_oof[k])
    stack = np.zeros((len(cands), 4))
    for j, c in enumerate(cands):
        s = seen[:, j]
        if cfg.stack_main:
            Z = np.column_stack([_logit(np.asarray(main[c], np.float64)), T_oof[:, j], K_l[:, j]])
            stack[j] = soft_logistic(Z[s], Y[s, j], cfg.stack_c)
        else:  # the main model's evidence relative to its mean on the file, at a fixed weight
            w = soft_logistic(np.column_stack([T_oof[:, j], K_l[:, j]])[s], Y[s, j], cfg.stack_c)
            centre = float(_logit(np.asarray(main[c], np.float64))[s].mean())
            stack[j] = [w[0] - cfg.main_weight * centre, cfg.main_weight, w[1], w[2]]
    tf, A = TfidfWords.fit(texts, cfg.max_features, cfg.min_df)
    coef, icpt = _fit_tfidf_heads(A, Y, seen, cfg.tfidf_c)
    info = {"rows": n, "vocabulary": len(tf.terms), "brier_by_k": {str(kk): round(v, 5) for kk, v in brier.items()},
            **used}
    # rounded as stored (float16), so that an evaluated model predicts exactly as the shipped one
    f16 = lambda a: a.astype(np.float16).astype(np.float32)
    return Component(source, cands, tf, f16(coef), icpt, f16(E), f16(S), k, stack, info=info)


class NeighbourModel:
    """The neighbourhood components of every qualifying training file."""

    def __init__(self, components: list[Component] | None = None, config: NeighbourConfig | None = None) -> None:
        self.components = components or []
        self.config = config or NeighbourConfig()

    def fit(
        self, rows: Sequence[OutcomeRow], X: np.ndarray, main: dict[str, np.ndarray],
        own_resemblance: np.ndarray | None = None, dims: int = 128,
    ) -> NeighbourModel:
        """`X`: the rows' features (`FeatureExtractor` columns); `main`: the main model's predicted scores
        for every row (candidate -> (rows,)); `own_resemblance`: per row, how much it resembles its own
        file (scales the serving gate, as in `routing.difficulty`)."""
        by_src: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_src.setdefault(r.source, []).append(i)
        self.components = []
        for src in sorted(by_src):
            idx = by_src[src]
            if len(idx) < self.config.min_rows:
                continue
            comp = fit_component(src, [rows[i] for i in idx], X[idx], {k: v[idx] for k, v in main.items()},
                                 self.config, dims)
            if comp is not None:
                if own_resemblance is not None:
                    comp.typical_resemblance = float(np.clip(np.mean(own_resemblance[idx]), 1e-3, 1.0))
                self.components.append(comp)
        return self

    @property
    def sources(self) -> list[str]:
        return [c.source for c in self.components]

    def blend(
        self, base: dict[str, np.ndarray], X: np.ndarray, texts: Sequence[str], resemblance: dict[str, np.ndarray],
        only: set[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """`base` with each covered candidate moved towards the component's stacked prediction by the
        gate g = resemblance[source] / typical resemblance (at most 1; below GATE_MIN, 0); several
        components covering a candidate are averaged by g; candidates not covered (or not in `only`, when
        given: the serving router asks for the candidates it routes between) keep `base`."""
        if not self.components:
            return base
        keys = list(base)
        B = np.stack([np.asarray(base[k], np.float64) for k in keys], axis=1)
        R = np.stack([np.asarray(resemblance[c.source], np.float64) for c in self.components], axis=1)
        P = self.blend_matrix(B, keys, X, texts, R, only)
        return {k: P[:, j] for j, k in enumerate(keys)}

    def blend_matrix(
        self, B: np.ndarray, keys: Sequence[str], X: np.ndarray, texts: Sequence[str], R: np.ndarray,
        only: set[str] | None = None,
    ) -> np.ndarray:
        """`blend` on matrices: `B` (n, len(keys)) the base predictions of `keys`, `R` (n, components) each
        component's resemblance (in `sources` order). Returns `B` itself when no gate opens."""
        pos: dict[str, int] | None = None
        num = wsum = None
        grams: dict[int, Counter[str]] = {}  # word 1-2 gram counts, once per prompt for all components
        for ci, comp in enumerate(self.components):
            g = np.clip(R[:, ci] / comp.typical_resemblance, 0.0, 1.0)
            rows = np.flatnonzero(g >= GATE_MIN)
            if not len(rows):
                continue
            if pos is None:
                pos = {k: j for j, k in enumerate(keys)}
            cols = [(j, pos[k]) for j, k in enumerate(comp.candidates) if k in pos and (only is None or k in only)]
            if not cols:
                continue
            src, dst = (np.array(c) for c in zip(*cols, strict=True))
            for i in rows:
                if i not in grams:
                    grams[i] = gram_counts(texts[i])
            main = np.full((len(rows), len(comp.candidates)), 0.5)  # (the stack is per candidate: filler)
            main[:, src] = B[np.ix_(rows, dst)]
            P = comp.predict(X[rows], [grams[i] for i in rows], main, [texts[i] for i in rows])
            if num is None:
                num, wsum = np.zeros_like(B), np.zeros_like(B)
            num[np.ix_(rows, dst)] += g[rows, None] * P[:, src]
            wsum[np.ix_(rows, dst)] += g[rows, None]
        if num is None:
            return B
        w = np.minimum(wsum, 1.0)
        return (1 - w) * B + w * (num / np.maximum(wsum, 1e-12))

    # --------------------------------------------------------------------------------- persistence

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"format": FORMAT_VERSION, "config": {**self.config.__dict__, "ks": list(self.config.ks)},
                                "components": []}
        for i, c in enumerate(self.components):
            arrays.update({
                f"{i}_terms": np.frombuffer("\n".join(c.tfidf.terms).encode(), np.uint8),
                f"{i}_idf": c.tfidf.idf.astype(np.float32), f"{i}_coef": c.coef.astype(np.float16),
                f"{i}_intercept": c.intercept.astype(np.float32), f"{i}_emb": c.emb.astype(np.float16),
                f"{i}_scores": c.scores.astype(np.float16), f"{i}_stack": c.stack.astype(np.float64),
            })
            meta["components"].append({"source": c.source, "candidates": c.candidates, "k": c.k,
                                       "typical_resemblance": c.typical_resemblance, "info": c.info})
        np.savez_compressed(directory / NPZ, **arrays)
        (directory / META).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> NeighbourModel | None:
        """The saved model, or None when the directory has none."""
        directory = Path(directory)
        if not (directory / META).exists():
            return None
        meta = json.loads((directory / META).read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{directory}: neighbour model format {meta.get('format')} is not {FORMAT_VERSION}")
        comps = []
        with np.load(directory / NPZ) as z:
            for i, c in enumerate(meta["components"]):
                raw = z[f"{i}_terms"].tobytes().decode()
                terms = raw.split("\n") if raw else []
                comps.append(Component(
                    c["source"], list(c["candidates"]), TfidfWords(terms, z[f"{i}_idf"]),
                    z[f"{i}_coef"].astype(np.float32), z[f"{i}_intercept"].astype(np.float32),
                    z[f"{i}_emb"].astype(np.float32), z[f"{i}_scores"].astype(np.float32), int(c["k"]),
                    z[f"{i}_stack"].astype(np.float64), float(c.get("typical_resemblance", 1.0)),
                    dict(c.get("info", {}))))
        cfg = dict(meta["config"])
        cfg["ks"] = tuple(cfg.get("ks", NeighbourConfig.ks))
        return cls(comps, NeighbourConfig(**cfg))
