"""Azure OpenAI: the OpenAI wire protocol at Azure's URLs, with Azure's key header and content filter.

Two URL shapes (wire facts §9):
- classic: `{api_base}/openai/deployments/{deployment}/chat/completions?api-version={api_version}`
  (Responses: `{api_base}/openai/responses?api-version=…`, its own version: `responses_api_version`);
  the deployment in the path picks the model.
- v1, chosen when `api_base` ends with `/openai/v1`: `{api_base}/chat/completions` and
  `{api_base}/responses`, no api-version, and `model` = the deployment name (or the upstream model).
Auth is the `api-key` header; `options: {auth: bearer}` sends `Authorization: Bearer` instead (Entra
ID tokens). Azure's extra annotations are tolerated: chunks with empty `choices` that carry only
`prompt_filter_results` are skipped, choices without `delta` get an empty one, and a prompt rejected
by the content filter becomes an OpenAI-shaped 400 with `code: content_filter`.
Everything else (timeouts, streaming, error mapping, scrubbing) is inherited from the openai provider.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import orjson

from tiergate.providers.base import UpstreamError
from tiergate.providers.openai import OpenAIProvider
from tiergate.providers.registry import register

DEFAULT_API_VERSION = "2024-10-21"  # GA inference version
# o-series models answer older versions with "enabled only for api versions 2024-12-01-preview and later"
# (shared/reference/openai-wire-facts.md, Azure api-version): their default is this one
DEFAULT_REASONING_API_VERSION = "2024-12-01-preview"
_O_SERIES = re.compile(r"^o\d")
DEFAULT_RESPONSES_API_VERSION = "2025-04-01-preview"  # the classic Responses API needs a preview version
# the first api-version of the classic Responses API (`/openai/responses`); GA versions (2024-10-21, ...)
# do not have it
FIRST_RESPONSES_API_VERSION = "2025-03-01-preview"
_PREVIEW = re.compile(r"^\d{4}-\d{2}-\d{2}-preview$")


@register("azure")
class AzureProvider(OpenAIProvider):
    name = "azure"

    @property
    def v1(self) -> bool:
        return self._api_base.endswith("/openai/v1")

    def _url(self, endpoint: str) -> str:
        base = self._api_base
        if base.endswith("/openai/v1"):
            return f"{base}/{'chat/completions' if endpoint == 'chat' else 'responses'}"
        root = base.removesuffix("/openai")
        if endpoint == "chat":
            dep = quote(self.deployment.deployment or self.upstream_model(self.deployment.model), safe="")
            version = self.deployment.api_version or self._default_api_version()
            return f"{root}/openai/deployments/{dep}/chat/completions?api-version={quote(version)}"
        return f"{root}/openai/responses?api-version={quote(self.responses_api_version())}"

    def responses_api_version(self) -> str:
        """The `api-version` of `/openai/responses` (classic URLs): `options.responses_api_version` when set;
        else the deployment's `api_version` when it is a preview version that has the Responses API
        (2025-03-01-preview or later); else `DEFAULT_RESPONSES_API_VERSION`. A chat `api_version` such
        as the GA 2024-10-21 is not inherited: Azure answers /openai/responses with it as unsupported."""
        own = self.deployment.options.get("responses_api_version")
        if own:
            return str(own)
        chat = str(self.deployment.api_version or "")
        if _PREVIEW.match(chat) and chat >= FIRST_RESPONSES_API_VERSION:
            return chat
        return DEFAULT_RESPONSES_API_VERSION

    def _default_api_version(self) -> str:
        """Without `api_version`: the reasoning models' minimum for an o-series model (by the configured or
        the upstream model name), the GA version otherwise."""
        names = (self.deployment.model, self.deployment.upstream_model or "", self.deployment.deployment or "")
        o_series = any(_O_SERIES.match(n.lower()) for n in names)
        return DEFAULT_REASONING_API_VERSION if o_series else DEFAULT_API_VERSION

    def _auth_headers(self) -> dict[str, str]:
        key = self.deployment.api_key
        if key is None:
            return {}
        if self.deployment.options.get("auth") == "bearer":
            return {"Authorization": f"Bearer {key.value}"}
        return {"api-key": key.value}

    def _body_model(self, requested: str) -> str:
        # Azure routes by deployment name; the body's model is what the v1 API and the Responses API
        # look at, and is ignored by classic chat URLs.
        return self.deployment.deployment or self.upstream_model(requested)

    def _normalize_chunk(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        choices = chunk.get("choices")
        if not choices:
            # the usage chunk is kept; a chunk holding only prompt_filter_results is not
            return chunk if chunk.get("usage") else None
        for c in choices:
            if "delta" not in c:
                c["delta"] = {}
        return chunk

    def _status_error(self, status: int, raw: bytes, headers: Any) -> UpstreamError:
        err = super()._status_error(status, raw, headers)
        if status == 400 and (err.code == "content_filter" or _inner_code(raw) == "ResponsibleAIPolicyViolation"):
            err.code = "content_filter"
            err.type = "invalid_request_error"
            err.param = err.param or "prompt"
            err.message = (err.message or "") + " (rejected by Azure OpenAI's content filter; rephrase the prompt)"
        elif err.type is None and 400 <= status < 500:
            err.type = "invalid_request_error"
        return err


def _inner_code(raw: bytes) -> str | None:
    if b"innererror" not in raw:
        return None
    try:
        inner = orjson.loads(raw)["error"]["innererror"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return inner.get("code") if isinstance(inner, dict) else None
