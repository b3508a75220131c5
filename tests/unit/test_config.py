"""Config parsing: the acceptance shape parses, and every error names the key and the fix."""

from __future__ import annotations

import pytest
import yaml

from tiergate.config import ConfigError, load_config, parse_config

ACCEPTANCE = """
models:
  - name: o3-mini
    deployments:
      - provider: openai
        api_base: https://api.openai.com/v1
        api_key: env:OPENAI_API_KEY
  - name: gpt-4o-mini
    deployments:
      - provider: sim
  - name: team-default
    catalog: gpt-4o
    deployments:
      - provider: azure
        api_base: https://example.openai.azure.com
        deployment: gpt4o-prod
        api_version: "2024-10-21"
        api_key: env:AZURE_OPENAI_API_KEY
storage: sqlite:///./tiergate.db
"""
ENV = {"OPENAI_API_KEY": "sk-test-123", "AZURE_OPENAI_API_KEY": "az-test-456"}


def test_acceptance_shape_parses():
    c = parse_config(yaml.safe_load(ACCEPTANCE), env=ENV)
    assert [m.name for m in c.models] == ["o3-mini", "gpt-4o-mini", "team-default"]
    team = c.model("team-default")
    assert team.catalog == "gpt-4o"
    dep = team.deployments[0]
    assert (dep.provider, dep.deployment, dep.api_version) == ("azure", "gpt4o-prod", "2024-10-21")
    assert dep.api_key.value == "az-test-456"
    assert "az-test-456" not in repr(c), "a secret leaked into a repr"
    assert c.storage == "sqlite:///./tiergate.db"


@pytest.mark.parametrize("mutate, path, hint", [
    (lambda d: d["models"][0]["deployments"][0].update(provider="opnai"), "models[0].deployments[0].provider",
     "Choose one of"),
    (lambda d: d["models"][0]["deployments"][0].update(api_key="sk-literal"), "models[0].deployments[0].api_key",
     "env:"),
    (lambda d: d["models"][0]["deployments"][0].update(api_key="env:NOPE_NOT_SET"),
     "models[0].deployments[0].api_key", "NOPE_NOT_SET"),
    (lambda d: d["models"][1].update(colour="red"), "models[1].colour", "Allowed here"),
    (lambda d: d["models"][2]["deployments"][0].pop("api_base"), "models[2].deployments[0].api_base", "required"),
    (lambda d: d["models"][1].update(fallbacks=["gpt-5"]), "models[1].fallbacks[0]", "not a configured model"),
    (lambda d: d.update(storage="mysql://x"), "storage", "postgresql"),
    (lambda d: d["models"][1].update(name="auto"), "models[1].name", "reserved"),
    (lambda d: d["models"][0]["deployments"][0].update(api_base="https://u:p@api.openai.com/v1"),
     "models[0].deployments[0].api_base", "credentials"),
])
def test_errors_name_the_key_and_the_fix(mutate, path, hint):
    d = yaml.safe_load(ACCEPTANCE)
    mutate(d)
    with pytest.raises(ConfigError) as ei:
        parse_config(d, env=ENV)
    msg = str(ei.value)
    assert msg.startswith(path + ":"), msg
    assert hint in msg
    assert "sk-literal" not in msg


def test_embedded_defaults_use_sim_without_key():
    c = load_config(None, env={})
    assert {d.provider for m in c.models for d in m.deployments} == {"sim"}
    c2 = load_config(None, env={"OPENAI_API_KEY": "sk-x"})
    assert {d.provider for m in c2.models for d in m.deployments} == {"openai"}


def test_missing_file_is_actionable(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_explicit_catalog_typo_is_a_config_error_and_implicit_unknown_is_unpriced():
    from tiergate.catalog.catalog import Catalog
    from tiergate.server.gateway import resolve_catalog

    cat = Catalog.load()
    typo = parse_config({"models": [{"name": "alias", "catalog": "gpt-4oo", "deployments": [{"provider": "sim"}]}]},
                        env={})
    with pytest.raises(ConfigError, match=r"models\[0\]\.catalog: 'gpt-4oo' .*Did you mean: gpt-4o"):
        resolve_catalog(typo, cat)
    local = parse_config({"models": [{"name": "llama-local", "deployments": [{"provider": "sim"}]},
                                     {"name": "team", "catalog": "gpt-4o", "deployments": [{"provider": "sim"}]}]},
                         env={})
    infos, unpriced = resolve_catalog(local, cat)
    assert unpriced == ["llama-local"]
    assert infos["team"].input_price == 2.5


def test_routing_candidate_efforts_are_checked_against_the_catalogue_at_start():
    from tiergate.catalog.catalog import Catalog
    from tiergate.server.gateway import resolve_catalog

    cat = Catalog.load()

    def cfg(cands: list[str]):
        return parse_config({"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]},
                                        {"name": "o3-mini", "deployments": [{"provider": "sim"}]},
                                        {"name": "llama-local", "deployments": [{"provider": "sim"}]}],
                             "routing": {"candidates": cands}}, env={})

    with pytest.raises(ConfigError, match=r"routing\.candidates\[1\]: 'gpt-4o-mini@high': gpt-4o-mini takes no "
                                          r"reasoning effort"):
        resolve_catalog(cfg(["o3-mini@low", "gpt-4o-mini@high"]), cat)
    with pytest.raises(ConfigError, match=r"routing\.candidates\[0\]: 'o3-mini@minimal': o3-mini has no reasoning "
                                          r"effort 'minimal' \(efforts: low, medium, high\)"):
        resolve_catalog(cfg(["o3-mini@minimal"]), cat)
    _infos, unpriced = resolve_catalog(cfg(["o3-mini@high", "gpt-4o-mini", "llama-local@high"]), cat)
    assert unpriced == ["llama-local"]  # not in the catalogue: its efforts are unknown, so not checked
