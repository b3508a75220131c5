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


def test_routing_section_values_are_checked_at_load():
    def cfg(**routing):
        return parse_config({"models": [{"name": "o3-mini", "deployments": [{"provider": "sim"}]}],
                             "routing": {"candidates": ["o3-mini@low"], **routing}}, env={})

    # an empty effort used to load and then answer every `auto` request with a 400
    with pytest.raises(ConfigError, match=r"routing\.candidates\[0\]: empty effort after '@'"):
        cfg(candidates=["o3-mini@"])
    with pytest.raises(ConfigError, match=r"routing\.policies\.fast: quality target 'high' must be a number"):
        cfg(policies={"fast": "high"})  # was a ValueError traceback
    with pytest.raises(ConfigError, match=r"routing\.policies\.fast: quality target 1\.5"):
        cfg(policies={"fast": 1.5})
    with pytest.raises(ConfigError, match=r"routing\.default_policy: 'fastest' is not a policy; use one of "
                                          r"balanced, cost, fast, quality"):
        cfg(policies={"fast": 0.9}, default_policy="fastest")
    assert cfg(policies={"fast": 0.9}, default_policy="fast").routing.default_policy == "fast"
    with pytest.raises(ConfigError, match=r"routing\.escalate: expected true or false, got str 'maybe'"):
        cfg(escalate="maybe")  # was read as true
    with pytest.raises(ConfigError, match=r"routing\.router_dir: '/nope' is not a trained router directory"):
        cfg(router_dir="/nope")  # started, then refused every `auto` request


def _with(section: str, values: dict, model: int = 1) -> dict:
    d = yaml.safe_load(ACCEPTANCE)
    d["models"][model][section] = values
    return d


@pytest.mark.parametrize("section, key, value, allowed", [
    ("retry", "max_retries", -1, "an integer >= 0 and <= 10"),  # was: started, then every request 503
    ("retry", "max_retries", 11, "an integer >= 0 and <= 10"),
    ("retry", "max_retries", 1.5, "an integer >= 0 and <= 10"),
    ("retry", "max_retries", True, "an integer >= 0 and <= 10"),
    ("retry", "backoff_base_s", -1, "a number >= 0 and <= 60 seconds"),
    ("retry", "backoff_max_s", -0.5, "a number >= 0 and <= 300 seconds"),
    ("retry", "max_retry_after_s", -3, "a number >= 0 and <= 3600 seconds"),
    ("retry", "max_retry_after_s", "30s", "a number >= 0 and <= 3600 seconds"),
    ("circuit", "failures", 0, "an integer >= 1 and <= 1000000"),
    ("circuit", "failures", -2, "an integer >= 1 and <= 1000000"),
    ("circuit", "window_s", 0, "a number > 0 and <= 86400 seconds"),
    ("circuit", "cooldown_s", -5, "a number > 0 and <= 86400 seconds"),
    ("circuit", "cooldown_s", float("nan"), "a number > 0 and <= 86400 seconds"),
    ("timeouts", "first_token", 0, "a number > 0 and <= 86400 seconds (or null for no limit)"),
    ("timeouts", "total", 0, "a number > 0 and <= 86400 seconds (or null for no limit)"),
    ("timeouts", "connect", -1, "a number > 0 and <= 86400 seconds (or null for no limit)"),
    ("timeouts", "stream_idle", float("inf"), "a number > 0 and <= 86400 seconds (or null for no limit)"),
    ("timeouts", "total", 600_000, "a number > 0 and <= 86400 seconds (or null for no limit)"),
])
def test_numeric_settings_are_range_checked_at_load(section, key, value, allowed):
    with pytest.raises(ConfigError) as ei:
        parse_config(_with(section, {key: value}), env=ENV)
    path = f"models[1].{section}.{key}"
    assert str(ei.value).startswith(f"{path}: expected {allowed}, got "), str(ei.value)
    assert ei.value.path == path


