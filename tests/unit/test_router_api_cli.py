"""The router's Python API and the router commands, on the defects an acceptance audit found: configured
aliases assessed as their catalogue model, unknown candidates refused by `assess`/`decide`, reasoning
candidates that cannot answer within the output bound, clear CLI errors (missing router, unknown
training candidate, empty file, negative cost cap), the fixed-protocol note only where the router saw
the prompts' family, within-file k-fold for held-out MT-bench, and the documented Python examples
running as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tiergate.cli import main as cli_main
from tiergate.routing import evaluate as E
from tiergate.routing.data import Outcome, OutcomeRow
from tiergate.routing.quality import ARTIFACTS_DIR
from tiergate.routing.router import NoEligibleCandidate, Router, UnknownCandidate

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = pytest.mark.skipif(not (ARTIFACTS_DIR / "quality.npz").exists(), reason="router artefacts not trained")
PRIMES = "Prove there are infinitely many primes."


@pytest.fixture(scope="module")
def router() -> Router:
    if not (ARTIFACTS_DIR / "quality.npz").exists():
        pytest.skip("router artefacts not trained")
    return Router.load()


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli_main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _write_rows(path: Path, n: int = 40, source: str = "synthetic", mtbench: bool = False) -> Path:
    lines = []
    for i in range(n):
        hard = i % 3 == 0
        text = ("Prove the hard theorem " if hard else "Say hello to ") + f"item {i} and more words here"
        row = {"id": f"{source}-{i}", "source": source,
               "outcomes": {"gpt-4-1106-preview": {"score": 1.0, "cost_usd": 0.01},
                            "mixtral-8x7b-instruct-v0.1": {"score": 0.0 if hard else 1.0, "cost_usd": 0.001}}}
        if mtbench:
            row["messages"] = [{"role": "user", "content": text}, {"role": "user", "content": "And then?"}]
        else:
            row["prompt"] = text
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------- 1. config aliases


def test_a_configured_alias_is_assessed_as_its_catalogue_model(router: Router) -> None:
    names = {"team-default": "gpt-4o", "gpt-4o": "gpt-4o", "thinker": "o3-mini"}
    out = router.assess(PRIMES, ["team-default", "gpt-4o", "thinker@high", "o3-mini@high"], catalog_names=names)
    by = {a.candidate: a for a in out}
    for alias, model in (("team-default", "gpt-4o"), ("thinker@high", "o3-mini@high")):
        a, m = by[alias], by[model]
        assert a.quality_source == m.quality_source == "learned"
        assert a.predicted_quality == pytest.approx(m.predicted_quality)
        assert (a.est_cost_usd, a.est_output_tokens, a.est_reasoning_tokens) == (
            m.est_cost_usd, m.est_output_tokens, m.est_reasoning_tokens)
    assert by["thinker@high"].est_reasoning_tokens == 10_000
    # (a learned prediction depends on the set routed between: the pair-gain component, routing.steps)
    d = router.decide(PRIMES, ["team-default", "gpt-4o-mini"], catalog_names={"team-default": "gpt-4o"},
                      policy="quality")
    plain = router.decide(PRIMES, ["gpt-4o", "gpt-4o-mini"], policy="quality")
    assert [a.predicted_quality for a in d.assessments] == pytest.approx(
        [a.predicted_quality for a in plain.assessments])
    assert d.chosen.candidate == {"gpt-4o": "team-default"}.get(plain.chosen.candidate, plain.chosen.candidate)


def test_route_resolves_config_aliases(router: Router, tmp_path, capsys) -> None:
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("models:\n"
                   "  - name: gpt-4o-mini\n    deployments: [{provider: sim}]\n"
                   "  - name: team-default\n    catalog: gpt-4o\n    deployments: [{provider: sim}]\n"
                   "routing:\n  candidates: [gpt-4o-mini, team-default]\n")
    rc, out, err = _cli(capsys, "route", PRIMES, "--config", str(cfg), "--json")
    assert rc == 0, err
    by = {c["candidate"]: c for c in json.loads(out)["candidates"]}
    gpt4o = router.assess(PRIMES, ["gpt-4o-mini", "gpt-4o"])[1]
    assert by["team-default"]["quality_source"] == "learned"
    assert by["team-default"]["predicted_quality"] == pytest.approx(gpt4o.predicted_quality)
    assert by["team-default"]["est_cost_usd"] == pytest.approx(gpt4o.est_cost_usd)
    rc, _, err = _cli(capsys, "route", PRIMES, "--config", str(cfg), "--candidates", "team-default,nope")
    assert rc == 2 and "'nope'" in err and "configured models: gpt-4o-mini, team-default" in err


# --------------------------------------------------------------------------- 2. unknown candidates


@pytest.mark.parametrize(("cand", "words"), [
    ("nope@low", ("'nope@low'", "unknown model 'nope'")),
    ("o3-mini@ultra", ("'o3-mini@ultra'", "no reasoning effort 'ultra'", "efforts: low, medium, high")),
    ("gpt-4o-mini@high", ("'gpt-4o-mini@high'", "not a reasoning model")),
    ("gpt-4o-mii", ("did you mean gpt-4o-mini",)),
])
def test_assess_and_decide_refuse_an_unknown_candidate(router: Router, cand, words) -> None:
    for call in (router.assess, router.decide):
        with pytest.raises(UnknownCandidate) as e:
            call("hi", ["gpt-4o-mini", cand])
        assert isinstance(e.value, ValueError) and isinstance(e.value, NoEligibleCandidate)  # the gateway's 400
        for w in words:
            assert w in str(e.value)


def test_known_models_without_outcomes_keep_working(router: Router) -> None:
    out = router.assess("hi", ["gpt-4.1", "gpt-4.1-nano", "my-local", "my-local@high"],
                        catalog_names={"my-local": "my-local"})
    assert [a.quality_source for a in out] == ["profile", "profile", "default", "default"]  # gpt-4.1: published
    assert all(0.0 < a.predicted_quality < 1.0 for a in out)
    with pytest.raises(UnknownCandidate, match="configured models: my-local"):
        router.assess("hi", ["other"], catalog_names={"my-local": "my-local"})


# ------------------------------------------------------------------- 8. the output bound and reasoning


def test_reasoning_candidates_that_cannot_answer_within_the_bound_are_ineligible(router: Router) -> None:
    cands = ["gpt-4o-mini", "o3-mini@low", "o3-mini@high"]
    d = router.decide(PRIMES, cands, policy="quality", max_output_tokens=50)
    by = {a.candidate: a for a in d.assessments}
    assert d.chosen.candidate == "gpt-4o-mini"
    assert not by["o3-mini@high"].eligible
    assert by["o3-mini@high"].ineligible_reason == (
        "max_completion_tokens 50 is below the ~10000 reasoning tokens o3-mini@high is expected to use")
    assert not by["o3-mini@low"].eligible and "~1500 reasoning tokens" in by["o3-mini@low"].ineligible_reason
    # a bound above the expected reasoning tokens leaves them eligible
    d = router.decide(PRIMES, cands, policy="quality", max_output_tokens=20_000)
    assert all(a.eligible for a in d.assessments)


def test_when_every_candidate_reasons_past_the_bound_the_one_reasoning_least_is_kept(router: Router) -> None:
    d = router.decide(PRIMES, ["o3-mini@high", "o3-mini@low"], max_output_tokens=50)
    assert d.chosen.candidate == "o3-mini@low" and d.chosen.eligible and d.chosen.ineligible_reason is None
    assert "kept o3-mini@low although max_completion_tokens 50" in d.reason
    assert not d.assessments[0].eligible
    # ... among those the caller's own rules leave
    d = router.decide(PRIMES, ["o3-mini@high", "o3-mini@low"], max_output_tokens=50,
                      eligible=lambda c: "no tools" if c.effort == "low" else None)
    assert d.chosen.candidate == "o3-mini@high"
    assert {a.candidate: a.ineligible_reason for a in d.assessments}["o3-mini@low"] == "no tools"


# ------------------------------------------------------------------------------------- 3, 4, 9: CLI


def test_eval_with_a_missing_router_is_a_clear_error(tmp_path, capsys) -> None:
    f = _write_rows(tmp_path / "o.jsonl")
    rc, _, err = _cli(capsys, "router", "eval", "--outcomes", str(f), "--router", str(tmp_path / "nonexist"))
    assert rc == 2
    assert f"no trained router at {tmp_path / 'nonexist'}" in err and "tiergate router train" in err


def test_train_with_an_unknown_candidate_names_it_and_lists_the_file_candidates(tmp_path, capsys) -> None:
    f = _write_rows(tmp_path / "o.jsonl")
    out = tmp_path / "r"
    rc, _, err = _cli(capsys, "router", "train", "--outcomes", str(f), "--out", str(out),
                      "--candidates", "gpt-4-1106-preview,nope", "--quiet")
    assert rc == 2 and not out.exists()
    assert "scores nope" in err and "gpt-4-1106-preview, mixtral-8x7b-instruct-v0.1" in err


def test_negative_cost_cap_and_empty_file_messages(tmp_path, capsys) -> None:
    rc, _, err = _cli(capsys, "route", "hi", "--candidates", "gpt-4o-mini", "--max-cost-usd", "-1")
    assert rc == 2 and "--max-cost-usd" in err and "cost_cap_usd" not in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for args in (("router", "eval", "--outcomes", str(empty)),
                 ("router", "train", "--outcomes", str(empty), "--out", str(tmp_path / "r"))):
        rc, _, err = _cli(capsys, *args)
        assert rc == 2 and f"{empty}: no outcome rows" in err and "--candidates" not in err


# ------------------------------------------------------------------------- 6. the fixed-protocol note


def test_fixed_note_only_for_the_prompt_families_the_router_was_trained_on(router: Router, tmp_path) -> None:
    from tiergate.cli_router import fixed_protocol_note

    rows = [OutcomeRow(f"r-{i}", src, ("Prove the hard theorem " if i % 3 == 0 else "Say hello to ") + f"item {i}",
                       {}, {"gpt-4-1106-preview": Outcome(1.0, 0.01),
                            "mixtral-8x7b-instruct-v0.1": Outcome(float(i % 3 != 0), 0.001)})
            for src in ("routerbench-mbpp", "brand-new-file") for i in range(30)]
    seen = E.evaluate(rows[:30]).summary["protocol_info"]
    assert "routerbench-mbpp" in seen["train_sources"] and seen["seen_sources"] == ["routerbench-mbpp"]
    assert "routerbench-mbpp" in fixed_protocol_note(seen)
    unseen = E.evaluate(rows[30:]).summary["protocol_info"]
    assert unseen["seen_sources"] == [] and fixed_protocol_note(unseen) is None
    E.MeanScoreBaseline().fit(rows[30:]).save(tmp_path)  # records nothing about its training rows
    blind = E.evaluate(rows[30:], router_dir=tmp_path).summary["protocol_info"]
    assert blind["train_sources"] is None and fixed_protocol_note(blind).startswith("note: this router does not record")


def test_fixed_note_counts_the_evaluated_prompts_the_router_was_trained_on(tmp_path, capsys) -> None:
    """A saved router keeps fingerprints of its training prompts, so `router eval` can tell a held-out file of
    a trained family (later LiveCodeBench problems) from its training rows instead of warning on both."""
    from tiergate.routing.quality import QualityModel

    f = _write_rows(tmp_path / "routerbench-mbpp.jsonl", n=30, source="routerbench-mbpp")
    rows = E.load_outcomes(f)
    QualityModel().fit(rows[:20]).save(tmp_path / "r")
    assert (tmp_path / "r" / "training_prompts.npz").exists()
    cases = ((rows, "note: 20 of these 30 prompts are among this router's training prompts"),
             (rows[20:], "note: none of these 10 prompts is among this router's training prompts"))
    for subset, note in cases:
        sub = tmp_path / f"sub{len(subset)}.jsonl"
        sub.write_text("".join(line + "\n" for line in f.read_text().splitlines()[-len(subset):]))
        rc, out, err = _cli(capsys, "router", "eval", "--outcomes", str(sub), "--router", str(tmp_path / "r"), "--quiet")
        assert rc == 0, err
        assert note in out, out
    info = E.evaluate(rows[20:], router_dir=tmp_path / "r").summary["protocol_info"]
    assert info["seen_prompts"] == 0 and info["seen_sources"] == ["routerbench-mbpp"]


def test_the_shipped_router_knows_its_training_prompts() -> None:
    from tiergate.routing.data import OutcomeDataError, count_seen, dev_files, load_outcomes
    from tiergate.routing.quality import QualityModel

    model = QualityModel.load()
    assert model.prompt_prints is not None and model.prompt_prints.size > 25_000
    assert count_seen(["What is the capital of France?"], model.prompt_prints) == 0  # not a dev prompt
    try:
        files = [f for f in dev_files() if f.name.startswith("routerbench-mbpp")]
    except OutcomeDataError:
        files = []
    if not files:
        pytest.skip("shared/data not available (set TIERGATE_DATA_DIR)")
    rows = load_outcomes(files)  # the shipped router was trained on every dev row
    assert count_seen([r.prompt for r in rows], model.prompt_prints) == len(rows)
    assert count_seen([r.prompt.upper() + "  " for r in rows[:5]], model.prompt_prints) == 5  # case, spaces


def test_router_eval_prints_the_note_accordingly(router: Router, tmp_path, capsys) -> None:
    for source, note in (("routerbench-mbpp", "note: none of these 40 prompts is among"), ("brand-new-file", None)):
        f = _write_rows(tmp_path / f"{source}.jsonl", source=source)
        rc, out, err = _cli(capsys, "router", "eval", "--outcomes", str(f), "--quiet")
        assert rc == 0, err
        assert "looks better than it is" not in out, (source, out)  # the shipped router never saw these prompts
        assert (note in out) if note else ("note:" not in out), (source, out)


# ------------------------------------------------------------------------------- 7. MT-bench k-fold


def test_kfold_on_mtbench_is_within_the_file_by_default(tmp_path, capsys, monkeypatch) -> None:
    f = _write_rows(tmp_path / "mt.jsonl", source="routellm-mtbench", mtbench=True)
    rows = E.load_outcomes(f)
    assert not E.default_extra_benchmarks(rows)
    assert E.default_extra_benchmarks([OutcomeRow("g-1", "routellm-gsm8k", "p", {}, {})])
    monkeypatch.setenv("TIERGATE_DATA_DIR", str(tmp_path / "no-dev-files-here"))
    rc, out, err = _cli(capsys, "router", "eval", "--outcomes", str(f), "--protocol", "kfold", "--model",
                        "mean-baseline", "--json", "--quiet")
    assert rc == 0, err
    info = json.loads(out)["protocol_info"]
    assert "extra_sources" not in info and "extra_rows_per_fold" not in info


# --------------------------------------------------------------------- 5. the documented Python API


def _python_blocks(doc: str, heading: str) -> list[str]:
    """The ```python blocks of one section of a doc page (up to the next heading of the same or a higher
    level, outside code fences)."""
    level = len(heading.split(" ", 1)[0])
    blocks: list[str] = []
    inside, fence, code = False, None, []
    for line in (ROOT / "docs" / doc).read_text().splitlines():
        if fence is None and re.match(r"#{1,6} ", line):
            if inside and len(line.split(" ", 1)[0]) <= level:
                break
            inside = inside or line.strip() == heading
        elif line.startswith("```"):
            if fence is None:
                fence, code = line[3:].strip(), []
            else:
                if inside and fence == "python":
                    blocks.append("\n".join(code) + "\n")
                fence = None
        elif fence is not None:
            code.append(line)
    return blocks


