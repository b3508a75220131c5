"""Per-key rate limits: requests per minute (RPM) and tokens per minute (TPM).

Algorithm: a token bucket per key and dimension, like OpenAI's own limits — capacity = the per-minute
limit, refilled continuously at limit/60 per second. A burst of up to the full limit passes at once,
then requests flow at the sustained rate; there is no window edge where 2x the limit can pass. The
RPM and TPM buckets are checked and debited together (both or neither). TPM is debited by the
request's estimate (prompt tokens + its output limit) at admission and corrected to the real usage at
settlement. A request admitted here but then refused for its budget gets both back (`refund`): only
requests that went on count against the limits.

Backends: `InProcessRateLimiter` (one replica) and `RedisRateLimiter` (one Lua script, Redis's own
clock, so every replica shares one bucket). A refusal is a 429 with OpenAI's headers:
`x-ratelimit-limit-requests|tokens`, `x-ratelimit-remaining-requests|tokens`,
`x-ratelimit-reset-requests|tokens` (time until the bucket is full again, e.g. `1s`, `6m0s`, `20ms`)
and `Retry-After` (whole seconds until this request would fit).
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass, field
from typing import Any

from tiergate.wire.errors import GatewayError


def duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        s = round(seconds, 3)
        return f"{s:g}s"
    m, s = divmod(math.ceil(seconds), 60)
    h, m = divmod(m, 60)
    return (f"{h}h" if h else "") + f"{m}m{s}s"


@dataclass
class Decision:
    allowed: bool
    headers: dict[str, str] = field(default_factory=dict)
    retry_after_s: float = 0.0
    which: str = ""  # "requests" | "tokens" when refused


def _headers(rpm: int | None, tpm: int | None, r_left: float, t_left: float) -> dict[str, str]:
    h: dict[str, str] = {}
    if rpm:
        h["x-ratelimit-limit-requests"] = str(rpm)
        h["x-ratelimit-remaining-requests"] = str(max(0, int(r_left)))
        h["x-ratelimit-reset-requests"] = duration((rpm - r_left) * 60.0 / rpm)
    if tpm:
        h["x-ratelimit-limit-tokens"] = str(tpm)
        h["x-ratelimit-remaining-tokens"] = str(max(0, int(t_left)))
        h["x-ratelimit-reset-tokens"] = duration((tpm - t_left) * 60.0 / tpm)
    return h


def _decide(rpm: int | None, tpm: int | None, tokens: int, r_left: float, t_left: float) -> Decision:
    """Given the refilled bucket levels, decide and say how long to wait when refused."""
    wait_r = (1 - r_left) * 60.0 / rpm if rpm and r_left < 1 else 0.0
    wait_t = (tokens - t_left) * 60.0 / tpm if tpm and t_left < tokens else 0.0
    if wait_r or wait_t:
        d = Decision(False, _headers(rpm, tpm, r_left, t_left), max(wait_r, wait_t),
                     "requests" if wait_r >= wait_t else "tokens")
        d.headers["retry-after"] = str(max(1, math.ceil(d.retry_after_s)))
        return d
    return Decision(True, _headers(rpm, tpm, r_left - (1 if rpm else 0), t_left - (tokens if tpm else 0)))


def refusal(key_name: str, rpm: int | None, tpm: int | None, tokens: int, d: Decision) -> GatewayError:
    if d.which == "requests":
        msg = (f"Rate limit reached for key '{key_name}' on requests per minute (RPM): limit {rpm}. "
               f"Please try again in {duration(d.retry_after_s)}.")
    else:
        msg = (f"Rate limit reached for key '{key_name}' on tokens per minute (TPM): limit {tpm}, this request "
               f"needs up to {tokens} (prompt + output limit). Please try again in {duration(d.retry_after_s)}, "
               "or lower max_tokens.")
    # OpenAI's own rate-limit errors carry type "requests" or "tokens" and code "rate_limit_exceeded"
    return GatewayError(429, msg, type=d.which, code="rate_limit_exceeded", headers=d.headers)


def too_large(key_name: str, tpm: int, tokens: int, model: str | None = None) -> GatewayError:
    on = f" on model '{model}'" if model else ""
    return GatewayError(
        429, f"Request too large for key '{key_name}'{on}: it needs up to {tokens} tokens (prompt + output limit) "
        f"but the key's limit is {tpm} tokens per minute. Set a lower max_tokens / max_completion_tokens (without "
        "one the model's default output limit is counted) or shorten the prompt; retrying it unchanged cannot "
        "succeed.",
        type="tokens", code="rate_limit_exceeded",
        # it can never fit the key's minute: tell the SDKs not to retry it (they retry every 429 otherwise)
        headers={"x-ratelimit-limit-tokens": str(tpm), "x-should-retry": "false"},
    )


class RateLimiter(abc.ABC):
    @abc.abstractmethod
    async def acquire(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> Decision:
        """Take one request and `tokens` tokens from the key's buckets, or neither."""

    @abc.abstractmethod
    async def adjust(self, key_id: str, tpm: int, delta_tokens: int) -> None:
        """Correct the token bucket after the fact: positive delta = the request used more than its
        estimate (taken now, possibly into debt), negative = it used less (given back, capped)."""

    @abc.abstractmethod
    async def refund(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> None:
        """Give back what `acquire` took (one request and `tokens` tokens, capped at the limits) for a
        request that was refused afterwards (budget) and so never went on."""

    async def close(self) -> None:
        return None


class InProcessRateLimiter(RateLimiter):
    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # (key, dim) -> (level, at)

    def _level(self, key_id: str, dim: str, limit: int, now: float) -> float:
        level, at = self._buckets.get((key_id, dim), (float(limit), now))
        return min(float(limit), level + (now - at) * limit / 60.0)

    async def acquire(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> Decision:
        now = time.monotonic()
        r = self._level(key_id, "r", rpm, now) if rpm else 0.0
        t = self._level(key_id, "t", tpm, now) if tpm else 0.0
        d = _decide(rpm, tpm, tokens, r, t)
        if d.allowed:
            if rpm:
                self._buckets[(key_id, "r")] = (r - 1, now)
            if tpm:
                self._buckets[(key_id, "t")] = (t - tokens, now)
        if len(self._buckets) > 200_000:  # forget full buckets of idle keys
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        return d

    async def adjust(self, key_id: str, tpm: int, delta_tokens: int) -> None:
        now = time.monotonic()
        t = self._level(key_id, "t", tpm, now)
        self._buckets[(key_id, "t")] = (min(float(tpm), t - delta_tokens), now)

    async def refund(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> None:
        now = time.monotonic()
        for dim, limit, amount in (("r", rpm, 1), ("t", tpm, tokens)):
            if limit:
                self._buckets[(key_id, dim)] = (min(float(limit), self._level(key_id, dim, limit, now) + amount), now)


# KEYS: 1 rpm bucket, 2 tpm bucket (hash: level, at_ms). ARGV: rpm (0 = none), tpm (0 = none), tokens
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function level(key, limit)
  if limit == 0 then return 0 end
  local v = redis.call('HMGET', key, 'level', 'at')
  if not v[1] then return limit end
  return math.min(limit, tonumber(v[1]) + (now - tonumber(v[2])) * limit / 60000)
end
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local r, tk = level(KEYS[1], rpm), level(KEYS[2], tpm)
local ok = 1
if rpm > 0 and r < 1 then ok = 0 end
if tpm > 0 and tk < tokens then ok = 0 end
if ok == 1 then
  if rpm > 0 then
    redis.call('HSET', KEYS[1], 'level', tostring(r - 1), 'at', now)
    redis.call('PEXPIRE', KEYS[1], 120000)
  end
  if tpm > 0 then
    redis.call('HSET', KEYS[2], 'level', tostring(tk - tokens), 'at', now)
    redis.call('PEXPIRE', KEYS[2], 120000)
  end
end
return {ok, tostring(r), tostring(tk)}
"""
_ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'level', 'at')
local lvl = limit
if v[1] then lvl = math.min(limit, tonumber(v[1]) + (now - tonumber(v[2])) * limit / 60000) end
redis.call('HSET', KEYS[1], 'level', tostring(math.min(limit, lvl - delta)), 'at', now)
redis.call('PEXPIRE', KEYS[1], 120000)
return 1
"""

# KEYS: 1 rpm bucket, 2 tpm bucket. ARGV: rpm (0 = none), tpm (0 = none), tokens. Both or neither.
_REFUND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function give(key, limit, amount)
  if limit == 0 then return end
  local v = redis.call('HMGET', key, 'level', 'at')
  if not v[1] then return end
  local lvl = math.min(limit, tonumber(v[1]) + (now - tonumber(v[2])) * limit / 60000)
  redis.call('HSET', key, 'level', tostring(math.min(limit, lvl + amount)), 'at', now)
  redis.call('PEXPIRE', key, 120000)
end
give(KEYS[1], tonumber(ARGV[1]), 1)
give(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]))
return 1
"""


class RedisRateLimiter(RateLimiter):
    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._acquire = redis.register_script(_ACQUIRE)
        self._adjust = redis.register_script(_ADJUST)
        self._refund = redis.register_script(_REFUND)

    def _keys(self, key_id: str) -> list[str]:
        return [f"{self.prefix}rl:{{{key_id}}}:r", f"{self.prefix}rl:{{{key_id}}}:t"]

    async def acquire(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> Decision:
        ok, r, t = await self._acquire(keys=self._keys(key_id), args=[rpm or 0, tpm or 0, tokens])
        r, t = float(r), float(t)
        if ok == 1:
            return Decision(True, _headers(rpm, tpm, r - (1 if rpm else 0), t - (tokens if tpm else 0)))
        return _decide(rpm, tpm, tokens, r, t)

    async def adjust(self, key_id: str, tpm: int, delta_tokens: int) -> None:
        await self._adjust(keys=self._keys(key_id)[1:], args=[tpm, delta_tokens])

    async def refund(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> None:
        await self._refund(keys=self._keys(key_id), args=[rpm or 0, tpm or 0, tokens])
