"""Circuit state shared by all replicas through Redis, without a Redis round trip per request.

Each replica keeps its local `CircuitBreaker`s as a cache and refreshes them from Redis in one
background task (`MGET` of every deployment's state key every `refresh_s`). Redis is touched on the
request path only when something is already wrong: a failure (one Lua call that adds it to a sliding
window and opens the circuit when the window is full), a 429 with `Retry-After` (a trip), a half-open
probe (`SET NX`, so exactly one replica probes) and the probe's success (delete the keys).

Keys, per deployment id, under `{prefix}` = the `redis:` URL's `?prefix=` + `cb:` (default `tiergate:cb:`;
the dispatcher passes it, so fleets sharing one Redis under different prefixes never share circuits):
`{prefix}{id}:state` = epoch ms until which the circuit is open (present and in
the past = half-open; absent = closed; a value ending in `.5` marks a rate-limit trip, so every replica
answers 429 rather than 503 while it lasts), `{prefix}{id}:fails` = sorted set of failure times,
`{prefix}{id}:probe` = the probe lock. When Redis is unreachable every call falls back to the local
breaker and a warning is logged at most once a minute: requests are never failed because of Redis.

The same refresh also shares the deployments' `rpm`/`tpm` windows: each replica adds what it used since
the last refresh to `{prefix}{id}:{rpm|tpm}:{epoch minute}` (`INCRBYFLOAT`, expiring after 3 minutes)
and reads the current and previous minute back, so every replica's window counts everyone's traffic.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

from tiergate.dispatch.balancer import DeploymentState
from tiergate.dispatch.circuit import CLOSED, HALF_OPEN, OPEN

log = logging.getLogger("tiergate.dispatch")

# KEYS: fails, state, probe. ARGV: now_ms, window_ms, threshold, cooldown_ms, ttl_ms, member
_FAILURE = """
local st = redis.call('GET', KEYS[2])
local now = tonumber(ARGV[1])
if st then
  local u = tonumber(st)
  if u > now then return u end
  u = now + tonumber(ARGV[4])
  redis.call('SET', KEYS[2], u, 'PX', ARGV[5])
  redis.call('DEL', KEYS[3])
  return u
