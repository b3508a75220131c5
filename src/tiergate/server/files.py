"""OpenAI-compatible Files API, for batch input and output (wire facts §6): `POST /v1/files`
(multipart `file` + `purpose=batch`), `GET /v1/files`, `GET /v1/files/{id}`,
`GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`. Files live in the store, so every replica
serves them; a key sees only its own files (the master key and an open gateway see all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tiergate.server.chat import error_response
from tiergate.wire.errors import GatewayError, bad_request, not_found
from tiergate.wire.ids import new_id

if TYPE_CHECKING:
    from tiergate.batches.store import BatchStore
    from tiergate.server.gateway import Gateway

MAX_FILE_BYTES = 200 * 1024 * 1024  # OpenAI's limit for batch input files
PURPOSES = ("batch",)


def routes() -> list[Route]:
    return [
        Route("/v1/files", upload_file, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", get_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
    ]


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": int(row["bytes"]), "created_at": int(row["created_at"]),
            "expires_at": int(row["expires_at"]) if row.get("expires_at") else None, "filename": row["filename"],
            "purpose": row["purpose"], "status": "processed", "status_details": None}


async def caller(gw: Gateway, request: Request) -> tuple[str | None, str | None]:
    """(owner id to store on new objects, key id to filter reads by; None = sees everything)."""
    key = await gw.accounting.authenticate(request.headers.get("authorization"))
    if key is None:
        return None, None
    return key.id, (None if getattr(key, "is_master", False) else key.id)


def batch_store(gw: Gateway) -> BatchStore:
    bs = gw.extras.get("batch_store")
    if bs is None:
        from tiergate.batches.store import BatchStore

        bs = gw.extras["batch_store"] = BatchStore(gw.accounting.store)
    return bs


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


async def upload_file(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    rid = new_id("req_")
    try:
        owner, _ = await caller(gw, request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise bad_request("Upload the file as multipart/form-data with fields `file` and `purpose`.")
        length = int(request.headers.get("content-length") or 0)
        if length > MAX_FILE_BYTES + 65536:
            raise GatewayError(413, f"The file is larger than the {MAX_FILE_BYTES // 2**20} MB limit.", param="file",
                               code="file_too_large")
        async with request.form(max_files=1, max_fields=10, max_part_size=MAX_FILE_BYTES) as form:
            purpose = form.get("purpose")
            upload = form.get("file")
            if purpose not in PURPOSES:
                raise bad_request(f"purpose must be one of {', '.join(PURPOSES)} on this gateway, got {purpose!r}.",
                                  param="purpose", code="invalid_value")
            if upload is None or isinstance(upload, str):
                raise bad_request("The `file` field is missing (send it as a file part).", param="file",
                                  code="missing_required_parameter")
            content = await upload.read()
            filename = upload.filename or "upload.jsonl"
        if len(content) > MAX_FILE_BYTES:
            raise GatewayError(413, f"The file is larger than the {MAX_FILE_BYTES // 2**20} MB limit.", param="file",
                               code="file_too_large")
        row = await batch_store(gw).create_file(owner, filename, str(purpose), content)
        return _json(file_object(row))
    except GatewayError as e:
        return error_response(e, rid)


def list_limit(request: Request, default: int, maximum: int) -> int:
    """The `limit` query parameter of a list call, 1 to `maximum` (OpenAI's 400s and codes otherwise)."""
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise bad_request(f"Invalid 'limit': expected an integer, but got {raw!r} instead.", param="limit",
                          code="invalid_type") from None
    if limit < 1:
        raise bad_request(f"Invalid 'limit': integer below minimum value. Expected a value >= 1, but got {limit} "
                          "instead.", param="limit", code="integer_below_min_value")
    if limit > maximum:
        raise bad_request(f"Invalid 'limit': integer above maximum value. Expected a value <= {maximum}, but got "
                          f"{limit} instead.", param="limit", code="integer_above_max_value")
    return limit


def list_order(request: Request) -> str:
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request(f"Invalid value: {order!r}. Supported values are: 'asc' and 'desc'.", param="order",
                          code="invalid_value")
    return order


async def list_files(request: Request) -> Response:
    """OpenAI's cursor page: `limit` 1-10,000 (default 10,000), `order` by `created_at` (default `desc`),
    `after` a file id (the page starts past it in that order; an id the caller cannot see gives an empty
    page), `has_more`, `first_id` / `last_id`."""
    gw: Gateway = request.app.state.gateway
    try:
        _, vis = await caller(gw, request)
        limit = list_limit(request, 10_000, 10_000)
        order = list_order(request)
        q = request.query_params
        rows, more = await batch_store(gw).files_page(vis, q.get("purpose"), after=q.get("after") or None,
                                                      limit=limit, order=order)
    except GatewayError as e:
        return error_response(e, new_id("req_"))
    return _json({"object": "list", "data": [file_object(r) for r in rows], "has_more": more,
                  "first_id": rows[0]["id"] if rows else None, "last_id": rows[-1]["id"] if rows else None})


async def _file_or_404(request: Request) -> tuple[Gateway, dict[str, Any]]:
    gw: Gateway = request.app.state.gateway
    _, vis = await caller(gw, request)
    fid = request.path_params["file_id"]
    row = await batch_store(gw).get_file(fid, vis)
    if row is None:
        raise not_found(f"No such File object: {fid}", param="file_id", code="file_not_found")
    return gw, row


async def get_file(request: Request) -> Response:
    try:
        _, row = await _file_or_404(request)
    except GatewayError as e:
        return error_response(e, new_id("req_"))
    return _json(file_object(row))


async def file_content(request: Request) -> Response:
    try:
        gw, row = await _file_or_404(request)
        data = await batch_store(gw).file_content(row["id"])
    except GatewayError as e:
        return error_response(e, new_id("req_"))
    return Response(data, media_type="application/octet-stream",
                    headers={"content-disposition": f'attachment; filename="{row["filename"]}"'})


async def delete_file(request: Request) -> Response:
    try:
        gw, row = await _file_or_404(request)
        await batch_store(gw).delete_file(row["id"])
    except GatewayError as e:
        return error_response(e, new_id("req_"))
    return _json({"id": row["id"], "object": "file", "deleted": True})
