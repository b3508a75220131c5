"""The process's shared upstream HTTP session, plus small helpers every HTTP provider needs.

`SharedSession` is the `SessionFactory` the server builds once at start-up and hands to every
provider: it creates one `aiohttp.ClientSession` lazily inside the running event loop (a pooled,
keep-alive connector, no cookie jar, no per-request JSON helpers) and closes it on shutdown.

The helpers are pure: `scrub` removes credentials from any text that may reach a client or a log,
`parse_retry_after` reads the upstream's back-off hints, `pick_headers` keeps the upstream response
headers worth passing on (request id, rate limits), `transport_failure` words a transport exception for
clients (plain words and the deployment id; never a host, port or exception repr).

Bounded reads: an upstream's body is never read whole without a limit. `read_capped` reads at most
`MAX_ERROR_BODY` (64 KiB) of an error body (its message is all the gateway uses) and at most
`MAX_ANSWER_BODY` (32 MiB) of a non-streaming answer (refused before reading when its Content-Length says it
is larger); `bounded_events` stops a stream whose single event grows past `MAX_STREAM_EVENT` (16 MiB). Either
becomes `too_large_error`: a 502 `upstream_answer_too_large` that is not retried, not failed over and not
counted against the circuit (the same request would be answered as large again), billed at the request's
output limit (`dispatch.dispatcher`).
"""

from __future__ import annotations

import asyncio
import errno
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from email.utils import parsedate_to_datetime
from time import time
from typing import Self

import aiohttp

from tiergate.providers.base import SessionFactory, UpstreamError

USER_AGENT = "tiergate/0.1"


class SharedSession(SessionFactory):
    """One shared `aiohttp.ClientSession` per event loop, created on first use.

    Usage::

        sessions = SharedSession()            # at start-up, outside or inside the loop
        provider = provider_class(dep.provider)(dep, sessions)
        ...
        await sessions.close()                        # on shutdown (or `async with sessions:`)

    `limit` caps open connections in the pool (0 = unlimited); idle connections are kept alive for
    `keepalive_timeout` seconds. Responses are requested uncompressed by default (`compress=False`):
    on a LAN or loopback upstream decompression is pure CPU cost; set it to True for slow links.
    If the running loop changes (a new loop per test), a fresh session is made for the new loop.
    """

    def __init__(
        self,
        *,
        limit: int = 4096,
        keepalive_timeout: float = 60.0,
        ttl_dns_cache: int = 300,
        compress: bool = False,
    ) -> None:
        self._limit = limit
        self._keepalive_timeout = keepalive_timeout
        self._ttl_dns_cache = ttl_dns_cache
        self._compress = compress
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> aiohttp.ClientSession:
        session = self._session
        if session is not None and self._loop is asyncio.get_running_loop() and not session.closed:
            return session
        return self._create()

    def _create(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()  # RuntimeError outside a loop: sessions live in one loop
        connector = aiohttp.TCPConnector(
            limit=self._limit,
            limit_per_host=0,
            ttl_dns_cache=self._ttl_dns_cache,
            keepalive_timeout=self._keepalive_timeout,
        )
        skip = () if self._compress else ("Accept-Encoding",)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
            skip_auto_headers=skip,
            auto_decompress=True,  # only matters when compression was asked for
            trust_env=False,
            raise_for_status=False,
        )
        self._loop = loop
        return self._session

    async def close(self) -> None:
        session, self._session, self._loop = self._session, None, None
        if session is not None and not session.closed:
            await session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


AiohttpSessionFactory = SharedSession  # descriptive alias


# ---------------------------------------------------------------- scrubbing

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:api[-_]?key|key|token|access_token|sig|signature|code)=)[^&\s\"']+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_-]{3})[A-Za-z0-9_*-]{8,}")


