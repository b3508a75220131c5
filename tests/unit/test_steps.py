"""Pair-gain component (routing.steps): question clean-up and step counts, a gain that depends on the
question's step counts is learned, the blend only touches exact pairs, the CDF maps, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tiergate.routing.data import Outcome, OutcomeRow
from tiergate.routing.policy import two_model_score
from tiergate.routing.steps import (
    MAX_QUESTION_CHARS,
    STEP_NAMES,
    PairGainModel,
    StepsConfig,
    cdf,
    inverse_cdf,
    question_text,
    step_features,
    strictly_increasing,
)

STRONG, WEAK, OTHER = "big-model", "small-model", "mid-model"
NAMES = ["Tom", "Ana", "Raj", "Mia", "Lee", "Kim"]
ITEMS = ["apples", "books", "coins", "cards", "shells", "stamps"]


def _question(rng: np.random.Generator, steps: int) -> str:
    """A word problem with `steps` quantity sentences (1 to 6)."""
    who = rng.choice(NAMES)
    parts = [f"{who} has {rng.integers(2, 90)} {rng.choice(ITEMS)}."]
    for _ in range(steps - 1):
        parts.append(f"Then {rng.choice(NAMES)} gives {who} twice as many {rng.choice(ITEMS)}, "
                     f"and {rng.integers(2, 90)} more each day.")
    return " ".join(parts) + f" How many {rng.choice(ITEMS)} does {who} have?"


def _rows(n: int, seed: int, sources: tuple[str, ...] = ("f1", "f2", "f3")) -> tuple[list[OutcomeRow], np.ndarray]:
    """Both models succeed on 1-2 step problems; on long ones the strong model mostly does, the weak one
    mostly fails; a third model is scored too."""
    rng = np.random.default_rng(seed)
    rows, steps = [], rng.integers(1, 7, n)
    for i in range(n):
        hard = steps[i] >= 4
        ps, pw = (0.9, 0.2) if hard else (0.8, 0.8)
        out = {STRONG: Outcome(float(rng.random() < ps)), WEAK: Outcome(float(rng.random() < pw)),
               OTHER: Outcome(float(rng.random() < 0.5))}
        rows.append(OutcomeRow(f"{seed}-{i}", sources[i % len(sources)], _question(rng, int(steps[i])), {}, out))
    return rows, steps >= 4


def _blind_main(rows: list[OutcomeRow]):
    """A main model that predicts every candidate's mean score everywhere (no prompt signal at all)."""
    means = {k: float(np.mean([r.outcomes[k].score for r in rows])) for k in (STRONG, WEAK, OTHER)}
    return lambda idx: {k: np.full(len(idx), v) for k, v in means.items()}


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = score[positive], score[~positive]
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def test_question_text_strips_templates_and_caps_length() -> None:
    ze = "Answer the question.\n## Question: Sam has 3 cats. How many legs?\n## Instruction\nThink step by step."
    assert question_text(ze) == "Sam has 3 cats. How many legs?"
    few = "Q: 1+1?\nAnswer: B\n\nQ: 2+2?\nAnswer: C\n\nWhat is 3+3?"
    assert question_text(few) == "What is 3+3?"
    long = "word " * 1000  # 5,000 characters
    assert len(question_text(long)) == MAX_QUESTION_CHARS
    # text past the cap changes nothing
    np.testing.assert_array_equal(step_features(long), step_features(long + " 7 apples and 9 pears"))


def test_step_features_count_the_question() -> None:
    f = dict(zip(STEP_NAMES, np.expm1(step_features(
        "Tom has 3 apples and twice as many pears. If he sells 2 each day, how many are left?")), strict=True))
    assert f["q_numbers"] == pytest.approx(2)
    assert f["q_numwords"] == pytest.approx(1)  # twice
    assert f["q_sentences"] == pytest.approx(2)
    assert f["q_conds"] == pytest.approx(1)  # if
    assert f["q_asks"] == pytest.approx(1)  # how many
    assert f["q_relations"] >= 3  # twice, each, left (+ "as many")
    assert step_features("").shape == (len(STEP_NAMES),)