@SHIPPED
@pytest.mark.parametrize(("doc", "heading"), [("routing.md", "### Python API"), ("routing-model.md", "## Python API")])
def test_the_python_api_examples_run_as_written(doc, heading, capsys) -> None:
    blocks = _python_blocks(doc, heading)
    assert blocks, f"no python example under {heading!r} in docs/{doc}"
    for code in blocks:
        exec(compile(code, f"docs/{doc}", "exec"), {"__name__": "__doc_example__"})  # noqa: S102
    assert capsys.readouterr().out  # the examples print what they show


def test_fixed_protocol_reports_the_loaded_routers_kind(tmp_path, capsys) -> None:
    f = _write_rows(tmp_path / "rows.jsonl")
    out_dir = tmp_path / "mean"
    rc, _, err = _cli(capsys, "router", "train", "--outcomes", str(f), "--out", str(out_dir), "--model",
                      "mean-baseline", "--quiet")
    assert rc == 0, err
    rc, out, err = _cli(capsys, "router", "eval", "--outcomes", str(f), "--router", str(out_dir), "--json",
                        "--quiet")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["model"] == "mean-baseline" and "model" not in summary["protocol_info"]


# ------------------------------------------------------------------ F9. an empty effort is refused


def test_an_empty_effort_is_refused_not_routed_at_the_default_effort(router: Router, capsys) -> None:
    from tiergate.routing.router import Candidate

    for spec in ("o3-mini@", " o3-mini@ "):
        with pytest.raises(UnknownCandidate, match="empty reasoning effort") as e:
            Candidate.parse(spec)
        assert isinstance(e.value, ValueError)  # the gateway answers UnknownCandidate with a 400
    for call in (lambda c: router.assess("hi", c), lambda c: router.decide("hi", c), router.check_candidates):
        with pytest.raises(UnknownCandidate, match="'o3-mini@': empty reasoning effort"):
            call(["gpt-4o-mini", "o3-mini@"])
    rc, out, err = _cli(capsys, "route", "hi", "--candidates", "gpt-4o-mini,o3-mini@")
    assert rc == 2 and not out and "'o3-mini@': empty reasoning effort" in err


