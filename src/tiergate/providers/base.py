"""The one small interface every provider implements, and the upstream error it raises.

A provider speaks one wire protocol. The gateway hands it a Chat Completions body that is already
shaped for the target model (catalog quirks applied) and gets back OpenAI Chat Completions objects:
a `chat.completion` dict, or an async iterator of `chat.completion.chunk` dicts. Translation to and
from other protocols (Azure URLs, Anthropic Messages, …) happens inside the provider and nowhere else.
Providers know nothing about budgets, routing or retries (DESIGN.md).
"""

from __future__ import annotations

import abc
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import aiohttp

from tiergate.wire.errors import GatewayError


@dataclass(frozen=True)
class Secret:
    """A credential read from the environment. Its repr never shows the value."""

    ref: str  # what the config said, e.g. "env:OPENAI_API_KEY" (safe to show)
    value: str = field(repr=False)

    def __str__(self) -> str:  # pragma: no cover - defensive
        return f"<secret {self.ref}>"


@dataclass(frozen=True)
class Timeouts:
    """Seconds. `None` means no limit for that phase."""

    connect: float | None = 5.0
    first_token: float | None = 60.0  # until response headers (non-stream) or first chunk (stream)
    stream_idle: float | None = 60.0  # between two stream chunks
    total: float | None = 600.0


@dataclass(frozen=True)
class Deployment:
    """One place a model can be served: a provider, an endpoint and a credential."""

    id: str  # stable, non-secret label used in headers, metrics and the ledger, e.g. "gpt-4o-mini/0"
    model: str  # the client-facing model name this deployment serves
    provider: str  # registry name: openai | openai_compatible | azure | anthropic | sim
    api_base: str | None = None
    api_key: Secret | None = None
    upstream_model: str | None = None  # model name sent upstream (default: the catalog name)
    deployment: str | None = None  # Azure deployment name
    api_version: str | None = None  # Azure api-version
    weight: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    headers: tuple[tuple[str, str], ...] = ()  # extra non-secret headers sent upstream
    options: dict[str, Any] = field(default_factory=dict)  # provider-specific settings (sim, batch, …)


@dataclass
class ChatResult:
    """A non-streaming answer in Chat Completions shape plus what the upstream said about it."""

    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


_FIELD_MAX = 200  # characters kept of an upstream error's type / code / param
MAX_RETRY_AFTER_S = 3600.0  # an upstream's back-off hint is relayed and honoured at most this long


def _field(value: str | None) -> str | None:
    """An upstream error field as the client may see it: credentials scrubbed (the registry of configured
    keys and the key-shaped patterns of `providers.http.scrub`), at most `_FIELD_MAX` characters."""
    if not isinstance(value, str):
        return value
    from tiergate.providers.http import scrub

    return scrub(value)[:_FIELD_MAX]


class UpstreamError(Exception):
    """The upstream failed. `message` is client-facing: plain words naming the deployment id, already
    scrubbed of credentials, never a host, port or exception repr (those go in `detail`, for the log).
    `kind` says how it failed, for retry decisions and metrics."""

    RETRYABLE_STATUS: ClassVar[frozenset[int]] = frozenset({408, 409, 429, 500, 502, 503, 504})

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "status",  # status | timeout | connect | protocol | stream_cut
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
        usage: dict[str, Any] | None = None,
        phase: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        # the upstream's own words reach the client in these too: scrubbed and bounded like the message
        self.type, self.code, self.param = _field(type), _field(code), _field(param)
        # a back-off hint must be a finite number of seconds (`inf` from an upstream used to become a 500),
        # and is relayed at most an hour (the longest the circuit is held open for it)
        self.retry_after = (min(retry_after, MAX_RETRY_AFTER_S)
                            if retry_after is not None and 0 <= retry_after < math.inf else None)
        self.headers = headers or {}
        self.usage = usage  # what the upstream reported before failing, if anything
        # for timeouts: the limit that fired (connect | first_token | stream_idle | total), so the dispatcher
        # can tell a deployment's slowness from a request's own stricter `tiergate.timeouts`
        self.phase = phase
        # operator-only detail (the transport exception, scrubbed of secrets): logged, never sent to clients
        self.detail = detail

    @property
    def retryable(self) -> bool:
        if self.kind in ("timeout", "connect", "protocol", "stream_cut"):
            return True
        return self.status in self.RETRYABLE_STATUS


class RequestRefused(GatewayError):
    """The provider cannot express this request in its protocol (e.g. `n=2` for Anthropic, which returns
    one choice): a client error of the gateway's own, found before anything is sent upstream. It is not
    an upstream failure: the dispatcher passes it through untouched (no retry, no failover to another
    deployment, no failed attempt, no circuit-breaker count) and the request path records it as
    `rejected`. The message says it is the gateway's refusal, not the upstream's answer."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = "unsupported_value") -> None:
        super().__init__(400, message, param=param, code=code)


class Provider(abc.ABC):
    """Base class. Subclasses register themselves with `providers.registry.register`."""

    name: ClassVar[str]
    # headers added to every response this provider serves, streams included (e.g. the sim's label)
    response_headers: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def __init__(self, deployment: Deployment, session_factory: SessionFactory) -> None:
        self.deployment = deployment
        self._session_factory = session_factory
        if deployment.api_key is not None:  # masked in every deployment's scrubbed messages
            from tiergate.providers.http import register_secret

            register_secret(deployment.api_key.value)

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._session_factory()

    @abc.abstractmethod
    async def chat(self, body: dict[str, Any], timeouts: Timeouts) -> ChatResult:
        """Send a non-streaming Chat Completions request; raise UpstreamError on failure."""

    @abc.abstractmethod
    def chat_stream(self, body: dict[str, Any], timeouts: Timeouts) -> AsyncIterator[dict[str, Any]]:
        """Yield `chat.completion.chunk` dicts. `body["stream_options"]["include_usage"]` is set by the
        caller; the final usage chunk (choices == []) must be yielded when the upstream sends one.
        Raise UpstreamError (kind="stream_cut" after data started) on failure."""

    async def responses(self, body: dict[str, Any], timeouts: Timeouts) -> ChatResult:
        """Native Responses API, where the protocol has one. Default: not supported (the server
        translates through `chat`)."""
        raise NotImplementedError

    def responses_stream(self, body: dict[str, Any], timeouts: Timeouts) -> AsyncIterator[dict[str, Any]]:
        """Native Responses API stream, where the protocol has one: yield the upstream's events (dicts
        with `type`) unchanged, the last one `response.completed` or `response.incomplete`. Raise
        UpstreamError like `chat_stream` (an `error` event or `response.failed` included; kind
        "stream_cut" once events started, with the usage seen so far). Default: not supported."""
        raise NotImplementedError

    def check(self, body: dict[str, Any], *, stream: bool, operation: str = "chat") -> None:
        """Raise `RequestRefused` when this provider could not send `body` (shaped for its model) at all;
        nothing is sent. The dispatcher calls it for every deployment of a model before the first
        attempt, only for providers that override it (the default accepts everything)."""

    def dropped_params(self, body: dict[str, Any]) -> list[str]:
        """Parameters of `body` (shaped for the model) this provider's translation leaves out or changes,
        reported in `x-tiergate-dropped-params` with what the shaping dropped. Default: none."""
        return []

    def upstream_model(self, catalog_name: str) -> str:
        return self.deployment.upstream_model or catalog_name


class SessionFactory(abc.ABC):
    """Gives providers the process's shared aiohttp session (created lazily inside the event loop)."""

    @abc.abstractmethod
    def __call__(self) -> aiohttp.ClientSession: ...
