"""OpenAI-compatible Batch API (wire facts §6): `POST /v1/batches`, `GET /v1/batches/{id}`,
`GET /v1/batches`, `POST /v1/batches/{id}/cancel`.
`output_expires_after` (`{anchor: "created_at", seconds}`, as `expires_after` of an upload) makes the
batch's output and error files expire that long after they are written.

Creating a batch validates the input file (JSONL lines `{custom_id, method: POST, url, body}`, unique
custom ids, `url` equal to the batch `endpoint`, at most 50,000 lines) and stores one row per line;
the `BatchRunner` of every replica then works through the lines (see `tiergate.batches.runner`).
A file that fails validation gives a batch with status `failed` and OpenAI-shaped `errors`; a file that
would be forwarded to OpenAI's own Batch API (`tiergate.batches.upstream`) also fails on `tiergate`
options the gateway would refuse, since the upstream runs its lines without them.
`install_runner(gw)` registers the runner's start/stop hooks with the gateway (called by the app).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tiergate.batches.runner import BatchRunner, BatchSettings
from tiergate.server.chat import error_response, read_options
from tiergate.server.files import _json, batch_store, caller, expires_after_s, list_limit
from tiergate.wire.errors import GatewayError, bad_request, not_found
from tiergate.wire.ids import new_id

if TYPE_CHECKING:
    from tiergate.server.gateway import Gateway

ENDPOINTS = ("/v1/chat/completions", "/v1/responses")
MAX_LINES = 50_000
FORWARDED_NOTE = ("(This batch goes to the upstream's own Batch API, which runs each line without its "
                  "'tiergate' options, so the file is refused rather than the options dropped.)")
UpstreamChoice = Callable[[list[tuple[str, str]]], dict[str, Any] | None]  # valid lines -> forward target or None


def routes() -> list[Route]:
    return [
        Route("/v1/batches", create_batch, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", get_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
    ]


def install_runner(gw: Gateway) -> None:
    """Start the batch runner with the gateway and stop it (handing its lines back) before shutdown."""

    async def start(gw: Gateway) -> None:
        settings = BatchSettings.from_config(gw.config.extra.get("batches"))
        gw.extras["batch_settings"] = settings
        runner = BatchRunner(gw, batch_store(gw), settings)
        gw.extras["batch_runner"] = runner
        if settings.run_workers:
            runner.start()

    async def stop(gw: Gateway) -> None:
        runner = gw.extras.get("batch_runner")
        if runner is not None:
            await runner.close()

    gw.extras.setdefault("startup_hooks", []).append(start)
    gw.extras.setdefault("shutdown_hooks", []).append(stop)


def _ts(v: Any) -> int | None:
    return int(v) if v is not None else None


async def batch_object(gw: Gateway, row: dict[str, Any]) -> dict[str, Any]:
    bs = batch_store(gw)
    counts = await bs.counts(row["id"])
    u = await bs.usage(row["id"])
    total = int(row["total"] or 0)
    obj: dict[str, Any] = {
        "id": row["id"], "object": "batch", "endpoint": row["endpoint"],
        "errors": orjson.loads(row["errors"]) if row.get("errors") else None,
        "input_file_id": row["input_file_id"], "completion_window": row["completion_window"],
        "status": row["status"], "output_file_id": row.get("output_file_id"),
        "error_file_id": row.get("error_file_id"),
        "created_at": _ts(row["created_at"]),
        **{k: _ts(row.get(k)) for k in ("in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
                                         "expired_at", "cancelling_at", "cancelled_at")},
        "request_counts": {"total": total, "completed": counts.get("done", 0), "failed": counts.get("failed", 0)},
        **_upstream_view(row),
        "metadata": orjson.loads(row["metadata"]) if row.get("metadata") else None,
        "usage": {"input_tokens": u["i"], "input_tokens_details": {"cached_tokens": u["c"]},
                  "output_tokens": u["o"], "output_tokens_details": {"reasoning_tokens": u["r"]},
                  "total_tokens": u["i"] + u["o"]},
    }
    return obj


def _upstream_view(row: dict[str, Any]) -> dict[str, Any]:
    """While a forwarded batch runs upstream, its progress is the upstream's."""
    if row.get("mode") != "upstream" or not row.get("upstream") or row["status"] in ("completed", "cancelled",
                                                                                        "expired", "failed"):
        return {}
    rc = orjson.loads(row["upstream"]).get("request_counts")
    return {"request_counts": rc} if rc else {}