#: Every upstream credential of this process's configured deployments (`register_secret`): an upstream's
#: message can quote another deployment's key (a shared proxy, a misrouted header), so each is masked
#: wherever a message is scrubbed, not only the answering deployment's.
_KNOWN_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask `value` in every scrubbed text from now on (values under 8 characters are too short to find
    safely and are only masked where passed explicitly)."""
    if value and len(value) >= 8:
        _KNOWN_SECRETS.add(value)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove credentials from `text`: the given secret values and every registered one
    (`register_secret`), `user:pass@` in URLs, key-like query parameters, bearer tokens and `sk-…` keys.
    Safe to call on any upstream message."""
    for s in (*secrets, *_KNOWN_SECRETS):
        if s and s in text:
            text = text.replace(s, "***")
    if "@" in text:
        text = _URL_USERINFO.sub(r"\1***@", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(r"\1***", text)
    text = _BEARER.sub(r"\1***", text)
    if "sk-" in text:
        text = _KEYLIKE.sub(r"\1***", text)
    return text


# ---------------------------------------------------------------- transport failures


def transport_failure(exc: BaseException, dep_id: str, *, after_headers: bool,
                      secrets: Iterable[str] = ()) -> tuple[str, str, str, str]:
    """A transport exception (aiohttp / OS) on deployment `dep_id` -> (kind, code, client message, operator
    detail). The client message says in plain words what happened and names the deployment, never the
    upstream's host or port, nor the library's exception text (aiohttp's payload errors quote a misleading
    "400"). The detail (exception type and text, secrets scrubbed) is for the operator log only.
    `after_headers`: the response had started, so the answer was cut (kind `stream_cut`); before, the
    upstream could not be reached or did not answer (kind `connect`)."""
    detail = scrub(f"{type(exc).__name__}: {exc}", secrets)
    if isinstance(exc, aiohttp.InvalidURL):
        return "connect", "upstream_unreachable", f"deployment {dep_id}: its api_base is not a valid URL", detail
    if isinstance(exc, aiohttp.ClientConnectorError):  # could not open the connection at all
        if isinstance(exc, aiohttp.ClientSSLError):
            why = "the TLS handshake with the upstream failed"
        elif isinstance(exc, getattr(aiohttp, "ClientConnectorDNSError", ())):
            why = "the upstream's host name could not be resolved"
        elif getattr(exc, "errno", None) == errno.ECONNREFUSED:
            why = "the connection was refused"
        else:
            why = "the upstream is unreachable"
        return "connect", "upstream_unreachable", f"could not connect to deployment {dep_id} ({why})", detail
    if after_headers:
        if isinstance(exc, (aiohttp.ClientOSError, ConnectionResetError)):
            what = "the connection to the upstream was reset before the answer was complete"
        elif isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
            what = "the upstream closed the connection before the answer was complete"
        else:
            what = "the upstream's answer broke off before it was complete"
        return "stream_cut", "upstream_stream_cut", f"deployment {dep_id}: {what}", detail
    if isinstance(exc, (aiohttp.ClientOSError, ConnectionResetError)):
        what = "the connection to the upstream was reset before it answered"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        what = "the upstream closed the connection without answering"
    elif isinstance(exc, aiohttp.ClientResponseError):
        what = "the upstream sent an invalid HTTP response"
    else:
        what = "the connection to the upstream failed before it answered"
    return "connect", "upstream_unreachable", f"deployment {dep_id}: {what}", detail


# ---------------------------------------------------------------- bounded reads

#: The most of an upstream's error body the gateway reads: its message is all that is used (a proxy's
#: 50 MB HTML error page is not buffered for a 200-character snippet); the rest is dropped with the
#: connection.
MAX_ERROR_BODY = 64 * 1024
#: The largest non-streaming answer accepted from an upstream (a 502 `upstream_answer_too_large` beyond it).
MAX_ANSWER_BODY = 32 * 1024 * 1024
#: The largest single server-sent event accepted in an upstream stream (bytes between two blank lines).
MAX_STREAM_EVENT = 16 * 1024 * 1024


class BodyTooLarge(Exception):
    """An upstream body (or one stream event) is larger than the gateway accepts."""

    def __init__(self, limit: int, what: str = "answer") -> None:
        super().__init__(f"{what} larger than {size_words(limit)}")
        self.limit = limit
        self.what = what


#: `UpstreamError.code` of an answer (or stream event) larger than the gateway accepts
ANSWER_TOO_LARGE = "upstream_answer_too_large"


def too_large_error(dep_id: str, exc: BodyTooLarge, usage: dict | None = None) -> UpstreamError:
    """The UpstreamError for `exc` on deployment `dep_id`: kind "protocol", code `ANSWER_TOO_LARGE`, which
    `dispatch.retry` neither retries nor fails over nor counts against the circuit."""
    what = ("a non-streaming answer" if exc.what == "answer" else exc.what)
    return UpstreamError(502, f"deployment {dep_id} sent {what} larger than {size_words(exc.limit)} (the "
                         f"gateway's limit for {'a non-streaming answer' if exc.what == 'answer' else 'one stream event'})",
                         kind="protocol", type="api_error", code=ANSWER_TOO_LARGE, usage=usage)


def size_words(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} bytes"


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of `resp`'s body: (body, complete). `complete` is False when more followed;
    the caller then closes `resp` (its connection holds an unread rest and cannot be reused). A body
    whose Content-Length fits is read in one call, as `resp.read()` would."""
    n = resp.content_length
    if n is not None and n <= limit:
        return await resp.read(), True
    buf = bytearray()
    content = resp.content
    while len(buf) <= limit:
        piece = await content.read(limit + 1 - len(buf))
        if not piece:
            return bytes(buf), True
        buf += piece
    return bytes(buf[:limit]), False


async def read_answer(resp: aiohttp.ClientResponse, limit: int | None = None) -> bytes:
    """A successful answer's body, or `BodyTooLarge` (nothing more is read; `resp` is closed) when its
    Content-Length says, or its bytes show, that it is larger than `limit` (default `MAX_ANSWER_BODY`)."""
    if limit is None:
        limit = MAX_ANSWER_BODY
    n = resp.content_length
    if n is not None and n > limit:
        resp.close()
        raise BodyTooLarge(limit)
    raw, complete = await read_capped(resp, limit)
    if not complete:
        resp.close()
        raise BodyTooLarge(limit)
    return raw


async def read_error_body(resp: aiohttp.ClientResponse, limit: int | None = None) -> bytes:
    """The first `limit` bytes (default `MAX_ERROR_BODY`) of an error answer's body (enough for any real
    error message); a longer body is cut there and its connection closed rather than drained."""
    if limit is None:
        limit = MAX_ERROR_BODY
    raw, complete = await read_capped(resp, limit)
    if not complete:
        resp.close()
    return raw


class bounded_events:  # (lower case: it replaced a generator function of this name)
    """`chunks` (a stream body's reads) passed through unchanged, raising `BodyTooLarge` once more than
    `limit` (default `MAX_STREAM_EVENT`) bytes arrive without an event boundary (a blank line): the SSE decoder
    buffers an unfinished event whole, so an upstream that never ends one would otherwise grow it without bound.

    A plain async iterator, not an async generator: a stream the relay stops reading at `[DONE]` is dropped
    unfinished, and each unfinished async generator is finalised through the event loop (an eventfd write and
    read, and a task of its own)."""

    __slots__ = ("_limit", "_next", "_pending", "_prev_end")

    def __init__(self, chunks: AsyncIterator[bytes], limit: int | None = None) -> None:
        self._next = chunks.__aiter__().__anext__
        self._limit = MAX_STREAM_EVENT if limit is None else limit
        self._pending = 0  # bytes since the last blank line (about: a boundary split across reads resets it late)
        self._prev_end = b""

    def __aiter__(self) -> bounded_events:
        return self

    async def __anext__(self) -> bytes:
        piece = await self._next()
        j = max(piece.rfind(b"\n\n"), piece.rfind(b"\n\r\n"))
        if j >= 0:
            pending = len(piece) - j
        else:
            joined = self._prev_end + piece[:3]
            pending = len(piece) if b"\n\n" in joined or b"\n\r\n" in joined else self._pending + len(piece)
        if pending > self._limit:
            raise BodyTooLarge(self._limit, "a stream event")
        self._pending = pending
        self._prev_end = (self._prev_end + piece[-2:])[-2:]
        return piece


# ---------------------------------------------------------------- upstream headers

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: str) -> float | None:
    """OpenAI's reset durations: `6m0s`, `1.5s`, `12ms`, `1h2m3s` -> seconds; a bare number is seconds."""
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(value):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    return total if pos == len(value) and pos > 0 else None


def _exhausted(raw: str | None) -> bool | None:
    """An `x-ratelimit-remaining-*` value: True when it is 0 (that limit is used up), False when it is
    another number, None when absent or unreadable."""
    if raw is None:
        return None
    try:
        return float(raw) == 0
    except ValueError:
        return None


def parse_retry_after(headers: Mapping[str, str], status: int | None = None) -> float | None:
    """Seconds the upstream asks us to wait: `retry-after-ms`, then `retry-after` (seconds or an HTTP
    date), then the `x-ratelimit-reset-*` duration of an *exhausted* limit. None when there is no hint.

    OpenAI sends `x-ratelimit-*` on every answer, errors included: a reset is a hint only for a limit
    whose `x-ratelimit-remaining-*` is 0 (the longest such reset when both are used up). On a 429 whose
    upstream does not say what remains (no `remaining` header for a limit), the shortest of those resets
    is taken, as the 429 says some limit is used up; on any other status (`status` given, not 429) a
    limit without a `remaining` header gives no hint. A 500/503 carrying the ordinary headers (remaining
    4999, reset 8.64s) is no hint at all: the dispatcher backs off exponentially instead."""
    v = headers.get("retry-after-ms")
    if v:
        try:
            return max(0.0, float(v) / 1000.0)
        except ValueError:
            pass
    v = headers.get("retry-after")
    if v:
        try:
            return max(0.0, float(v))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(v).timestamp() - time())
            except (TypeError, ValueError, IndexError, OverflowError):
                pass
    used_up: list[float] = []
    unknown: list[float] = []
    for which in ("requests", "tokens"):
        raw = headers.get(f"x-ratelimit-reset-{which}")
        d = parse_duration(raw) if raw else None
        if d is None:
            continue
        ex = _exhausted(headers.get(f"x-ratelimit-remaining-{which}"))
        if ex:
            used_up.append(d)
        elif ex is None:
            unknown.append(d)
    if used_up:
        return max(used_up)
    if unknown and status in (None, 429):
        return min(unknown)
    return None


_PASS_ON = frozenset({"x-request-id", "apim-request-id", "openai-processing-ms", "retry-after", "retry-after-ms",
                      "x-ms-region", "openai-version"})


def pick_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream response headers worth keeping (request id, processing time, rate limits),
    keys lower-cased. Never includes anything the upstream could echo a credential in."""
    out: dict[str, str] = {}
    for k, v in headers.items():
        lk = k.lower()
        if lk in _PASS_ON or lk.startswith("x-ratelimit-"):
            out[lk] = v
    return out
