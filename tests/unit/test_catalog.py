"""The model catalogue: packaged data, sources, lookups, overrides and validation errors."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest

from tiergate.catalog import Catalog, CatalogError, ModelInfo

REFERENCE = Path("/work/shared/reference/model_prices_and_context_window.json")
HISTORY = Path("/work/shared/reference/model_prices_history_selected.json")

REQUIRED = [
    "o1", "o1-preview", "o1-mini", "o3-mini", "o3", "o4-mini", "gpt-4o", "gpt-4o-2024-05-13", "gpt-4o-mini",
    "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "claude-3-5-sonnet", "claude-3-5-haiku", "claude-3-7-sonnet",
    "claude-3-haiku", "gpt-4-turbo", "gpt-3.5-turbo", "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1",
    "deepseek-v3",
]
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return Catalog.load()


def test_packaged_catalogue_has_every_required_model(cat: Catalog) -> None:
    for name in REQUIRED:
        info = cat.get(name)
        assert info is not None and info.name == name, name
    assert cat.names()[0] == "o1"  # file order
    assert len(cat) == len(cat.names()) >= len(REQUIRED)


def test_every_figure_group_names_a_dated_source(cat: Catalog) -> None:
    for info in cat:
        for group in ("prices", "limits"):
            assert DATE.search(info.sources[group]), (info.name, group, info.sources[group])
        assert info.sources["capabilities"] and info.sources["params"]


def test_prices_and_limits(cat: Catalog) -> None:
    o3mini = cat["o3-mini"]
    assert (o3mini.input_price, o3mini.cached_input_price, o3mini.output_price) == (1.10, 0.55, 4.40)
    assert (o3mini.context_window, o3mini.max_output_tokens) == (200_000, 100_000)
    assert o3mini.batch_price_factor == 0.5 and o3mini.tokenizer == "o200k_base" and o3mini.family == "openai"
    old = cat["gpt-4o-2024-05-13"]
    assert (old.input_price, old.output_price, old.max_output_tokens) == (5.0, 15.0, 4096)
    assert old.cached_input_price == old.input_price  # no cached price listed: billed as input
    assert not old.capabilities.json_schema and cat["gpt-4o"].capabilities.json_schema
    sonnet = cat["claude-3-5-sonnet"]
    assert sonnet.family == "anthropic" and sonnet.cache_write_price == 3.75 and sonnet.cached_input_price == 0.30
    assert cat["gpt-4-turbo"].tokenizer == "cl100k_base"
    assert cat["gpt-3.5-turbo-1106"].input_price == 1.0 and cat["gpt-3.5-turbo"].input_price == 0.5


def test_parameter_rules_and_capabilities(cat: Catalog) -> None:
    o1mini = cat["o1-mini"]
    assert o1mini.system_role_as == "user-fold" and o1mini.output_limit_param == "max_completion_tokens"
    assert not o1mini.capabilities.tools and not o1mini.capabilities.json_schema
    assert o1mini.fixed_params["temperature"] == 1 and o1mini.capabilities.reasoning_efforts == ()
    o3mini = cat["o3-mini"]
    assert o3mini.system_role_as == "developer" and "temperature" in o3mini.unsupported_params
    assert o3mini.capabilities.reasoning_efforts == ("low", "medium", "high") and o3mini.reasoning
    assert not o3mini.capabilities.vision and cat["o3"].capabilities.vision
    assert "stop" in cat["o3"].unsupported_params and "stop" not in o3mini.unsupported_params
    assert cat["gpt-4o"].system_role_as == "system" and cat["gpt-4o"].output_limit_param == "either"
    assert cat["mixtral-8x7b-instruct-v0.1"].output_limit_param == "max_tokens"
    assert cat["gpt-4o"].capabilities.has("tools") and not cat["gpt-4o"].capabilities.has("reasoning_effort")


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared reference files not present")
def test_figures_match_the_reference_files(cat: Catalog) -> None:
    now = json.loads(REFERENCE.read_text())
    hist = json.loads(HISTORY.read_text())["versions"]["1.81.0"]["entries"]
    checks = {  # catalogue name -> (reference entry, which file)
        "o1": ("o1", now), "o3-mini": ("o3-mini", now), "o3": ("o3", now), "o4-mini": ("o4-mini", now),
        "gpt-4o": ("gpt-4o", now), "gpt-4o-2024-05-13": ("gpt-4o-2024-05-13", now),
        "gpt-4o-mini": ("gpt-4o-mini", now), "gpt-4.1": ("gpt-4.1", now), "gpt-4.1-mini": ("gpt-4.1-mini", now),
        "gpt-4.1-nano": ("gpt-4.1-nano", now), "gpt-4-turbo": ("gpt-4-turbo", now),
        "gpt-3.5-turbo": ("gpt-3.5-turbo", now), "gpt-4-1106-preview": ("gpt-4-1106-preview", now),
        "gpt-3.5-turbo-1106": ("gpt-3.5-turbo-1106", now), "deepseek-v3": ("deepseek/deepseek-v3", now),
        "o1-preview": ("o1-preview", hist), "o1-mini": ("o1-mini", hist),
        "claude-3-5-sonnet": ("claude-3-5-sonnet-20241022", hist),
        "claude-3-5-haiku": ("claude-3-5-haiku-20241022", hist),
        "claude-3-7-sonnet": ("claude-3-7-sonnet-20250219", hist),
        "claude-3-haiku": ("vertex_ai/claude-3-haiku@20240307", now),
    }
    for name, (key, src) in checks.items():
        ref, info = src[key], cat[name]
        assert info.input_price == pytest.approx(ref["input_cost_per_token"] * 1e6), name
        assert info.output_price == pytest.approx(ref["output_cost_per_token"] * 1e6), name
        if "cache_read_input_token_cost" in ref:
            assert info.cached_input_price == pytest.approx(ref["cache_read_input_token_cost"] * 1e6), name
        if "cache_creation_input_token_cost" in ref and info.family == "anthropic":
            assert info.cache_write_price == pytest.approx(ref["cache_creation_input_token_cost"] * 1e6), name
        assert info.context_window == ref["max_input_tokens"], name
        assert info.max_output_tokens == ref["max_output_tokens"], name
        if "input_cost_per_token_batches" in ref and ref["input_cost_per_token_batches"] != ref["input_cost_per_token"]:
            assert info.batch_price_factor == pytest.approx(
                ref["input_cost_per_token_batches"] / ref["input_cost_per_token"]), name


def test_lookup_resolves_aliases_snapshots_and_prefixes(cat: Catalog) -> None:
    assert cat.get("gpt-4o-2024-08-06").name == "gpt-4o"
    assert cat.get("gpt-4o-2024-05-13").name == "gpt-4o-2024-05-13"  # its own entry, not the alias
    assert cat.get("o3-mini-2025-01-31").name == "o3-mini"
    assert cat.get("claude-3-5-sonnet-20241022").name == "claude-3-5-sonnet"
    assert cat.get("claude-3-haiku-20240307").name == "claude-3-haiku"
    assert cat.get("GPT-4o-Mini").name == "gpt-4o-mini"
    assert cat.get("openai/o3-mini").name == "o3-mini"
    assert cat.get("gpt-4.1-mini-2026-01-01").name == "gpt-4.1-mini"  # an unlisted dated snapshot
    assert cat.get("no-such-model") is None and cat.get("no-such-model-2024-01-01") is None
    assert "o1" in cat and "nope" not in cat
    with pytest.raises(KeyError):
        cat["nope"]


def test_model_info_is_frozen_and_hashable(cat: Catalog) -> None:
    info = cat["o3-mini"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.input_price = 0.0  # type: ignore[misc]
    assert isinstance(hash(info), int) and isinstance(info, ModelInfo)


def test_load_is_fast() -> None:
    best = min(_timed(Catalog.load) for _ in range(5))
    assert best < 0.050, f"catalogue load took {best * 1000:.1f} ms"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_override_file_merges_adds_and_removes(tmp_path: Path) -> None:
    over = tmp_path / "mine.yaml"
    over.write_text(
        """
