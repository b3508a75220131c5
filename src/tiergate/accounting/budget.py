"""Budgets with reservations: before dispatch reserve the most a request can cost, settle to the real
cost afterwards. Reserve is an atomic check-and-add of `spent + reserved + amount <= budget`, so
however many requests race, settled spend stays within the budget as long as each request's real cost
is at most what it reserved. The output side of a reservation is a hard bound (the output limit is sent
upstream); the prompt side is the gateway's token estimate, so a request whose upstream bills more
prompt tokens than estimated (images, files, another tokenizer) settles above its hold. Settlement
always adds the real cost, and a request is refused once `spent` alone reaches the budget, so spend
can pass the budget only by what the requests in flight at that moment cost beyond their holds.

Money is counted in integer nano-dollars (1e-9 USD) so sums are exact. Three backends, one contract:
- `InProcessBudget`: one replica (SQLite); counters in memory, seeded from the ledger.
- `RedisBudget`: replicas sharing Redis; a Lua script per operation.
- `StoreBudget`: replicas sharing PostgreSQL but no Redis; a row lock per key and period.
A reservation carries an expiry (default 11 min, past the longest request), so holds left by a
crashed replica lapse instead of blocking the budget forever. Periods: none | daily | monthly (UTC).
"""

from __future__ import annotations

import abc
import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tiergate.wire.errors import GatewayError

NANO = 1_000_000_000
RESERVATION_TTL_S = 660.0

SeedFn = Callable[[str, float], Awaitable[float]]  # (key_id, period start ts) -> USD spent so far


def to_nano(usd: float) -> int:
    return round(usd * NANO)


def period_of(period: str, now: float | None = None) -> tuple[str, float, float | None]:
    """-> (period id, start ts, end ts or None) for `none | daily | monthly` in UTC."""
    t = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    if period == "daily":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("d%Y-%m-%d"), start.timestamp(), start.timestamp() + 86400
    if period == "monthly":
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start.strftime("m%Y-%m"), start.timestamp(), nxt.timestamp()
    return "all", 0.0, None


PERIODS = ("none", "daily", "monthly")


def periods_now(but: str, now: float | None = None) -> list[str]:
    """The ids of the periods of every kind that `now` falls in, less `but` (the reservation's own).

    A settlement adds its cost to the reservation's period and also to each of these whose counter
    already exists, so every counter of a key stays equal to the ledger's spend since it was seeded:
    when an admin changes the key's `budget_period` while requests are in flight (they reserved in the
    old period; the new period's counter was seeded from the ledger before their rows existed), and when
    a request in flight at a UTC midnight settles in the next day's (or month's) counter. A counter that
    does not exist yet is left alone: it is seeded from the ledger, which has the request's row."""
    ids = []
    for kind in PERIODS:
        pid = period_of(kind, now)[0]
        if pid != but:
            ids.append(pid)
    return ids


@dataclass
class Reservation:
    key_id: str
    period: str
    id: str
    amount_nusd: int


HOLD_RETRY_AFTER_S = 1  # Retry-After on a refusal caused only by holds of requests in flight


class BudgetRefused(GatewayError):
    """429 insufficient_quota: the reservation does not fit. `exhausted` says why, for callers that
    decide whether to retry (the batch runner, the client via headers):
    - True: the budget is spent: `spent + amount > budget`, so it cannot fit even if every hold in flight
      settles for nothing. Sent with `x-should-retry: false` (the openai SDKs then do not retry).
    - False: it fits the budget but not next to the holds of requests in flight, which settle (and free
      what they do not spend) when those requests end. Sent with a short `Retry-After`."""

    def __init__(self, message: str, *, exhausted: bool, spent_nusd: int, reserved_nusd: int, amount_nusd: int,
                 budget_nusd: int) -> None:
        headers = {"x-should-retry": "false"} if exhausted else {"retry-after": str(HOLD_RETRY_AFTER_S)}
        super().__init__(429, message, type="insufficient_quota", code="insufficient_quota", headers=headers)
        self.exhausted = exhausted
        self.spent_nusd = spent_nusd
        self.reserved_nusd = reserved_nusd
        self.amount_nusd = amount_nusd
        self.budget_nusd = budget_nusd


