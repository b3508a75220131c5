"""When and how long to wait before retrying: which failures are retryable, exponential backoff with
jitter, and the upstream's own hints (`Retry-After`, `retry-after-ms`, `x-ratelimit-reset-*`, already
parsed by the provider into `UpstreamError.retry_after`)."""

from __future__ import annotations

import random

from tiergate.config import RetryPolicy
from tiergate.providers.base import Timeouts, UpstreamError

NEVER_RETRY = frozenset({400, 401, 403, 404, 422})


def retryable(e: UpstreamError) -> bool:
    """429, 5xx, 408/409, connection errors, timeouts, protocol errors and cut streams. Never the
    client's own errors (400, 401, 403, 404, 422), whatever the transport says."""
    if e.status in NEVER_RETRY and e.kind == "status":
        return False
    return e.retryable


def counts_against_circuit(e: UpstreamError) -> bool:
    """A failure that says the deployment is unhealthy (not that the request was bad)."""
    return retryable(e)


def own_timeout(e: UpstreamError, requested: Timeouts, configured: Timeouts) -> str | None:
    """The phase (connect, first_token, stream_idle, total) when `e` is a timeout that fired only because the
    request's own limit for that phase (`tiergate.timeouts`) is stricter than the model's configured one: the
    deployment was not shown to be slow by its own standard, so this is not its failure. None otherwise
    (not a timeout, no phase known, or the configured limit was not stricter than the request's)."""
    phase = e.phase
    if phase is None or requested is configured:
        return None
    mine = getattr(requested, phase, None)
    if mine is None:
        return None
    theirs = getattr(configured, phase)
    return phase if theirs is None or mine < theirs else None


def backoff(attempt: int, policy: RetryPolicy, rnd: random.Random) -> float:
    """Seconds before retry number `attempt` (0-based) on the same deployment: exponential, capped,
    with "equal jitter" (half fixed, half random) so synchronized clients spread out."""
    d = min(policy.backoff_max_s, policy.backoff_base_s * (2 ** attempt))
    return d / 2 + rnd.random() * d / 2


def hinted_wait(e: UpstreamError | None, policy: RetryPolicy) -> float | None:
    """The upstream's requested wait when it is short enough to honour; None when there is no hint;
    `inf` when the hint is longer than `max_retry_after_s` (do not wait for this deployment)."""
    if e is None or e.retry_after is None:
        return None
    if e.retry_after > policy.max_retry_after_s:
        return float("inf")
    return e.retry_after
