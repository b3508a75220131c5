"""What a call costs, from the upstream's usage object and the catalogue's prices (USD per 1M tokens).

cost = (prompt - cached - cache_write) * input + cached * cached_input + cache_write * cache_write_price
       + completion * output                                           (wire facts §2b)
Reasoning tokens are part of completion_tokens and are not added again. `cache_write_tokens`
(prompt_tokens_details; Anthropic prompt-cache writes translated by the provider) are part of
prompt_tokens, like cached_tokens. Responses-API names (input_tokens / output_tokens /
*_tokens_details) are accepted too, so batch and Responses results price the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tiergate.catalog.catalog import ModelInfo

_PER_TOKEN = 1e-6  # catalogue prices are per 1M tokens


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
        return 0
    return int(v)


def _details(usage: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    for k in keys:
        d = usage.get(k)
        if isinstance(d, Mapping):
            return d
    return {}


def usage_breakdown(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """Token counts for the ledger, from a Chat Completions (or Responses) usage object.

    input_tokens: all prompt tokens (cached and cache writes included); cached_tokens and
    cache_write_tokens: the parts of input_tokens read from / written to the prompt cache;
    output_tokens: all completion tokens (reasoning included); reasoning_tokens: the part of
    output_tokens spent reasoning. Missing or null fields count as 0; parts never exceed wholes."""
    if not usage:
        return {"input_tokens": 0, "cached_tokens": 0, "cache_write_tokens": 0,
                "output_tokens": 0, "reasoning_tokens": 0}
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    pd = _details(usage, "prompt_tokens_details", "input_tokens_details")
    cd = _details(usage, "completion_tokens_details", "output_tokens_details")
    cached = min(_int(pd.get("cached_tokens")), prompt)
    cache_write = min(_int(pd.get("cache_write_tokens")), prompt - cached)
    reasoning = min(_int(cd.get("reasoning_tokens")), completion)
    return {"input_tokens": prompt, "cached_tokens": cached, "cache_write_tokens": cache_write,
            "output_tokens": completion, "reasoning_tokens": reasoning}


def cost_from_breakdown(b: Mapping[str, int], info: ModelInfo, *, batch: bool = False) -> float:
    """USD for a `usage_breakdown` result at `info`'s prices (batch: times the batch factor)."""
    cached = b["cached_tokens"]
    write = b["cache_write_tokens"]
    fresh = b["input_tokens"] - cached - write
    write_price = info.input_price if info.cache_write_price is None else info.cache_write_price
    usd = (
        fresh * info.input_price
        + cached * info.cached_input_price
        + write * write_price
        + b["output_tokens"] * info.output_price
    ) * _PER_TOKEN
    return usd * info.batch_price_factor if batch else usd


def cost_usd(usage: Mapping[str, Any] | None, info: ModelInfo, *, batch: bool = False) -> float:
    """USD of one call from its usage object (see the module docstring for the formula)."""
    return cost_from_breakdown(usage_breakdown(usage), info, batch=batch)


def max_cost_usd(prompt_tokens: int, max_output_tokens: int, info: ModelInfo, *, batch: bool = False) -> float:
    """Upper bound of a call's cost, for budget reservations: no cache discount, every prompt
    token at the dearer of the input and cache-write prices, and the full output allowance."""
    in_price = info.input_price
    if info.cache_write_price is not None and info.cache_write_price > in_price:
        in_price = info.cache_write_price
    usd = (max(prompt_tokens, 0) * in_price + max(max_output_tokens, 0) * info.output_price) * _PER_TOKEN
    return usd * info.batch_price_factor if batch else usd
