"""Virtual API keys: `tg-…` secrets stored only as a peppered SHA-256 hash, shown once at creation,
identified afterwards by a short prefix, revocable.

Authentication looks a key up by its hash through a small cache whose entries live at most
`ttl_s` (default 0.5 s), so a revocation or an edit made on any replica is seen by every replica
within that time, with at most one store query per key per `ttl_s` per replica.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from tiergate.store.base import KEY_COLUMNS, Store
from tiergate.wire.errors import GatewayError

PERIODS = ("none", "daily", "monthly")
KEY_PREFIX = "tg-"
MAX_BUDGET_USD = 1_000_000_000  # $1e9 = 1e18 nano-dollars, inside a signed 64-bit counter
_UPDATABLE = ("name", "budget_usd", "budget_period", "rpm", "tpm", "models", "metadata", "cache")


@dataclass(frozen=True)
class KeyInfo:
    """What the gateway knows about an authenticated caller. Never holds the secret."""

    id: str
    prefix: str  # "tg-AbC12xYz": enough to recognise the key, useless to use it
    name: str
    budget_usd: float | None = None
    budget_period: str = "none"
    rpm: int | None = None
    tpm: int | None = None
    models: tuple[str, ...] | None = None  # None: every configured model
    metadata: dict[str, Any] = field(default_factory=dict)
    cache_enabled: bool = False
    created_at: float = 0.0
    revoked_at: float | None = None
    is_master: bool = False

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"] = list(self.models) if self.models is not None else None
        d["cache"] = d.pop("cache_enabled")
        d.pop("is_master")
        return d


MASTER = KeyInfo(id="master", prefix="master", name="master key", is_master=True)


def generate_key() -> str:
    """A new secret: `tg-` + 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plaintext: str, pepper: bytes) -> str:
    return hmac.new(pepper, plaintext.encode(), hashlib.sha256).hexdigest()


def display_prefix(plaintext: str) -> str:
    return plaintext[: len(KEY_PREFIX) + 8]


def validate_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Check admin-supplied key fields; raise an OpenAI-shaped 400 naming the bad one."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if k not in _UPDATABLE:
            raise GatewayError(400, f"Unknown key field '{k}'. Allowed: {', '.join(_UPDATABLE)}.", param=k)
        if k == "name":
            if not isinstance(v, str) or not v.strip() or len(v) > 200:
                raise GatewayError(400, "`name` must be a non-empty string of at most 200 characters.", param=k)
        elif k == "budget_usd":
            # bounded so that the nano-dollar counters (64-bit in Redis and PostgreSQL) cannot overflow;
            # infinity used to be stored as null-looking and then fail every request with a 500
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_BUDGET_USD):
                raise GatewayError(400, f"`budget_usd` must be a number from 0 to {MAX_BUDGET_USD:,} or null (no "
                                   "budget).", param=k)
            v = float(v) if v is not None else None
        elif k == "budget_period":
            if v not in PERIODS:
                raise GatewayError(400, f"`budget_period` must be one of {', '.join(PERIODS)}.", param=k)
        elif k in ("rpm", "tpm"):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 2**53):
                raise GatewayError(400, f"`{k}` must be a positive integer or null (no limit).", param=k)
        elif k == "models":
            if v is not None and (not isinstance(v, list) or not v or not all(isinstance(m, str) for m in v)):
                raise GatewayError(400, "`models` must be a non-empty list of model names or null (all models).",
                                   param=k)
        elif k == "metadata":
            if v is not None and not isinstance(v, dict):
                raise GatewayError(400, "`metadata` must be a JSON object.", param=k)
        elif k == "cache" and not isinstance(v, bool):
            raise GatewayError(400, "`cache` must be true or false.", param=k)
        out[k] = v
    return out


def _from_row(r: dict[str, Any]) -> KeyInfo:
    models = orjson.loads(r["models"]) if r.get("models") else None
    return KeyInfo(
        id=r["id"], prefix=r["prefix"], name=r["name"], budget_usd=r["budget_usd"],
        budget_period=r["budget_period"], rpm=r["rpm"], tpm=r["tpm"],
        models=tuple(models) if models is not None else None,
        metadata=orjson.loads(r["metadata"]) if r.get("metadata") else {},
        cache_enabled=bool(r["cache"]), created_at=r["created_at"], revoked_at=r["revoked_at"],
    )


def _encode(k: str, v: Any) -> Any:
    if k in ("models", "metadata"):
        return orjson.dumps(v).decode() if v is not None else None
    if k == "cache":
        return bool(v)
    return v


PEPPER_CHECK = b"tiergate-pepper-check"  # what the pepper fingerprint is the HMAC of
PEPPER_SETTING = "key_pepper_fingerprint"  # its row in gateway_settings


