"""Evaluation protocols: folds and leave-one-benchmark-out never share a prompt between training and
scoring, and the pipeline turns predictions into the metrics the CLI prints."""

from __future__ import annotations

import numpy as np
import pytest

from tiergate.routing import evaluate as E
from tiergate.routing.data import Outcome, OutcomeRow


def _row(i: int, source: str, prompt: str, scores: dict[str, float], costs: dict[str, float] | None = None,
         **meta) -> OutcomeRow:
    costs = costs or {}
    return OutcomeRow(f"{source}-{i}", source, prompt, dict(meta),
                      {m: Outcome(s, costs.get(m)) for m, s in scores.items()})


def _words(i: int, tag: str) -> str:
    return f"{tag} question number {i} " + " ".join(f"{tag}{i}w{j}" for j in range(14))


def test_kfold_never_puts_the_same_prompt_in_train_and_test():
    rows = [_row(i, "bench", _words(i % 40, "q"), {"a": 1.0}) for i in range(100)]  # 40 distinct, repeated
    rows.append(_row(100, "bench", "  " + _words(3, "q").upper() + "\n", {"a": 0}))  # same text, other case
    folds = E.kfold_splits(rows, k=5, seed=0)
    assert len(folds) == 5
    seen_test = np.concatenate([t for _, t in folds])
    assert sorted(seen_test.tolist()) == list(range(len(rows)))  # every row scored exactly once
    for train, test in folds:
        train_p = {E.normalise(rows[i].prompt) for i in train}
        test_p = {E.normalise(rows[i].prompt) for i in test}
        assert not train_p & test_p
        assert set(train.tolist()).isdisjoint(test.tolist())


def test_kfold_is_deterministic_for_a_seed_and_changes_with_it():
    rows = [_row(i, "b", f"prompt {i}", {"a": 1.0}) for i in range(50)]
    a = E.kfold_splits(rows, 5, seed=0)
    b = E.kfold_splits(rows, 5, seed=0)
    c = E.kfold_splits(rows, 5, seed=1)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c, strict=True))


def test_prompt_families_are_declared_for_gsm8k_and_livecodebench():
    assert E.family_of("routellm-gsm8k") == E.family_of("zeroeval-gsm") == "gsm8k"
    assert E.family_of("livecodebench-o1") == E.family_of("livecodebench-o3o4-heldout") == "livecodebench"
    assert E.family_of("some-new-file") == "some-new-file"


def test_lobo_leaves_out_the_family_and_any_training_row_sharing_a_passage():
    test_rows = [_row(i, "routellm-gsm8k", _words(i, "gsm"), {"a": 1.0}) for i in range(60)]
    pool = [
        *test_rows,
        *[_row(i, "zeroeval-gsm", "## Question: " + _words(i, "gsm") + " ## Instruction ...", {"a": 1.0})
          for i in range(60)],
        *[_row(i, "routerbench-arc-c", _words(i, "arc"), {"a": 0.0}) for i in range(30)],
        # a task mix that copied two GSM8K questions inside longer prompts
        _row(0, "llmrouter-dcrouter", "Solve this: " + _words(5, "gsm") + " Think step by step.", {"a": 1.0}),
        _row(1, "llmrouter-dcrouter", "Solve this: " + _words(17, "gsm"), {"a": 1.0}),
        _row(2, "llmrouter-dcrouter", "An unrelated puzzle about zebras and houses " * 3, {"a": 1.0}),
    ]
    train, info = E.lobo_training_rows(test_rows, pool)
    sources = {r.source for r in train}
    assert sources == {"routerbench-arc-c", "llmrouter-dcrouter"}
    assert info["excluded_sources"] == ["routellm-gsm8k", "zeroeval-gsm"]
    assert info["dropped_shared_prompts"] == {"llmrouter-dcrouter": 2}
    test_words = {E.normalise(r.prompt) for r in test_rows}
    for r in train:
        assert not any(t in E.normalise(r.prompt) for t in test_words)


def test_template_passages_do_not_count_as_shared_prompts():
    template = "please answer this question by first reasoning and then providing your answer in json"
    test_rows = [_row(i, "t", f"{template} {_words(i, 'x')}", {"a": 1.0}) for i in range(100)]
    other = [_row(0, "o", f"{template} something else entirely about cooking pasta tonight", {"a": 1.0})]
    assert E.shared_prompt_mask(other, test_rows).tolist() == [False]


