"""Latent-difficulty component (routing.difficulty): Rasch fit, soft logistic link, file selection,
blending into the quality model, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tiergate.routing.data import Outcome, OutcomeRow
from tiergate.routing.difficulty import DifficultyConfig, DifficultyModel, fit_component, rasch, soft_logistic
from tiergate.routing.quality import FitConfig, QualityModel

CANDS = [f"m{j}" for j in range(10)]
ABILITY = np.linspace(-2.0, 2.0, len(CANDS))
WORDS = ["array", "query", "interval", "graph", "modulo", "subsequence", "permutation", "tree", "string", "matrix"]


def _prompt(i: int, level: int) -> str:
    head = f"Problem {i}: given an {WORDS[i % 10]} of n integers, answer the {WORDS[(i + 3) % 10]} queries."
    body = " ".join(f"Constraint {k}: 1 <= a_{k} <= 10^{k + 3}, and the sum over tests is bounded by {7 * k + i}."
                    for k in range(3 * level))
    code = "\nclass Solution:\n    def solve(self, nums):\n        pass" if i % 2 else "\nRead the input from stdin."
    return f"{head} {body}{code}"


def _rows(n: int = 240, source: str = "dense", cands: list[str] = CANDS) -> list[OutcomeRow]:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        level = i % 5
        d = level - 2.0
        outcomes = {}
        for j, k in enumerate(cands):
            p = 1 / (1 + np.exp(-(ABILITY[j % len(ABILITY)] - d) * 2))
            outcomes[k] = Outcome(float(rng.random() < p))
        rows.append(OutcomeRow(f"{source}-{i}", source, _prompt(i, level), {}, outcomes))
    return rows


@pytest.fixture(scope="module")
def extractor_model() -> QualityModel:
    return QualityModel()


def _dense(model: QualityModel, rows: list[OutcomeRow]) -> np.ndarray:
    return model.features([r.prompt for r in rows])


def test_rasch_recovers_difficulty_order() -> None:
    rng = np.random.default_rng(0)
    d_true = rng.normal(size=300)
    theta = rng.normal(size=12)
    Y = (rng.random((300, 12)) < 1 / (1 + np.exp(-(theta[None] - d_true[:, None])))).astype(float)
    seen = rng.random((300, 12)) < 0.95
    d = rasch(Y, seen)
    assert np.corrcoef(d, d_true)[0, 1] > 0.75
    assert np.corrcoef(rasch(Y, np.ones_like(seen))[:, None].ravel(), d)[0, 1] > 0.9


def test_soft_logistic_matches_sklearn_on_soft_labels() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 3))
    y = np.clip(1 / (1 + np.exp(-(X @ [1.5, -1.0, 0.3] + 0.2))) + rng.normal(0, 0.05, 400), 0, 1)
    w = soft_logistic(X, y, C=10.0)
    lr = LogisticRegression(C=10.0).fit(np.vstack([X, X]), np.r_[np.ones(400), np.zeros(400)],
                                        sample_weight=np.r_[y, 1 - y] + 1e-9)
    np.testing.assert_allclose(w[1:], lr.coef_[0], atol=2e-3)
    np.testing.assert_allclose(w[0], lr.intercept_[0], atol=2e-3)


def test_component_learns_harder_prompts_and_stronger_candidates(extractor_model: QualityModel) -> None:
    rows = _rows()
    comp = fit_component("dense", rows, _dense(extractor_model, rows)[:, :extractor_model.extractor.n_dense])
    assert comp is not None and comp.candidates == CANDS and comp.skill > 0.5
    test = [_prompt(1001, 0), _prompt(1001, 4)]
    P = comp.predict(_dense(extractor_model, [OutcomeRow("t", "x", t, {}, {}) for t in test]))
    assert P.shape == (2, len(CANDS))
    assert P[1].mean() < P[0].mean() - 0.2  # the long, heavily constrained prompt is harder
    assert P[0, -1] > P[0, 0] and P[1, -1] > P[1, 0]  # the strongest candidate beats the weakest


def test_sparse_or_small_files_get_no_component(extractor_model: QualityModel) -> None:
    few = _rows(cands=CANDS[:4])
    assert fit_component("few", few, _dense(extractor_model, few)) is None
    small = _rows(n=100)
    assert fit_component("small", small, _dense(extractor_model, small)) is None
    sparse = [OutcomeRow(r.id, r.source, r.prompt, r.meta,
                         {k: o for j, (k, o) in enumerate(r.outcomes.items()) if (i + j) % 3})
              for i, r in enumerate(_rows())]
    assert fit_component("sparse", sparse, _dense(extractor_model, sparse)) is None
    # difficulty that the prompt does not predict: the component is refused (skill gate)
    rng = np.random.default_rng(3)
    noise = [OutcomeRow(r.id, r.source, r.prompt, r.meta, {k: Outcome(float(rng.random() < 0.5)) for k in CANDS})
             for r in _rows()]
    assert fit_component("noise", noise, _dense(extractor_model, noise), DifficultyConfig(min_skill=0.3)) is None


def test_blend_gates_on_resemblance(extractor_model: QualityModel) -> None:
    rows = _rows()
    X = _dense(extractor_model, rows)
    dm = DifficultyModel().fit(rows, X[:, :extractor_model.extractor.n_dense])
    assert dm.sources == ["dense"]
    comp_pred = dm.predict(X[:3])[0]
    base = {"m0": np.full(3, 0.5), "other": np.full(3, 0.7)}
    none = dm.blend(base, X[:3], {"dense": np.zeros(3)})
    np.testing.assert_allclose(none["m0"], 0.5)
    full = dm.blend(base, X[:3], {"dense": np.ones(3)})
    np.testing.assert_allclose(full["m0"], comp_pred["m0"])
    half = dm.blend(base, X[:3], {"dense": np.full(3, 0.5)})
    np.testing.assert_allclose(half["m0"], 0.25 + 0.5 * comp_pred["m0"])
    assert "m1" not in full  # only the base model's candidates are returned
    # a prompt as typical of the file as its own prompts gets the component in full
    dm.components[0].typical_resemblance = 0.5
    np.testing.assert_allclose(dm.blend(base, X[:3], {"dense": np.full(3, 0.5)})["m0"], comp_pred["m0"])
    np.testing.assert_allclose(dm.blend(base, X[:3], {"dense": np.full(3, 0.25)})["m0"], half["m0"])
    np.testing.assert_allclose(full["other"], 0.7)


def test_quality_model_integration_and_persistence(tmp_path: Path) -> None:
    rows = _rows() + [OutcomeRow(f"o-{i}", "other", f"What is {i} plus {i + 1}?", {}, {"m0": Outcome(1.0)})
                      for i in range(80)]
    on = QualityModel(config=FitConfig(steps=60, rank=4)).fit(rows)
    off = QualityModel(config=FitConfig(steps=60, rank=4, difficulty=False)).fit(rows)
    assert on.difficulty_model is not None and on.difficulty_model.sources == ["dense"]
    assert 0.5 < on.difficulty_model.components[0].typical_resemblance <= 1.0
    assert off.difficulty_model is None
    prompts = [_prompt(2001, 0), _prompt(2001, 4), "What is 3 plus 4?"]
    p_on, p_off = on.predict(prompts), off.predict(prompts)
    assert not np.allclose(p_on["m5"], p_off["m5"])  # the dense file's prompts are blended
    # harder prompt -> lower predicted score for a mid-strength candidate
    assert p_on["m5"][1] < p_on["m5"][0]
    on.save(tmp_path)
    assert (tmp_path / "difficulty.npz").exists()
    loaded = QualityModel.load(tmp_path)
    assert loaded.difficulty_model is not None
    for k, v in loaded.predict(prompts).items():
        np.testing.assert_allclose(v, p_on[k], atol=2e-3)
    off_dir = tmp_path / "off"
    off.save(off_dir)
    assert not (off_dir / "difficulty.npz").exists() and QualityModel.load(off_dir).difficulty_model is None


def test_dated_rows_use_non_reasoning_links_at_the_latest_date(extractor_model: QualityModel) -> None:
    """A non-reasoning candidate that succeeds on old problems and fails on recent ones (memorised old ones)
    is predicted at its recent level; a reasoning candidate (`@effort`) keeps its all-dates link."""
    rng = np.random.default_rng(4)
    cands = [*CANDS[:8], "old-chat-model", "reasoner@high"]
    rows = []
    for i, r in enumerate(_rows(cands=cands)):
        day = np.datetime64("2023-05-01") + i * 2  # oldest first
        recent = i >= 120
        outcomes = dict(r.outcomes)
        outcomes["old-chat-model"] = Outcome(float(rng.random() < (0.2 if recent else 0.9)))
        outcomes["reasoner@high"] = Outcome(float(rng.random() < 0.7))
        rows.append(OutcomeRow(r.id, r.source, r.prompt, {"contest_date": str(day)}, outcomes))
    X = _dense(extractor_model, rows)[:, :extractor_model.extractor.n_dense]
    dated = fit_component("dated", rows, X)
    undated = fit_component("dated", rows, X, DifficultyConfig(date_slope_non_reasoning=False))
    assert dated is not None and undated is not None
    P, Q = dated.predict(X), undated.predict(X)
    old, reasoner = cands.index("old-chat-model"), cands.index("reasoner@high")
    assert Q[:, old].mean() > 0.45 and P[:, old].mean() < 0.35  # its recent level, not the all-dates mean
    np.testing.assert_allclose(P[:, reasoner], Q[:, reasoner])
    # candidates without a trend keep about their level (the slope follows only sampling noise)
    assert np.abs(P[:, :8].mean(0) - Q[:, :8].mean(0)).max() < 0.15