def test_cdf_and_inverse_are_monotone_inverses_with_linear_tails() -> None:
    q = strictly_increasing(np.quantile(np.random.default_rng(0).normal(size=500), np.linspace(0, 1, 101)))
    x = np.linspace(-6, 6, 301)
    y = cdf(x, q)
    assert np.all(np.diff(y) > 0)  # strictly increasing, also beyond the stored quantiles
    np.testing.assert_allclose(inverse_cdf(y, q), x, atol=1e-9)
    assert cdf(np.array([q[0], q[-1]]), q) == pytest.approx([0.0, 1.0])


def test_gain_learned_from_step_counts() -> None:
    """The main model is blind (constant predictions); the pair's blended gain ranks the long, many-step
    problems (where the strong model wins) first. Without the component the two-model score is flat."""
    rows, _ = _rows(900, 0)
    model = PairGainModel(config=StepsConfig(min_rows=100)).fit(rows, _blind_main(rows))
    pg = model.pair([WEAK, STRONG])
    assert pg is not None and (pg.strong, pg.weak) == (STRONG, WEAK)
    assert pg.weights[STEP_NAMES.index("q_sentences")] > 0
    test, hard = _rows(400, 1)
    texts = [r.prompt for r in test]
    base = {k: v for k, v in _blind_main(rows)(np.arange(len(test))).items()}
    plain = two_model_score(base[STRONG], base[WEAK])
    assert _auc(plain, hard) == pytest.approx(0.5)
    out = model.blend(base, texts, {STRONG, WEAK})
    assert _auc(two_model_score(out[STRONG], out[WEAK]), hard) > 0.9
    np.testing.assert_array_equal(out[WEAK], base[WEAK])
    assert np.all((out[STRONG] >= 0) & (out[STRONG] <= 1))


def test_pairs_need_three_files() -> None:
    rows, _ = _rows(300, 0, sources=("f1", "f2"))
    assert PairGainModel(config=StepsConfig(min_rows=100)).qualifying_pairs(rows) == []
    rows3, _ = _rows(300, 0)
    assert tuple(sorted((STRONG, WEAK))) in PairGainModel(config=StepsConfig(min_rows=100)).qualifying_pairs(rows3)
    assert PairGainModel(config=StepsConfig(min_rows=1000)).qualifying_pairs(rows3) == []


def test_blend_leaves_other_candidate_sets_unchanged() -> None:
    rows, _ = _rows(600, 0)
    model = PairGainModel(config=StepsConfig(min_rows=100)).fit(rows, _blind_main(rows))
    test, _ = _rows(50, 2)
    texts = [r.prompt for r in test]
    rng = np.random.default_rng(3)
    base = {k: rng.random(len(test)) for k in (STRONG, WEAK, OTHER)}
    for only in (None, {STRONG, WEAK, OTHER}, {STRONG}, {STRONG, "unknown-model"}):
        assert model.blend(base, texts, only) is base
    assert model.blend(base, None, {STRONG, WEAK}) is base  # no texts: no step counts
    out = model.blend(base, texts, [STRONG, WEAK])
    assert not np.allclose(out[STRONG], base[STRONG])
    np.testing.assert_array_equal(out[OTHER], base[OTHER])


def test_save_load_round_trip(tmp_path: Path) -> None:
    rows, _ = _rows(600, 0)
    model = PairGainModel(config=StepsConfig(min_rows=100)).fit(rows, _blind_main(rows))
    model.save(tmp_path)
    loaded = PairGainModel.load(tmp_path)
    assert loaded is not None and len(loaded.pairs) == len(model.pairs) and loaded.config == model.config
    test, _ = _rows(80, 4)
    texts = [r.prompt for r in test]
    base = {k: np.random.default_rng(5).random(len(test)) for k in (STRONG, WEAK, OTHER)}
    a, b = model.blend(base, texts, {STRONG, WEAK}), loaded.blend(base, texts, {STRONG, WEAK})
    for k in base:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-12)
    assert PairGainModel.load(tmp_path / "nothing-here") is None


