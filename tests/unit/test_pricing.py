"""Cost from usage at catalogue prices: cached, reasoning, cache writes, batch, upper bounds."""

from __future__ import annotations

import pytest

from tiergate.accounting.pricing import cost_usd, max_cost_usd, usage_breakdown
from tiergate.catalog import Catalog


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return Catalog.load()


O3_MINI_USAGE = {
    "prompt_tokens": 2000, "completion_tokens": 500, "total_tokens": 2500,
    "prompt_tokens_details": {"cached_tokens": 1200, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 320, "audio_tokens": 0},
}


def test_known_usage_costs_to_the_nanodollar(cat: Catalog) -> None:
    # o3-mini: $1.10 in, $0.55 cached, $4.40 out per 1M: (800*1.10 + 1200*0.55 + 500*4.40) / 1e6
    assert abs(cost_usd(O3_MINI_USAGE, cat["o3-mini"]) - 0.00374) < 1e-9
    # gpt-4o-mini, no cache: (1000*0.15 + 200*0.60) / 1e6
    usage = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}
    assert abs(cost_usd(usage, cat["gpt-4o-mini"]) - 0.00027) < 1e-9


def test_reasoning_tokens_are_not_counted_twice(cat: Catalog) -> None:
    no_reasoning = {**O3_MINI_USAGE, "completion_tokens_details": {"reasoning_tokens": 0}}
    assert cost_usd(no_reasoning, cat["o3-mini"]) == cost_usd(O3_MINI_USAGE, cat["o3-mini"])


def test_batch_applies_the_factor(cat: Catalog) -> None:
    assert abs(cost_usd(O3_MINI_USAGE, cat["o3-mini"], batch=True) - 0.00187) < 1e-9
    claude = cat["claude-3-5-sonnet"]  # Anthropic's Message Batches: 50% off too
    assert cost_usd(O3_MINI_USAGE, claude, batch=True) == pytest.approx(cost_usd(O3_MINI_USAGE, claude) / 2)


def test_anthropic_cache_writes(cat: Catalog) -> None:
    usage = {"prompt_tokens": 3000, "completion_tokens": 100,
             "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 1500}}
    # (500*3.00 + 1000*0.30 + 1500*3.75 + 100*15.00) / 1e6
    assert abs(cost_usd(usage, cat["claude-3-5-sonnet"]) - 0.008925) < 1e-9
    # a model without a cache-write price bills writes as input
    assert abs(cost_usd(usage, cat["gpt-4o"]) - (2000 * 2.5 + 1000 * 1.25 + 100 * 10) / 1e6) < 1e-9


def test_snapshot_without_cached_price_bills_cached_as_input(cat: Catalog) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 600}}
    assert abs(cost_usd(usage, cat["gpt-4o-2024-05-13"]) - 0.005) < 1e-12


def test_responses_api_usage_and_nulls(cat: Catalog) -> None:
    responses = {"input_tokens": 2000, "output_tokens": 500, "total_tokens": 2500,
                 "input_tokens_details": {"cached_tokens": 1200}, "output_tokens_details": {"reasoning_tokens": 320}}
    assert cost_usd(responses, cat["o3-mini"]) == cost_usd(O3_MINI_USAGE, cat["o3-mini"])
    assert cost_usd(None, cat["o3-mini"]) == 0.0
    nulls = {"prompt_tokens": 10, "completion_tokens": None, "prompt_tokens_details": None,
             "completion_tokens_details": None}
    assert abs(cost_usd(nulls, cat["o3-mini"]) - 10 * 1.10 / 1e6) < 1e-12


def test_usage_breakdown_for_the_ledger() -> None:
    assert usage_breakdown(O3_MINI_USAGE) == {"input_tokens": 2000, "cached_tokens": 1200, "cache_write_tokens": 0,
                                              "output_tokens": 500, "reasoning_tokens": 320}
    # parts never exceed wholes, negatives are ignored
    odd = {"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 9},
           "completion_tokens_details": {"reasoning_tokens": -3}}
    assert usage_breakdown(odd) == {"input_tokens": 5, "cached_tokens": 5, "cache_write_tokens": 0,
                                    "output_tokens": 2, "reasoning_tokens": 0}


def test_max_cost_is_an_upper_bound(cat: Catalog) -> None:
    info = cat["o3-mini"]
    bound = max_cost_usd(2000, 500, info)
    assert abs(bound - (2000 * 1.10 + 500 * 4.40) / 1e6) < 1e-12
    assert bound >= cost_usd(O3_MINI_USAGE, info)
    claude = cat["claude-3-5-sonnet"]
    assert abs(max_cost_usd(1000, 0, claude) - 1000 * 3.75 / 1e6) < 1e-12  # writes are dearer than input
    assert max_cost_usd(1000, 100, info, batch=True) == pytest.approx(max_cost_usd(1000, 100, info) / 2)