@pytest.mark.parametrize("key, value", [("rpm", 0), ("tpm", -5), ("rpm", 2.5), ("weight", 0), ("weight", -1)])
def test_deployment_numbers_are_range_checked(key, value):
    d = yaml.safe_load(ACCEPTANCE)
    d["models"][1]["deployments"][0][key] = value
    with pytest.raises(ConfigError, match=rf"^models\[1\]\.deployments\[0\]\.{key}: expected an? (integer|number) >"):
        parse_config(d, env=ENV)


def test_backoff_max_below_base_is_refused():
    with pytest.raises(ConfigError, match=r"models\[1\]\.retry\.backoff_max_s: expected a number >= backoff_base_s"):
        parse_config(_with("retry", {"backoff_base_s": 2, "backoff_max_s": 1}), env=ENV)


def test_boundary_values_and_null_timeouts_are_accepted():
    d = _with("retry", {"max_retries": 0, "backoff_base_s": 0, "backoff_max_s": 0, "max_retry_after_s": 0})
    d["models"][1]["circuit"] = {"failures": 1, "window_s": 0.5, "cooldown_s": 0.1}
    d["models"][1]["timeouts"] = {"connect": None, "first_token": 0.05, "stream_idle": None, "total": None}
    d["models"][1]["deployments"][0].update(rpm=1, tpm=1, weight=0.5)
    m = parse_config(d, env=ENV).model("gpt-4o-mini")
    assert (m.retry.max_retries, m.retry.backoff_base_s, m.retry.max_retry_after_s) == (0, 0.0, 0.0)
    assert (m.circuit.failures, m.circuit.cooldown_s) == (1, 0.1)
    assert (m.timeouts.connect, m.timeouts.first_token, m.timeouts.total) == (None, 0.05, None)
    # a base above the default maximum raises the default maximum with it
    assert parse_config(_with("retry", {"backoff_base_s": 20}), env=ENV).model("gpt-4o-mini").retry.backoff_max_s == 20


@pytest.mark.parametrize("query", ["?key=AIzaSECRET123", "?api_key=SECRET123", "?api-key=SECRET123",
                                   "?token=SECRET123", "?sig=SECRET123", "?code=SECRET123",
                                   "?api-version=2024-10-21&Sig=SECRET123", "?API_KEY=SECRET123",
                                   # were accepted: a credential word inside the name, a fragment, a key-shaped path
                                   "?x-goog-api-key=SECRET123", "#SECRET123", "/sk-SECRET1234567890abcdef"])
def test_api_base_with_credentials_in_the_query_is_refused_without_echoing_them(query):
    d = yaml.safe_load(ACCEPTANCE)
    d["models"][0]["deployments"][0]["api_base"] = f"https://api.example.com/v1{query}"
    with pytest.raises(ConfigError) as ei:
        parse_config(d, env=ENV)
    msg = str(ei.value)
    assert msg.startswith("models[0].deployments[0].api_base: credentials in the URL are not allowed"), msg
    assert "SECRET123" not in msg and "env:NAME" in msg


def test_api_base_with_a_harmless_query_is_accepted():
    d = yaml.safe_load(ACCEPTANCE)
    d["models"][0]["deployments"][0]["api_base"] = "https://api.example.com/v1?api-version=2024-10-21&region=eu"
    assert parse_config(d, env=ENV).models[0].deployments[0].api_base.endswith("region=eu")


def test_responses_section_is_validated_at_load():
    base = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}]}
    cfg = parse_config({**base, "responses": {"retention_days": 7}}, env={})
    assert cfg.extra["responses"] == {"retention_days": 7}
    with pytest.raises(ConfigError, match=r"responses\.retention_days: expected a number of days > 0"):
        parse_config({**base, "responses": {"retention_days": 0}}, env={})


