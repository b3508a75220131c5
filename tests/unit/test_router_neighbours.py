"""Neighbourhood component (routing.neighbours): TF-IDF transform equal to sklearn's, a gain that only a
word bigram reveals is learned, the resemblance gate, blending into the quality model, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tiergate.routing import neighbours
from tiergate.routing.data import Outcome, OutcomeRow
from tiergate.routing.neighbours import (
    FEATURE_EMBEDDING,
    KNN_TABLE,
    NeighbourConfig,
    NeighbourModel,
    TfidfWords,
    fit_component,
    knn_embedder,
    word_grams,
)
from tiergate.routing.quality import FitConfig, QualityModel

pytest.importorskip("sklearn")

STRONG, WEAK = "strong", "weak"
TOPICS = ["chemistry", "history", "law", "algebra", "biology", "economics", "physics", "geography"]
FILLER = ["which", "statement", "about", "the", "following", "is", "correct", "given", "that", "a", "an",
          "of", "in", "and", "option", "case", "most", "likely", "reason", "for"]
# The strong model's advantage depends on the word order "ledger balance" (vs "balance ledger"): the same
# tokens, so the main model's bag-of-tokens features (static embedding, WordPiece bag, counts) are blind
# to it; only the component's word bigrams see it.
MARKED, PLAIN = "ledger balance", "balance ledger"


def _prompt(rng: np.random.Generator, marked: bool) -> str:
    words = list(rng.choice(FILLER, size=30)) + [str(rng.choice(TOPICS))] * 2 + [MARKED if marked else PLAIN]
    rng.shuffle(words)
    return " ".join(words) + "?\nA) one\nB) two\nC) three\nD) four"


def _rows(n: int, seed: int, source: str = "quiz") -> tuple[list[OutcomeRow], np.ndarray]:
    """Both models score 0.6 on a plain prompt; on a marked one the strong one 0.95, the weak 0.1."""
    rng = np.random.default_rng(seed)
    rows, marked = [], rng.random(n) < 0.3
    for i in range(n):
        ps, pw = (0.95, 0.1) if marked[i] else (0.6, 0.6)
        out = {STRONG: Outcome(float(rng.random() < ps)), WEAK: Outcome(float(rng.random() < pw))}
        rows.append(OutcomeRow(f"{source}-{seed}-{i}", source, _prompt(rng, bool(marked[i])), {}, out))
    return rows, marked


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive outranks a negative (ties count half)."""
    pos, neg = score[positive], score[~positive]
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


CFG = NeighbourConfig(min_rows=200, ks=(10, 25, 50))


def test_word_grams_and_tfidf_match_sklearn() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = ["The cat sat on the mat.", "A cat, a DOG & the mat: 42 cats!", "Über straße naïve café café", "x y"]
    assert word_grams("The cat sat") == ["the", "cat", "sat", "the cat", "cat sat"]
    tf, A = TfidfWords.fit(texts, max_features=1000, min_df=1)
    ref = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, max_features=1000).fit(texts)
    np.testing.assert_allclose(tf.transform(texts).toarray(), ref.transform(texts).toarray(), atol=1e-6)
    np.testing.assert_allclose(A.toarray(), ref.transform(texts).toarray(), atol=1e-6)
    assert tf.transform(["nothing known here"]).nnz == 0


@pytest.fixture(scope="module")
def extractor() -> QualityModel:
    return QualityModel()


def test_component_ranks_the_gain_a_bigram_reveals(extractor: QualityModel) -> None:
    rows, _ = _rows(600, 0)
    X = extractor.features([r.prompt for r in rows])
    flat = {STRONG: np.full(len(rows), 0.7), WEAK: np.full(len(rows), 0.5)}  # a main model that knows nothing
    comp = fit_component("quiz", rows, X, flat, CFG)
    assert comp is not None and comp.candidates == [STRONG, WEAK]
    test, marked = _rows(300, 1)
    P = comp.predict(extractor.features([r.prompt for r in test]), [r.prompt for r in test],
                     np.column_stack([np.full(len(test), 0.7), np.full(len(test), 0.5)]))
    assert _auc(P[:, 0] - P[:, 1], marked) > 0.9
    assert fit_component("quiz", rows[:150], X[:150], flat, CFG) is None  # too few rows


