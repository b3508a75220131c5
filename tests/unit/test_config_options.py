"""`deployments[].options` are checked at start-up against each provider's table (config.PROVIDER_OPTIONS):
unknown names, wrong types and values out of range are configuration errors naming the option. They used
to pass: `latency_ms: "slow"` failed the start-up with a traceback, `tokenizer: nope_base` failed every
request with a 502, `bogus: 1`, `failure_rate: 2`, `fail_status: [999]` were accepted and azure's
`auth: bearr` silently meant api-key auth."""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tiergate.config import PROVIDER_OPTIONS, ConfigError, parse_config

SRC = Path(__file__).resolve().parents[2] / "src" / "tiergate"
ENV = {"K": "sk-test-123"}
BASE = {
    "sim": {"provider": "sim"},
    "openai": {"provider": "openai", "api_key": "env:K"},
    "openai_compatible": {"provider": "openai_compatible", "api_base": "http://127.0.0.1:8000/v1"},
    "azure": {"provider": "azure", "api_base": "https://x.openai.azure.com", "deployment": "d", "api_key": "env:K"},
    "anthropic": {"provider": "anthropic", "api_key": "env:K"},
}


def _load(provider: str, options: dict) -> dict:
    cfg = parse_config({"models": [{"name": "gpt-4o-mini", "deployments": [{**BASE[provider], "options": options}]}]},
                       env=ENV)
    return cfg.models[0].deployments[0].options


@pytest.mark.parametrize(("provider", "options", "path", "message"), [
    ("sim", {"latency_ms": "slow"}, "latency_ms", "expected a number >= 0 and <= 86400000 milliseconds, got 'slow'"),
    ("sim", {"tokenizer": "nope_base"}, "tokenizer", "expected one of o200k_base, cl100k_base, got 'nope_base'"),
    ("sim", {"failure_rate": 2}, "failure_rate", "expected a number >= 0 and <= 1, got 2"),
    ("sim", {"fail_status": [999]}, "fail_status", "expected an HTTP status 400-599 or a non-empty list"),
    ("sim", {"fail_status": []}, "fail_status", "expected an HTTP status 400-599"),
    ("sim", {"fail_status": "500"}, "fail_status", "expected an HTTP status 400-599"),
    ("sim", {"reasoning": "yes"}, "reasoning", "expected true or false, got 'yes'"),
    ("sim", {"completion_tokens": 1.5}, "completion_tokens", "expected an integer >= 1"),
    ("sim", {"chunk_tokens": 0}, "chunk_tokens", "expected an integer >= 1"),
    ("sim", {"tokens_per_s": -1}, "tokens_per_s", "expected a number >= 0"),
    ("sim", {"seed": [1]}, "seed", "expected a string or an integer"),
    ("sim", {"latency_ms": float("nan")}, "latency_ms", "expected a number"),
    ("azure", {"auth": "bearr"}, "auth", "expected one of api-key, bearer, got 'bearr'"),
    ("azure", {"responses_api_version": 20250401}, "responses_api_version", "expected a non-empty string"),
    ("anthropic", {"max_output_tokens": 0}, "max_output_tokens", "expected an integer >= 1"),
    ("openai", {"input_price": -1}, "input_price", "expected a number >= 0"),
    ("openai", {"output_price": "cheap"}, "output_price", "expected a number >= 0"),
])
def test_a_bad_option_value_is_a_named_error(provider, options, path, message):
    with pytest.raises(ConfigError) as ei:
        _load(provider, options)
    assert ei.value.path == f"models[0].deployments[0].options.{path}"
    assert str(ei.value).startswith(f"models[0].deployments[0].options.{path}: {message}")


@pytest.mark.parametrize("provider", sorted(BASE))
def test_an_unknown_option_names_itself_and_lists_the_known_ones(provider):
    with pytest.raises(ConfigError) as ei:
        _load(provider, {"bogus": 1})
    msg = str(ei.value)
    assert msg.startswith(f"models[0].deployments[0].options.bogus: unknown option for provider {provider}.")
    known = sorted({"input_price", "output_price", *PROVIDER_OPTIONS[provider]})
    assert f"Known options for {provider}: {', '.join(known)}" in msg


