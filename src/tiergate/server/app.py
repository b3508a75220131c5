"""The ASGI application: mounts the OpenAI-compatible routes, the admin API and metrics, and builds
the Gateway in the lifespan. `build_app(config)` is what `tiergate serve` and the tests run."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import threading
import time

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from tiergate import __version__
from tiergate.config import GatewayConfig
from tiergate.logs import log_request, scrub_text
from tiergate.server.chat import chat_completions
from tiergate.server.gateway import Gateway
from tiergate.server.models import get_model, list_models
from tiergate.wire.errors import GatewayError
from tiergate.wire.ids import new_id

log = logging.getLogger("tiergate")


async def health(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return Response(
        orjson.dumps({"status": "ok", "version": __version__, "models": len(gw.config.models),
                      "router": gw.router is not None}),
        media_type="application/json",
    )


READY_TIMEOUT_S = 2.0  # per backend check of GET /ready


async def _check(coro) -> str | None:
    """None when the check answered within READY_TIMEOUT_S, else why not (one line, no secret)."""
    try:
        await asyncio.wait_for(coro, READY_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT_S:g} s"
    except Exception as e:  # noqa: BLE001 - any failure is the answer to the check
        return scrub_text(" ".join(f"{type(e).__name__}: {e}".split()))[:300]
    return None


async def ready(request: Request) -> Response:
    """Readiness: 200 when the gateway can serve keyed requests, 503 when its database (a cheap query) or
    its Redis (PING) does not answer within READY_TIMEOUT_S. `/health` is liveness only (the process
    answers), so a load balancer should route on this one."""
    gw: Gateway = request.app.state.gateway
    acc = gw.accounting
    checks: dict[str, str] = {}
    store_err = await _check(acc.store.fetch("SELECT 1 AS ok"))
    problem = getattr(acc.store, "file_problem", None)
    if store_err is None and problem is not None:
        store_err = problem()  # an SQLite file removed or replaced under the running gateway
    checks["storage"] = "ok" if store_err is None else store_err
    if getattr(acc, "redis", None) is not None:
        redis_err = await _check(acc.redis.ping())
        checks["redis"] = "ok" if redis_err is None else redis_err
    ok = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ok else "unavailable", "checks": checks}
    return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json",
                    headers={} if ok else {"Retry-After": str(OUTAGE_RETRY_AFTER_S)})


async def metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _not_found(request: Request, exc: Exception) -> Response:
    e = GatewayError(404, f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url")
    return Response(e.to_json(), status_code=404, media_type="application/json",
                    headers={"x-request-id": new_id("req_")})


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    e = GatewayError(405, f"Method {request.method} is not allowed on {request.url.path}.", type="invalid_request_error",
                     code="method_not_allowed")
    return Response(e.to_json(), status_code=405, media_type="application/json",
                    headers={"x-request-id": new_id("req_")})


OUTAGE_RETRY_AFTER_S = 5  # Retry-After of a 503 for a database or Redis that does not answer

_SQLITE_OUTAGE = ("unable to open", "disk i/o", "database is locked", "disk is full", "readonly database")


def _from_module(e: BaseException, *prefixes: str) -> bool:
    """Whether a frame of `e`'s traceback runs code of one of these modules (or packages)."""
    tb = e.__traceback__
    while tb is not None:
        if (tb.tb_frame.f_globals.get("__name__") or "").startswith(prefixes):
            return True
        tb = tb.tb_next
    return False


