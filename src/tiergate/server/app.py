"""The ASGI application: mounts the OpenAI-compatible routes, the admin API and metrics, and builds
the Gateway in the lifespan. `build_app(config)` is what `tiergate serve` and the tests run."""

from __future__ import annotations

import contextlib
import logging

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from tiergate import __version__
from tiergate.config import GatewayConfig
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


async def _server_error(request: Request, exc: Exception) -> Response:
    """An unhandled exception: logged with an id that the client gets in `x-request-id`, so a report of it
    can be matched to the log line (the message asks for it)."""
    rid = new_id("req_")
    log.exception("unhandled error on %s (x-request-id %s)", request.url.path, rid)
    e = GatewayError(500, "The gateway hit an internal error; the request was not completed. Retry, and "
                     "report it with the x-request-id if it persists.", type="api_error", code="internal_error")
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
        try:
            yield
        finally:
            for hook in gw.extras.get("shutdown_hooks", []):
                await hook(gw)
            await gw.close()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
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


_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})


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
        await super().__call__(scope, receive, send)


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
            self._app = self._factory(gw.accounting)
        await self._app(scope, receive, send)
