"""The accounting facade the server calls: authenticate a key, admit a request (model allowed, rate
limits, budget reservation), settle it to its real cost, record the ledger row, and the response cache.

Built once at start-up from the config (`await Accounting.start(config)`); picks backends from it:
- `storage: sqlite:///…` → keys and ledger in SQLite, budgets and rate limits in this process;
- `storage: postgresql://…` → keys and ledger in PostgreSQL; budgets in PostgreSQL (row locks);
- `redis: redis://…[?prefix=…]` → budgets, rate limits and the response cache in Redis, shared by every
  replica (recommended, and required for global rate limits, with more than one replica).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tiergate.accounting.budget import (
    NANO,
    Budget,
    InProcessBudget,
    RedisBudget,
    Reservation,
    StoreBudget,
    to_nano,
)
from tiergate.accounting.cache import DEFAULT_MAX_BYTES, MemoryCache, RedisCache, ResponseCache
from tiergate.accounting.keys import MASTER, KeyInfo, KeyStore
from tiergate.accounting.ledger import LedgerWriter, spend_report
from tiergate.accounting.ratelimit import (
    InProcessRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    refusal,
    too_large,
)
from tiergate.config import GatewayConfig
from tiergate.logs import redact_url, scrub_text
from tiergate.store import Store, open_store
from tiergate.wire.errors import GatewayError

log = logging.getLogger("tiergate.accounting")

DEFAULT_PEPPER = b"tiergate-virtual-key-v1"


@dataclass
class Admission:
    """A request let in: what it holds against its key's budget and rate limits until `settle`."""

    key: KeyInfo | None
    model: str
    reservation: Reservation | None = None
    est_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-* for the response
    settled: bool = False


