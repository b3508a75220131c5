"""The admin API (FastAPI, mounted at /admin, schema at /admin/openapi.json): virtual keys and spend.

Every route needs the master key as `Authorization: Bearer …` (the schema, /admin/openapi.json, and its
pages /admin/docs and /admin/redoc do not); a gateway without a master key answers every route, those
three included, with 403 `admin_api_disabled` (its /v1 is open; keys minted there would stay valid once a
master key is set). Errors are OpenAI-shaped.

    POST   /admin/keys              create a key; the secret `key` is in this response only
    GET    /admin/keys              list keys (with budget usage)
    GET    /admin/keys/{id}         one key
    PATCH  /admin/keys/{id}         change name, budget, limits, models, metadata, cache
                                    (`models`: configured or catalogue names; others are a 400)
    DELETE /admin/keys/{id}         revoke (every replica refuses it within 1 s)
    GET    /admin/spend?group_by=key|model|deployment|day|requested_model|status&start&end&key_id
"""

from __future__ import annotations

import hmac
import math
import time
from datetime import UTC, date, datetime
from typing import Any, Literal

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from tiergate.accounting.keys import KeyInfo
from tiergate.accounting.service import Accounting
from tiergate.wire.errors import GatewayError

#: JSON types are taken as given (`rpm: true` was a 1-rpm key, `"rpm": "10"` and `cache: "yes"` were accepted)
_STRICT = ConfigDict(extra="forbid", strict=True)
#: A key's metadata is read back on every authentication: bounded (a 20 MB object was accepted)
MAX_METADATA_BYTES = 16 * 1024


class KeyCreate(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=200, description="who the key is for")
    budget_usd: float | None = Field(None, ge=0, description="spend cap; null = no budget")
    budget_period: Literal["none", "daily", "monthly"] = Field("none", description="when the budget resets (UTC)")
    rpm: int | None = Field(None, gt=0, description="requests per minute; null = unlimited")
    tpm: int | None = Field(None, gt=0, description="tokens per minute (prompt + output limit); null = unlimited")
    models: list[str] | None = Field(None, description="models the key may use; null = all")
    metadata: dict[str, Any] | None = None
    cache: bool = Field(False, description="serve this key's deterministic requests from the response cache")


class KeyUpdate(BaseModel):
    model_config = _STRICT
    name: str | None = Field(None, min_length=1, max_length=200)
    budget_usd: float | None = Field(None, ge=0)
    budget_period: Literal["none", "daily", "monthly"] | None = None
    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    models: list[str] | None = None
    metadata: dict[str, Any] | None = None
    cache: bool | None = None


class KeyOut(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: str
    prefix: str
    name: str
    budget_usd: float | None
    budget_period: str
    rpm: int | None
    tpm: int | None
    models: list[str] | None
    metadata: dict[str, Any]
    cache: bool
    created_at: float
    revoked_at: float | None
    usage: dict[str, float] | None = Field(None, description="spent / reserved / remaining this period")


class KeyCreated(KeyOut):
    key: str = Field(description="the secret; shown in this response only")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyOut]


class SpendRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    requests: int
    cost_usd: float
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int


class SpendReport(BaseModel):
    object: Literal["spend_report"] = "spend_report"
    group_by: str
    start: float
    end: float
    key_id: str | None
    total_usd: float
    data: list[SpendRow]


def parse_time(value: str | None, default: float, param: str | None = None) -> float:
    """Epoch seconds, `YYYY-MM-DD` (UTC midnight) or an ISO-8601 datetime (UTC when no zone); anything
    else (`nan`, `inf` included) is a 400 naming `param`."""
    if value is None or value == "":
        return default
    try:
        t = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(t):
            return t
        raise GatewayError(400, f"Could not read the time {value!r}: epoch seconds must be a finite number.",
                           param=param, code="invalid_value")
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC).timestamp()
        dt = datetime.fromisoformat(value)
        return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    except ValueError:
        raise GatewayError(400, f"Could not read the time {value!r}: use YYYY-MM-DD, an ISO-8601 datetime or "
                           "epoch seconds.", param=param, code="invalid_value") from None


def spend_window(start: str | None, end: str | None, now: float) -> tuple[float, float]:
    """A spend report's [start, end) in epoch seconds (defaults: the last 30 days); a window that ends
    before it starts is a 400 (it used to return an empty report, which reads as "nothing spent")."""
    t_end = parse_time(end, now + 1, "end")
    t_start = parse_time(start, t_end - 30 * 86400, "start")
    if t_start >= t_end:
        raise GatewayError(400, f"The spend window is empty: start ({start}) is not before end ({end}).",
                           param="start")
    return t_start, t_end