def test_blend_only_touches_active_prompts() -> None:
    rows, _ = _rows(600, 0)
    model = PairGainModel(config=StepsConfig(min_rows=100)).fit(rows, _blind_main(rows))
    test, _ = _rows(40, 6)
    texts = [r.prompt for r in test]
    base = {k: np.random.default_rng(7).random(len(test)) for k in (STRONG, WEAK, OTHER)}
    active = np.arange(len(test)) % 2 == 0
    full, part = model.blend(base, texts, {STRONG, WEAK}), model.blend(base, texts, {STRONG, WEAK}, active)
    np.testing.assert_array_equal(part[STRONG][active], full[STRONG][active])
    np.testing.assert_array_equal(part[STRONG][~active], base[STRONG][~active])
    assert model.blend(base, texts, {STRONG, WEAK}, np.zeros(len(test), bool)) is base


def test_one_prompt_path_equals_the_vectorised_one() -> None:
    rows, _ = _rows(600, 0)
    pg = PairGainModel(config=StepsConfig(min_rows=100)).fit(rows, _blind_main(rows)).pair([STRONG, WEAK])
    test, _ = _rows(200, 9)
    F = np.vstack([step_features(r.prompt) for r in test])
    rng = np.random.default_rng(10)
    router_gain = np.concatenate([rng.uniform(-0.5, 0.5, 190), [-3.0, 3.0, pg.router_quantiles[0], 0, 0, 0, 0, 0, 0, 0]])
    F[-3:] *= 40  # beyond the stored gain quantiles
    many = pg.blended_gain(router_gain, F)
    one = np.array([pg.blended_gain(router_gain[i:i + 1], F[i:i + 1])[0] for i in range(len(F))])
    np.testing.assert_allclose(one, many, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------- inside QualityModel

def test_quality_model_fits_blends_pairs_only_and_round_trips(tmp_path: Path) -> None:
    from tiergate.routing.quality import FitConfig, QualityModel

    rows, _ = _rows(900, 0)
    model = QualityModel(config=FitConfig(steps=60, rank=4, difficulty=False, neighbours=False))
    model.pair_gain_config = StepsConfig(min_rows=100)
    model.fit(rows)
    pgm = model.pair_gain_model
    assert pgm is not None and pgm.pair([STRONG, WEAK]) is not None
    test, _ = _rows(60, 8)
    texts = [r.prompt for r in test]
    X = model.features(texts)
    plain = model.predict_features(X, texts)
    for only in (None, {STRONG, WEAK, OTHER}, {STRONG}):
        other = model.predict_features(X, texts, only=only)
        for k in plain:
            np.testing.assert_array_equal(other[k], plain[k])
    pair = model.predict_features(X, texts, only={STRONG, WEAK})
    assert not np.allclose(pair[STRONG], plain[STRONG])
    np.testing.assert_array_equal(pair[WEAK], plain[WEAK])
    np.testing.assert_array_equal(pair[OTHER], plain[OTHER])
    model.save(tmp_path)
    assert (tmp_path / "steps.json").exists()
    loaded = QualityModel.load(tmp_path)
    assert loaded.pair_gain_model is not None and loaded.pair_gain_config == model.pair_gain_config
    again = loaded.predict_features(X, texts, only={STRONG, WEAK})
    np.testing.assert_allclose(again[STRONG], pair[STRONG], atol=0.02)  # (the main model's W is saved as float16)
    off = QualityModel(config=FitConfig(steps=60, rank=4, difficulty=False, neighbours=False, pair_gain=False))
    off.fit(rows).save(tmp_path)
    assert not (tmp_path / "steps.json").exists() and QualityModel.load(tmp_path).pair_gain_model is None
