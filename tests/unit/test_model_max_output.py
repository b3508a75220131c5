"""A configured model's maximum output (the gateway's output-limit check, default bound and reservation)
follows its deployments: `options.max_output_tokens`, else 128,000 for an Anthropic claude-3-7-sonnet
deployment sending the `output-128k-2025-02-19` beta, else the catalogue's; the smallest over the
deployments, so whichever deployment serves can serve what was admitted."""

from __future__ import annotations

import pytest

from tiergate.catalog.catalog import Catalog
from tiergate.config import parse_config
from tiergate.server.gateway import resolve_catalog

BETA = {"anthropic-beta": "output-128k-2025-02-19"}


def _dep(**kw) -> dict:
    return {"provider": "anthropic", "api_key": "env:K", **kw}


def _most(*deps: dict, catalog: str = "claude-3-7-sonnet") -> int:
    cfg = parse_config({"models": [{"name": "m", "catalog": catalog, "deployments": list(deps)}]}, env={"K": "k"})
    infos, _ = resolve_catalog(cfg, Catalog.load())
    return infos["m"].max_output_tokens


@pytest.mark.parametrize(("deps", "most"), [
    ([_dep()], 64000),                                                  # the catalogue's
    ([_dep(headers=BETA)], 128000),                                     # the beta header raises it
    ([_dep(headers={"anthropic-beta": "a-beta,output-128k-2025-02-19"})], 128000),
    ([_dep(options={"max_output_tokens": 128000})], 128000),            # the operator's figure wins
    ([_dep(options={"max_output_tokens": 8192}, headers=BETA)], 8192),  # ... lower too
    ([_dep(headers=BETA), _dep()], 64000),                              # the smallest over the deployments
    ([_dep(headers=BETA), _dep(options={"max_output_tokens": 100000})], 100000),
    ([_dep(headers={"anthropic-beta": "prompt-caching-2024-07-31"})], 64000),  # another beta: unchanged
])
def test_claude_3_7_sonnet(deps, most):
    assert _most(*deps) == most


def test_the_beta_header_raises_only_claude_3_7_sonnet_and_other_models_keep_the_catalogues():
    cat = Catalog.load()
    assert _most(_dep(headers=BETA), catalog="claude-3-5-haiku") == cat.get("claude-3-5-haiku").max_output_tokens
    cfg = parse_config({"models": [{"name": "gpt-4o", "deployments": [{"provider": "sim"}]}]}, env={})
    infos, _ = resolve_catalog(cfg, cat)
    assert infos["gpt-4o"] is cat.get("gpt-4o")  # no deployment says otherwise: the catalogue entry itself