def over_budget(key_name: str, budget_usd: float, spent_nusd: int, reserved_nusd: int, amount_nusd: int,
                period: str) -> BudgetRefused:
    budget = to_nano(budget_usd)
    exhausted = spent_nusd + amount_nusd > budget
    left = max(0, budget - spent_nusd - reserved_nusd) / NANO
    when = {"daily": " for today (UTC)", "monthly": " for this month (UTC)"}.get(period, "")
    head = (f"This request could cost up to ${amount_nusd / NANO:.6f}, but key '{key_name}' has ${left:.6f} left of "
            f"its ${budget_usd:g} budget{when} (${spent_nusd / NANO:.6f} spent, ${reserved_nusd / NANO:.6f} held by "
            "requests in flight). ")
    if exhausted:
        tail = ("What is left cannot cover it even once requests in flight finish, so retrying will not help: "
                "lower max_tokens / max_completion_tokens, or ask an admin to raise the key's budget_usd.")
    else:
        tail = ("It fits once requests in flight finish (they release what they do not spend): retry in a moment, "
                "lower max_tokens / max_completion_tokens, or ask an admin to raise the key's budget_usd.")
    return BudgetRefused(head + tail, exhausted=exhausted, spent_nusd=spent_nusd, reserved_nusd=reserved_nusd,
                         amount_nusd=amount_nusd, budget_nusd=budget)


class Budget(abc.ABC):
    """`reserve` raises BudgetRefused (429 insufficient_quota) when the amount does not fit."""

    def __init__(self, seed: SeedFn, *, reservation_ttl_s: float = RESERVATION_TTL_S) -> None:
        self.seed = seed
        self.reservation_ttl_s = reservation_ttl_s

    @abc.abstractmethod
    async def reserve(self, key: Any, amount_usd: float) -> Reservation | None:
        """Hold `amount_usd` against the key's budget (None when the key has no budget)."""

    @abc.abstractmethod
    async def settle(self, res: Reservation, cost_usd: float) -> None:
        """Release the hold and add the real cost to the spent total of the reservation's period (and of
        the key's other existing counters whose period is current: see `periods_now`)."""

    @abc.abstractmethod
    async def renew(self, res: Reservation) -> bool:
        """Extend a live hold by the reservation TTL from now, atomically (a batch waiting hours for an
        upstream keeps its lines' holds); False when the hold is gone (settled or already expired)."""

    @abc.abstractmethod
    async def usage(self, key: Any) -> tuple[float, float]:
        """(spent, reserved) in USD for the key's current period."""

    async def close(self) -> None:
        return None


class InProcessBudget(Budget):
    """Counters in this process; correct for a single replica. Check-and-add runs without an await in
    between, so it is atomic on the event loop."""

    def __init__(self, seed: SeedFn, **kw: Any) -> None:
        super().__init__(seed, **kw)
        self._spent: dict[tuple[str, str], int] = {}
        self._holds: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}  # res id -> (nusd, expiry)
        self._seed_lock = asyncio.Lock()

    async def _ensure(self, key_id: str, period: str, start: float) -> tuple[str, str]:
        k = (key_id, period)
        if k not in self._spent:
            async with self._seed_lock:
                if k not in self._spent:
                    self._spent[k] = to_nano(await self.seed(key_id, start))
                    self._holds[k] = {}
        return k

    def _reserved(self, k: tuple[str, str], now: float) -> int:
        holds = self._holds[k]
        for rid in [r for r, (_, exp) in holds.items() if exp <= now]:
            del holds[rid]
        return sum(a for a, _ in holds.values())

    async def reserve(self, key: Any, amount_usd: float) -> Reservation | None:
        if key.budget_usd is None:
            return None
        period, start, _ = period_of(key.budget_period)
        k = await self._ensure(key.id, period, start)
        now = time.time()
        amount, spent, reserved = to_nano(amount_usd), self._spent[k], self._reserved(k, now)
        if spent + reserved + amount > to_nano(key.budget_usd):
            raise over_budget(key.name, key.budget_usd, spent, reserved, amount, key.budget_period)
        rid = secrets.token_hex(8)
        self._holds[k][rid] = (amount, now + self.reservation_ttl_s)
        return Reservation(key.id, period, rid, amount)

    async def settle(self, res: Reservation, cost_usd: float) -> None:
        k = (res.key_id, res.period)
        self._holds.get(k, {}).pop(res.id, None)
        cost = to_nano(cost_usd)
        self._spent[k] = self._spent.get(k, 0) + cost
        if cost:
            for period in periods_now(res.period):
                other = (res.key_id, period)
                if other in self._spent:  # (see `periods_now`)
                    self._spent[other] += cost

    async def renew(self, res: Reservation) -> bool:
        holds, now = self._holds.get((res.key_id, res.period), {}), time.time()
        hold = holds.get(res.id)
        if hold is None or hold[1] <= now:
            return False
        holds[res.id] = (hold[0], now + self.reservation_ttl_s)
        return True

    async def usage(self, key: Any) -> tuple[float, float]:
        period, start, _ = period_of(key.budget_period)
        k = await self._ensure(key.id, period, start)
        return self._spent[k] / NANO, self._reserved(k, time.time()) / NANO


