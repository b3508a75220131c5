"""`tiergate route --config FILE` routes as the gateway serving that config does (F5): the config's
`routing.policies` and `default_policy`, a cost cap alone = the best predicted quality under the cap, any
policy the config defines (`--policy fast`), a cost cap that must be > 0 as the server requires, a config
whose `env:` API keys are not exported (routing needs no secret), and its `routing.router_dir`."""

from __future__ import annotations

import json

import pytest
import yaml

from tiergate.cli import main as cli_main
from tiergate.routing.quality import ARTIFACTS_DIR

pytestmark = pytest.mark.skipif(not (ARTIFACTS_DIR / "quality.npz").exists(), reason="router artefacts not trained")

PRIMES = "Prove there are infinitely many primes."
MODELS = ("gpt-4o-mini", "o3-mini", "o1")
CANDIDATES = ["gpt-4o-mini", "o3-mini@low", "o3-mini@high", "o1@high"]
CAP = 0.03  # gpt-4o-mini and o3-mini@low fit under it for PRIMES; balanced and best-quality pick differently
UNSET = "TIERGATE_TEST_ROUTE_UNSET_KEY"


def _config(tmp_path, provider: dict | None = None, **routing) -> tuple[dict, str]:
    raw = {"models": [{"name": m, "deployments": [dict(provider or {"provider": "sim"})]} for m in MODELS],
           "routing": {"candidates": CANDIDATES, "default_policy": "quality",
                       "policies": {"quality": 0.9, "fast": 0.5}, **routing},
           "storage": f"sqlite:///{tmp_path / 'ledger.db'}"}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return raw, str(path)


def _route(capsys, *args: str) -> tuple[int, dict | None, str]:
    rc = cli_main(["route", PRIMES, *args, "--json"])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if rc == 0 else None), out.err


def test_route_applies_the_configs_default_policy_and_policy_targets(tmp_path, capsys) -> None:
    _, cfg = _config(tmp_path)
    rc, out, err = _route(capsys, "--config", cfg)
    assert rc == 0, err
    assert (out["policy"], out["quality_target"]) == ("quality", 0.9)  # default_policy, routing.policies
    for policy, target in (("fast", 0.5), ("auto:fast", 0.5), ("balanced", 0.95), ("auto:cost", 0.85)):
        rc, out, err = _route(capsys, "--config", cfg, "--policy", policy)
        assert rc == 0, err
        assert (out["policy"], out["quality_target"]) == (policy.removeprefix("auto:"), target)
    rc, out, err = _route(capsys, "--config", cfg, "--policy", "fast", "--quality-target", "0.7")
    assert rc == 0 and out["quality_target"] == 0.7
    rc, _, err = _route(capsys, "--config", cfg, "--policy", "nope")
    assert rc == 2 and "unknown routing policy 'nope'" in err and "auto:fast" in err
    # without a config: the built-in table, balanced by default, and no `fast`
    rc, out, err = _route(capsys, "--candidates", ",".join(CANDIDATES))
    assert rc == 0 and (out["policy"], out["quality_target"]) == ("balanced", 0.95)
    rc, _, err = _route(capsys, "--candidates", ",".join(CANDIDATES), "--policy", "fast")
    assert rc == 2 and "unknown routing policy 'fast'" in err


def test_route_with_a_cost_cap_alone_picks_the_best_quality_under_the_cap(tmp_path, capsys) -> None:
    _, cfg = _config(tmp_path)
    rc, out, err = _route(capsys, "--config", cfg, "--max-cost-usd", str(CAP))
    assert rc == 0, err
    assert out["policy"] is None and out["quality_target"] is None and out["cost_cap_usd"] == CAP
    fits = [c for c in out["candidates"] if c["eligible"] and c["est_cost_usd"] <= CAP]
    assert len(fits) >= 2
    best = max(fits, key=lambda c: c["predicted_quality"])
    assert out["chosen"] == best["candidate"] and "best predicted quality under cap" in out["reason"]
    # a named policy keeps its target rule under the cap
    rc, out, err = _route(capsys, "--config", cfg, "--max-cost-usd", str(CAP), "--policy", "fast")
    assert rc == 0 and (out["policy"], out["quality_target"]) == ("fast", 0.5)
    assert out["chosen"] == min(fits, key=lambda c: c["est_cost_usd"])["candidate"]
    # the human output says policy none, not None
    assert cli_main(["route", PRIMES, "--config", cfg, "--max-cost-usd", str(CAP)]) == 0
    assert "(policy none, quality target none, cost cap $0.0300)" in capsys.readouterr().out


@pytest.mark.parametrize("cap", ["0", "-1", "nan", "inf"])
def test_route_refuses_a_cost_cap_that_is_not_positive(cap, capsys) -> None:
    rc, _, err = _route(capsys, "--candidates", "gpt-4o-mini", "--max-cost-usd", cap)
    assert rc == 2 and "--max-cost-usd must be a positive number of dollars" in err


def test_route_reads_a_config_whose_api_keys_are_not_set(tmp_path, capsys, monkeypatch) -> None:
    from tiergate.config import ConfigError, load_config

    monkeypatch.delenv(UNSET, raising=False)
    _, cfg = _config(tmp_path, {"provider": "openai", "api_key": f"env:{UNSET}"})
    with pytest.raises(ConfigError, match=UNSET):  # the gateway needs the key ...
        load_config(cfg)
    rc, out, err = _route(capsys, "--config", cfg)  # ... routing does not
    assert rc == 0, err
    assert [c["candidate"] for c in out["candidates"]] == CANDIDATES and out["quality_target"] == 0.9
    # the config is still validated
    (tmp_path / "bad.yaml").write_text("models:\n  - name: x\n    deployments: [{provider: openai, api_key: sk-1}]\n")
    rc, _, err = _route(capsys, "--config", str(tmp_path / "bad.yaml"))
    assert rc == 2 and "api_key" in err and "sk-1" not in err