def _two_model_rows(n: int = 200) -> list[OutcomeRow]:
    """Prompts saying 'hard' are solved only by the strong model; the rest by both."""
    rows = []
    for i in range(n):
        hard = i % 3 == 0
        rows.append(_row(i, "synthetic", ("hard " if hard else "easy ") + _words(i, "p"),
                         {"strong": 1.0, "weak": 0.0 if hard else 1.0},
                         {"strong": 0.01, "weak": 0.001}))
    return rows


class _OracleOnText(E.MeanScoreBaseline):
    """Test double with a real signal: knows that 'hard' prompts need the strong model."""

    def predict(self, prompts):
        hard = np.array([p.startswith("hard") for p in prompts], dtype=float)
        return {"strong": np.full(len(prompts), 0.9), "weak": 0.95 - 0.9 * hard}


def test_pipeline_two_candidates_reports_every_required_key():
    rows = _two_model_rows()
    mat, notes = E.select_candidates(rows, None, lambda _m: None, lambda t: len(t.split()))
    assert notes == [] and mat.candidates == ["strong", "weak"]
    pred = np.column_stack([_OracleOnText().predict([r.prompt for r in rows])[c] for c in mat.candidates])
    ev = E.score_predictions(mat, pred)
    s = ev.summary
    assert s["n"] == 200 and s["candidates"] == ["strong", "weak"]
    assert s["best_single"] == {"candidate": "strong", "score": 1.0, "cost_usd": pytest.approx(0.01)}
    assert set(s["router"]) >= {"score", "cost_usd"}
    assert set(s["cost_at_quality"]) == {"0.95", "0.98", "1.0"}
    # the perfect signal reaches 100% of the strong model's score while calling it on 1/3 of prompts
    full = s["cost_at_quality"]["1.0"]
    assert full["cost_usd"] == pytest.approx((67 * 0.01 + 133 * 0.001) / 200)
    assert full["fraction_of_best_single"] == pytest.approx(full["cost_usd"] / 0.01)
    tm = s["two_model"]
    assert tm["strong"] == "strong" and tm["weak"] == "weak"
    assert set(tm["cpt"]) == {"20", "50", "80"}
    assert tm["apgr"] > 0.8  # two distinct s values only: coarse qcut bins
    assert tm["random"]["apgr"] < 0.6
    assert tm["cpt"]["80"] < 40.0  # % of calls to the strong model
    assert s["oracle"]["score"] == 1.0


def test_kfold_with_the_mean_baseline_and_json_roundtrip():
    import orjson

    rows = [_row(i, "synthetic", _words(i, "m"), {"a": float(i % 2), "b": 1.0, "c": float(i % 3 == 0)},
                 {"a": 0.001, "b": 0.01, "c": 0.0001}) for i in range(120)]
    ev = E.evaluate(rows, protocol="kfold", model_kind="mean-baseline", k=4, prices=lambda _m: None)
    s = orjson.loads(E.to_json(ev.summary))
    assert s["protocol"] == "kfold" and s["protocol_info"]["folds"] == 4
    assert s["best_single"]["candidate"] == "b"
    assert "two_model" not in s
    # a prompt-blind baseline cannot beat always-b at b's quality for less
    assert s["cost_at_quality"]["1.0"]["fraction_of_best_single"] == pytest.approx(1.0)


def test_lobo_refuses_candidates_with_no_training_rows():
    rows = _two_model_rows(30)
    pool = [*rows, _row(0, "other", "x " * 20, {"strong": 1.0})]
    with pytest.raises(E.EvaluationError, match="no training rows for weak"):
        E.evaluate(rows, protocol="lobo", model_kind="mean-baseline", pool=pool, prices=lambda _m: None)


def test_unpriced_candidates_are_refused_when_named_and_dropped_by_default():
    rows = [_row(i, "s", f"p {i}", {"a": 1.0, "b": 0.5, "c": 0.2}, {"a": 0.01, "b": 0.001}) for i in range(20)]
    with pytest.raises(E.EvaluationError, match="no price for c"):
        E.select_candidates(rows, ["a", "b", "c"], lambda _m: None, None)
    mat, dropped = E.select_candidates(rows, None, lambda _m: None, None)
    assert mat.candidates == ["a", "b"] and dropped == ["c"]


def test_learned_model_runs_through_kfold_on_synthetic_rows():
    pytest.importorskip("tiergate.routing.quality")
    rows = _two_model_rows(120)
    ev = E.evaluate(rows, protocol="kfold", k=3, prices=lambda _m: None)
    assert ev.predictions.shape == (120, 2)
    assert np.isfinite(ev.predictions).all()
    assert ev.summary["two_model"]["apgr"] > ev.summary["two_model"]["random"]["apgr"]


