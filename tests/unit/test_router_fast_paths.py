"""The router's serving fast paths give what the general paths give: the one-query kNN mean and its top-k
pre-selection (routing.neighbours), the stacked difficulty blend (routing.difficulty), and the token ids
shared by the main and kNN embedders (routing.embed)."""

from __future__ import annotations

import numpy as np
import pytest

from tiergate.routing.difficulty import Component, DifficultyModel
from tiergate.routing.embed import StaticEmbedder, WordPieceIds, word_piece_ids
from tiergate.routing.neighbours import _knn_means, _top_k
from tiergate.routing.quality import ARTIFACTS_DIR


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    E = rng.standard_normal((n, d)).astype(np.float32)
    return E / np.linalg.norm(E, axis=1, keepdims=True)


@pytest.mark.parametrize(("n", "k"), [(5000, 100), (5000, 25), (300, 50), (60, 60)])
def test_one_query_knn_mean_equals_batch(n: int, k: int) -> None:
    rng = np.random.default_rng(n + k)
    E, S = _unit_rows(rng, n, 32), rng.random((n, 3)).astype(np.float32)
    Q = _unit_rows(rng, 6, 32)
    batch = _knn_means(E, S, Q, (k,))[k]  # several queries: the general path
    one = np.stack([_knn_means(E, S, q[None], (k,))[k][0] for q in Q])
    np.testing.assert_allclose(one, batch, rtol=1e-6)


def test_top_k_selects_the_k_largest() -> None:
    rng = np.random.default_rng(0)
    cases = [rng.standard_normal(14_000), np.sort(rng.standard_normal(14_000)), -np.sort(rng.standard_normal(9000)),
             np.r_[np.zeros(13_900), rng.random(100) + 1], rng.standard_normal(700), np.full(5000, 0.5)]
    for sims in cases:
        sims = sims.astype(np.float32)
        for k in (1, 50, 100, 400):
            got = _top_k(sims, k)
            assert len(got) == k == len(set(got.tolist()))
            np.testing.assert_array_equal(np.sort(sims[got]), np.sort(sims)[-k:])