models:
  gpt-4o-mini:
    prices: {input: 0.165, output: 0.66}
  my-finetune:
    extends: gpt-4o-mini
    aliases: [ft:gpt-4o-mini:acme]
    sources: {prices: "our invoice 2026-11-01"}
  gpt-3.5-turbo-1106: null
"""
    )
    cat = Catalog.load(over)
    mini = cat["gpt-4o-mini"]
    assert (mini.input_price, mini.output_price, mini.cached_input_price) == (0.165, 0.66, 0.075)
    assert str(over) in mini.sources["prices"]
    assert mini.context_window == 128_000 and mini.capabilities.tools  # untouched fields kept
    ft = cat.get("ft:gpt-4o-mini:acme")
    assert ft is not None and ft.name == "my-finetune" and ft.input_price == 0.165
    assert ft.sources["prices"] == "our invoice 2026-11-01"
    assert ft.aliases == ("ft:gpt-4o-mini:acme",)  # aliases are not inherited
    assert "gpt-3.5-turbo-1106" not in cat.names()
    assert cat.get("gpt-4o-mini-2024-07-18").name == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: {o1: {prices: {input: -1}}}", "models.o1.prices.input"),
        ("models: {o1: {prices: {input: abc}}}", "expected a finite number"),
        ("models: {o1: {limits: {context_window: 0}}}", "models.o1.limits.context_window"),
        ("models: {o1: {params: {output_limit: max_toks}}}", "models.o1.params.output_limit"),
        ("models: {o1: {params: {system_role_as: assistant}}}", "models.o1.params.system_role_as"),
        ("models: {o1: {capabilities: {tools: maybe}}}", "models.o1.capabilities.tools"),
        ("models: {o1: {colour: red}}", "models.o1.colour"),
        ("models: {o1: {params: {fixed: {temperature: 1}}}}", "models.o1.params.fixed.temperature"),
        ("models: {o1: {family: google}}", "models.o1.family"),
        ("models: {o1: {tokenizer: llama}}", "models.o1.tokenizer"),
        ("models: {o1: {prices: {batch_factor: 2}}}", "models.o1.prices.batch_factor"),
        ("models: {x: {extends: nowhere}}", "models.x.extends"),
        ("models: {x: {extends: y}, y: {extends: x}}", "cycle"),
        ("models: {o3: {aliases: [o3-mini]}}", "'o3-mini' is used by both"),
        ("benchmarks: {}\nmodels: {}", "benchmarks"),
        ("models: [1, 2]", "models"),
        ("models: {o1: [", "not valid YAML"),
        ("models: {zz: {family: openai}}", "models.zz"),
    ],
)
def test_validation_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    over = tmp_path / "bad.yaml"
    over.write_text(text)
    with pytest.raises(CatalogError) as e:
        Catalog.load(over)
    assert expected in str(e.value)
    assert "bad.yaml" in str(e.value)


def test_missing_sources_are_refused(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(
        """