def test_quality_model_with_component_ranks_better_and_round_trips(extractor: QualityModel, tmp_path: Path) -> None:
    rows, _ = _rows(600, 0)
    test, marked = _rows(300, 1)
    cfg = FitConfig(steps=150, difficulty=False)
    scores = {}
    for on in (False, True):
        model = QualityModel(extractor.extractor, FitConfig(**{**cfg.__dict__, "neighbours": on}))
        model.neighbour_config = CFG
        model.fit(rows)
        assert (model.neighbour_model is not None) == on
        pred = model.predict([r.prompt for r in test])
        scores[on] = _auc(pred[STRONG] - pred[WEAK], marked)
    assert scores[True] > 0.85 and scores[True] > scores[False] + 0.15
    model.save(tmp_path)
    assert (tmp_path / "neighbours.npz").exists()
    loaded = QualityModel.load(tmp_path)
    assert loaded.neighbour_model is not None and loaded.neighbour_model.sources == ["quiz"]
    a, b = model.predict([r.prompt for r in test]), loaded.predict([r.prompt for r in test])
    for k in (STRONG, WEAK):
        np.testing.assert_allclose(a[k], b[k], atol=5e-3)
    # without the texts (features only) the component is skipped: the base prediction
    X = loaded.features([r.prompt for r in test])
    assert not np.allclose(loaded.predict_features(X)[STRONG], b[STRONG])


def test_gate_zero_keeps_the_base_prediction(extractor: QualityModel) -> None:
    rows, _ = _rows(300, 2)
    X = extractor.features([r.prompt for r in rows])
    nm = NeighbourModel(config=CFG).fit(rows, X, {STRONG: np.full(300, 0.7), WEAK: np.full(300, 0.5)})
    assert nm.sources == ["quiz"]
    base = {STRONG: np.full(5, 0.8), WEAK: np.full(5, 0.4), "other": np.full(5, 0.3)}
    texts = [r.prompt for r in rows[:5]]
    out = nm.blend(base, X[:5], texts, {"quiz": np.zeros(5)})
    for k, v in base.items():
        np.testing.assert_array_equal(out[k], v)
    out = nm.blend(base, X[:5], texts, {"quiz": np.ones(5)})
    np.testing.assert_array_equal(out["other"], base["other"])
    assert not np.allclose(out[STRONG], base[STRONG])


def test_knn_head_records_its_embedding_and_refuses_a_mismatch(
    extractor: QualityModel, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows, _ = _rows(300, 3)
    X = extractor.features([r.prompt for r in rows])
    flat = {STRONG: np.full(len(rows), 0.7), WEAK: np.full(len(rows), 0.5)}
    texts = [r.prompt for r in rows[:20]]
    main = np.column_stack([np.full(20, 0.7), np.full(20, 0.5)])
    comp = fit_component("quiz", rows, X, flat, CFG)
    assert comp is not None
    ke = knn_embedder()
    if ke is not None:  # the shipped kNN table: the index holds its embedding of the prompts, not X's columns
        assert comp.info["knn_embedding"] == KNN_TABLE.name and comp.info["knn_digest"] == ke.digest
        np.testing.assert_allclose(comp.emb, ke.embedder.embed([r.prompt for r in rows]), atol=2e-3)
        with pytest.raises(ValueError, match="pass them"):
            comp.head_logits(X[:20], [neighbours.gram_counts(t) for t in texts])
        comp.info["knn_digest"] = "0" * 16  # fitted with another table: refused, not silently mixed
        with pytest.raises(ValueError, match="retrain"):
            comp.predict(X[:20], texts, main)
    # without the table (older artefact directories): the feature matrix's embedding columns
    monkeypatch.setattr(neighbours, "knn_embedder", lambda: None)
    old = fit_component("quiz", rows, X, flat, CFG)
    assert old is not None and old.info["knn_embedding"] == FEATURE_EMBEDDING
    np.testing.assert_allclose(old.emb, neighbours.normalised_embedding(X, old.emb.shape[1]), atol=2e-3)
    assert old.predict(X[:20], texts, main).shape == (20, 2)