def test_kfold_with_other_files_never_trains_on_a_test_prompt(monkeypatch):
    """The other snapshot of the same problems may train, but never on the fold being scored."""
    seen: list[tuple[set[str], set[str]]] = []

    class Recorder(E.MeanScoreBaseline):
        def fit(self, rows, candidates=None, progress=False):
            seen.append(({E.normalise(r.prompt) for r in rows}, set()))
            return super().fit(rows, ["strong", "weak"])

        def predict(self, prompts):
            seen[-1][1].update(E.normalise(p) for p in prompts)
            return super().predict(prompts)

    monkeypatch.setattr(E, "model_class", lambda kind="learned": Recorder)
    rows = _two_model_rows(60)
    twin = [_row(i, "synthetic-twin", "Problem: " + r.prompt, {"strong": 1.0, "weak": 0.0}) for i, r in enumerate(rows)]
    other = [_row(i, "other", _words(i, "zz"), {"strong": 1.0, "weak": 1.0}) for i in range(20)]
    mat, _ = E.select_candidates(rows, None, lambda _m: None, None)
    pred, info = E.out_of_fold_predictions(mat, "kfold", k=4, pool=[*rows, *twin, *other], extra_benchmarks=True)
    assert pred.shape == (60, 2) and len(seen) == 4
    assert info["extra_rows_per_fold"] == [20 + 45] * 4  # all of `other`, the twin rows of the 3 training folds
    for trained, scored in seen:
        assert scored and not any(t in p for t in scored for p in trained)


def test_kfold_trains_on_the_other_dev_files_by_default_only_for_dev_rows():
    dev = [_row(i, "routellm-mmlu", _words(i, "q"), {"a": 1.0, "b": 0.0}) for i in range(3)]
    assert E.default_extra_benchmarks(dev)
    assert not E.default_extra_benchmarks(_two_model_rows(6))
    assert not E.default_extra_benchmarks([*dev, *_two_model_rows(3)])


def test_the_learned_model_is_fitted_on_every_candidate_not_only_the_evaluated_ones(monkeypatch):
    seen: list = []

    class Spy(E.MeanScoreBaseline):
        def fit(self, rows, candidates=None, progress=False):
            seen.append(candidates)
            return super().fit(rows, candidates, progress)

    monkeypatch.setattr(E, "model_class", lambda kind="learned": Spy)
    rows = _two_model_rows(40)
    other = [_row(i, "routerbench-arc-c", _words(i, "z"), {"strong": 1.0, "weak": 0.5, "third": 0.2})
             for i in range(20)]
    mat, _ = E.select_candidates(rows, ["strong", "weak"], lambda _m: None, None)
    E.out_of_fold_predictions(mat, "lobo", pool=[*rows, *other])
    E.out_of_fold_predictions(mat, "kfold", k=4, pool=[*rows, *other])
    assert seen and all(c is None for c in seen)
    seen.clear()
    E.out_of_fold_predictions(mat, "lobo", model_kind="mean-baseline", pool=[*rows, *other])
    assert seen == [["strong", "weak"]]


def test_kfold_keeps_same_family_rows_of_other_folds_even_when_they_share_boilerplate():
    """livecodebench-o3o4 has livecodebench-o1's prompts: a twin of a test prompt is out, the rest stay in
    (a passage rule would drop them for sharing boilerplate with a few test prompts); other benchmarks
    sharing a passage with a test prompt are still out."""
    boiler = "Print the answer on a single line and nothing else please thanks"
    rows = [_row(i, "livecodebench-o1", f"{_words(i, 'p')} {boiler if i % 10 == 0 else ''}",
                 {"a": 1.0, "b": 0.0}) for i in range(100)]
    sib = [_row(i, "livecodebench-o3o4", r.prompt, {"a": 1.0, "b": 0.0}) for i, r in enumerate(rows)]
    other = [_row(0, "zeroeval-crux", f"{boiler} {_words(0, 'x')}", {"a": 1.0, "b": 1.0})]
    test = rows[:20]
    keep = E._extra_keep([*sib, *other], np.array([True] * 100 + [False]), test)
    assert not keep[:20].any() and keep[20:100].all()
    assert not keep[100]  # shares the passage with test prompts 0 and 10
