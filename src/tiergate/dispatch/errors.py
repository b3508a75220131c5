"""Errors the dispatcher raises or understands, and the mapping from an upstream failure to the
OpenAI-shaped error the client sees.

`ContextWindowExceeded` is how the caller's `shape(model)` says "the prompt does not fit this model":
the dispatcher then tries the model's `context_window_fallback`. Any `GatewayError` whose `code` is
`context_length_exceeded` is treated the same way, so an upstream 400 of that kind also falls back.

`before_upstream(e)` marks an error the gateway raised on its own before any upstream call (a shaping
error or a provider's `RequestRefused` on the requested model, a prompt too long for every model):
`refused_before_upstream(e)` tells the server to record it as `rejected`, not as an upstream `error`.
"""

from __future__ import annotations

import math

from tiergate.providers.base import RequestRefused, UpstreamError
from tiergate.wire.errors import GatewayError

CONTEXT_CODE = "context_length_exceeded"


class ContextWindowExceeded(GatewayError):
    """Raised by `shape(model)` when the prompt is longer than that model's context window."""

    def __init__(self, model: str, prompt_tokens: int, window: int) -> None:
        super().__init__(
            400,
            f"This model's maximum context length is {window} tokens; the messages resulted in "
            f"{prompt_tokens} tokens (model '{model}'). Shorten the messages or choose a model with a "
            "larger context window.",
            param="messages",
            code=CONTEXT_CODE,
        )
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.window = window


def is_context_error(e: BaseException) -> bool:
    return getattr(e, "code", None) == CONTEXT_CODE


def before_upstream(e: GatewayError) -> GatewayError:
    """Mark `e` as the gateway's own refusal, raised before anything was sent upstream."""
    e.before_upstream = True  # type: ignore[attr-defined]
    return e


def refused_before_upstream(e: BaseException) -> bool:
    """The gateway refused the request itself, before any upstream call (nothing to count against a
    deployment; the ledger's `rejected`)."""
    return isinstance(e, RequestRefused) or bool(getattr(e, "before_upstream", False))


def from_upstream(e: UpstreamError, model: str, deployment_id: str, n_attempts: int) -> GatewayError:
    """The client-facing error for the last upstream failure of a request nothing could serve.

    Client errors (4xx other than 408/409/429) are passed through verbatim: the request itself is at
    fault and the upstream's words say why. Server-side failures keep the upstream status and say what
    the gateway tried, so the message is actionable."""
    status = e.status if 400 <= e.status <= 599 else 502
    headers: dict[str, str] = {}
    if status in (401, 403) and e.kind == "status":
        # The upstream refused the *gateway's* credentials: passing 401 through would tell the client its
        # own (valid) key is wrong. It is a gateway configuration problem: say which deployment. A 502
        # is retried by the openai SDKs; `x-should-retry: false` stops them resending a request the
        # upstream will refuse again with the same (bad) credentials.
        return GatewayError(
            502,
            f"Deployment '{deployment_id}' of model '{model}' refused the gateway's upstream credentials "
            f"({e.status}: {e.message}). Check that deployment's api_key in the gateway config.",
            type="api_error",
            code="upstream_auth_failed",
            headers={"x-should-retry": "false"},
        )
    if not e.retryable:
        return GatewayError(status, e.message, type=e.type, param=e.param, code=e.code)
    if e.retry_after is not None and status in (429, 503):
        headers["retry-after"] = str(max(1, math.ceil(e.retry_after)))
    tried = f"{n_attempts} attempt{'s' if n_attempts != 1 else ''}"
    if e.kind == "timeout":
        status = 504
        etype = "timeout_error"
    elif status == 429:
        etype = "rate_limit_error"
    else:
        etype = e.type if e.type and status < 500 else "api_error"
    return GatewayError(
        status,
        f"Model '{model}' could not be served after {tried}; last error from deployment "
        f"'{deployment_id}': {e.message}",
        type=etype,
        code=e.code or ("upstream_timeout" if e.kind == "timeout" else "upstream_error"),
        headers=headers,
    )


def no_healthy_deployment(models: list[str], retry_after_s: float | None) -> GatewayError:
    """Every deployment of every model we could use is cooling down (circuit open) or busy."""
    headers = {"retry-after": str(max(1, math.ceil(retry_after_s)))} if retry_after_s else {}
    names = ", ".join(f"'{m}'" for m in models)
    return GatewayError(
        503,
        f"No healthy deployment for {names}: every deployment is cooling down after recent failures. "
        + (f"Retry in about {math.ceil(retry_after_s)}s." if retry_after_s else "Retry shortly."),
        type="api_error",
        code="no_healthy_deployment",
        headers=headers,
    )


def rate_limited(models: list[str], retry_after_s: float | None) -> GatewayError:
    """Every usable deployment is at its configured rpm/tpm cap or was told by its upstream (429 with
    Retry-After) to back off."""
    headers = {"retry-after": str(max(1, math.ceil(retry_after_s)))} if retry_after_s else {}
    names = ", ".join(f"'{m}'" for m in models)
    return GatewayError(
        429,
        f"Every deployment of {names} is rate limited (its upstream asked to back off, or it is at its "
        "configured requests- or tokens-per-minute limit). Retry after the time in the Retry-After header, "
        "or add deployments / raise `rpm`/`tpm` in the gateway config.",
        type="rate_limit_error",
        code="deployment_rate_limited",
        headers=headers,
    )
