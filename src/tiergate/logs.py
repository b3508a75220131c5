"""Structured JSON logs: one line per log record and one `request` line per request, never a secret.

`configure_logging(level)` installs a JSON formatter on the `tiergate` logger (idempotent). Every string
that reaches the output (message, fields, traceback) is scrubbed: values under secret-looking keys
(`api_key`, `authorization`, `password`, `secret`, `token`, …) become `***`, and `sk-…` keys, the
gateway's own `tg-…` keys (all but the prefix the admin API shows), bearer tokens, `user:pass@` in URLs
and `key=`/`token=` query parameters are masked wherever they appear.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, TextIO

import orjson

LOGGER = "tiergate"
_REQUEST_LOGGER = "tiergate.request"

_SECRET_KEY = re.compile(r"(?i)(api[-_]?key|authorization|password|passwd|secret|token|credential|cookie)")
_PATTERNS = (
    (re.compile(r"\b(sk-[A-Za-z0-9_-]{0,8})[A-Za-z0-9_\-]{8,}"), r"\1***"),
    # the gateway's own virtual keys (accounting/keys.py: `tg-` + 43 URL-safe characters): the first 8 are
    # the prefix the admin API shows, the rest is masked
    (re.compile(r"\b(tg-[A-Za-z0-9_-]{8})[A-Za-z0-9_-]{12,}"), r"\1***"),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1***"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@:]+:[^/\s@]+@"), r"\1***@"),
    (re.compile(r"(?i)([?&](?:api[-_]?key|key|token|access_token|sig|signature)=)[^&\s\"']+"), r"\1***"),
    # (not the error code `invalid_api_key: Incorrect API key provided...`, whose next word is no secret)
    (re.compile(r"(?i)((?<!invalid_)(?:api[-_]?key|x-api-key|password|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{4,}"),
     r"\1***"),
)
_TOKEN_KEYS = {"prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens",
               "max_tokens", "max_completion_tokens", "tokens"}


def _maybe_secret(text: str) -> bool:
    """Whether `text` has what at least one pattern above needs (`sk-`, `tg-`, `@`, `=`, `:` or "bearer"):
    most text (a model name) has none, and these tests cost a fraction of the six substitutions."""
    return ("sk-" in text or "tg-" in text or "@" in text or "=" in text or ":" in text
            or "earer" in text.lower())


_SECRET_PARAM = re.compile(r"(?i)([?&](?:ssl)?(?:password|passwd|pass|secret|token|api_key|key)=)[^&#]*")


def redact_url(url: str) -> str:
    """A storage (or Redis) URL fit to print: the password of `user:password@` and the value of a
    password-like query parameter (`?password=`, `sslpassword=`) masked. A SQLite URL is a path: as it is."""
    if url.startswith("sqlite:"):
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = (user.split(":", 1)[0] + ":***" if ":" in user else user) + "@" + host
    return f"{scheme}{sep}{netloc}{_SECRET_PARAM.sub(lambda m: m.group(1) + '***', tail)}"


def scrub_text(text: str) -> str:
    if not _maybe_secret(text):
        return text
    for pat, repl in _PATTERNS:
        text = pat.sub(repl, text)
    return text


def scrub(value: Any, key: str = "") -> Any:
    """A copy of `value` safe to log."""
    if key and key not in _TOKEN_KEYS and not key.endswith("_tokens") and _SECRET_KEY.search(key):
        return "***" if value not in (None, "") else value
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {str(k): scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return scrub_text(str(value))


_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
# Record attributes never written as fields: uvicorn adds `color_message`, the message again with ANSI
# colour codes, to its records for its own console formatter.
_DROPPED = {"color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub_text(record.getMessage()),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and k not in _DROPPED and not k.startswith("_"):
                out[k] = scrub(v, k)
        if record.exc_info:
            out["exc"] = scrub_text(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> logging.Logger:
    """JSON lines on `stream` (stderr) for the `tiergate` logger and its children. Calling it again
    replaces the handler instead of adding a second one."""
    logger = logging.getLogger(LOGGER)
    for h in list(logger.handlers):
        if getattr(h, "_tiergate", False):
            logger.removeHandler(h)
    logger.addHandler(_json_handler(stream))
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    logger.propagate = False
    return logger


REPEAT_WINDOW_S = 30.0


class RepeatFilter(logging.Filter):
    """Holds back a traceback that repeats: a record with an exception whose logger, message and exception
    (type and text) were written less than REPEAT_WINDOW_S ago is dropped; the next one written says how
    many were (`repeated`). A store or Redis outage made a background loop (the batch runner, asyncpg's
    pool) log the same traceback about once a second."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[tuple, list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        key = (record.name, record.getMessage(), type(exc).__name__, str(exc)[:300])
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.repeated = int(seen[1])
        if len(self._seen) >= 1000:
            self._seen.clear()
        self._seen[key] = [now, 0]
        return True


def _json_handler(stream: TextIO | None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter())
    handler._tiergate = True  # type: ignore[attr-defined]
    return handler


def capture_other_loggers(level: str | int = "WARNING", stream: TextIO | None = None) -> None:
    """Every other library's log records (asyncpg, aiohttp, redis, asyncio, uvicorn, …) in the same scrubbed
    JSON lines as tiergate's, at `level` or above (never below WARNING for them: their debug output is not
    the gateway's): they went to Python's last-resort handler, as multi-line plain-text tracebacks that were
    neither JSON nor scrubbed."""
    lvl = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    lvl = max(int(lvl) if isinstance(lvl, int) else logging.WARNING, logging.WARNING)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_tiergate", False):
            root.removeHandler(h)
    root.addHandler(_json_handler(stream))
    root.setLevel(lvl)


def log_request(request_id: str, *, status: int | str, logger: logging.Logger | None = None, **fields: Any) -> None:
    """One `request` line: the request id, the outcome and any fields (model, deployment, latency_ms,
    tokens, cost_usd, route, error, …). Secrets in the fields are masked."""
    lg = logger or logging.getLogger(_REQUEST_LOGGER)
    if not lg.isEnabledFor(logging.INFO):
        return
    extra = {"event": "request", "request_id": request_id, "status": status}
    for k, v in fields.items():
        if k in _STD:
            k = f"f_{k}"
        extra[k] = v
    lg.info("request %s %s", request_id, status, extra=extra)