# KEYS: 1 counter hash {spent}, 2 zset res id -> expiry, 3 hash res id -> amount
# ARGV: amount, budget, seed ('' = unknown), res id, now, hold ttl, counter ttl (0 = none)
_RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[3] == '' then return {-1, '0', '0'} end
  redis.call('HSET', KEYS[1], 'spent', ARGV[3])
end
local now = tonumber(ARGV[5])
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, m in ipairs(stale) do
  redis.call('HDEL', KEYS[3], m)
  redis.call('ZREM', KEYS[2], m)
end
local reserved = 0
for _, a in ipairs(redis.call('HVALS', KEYS[3])) do reserved = reserved + tonumber(a) end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent'))
local amount = tonumber(ARGV[1])
if spent + reserved + amount > tonumber(ARGV[2]) then
  return {0, tostring(spent), tostring(reserved)}
end
redis.call('HSET', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[4])
local ttl = tonumber(ARGV[7])
if ttl > 0 then
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
else
  redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[6])) + 60)
  redis.call('EXPIRE', KEYS[3], math.ceil(tonumber(ARGV[6])) + 60)
end
return {1, tostring(spent), tostring(reserved)}
"""
# KEYS as above; ARGV: res id, cost. A counter that is gone (Redis restarted or flushed since the
# reservation) is not re-created holding this one cost: the next reserve or usage re-seeds it from the
# ledger, which has every settled request (this one's row included once it is flushed).
_SETTLE = """
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
return 1
"""
# KEYS: 1 counter hash of another period now current (see `periods_now`); ARGV: cost. Only a counter that
# exists: a missing one is seeded from the ledger when first used.
_ADD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1])
return 1
"""
# KEYS as above; ARGV: res id, now, hold ttl
_RENEW = """
local exp = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not exp or tonumber(exp) <= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], 'XX', tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
local keep = math.ceil(tonumber(ARGV[3])) + 60
for i = 2, 3 do
  local t = redis.call('TTL', KEYS[i])
  if t >= 0 and t < keep then redis.call('EXPIRE', KEYS[i], keep) end
end
return 1
"""
# KEYS as above; ARGV: now, seed ('' = unknown), counter ttl (0 = none). A missing counter (first use of
# the period, or lost with a Redis restart or flush) answers {-1} until seeded from the ledger.
_USAGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[2] == '' then return {'-1', '0'} end
  redis.call('HSET', KEYS[1], 'spent', ARGV[2])
  if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