def test_stacked_difficulty_blend_equals_per_component() -> None:
    rng = np.random.default_rng(1)
    d = 12
    comps = [Component(f"file{i}", cands, rng.standard_normal(d), rng.random(d) + 0.5, rng.standard_normal(d),
                       float(rng.standard_normal()), rng.standard_normal((len(cands), 4)), 0.5,
                       typical_resemblance=0.4 + 0.2 * i)
             for i, cands in enumerate([["a", "b", "c"], ["b", "c", "d"], ["c", "x"]])]
    dm = DifficultyModel(comps)
    keys = ("a", "b", "c", "d", "e")
    X = rng.standard_normal((7, 30)).astype(np.float32)
    B = rng.random((7, len(keys)))
    R = rng.random((7, len(comps)))
    stacked = dm.blend_matrix(B, keys, X, R)
    np.testing.assert_allclose(stacked, dm._blend_each(B, keys, X, R), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(stacked[:, 4], B[:, 4])  # "e": no component covers it
    # the dict interface (tests, evaluation) is the same computation
    out = dm.blend({k: B[:, j] for j, k in enumerate(keys)}, X, {c.source: R[:, i] for i, c in enumerate(comps)})
    np.testing.assert_allclose(np.column_stack([out[k] for k in keys]), stacked, rtol=1e-12)
    # a gate changed after a blend is honoured (the stacked parameters are cached, the gates are not)
    comps[0].typical_resemblance = 0.01
    np.testing.assert_allclose(dm.blend_matrix(B, keys, X, R), dm._blend_each(B, keys, X, R), rtol=1e-12)


def test_embedders_share_token_ids() -> None:
    from tokenizers import Tokenizer

    path = ARTIFACTS_DIR / "tokenizer.json"
    rng = np.random.default_rng(2)
    main = StaticEmbedder(rng.standard_normal((30522, 8)).astype(np.float32), path)
    knn = StaticEmbedder(rng.standard_normal((30522, 4)).astype(np.float32), path)
    assert main.token_ids is knn.token_ids is word_piece_ids(path)
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    fresh = WordPieceIds(path)  # a private instance: no shared word cache, no remembered text
    texts = ["Compute the Probability of drawing 3 red balls?", "def f(x):\n    return x**2  # square",
             "Compute the Probability of drawing 3 red balls?", "naïve café déjà-vu", ""]
    for text in texts:  # alternating texts: the remembered last text must not leak into the next
        ids = main.token_ids.array(text)
        assert ids.tolist() == main.token_ids(text) == tok.encode(text.lower(), add_special_tokens=False).ids
        assert fresh(text) == ids.tolist()
        assert knn.token_ids.array(text) is ids  # the second embedder of a decision reuses the first's ids
        np.testing.assert_array_equal(knn.embed([text])[0], knn.vector(fresh(text)))


def test_token_ids_cap_and_long_prompts() -> None:
    from tokenizers import Tokenizer

    from tiergate.routing.embed import MAX_TOKENS

    path = ARTIFACTS_DIR / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()

    def reference(text: str) -> list[int]:  # word by word, stopping after the word that passes the cap
        out: list[int] = []
        for w in text.lower().split():
            out.extend(tok.encode(w, add_special_tokens=False).ids)
            if len(out) > 4 * MAX_TOKENS:
                break
        return out

    rng = np.random.default_rng(4)
    vocab = ["tokenisation", "x", "1,000,000.5", "\u200b", "(a)", "Überprüfung", "of", "the"]
    ids = WordPieceIds(path)
    emb = StaticEmbedder(rng.standard_normal((30522, 4)).astype(np.float32), path)
    for n_words in (10, 3000, 9000, 20_000):
        text = " ".join(rng.choice(vocab, size=n_words))
        got = ids(text)
        assert got == reference(text)
        assert ids.array(text).tolist() == got
        np.testing.assert_array_equal(emb.vector(got), emb.vector(ids.array(text)))
    long = ids(" ".join(["tokenisation"] * 20_000))  # 2 ids a word: cut after the word that passes the cap
    assert len(long) == 4 * MAX_TOKENS + 2 and long == reference(" ".join(["tokenisation"] * 5000))


def test_token_ids_with_a_full_word_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenizers import Tokenizer

    from tiergate.routing import embed

    path = ARTIFACTS_DIR / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    monkeypatch.setattr(embed, "WORD_CACHE_SIZE", 3)
    ids = WordPieceIds(path)
    texts = ["alpha beta gamma", "delta alpha epsilon zeta eta delta", "theta theta iota", "alpha beta gamma delta"]
    for text in texts:  # words past the cache's size are tokenised per prompt, not remembered
        assert ids(text) == tok.encode(text, add_special_tokens=False).ids
    assert len(ids.words) == 3


def test_pair_gain_blend_matrix_equals_blend() -> None:
    from tiergate.routing.steps import N_QUANTILES, STEP_NAMES, PairGain, PairGainModel

    rng = np.random.default_rng(5)
    d = len(STEP_NAMES)
    pg = PairGain("strong", "weak", rng.random(d) + 0.5, rng.standard_normal(d),
                  np.sort(rng.standard_normal(N_QUANTILES)), np.sort(rng.standard_normal(N_QUANTILES) * 0.2))
    model = PairGainModel([pg])
    keys = ("other", "weak", "strong")
    texts = ["Tom has 3 apples and buys 5 more. How many now?", "Write a poem.", "If x = 2, what is 3x + 1?"]
    B = rng.random((3, 3))
    base = {k: B[:, j] for j, k in enumerate(keys)}
    for active in (None, np.array([True, False, True]), np.zeros(3, bool)):
        out = model.blend(base, texts, {"strong", "weak"}, active)
        got = model.blend_matrix(B, keys, texts, {"strong", "weak"}, active)
        np.testing.assert_array_equal(got, np.column_stack([out[k] for k in keys]))
    assert model.blend_matrix(B, keys, texts, {"strong", "other"}) is B  # not the fitted pair: unchanged
    assert not np.array_equal(model.blend_matrix(B, keys, texts, {"strong", "weak"})[:, 2], B[:, 2])