def backend_outage(exc: BaseException) -> str | None:
    """`storage` or `redis` when `exc` (or an exception it was raised from) is a backend that cannot be
    reached: a connection refused, reset or timed out, a server shutting down, a SQLite file that cannot be
    opened or written. None for anything else (a bug: the 500)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        kind = _outage_kind(e)
        if kind is not None:
            return kind
        e = e.__cause__ or e.__context__
    return None


def _outage_kind(e: BaseException) -> str | None:
    mod = type(e).__module__ or ""
    if mod.startswith("redis"):
        import redis.exceptions as rx

        return "redis" if isinstance(e, (rx.ConnectionError, rx.TimeoutError)) else None
    if mod.startswith("asyncpg"):
        import asyncpg

        if isinstance(e, asyncpg.DataError):  # an argument the driver cannot encode: not an outage
            return None
        if isinstance(e, (asyncpg.InterfaceError, asyncpg.PostgresConnectionError)):
            return "storage"  # connection closed / does not exist, pool closing, cannot connect now
        state = getattr(e, "sqlstate", None) or ""
        # 08 connection exception, 53 insufficient resources (too many connections), 57 operator
        # intervention (admin shutdown, crash shutdown, cannot connect now), 58 system error
        return "storage" if state[:2] in ("08", "53", "57", "58") else None
    if isinstance(e, sqlite3.OperationalError):
        text = str(e).lower()
        return "storage" if any(t in text for t in _SQLITE_OUTAGE) else None
    if isinstance(e, OSError):  # refused, reset, timed out (TimeoutError is one): whose socket was it?
        if _from_module(e, "redis."):
            return "redis"
        if _from_module(e, "asyncpg.", "tiergate.store."):
            return "storage"
    return None


_OUTAGE_LOG_EVERY_S = 10.0
_outage_logged: dict[str, list[float]] = {}  # kind -> [last logged at (monotonic), lines held back since]


def _log_outage(kind: str, line: str) -> None:
    """One error line per backend every _OUTAGE_LOG_EVERY_S while it is down (each request still has its
    own request line), with the count of those held back: an outage under load is not a log flood."""
    now = time.monotonic()
    state = _outage_logged.setdefault(kind, [0.0, 0])
    if now - state[0] < _OUTAGE_LOG_EVERY_S:
        state[1] += 1
        return
    held, state[0], state[1] = state[1], now, 0
    log.error("%s%s", line, f" ({held:g} more like it in the last {_OUTAGE_LOG_EVERY_S:g} s)" if held else "")


_BACKEND_TEXT = {"storage": ("storage_unavailable", "database"), "redis": ("redis_unavailable", "Redis server")}


def _count(request: Request, rid: str, status: int, label: str, error: str) -> None:
    """The request line and `tiergate_requests_total` for an answer the handlers did not write themselves
    (an internal error, a backend outage): every answer is in the log and the metrics."""
    app = request.scope.get("app")
    gw = getattr(getattr(app, "state", None), "gateway", None)
    metrics_ = getattr(gw, "metrics", None)
    if metrics_ is not None:
        metrics_.gateway_error(label)
    log_request(rid, status=status, path=request.url.path, method=request.method, error=error)


async def _server_error(request: Request, exc: Exception) -> Response:
    """An unhandled exception: logged with an id that the client gets in `x-request-id`, so a report of it
    can be matched to the log line (the message asks for it). A database or Redis that cannot be reached
    is no bug: that is a 503 the client may retry (`Retry-After`, `x-should-retry: true`)."""
    if request.scope.get(_ANSWERED):  # answered (logged, counted) by the admin app's own handler already; an
        return Response(status_code=500)  # outer ServerErrorMiddleware calls its handler too, but sends nothing
    rid = new_id("req_")
    request.scope[_ANSWERED] = True  # Starlette re-raises after this answer: see GatewayApp.__call__
    outage = backend_outage(exc)
    if outage is not None:
        code, what = _BACKEND_TEXT[outage]
        reason = scrub_text(" ".join(f"{type(exc).__name__}: {exc}".split()))[:300]
        _log_outage(outage, f"{what} unreachable while serving {request.method} {request.url.path} "
                            f"(x-request-id {rid}): {reason}")
        e = GatewayError(503, f"The gateway's {what} is not answering, so the request was not served. Retry in "
                         f"a few seconds; if it persists, the gateway's operator should check its {what} "
                         "(GET /ready says what is down).", type="api_error", code=code)
        _count(request, rid, 503, code, f"503 {code}: {reason}")
        return Response(e.to_json(), status_code=503, media_type="application/json",
                        headers={"x-request-id": rid, "Retry-After": str(OUTAGE_RETRY_AFTER_S),
                                 "x-should-retry": "true"})
    log.exception("unhandled error on %s (x-request-id %s)", request.url.path, rid)
    e = GatewayError(500, "The gateway hit an internal error; the request was not completed. Retry, and "
                     "report it with the x-request-id if it persists.", type="api_error", code="internal_error")
    _count(request, rid, 500, "internal_error", f"500 internal_error: {type(exc).__name__}")
    return Response(e.to_json(), status_code=500, media_type="application/json", headers={"x-request-id": rid})


def _optional_routes() -> list:
    """Routes owned by feature modules (Responses, Files, Batches); each registers if present."""
    routes: list = []
    with contextlib.suppress(ImportError):
        from tiergate.server.responses import routes as r

        routes += r()
    with contextlib.suppress(ImportError):
        from tiergate.server.files import routes as r

        routes += r()
    with contextlib.suppress(ImportError):
        from tiergate.server.batches import routes as r

        routes += r()
    return routes


def build_app(config: GatewayConfig, *, gateway: Gateway | None = None) -> Starlette:
    """The app for `config`. Its lifespan starts the Gateway, or takes over `gateway` when one is given
    (`tiergate serve` starts it first, so that a backend failure is one line, not a lifespan traceback);
    either way the lifespan closes it at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        gw = gateway if gateway is not None else await Gateway.start(config)
        app.state.gateway = gw
        with contextlib.suppress(ImportError):
            from tiergate.server.batches import install_runner

            install_runner(gw)
        for hook in gw.extras.get("startup_hooks", []):
            await hook(gw)
        _tune_gc()
        try:
            yield
        finally:
            _restore_gc()
            for hook in gw.extras.get("shutdown_hooks", []):
                await hook(gw)
            await gw.close()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *_optional_routes(),
    ]
    admin = _admin_mount()
    if admin is not None:
        routes.append(admin)
    app = GatewayApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _method_not_allowed, 500: _server_error},
    )
    return app