end
local spent = redis.call('HGET', KEYS[1], 'spent')
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[1]))
local reserved = 0
for _, m in ipairs(stale) do redis.call('HDEL', KEYS[3], m); redis.call('ZREM', KEYS[2], m) end
for _, a in ipairs(redis.call('HVALS', KEYS[3])) do reserved = reserved + tonumber(a) end
return {spent, tostring(reserved)}
"""


class RedisBudget(Budget):
    """Counters in Redis shared by every replica; each operation is one Lua script (atomic)."""

    def __init__(self, redis: Any, prefix: str, seed: SeedFn, **kw: Any) -> None:
        super().__init__(seed, **kw)
        self.redis = redis
        self.prefix = prefix
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._add = redis.register_script(_ADD)
        self._renew = redis.register_script(_RENEW)
        self._usage = redis.register_script(_USAGE)
        self._seeding: dict[tuple[str, str], asyncio.Lock] = {}

    def _keys(self, key_id: str, period: str) -> list[str]:
        base = f"{self.prefix}budget:{{{key_id}:{period}}}"  # one hash slot per key+period (cluster-safe)
        return [base, base + ":holds", base + ":amounts"]

    async def reserve(self, key: Any, amount_usd: float) -> Reservation | None:
        if key.budget_usd is None:
            return None
        period, start, end = period_of(key.budget_period)
        keys = self._keys(key.id, period)
        amount, rid, now = to_nano(amount_usd), secrets.token_hex(8), time.time()
        ttl = int(end - now) + 86400 if end else 0
        args = [amount, to_nano(key.budget_usd), "", rid, now, self.reservation_ttl_s, ttl]
        ok, spent, reserved = await self._reserve(keys=keys, args=args)
        if ok == -1:  # first use of this period: seed the counter from the ledger (one query per replica)
            lock = self._seeding.setdefault((key.id, period), asyncio.Lock())
            async with lock:
                ok, spent, reserved = await self._reserve(keys=keys, args=args)  # seeded meanwhile?
                if ok == -1:
                    args[2] = to_nano(await self.seed(key.id, start))
                    ok, spent, reserved = await self._reserve(keys=keys, args=args)
            self._seeding.pop((key.id, period), None)
        if ok != 1:
            raise over_budget(key.name, key.budget_usd, int(float(spent)), int(float(reserved)), amount,
                              key.budget_period)
        return Reservation(key.id, period, rid, amount)

    async def settle(self, res: Reservation, cost_usd: float) -> None:
        cost = to_nano(cost_usd)
        if not cost:
            await self._settle(keys=self._keys(res.key_id, res.period), args=[res.id, 0])
            return
        # one round trip; a script per counter (each key+period is its own hash slot)
        async with self.redis.pipeline(transaction=False) as p:
            await self._settle(keys=self._keys(res.key_id, res.period), args=[res.id, cost], client=p)
            for period in periods_now(res.period):
                await self._add(keys=self._keys(res.key_id, period)[:1], args=[cost], client=p)
            await p.execute()

    async def renew(self, res: Reservation) -> bool:
        args = [res.id, time.time(), self.reservation_ttl_s]
        return bool(await self._renew(keys=self._keys(res.key_id, res.period), args=args))

    async def usage(self, key: Any) -> tuple[float, float]:
        """A counter that is missing (never used this period, or lost with a Redis restart or flush) is
        seeded from the ledger first, as `reserve` would, so the admin view shows the ledger's spend, not 0."""
        period, start, end = period_of(key.budget_period)
        keys, now = self._keys(key.id, period), time.time()
        ttl = int(end - now) + 86400 if end else 0
        spent, reserved = await self._usage(keys=keys, args=[now, "", ttl])
        if spent in (b"-1", "-1"):  # bytes, or str with a client decoding responses
            seed = to_nano(await self.seed(key.id, start))
            spent, reserved = await self._usage(keys=keys, args=[now, seed, ttl])
        return int(float(spent)) / NANO, int(float(reserved)) / NANO


# Counter transactions skip the commit fsync: atomicity and isolation are unchanged; a crash of the
# PostgreSQL server itself could forget the last few hundred ms of counter updates (the ledger, written
# with full durability, still has every row). Halves the time a reservation takes.
_NO_SYNC = "SET LOCAL synchronous_commit = off"