def pepper_fingerprint(pepper: bytes) -> str:
    """HMAC-SHA256(pepper, "tiergate-pepper-check"), 16 hex digits: tells two peppers apart without
    storing or revealing either."""
    return hmac.new(pepper, PEPPER_CHECK, hashlib.sha256).hexdigest()[:16]


class PepperMismatch(RuntimeError):
    """This process's `TIERGATE_KEY_PEPPER` is not the one the database's keys were made with: every key
    would be refused as an incorrect API key."""


class KeyStore:
    """Create, list, edit, revoke and authenticate virtual keys."""

    def __init__(self, store: Store, pepper: bytes, *, ttl_s: float = 0.5, max_cached: int = 50_000) -> None:
        self.store = store
        self.pepper = pepper
        self.ttl_s = ttl_s
        self.max_cached = max_cached
        self._cache: dict[str, tuple[float, KeyInfo | None]] = {}

    async def check_pepper(self) -> bool:
        """Compare this process's pepper with the fingerprint stored in the database, recording it when
        there is none yet (the first start, or the first key made); True when it recorded it. Raises
        `PepperMismatch` when they differ. Replicas starting together on a new database race on one
        `INSERT … ON CONFLICT DO NOTHING`: the first one's pepper is recorded, the others compare with it."""
        fp = pepper_fingerprint(self.pepper)
        sql = "SELECT value FROM gateway_settings WHERE name = ?"
        row = await self.store.fetchone(sql, PEPPER_SETTING)
        recorded = False
        if row is None:
            recorded = await self.store.execute(
                "INSERT INTO gateway_settings (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                PEPPER_SETTING, fp, time.time()) == 1
            row = await self.store.fetchone(sql, PEPPER_SETTING)
        if row is not None and row["value"] != fp:
            raise PepperMismatch(
                "this replica's TIERGATE_KEY_PEPPER differs from the one the database's API keys were made with, "
                "so every key would be refused as an incorrect API key: set TIERGATE_KEY_PEPPER to the value the "
                "other replicas use (unset means the built-in default) and start again (to change the pepper on "
                "purpose, see 'Virtual keys' in docs/accounting.md)")
        return recorded

    async def create(self, name: str, **fields: Any) -> tuple[KeyInfo, str]:
        """Store a new key; returns it and the plaintext secret (which is not kept anywhere)."""
        f = validate_fields({"name": name, **fields})
        plaintext = generate_key()
        row = {
            "id": "key_" + secrets.token_hex(8), "prefix": display_prefix(plaintext),
            "key_hash": hash_key(plaintext, self.pepper), "name": f["name"],
            "budget_usd": f.get("budget_usd"), "budget_period": f.get("budget_period") or "none",
            "rpm": f.get("rpm"), "tpm": f.get("tpm"), "models": f.get("models"), "metadata": f.get("metadata"),
            "cache": bool(f.get("cache", False)), "created_at": time.time(), "revoked_at": None,
        }
        await self.store.execute(
            f"INSERT INTO api_keys ({', '.join(KEY_COLUMNS)}) VALUES ({', '.join('?' * len(KEY_COLUMNS))})",
            *(_encode(c, row[c]) for c in KEY_COLUMNS),
        )
        return _from_row({**row, "models": _encode("models", row["models"]),
                          "metadata": _encode("metadata", row["metadata"])}), plaintext

    async def get(self, key_id: str) -> KeyInfo | None:
        r = await self.store.fetchone(f"SELECT {', '.join(KEY_COLUMNS)} FROM api_keys WHERE id = ?", key_id)
        return _from_row(r) if r else None

    async def list(self, *, include_revoked: bool = True) -> list[KeyInfo]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = await self.store.fetch(f"SELECT {', '.join(KEY_COLUMNS)} FROM api_keys{where} ORDER BY created_at")
        return [_from_row(r) for r in rows]

    async def update(self, key_id: str, **fields: Any) -> KeyInfo | None:
        f = validate_fields(fields)
        if f:
            sets = ", ".join(f"{k} = ?" for k in f)
            n = await self.store.execute(f"UPDATE api_keys SET {sets} WHERE id = ?",
                                         *(_encode(k, v) for k, v in f.items()), key_id)
            if n == 0:
                return None
        return await self.get(key_id)

    async def revoke(self, key_id: str) -> KeyInfo | None:
        await self.store.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                 time.time(), key_id)
        return await self.get(key_id)

    async def lookup(self, plaintext: str) -> KeyInfo | None:
        """The key for this secret, revoked or not; None when unknown. At most `ttl_s` stale."""
        h = hash_key(plaintext, self.pepper)
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit is not None and hit[0] > now:
            return hit[1]
        r = await self.store.fetchone(f"SELECT {', '.join(KEY_COLUMNS)} FROM api_keys WHERE key_hash = ?", h)
        info = _from_row(r) if r else None
        if len(self._cache) >= self.max_cached:
            self._cache.clear()
        self._cache[h] = (now + self.ttl_s, info)
        return info