def test_a_mistyped_option_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"options\.latncy_ms: unknown option for provider sim\. Did you mean "
                       r"latency_ms\?"):
        _load("sim", {"latncy_ms": 200})
    with pytest.raises(ConfigError, match="Did you mean max_output_tokens"):
        _load("anthropic", {"max_output_token": 100})
    with pytest.raises(ConfigError, match="unknown option for provider openai"):  # an anthropic option on openai
        _load("openai", {"max_output_tokens": 100})


def test_valid_options_load_as_written():
    sim = {"latency_ms": 1.5, "tokens_per_s": 80, "completion_tokens": 64, "reasoning_tokens": 0, "reasoning": True,
           "failure_rate": 0.1, "fail_status": 503, "retry_after_s": 1, "seed": 42, "tokenizer": "cl100k_base",
           "chunk_tokens": 2, "input_price": 0.15, "output_price": 0.6}
    assert _load("sim", sim) == sim
    assert _load("sim", {"fail_status": [500, 429], "seed": "abc"}) == {"fail_status": [500, 429], "seed": "abc"}
    assert _load("azure", {"auth": "bearer", "responses_api_version": "2025-04-01-preview"})["auth"] == "bearer"
    assert _load("azure", {"auth": "api-key"}) == {"auth": "api-key"}
    # YAML reads an unquoted date as a date: it is the api-version string the provider sends
    assert _load("azure", {"responses_api_version": datetime.date(2025, 4, 1)}) == {"responses_api_version": "2025-04-01"}
    assert _load("anthropic", {"max_output_tokens": 8192}) == {"max_output_tokens": 8192}
    assert _load("openai_compatible", {}) == {}


def test_a_provider_registered_elsewhere_keeps_its_own_options():
    from tiergate.providers.registry import register

    @register("test_options_plugin")
    class Plugin:  # only the name is looked at by the config
        pass

    raw = {"models": [{"name": "m", "deployments": [{"provider": "test_options_plugin",
                                                     "options": {"own_setting": "x", "input_price": 1}}]}]}
    assert parse_config(raw, env={}).models[0].deployments[0].options == {"own_setting": "x", "input_price": 1}
    raw["models"][0]["deployments"][0]["options"]["input_price"] = "free"  # the common ones are still checked
    with pytest.raises(ConfigError, match=r"options\.input_price: expected a number"):
        parse_config(raw, env={})


def _options_read_by_the_code() -> set[str]:
    """Every option name read from `Deployment.options` in providers/*.py and dispatch/*.py."""
    names: set[str] = set()
    pattern = re.compile(r"(?:options|\bo|options or \{\}\))\.get\(\s*\"(\w+)\"|\"(\w+)\" in o\b")
    for f in [*(SRC / "providers").glob("*.py"), *(SRC / "dispatch").glob("*.py")]:
        if f.name == "sim_schema.py":  # JSON-schema `anyOf` options, not deployment options
            continue
        for m in pattern.finditer(f.read_text()):
            names.add(m.group(1) or m.group(2))
    return names


def test_the_table_covers_every_option_the_code_reads():
    read = _options_read_by_the_code()
    assert {"latency_ms", "tokenizer", "auth", "responses_api_version", "max_output_tokens", "input_price"} <= read
    table = {"input_price", "output_price"} | {n for t in PROVIDER_OPTIONS.values() for n in t}
    assert read <= table, read - table
    from tiergate.providers.registry import _BUILTIN

    assert set(PROVIDER_OPTIONS) == set(_BUILTIN)  # a new built-in provider gets a row (even an empty one)


def test_serve_refuses_a_bad_option_with_one_line(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text("models:\n  - name: gpt-4o-mini\n    deployments: [{provider: sim, options: {latency_ms: slow}}]\n"
                    f"storage: sqlite:///{tmp_path / 'tg.db'}\n")
    out = subprocess.run([sys.executable, "-m", "tiergate.cli", "serve", "--config", str(path), "--port", "1"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == ("tiergate: configuration error: models[0].deployments[0].options.latency_ms: "
                                  "expected a number >= 0 and <= 86400000 milliseconds, got 'slow'")
    assert not (tmp_path / "tg.db").exists()