def spend_body(group_by: str, t_start: float, t_end: float, rows: list[dict[str, Any]],
               key_id: str | None = None) -> dict[str, Any]:
    """The spend report object (API and CLI): the total rounded to the nano-dollar, like each row."""
    return {"group_by": group_by, "start": t_start, "end": t_end, "key_id": key_id,
            "total_usd": round(sum(r["cost_usd"] for r in rows), 9), "data": rows}


def check_key_models(models: list[str] | None, configured: list[str], catalogue: list[str], *,
                     hint: str = "") -> None:
    """A key's model allow-list may name configured models and catalogue models; anything else is a
    400 naming the entry and the closest known names. `auto`/`auto:<policy>` is refused with its own
    message: allow-lists are checked against the model actually served, after routing."""
    if not models:
        return
    from tiergate.config import close_names

    known = set(configured) | set(catalogue)
    for i, name in enumerate(models):
        if name in known:
            continue
        if name == "auto" or name.startswith("auto:"):
            raise GatewayError(
                400, f"models[{i}]: {name!r} cannot be allowed on its own: a key's models are checked against the "
                "model that serves the request, after routing. List the models it may be routed to instead"
                f"{' (' + ', '.join(configured) + ')' if configured else ''}, or leave `models` null to allow "
                "every model.",
                param=f"models[{i}]", code="invalid_value")
        close = close_names(name, [*configured, *catalogue])
        hint_close = f" Did you mean: {', '.join(close)}?" if close else ""
        served = f"This gateway serves: {', '.join(configured)}; " if configured else ""
        raise GatewayError(
            400, f"models[{i}]: unknown model {name!r}.{hint_close} {served}catalogue model names "
            f"(docs/catalog.md) are accepted too.{hint}", param=f"models[{i}]", code="model_not_found")


def admin_disabled() -> GatewayError:
    """The 403 of every /admin path of a gateway without a master key."""
    return GatewayError(403, "The admin API is off because this gateway has no master key. Set "
                        "TIERGATE_MASTER_KEY (or `master_key:` in the config) and send it as Authorization: "
                        "Bearer; `tiergate keys|spend --storage URL` work on the database directly.",
                        type="invalid_request_error", code="admin_api_disabled")


SCHEMA_PATHS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")  # FastAPI's own pages


