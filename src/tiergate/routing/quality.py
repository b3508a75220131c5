"""Predicted answer quality per (model, effort) candidate for a prompt, learned from recorded outcomes.

A low-rank multi-task logistic regression ("matrix factorisation with a prompt encoder"):

    logit q(m, p) = b_m + u_m . z_p + w_m . x~_p        z_p = V x~_p + C pi_p + T' tfidf_p

- pi_p: how much the prompt resembles each training file's prompts (a softmax classifier on the
  standardised features); C pi_p carries what a benchmark is like for each candidate;
- x~_p: the structural features and leading embedding dims *relative to the benchmark the prompt
  resembles* (minus the pi-weighted per-file mean, over the within-file deviation), so that V learns
  within-benchmark difficulty that carries over to benchmarks it has not seen;
- tfidf_p: the prompt's WordPiece bag (features.TOKEN_SLOTS), projected by T (vocabulary x rank);
- V, C, T are shared by every candidate of every outcome file: a candidate with a few hundred rows
  borrows from those with thousands; u_m, b_m and a strongly regularised w_m are per candidate.

Trained by full-batch Adam on soft binary cross-entropy over the observed (prompt, candidate) cells,
each file weighted by 1/sqrt(rows). numpy at serve time (a few small products per prompt); scipy.sparse
for the token bag when training. Scores in the data are in [0, 1] and so are predictions.

Components fitted with it (each in its module): latent difficulty for dense files (`routing.difficulty`),
TF-IDF + kNN for large files (`routing.neighbours`), and the step-count pair gain (`routing.steps`), which
only acts when the candidates routed between (`only`) are exactly one fitted pair.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tiergate.routing.data import prompt_fingerprints
from tiergate.routing.difficulty import DifficultyModel
from tiergate.routing.embed import StaticEmbedder
from tiergate.routing.features import STRUCT_NAMES, TOKEN_SLOTS, FeatureExtractor
from tiergate.routing.neighbours import GATE_MIN, NeighbourConfig, NeighbourModel
from tiergate.routing.steps import PairGainModel, StepsConfig

if TYPE_CHECKING:
    from tiergate.routing.data import OutcomeRow

ARTIFACTS_DIR = Path(__file__).parent / "artifacts"
FORMAT_VERSION = 1
TRAINING_PROMPTS = "training_prompts.npz"  # fingerprints of the prompts a saved router was trained on
N_STRUCT = len(STRUCT_NAMES)  # the leading feature columns: structural (features.structural)
#: Mixed into the benchmark-resemblance probabilities so no file is ever ruled out entirely.
SOURCE_SMOOTHING = 0.05
#: Rows per outcome file used to fit the benchmark-resemblance classifier (a balanced sample).
SOURCE_CLASSIFIER_ROWS = 1500


@dataclass(frozen=True)
class FitConfig:
    rank: int = 16
    steps: int = 400
    lr: float = 0.03
    l2_encoder: float = 1e-3  # on V
    l2_loadings: float = 1e-3  # on u
    l2_direct: float = 3e-2  # on w (per-candidate direct weights): strong, it only corrects
    within_embed_dims: int = 16  # leading embedding dims used for within-benchmark variation
    l2_lexical: float = 1e-5  # on the token projection T (weak: the bag is sparse and L2-normalised)
    lexical: bool = True  # learn a low-rank projection of the prompt's tf-idf WordPiece bag
    seed: int = 0
    difficulty: bool = True  # latent-difficulty component for dense outcome files (routing.difficulty)
    neighbours: bool = True  # TF-IDF + kNN component for large outcome files (routing.neighbours)
    pair_gain: bool = True  # step-count gain blend when routing between exactly two candidates (routing.steps)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class _Adam:
    """Adam over a dict of float32 arrays."""

    def __init__(self, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.t = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.t += 1
        out = {}
        for k, p in params.items():
            g = grads[k]
            self.m[k] = self.b1 * self.m.get(k, 0.0) + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v.get(k, 0.0) + (1 - self.b2) * g * g
            mh = self.m[k] / (1 - self.b1**self.t)
            vh = self.v[k] / (1 - self.b2**self.t)
            out[k] = (p - self.lr * mh / (np.sqrt(vh) + self.eps)).astype(np.float32)
        return out


class QualityModel:
    """Predicts each candidate's score in [0, 1] on a prompt."""

    def __init__(self, extractor: FeatureExtractor | None = None, config: FitConfig | None = None) -> None:
        self.config = config or FitConfig()
        self._extractor = extractor
        self._keys: list[str] = []
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.V: np.ndarray | None = None
        self.U: np.ndarray | None = None
        self.W: np.ndarray | None = None
        self.b: np.ndarray | None = None
        self.n_rows: dict[str, int] = {}
        self.sources: list[str] = []
        self.prompt_prints: np.ndarray | None = None  # fingerprints of the training prompts (data.prompt_fingerprints)
        # each candidate's mean recorded `cost_usd` per training row (where its rows record one): the price
        # level the router uses for a candidate the catalogue does not price, as `router eval` does
        self.recorded_cost_usd: dict[str, float] = {}
        self.C: np.ndarray | None = None
        self.src_mean: np.ndarray | None = None
        # the structural features' range over the training prompts: a prompt outside it (a 70k-token
        # document when no training prompt had 3k) is predicted as at the edge, not extrapolated (the
        # embedding is a mean of token vectors, bounded by construction: not clipped)
        self.x_lo: np.ndarray | None = None
        self.x_hi: np.ndarray | None = None
        self.within_std: np.ndarray | None = None
        self.src_A: np.ndarray | None = None
        self.src_c: np.ndarray | None = None
        self.n_dense = 0
        self.idf: np.ndarray | None = None
        self.T: np.ndarray | None = None  # (vocabulary, rank) token projection
        self.difficulty_model: DifficultyModel | None = None  # see routing.difficulty
        self.neighbour_model: NeighbourModel | None = None  # see routing.neighbours
        self.neighbour_config = NeighbourConfig()
        self.pair_gain_model: PairGainModel | None = None  # see routing.steps
        self.pair_gain_config = StepsConfig()

    # ------------------------------------------------------------------------------------- features

    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = FeatureExtractor(StaticEmbedder.load(ARTIFACTS_DIR))
        return self._extractor

    def features(self, prompts: Sequence[str]) -> np.ndarray:
        return self.extractor.transform(list(prompts))

    # ------------------------------------------------------------------------------------- training

    def fit(
        self,
        rows: Sequence[OutcomeRow],
        candidates: Sequence[str] | None = None,
        progress: bool = False,
        features: np.ndarray | None = None,
    ) -> QualityModel:
        """Fit on every scored cell of `rows` (all candidates seen, or only `candidates`).

        `features` may pass precomputed `self.features([r.prompt for r in rows])` (evaluation reuses
        them across folds).
        """
        if not rows:
            raise ValueError("no outcome rows to fit on")
        keys = sorted({k for r in rows for k in r.outcomes} if candidates is None else set(candidates))
        col = {k: j for j, k in enumerate(keys)}
        n, m = len(rows), len(keys)
        X = self.features([r.prompt for r in rows]) if features is None else np.asarray(features, np.float32)
        self.n_dense = X.shape[1] - 2 * TOKEN_SLOTS
        X, slots = X[:, : self.n_dense], X[:, self.n_dense:]
        Y = np.zeros((n, m), dtype=np.float32)
        M = np.zeros((n, m), dtype=np.float32)
        per_source: dict[str, int] = {}
        for r in rows:
            per_source[r.source] = per_source.get(r.source, 0) + 1
        row_w = np.array([1.0 / np.sqrt(per_source[r.source]) for r in rows], dtype=np.float32)
        counts = dict.fromkeys(keys, 0)
        for i, r in enumerate(rows):
            for k, o in r.outcomes.items():
                j = col.get(k)
                if j is not None:
                    Y[i, j] = o.score
                    M[i, j] = row_w[i]
                    counts[k] += 1
        keep = [j for j, k in enumerate(keys) if counts[k] > 0]
        if len(keep) < m:
            keys = [keys[j] for j in keep]
            Y, M = Y[:, keep], M[:, keep]
            m = len(keys)
        M /= M.sum()
        sources = sorted(per_source)
        src_col = {name: k for k, name in enumerate(sources)}
        S = np.zeros((n, len(sources)), dtype=np.float32)
        S[np.arange(n), [src_col[r.source] for r in rows]] = 1.0
        self.mean = X.mean(axis=0)
        self.std = X.std(axis=0) + 1e-6
        self.x_lo, self.x_hi = X[:, :N_STRUCT].min(axis=0), X[:, :N_STRUCT].max(axis=0)
        Xs = (X - self.mean) / self.std
        self.sources = sources
        self.prompt_prints = prompt_fingerprints(r.prompt for r in rows)
        self.recorded_cost_usd = recorded_costs(rows, keys)
        self.src_mean = (S.T @ Xs) / S.sum(axis=0)[:, None]
        resid = Xs - S @ self.src_mean
        self.within_std = resid.std(axis=0) + 1e-3
        self._fit_source_classifier(Xs, S, progress)
        ids, tok_counts = slots[:, :TOKEN_SLOTS].astype(np.int64), slots[:, TOKEN_SLOTS:]
        vocab = self.extractor.embedder.table.shape[0]
        df = np.bincount(ids[ids >= 0], minlength=vocab).astype(np.float64)
        self.idf = (np.log((1 + n) / (1 + df)) + 1.0).astype(np.float32)
        L = self._lexical_matrix(ids, tok_counts) if self.config.lexical else None
        self._train((resid / self.within_std)[:, self._within_cols()], S, Y, M, L, progress)
        self._keys = keys
        self.n_rows = {k: counts[k] for k in keys}
        own = self.source_probs(Xs)[np.arange(n), [src_col[r.source] for r in rows]]
        # --- difficulty component (routing.difficulty): fitted per dense outcome file ---
        self.difficulty_model = DifficultyModel().fit(rows, X, own) if self.config.difficulty else None
        # --- neighbourhood component (routing.neighbours): fitted per large outcome file, on top of the above ---
        self.neighbour_model = None
        if self.config.neighbours:
            big = [s for s, c in per_source.items() if c >= self.neighbour_config.min_rows]
            if big:
                idx = np.flatnonzero(np.isin([r.source for r in rows], big))
                full = np.hstack([X, slots])
                main = self.predict_features(full[idx])
                nm = NeighbourModel(config=self.neighbour_config).fit(
                    [rows[i] for i in idx], full[idx], main, own[idx], dims=self.n_dense - len(STRUCT_NAMES))
                self.neighbour_model = nm if nm.components else None
        # --- pair-gain component (routing.steps): per candidate pair recorded together on >= 3 files; its
        # router-score distribution is that of the model above (in-sample) on the pair's reference rows ---
        self.pair_gain_model = None
        if self.config.pair_gain:
            full = np.hstack([X, slots])
            pgm = PairGainModel(config=self.pair_gain_config).fit(
                rows, lambda idx: self.predict_features(full[idx], [rows[i].prompt for i in idx]))
            self.pair_gain_model = pgm if pgm.pairs else None
        return self

    def _fit_source_classifier(self, Xs: np.ndarray, S: np.ndarray, progress: bool) -> None:
        """Softmax regression prompt features -> which outcome file (benchmark) it resembles."""
        rng = np.random.default_rng(self.config.seed)
        keep = np.concatenate([rng.permutation(np.flatnonzero(S[:, j]))[:SOURCE_CLASSIFIER_ROWS]
                               for j in range(S.shape[1])])
        Xs, S = Xs[keep], S[keep]
        d, k = Xs.shape[1], S.shape[1]
        rw = 1.0 / S.sum(axis=0)  # balance the files
        w = (S * rw).sum(axis=1, keepdims=True)
        w = w / w.sum()
        A = np.zeros((d, k), dtype=np.float32)
        c = np.zeros(k, dtype=np.float32)
        opt = _Adam(0.05)
        for _ in range(200):
            P = _softmax(Xs @ A + c)
            G = w * (P - S)
            gA, gc = Xs.T @ G + 2e-3 * A, G.sum(axis=0)
            A, c = opt.step({"A": A, "c": c}, {"A": gA, "c": gc}).values()
        self.src_A, self.src_c = A, c

    def bounded(self, X: np.ndarray) -> np.ndarray:
        """Raw features with the structural ones (lengths, counts, ratios) clipped to the training prompts'
        range: no extrapolation beyond the prompts the model has seen."""
        if self.x_lo is None or self.x_hi is None:
            return X
        X = np.array(X, np.float32, copy=True)
        X[:, :N_STRUCT] = np.clip(X[:, :N_STRUCT], self.x_lo, self.x_hi)
        return X

    def resemblance(self, X: np.ndarray) -> np.ndarray:
        """For raw features: how much each prompt resembles each training file (`self.sources`)."""
        X = self.bounded(X)
        return self.source_probs((np.asarray(X[:, : self.n_dense], np.float32) - self.mean) / self.std)

    def source_probs(self, Xs: np.ndarray) -> np.ndarray:
        """How much each prompt resembles each training file's prompts (rows sum to 1)."""
        P = _softmax(Xs @ self.src_A + self.src_c)
        return (1 - SOURCE_SMOOTHING) * P + SOURCE_SMOOTHING / P.shape[1]

    def _lexical_weights(self, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """tf-idf weights of the token slots (0 for empty slots), each row L2-normalised."""
        w = np.where(ids >= 0, np.log1p(counts) * self.idf[np.maximum(ids, 0)], 0.0).astype(np.float32)
        return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-6)

    def _lexical_matrix(self, ids: np.ndarray, counts: np.ndarray) -> Any:
        """The (rows x vocabulary) sparse tf-idf matrix, for training (scipy)."""
        from scipy import sparse

        w = self._lexical_weights(ids, counts)
        r, c = np.nonzero(ids >= 0)
        return sparse.csr_matrix((w[r, c], (r, ids[r, c])), shape=(len(ids), len(self.idf)), dtype=np.float32)

    def _lexical(self, slots: np.ndarray) -> np.ndarray:
        """The lexical part of the prompt representation, (n, rank), from the token slots."""
        if self.T is None:
            return np.zeros((len(slots), self.config.rank), np.float32)
        if len(slots) == 1:  # one prompt (serving): its filled slots only
            ids = slots[0, :TOKEN_SLOTS].astype(np.int64)
            filled = ids >= 0
            ids = ids[filled]
            w = (np.log1p(slots[0, TOKEN_SLOTS:][filled]) * self.idf[ids]).astype(np.float32)
            w /= max(float(np.linalg.norm(w)), 1e-6)
            return (w @ self.T[ids])[None]
        ids, counts = slots[:, :TOKEN_SLOTS].astype(np.int64), slots[:, TOKEN_SLOTS:]
        out = np.empty((len(slots), self.T.shape[1]), np.float32)
        for start in range(0, len(slots), 1024):
            sl = slice(start, start + 1024)
            w = self._lexical_weights(ids[sl], counts[sl])
            out[sl] = np.einsum("nk,nkr->nr", w, self.T[np.maximum(ids[sl], 0)])
        return out

    def _train(
        self, X: np.ndarray, S: np.ndarray, Y: np.ndarray, M: np.ndarray, L: Any, progress: bool
    ) -> None:
        """Adam on the observed cells only, grouped by candidate (a few ms per step)."""
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        n, d, m, k = X.shape[0], X.shape[1], Y.shape[1], S.shape[1]
        cell_j, cell_i = np.nonzero(M.T)  # sorted by candidate
        Xc = np.ascontiguousarray(X[cell_i], dtype=np.float32)
        yc, wc = Y[cell_i, cell_j], M[cell_i, cell_j]
        src = S.argmax(axis=1)[cell_i]
        bounds = np.searchsorted(cell_j, np.arange(m + 1))
        segs = [slice(bounds[j], bounds[j + 1]) for j in range(m)]
        flat = src * m + cell_j
        mean_y = np.clip(np.bincount(cell_j, yc * wc, m) / np.maximum(np.bincount(cell_j, wc, m), 1e-12), 0.02, 0.98)
        params = {
            "V": (rng.standard_normal((d, cfg.rank)) * 0.01).astype(np.float32),
            "C": (rng.standard_normal((k, cfg.rank)) * 0.01).astype(np.float32),
            "U": (rng.standard_normal((m, cfg.rank)) * 0.01).astype(np.float32),
            "W": np.zeros((m, d), dtype=np.float32),
            "b": np.log(mean_y / (1 - mean_y)).astype(np.float32),
        }
        l2 = {"V": cfg.l2_encoder, "C": cfg.l2_loadings, "U": cfg.l2_loadings, "W": cfg.l2_direct, "b": 0.0,
              "T": cfg.l2_lexical}
        if L is not None:
            params["T"] = np.zeros((L.shape[1], cfg.rank), dtype=np.float32)
            LT = L.T.tocsr()
        opt = _Adam(cfg.lr)
        steps = range(cfg.steps)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="fit quality model", leave=True)
        logit = np.empty(len(yc), dtype=np.float32)
        for _ in steps:
            V, C, U, W, b = (params[n] for n in ("V", "C", "U", "W", "b"))
            E = V @ U.T + W.T  # (d, m): each candidate's effective weights on the features
            CS = C @ U.T  # (k, m): benchmark term
            for j, sl in enumerate(segs):
                logit[sl] = Xc[sl] @ E[:, j]
            logit += CS.ravel()[flat] + b[cell_j]
            if L is not None:
                ZL = np.asarray(L @ params["T"], dtype=np.float32)  # (n, rank) lexical representation
                ZLc = ZL[cell_i]
                logit += np.einsum("nr,nr->n", ZLc, U[cell_j])
            g = (wc * (_sigmoid(logit) - yc)).astype(np.float32)
            gE = np.empty((d, m), dtype=np.float32)
            for j, sl in enumerate(segs):
                gE[:, j] = g[sl] @ Xc[sl]
            gCS = np.bincount(flat, g, k * m).reshape(k, m).astype(np.float32)
            grads = {"V": gE @ U, "C": gCS @ U, "U": gE.T @ V + gCS.T @ C, "W": gE.T,
                     "b": np.bincount(cell_j, g, m).astype(np.float32)}
            if L is not None:
                gZ = g[:, None] * U[cell_j]  # d(loss)/d(ZL) per cell
                gZrow = np.stack([np.bincount(cell_i, gZ[:, r], n) for r in range(U.shape[1])], axis=1)
                grads["T"] = np.asarray(LT @ gZrow.astype(np.float32), dtype=np.float32)
                for j, sl in enumerate(segs):
                    grads["U"][j] += g[sl] @ ZLc[sl]
            grads = {n: gr + 2 * l2[n] * params[n] for n, gr in grads.items()}
            params = opt.step(params, grads)
        self.V, self.C, self.U, self.W, self.b = (params[n] for n in ("V", "C", "U", "W", "b"))
        self.T = params.get("T")

    # ------------------------------------------------------------------------------------ prediction

    def candidates(self) -> list[str]:
        """Candidate keys with learned predictions (e.g. "o1@high", "gpt-4o-mini")."""
        return list(self._keys)

    def _inputs(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(within-benchmark features, benchmark resemblance) for raw features."""
        if self.V is None or self.mean is None:
            raise RuntimeError("QualityModel is not fitted: call fit() or QualityModel.load()")
        Xs = (np.asarray(X[:, : self.n_dense], np.float32) - self.mean) / self.std
        pi = self.source_probs(Xs)
        return ((Xs - pi @ self.src_mean) / self.within_std)[:, self._within_cols()], pi

    def _within_cols(self) -> slice:
        """Columns of the within-benchmark input: all structural features + the leading embedding dims."""
        n_struct = len(STRUCT_NAMES)
        return slice(0, n_struct + min(self.config.within_embed_dims, len(self.mean) - n_struct))

    def logits_features(self, X: np.ndarray) -> np.ndarray:
        X = self.bounded(X)
        return self._logits(X, *self._inputs(X))

    def _logits(self, X: np.ndarray, Xr: np.ndarray, pi: np.ndarray) -> np.ndarray:
        Z = Xr @ self.V + pi @ self.C + self._lexical(np.asarray(X[:, self.n_dense:]))
        return Z @ self.U.T + Xr @ self.W.T + self.b

    def predict_features(
        self, X: np.ndarray, texts: Sequence[str] | None = None, only: set[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Predictions from a precomputed feature matrix (`texts`: the prompts' texts, which the
        neighbourhood component's word n-grams need; without them that component is skipped). With
        `only`, the neighbourhood component is computed for those candidates only (the others get the
        prediction without it): the serving router's saving when it routes between other candidates. When
        `only` is exactly a candidate pair the pair-gain component was fitted for (and `texts` are given),
        the pair's strong member is moved to p_weak + the blended gain (routing.steps) on the prompts no
        neighbourhood component covering the pair is computed for; any other candidate
        set (more or fewer candidates, or None) leaves every prediction as it was."""
        keys, P = self.predict_matrix(X, texts, only)
        return {k: P[:, j] for j, k in enumerate(keys)}

    def predict_matrix(
        self, X: np.ndarray, texts: Sequence[str] | None = None, only: set[str] | None = None
    ) -> tuple[tuple[str, ...], np.ndarray]:
        """`predict_features` as (candidate keys, (n, len(keys)) float64 matrix): what the serving router
        reads, without a dictionary of every candidate's column."""
        X = self.bounded(X)
        Xr, pi = self._inputs(X)  # pi: the resemblance to each training file, which the components gate on
        P = _sigmoid(self._logits(X, Xr, pi)).astype(np.float64)
        keys = tuple(self._keys)
        dm, nm = self.difficulty_model, self.neighbour_model
        # --- difficulty component: covered candidates move towards it as the prompt resembles its file ---
        if dm is not None and dm.components:
            P = dm.blend_matrix(P, keys, X, pi[:, [self.sources.index(s) for s in dm.sources]])
        # --- neighbourhood component: the same, for large files, stacked on the prediction so far ---
        if nm is not None and texts is not None and nm.components:
            P = nm.blend_matrix(P, keys, X, texts, pi[:, [self.sources.index(s) for s in nm.sources]], only)
        # --- pair-gain component: only when routing between exactly one fitted pair (RouteLLM's setting), for
        # the prompts no neighbourhood component covering the pair is computed for (no in-file evidence) ---
        pgm = self.pair_gain_model
        pair = pgm.pair(only) if pgm is not None and texts is not None else None
        if pair is not None:
            gate = self.neighbour_gate(X, {pair.strong, pair.weak}, pi)
            P = pgm.blend_matrix(P, keys, texts, only, active=gate < GATE_MIN)
        return keys, P

    def neighbour_gate(self, X: np.ndarray, candidates: set[str], pi: np.ndarray | None = None) -> np.ndarray:
        """Per prompt, the largest gate (`routing.neighbours`) of a neighbourhood component that covers all
        of `candidates`: 0 where none does; below GATE_MIN the component is not computed. `pi`: the
        prompts' `resemblance(X)` when already computed."""
        gate = np.zeros(len(X))
        nm = self.neighbour_model
        comps = [c for c in nm.components if candidates <= set(c.candidates)] if nm is not None else []
        if comps:
            pi = self.resemblance(X) if pi is None else pi
            for c in comps:
                g = np.clip(pi[:, self.sources.index(c.source)] / c.typical_resemblance, 0.0, 1.0)
                gate = np.maximum(gate, g)
        return gate

    def predict(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """candidate key -> predicted score in [0, 1] for each prompt."""
        return self.predict_features(self.features(prompts), list(prompts))

    def difficulty(self, X: np.ndarray) -> np.ndarray:
        """How much harder than the average prompt of its kind each prompt is predicted to be: minus the
        mean over learned candidates of the within-benchmark part of the logit (0 = typical)."""
        X = self.bounded(X)
        Xr, _ = self._inputs(X)
        within = (Xr @ self.V + self._lexical(np.asarray(X[:, self.n_dense:]))) @ self.U.T + Xr @ self.W.T
        return -within.mean(axis=1)

    # ------------------------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> None:
        """Write `quality.npz` + `quality.json` (the embedding artefacts are shared, not copied here
        unless the directory is a fresh one: then they are copied so the directory is self-contained)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            directory / "quality.npz",
            mean=self.mean, std=self.std, V=self.V, C=self.C, U=self.U, W=self.W.astype(np.float16), b=self.b,
            src_mean=self.src_mean, within_std=self.within_std, src_A=self.src_A, src_c=self.src_c,
            idf=self.idf.astype(np.float16),
            **({"x_lo": self.x_lo, "x_hi": self.x_hi} if self.x_lo is not None else {}),
            **({"T": self.T.astype(np.float16)} if self.T is not None else {}),
        )
        meta: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "candidates": self._keys,
            "sources": self.sources,
            "n_rows": self.n_rows,
            "n_dense": self.n_dense,
            "config": self.config.__dict__,
            "features": self.extractor.names if self._extractor else None,
            "recorded_cost_usd": self.recorded_cost_usd,
        }
        (directory / "quality.json").write_text(json.dumps(meta, indent=1) + "\n")
        for component, files in ((self.difficulty_model, ("difficulty.npz", "difficulty.json")),
                                 (self.neighbour_model, ("neighbours.npz", "neighbours.json")),
                                 (self.pair_gain_model, ("steps.npz", "steps.json"))):
            if component is not None:
                component.save(directory)
            else:  # a stale artefact of an earlier fit would be loaded with this model
                for name in files:
                    (directory / name).unlink(missing_ok=True)
        if self.prompt_prints is not None:  # lets `router eval` say which evaluated prompts were trained on
            np.savez_compressed(directory / TRAINING_PROMPTS, fingerprints=self.prompt_prints)
        else:
            (directory / TRAINING_PROMPTS).unlink(missing_ok=True)
        for name in ("static_embedding.npz", "tokenizer.json"):
            if not (directory / name).exists():
                (directory / name).write_bytes((ARTIFACTS_DIR / name).read_bytes())

    @classmethod
    def load(cls, directory: str | Path | None = None) -> QualityModel:
        directory = Path(directory) if directory is not None else ARTIFACTS_DIR
        meta = json.loads((directory / "quality.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{directory}: quality model format {meta.get('format')} is not {FORMAT_VERSION}")
        emb_dir = directory if (directory / "static_embedding.npz").exists() else ARTIFACTS_DIR
        model = cls(FeatureExtractor(StaticEmbedder.load(emb_dir)), FitConfig(**meta["config"]))
        with np.load(directory / "quality.npz") as z:
            model.mean, model.std = z["mean"], z["std"]
            model.V, model.C, model.U, model.b = z["V"], z["C"], z["U"], z["b"]
            model.W = z["W"].astype(np.float32)
            model.src_mean, model.within_std = z["src_mean"], z["within_std"]
            model.src_A, model.src_c = z["src_A"], z["src_c"]
            model.idf = z["idf"].astype(np.float32)
            model.T = z["T"].astype(np.float32) if "T" in z else None
            if "x_lo" in z:  # routers saved before the range was kept extrapolate
                model.x_lo, model.x_hi = z["x_lo"], z["x_hi"]
        model.n_dense = int(meta["n_dense"])
        model.sources = list(meta["sources"])
        if (directory / TRAINING_PROMPTS).exists():  # routers saved before it was kept have none
            with np.load(directory / TRAINING_PROMPTS) as z:
                model.prompt_prints = z["fingerprints"]
        model._keys = list(meta["candidates"])
        model.n_rows = dict(meta.get("n_rows", {}))
        model.recorded_cost_usd = {k: float(v) for k, v in (meta.get("recorded_cost_usd") or {}).items()}
        model.difficulty_model = DifficultyModel.load(directory) if model.config.difficulty else None
        model.neighbour_model = NeighbourModel.load(directory) if model.config.neighbours else None
        if model.neighbour_model is not None:
            model.neighbour_config = model.neighbour_model.config
        model.pair_gain_model = PairGainModel.load(directory) if model.config.pair_gain else None
        if model.pair_gain_model is not None:
            model.pair_gain_config = model.pair_gain_model.config
        return model


def recorded_costs(rows: Sequence[OutcomeRow], candidates: Sequence[str]) -> dict[str, float]:
    """Each candidate's mean recorded `cost_usd` over the rows that record one for it (candidates with
    none are left out)."""
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    wanted = set(candidates)
    for r in rows:
        for k, o in r.outcomes.items():
            if k in wanted and o.cost_usd is not None and math.isfinite(o.cost_usd):
                total[k] = total.get(k, 0.0) + float(o.cost_usd)
                count[k] = count.get(k, 0) + 1
    return {k: total[k] / count[k] for k in sorted(total)}


def train_default(
    out_dir: str | Path,
    progress: bool = True,
    paths: Sequence[str | Path] | None = None,
    config: FitConfig | None = None,
) -> QualityModel:
    """Fit the quality model on outcome files (default: every dev file in shared/data) and save it,
    with the embedding artefacts, to `out_dir` (what `tiergate router train` runs)."""
    from tiergate.routing.data import dev_files, load_outcomes

    files = list(paths) if paths else dev_files()
    rows = load_outcomes(files)
    model = QualityModel(config=config)
    if progress:
        print(f"features for {len(rows)} prompts ...", flush=True)
    X = model.features([r.prompt for r in rows])
    model.fit(rows, progress=progress, features=X)
    model.save(out_dir)
    return model