def split_redis_url(url: str) -> tuple[str, str]:
    """`redis://host:port/db?prefix=NAME` -> (URL for redis-py, key prefix). Default prefix `tiergate:`."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = next((v for k, v in query if k == "prefix"), "tiergate:")
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, "")), prefix


def connect_redis(url: str, max_connections: int = 64) -> Any:
    """A redis.asyncio client whose pool waits for a free connection instead of failing under bursts."""
    import redis.asyncio as aioredis

    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=10,
                                                    socket_connect_timeout=5, health_check_interval=30)
    return aioredis.Redis(connection_pool=pool)


def default_journal_dir(store: Store) -> Path:
    env = os.environ.get("TIERGATE_JOURNAL_DIR")
    if env:
        return Path(env)
    path = getattr(store, "path", None)
    if path and path != ":memory:":
        return Path(f"{path}-ledger-journal")
    return Path("tiergate-ledger-journal")


class Accounting:
    cache: ResponseCache | None

    def __init__(self, config: GatewayConfig, store: Store, redis: Any, ledger: LedgerWriter, keys: KeyStore,
                 budget: Budget, limiter: RateLimiter, cache: ResponseCache | None) -> None:
        self.config = config
        self.store = store
        self.redis = redis  # redis.asyncio.Redis or None (the dispatcher shares it for cooldowns)
        self.ledger = ledger
        self.keys = keys
        self.budget = budget
        self.limiter = limiter
        self.cache = cache
        self._master = config.master_key.value if config.master_key else None

    @classmethod
    async def start(cls, config: GatewayConfig, *, journal_dir: str | Path | None = None) -> Accounting:
        store = await open_store(config.storage)
        redis = None
        prefix = "tiergate:"
        if config.redis:
            import redis.asyncio as aioredis

            url, prefix = split_redis_url(config.redis)
            redis = connect_redis(url)
            try:
                await redis.ping()
            except (OSError, aioredis.RedisError) as e:
                await store.close()
                raise RuntimeError(f"redis: cannot reach {redact_url(url)} ({type(e).__name__}: "
                                   f"{scrub_text(str(e))})") from None
        ledger = await LedgerWriter.start(store, Path(journal_dir) if journal_dir else default_journal_dir(store))
        pepper = os.environ.get("TIERGATE_KEY_PEPPER", "").encode() or DEFAULT_PEPPER
        keys = KeyStore(store, pepper)

        async def seed(key_id: str, since: float) -> float:
            await ledger.flush()  # rows this process recorded are counted too
            r = await store.fetchone("SELECT COALESCE(SUM(cost_usd), 0) AS s FROM ledger WHERE key_id = ? AND ts >= ?",
                                     key_id, since)
            return float(r["s"]) if r else 0.0

        cache_cfg = dict(config.extra.get("cache") or {})
        ttl = float(cache_cfg.get("ttl_s", 3600))
        shared = cache_cfg.get("shared_across_keys") is True  # default: entries scoped per key
        if redis is not None:
            budget: Budget = RedisBudget(redis, prefix, seed)
            limiter: RateLimiter = RedisRateLimiter(redis, prefix)
            cache: ResponseCache = RedisCache(redis, prefix, ttl, shared_across_keys=shared)
        else:
            budget = StoreBudget(store, seed) if store.dialect == "postgresql" else InProcessBudget(seed)
            limiter = InProcessRateLimiter()
            cache = MemoryCache(ttl, int(cache_cfg.get("max_entries", 10_000)),
                                int(cache_cfg.get("max_bytes", DEFAULT_MAX_BYTES)), shared_across_keys=shared)
        if cache_cfg.get("enabled") is False:
            cache = None
        log.info("accounting: storage %s, counters in %s, ledger journal %s", store.url_redacted,
                 "redis" if redis is not None else ("postgresql" if store.dialect == "postgresql" else "process"),
                 ledger.dir)
        return cls(config, store, redis, ledger, keys, budget, limiter, cache)

    async def close(self) -> None:
        await self.ledger.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.store.close()

    # ------------------------------------------------------------------ request path

    @property
    def is_open(self) -> bool:
        return self._master is None

    async def authenticate(self, authorization_header: str | None) -> KeyInfo | None:
        """The caller's key; None when the gateway is open (no master key). Raises a 401 otherwise."""
        if self._master is None:
            return None
        token = _bearer(authorization_header)
        if not token:
            raise GatewayError(
                401, "You didn't provide an API key. Send your tiergate key as a Bearer token: "
                "Authorization: Bearer tg-... (with the openai SDK: api_key='tg-...').",
                type="invalid_request_error", code="invalid_api_key")
        if hmac.compare_digest(token.encode(), self._master.encode()):
            return MASTER
        info = await self.keys.lookup(token) if token.startswith("tg-") else None
        if info is None:
            shown = token[:6] + "***" + token[-4:] if len(token) > 12 else "***"
            raise GatewayError(401, f"Incorrect API key provided: {shown}. Ask your gateway admin for a key "
                               "(tiergate keys create).", type="invalid_request_error", code="invalid_api_key")
        if info.revoked_at is not None:
            e = GatewayError(401, f"The API key {info.prefix}… ('{info.name}') has been revoked. Ask your "
                             "gateway admin for a new one.", type="invalid_request_error", code="invalid_api_key")
            e.key_id = info.id  # type: ignore[attr-defined]  # the key is known: its ledger row names it
            raise e
        return info

    async def admit(self, key: KeyInfo | None, model: str, prompt_tokens: int, max_cost_usd: float,
                    est_tokens: int) -> Admission:
        """Let a request in or raise: 403 model_not_allowed, 429 rate limit, 429 insufficient_quota."""
        adm = Admission(key, model, est_tokens=est_tokens)
        if key is None or key.is_master:
            return adm
        if not key.allows(model):
            raise GatewayError(403, f"Key '{key.name}' may not use model '{model}'. Allowed: "
                               f"{', '.join(key.models or ())}.", param="model", code="model_not_allowed")
        limited = bool(key.rpm or key.tpm)
        if limited:
            if key.tpm and est_tokens > key.tpm:
                raise too_large(key.name, key.tpm, est_tokens, model)
            d = await self.limiter.acquire(key.id, key.rpm, key.tpm, est_tokens)
            if not d.allowed:
                raise refusal(key.name, key.rpm, key.tpm, est_tokens, d)
            adm.headers = d.headers
        try:
            adm.reservation = await self.budget.reserve(key, max_cost_usd)
        except GatewayError:
            if limited:  # refused for budget: nothing was admitted, so the request and its tokens go back
                try:
                    await self.limiter.refund(key.id, key.rpm, key.tpm, est_tokens)
                except Exception:
                    log.exception("accounting: giving back the rate-limit slot of key %s failed", key.id)
            raise
        return adm

    @staticmethod
    def settles_at_once(admission: Admission, tokens: int) -> bool:
        """Whether `settle(admission, cost, tokens)` has nothing to wait for: no reservation to settle and no
        TPM correction (an open gateway, the master key, a key without budget or TPM limit), or settled
        already. It then completes without suspending. Mirrors the checks in `settle`."""
        key = admission.key
        return admission.settled or (admission.reservation is None
                                     and not (key is not None and key.tpm and tokens != admission.est_tokens))

    async def settle(self, admission: Admission, cost_usd: float, tokens: int) -> None:
        """Release the reservation and add the real cost; correct the TPM bucket. Never raises."""
        if admission.settled:
            return
        admission.settled = True
        key = admission.key
        work = []
        res = admission.reservation
        if res is not None:
            work.append(self.budget.settle(res, cost_usd))
            if to_nano(cost_usd) > res.amount_nusd:  # the upstream billed more prompt tokens than estimated
                log.warning("accounting: %s for key %s cost $%.6f, over its reservation of $%.6f (prompt tokens "
                            "above the gateway's estimate: images, files or another tokenizer)", admission.model,
                            res.key_id, cost_usd, res.amount_nusd / NANO)
        if key is not None and key.tpm and tokens != admission.est_tokens:
            work.append(self.limiter.adjust(key.id, key.tpm, tokens - admission.est_tokens))
        if not work:  # an open gateway, the master key, a key without budget or TPM limit: nothing to wait for
            return
        try:
            if len(work) == 1:
                await work[0]  # (gather would wrap it in a task of its own)
            else:
                await asyncio.gather(*work)  # independent: one round trip's time, not two
        except Exception:
            log.exception("accounting: settling %s for key %s failed", admission.model, getattr(key, "id", None))

    def record(self, row: dict[str, Any]) -> None:
        """Append one ledger row (non-blocking; durable against process kill)."""
        self.ledger.record(row)

    # ------------------------------------------------------------------ reports

    async def spend(self, group_by: str = "key", start: float | None = None, end: float | None = None,
                    key_id: str | None = None) -> list[dict[str, Any]]:
        await self.ledger.flush()
        return await spend_report(self.store, group_by, start, end, key_id)

    async def key_usage(self, key: KeyInfo) -> dict[str, float] | None:
        if key.budget_usd is None:
            return None
        spent, reserved = await self.budget.usage(key)
        return {"spent_usd": spent, "reserved_usd": reserved, "remaining_usd": max(0.0, key.budget_usd - spent - reserved)}


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