def parse_input(content: bytes, endpoint: str, forward_to: UpstreamChoice | None = None
                ) -> tuple[list[tuple[str, str]], list[dict[str, Any]], dict[str, Any] | None]:
    """JSONL batch input -> ([(custom_id, body json)], errors in OpenAI's `{code, message, param, line}`,
    upstream target or None).

    `forward_to(lines)` says where a valid file would be forwarded (OpenAI's own Batch API), or None to
    run it line by line. A forwarded line is sent without its `tiergate` options, so it cannot fail
    alone the way a local line does: an option the gateway would refuse (`chat.read_options`: unknown
    names, routing-only options with an explicit model) is a line error of the file instead of being
    silently dropped."""
    lines: list[tuple[str, str]] = []
    errors: list[dict[str, Any]] = []
    option_errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def err(code: str, message: str, line: int, param: str | None = None, into: list | None = None) -> None:
        into = errors if into is None else into
        if len(into) < 100:
            into.append({"code": code, "message": message, "param": param, "line": line})

    raw_lines = content.split(b"\n")
    for n, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            err("invalid_json_line", "This line is not parseable as valid JSON.", n)
            continue
        if not isinstance(obj, dict):
            err("invalid_request", "Each line must be a JSON object.", n)
            continue
        cid = obj.get("custom_id")
        if not isinstance(cid, str) or not cid:
            err("missing_required_parameter", "custom_id is required and must be a string.", n, "custom_id")
        elif cid in seen:
            err("duplicate_custom_id", f"The custom_id {cid!r} appears more than once; custom ids must be unique "
                "within a batch.", n, "custom_id")
        else:
            seen.add(cid)
        if "method" not in obj:
            err("missing_required_parameter", "method is required: \"method\": \"POST\".", n, "method")
        elif obj.get("method") != "POST":
            err("invalid_method", "method must be POST.", n, "method")
        if obj.get("url") != endpoint:
            err("mismatched_endpoint", f"The url {obj.get('url')!r} does not match the batch endpoint {endpoint}.",
                n, "url")
        body = obj.get("body")
        if not isinstance(body, dict):
            err("invalid_request", "body must be a JSON object holding the request.", n, "body")
        elif not isinstance(body.get("model"), str):
            err("missing_required_parameter", "body.model is required.", n, "body.model")
        elif forward_to is not None:
            try:
                read_options(dict(body), body["model"])
            except GatewayError as e:
                err(e.code or "invalid_request", f"{e.message} {FORWARDED_NOTE}", n,
                    f"body.{e.param}" if e.param else "body", into=option_errors)
        if not errors and isinstance(cid, str):
            lines.append((cid, orjson.dumps(body).decode()))
    if not errors and not lines:
        err("empty_file", "The input file has no requests.", 1)
    if len(lines) > MAX_LINES:
        err("too_many_requests", f"A batch holds at most {MAX_LINES} requests; this file has {len(lines)}.", 1)
    upstream = forward_to(lines) if forward_to is not None and not errors else None
    if upstream is not None and option_errors:
        errors, upstream = option_errors, None
    return ([] if errors else lines), errors, upstream


