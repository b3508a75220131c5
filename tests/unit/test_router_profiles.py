"""Published quality profiles: every catalogue model the shipped router cannot learn-predict is covered by
a sourced published profile or listed as having no published figure; the published section is what
scripts/router_model_profiles.py computes from its table; orderings within a family are sane."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from tiergate.routing.profiles import PROFILES_PATH, Profiles
from tiergate.routing.router import Router

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "router_model_profiles.py"
TABLE = ROOT / "scripts" / "router_model_profiles_published.yaml"
CATALOG = ROOT / "src" / "tiergate" / "catalog" / "models.yaml"
CODE = "Write a Python function that merges overlapping intervals in a list and returns them sorted."
KNOWLEDGE = ("Which organelle is the site of oxidative phosphorylation in eukaryotic cells? "
             "A) ribosome B) mitochondrion C) Golgi apparatus D) lysosome")


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.load()


def _catalogue_names() -> list[str]:
    names = []
    for name, m in yaml.safe_load(CATALOG.read_text())["models"].items():
        names.append(name)
        names += [f"{name}@{e}" for e in (m.get("capabilities") or {}).get("reasoning_efforts") or []]
    return names


def _script():
    spec = importlib.util.spec_from_file_location("router_model_profiles", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_unlearned_catalogue_model_has_a_sourced_profile_or_is_listed(router: Router) -> None:
    table = yaml.safe_load(TABLE.read_text())
    listed = table["no_published_figure"]
    published = yaml.safe_load(PROFILES_PATH.read_text())["published"]
    unlearned = [a for a in router.assess("hello", _catalogue_names()) if a.quality_source != "learned"]
    assert unlearned, "the shipped router learns every catalogue model: drop this test's premise"
    for a in unlearned:
        if a.candidate in listed:
            assert a.quality_source == "default", f"{a.candidate} is listed as without a figure but has a profile"
            assert listed[a.candidate].strip()
            continue
        assert a.quality_source == "profile", f"{a.candidate}: no profile and not in no_published_figure"
        assert a.profile_source and "http" in a.profile_source, a.candidate
    # the list names only catalogue candidates that really lack a profile
    assert set(listed) <= set(_catalogue_names())
    for key, doms in published.items():
        for dom, v in doms.items():
            assert "http" in v["source"] and "mapped to the" in v["source"], (key, dom)


def test_published_section_is_what_the_script_computes() -> None:
    doc = yaml.safe_load(PROFILES_PATH.read_text())
    got, _ = _script().published_profiles(doc["measured"], yaml.safe_load(TABLE.read_text()))
    assert got == doc["published"]


def test_a_figure_for_some_efforts_is_not_given_to_the_others() -> None:
    p = Profiles.load()
    assert p.find("o3", "high") is p.entries["o3@high"]
    assert p.find("o3", None) is p.entries["o3"]
    assert p.find("o3", "low") is None  # published for high and the default (medium) only
    assert p.find("gpt-4.1-nano", None) is p.entries["gpt-4.1-nano"]


@pytest.mark.parametrize("prompt", [CODE, KNOWLEDGE], ids=["code", "knowledge"])
def test_orderings_within_a_family(router: Router, prompt: str) -> None:
    q = {a.candidate: a.predicted_quality
         for a in router.assess(prompt, ["o3@high", "o3@low", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"])}
    assert q["o3@high"] >= q["o3@low"]
    assert q["gpt-4.1"] >= q["gpt-4.1-mini"] >= q["gpt-4.1-nano"]


def test_an_alias_of_a_catalogue_entry_uses_that_entrys_profile(tmp_path):
    """A model configured under an alias of a catalogue entry (a fine-tune's API name) is predicted from the
    entry's profile, as it is priced from the entry (it got the "default" quality instead)."""
    from tiergate.catalog.catalog import Catalog
    from tiergate.routing.router import Router

    ft = tmp_path / "ft.yaml"
    ft.write_text("models:\n  acme-ft:\n    extends: gpt-4o-mini\n    aliases: ['ft:gpt-4o-mini:acme::abc123']\n"
                  "    prices: {input: 0.30, output: 1.20}\n    sources: {prices: 'fine-tuning price list'}\n")
    prof = tmp_path / "prof.yaml"
    prof.write_text("published:\n  acme-ft:\n    code: {score: 0.99, source: 'our eval'}\n"
                    "    knowledge: {score: 0.99, source: 'our eval'}\n")
    r = Router.load(catalog=Catalog.load(ft), profiles=prof)
    by_alias, by_name = r.assess("Write a Python function that reverses a list.",
                                 ["ft:gpt-4o-mini:acme::abc123", "acme-ft"])
    assert by_name.quality_source == by_alias.quality_source == "profile"
    assert by_alias.predicted_quality == by_name.predicted_quality