models:
  m:
    family: openai
    tokenizer: o200k_base
    prices: {input: 1, output: 2}
    limits: {context_window: 1000, max_output_tokens: 100}
    capabilities: {system_role: true, developer_role: false, tools: false, parallel_tool_calls: false,
                   json_schema: false, json_object: false, streaming: true, vision: false}
    params: {output_limit: either, system_role_as: system}
    sources: {prices: "x 2026-01-01", limits: "x 2026-01-01", capabilities: "x"}
"""
    )
    with pytest.raises(CatalogError, match=r"models\.m\.sources\.params"):
        Catalog.load(base=base)
    with pytest.raises(CatalogError, match="not found"):
        Catalog.load(tmp_path / "absent.yaml")


def test_unknown_model_stand_in_passes_requests_through(cat: Catalog) -> None:
    from tiergate.catalog import shape_request

    info = cat.unknown("my-local-llama")
    assert info.name == "my-local-llama" and info.input_price == info.output_price == 0.0
    assert info.capabilities.tools and info.capabilities.vision and "high" in info.capabilities.reasoning_efforts
    body = {"model": "my-local-llama", "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}],
            "max_tokens": 5, "temperature": 0.3, "logprobs": True, "reasoning_effort": "minimal"}
    out, dropped = shape_request(body, info)
    assert out == body and dropped == []