def test_the_gateway_answers_an_empty_effort_candidate_with_a_400(tmp_path) -> None:
    import openai

    from tests.helpers import running_gateway

    cfg = {"models": [{"name": m, "deployments": [{"provider": "sim"}]} for m in ("gpt-4o-mini", "o3-mini")],
           "routing": {"candidates": ["gpt-4o-mini", "o3-mini@low"]}, "storage": f"sqlite:///{tmp_path / 'l.db'}"}
    with running_gateway(cfg) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=20)
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": PRIMES}],
                                           extra_body={"tiergate": {"candidates": ["gpt-4o-mini", "o3-mini@"]}})
    body = e.value.body if isinstance(e.value.body, dict) else {}
    assert "empty reasoning effort" in str(e.value) and body.get("param") == "tiergate.candidates"


# --------------------------------------------------------- F6. capability eligibility in the Python API


IMAGE_MSGS = [{"role": "user", "content": [
    {"type": "text", "text": "What is in this image?"},
    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}


def _why(assessments) -> dict[str, str | None]:
    return {a.candidate: a.ineligible_reason for a in assessments}


def test_image_parts_need_vision_without_any_other_argument(router: Router) -> None:
    cands = ["o1@high", "o3-mini@low", "gpt-4o-mini"]
    for out in (router.assess(IMAGE_MSGS, cands), router.decide(IMAGE_MSGS, cands).assessments):
        why = _why(out)
        assert why["o3-mini@low"].startswith("model 'o3-mini' does not support vision (image input)")
        assert why["o1@high"] is None and why["gpt-4o-mini"] is None
    assert router.decide(IMAGE_MSGS, cands, policy="cost").chosen.candidate != "o3-mini@low"
    with pytest.raises(NoEligibleCandidate, match="o3-mini@low: model 'o3-mini' does not support vision"):
        router.decide(IMAGE_MSGS, ["o3-mini@low", "o3-mini@high"])
    # the same text without the image leaves o3-mini eligible
    assert all(a.eligible for a in router.assess([{"role": "user", "content": "What is in this image?"}], cands))


def test_tools_response_format_and_stream_are_checked_as_the_gateway_checks_them(router: Router) -> None:
    cands = ["o1-mini", "o3-mini@low", "gpt-4o-mini"]
    assert all(a.eligible for a in router.assess(PRIMES, cands))
    why = _why(router.assess(PRIMES, cands, tools=TOOLS))
    assert why["o1-mini"].startswith("model 'o1-mini' does not support tools")
    assert why["o3-mini@low"] is None and why["gpt-4o-mini"] is None
    why = _why(router.assess(PRIMES, cands, response_format=SCHEMA))
    assert why["o1-mini"].startswith("model 'o1-mini' does not support json_schema")
    # the whole Chat Completions body, as the gateway receives it, gives the same answer
    body = {"model": "auto", "messages": [{"role": "user", "content": PRIMES}], "tools": TOOLS, "stream": True}
    d = router.decide(body["messages"], cands, request=body)
    assert _why(d.assessments)["o1-mini"].startswith("model 'o1-mini' does not support tools")
    assert d.chosen.candidate != "o1-mini"
    # a capability every candidate has rules nothing out
    assert all(a.eligible for a in router.assess(PRIMES, cands, stream=True))


def test_capability_checks_match_the_gateway_for_the_same_request(router: Router, tmp_path) -> None:
    """The in-process decision and the gateway's (same candidates, same body) rule out the same candidates
    for the same reasons and pick the same one."""
    import openai
    import orjson

    from tests.helpers import ledger_rows, running_gateway

    models = ("gpt-4o-mini", "o1-mini", "o3-mini", "o1")
    cands = ["gpt-4o-mini", "o1-mini", "o3-mini@low", "o1@high"]
    db = tmp_path / "l.db"
    cfg = {"models": [{"name": m, "deployments": [{"provider": "sim"}]} for m in models],
           "routing": {"candidates": cands}, "storage": f"sqlite:///{db}"}
    names = {m: m for m in models}
    with running_gateway(cfg) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=20)
        for kw in ({"messages": IMAGE_MSGS}, {"messages": [{"role": "user", "content": PRIMES}], "tools": TOOLS},
                   {"messages": [{"role": "user", "content": PRIMES}], "response_format": SCHEMA}):
            raw = client.chat.completions.with_raw_response.create(model="auto", **kw)
            rows = ledger_rows(db, "request_id = ?", raw.headers["x-request-id"], columns="route")
            served = orjson.loads(rows[0]["route"])
            d = router.decide(kw["messages"], cands, request={"model": "auto", **kw}, catalog_names=names)
            assert {c["candidate"]: c["why_not"] for c in served["candidates"]} == _why(d.assessments), kw
            assert served["chosen"] == d.chosen.candidate, kw


# ------------------------------------------------------------------- a profile's source is shown (E)


def test_route_shows_where_a_profile_quality_comes_from(router: Router, capsys) -> None:
    by = {a.candidate: a for a in router.assess(PRIMES, ["gpt-4.1-nano", "gpt-4-1106-preview"])}
    nano, learned = by["gpt-4.1-nano"], by["gpt-4-1106-preview"]
    assert nano.quality_source == "profile" and "Introducing GPT-4.1" in nano.profile_source
    assert learned.quality_source == "learned" and learned.profile_source is None
    rc, out, _ = _cli(capsys, "route", PRIMES, "--candidates", "gpt-4.1-nano,gpt-4-1106-preview")
    assert rc == 0 and "profile sources:" in out
    assert re.search(r"gpt-4\.1-nano: gpt-4\.1-nano \(.*knowledge: OpenAI, 'Introducing GPT-4\.1", out)
    rc, out, _ = _cli(capsys, "route", PRIMES, "--candidates", "gpt-4.1-nano,gpt-4-1106-preview", "--json")
    got = {c["candidate"]: c["profile_source"] for c in json.loads(out)["candidates"]}
    assert "MMLU 80.1%" in got["gpt-4.1-nano"] and got["gpt-4-1106-preview"] is None


# ------------------------------------------------------------------------------- session 6 audit


@pytest.mark.parametrize("bad", [None, b"hello", 42, [{"role": "user", "content": 42}],
                                 [{"role": "user", "content": [{"type": "text", "text": 5}]}]])
def test_a_prompt_of_the_wrong_type_is_a_clear_type_error(router: Router, bad) -> None:
    """Was an obscure TypeError from deep inside (None, a number in content) or, for bytes, routed silently."""
    for call in (router.assess, router.decide):
        with pytest.raises(TypeError, match=r"prompt must be a string|content must be a string"):
            call(bad, ["gpt-4o-mini", "o1@high"])


def test_a_lone_surrogate_in_the_prompt_is_routed(router: Router) -> None:
    """A Python str may hold one (JSON bodies cannot): the tokenizer refused it with a TypeError."""
    d = router.decide("abc\ud800def", ["gpt-4o-mini", "o1@high"])
    assert d.chosen.candidate in ("gpt-4o-mini", "o1@high")
    d = router.decide([{"role": "user", "content": [{"type": "text", "text": "x\udfffy"}]}], ["gpt-4o-mini"])
    assert d.chosen.candidate == "gpt-4o-mini"


def test_load_builds_the_token_vocabulary(router: Router) -> None:
    """So the first decision is not ~0.5 s slower than the rest (the vocabulary was built lazily in it)."""
    from tiergate.accounting.tokens import get_encoding

    get_encoding.cache_clear()
    fresh = Router.load()
    assert get_encoding.cache_info().currsize >= 1
    before = get_encoding.cache_info().misses
    fresh.decide("hello there", ["gpt-4o-mini"])
    assert get_encoding.cache_info().misses == before


@pytest.mark.parametrize("value", ["", " , "])
def test_route_with_empty_candidates_is_an_error(capsys, value) -> None:
    """Fell back to the default candidates and exited 0 (the gateway answers an empty list with a 400)."""
    rc, _, err = _cli(capsys, "route", "hi", "--candidates", value)
    assert rc == 2 and "--candidates is empty" in err


@SHIPPED
def test_train_on_your_file_alone_says_which_packaged_candidates_it_drops(tmp_path, capsys) -> None:
    """A router trained on a user's file knows only that file's candidates; it used to say nothing while
    o1, o3-mini, ... silently fell back to profiles on another scale."""
    f = _write_rows(tmp_path / "o.jsonl")
    rc, out, err = _cli(capsys, "router", "train", "--outcomes", str(f), "--out", str(tmp_path / "r"), "--quiet")
    assert rc == 0 and "saved a router for 2 candidates" in out
    assert re.search(r"outcome data for \d+ candidates these files do not score", err)
    assert "--outcomes ../shared/data/*.jsonl.gz YOUR_FILE" in err


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"candidates": "gpt-4o-mini"}, TypeError, "candidates must be a list"),
    ({"prompt": ["hi", "there"]}, TypeError, r"messages\[0\] must be a chat message"),
    ({"max_output_tokens": -1}, ValueError, "max_output_tokens must be >= 1"),
    ({"max_output_tokens": "100"}, TypeError, "max_output_tokens must be an integer"),
    ({"prompt_tokens": "9"}, TypeError, "prompt_tokens must be an integer"),
    ({"cost_cap_usd": float("nan")}, ValueError, "cost_cap_usd must be a finite number"),
    ({"cost_cap_usd": "0.01"}, TypeError, "cost_cap_usd must be a number"),
])
def test_python_api_arguments_of_the_wrong_kind_say_what_is_expected(router: Router, kwargs, exc, match) -> None:
    """A string of candidates was iterated letter by letter, a list of strings routed as an empty prompt, a
    negative output bound gave a negative cost, a NaN cap was accepted, strings gave a bare '<' TypeError."""
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", "hi")
    candidates = kwargs.pop("candidates", ["gpt-4o-mini", "o1@high"])
    with pytest.raises(exc, match=match):
        router.decide(prompt, candidates, **kwargs)


