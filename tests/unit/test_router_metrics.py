"""Router metrics: RouteLLM's definitions on hand-computed examples and on the README's random-router
figures, and the many-candidate cost/quality metrics."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from tiergate.routing import metrics as M
from tiergate.routing.data import (
    Outcome,
    OutcomeDataError,
    OutcomeRow,
    estimate_cost_usd,
    find_data_dir,
    load_outcomes,
    outcome_matrix,
    reasoning_tokens,
)

STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"


def _data_dir() -> Path | None:
    try:
        d = find_data_dir()
    except OutcomeDataError:
        return None
    return d if (d / "routellm-gsm8k.jsonl.gz").exists() else None


# --------------------------------------------------------------------------- two models, by hand


def test_edges_are_qcut_quantiles_with_linear_interpolation():
    s = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert M.threshold_edges(s).tolist() == pytest.approx(list(range(11)))
    # 4 values: quantile q sits at position q*(n-1) between sorted values
    s = np.array([0.4, 0.1, 0.3, 0.2])
    edges = M.threshold_edges(s)
    assert edges[0] == pytest.approx(0.1) and edges[-1] == pytest.approx(0.4)
    assert edges[5] == pytest.approx(0.25)  # 50%: halfway between 0.2 and 0.3
    assert edges[1] == pytest.approx(0.13)  # 10%: position 0.3 -> 0.1 + 0.3*0.1


def test_sweep_uses_ge_then_gt_at_the_maximum():
    s = np.array([0.1, 0.2, 0.3, 0.4])
    strong = np.array([1.0, 1.0, 1.0, 1.0])
    weak = np.array([0.0, 0.0, 0.0, 0.0])
    c, r = M.sweep(s, strong, weak)
    assert c[0] == 100.0  # s >= min: everything strong
    assert c[-1] == 0.0  # s > max: nothing strong
    assert c[-2] == pytest.approx(25.0)  # 90% edge = 0.37: only 0.4 qualifies
    assert np.allclose(r, c / 100.0)


def test_apgr_auc_cpt_on_a_hand_computed_curve():
    # points (c%, r): (0, 0.5), (50, 0.9), (100, 1.0); r_weak 0.5, r_strong 1.0
    curve = M.TwoModelCurve(np.array([0.0, 50.0, 100.0]), np.array([0.5, 0.9, 1.0]), 1.0, 0.5)
    # trapezoid: 0.5*(0.5+0.9)/2 + 0.5*(0.9+1.0)/2 = 0.35 + 0.475
    assert M.auc(curve) == pytest.approx(0.825)
    assert M.apgr(curve) == pytest.approx((0.825 - 0.5) / 0.5)
    # PGR 50% -> r = 0.75: 5/8 of the way from 0.5 to 0.9 -> c = 31.25
    assert M.cpt(curve, 0.5) == pytest.approx(31.25)
    assert M.cpt(curve, 0.8) == pytest.approx(50.0)  # r = 0.9 exactly at c = 50
    assert M.cpt(curve, 0.2) == pytest.approx(12.5)  # r = 0.6: 1/4 of the way to 50
    assert M.pgr(curve).tolist() == pytest.approx([0.0, 0.8, 1.0])


def test_perfect_router_beats_random_and_inverted_router_loses():
    rng = np.random.default_rng(1)
    strong = (rng.random(500) < 0.8).astype(float)
    weak = (rng.random(500) < 0.5).astype(float)
    gain = strong - weak
    good = M.router_curve(gain + rng.random(500) * 1e-6, strong, weak)
    bad = M.router_curve(-gain + rng.random(500) * 1e-6, strong, weak)
    rnd = M.random_router_curve(strong, weak)
    assert M.apgr(good) > 0.8 > M.apgr(rnd) > M.apgr(bad)
    assert M.cpt(good, 0.5) < M.cpt(rnd, 0.5) < M.cpt(bad, 0.5)


def test_random_router_matches_routellm_procedure():
    """10 draws of random.uniform after random.seed(0), averaged per strong-call percentage."""
    strong = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0], dtype=float)
    weak = np.array([0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0], dtype=float)
    random.seed(0)
    pts: dict[float, list[float]] = {}
    for _ in range(10):
        s = np.array([random.uniform(0, 1) for _ in strong])
        edges = np.quantile(s, np.linspace(0, 1, 11))
        for i, t in enumerate(edges):
            sel = s >= t if i < 10 else s > t
            pts.setdefault(sel.mean() * 100, []).append(np.where(sel, strong, weak).mean())
    curve = M.random_router_curve(strong, weak)
    assert curve.c.tolist() == sorted(pts)
    assert curve.r.tolist() == pytest.approx([np.mean(pts[c]) for c in sorted(pts)])


# ------------------------------------------------------------------ the README's published figures


@pytest.mark.parametrize(
    ("name", "n", "apgr", "cpt50", "cpt80"),
    [("routellm-gsm8k", 1307, 0.507, 48.8, 80.2), ("routellm-mmlu", 14037, 0.497, 50.3, 80.3)],
)
def test_random_router_reproduces_readme_figures(name, n, apgr, cpt50, cpt80):
    d = _data_dir()
    if d is None:
        pytest.skip("shared/data not available (set TIERGATE_DATA_DIR)")
    rows = [r for r in load_outcomes(d / f"{name}.jsonl.gz") if not r.meta.get("routellm_contaminated")]
    assert len(rows) == n
    strong = np.array([r.outcomes[STRONG].score for r in rows])
    weak = np.array([r.outcomes[WEAK].score for r in rows])
    curve = M.random_router_curve(strong, weak)
    assert round(M.apgr(curve), 3) == apgr
    assert round(M.cpt(curve, 0.5), 1) == cpt50
    assert round(M.cpt(curve, 0.8), 1) == cpt80


# -------------------------------------------------------------------------------- many candidates


def test_many_candidate_points_oracle_pareto_and_cost_at_quality():
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    costs = np.array([[1.0, 2.0, 4.0]] * 4)
    cands = ["a", "b", "c"]
    singles = M.single_points(cands, scores, costs)
    assert [(p.label, p.score, p.cost_usd) for p in singles] == [("a", 0.5, 1.0), ("b", 0.75, 2.0), ("c", 0.75, 4.0)]
    best = M.best_single(cands, scores, costs)
    assert best.label == "b"  # tie with c on score, b is cheaper
    oc = M.oracle_choice(scores, costs)
    assert oc.tolist() == [0, 1, 2, 0]
    op = M.routed_point(oc, scores, costs)
    assert op.score == 1.0 and op.cost_usd == pytest.approx((1 + 2 + 4 + 1) / 4)
    rp = M.random_point(scores, costs)
    assert rp.score == pytest.approx(2 / 3) and rp.cost_usd == pytest.approx(7 / 3)
    pts = [M.Point(1.0, 0.5), M.Point(1.5, 0.7), M.Point(1.2, 0.4), M.Point(3.0, 0.76), M.Point(2.5, 0.7)]
    assert [(p.cost_usd, p.score) for p in M.pareto(pts)] == [(1.0, 0.5), (1.5, 0.7), (3.0, 0.76)]
    table = M.cost_at_quality_table(M.pareto(pts), best)
    assert set(table) == {"0.95", "0.98", "1.0"}
    assert table["0.95"]["cost_usd"] == 3.0  # 0.95*0.75 = 0.7125 > 0.7
    assert table["0.95"]["fraction_of_best_single"] == pytest.approx(1.5)
    assert table["1.0"]["cost_usd"] == 3.0
    assert M.cost_at_quality(pts, 0.9) is None


# ---------------------------------------------------------------------------------- data and costs


def test_cost_model_follows_readme_section_4():
    assert reasoning_tokens("o1@high") == 10_000
    assert reasoning_tokens("o3-mini@low") == 1_500
    assert reasoning_tokens("o4-mini@medium") == 4_000
    assert reasoning_tokens("o1-mini") == 4_000
    assert reasoning_tokens("claude-3-7-sonnet-20250219@thinking") == 4_000
    assert reasoning_tokens("o1") == 4_000  # no suffix: medium
    assert reasoning_tokens("gpt-4o-mini") == 0
    # o1@high, 500 prompt tokens at $15/$60: (500*15 + 10600*60)/1e6
    assert estimate_cost_usd("o1@high", 500, (15.0, 60.0)) == pytest.approx(0.6435)
    assert estimate_cost_usd("gpt-4o-mini", 1000, None) is None


def test_livecodebench_costs_match_the_recorded_estimates():
    """Our cost model with the catalogue's prices gives the README's per-row `cost_usd`."""
    d = _data_dir()
    if d is None:
        pytest.skip("shared/data not available")
    rows = load_outcomes(d / "livecodebench-o1-dev.jsonl.gz")[:50]
    cands = ["o1@high", "o1@low", "gpt-4o-mini", "gpt-4o-2024-08-06", "o1-mini"]
    mat = outcome_matrix(rows, cands)
    recorded = np.array([[r.outcomes[c].cost_usd for c in cands] for r in rows])
    assert np.allclose(mat.est_costs, recorded, rtol=1e-6)


def _write(path: Path, lines: list[str], gz: bool) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_load_outcomes_reads_prompt_and_messages_rows(tmp_path, gz):
    p = _write(tmp_path / ("a.jsonl.gz" if gz else "a.jsonl"), [
        json.dumps({"id": "x-1", "source": "x", "prompt": "hi", "meta": {"k": 1},
                    "outcomes": {"m": {"score": 1, "cost_usd": 0.5}}}),
        "",
        json.dumps({"id": "x-2", "source": "x", "messages": [{"role": "user", "content": "turn one"},
                                                             {"role": "user", "content": "turn two"}],
                    "outcomes": {"m": {"score": 0.25, "turn_scores": [0.2, 0.3]}}}),
    ], gz)
    rows = load_outcomes([p])
    assert rows[0] == OutcomeRow("x-1", "x", "hi", {"k": 1}, {"m": Outcome(1.0, 0.5)})
    assert rows[1].prompt == "turn one" and len(rows[1].messages) == 2
    assert rows[1].outcomes["m"] == Outcome(0.25, None)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('{"id": "a", "source": "s", "outcomes": {"m": {"score": 1}}}', "needs `prompt`"),
        ('{"id": "a", "source": "s", "prompt": "p", "outcomes": {"m": {"score": 1.5}}}', "in [0, 1]"),
        ('{"id": "a", "source": "s", "prompt": "p", "outcomes": {"m": {"score": 1, "cost_usd": -1}}}', ">= 0"),
        ('{"id": "a", "source": "s", "prompt": "p"}', "missing field 'outcomes'"),
    ],
)
def test_load_outcomes_names_file_and_line_of_a_bad_row(tmp_path, line, fragment):
    good = json.dumps({"id": "g", "source": "s", "prompt": "p", "outcomes": {"m": {"score": 1}}})
    p = _write(tmp_path / "bad.jsonl", [good, line], gz=False)
    with pytest.raises(OutcomeDataError) as e:
        load_outcomes(p)
    assert f"{p}:2:" in str(e.value) and fragment in str(e.value)


def test_duplicate_ids_across_files_are_refused(tmp_path):
    row = json.dumps({"id": "same", "source": "s", "prompt": "p", "outcomes": {"m": {"score": 1}}})
    a = _write(tmp_path / "a.jsonl", [row], gz=False)
    b = _write(tmp_path / "b.jsonl", [row], gz=False)
    with pytest.raises(OutcomeDataError, match="duplicate id 'same'"):
        load_outcomes([a, b])
