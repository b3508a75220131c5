"""`GET /v1/models` and `GET /v1/models/{id}`: the configured client-facing models, plus the routing
aliases when a router is configured (SPEC `ListModelsResponse`, wire facts §7)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tiergate.wire.errors import GatewayError, not_found

if TYPE_CHECKING:
    from tiergate.server.gateway import Gateway

_CREATED = 1735689600  # 2025-01-01: a fixed, documented creation time for gateway-defined models


def model_objects(gw: Gateway, key: Any = None) -> list[dict[str, Any]]:
    """The models a caller may use: every configured model, or those of `key`'s allow-list (as OpenAI
    lists only a project's models); the routing aliases when a router is configured and the key may use
    at least one routing candidate."""
    allows = key.allows if key is not None and not getattr(key, "is_master", False) else (lambda _name: True)
    out = []
    for m in gw.config.models:
        if not allows(m.name):
            continue
        info = gw.infos[m.name]
        out.append({"id": m.name, "object": "model", "created": _CREATED,
                    "owned_by": getattr(info, "family", None) or "tiergate"})
    routable = any(allows(c.partition("@")[0]) for c in gw.config.routing.candidates)
    if gw.router is not None and routable:
        for alias in ("auto", "auto:cost", "auto:balanced", "auto:quality"):
            out.append({"id": alias, "object": "model", "created": _CREATED, "owned_by": "tiergate-router"})
    return out


async def list_models(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    try:
        key = await gw.accounting.authenticate(request.headers.get("authorization"))
    except GatewayError as e:
        return Response(e.to_json(), status_code=e.status, media_type="application/json")
    return Response(orjson.dumps({"object": "list", "data": model_objects(gw, key)}), media_type="application/json")


async def get_model(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    model_id = request.path_params["model_id"]
    try:
        key = await gw.accounting.authenticate(request.headers.get("authorization"))
        for m in model_objects(gw, key):
            if m["id"] == model_id:
                return Response(orjson.dumps(m), media_type="application/json")
        from tiergate.server.chat import looks_like_a_key

        if looks_like_a_key(model_id):  # a key pasted as the id is never echoed (nor logged through the error)
            raise not_found("The model id looks like an API key, so it is not repeated here: send your key as the "
                            "API key (Authorization: Bearer) and a model name in the path.", param="model",
                            code="model_not_found")
        raise not_found(f"The model '{model_id}' does not exist", param="model", code="model_not_found")
    except GatewayError as e:
        return Response(e.to_json(), status_code=e.status, media_type="application/json")