@SHIPPED
def test_a_fixed_protocol_plot_says_it_is_in_sample(tmp_path, monkeypatch) -> None:
    """The plot of the packaged router on its own training file said only "protocol fixed"."""
    import matplotlib.figure

    titles: list[str] = []
    real = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle",
                        lambda self, t, *a, **k: (titles.append(t), real(self, t, *a, **k))[1])
    f = _write_rows(tmp_path / "o.jsonl")
    r = tmp_path / "r"
    _cli_train = cli_main(["router", "train", "--outcomes", str(f), "--out", str(r), "--quiet"])
    assert _cli_train == 0
    assert cli_main(["router", "eval", "--outcomes", str(f), "--router", str(r), "--plot", str(tmp_path / "p.png"),
                     "--quiet"]) == 0
    assert titles and "in-sample: 40 of the prompts trained on" in titles[-1]


def test_a_model_the_catalogue_does_not_price_is_ranked_at_its_recorded_cost(tmp_path) -> None:
    """A router trained on a user's rows for a new model with recorded `cost_usd` ranked it after every priced
    candidate (NaN cost), while `router eval` scored it at its recorded price level: eval promised savings the
    served router never made (a cheaper, better new model lost to gpt-4o-mini under auto:cost)."""
    from tiergate.routing.quality import FitConfig, QualityModel

    rows = [OutcomeRow(id=f"u-{i}", source="user-file", prompt=f"Question {i}: what is {i} plus {i + 1}?", meta={},
                       outcomes={"acme-7b": Outcome(1.0, 0.00005), "gpt-4o-mini": Outcome(0.5 + 0.5 * (i % 2), 0.0003)})
            for i in range(40)]
    QualityModel(config=FitConfig(steps=60, rank=4)).fit(rows).save(tmp_path / "r")
    saved = json.loads((tmp_path / "r" / "quality.json").read_text())["recorded_cost_usd"]
    assert saved == pytest.approx({"acme-7b": 0.00005, "gpt-4o-mini": 0.0003})
    r = Router.load(tmp_path / "r")
    acme, mini = r.assess("Question 99: what is 99 plus 100?", ["acme-7b", "gpt-4o-mini"])
    assert (acme.cost_source, mini.cost_source) == ("recorded", "catalogue")
    assert acme.est_cost_usd == pytest.approx(0.00005)
    assert r.decide("Question 99: what is 99 plus 100?", ["acme-7b", "gpt-4o-mini"],
                    policy="auto:cost").chosen.candidate == "acme-7b"
    # with n choices every answer is billed
    assert r.assess("q", ["acme-7b"], choices=3)[0].est_cost_usd == pytest.approx(0.00015)


