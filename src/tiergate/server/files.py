"""OpenAI-compatible Files API, for batch input and output (wire facts §6): `POST /v1/files`
(multipart `file` + `purpose=batch`), `GET /v1/files`, `GET /v1/files/{id}`,
`GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`. Files live in the store, so every replica
serves them; a key sees only its own files (the master key and an open gateway see all).
An upload may carry OpenAI's `expires_after` (`{anchor: "created_at", seconds: 3600..2592000}`, sent
by the SDK as the form fields `expires_after[anchor]` / `expires_after[seconds]`): the file object then
has `expires_at`, and from that time the file is gone (404 as an unknown file; purged by the store).
Without one, a `purpose=batch` upload expires after 30 days, as OpenAI's (spec `FileExpirationAfter`).
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
EXPIRES_MIN_S, EXPIRES_MAX_S = 3600, 2_592_000  # spec FileExpirationAfter / BatchFileExpirationAfter: 1 h to 30 d
# spec FileExpirationAfter: "By default, files with `purpose=batch` expire after 30 days and all other files
# are persisted until they are manually deleted" (batch output and error files have their own purpose)
DEFAULT_BATCH_UPLOAD_EXPIRY_S = 2_592_000
_JSON_TYPE = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}


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


def expires_after_s(value: Any, param: str) -> int | None:
    """OpenAI's `{anchor: "created_at", seconds: 3600..2592000}` (`expires_after` of an upload,
    `output_expires_after` of a batch) -> the seconds, or None when absent; a 400 naming `param.<field>`
    otherwise."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(f"Invalid type for '{param}': expected an object, but got "
                          f"{_JSON_TYPE.get(type(value), 'another type')} instead.", param=param, code="invalid_type")
    extra = sorted(set(value) - {"anchor", "seconds"})
    if extra:
        raise bad_request(f"Unknown parameter: '{param}.{extra[0]}'.", param=f"{param}.{extra[0]}",
                          code="unknown_parameter")
    for field in ("anchor", "seconds"):
        if value.get(field) is None:
            raise bad_request(f"Missing required parameter: '{param}.{field}'.", param=f"{param}.{field}",
                              code="missing_required_parameter")
    if value["anchor"] != "created_at":
        raise bad_request(f"Invalid value for '{param}.anchor': {value['anchor']!r}. Supported values are: "
                          "'created_at'.",
                          param=f"{param}.anchor", code="invalid_value")
    seconds = value["seconds"]
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        got = repr(seconds) if isinstance(seconds, str) else _JSON_TYPE.get(type(seconds), "another type")
        raise bad_request(f"Invalid type for '{param}.seconds': expected an integer, but got {got} instead.",
                          param=f"{param}.seconds", code="invalid_type")
    if seconds < EXPIRES_MIN_S:
        raise bad_request(f"Invalid '{param}.seconds': integer below minimum value. Expected a value >= "
                          f"{EXPIRES_MIN_S}, but got {seconds} instead.", param=f"{param}.seconds",
                          code="integer_below_min_value")
    if seconds > EXPIRES_MAX_S:
        raise bad_request(f"Invalid '{param}.seconds': integer above maximum value. Expected a value <= "
                          f"{EXPIRES_MAX_S}, but got {seconds} instead.", param=f"{param}.seconds",
                          code="integer_above_max_value")
    return seconds


def _form_expires_after(form: Any) -> Any:
    """The upload's `expires_after`: the bracket fields the SDK sends (`expires_after[anchor]`, ...) as
    an object, or one `expires_after` field holding a JSON object; None when absent."""
    fields = {k[len("expires_after["):-1]: v for k, v in form.multi_items()
              if k.startswith("expires_after[") and k.endswith("]")}
    seconds = fields.get("seconds")
    if isinstance(seconds, str) and seconds.strip().removeprefix("-").isdigit():  # form fields are text
        fields["seconds"] = int(seconds)
    whole = form.get("expires_after")
    if whole is None:
        return fields or None
    if fields or not isinstance(whole, str):
        raise bad_request("Send 'expires_after' either as one JSON object or as the fields expires_after[anchor] "
                          "and expires_after[seconds], not both.", param="expires_after", code="invalid_type")
    try:
        return orjson.loads(whole)
    except orjson.JSONDecodeError:
        raise bad_request("Invalid type for 'expires_after': expected an object such as {\"anchor\": "
                          "\"created_at\", \"seconds\": 3600}.", param="expires_after", code="invalid_type") from None


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
            if purpose is None:
                raise bad_request("The `purpose` field is missing: send purpose=batch with the file.",
                                  param="purpose", code="missing_required_parameter")
            if purpose not in PURPOSES:
                raise bad_request(f"purpose must be one of {', '.join(PURPOSES)} on this gateway, got {purpose!r}.",
                                  param="purpose", code="invalid_value")
            if upload is None or isinstance(upload, str):
                raise bad_request("The `file` field is missing (send it as a file part).", param="file",
                                  code="missing_required_parameter")
            expires_s = expires_after_s(_form_expires_after(form), "expires_after")
            if expires_s is None and purpose == "batch":
                expires_s = DEFAULT_BATCH_UPLOAD_EXPIRY_S
            content = await upload.read()
            filename = upload.filename or "upload.jsonl"
        if len(content) > MAX_FILE_BYTES:
            raise GatewayError(413, f"The file is larger than the {MAX_FILE_BYTES // 2**20} MB limit.", param="file",
                               code="file_too_large")
        row = await batch_store(gw).create_file(owner, filename, str(purpose), content, expires_after_s=expires_s)
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
    `after` a file id (the page starts past it in that order, also when that file was deleted since; an
    id the caller cannot see gives an empty page), `has_more`, `first_id` / `last_id`. Expired files are
    left out."""
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
