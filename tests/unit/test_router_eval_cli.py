"""`tiergate router eval` on the defects an acceptance judge found: fixed-protocol candidates the learned model
has no outcome data for are scored as the serving router predicts them (profile, else default; `--profiles`),
and the report says which."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from tiergate.cli import main as cli_main
from tiergate.routing import evaluate as E
from tiergate.routing.data import load_outcomes
from tiergate.routing.profiles import Profiles
from tiergate.routing.quality import ARTIFACTS_DIR
from tiergate.routing.router import Router

pytestmark = pytest.mark.skipif(not (ARTIFACTS_DIR / "quality.npz").exists(), reason="router artefacts not trained")

NANO, GPT4 = "gpt-4.1-nano", "gpt-4-1106-preview"
PROMPTS = ["Prove there are infinitely many primes.", "What is the capital of France?",
           "Write a Python function that reverses a linked list.", "Solve 3x + 5 = 20 for x.",
           "Which gas do plants absorb from the air?", "Explain why the sky is blue in two sentences."]


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli_main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _nano_rows(path: Path, n: int = 30) -> Path:
    lines = []
    for i in range(n):
        lines.append(json.dumps({
            "id": f"nano-{i}", "source": "synthetic-nano", "prompt": f"{PROMPTS[i % len(PROMPTS)]} (case {i})",
            "outcomes": {NANO: {"score": float(i % 2), "cost_usd": 0.0001},
                         GPT4: {"score": float(i % 3 != 0), "cost_usd": 0.01}}}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fixed_scores_profile_and_default_candidates_as_the_serving_router_does(tmp_path) -> None:
    rows = load_outcomes(_nano_rows(tmp_path / "nano.jsonl"))[:8]
    served = Router.load()
    pred, sources, cited = E.serving_predictions(served, rows, [NANO, GPT4, "gpt-4o"])
    assert sources == {NANO: "profile", GPT4: "learned", "gpt-4o": "learned"}  # gpt-4o: its dated outcome data
    assert set(cited) == {NANO}
    bare = Router(served.quality, Profiles({}, {}), served.catalog)  # no profile: the default
    pred_d, sources_d, _ = E.serving_predictions(bare, rows, [NANO, GPT4])
    assert sources_d == {NANO: "default", GPT4: "learned"}
    for i, r in enumerate(rows):
        assert pred[i] == pytest.approx([a.predicted_quality for a in served.assess(r.prompt, [NANO, GPT4, "gpt-4o"])])
        assert pred_d[i] == pytest.approx([a.predicted_quality for a in bare.assess(r.prompt, [NANO, GPT4])])
    # batched as a whole file is (batch boundaries change nothing)
    small = E.PREDICT_BATCH
    try:
        E.PREDICT_BATCH = 3
        assert E.serving_predictions(served, rows, [NANO, GPT4, "gpt-4o"])[0] == pytest.approx(pred)
    finally:
        E.PREDICT_BATCH = small


def test_router_eval_fixed_accepts_a_profile_candidate_and_says_so(tmp_path, capsys) -> None:
    f = str(_nano_rows(tmp_path / "nano.jsonl"))
    rc, out, err = _cli(capsys, "router", "eval", "--outcomes", f, "--candidates", f"{NANO},{GPT4}", "--quiet")
    assert rc == 0, err
    assert f"note: the router has no outcome data for {NANO}; scored as the serving router predicts them" in out
    assert f"{NANO} from its profile {NANO} (" in out
    rc, out, err = _cli(capsys, "router", "eval", "--outcomes", f, "--candidates", f"{NANO},{GPT4}", "--quiet",
                        "--json")
    s = json.loads(out)
    assert s["quality_sources"] == {NANO: "profile", GPT4: "learned"} and set(s["profile_sources"]) == {NANO}
    # --profiles: the override's figures and source
    prof = tmp_path / "profiles.yaml"
    prof.write_text(yaml.safe_dump({"profiles": {NANO: {d: {"score": 0.05, "source": "test override"}
                                                        for d in ("code", "math", "knowledge", "reasoning",
                                                                  "general")}}}))
    rc, out2, err = _cli(capsys, "router", "eval", "--outcomes", f, "--candidates", f"{NANO},{GPT4}", "--quiet",
                         "--json", "--profiles", str(prof))
    assert rc == 0, err
    s2 = json.loads(out2)
    assert "test override" in s2["profile_sources"][NANO] and s2["protocol_info"]["profiles"] == str(prof)
    ev = E.evaluate(load_outcomes(f), candidates=[NANO, GPT4], profiles=str(prof))
    assert np.all(ev.predictions[:, 0] < 0.2)
    # kfold / lobo: --profiles does not apply, said so
    rc, _, err = _cli(capsys, "router", "eval", "--outcomes", f, "--protocol", "kfold", "--profiles", str(prof))
    assert rc == 2 and "--profiles applies to --protocol fixed" in err
    rc, _, err = _cli(capsys, "router", "eval", "--outcomes", f, "--profiles", str(tmp_path / "none.yaml"))
    assert rc == 2 and "none.yaml" in err


def _partial_rows(path: Path, n: int = 50, without: int = 10) -> Path:
    lines = []
    for i in range(n):
        outcomes = {GPT4: {"score": 1.0, "cost_usd": 0.01},
                    "mixtral-8x7b-instruct-v0.1": {"score": float(i % 2), "cost_usd": 0.001}}
        if i >= without:
            outcomes["claude-v2"] = {"score": float(i % 3 != 0), "cost_usd": 0.005}
        lines.append(json.dumps({"id": f"p-{i}", "source": "synthetic-partial",
                                 "prompt": f"{PROMPTS[i % len(PROMPTS)]} (case {i})", "outcomes": outcomes}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rows_missing_a_candidate_are_reported_not_dropped_silently(tmp_path, capsys) -> None:
    f = str(_partial_rows(tmp_path / "partial.jsonl"))
    rc, out, err = _cli(capsys, "router", "eval", "--outcomes", f, "--quiet")
    assert rc == 0, err
    assert "left out candidates not scored on every row: claude-v2 (40 of 50 rows)" in out
    rc, out, _ = _cli(capsys, "router", "eval", "--outcomes", f, "--quiet", "--json")
    s = json.loads(out)
    assert s["excluded_partial"] == {"claude-v2": 40} and s["rows_total"] == 50 and s["n"] == 50
    assert "claude-v2" not in s["candidates"] and s["rows_dropped_missing_candidates"] == 0
    named = ("--candidates", f"claude-v2,{GPT4}")
    rc, out, err = _cli(capsys, "router", "eval", "--outcomes", f, "--quiet", *named)
    assert rc == 0, err
    assert "scored on the 40 of 50 rows that have every --candidates model (missing: claude-v2 on 10 rows)" in out
    rc, out, _ = _cli(capsys, "router", "eval", "--outcomes", f, "--quiet", "--json", *named)
    s = json.loads(out)
    assert s["n"] == 40 and s["rows_total"] == 50 and s["rows_dropped_missing_candidates"] == 10
    assert s["missing_by_candidate"] == {"claude-v2": 10} and s["excluded_partial"] == {}


def test_unpriced_candidates_say_cost_is_not_measurable_not_not_reached() -> None:
    from tiergate.cli_router import render_eval
    from tiergate.routing.data import Outcome, OutcomeRow

    rows = [OutcomeRow(id=f"u-{i}", source="s", prompt=f"question number {i} about things", meta={},
                       outcomes={"a": Outcome(score=float(i % 2)), "b": Outcome(score=1.0)}) for i in range(30)]
    ev = E.evaluate(rows, protocol="kfold", k=3, model_kind="mean-baseline", prices=lambda _m: None)
    assert ev.summary["cost_measurable"] is False and ev.summary["unpriced_candidates"] == ["a", "b"]
    text = render_eval(ev.summary)
    assert ("cost not measurable: no candidate has a price (no cost_usd in the rows, not in the catalogue)"
            in text)
    assert "not reached" not in text


def _two(path: Path, source: str, n: int, offset: int = 0) -> Path:
    lines = [json.dumps({"id": f"{source}-{i}", "source": source,
                         "prompt": f"{PROMPTS[i % len(PROMPTS)]} ({source} variant {i + offset} of many)",
                         "outcomes": {GPT4: {"score": 1.0, "cost_usd": 0.01},
                                      "mixtral-8x7b-instruct-v0.1": {"score": float(i % 2), "cost_usd": 0.001}}})
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_router_eval_shows_progress_bars_that_stay_for_every_slow_step(tmp_path, capsys) -> None:
    f = str(_two(tmp_path / "eval.jsonl", "synthetic-eval", 30))
    rc, _, err = _cli(capsys, "router", "eval", "--outcomes", f)
    assert rc == 0
    assert "loading the evaluated outcome files: 100%" in err
    assert re.search(r"features and predictions: 100%.*30/30", err)  # kept when done (leave=True)
    data = tmp_path / "data"
    data.mkdir()
    _two(data / "other-a.jsonl", "other-a", 60, 100)
    _two(data / "other-b.jsonl", "other-b", 60, 200)
    rc, _, err = _cli(capsys, "router", "eval", "--outcomes", f, "--protocol", "lobo", "--data-dir", str(data))
    assert rc == 0, err
    for step in ("loading the dev outcome files: 100%", "leaving out training rows sharing a passage: 100%",
                 "features (training rows): 100%", "features and predictions: 100%"):
        assert step in err, step
    assert re.search(r"fitted the learned model on 120 rows in [0-9.]+ s", err)
    rc, _, err = _cli(capsys, "router", "eval", "--outcomes", f, "--protocol", "kfold", "--folds", "3")
    assert rc == 0, err
    assert "features (evaluated rows): 100%" in err and "3-fold: filter, fit and predict: 100%" in err
    rc, _, err = _cli(capsys, "router", "eval", "--outcomes", f, "--quiet")
    assert rc == 0 and err == ""