def test_routing_profiles_file_is_loaded_and_checked(tmp_path):
    """`routing.profiles` (the override file the packaged profiles.yaml promises) is a config key, checked
    at load and used by the gateway's router (it was 'unknown key')."""
    from tiergate.routing.router import Router

    good = tmp_path / "prof.yaml"
    good.write_text("published:\n  o3@high:\n    code: {score: 0.95, source: 'our own eval, 2026-11'}\n")

    def cfg(profiles):
        return parse_config({"models": [{"name": "o3", "deployments": [{"provider": "sim"}]}],
                             "routing": {"candidates": ["o3@high"], "profiles": profiles}}, env={})

    assert cfg(str(good)).routing.profiles == str(good)
    with pytest.raises(ConfigError, match=r"routing\.profiles: cannot read"):
        cfg(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("published:\n  o3@high:\n    code: {score: 1.5, source: x}\n")
    with pytest.raises(ConfigError, match=r"routing\.profiles: .*score must be a number in \[0, 1\]"):
        cfg(str(bad))
    r = Router.load(profiles=cfg(str(good)).routing.profiles)
    (a,) = r.assess("Write a Python function that returns the n-th prime number.", ["o3@high"])
    assert a.quality_source == "profile"


@pytest.mark.parametrize(("section", "value", "message"), [
    ("batches", {"concurency": 3}, r"batches\.concurency: unknown key"),  # was a start-up traceback
    ("batches", {"concurrency": "4"}, r"batches\.concurrency: expected an integer"),
    ("batches", {"concurrency": 0}, r"batches\.concurrency: expected a value > 0"),
    ("batches", {"forward_upstream": "yes"}, r"batches\.forward_upstream: expected true or false"),
    ("batches", {"poll_s": -1}, r"batches\.poll_s: expected a value > 0"),
    ("batches", {"lease_s": float("inf")}, r"batches\.lease_s: expected a finite number"),
    ("batches", {"run_workers": 1}, r"batches\.run_workers: expected true or false"),
    ("cache", {"ttl_s": float("inf")}, r"cache\.ttl_s: expected a positive number"),
    ("cache", {"ttl": 3}, r"cache\.ttl: unknown key"),  # was ignored
    ("cache", {"enabled": "maybe"}, r"cache\.enabled: expected true or false"),  # was on
    ("cache", {"max_entries": 1.5}, r"cache\.max_entries: expected a positive integer"),
    ("server", {"port": 4000}, r"server: unknown key"),  # read by nothing
    ("logging", {"level": "info"}, r"logging: unknown key"),
])
def test_cache_and_batches_sections_are_checked_at_load(section, value, message):
    raw = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}], section: value}
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, env={})


def test_valid_cache_and_batches_sections_load():
    raw = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
           "cache": {"enabled": False, "ttl_s": 60, "max_entries": 100},
           "batches": {"concurrency": 2, "poll_s": 0.1, "rate_limit_retries": 0, "forward_upstream": True}}
    cfg = parse_config(raw, env={})
    assert cfg.extra["cache"]["ttl_s"] == 60 and cfg.extra["batches"]["rate_limit_retries"] == 0


def test_catalog_file_overrides_prices_for_the_gateway(tmp_path):
    """docs/catalog.md's override file reaches the gateway through `catalog_file` (it could only be passed
    to `Catalog.load(path)` in Python): your prices, your fine-tuned model, errors at start-up."""
    from tiergate.server.gateway import resolve_catalog

    over = tmp_path / "mine.yaml"
    over.write_text("models:\n  gpt-4o-mini:\n    prices: {input: 0.165, output: 0.66}\n"
                    "    sources: {prices: 'Azure price sheet, 2026-11-01'}\n"
                    "  acme-ft:\n    extends: gpt-4o-mini\n    prices: {input: 0.30, output: 1.20}\n"
                    "    sources: {prices: 'OpenAI fine-tuning price list, 2026-11-01'}\n")
    raw = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]},
                      {"name": "acme-ft", "deployments": [{"provider": "sim"}]}], "catalog_file": str(over)}
    cfg = parse_config(raw, env={})
    infos, unpriced = resolve_catalog(cfg, cfg.load_catalog())
    assert infos["gpt-4o-mini"].input_price == 0.165 and infos["acme-ft"].output_price == 1.20 and unpriced == []
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  o1:\n    prices: {input: -1}\n")
    with pytest.raises(ConfigError, match=r"catalog_file: .*models\.o1\.prices\.input: expected a finite number >= 0"):
        parse_config({**raw, "catalog_file": str(bad)}, env={})
    for price in (".inf", ".nan"):  # answered with cost "nan" and wedged the ledger's writes
        bad.write_text(f"models:\n  gpt-4o-mini:\n    prices: {{input: {price}}}\n")
        with pytest.raises(ConfigError, match=r"prices\.input: expected a finite number >= 0"):
            parse_config({**raw, "catalog_file": str(bad)}, env={})
    with pytest.raises(ConfigError, match=r"catalog_file: catalogue file .*nope.yaml not found"):
        parse_config({**raw, "catalog_file": str(tmp_path / "nope.yaml")}, env={})


