"""What every upstream batch client shares: the interface the forwarding driver (`batches.upstream`)
talks to, the normalised poll answer and per-line result, and the small JSON-over-HTTP helper.

A client speaks one provider's batch protocol (OpenAI Files + Batches, Anthropic Message Batches)
and hands the driver OpenAI-shaped facts: batch status in OpenAI's vocabulary, request counts as
`{total, completed, failed}`, and one `LineResult` per input line whose body is what the line-by-line
runner would have stored (a `chat.completion` / `response` body, or an OpenAI error body).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

UPSTREAM_DONE = ("completed", "failed", "expired", "cancelled")


class UpstreamBatchError(Exception):
    """A batch call failed; `status` is the HTTP status (0: no answer). The driver retries on its next
    poll, except for a refused submission (`refused`), which fails the batch."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def refused(self) -> bool:
        return self.status in (400, 413, 422)


@dataclass(frozen=True)
class Polled:
    """One look at the upstream batch, in OpenAI's terms."""

    status: str  # in_progress | cancelling | completed | expired | cancelled | failed
    counts: dict[str, int] = field(default_factory=dict)  # {total, completed, failed}
    errors: Any = None  # the upstream's batch-level errors when it failed
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in UPSTREAM_DONE


@dataclass(frozen=True)
class LineResult:
    """The outcome of one input line. `status_code` None: the line never ran (then `error` says why)."""

    line_no: int
    ok: bool
    status_code: int | None
    body: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None  # OpenAI-shaped usage to bill, when the upstream ran the line


Settle = Callable[[list[LineResult]], Awaitable[None]]


class UpstreamBatchClient(Protocol):
    async def submit(self, store: Any, batch: dict[str, Any], up: dict[str, Any], settle: Settle) -> None:
        """Create the upstream batch for `batch` (its row) unless a crashed predecessor already did;
        set `up["batch_id"]` (None: nothing needed to go upstream), persisting `up` as it goes. Lines
        that cannot be sent are answered through `settle` before anything is created."""

    async def poll(self, batch_id: str) -> Polled: ...

    async def cancel(self, batch_id: str) -> None: ...

    async def results(self, polled: Polled, up: dict[str, Any], lines: list[dict[str, Any]]) -> list[LineResult]:
        """Every result the ended upstream batch holds, mapped back to input line numbers."""


class JsonHttp:
    """Requests against one API base with fixed headers; an HTTP error becomes `UpstreamBatchError`."""

    def __init__(self, session: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.headers = headers

    async def request(self, method: str, path: str, *, json_body: Any = None, **kw: Any) -> bytes:
        headers = dict(self.headers)
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            kw["data"] = orjson.dumps(json_body)
        async with self.session.request(method, self.base + path, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=300), **kw) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise UpstreamBatchError(f"{method} {path}: HTTP {resp.status}: "
                                         f"{raw[:300].decode('utf-8', 'replace')}", resp.status)
            return raw

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        return orjson.loads(await self.request(method, path, **kw))