end
redis.call('ZADD', KEYS[1], now, ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local u = now + tonumber(ARGV[4])
  redis.call('SET', KEYS[2], u, 'PX', ARGV[5])
  redis.call('DEL', KEYS[1], KEYS[3])
  return u
end
return 0
"""

# KEYS: probe. ARGV: token. Delete the probe lock only if this replica holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: state, probe. ARGV: until_ms, ttl_ms
_TRIP = """
local st = redis.call('GET', KEYS[1])
if st and tonumber(st) >= tonumber(ARGV[1]) then return tonumber(st) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
return tonumber(ARGV[1])
"""

_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError, ConnectionError)
try:  # redis is a declared dependency, but keep this module importable without it
    import redis.exceptions as _rexc

    _ERRORS = (*_ERRORS, _rexc.RedisError)
except ImportError:  # pragma: no cover
    pass


class SharedCircuits:
    def __init__(self, redis: Any, states: Sequence[DeploymentState], *, prefix: str = "tiergate:cb:",
                 refresh_s: float = 0.5, call_timeout_s: float = 0.5) -> None:
        self.redis = redis
        self.states = list(states)
        self.prefix = prefix
        self.refresh_s = refresh_s
        self.call_timeout_s = call_timeout_s
        self._state_keys = [f"{prefix}{s.id}:state" for s in self.states]
        self._windows = [(f"{prefix}{s.id}:{kind}", w) for s in self.states
                         for kind, w in (("rpm", s.rpm), ("tpm", s.tpm)) if w is not None]
        self._task: asyncio.Task | None = None
        self._failure = redis.register_script(_FAILURE)
        self._trip = redis.register_script(_TRIP)
        self._release = redis.register_script(_RELEASE)
        self.token = os.urandom(8).hex()  # this replica's value in a probe lock it holds
        self._last_warn = -math.inf  # monotonic time of the last warning (none yet)
        self._stopping = False
        self.healthy = True

    # ------------------------------------------------------------ background refresh

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tiergate-circuit-refresh")

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._stopping = True
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=2 * self.call_timeout_s + self.refresh_s)

    async def _run(self) -> None:
        task = asyncio.current_task()
        # redis-py can swallow a cancellation that lands mid-command: check for it explicitly
        while not self._stopping and not (task is not None and task.cancelling()):
            await self.refresh()
            await asyncio.sleep(self.refresh_s)

    async def refresh(self) -> None:
        try:
            async with asyncio.timeout(self.call_timeout_s):
                values = await self.redis.mget(self._state_keys)
        except _ERRORS as e:
            self._warn(e)
            return
        self.healthy = True
        loop = asyncio.get_running_loop()
        mono, wall_ms = loop.time(), time.time() * 1000
        for st, v in zip(self.states, values):
            self._apply(st, None if v is None else float(v), mono, wall_ms, from_refresh=True)
        if self._windows:
            await self.sync_rates()

    async def sync_rates(self) -> None:
        wall = time.time()
        minute, frac = int(wall // 60), (wall % 60) / 60
        pushed = []
        pipe = self.redis.pipeline(transaction=False)
        for base, w in self._windows:
            delta, w.unsynced = w.unsynced, 0.0
            pushed.append(delta)
            cur = f"{base}:{minute}"
            if delta:
                pipe.incrbyfloat(cur, delta)
                pipe.expire(cur, 180)
            pipe.mget(cur, f"{base}:{minute - 1}")
        try:
            async with asyncio.timeout(self.call_timeout_s):
                results = await pipe.execute()
        except _ERRORS as e:
            for (_, w), delta in zip(self._windows, pushed):
                w.unsynced += delta  # push it next time
            self._warn(e)
            return
        totals = [r for r in results if isinstance(r, list)]
        for (_, w), delta, (cur, prev) in zip(self._windows, pushed, totals):
            own = w.own
            own[minute] = own.get(minute, 0.0) + delta
            for k in [k for k in own if k < minute - 1]:
                del own[k]
            everyone = float(prev or 0) * (1 - frac) + float(cur or 0)
            mine = own.get(minute - 1, 0.0) * (1 - frac) + own.get(minute, 0.0)
            w.remote = max(0.0, everyone - mine)

    def _apply(self, st: DeploymentState, until_ms: float | None, mono: float, wall_ms: float,
               *, from_refresh: bool = False) -> None:
        cb = st.circuit
        if not until_ms:
            if cb.state != CLOSED and not cb.probing:
                cb.close()
            return
        if until_ms > wall_ms:
            until = mono + (until_ms - wall_ms) / 1000
            if cb.state != OPEN or abs(cb.open_until - until) > 0.05:
                cb.open(until)
                cb.rate_limited = until_ms % 1 == 0.5
            return
        # the remote circuit is half-open
        if cb.state == OPEN:
            cb.open_until = mono
            cb.available(mono)  # moves it to half-open
        elif cb.state == CLOSED:
            cb.open(mono)
            cb.available(mono)
        elif from_refresh and cb.state == HALF_OPEN:
            cb.probe_elsewhere = False  # let this replica race for the probe lock again

    # ------------------------------------------------------------ request-path calls (failure paths only)

    async def failure(self, st: DeploymentState, now: float) -> bool:
        """Record a failure in the shared window; returns False when Redis could not be used (the caller
        then counts it locally)."""
        p = st.circuit.policy
        wall_ms = time.time() * 1000
        keys = [f"{self.prefix}{st.id}:fails", f"{self.prefix}{st.id}:state", f"{self.prefix}{st.id}:probe"]
        args = [int(wall_ms), int(p.window_s * 1000), p.failures, int(p.cooldown_s * 1000),
                int(max(p.cooldown_s * 20, 60) * 1000), f"{wall_ms:.3f}-{os.urandom(4).hex()}"]
        try:
            async with asyncio.timeout(self.call_timeout_s):
                until = await self._failure(keys=keys, args=args)
        except _ERRORS as e:
            self._warn(e)
            return False
        if until:
            self._apply(st, float(until), now, wall_ms)
        return True

    async def trip(self, st: DeploymentState, seconds: float) -> None:
        wall_ms = time.time() * 1000
        until = int(wall_ms + seconds * 1000) + 0.5  # .5: a rate-limit trip (see the module docstring)
        ttl = int(max(seconds * 2, st.circuit.policy.cooldown_s * 20, 60) * 1000)
        try:
            async with asyncio.timeout(self.call_timeout_s):
                await self._trip(keys=[f"{self.prefix}{st.id}:state", f"{self.prefix}{st.id}:probe"],
                                 args=[until, ttl])
        except _ERRORS as e:
            self._warn(e)

    async def acquire_probe(self, st: DeploymentState, ttl_s: float) -> bool:
        try:
            async with asyncio.timeout(self.call_timeout_s):
                got = await self.redis.set(f"{self.prefix}{st.id}:probe", self.token, nx=True,
                                           px=max(1, int(ttl_s * 1000)))
        except _ERRORS as e:
            self._warn(e)
            return True  # Redis down: the local breaker alone decides
        return bool(got)

    async def release_probe(self, st: DeploymentState) -> None:
        """The probe this replica holds ended without a verdict (a client error, the request's own
        timeout): free the lock now, so another replica may probe without waiting for its expiry. Only
        this replica's own lock is deleted (compare-and-delete on its token)."""
        try:
            async with asyncio.timeout(self.call_timeout_s):
                await self._release(keys=[f"{self.prefix}{st.id}:probe"], args=[self.token])
        except _ERRORS as e:
            self._warn(e)

    async def success(self, st: DeploymentState) -> None:
        p = f"{self.prefix}{st.id}"
        try:
            async with asyncio.timeout(self.call_timeout_s):
                await self.redis.delete(f"{p}:state", f"{p}:fails", f"{p}:probe")
        except _ERRORS as e:
            self._warn(e)

    def _warn(self, e: BaseException) -> None:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError  # a cancellation redis-py turned into an error: let it through
        self.healthy = False
        now = time.monotonic()
        if now - self._last_warn > 60:
            self._last_warn = now
            log.warning("redis unavailable for shared circuit state (%s); using local state", type(e).__name__)