def test_a_client_output_limit_the_context_window_cannot_hold_rules_a_candidate_out(router: Router) -> None:
    """125k prompt tokens + max_tokens 16,000 on gpt-4o-mini (128k window) was routed there; the upstream
    refuses a prompt + output limit above the window."""
    prompt = "word " * 10
    small, large = router.assess(prompt, ["gpt-4o-mini", "o3-mini@low"], prompt_tokens=125_000,
                                 max_output_tokens=16_000)
    assert not small.eligible and "prompt + max_completion_tokens (141000 tokens)" in small.ineligible_reason
    assert large.eligible  # o3-mini: a 200k window
    ok = router.assess(prompt, ["gpt-4o-mini"], prompt_tokens=100_000, max_output_tokens=16_000)[0]
    assert ok.eligible


def test_a_one_panel_plot_keeps_its_whole_title_inside_the_figure(tmp_path, monkeypatch) -> None:
    """With more than two candidates (one panel, 7.5 inches) a long title was cut off at both ends."""
    import matplotlib.figure

    from tiergate.routing.plot import plot_evaluation

    inside: list[bool] = []
    real = matplotlib.figure.Figure.savefig

    def check(self, *a, **k):
        renderer = self.canvas.get_renderer()
        box, fig_box = self._suptitle.get_window_extent(renderer), self.bbox
        inside.append(box.x0 >= fig_box.x0 and box.x1 <= fig_box.x1)
        return real(self, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", check)
    rows = [OutcomeRow(id=f"p-{i}", source="synthetic", prompt=f"Problem {i}: sort {i} numbers.", meta={},
                       outcomes={c: Outcome(float((i + j) % 3 != 0)) for j, c in
                                 enumerate(("gpt-4o-mini", "o1@low", "o1@high"))}) for i in range(40)]
    ev = E.evaluate(rows, model_kind="mean-baseline", protocol="kfold", extra_benchmarks=False)
    ev.summary["sources"] = ["livecodebench-o1", "livecodebench-o3o4", "routerbench-mbpp", "zeroeval-crux"]
    plot_evaluation(ev, tmp_path / "p.png")
    assert inside == [True]
