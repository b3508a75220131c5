"""When and how long to wait before retrying: which failures are retryable, exponential backoff with
jitter, and the upstream's own hints (`Retry-After`, `retry-after-ms`, `x-ratelimit-reset-*`, already
parsed by the provider into `UpstreamError.retry_after`)."""

from __future__ import annotations

import random
import re

from tiergate.config import RetryPolicy
from tiergate.providers.base import Timeouts, UpstreamError
from tiergate.providers.http import ANSWER_TOO_LARGE

NEVER_RETRY = frozenset({400, 401, 403, 404, 422})

#: `code`s with which an upstream says the model the gateway asked for is not there (OpenAI, Azure's
#: classic deployment URLs). The model in the upstream body is the deployment's own (`model:` /
#: `deployment:` in the config), never the client's, so these are the deployment's configuration fault.
_MODEL_MISSING_CODES = frozenset({"model_not_found", "deploymentnotfound"})
# the message *opens* with the missing model (a client-chosen id quoted mid-message cannot match):
# OpenAI / vLLM "The model `x` does not exist...", Ollama 'model "x" not found, try pulling it first',
# Anthropic's not_found_error "model: claude-x" (the provider prefixes "anthropic: ")
_MODEL_MISSING_TEXT = re.compile(r"^(?:anthropic: )?(?:the )?model\b(?::|[^.\n]{0,200}?\b(?:does not exist|not found))",
                                 re.IGNORECASE)


def model_missing(e: UpstreamError) -> bool:
    """A 404 that clearly says this deployment lacks the model (OpenAI `code: model_not_found`, Azure
    `DeploymentNotFound`, Anthropic's `not_found_error` on the model, a host's "The model `x` does not
    exist"): the deployment's fault. Never a 404 about something the client named (an unknown
    `previous_response_id`, a file id): those are the client's, and must not open a circuit."""
    if e.status != 404 or e.kind != "status":
        return False
    code = (e.code or "").lower()
    if code in _MODEL_MISSING_CODES:
        return True
    if code in ("", "not_found_error", "notfounderror", "404"):
        return bool(_MODEL_MISSING_TEXT.match(e.message or ""))
    return False


#: 403 `code`s / `type`s with which an upstream says the gateway's credentials or account are the problem
#: (OpenAI `invalid_api_key`, `unsupported_country_region_territory`, an account without quota or billing,
#: a deactivated organization; Anthropic's `permission_error`; Azure's `PermissionDenied`).
_AUTH_403_CODES = frozenset({
    "invalid_api_key", "incorrect_api_key", "unsupported_country_region_territory", "insufficient_quota",
    "billing_not_active", "billing_hard_limit_reached", "account_deactivated", "organization_deactivated",
    "access_terminated", "invalid_organization", "no_such_organization", "invalid_project", "project_not_found",
    "permission_error", "permissiondenied", "authenticationtypedisabled", "authentication_error",
    "model_not_found", "deploymentnotfound", "unauthorized",
})


def auth_refused(e: UpstreamError) -> bool:
    """A 401, or a 403 whose `code` or `type` says the gateway's credentials, account or access are refused
    (`_AUTH_403_CODES`). Never the message's words: hosts and guardrails repeat the client's prompt in their
    403 messages ("... my api key ..."), so words would let a client open a deployment's circuit. Any other
    403 (a host's moderation, a WAF page, a bare "Forbidden") is passed to the client as the upstream's 403
    and ends that request only."""
    if e.kind != "status" or e.status not in (401, 403):
        return False
    if e.status == 401:
        return True
    return (e.code or "").lower() in _AUTH_403_CODES or (e.type or "").lower() in _AUTH_403_CODES


def deployment_fault(e: UpstreamError) -> bool:
    """A failure of this deployment's own configuration, not of the request: the upstream refused the
    gateway's credentials for it (`auth_refused`: any 401, a 403 only when its code says so; the gateway
    sends its own key, never the client's), or it does not have the model (`model_missing`). Sending the
    same request to the same deployment would fail the same way, so it is not retried there; but another
    deployment (or a fallback model) may well answer, so it fails over, and it counts against the
    deployment's circuit breaker. Any other 403 (a host's moderation refusing the content) ends the request."""
    if e.kind != "status":
        return False
    return auth_refused(e) or model_missing(e)


def too_large(e: UpstreamError) -> bool:
    """The upstream's answer was larger than the gateway accepts: not retried, not failed over (it would be
    as large again), not counted against the circuit (the deployment answered)."""
    return e.code == ANSWER_TOO_LARGE


def retryable(e: UpstreamError) -> bool:
    """May the same request be sent again, to this deployment or another: 429, 5xx, 408/409, connection
    errors, timeouts, protocol errors and cut streams. Never the client's own errors (400, 401, 403, 404,
    422), nor an answer too large to accept (`too_large`), whatever the transport says (401/403 and a
    missing model fail over instead: `fails_over`)."""
    if e.status in NEVER_RETRY and e.kind == "status":
        return False
    if too_large(e):
        return False
    return e.retryable


def fails_over(e: UpstreamError) -> bool:
    """May the request go on to another deployment or fallback model: a retryable failure, or a fault
    of this deployment's own (`deployment_fault`; that deployment is then not tried again)."""
    return retryable(e) or deployment_fault(e)


def counts_against_circuit(e: UpstreamError) -> bool:
    """A failure that says the deployment is unhealthy (not that the request was bad): the retryable
    ones and the deployment's own faults (bad credentials, model missing)."""
    return retryable(e) or deployment_fault(e)


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