#: The cyclic garbage collector's first threshold while the app serves. A request allocates hundreds of
#: short-lived containers (a stream: a dict or two per chunk) that reference counting frees at once; with
#: CPython's default (700 net allocations) a young-generation pass ran every few requests and swept the
#: in-flight requests' objects into the older generations, whose passes then walked the whole heap. Measured
#: in-process with gc callbacks (6,400 streamed requests at c=64): 450 ms of collection (~70 us a request)
#: with the defaults, 10 ms with this threshold and the start-up heap frozen.
GC_YOUNG_THRESHOLD = 7000


_gc_lock = threading.Lock()
#: per app now serving, the collector's state before the first of them tuned it: (thresholds, whether the
#: apps own the freeze, i.e. nothing was frozen before)
_gc_users: list[tuple[tuple[int, int, int], bool]] = []


def _tune_gc() -> None:
    """While serving: the objects built at start-up (config, catalogue, router, vocabularies) moved out of the
    collector's generations (`gc.freeze`: no pass walks them again), and a higher first threshold. Undone
    when the last app serving in the process stops (`_restore_gc`), so a process that goes on (the tests,
    which start and stop many apps, some at the same time) is left with the collector as it found it. A host
    that froze its own heap keeps its freeze (not thawed at the end), and one that turned automatic collection
    off (threshold 0) keeps it off."""
    with _gc_lock:
        state = _gc_users[0] if _gc_users else (gc.get_threshold(), gc.get_freeze_count() == 0)
        _gc_users.append(state)
        (young, *older), own_freeze = state
        if own_freeze:
            gc.freeze()
        if young:
            gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), *older)


def _restore_gc() -> None:
    with _gc_lock:
        previous, own_freeze = _gc_users.pop()
        if not _gc_users:
            if own_freeze:
                gc.unfreeze()
            gc.set_threshold(*previous)


_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_ANSWERED = "tiergate.error_answered"  # scope key: _server_error answered (and logged) this exception


class GatewayApp(Starlette):
    """Starlette, except that `POST /v1/chat/completions` goes straight to its handler.

    Starlette's middleware stack and router cost ~50 µs of CPU per request, a fifth of a non-streamed
    request's total (bench/overhead.py, docs/benchmarks.md). The shortcut is taken only while no user
    middleware is installed; an unexpected error before the response starts still becomes the
    OpenAI-shaped 500 from `_server_error`, and one after it started ends the connection, as with
    Starlette."""

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in _CHAT_PATHS
                and not self.user_middleware):
            scope["app"] = self
            request = Request(scope, receive)
            try:
                response = await chat_completions(request)
            except Exception as exc:  # noqa: BLE001 - any bug becomes the OpenAI-shaped 500, as in Starlette
                response = await _server_error(request, exc)
            await response(scope, receive, send)
            return
        try:
            await super().__call__(scope, receive, send)
        except Exception:
            if not scope.get(_ANSWERED):
                raise
            # Starlette re-raises an exception after `_server_error` answered it, so that a server can log
            # it: that is done (with the request id); uvicorn's second, id-less traceback would only add noise


def _admin_mount() -> Mount | None:
    try:
        from tiergate.server.admin import build_admin_app
    except ImportError:
        return None
    return Mount("/admin", app=_LazyAdmin(build_admin_app))


class _LazyAdmin:
    """Builds the FastAPI admin app on first use, so FastAPI's import cost stays off start-up and the
    hot path."""

    def __init__(self, factory) -> None:
        self._factory = factory
        self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            gw: Gateway = scope["app"].state.gateway
            app = self._factory(gw.accounting)
            # an unexpected error (a bug, or a database that is down) is the same OpenAI-shaped JSON with an
            # x-request-id as under /v1, not FastAPI's plain-text "Internal Server Error"
            app.add_exception_handler(Exception, _server_error)
            app.state.gateway = gw  # for _server_error's request line and metrics
            self._app = app
        await self._app(scope, receive, send)