class StoreBudget(Budget):
    """Counters in PostgreSQL (`budget_usage`, `budget_reservations`) for replicas without Redis: the
    key's period row is locked (SELECT … FOR UPDATE) for the check-and-add."""

    def __init__(self, store: Any, seed: SeedFn, **kw: Any) -> None:
        super().__init__(seed, **kw)
        self.store = store  # a PostgresStore (uses its pool for transactions)

    async def reserve(self, key: Any, amount_usd: float) -> Reservation | None:
        if key.budget_usd is None:
            return None
        period, start, _ = period_of(key.budget_period)
        amount, rid, now = to_nano(amount_usd), "res_" + secrets.token_hex(8), time.time()
        pool = self.store.pool
        seed = None
        # The seed (a ledger flush and a query) takes pool connections of its own, so it runs before this
        # request takes its connection: waiting for it while holding one let a burst of first requests
        # (at least max_size of them) hold every connection and wait for a free one forever.
        if await pool.fetchval("SELECT 1 FROM budget_usage WHERE key_id = $1 AND period = $2", key.id,
                               period) is None:
            seed = to_nano(await self.seed(key.id, start))
        async with pool.acquire() as c, c.transaction():
            await c.execute(_NO_SYNC)
            if seed is not None:
                await c.execute("INSERT INTO budget_usage (key_id, period, spent_nusd) VALUES ($1, $2, $3) "
                                "ON CONFLICT DO NOTHING", key.id, period, seed)
            spent = await c.fetchval("SELECT spent_nusd FROM budget_usage WHERE key_id = $1 AND period = $2 "
                                     "FOR UPDATE", key.id, period)
            await c.execute("DELETE FROM budget_reservations WHERE key_id = $1 AND period = $2 AND "
                            "expires_at <= $3", key.id, period, now)
            reserved = await c.fetchval("SELECT COALESCE(SUM(amount_nusd), 0) FROM budget_reservations "
                                        "WHERE key_id = $1 AND period = $2", key.id, period)
            if spent + reserved + amount > to_nano(key.budget_usd):
                raise over_budget(key.name, key.budget_usd, spent, int(reserved), amount, key.budget_period)
            await c.execute("INSERT INTO budget_reservations (id, key_id, period, amount_nusd, expires_at) "
                            "VALUES ($1, $2, $3, $4, $5)", rid, key.id, period, amount,
                            now + self.reservation_ttl_s)
        return Reservation(key.id, period, rid, amount)

    async def settle(self, res: Reservation, cost_usd: float) -> None:
        cost = to_nano(cost_usd)
        async with self.store.pool.acquire() as c, c.transaction():
            await c.execute(_NO_SYNC)
            if cost:  # the reservation's period and every other existing one now current (see `periods_now`)
                await c.execute("UPDATE budget_usage SET spent_nusd = spent_nusd + $3 WHERE key_id = $1 AND "
                                "period = ANY($2::text[])", res.key_id,
                                [res.period, *periods_now(res.period)], cost)
            await c.execute("DELETE FROM budget_reservations WHERE id = $1", res.id)

    async def renew(self, res: Reservation) -> bool:
        now = time.time()
        done = await self.store.pool.execute(
            "UPDATE budget_reservations SET expires_at = $3 WHERE id = $1 AND expires_at > $2", res.id, now,
            now + self.reservation_ttl_s)
        return done.endswith(" 1")  # asyncpg's status tag: "UPDATE <rows>"

    async def usage(self, key: Any) -> tuple[float, float]:
        period, start, _ = period_of(key.budget_period)
        spent = await self.store.pool.fetchval(
            "SELECT spent_nusd FROM budget_usage WHERE key_id = $1 AND period = $2", key.id, period)
        if spent is None:  # no counter row yet this period: what the ledger says (reserve seeds it the same way)
            spent = to_nano(await self.seed(key.id, start))
        reserved = await self.store.pool.fetchval(
            "SELECT COALESCE(SUM(amount_nusd), 0) FROM budget_reservations WHERE key_id = $1 AND period = $2 "
            "AND expires_at > $3", key.id, period, time.time())
        return (spent or 0) / NANO, int(reserved) / NANO