def test_routing_profiles_of_the_wrong_shape_are_named_errors(tmp_path):
    def cfg(text):
        f = tmp_path / "p.yaml"
        f.write_text(text)
        return parse_config({"models": [{"name": "o3", "deployments": [{"provider": "sim"}]}],
                             "routing": {"candidates": ["o3@high"], "profiles": str(f)}}, env={})

    with pytest.raises(ConfigError, match=r"routing\.profiles: .*expected a mapping"):
        cfg("- 1\n")  # was an AttributeError traceback
    with pytest.raises(ConfigError, match=r"routing\.profiles: .*o3@high\.code\.score must be a number in \[0, 1\], got 'high'"):
        cfg("published:\n  o3@high:\n    code: {score: high, source: x}\n")  # was Python's float() text


@pytest.mark.parametrize(("text", "message"), [
    ("models:\n  - name: x\n    deployments: [{provider: sim}\nstorage: x\n",
     ("line 4, column 1: not valid YAML: expected ',' or ']', but got '<scalar>' (while parsing a flow sequence "
      "started at line 3, column 18)")),
    ("a: b: c\n", "line 1, column 5: not valid YAML: mapping values are not allowed here"),
    ("models:\n\t- name: x\n", "line 2, column 1: not valid YAML: found character '\\t' that cannot start any token"),
])
def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path, text, message):
    """It was PyYAML's multi-line dump, quoting `in "<unicode string>"` instead of the file."""
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(path, env={})
    msg = str(ei.value)
    assert msg.startswith(f"{path}, {message}") and "\n" not in msg and "unicode string" not in msg


def test_a_config_path_that_is_no_text_file_is_a_config_error(tmp_path):
    """A directory (IsADirectoryError) or a binary file (UnicodeDecodeError) was a traceback."""
    with pytest.raises(ConfigError, match=f"^config file {tmp_path} is a directory: pass the YAML config file itself$"):
        load_config(tmp_path, env={})
    binary = tmp_path / "tiergate"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\xd0\xff\xfe")
    with pytest.raises(ConfigError, match=f"^config file {binary} is not a UTF-8 text file"):
        load_config(binary, env={})


def test_serve_with_a_directory_or_binary_config_is_one_line(tmp_path):
    import subprocess
    import sys

    binary = tmp_path / "prog"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\xd0\xff\xfe")
    for path, want in ((tmp_path, "is a directory"), (binary, "is not a UTF-8 text file")):
        out = subprocess.run([sys.executable, "-m", "tiergate.cli", "serve", "--config", str(path)],
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
        assert out.stderr.startswith(f"tiergate: configuration error: config file {path} {want}")


def test_a_literal_master_key_error_shows_the_master_key_form():
    """It suggested `api_key: env:OPENAI_API_KEY` for a literal `master_key:`."""
    with pytest.raises(ConfigError) as e:
        parse_config({"models": [{"name": "m", "deployments": [{"provider": "sim"}]}], "master_key": "sk-literal"},
                     env={})
    assert "`master_key: env:TIERGATE_MASTER_KEY`" in str(e.value)