async def create_batch(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    rid = new_id("req_")
    try:
        owner, vis = await caller(gw, request)
        try:
            req = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise bad_request("We could not parse the JSON body of your request.") from None
        if not isinstance(req, dict):
            raise bad_request("The request body must be a JSON object.")
        endpoint = req.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise bad_request(f"endpoint must be one of {', '.join(ENDPOINTS)} on this gateway, got {endpoint!r}.",
                              param="endpoint", code="invalid_value")
        if req.get("completion_window") != "24h":
            raise bad_request("completion_window must be '24h'.", param="completion_window", code="invalid_value")
        meta = req.get("metadata")
        if meta is not None and (not isinstance(meta, dict) or len(meta) > 16):
            raise bad_request("metadata must be an object with at most 16 keys.", param="metadata")
        # the output / error files expire this long after they are written (also for a forwarded batch:
        # these are the gateway's copies; the upstream batch is created without it)
        output_expires_s = expires_after_s(req.get("output_expires_after"), "output_expires_after")
        fid = req.get("input_file_id")
        bs = batch_store(gw)
        f = await bs.get_file(str(fid), vis) if isinstance(fid, str) else None
        if f is None:
            raise not_found(f"No such File object: {fid}", param="input_file_id", code="file_not_found")
        if f["purpose"] != "batch":
            raise bad_request(f"File {fid} has purpose {f['purpose']!r}; batch input needs purpose 'batch'.",
                              param="input_file_id", code="invalid_value")
        settings: BatchSettings = gw.extras.get("batch_settings") or BatchSettings()
        forward_to = None
        if settings.forward_upstream:
            from tiergate.batches.upstream import upstream_target

            forward_to = partial(upstream_target, gw)
        lines, errors, upstream = parse_input(await bs.file_content(str(fid)), str(endpoint), forward_to)
        mode = "local" if upstream is None else "upstream"
        bid = await bs.create_batch(key_id=owner, endpoint=str(endpoint), input_file_id=str(fid),
                                    window_s=settings.window_s, metadata=meta, lines=lines, errors=errors or None,
                                    mode=mode, upstream=upstream, output_expires_s=output_expires_s)
        runner = gw.extras.get("batch_runner")
        if runner is not None:
            runner.wake()
        row = await bs.get_batch(bid, owner_check=False)
        return _json(await batch_object(gw, row or {}))
    except GatewayError as e:
        return error_response(e, rid)


async def _batch_or_404(request: Request) -> tuple[Gateway, dict[str, Any]]:
    gw: Gateway = request.app.state.gateway
    _, vis = await caller(gw, request)
    bid = request.path_params["batch_id"]
    row = await batch_store(gw).get_batch(bid, vis)
    if row is None:
        raise not_found(f"No such Batch object: {bid}", param="batch_id", code="batch_not_found")
    return gw, row


async def get_batch(request: Request) -> Response:
    try:
        gw, row = await _batch_or_404(request)
        return _json(await batch_object(gw, row))
    except GatewayError as e:
        return error_response(e, new_id("req_"))


async def list_batches(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    try:
        _, vis = await caller(gw, request)
        limit = list_limit(request, 20, 100)  # spec listBatches: 1-100, default 20; out of range is a 400
        # An unknown `after` (or another key's batch) is an empty page (docs/batches.md).
        rows, more = await batch_store(gw).list_batches(vis, request.query_params.get("after") or None, limit)
        data = [await batch_object(gw, r) for r in rows]
    except GatewayError as e:
        return error_response(e, new_id("req_"))
    return _json({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                  "last_id": data[-1]["id"] if data else None, "has_more": more})


async def cancel_batch(request: Request) -> Response:
    try:
        gw, row = await _batch_or_404(request)
        bs = batch_store(gw)
        if row["status"] in ("completed", "failed", "expired"):
            raise GatewayError(400, f"Cannot cancel a batch with status '{row['status']}'.", code="batch_not_cancellable")
        if await bs.set_status(row["id"], "cancelling", only_from=("validating", "in_progress")):
            if row["mode"] != "upstream":  # forwarded batches keep their lines until the upstream answers
                await bs.cancel_pending(row["id"])
            runner = gw.extras.get("batch_runner")
            if runner is not None:
                runner.wake()
        fresh = await bs.get_batch(row["id"], owner_check=False)
        return _json(await batch_object(gw, fresh or row))
    except GatewayError as e:
        return error_response(e, new_id("req_"))