def build_admin_app(accounting: Accounting) -> FastAPI:
    master = accounting.config.master_key.value if accounting.config.master_key else None
    off = master is None  # no schema pages either: they would say the API is there
    app = FastAPI(
        title="tiergate admin API",
        description="Virtual keys, budgets, rate limits and spend. Authenticate with the master key as Bearer.",
        version="1",
        openapi_url=None if off else "/openapi.json",
        docs_url=None if off else "/docs",
        redoc_url=None if off else "/redoc",
    )
    configured = [m.name for m in accounting.config.models]
    catalogue: list[str] = []

    def check_models(models: list[str] | None) -> None:
        if models and not catalogue:
            catalogue.extend(accounting.config.load_catalog().names())  # on first use: admin calls are rare
        check_key_models(models, configured, catalogue)

    async def require_master(request: Request) -> None:
        if master is None:  # an open gateway: anyone could mint keys that stay valid once a master key is set
            raise admin_disabled()
        header = request.headers.get("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), master.encode()):
            raise GatewayError(401, "The admin API needs the gateway's master key: Authorization: Bearer "
                               "$TIERGATE_MASTER_KEY.", type="invalid_request_error", code="invalid_api_key")

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, e: GatewayError) -> JSONResponse:
        return JSONResponse(e.to_dict(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        ctype = request.headers.get("content-type", "")
        if tuple(first.get("loc", ())) == ("body",) and "json" not in ctype.lower():
            # e.g. curl -d '{...}' without -H: it sends application/x-www-form-urlencoded
            msg = (f"Send the body as a JSON object with Content-Type: application/json (this request said "
                   f"{ctype or 'no Content-Type'}); with curl add -H 'Content-Type: application/json'.")
            return JSONResponse(GatewayError(400, msg, code="invalid_json").to_dict(), status_code=400)
        if first.get("type") == "json_invalid":  # its loc is ("body", <offset>), not a field
            msg = "We could not parse the JSON body of your request. The body must be valid JSON."
            return JSONResponse(GatewayError(400, msg, code="invalid_json").to_dict(), status_code=400)
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
        param = ".".join(loc) or None
        msg = f"Invalid value for '{param}': {first.get('msg', 'invalid')}." if param else str(first.get("msg"))
        return JSONResponse(GatewayError(400, msg, param=param, code="invalid_value").to_dict(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 404:  # worded and coded as the gateway's own unknown URLs
            err = GatewayError(404, f"Unknown admin URL: {request.method} {request.url.path}. The admin API has "
                               "/admin/keys, /admin/keys/{id} and /admin/spend.", code="unknown_url")
        elif e.status_code == 405:
            err = GatewayError(405, f"{request.method} is not allowed on {request.url.path}.",
                               code="method_not_allowed")
        else:
            err = GatewayError(e.status_code, str(e.detail))
        return JSONResponse(err.to_dict(), status_code=e.status_code, headers=getattr(e, "headers", None))

    async def _out(k: KeyInfo) -> dict[str, Any]:
        d = k.public()
        d["usage"] = await accounting.key_usage(k)  # a revoked key's too: what it spent stays of interest
        return d

    async def _get(key_id: str) -> KeyInfo:
        k = await accounting.keys.get(key_id)
        if k is None:
            raise GatewayError(404, f"No key with id '{key_id}'. List keys with GET /admin/keys.", param="id",
                               code="key_not_found")
        return k

    deps = [Depends(require_master)]
    if off:
        for path in SCHEMA_PATHS:
            app.add_api_route(path, require_master, methods=["GET", "HEAD"], include_in_schema=False)

    def check_metadata(metadata: dict[str, Any] | None) -> None:
        if metadata is not None and len(orjson.dumps(metadata)) > MAX_METADATA_BYTES:
            raise GatewayError(400, f"'metadata' is too large: at most {MAX_METADATA_BYTES // 1024} KiB of JSON "
                               "(it is read back on every request the key makes).", param="metadata",
                               code="invalid_value")

    @app.post("/keys", response_model=KeyCreated, dependencies=deps, summary="Create a virtual key")
    async def create_key(body: KeyCreate) -> dict[str, Any]:
        f = body.model_dump()
        check_models(f.get("models"))
        check_metadata(f.get("metadata"))
        info, secret = await accounting.keys.create(f.pop("name"), **f)
        return {**await _out(info), "key": secret}

    @app.get("/keys", response_model=KeyList, dependencies=deps, summary="List virtual keys")
    async def list_keys(include_revoked: bool = True) -> dict[str, Any]:
        return {"data": [await _out(k) for k in await accounting.keys.list(include_revoked=include_revoked)]}

    @app.get("/keys/{key_id}", response_model=KeyOut, dependencies=deps, summary="Get one key")
    async def get_key(key_id: str) -> dict[str, Any]:
        return await _out(await _get(key_id))

    @app.patch("/keys/{key_id}", response_model=KeyOut, dependencies=deps, summary="Change a key")
    async def update_key(key_id: str, body: KeyUpdate) -> dict[str, Any]:
        fields = body.model_dump(exclude_unset=True)
        for k in ("name", "budget_period", "cache"):
            if k in fields and fields[k] is None:
                raise GatewayError(400, f"'{k}' cannot be null.", param=k)
        if (await _get(key_id)).revoked_at is not None:
            raise GatewayError(409, f"Key '{key_id}' is revoked and cannot be changed; create a new key "
                               "(POST /admin/keys).", param="id", code="key_revoked")
        check_models(fields.get("models"))
        check_metadata(fields.get("metadata"))
        info = await accounting.keys.update(key_id, **fields)
        return await _out(info)

    @app.delete("/keys/{key_id}", response_model=KeyOut, dependencies=deps, summary="Revoke a key")
    async def revoke_key(key_id: str) -> dict[str, Any]:
        await _get(key_id)
        return await _out(await accounting.keys.revoke(key_id))

    @app.get("/spend", response_model=SpendReport, dependencies=deps, summary="Spend report from the ledger")
    async def spend(
        group_by: Literal["key", "model", "deployment", "day", "requested_model", "status"] = "key",
        start: str | None = Query(None, description="YYYY-MM-DD, ISO datetime or epoch s (default: 30 days ago)"),
        end: str | None = Query(None, description="exclusive (default: now)"),
        key_id: str | None = None,
    ) -> dict[str, Any]:
        t_start, t_end = spend_window(start, end, time.time())
        rows = await accounting.spend(group_by, t_start, t_end, key_id)
        return spend_body(group_by, t_start, t_end, rows, key_id)

    return app
