"""`tiergate router train|eval` and `tiergate route` run as a user runs them: a subprocess, real files."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tiergate.routing.data import OutcomeDataError, find_data_dir

REQUIRED_TOP = {"n", "candidates", "best_single", "router", "cost_at_quality"}


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiergate.cli_router", *args], capture_output=True, text=True, check=False,
                          timeout=timeout)


def _outcomes(tmp_path: Path, n: int = 90, gz: bool = True) -> Path:
    lines = []
    for i in range(n):
        hard = i % 3 == 0
        lines.append(json.dumps({
            "id": f"syn-{i}", "source": "synthetic",
            "prompt": ("Prove the hard theorem " if hard else "Say hello to ") + f"item {i} " + "and more words " * 3,
            "meta": {"split": "dev"},
            "outcomes": {"big": {"score": 1.0, "cost_usd": 0.02},
                         "mid": {"score": 0.0 if hard else 1.0, "cost_usd": 0.004},
                         "small": {"score": float(i % 2 == 0 and not hard), "cost_usd": 0.0005}},
        }))
    p = tmp_path / ("syn.jsonl.gz" if gz else "syn.jsonl")
    data = ("\n".join(lines) + "\n").encode()
    p.write_bytes(gzip.compress(data) if gz else data)
    return p


def _data() -> Path | None:
    try:
        d = find_data_dir()
    except OutcomeDataError:
        return None
    return d if (d / "routellm-gsm8k.jsonl.gz").exists() else None


def test_eval_kfold_json_has_every_required_key(tmp_path):
    f = _outcomes(tmp_path)
    r = _cli("router", "eval", "--outcomes", str(f), "--protocol", "kfold", "--model", "mean-baseline",
             "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert REQUIRED_TOP <= set(s)
    assert s["n"] == 90 and sorted(s["candidates"]) == ["big", "mid", "small"]
    assert set(s["best_single"]) >= {"candidate", "score", "cost_usd"} and s["best_single"]["candidate"] == "big"
    assert set(s["router"]) >= {"score", "cost_usd"}
    for q in ("0.95", "0.98", "1.0"):
        assert set(s["cost_at_quality"][q]) >= {"cost_usd", "fraction_of_best_single"}
    assert "two_model" not in s
    assert s["oracle"]["score"] == 1.0 and s["protocol"] == "kfold"


def test_eval_two_candidates_prints_routellm_metrics_and_a_plot(tmp_path):
    f = _outcomes(tmp_path, gz=False)
    png = tmp_path / "out" / "curve.png"
    r = _cli("router", "eval", "--outcomes", str(f), "--candidates", "big,mid", "--protocol", "kfold",
             "--model", "mean-baseline", "--json", "--quiet", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    tm = json.loads(r.stdout)["two_model"]
    assert tm["strong"] == "big" and tm["weak"] == "mid"
    assert set(tm) >= {"apgr", "auc", "cpt"} and set(tm["cpt"]) == {"20", "50", "80"}
    assert all(0.0 <= v <= 100.0 for v in tm["cpt"].values())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    human = _cli("router", "eval", "--outcomes", str(f), "--candidates", "big,mid", "--protocol", "kfold",
                 "--model", "mean-baseline", "--quiet")
    assert human.returncode == 0, human.stderr
    assert "APGR" in human.stdout and "CPT(50%)" in human.stdout and "always big (best single)" in human.stdout


def test_train_then_evaluate_the_saved_router(tmp_path):
    f = _outcomes(tmp_path)
    out = tmp_path / "router"
    t = _cli("router", "train", "--outcomes", str(f), "--out", str(out), "--model", "mean-baseline", "--quiet")
    assert t.returncode == 0, t.stderr
    assert "3 candidates" in t.stdout
    r = _cli("router", "eval", "--outcomes", str(f), "--router", str(out), "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["protocol"] == "fixed" and s["n"] == 90


def test_errors_are_actionable_and_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "source": "s", "prompt": "p", "outcomes": {"m": {"score": 2}}}\n')
    r = _cli("router", "eval", "--outcomes", str(bad), "--protocol", "kfold", "--quiet")
    assert r.returncode == 2 and f"{bad}:1:" in r.stderr and "[0, 1]" in r.stderr
    f = _outcomes(tmp_path)
    r = _cli("router", "eval", "--outcomes", str(f), "--candidates", "big,nope", "--protocol", "kfold", "--quiet")
    assert r.returncode == 2 and "no row scores nope" in r.stderr
    r = _cli("router", "eval", "--outcomes", str(f), "--router", str(tmp_path), "--protocol", "kfold")
    assert r.returncode == 2 and "--router" in r.stderr


def test_learned_router_kfold_on_real_gsm8k():
    d = _data()
    if d is None:
        pytest.skip("shared/data not available (set TIERGATE_DATA_DIR)")
    r = _cli("router", "eval", "--outcomes", str(d / "routellm-gsm8k.jsonl.gz"), "--protocol", "kfold",
             "--within-file-only", "--json", "--quiet", timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["n"] == 1307 and s["excluded_contaminated"] == 12
    tm = s["two_model"]
    assert tm["strong"] == "gpt-4-1106-preview"
    assert tm["random"]["apgr"] == pytest.approx(0.507, abs=5e-4)
    assert tm["apgr"] > tm["random"]["apgr"]


def test_route_prints_every_candidate_and_the_choice(tmp_path):
    pytest.importorskip("tiergate.routing.router")
    cands = "gpt-4o-mini,o3-mini@low,o3-mini@high"
    rows = []
    for i in range(60):
        hard = i % 2 == 0
        rows.append(json.dumps({
            "id": f"r-{i}", "source": "syn", "prompt": ("Prove the theorem " if hard else "Greet ") + f"number {i}",
            "outcomes": {"gpt-4o-mini": {"score": 0.0 if hard else 1.0}, "o3-mini@low": {"score": float(not hard)},
                         "o3-mini@high": {"score": 1.0}},
        }))
    f = tmp_path / "o.jsonl"
    f.write_text("\n".join(rows) + "\n")
    router = tmp_path / "router"
    t = _cli("router", "train", "--outcomes", str(f), "--out", str(router), "--quiet", timeout=300)
    assert t.returncode == 0, t.stderr
    r = _cli("route", "Write a Python function that returns the n-th prime number.", "--candidates", cands,
             "--router", str(router), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert {c["candidate"] for c in s["candidates"]} == set(cands.split(","))
    assert s["chosen"] in cands.split(",") and s["reason"]
    assert sum(c["chosen"] for c in s["candidates"]) == 1
    for c in s["candidates"]:
        assert c["est_cost_usd"] > 0 and c["prompt_tokens"] > 0 and c["quality_source"] == "learned"
    human = _cli("route", "What is 2+2?", "--candidates", cands, "--policy", "auto:cost", "--router", str(router))
    assert human.returncode == 0, human.stderr
    assert "chosen:" in human.stdout and "* " in human.stdout and "o3-mini@high" in human.stdout
    missing = _cli("route", "hi", "--candidates", cands, "--router", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "tiergate router train" in missing.stderr


def test_the_tiergate_command_exposes_the_router_commands():
    r = subprocess.run([sys.executable, "-m", "tiergate.cli", "router", "eval", "--help"], capture_output=True, check=False,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--protocol" in r.stdout and "--plot" in r.stdout


def test_route_rejects_unknown_models_and_efforts():
    pytest.importorskip("tiergate.routing.router")
    for cands, needle in (("gpt-4o-mini,nope@low", "unknown model 'nope'"),
                          ("o3-mini@ultra", "no reasoning effort 'ultra'"),
                          ("gpt-4o-mini@high", "no reasoning effort 'high'")):
        r = _cli("route", "x", "--candidates", cands)
        assert r.returncode == 2, (cands, r.stdout)
        assert needle in r.stderr and "Traceback" not in r.stderr
    ok = _cli("route", "x", "--candidates", "gpt-4o-mini,o3-mini@low,o1@high", "--json")
    assert ok.returncode == 0, ok.stderr


def test_within_file_only_and_with_other_benchmarks_exclude_each_other(tmp_path):
    f = _outcomes(tmp_path)
    r = _cli("router", "eval", "--outcomes", str(f), "--protocol", "kfold", "--with-other-benchmarks",
             "--within-file-only", "--quiet")
    assert r.returncode == 2
    r = _cli("router", "eval", "--outcomes", str(f), "--protocol", "lobo", "--within-file-only", "--quiet")
    assert r.returncode == 2 and "only apply to --protocol kfold" in r.stderr