def test_route_uses_the_configs_router_dir(tmp_path, capsys) -> None:
    _, cfg = _config(tmp_path, router_dir=str(tmp_path / "no-router-here"))
    rc, _, err = _route(capsys, "--config", cfg)  # checked when the config loads, as the gateway does
    assert rc == 2 and "routing.router_dir" in err and "is not a trained router directory" in err
    _, cfg = _config(tmp_path, router_dir=str(ARTIFACTS_DIR))
    rc, _, err = _route(capsys, "--config", cfg)
    assert rc == 0, err
    rc, _, err = _route(capsys, "--config", cfg, "--router", str(tmp_path / "nope"))  # --router wins
    assert rc == 2 and f"no trained router at {tmp_path / 'nope'}" in err


def test_route_agrees_with_the_gateway_serving_the_same_config(tmp_path, capsys) -> None:
    import openai

    from tests.helpers import running_gateway

    raw, cfg = _config(tmp_path)
    cases = [  # (request model, tiergate options) -> the same on the command line
        ("auto", {}, []),
        ("auto:fast", {}, ["--policy", "fast"]),
        ("auto:balanced", {}, ["--policy", "balanced"]),
        ("auto", {"max_cost_usd": CAP}, ["--max-cost-usd", str(CAP)]),
        ("auto:balanced", {"max_cost_usd": CAP}, ["--policy", "balanced", "--max-cost-usd", str(CAP)]),
        ("auto", {"quality_target": 0.99}, ["--quality-target", "0.99"]),
    ]
    with running_gateway(raw) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=20)
        for model, opts, args in cases:
            resp = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": PRIMES}], extra_body={"tiergate": opts})
            served = dict(p.split("=", 1) for p in resp.headers["x-tiergate-route"].split("; "))
            rc, out, err = _route(capsys, "--config", cfg, *args)
            assert rc == 0, err
            assert out["chosen"] == served["candidate"], (model, opts)
            assert (out["policy"] or "none") == served["policy"], (model, opts)
        with pytest.raises(openai.BadRequestError, match="max_cost_usd"):
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": PRIMES}],
                                           extra_body={"tiergate": {"max_cost_usd": 0}})
    assert _route(capsys, "--config", cfg, "--max-cost-usd", "0")[0] == 2


def _profiles_file(tmp_path, score: float = 0.123) -> str:
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"gpt-4.1-nano": {
        "knowledge": {"score": score, "source": "test override"}, "math": {"score": score, "source": "test override"},
        "code": {"score": score, "source": "test override"}}}}))
    return str(path)


def test_route_uses_a_profiles_override_from_the_flag_or_the_config(tmp_path, capsys) -> None:
    cands = "gpt-4.1-nano,gpt-4o-mini"
    rc, plain, _ = _route(capsys, "--candidates", cands)
    assert rc == 0 and "test override" not in plain["candidates"][0]["profile_source"]  # the packaged one
    override = _profiles_file(tmp_path)
    rc, flag, _ = _route(capsys, "--candidates", cands, "--profiles", override)
    nano = flag["candidates"][0]
    assert rc == 0 and nano["quality_source"] == "profile" and "test override" in nano["profile_source"]
    assert nano["predicted_quality"] < 0.3 < plain["candidates"][0]["predicted_quality"]
    # the config's routing.profiles, as the gateway's router uses it; --profiles wins over it
    raw, cfg = _config(tmp_path, profiles=override)
    raw["models"].append({"name": "gpt-4.1-nano", "deployments": [{"provider": "sim"}]})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    rc, conf, err = _route(capsys, "--config", cfg, "--candidates", cands)
    assert rc == 0, err
    assert conf["candidates"][0]["predicted_quality"] == pytest.approx(nano["predicted_quality"])
    other = tmp_path / "other"
    other.mkdir()
    rc, both, _ = _route(capsys, "--config", cfg, "--candidates", cands, "--profiles", _profiles_file(other, 0.9))
    assert rc == 0 and both["candidates"][0]["predicted_quality"] > 0.5
    rc, _, err = _route(capsys, "--candidates", cands, "--profiles", str(tmp_path / "missing.yaml"))
    assert rc == 2 and "--profiles" in err and "missing.yaml" in err


def test_route_prices_with_the_configs_catalog_file(tmp_path, capsys) -> None:
    """A fine-tuned model defined in the config's `catalog_file` is priced by `tiergate route --config` as the
    gateway prices it (it showed cost n/a and a different choice)."""
    ft = tmp_path / "ft.yaml"
    ft.write_text("models:\n  acme-ft:\n    extends: gpt-4o-mini\n    prices: {input: 0.30, output: 1.20}\n"
                  "    sources: {prices: 'OpenAI fine-tuning price list, 2026-11-01'}\n")
    raw = {"models": [{"name": "myft", "catalog": "acme-ft", "deployments": [{"provider": "sim"}]},
                      {"name": "o3-mini", "deployments": [{"provider": "sim"}]}],
           "catalog_file": str(ft), "routing": {"candidates": ["myft", "o3-mini@low"]},
           "storage": f"sqlite:///{tmp_path / 'ledger.db'}"}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    rc, out, err = _route(capsys, "--config", str(path))
    assert rc == 0, err
    ft_row = next(c for c in out["candidates"] if c["candidate"] == "myft")
    assert ft_row["est_cost_usd"] is not None and ft_row["est_cost_usd"] > 0
