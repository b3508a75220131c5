"""Forwarding a batch to OpenAI's own Batch API (config `batches.forward_upstream: true`).

A batch qualifies when every line names the same configured model (not `auto`) and that model's first
deployment speaks the OpenAI protocol (`openai` provider). The input is rewritten with the upstream
model name, uploaded (`POST /files`, purpose batch), and a batch is created upstream with metadata
`tiergate_batch_id`; the batch row keeps the upstream ids, so a replica that takes over after a crash
finds the upstream batch instead of creating a second one. One replica at a time polls it (batch-level
lease). When it ends, every result line is stored under its custom_id and billed once at the batch price
(catalogue `batch_factor`), with the line's stable request id.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from tiergate.accounting.pricing import cost_usd, usage_breakdown
from tiergate.batches.store import line_request_id
from tiergate.wire.errors import GatewayError

if TYPE_CHECKING:
    from tiergate.batches.runner import BatchRunner
    from tiergate.providers.base import Deployment
    from tiergate.server.gateway import Gateway

log = logging.getLogger("tiergate.batches")
DEFAULT_BASE = "https://api.openai.com/v1"
UPSTREAM_DONE = ("completed", "failed", "expired", "cancelled")


def upstream_target(gw: Gateway, lines: list[tuple[str, str]]) -> dict[str, Any] | None:
    """Where to forward this batch, or None to run it through the gateway line by line."""
    models = {orjson.loads(body).get("model") for _, body in lines}
    if len(models) != 1:
        return None
    model = models.pop()
    mc = gw.config.model(model) if isinstance(model, str) else None
    if mc is None or not mc.deployments or mc.deployments[0].provider != "openai":
        return None
    return {"model": model, "deployment": mc.deployments[0].id, "state": "new"}


class UpstreamBatchError(Exception):
    pass


class OpenAIBatchClient:
    """The few Files/Batches calls we need, over the gateway's shared aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, dep: Deployment) -> None:
        self.session = session
        self.base = (dep.api_base or DEFAULT_BASE).rstrip("/")
        self.headers = dict(dep.headers)
        if dep.api_key is not None:
            self.headers["Authorization"] = f"Bearer {dep.api_key.value}"

    async def _req(self, method: str, path: str, *, json_body: Any = None, **kw: Any) -> bytes:
        headers = dict(self.headers)
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            kw["data"] = orjson.dumps(json_body)
        async with self.session.request(method, self.base + path, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=300), **kw) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise UpstreamBatchError(f"{method} {path}: HTTP {resp.status}: {raw[:300].decode('utf-8', 'replace')}")
            return raw

    async def upload(self, content: bytes, filename: str) -> str:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=filename, content_type="application/jsonl")
        return orjson.loads(await self._req("POST", "/files", data=form))["id"]

    async def create(self, file_id: str, endpoint: str, tag: str) -> dict[str, Any]:
        body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h",
                "metadata": {"tiergate_batch_id": tag}}
        return orjson.loads(await self._req("POST", "/batches", json_body=body))

    async def find(self, tag: str) -> dict[str, Any] | None:
        data = orjson.loads(await self._req("GET", "/batches?limit=100")).get("data") or []
        return next((b for b in data if (b.get("metadata") or {}).get("tiergate_batch_id") == tag), None)

    async def get(self, batch_id: str) -> dict[str, Any]:
        return orjson.loads(await self._req("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> None:
        await self._req("POST", f"/batches/{batch_id}/cancel")

    async def content(self, file_id: str) -> bytes:
        return await self._req("GET", f"/files/{file_id}/content")


async def work_upstream(runner: BatchRunner, b: dict[str, Any]) -> None:
    """Drive one forwarded batch until it ends (called by the runner; safe to resume after a crash)."""
    gw, store, s = runner.gw, runner.store, runner.settings
    bid = b["id"]
    up = orjson.loads(b["upstream"])
    mc = gw.config.model(up["model"])
    dep = next(d for d in mc.deployments if d.id == up["deployment"])
    client = OpenAIBatchClient(gw.session_factory(), dep)
    lease = max(2 * s.upstream_poll_s, s.lease_s)
    while not runner._stopping:
        if not await store.take_batch_lease(bid, runner.owner, lease):
            return  # another replica drives it
        cur = await store.get_batch(bid, owner_check=False) or {}
        try:
            if up.get("state") == "new":
                found = await client.find(bid) if up.get("file_id") else None
                if found is None:
                    if not up.get("file_id"):
                        up["file_id"] = await client.upload(await _input(store, bid, dep, up["model"]),
                                                            f"{bid}.jsonl")
                        await store.update_upstream(bid, up)
                    found = await client.create(up["file_id"], cur["endpoint"], bid)
                up.update(state="submitted", batch_id=found["id"])
                await store.update_upstream(bid, up)
            ub = await client.get(up["batch_id"])
            up["request_counts"] = ub.get("request_counts")
            up["status"] = ub.get("status")
            await store.update_upstream(bid, up)
            if cur.get("status") == "cancelling" and ub.get("status") not in (*UPSTREAM_DONE, "cancelling"):
                await client.cancel(up["batch_id"])
            if ub.get("status") in UPSTREAM_DONE:
                await _collect(gw, store, client, cur, ub, up)
                return
        except (UpstreamBatchError, aiohttp.ClientError, TimeoutError, KeyError, orjson.JSONDecodeError) as e:
            log.warning("batch %s: upstream batch call failed (%s); retrying in %.0fs", bid, e, s.upstream_poll_s)
        await asyncio.sleep(s.upstream_poll_s)


async def _input(store: Any, bid: str, dep: Deployment, model: str) -> bytes:
    upstream_model = dep.upstream_model or model
    batch = await store.get_batch(bid, owner_check=False)
    out = []
    for r in await store.lines_needing_upstream_results(bid):
        body = orjson.loads(r["body"])
        body["model"] = upstream_model
        body.pop("tiergate", None)
        out.append(orjson.dumps({"custom_id": r["custom_id"], "method": "POST", "url": batch["endpoint"],
                                 "body": body}))
    return b"\n".join(out) + b"\n"


async def _collect(gw: Gateway, store: Any, client: OpenAIBatchClient, cur: dict[str, Any], ub: dict[str, Any],
                   up: dict[str, Any]) -> None:
    from tiergate.batches.runner import finalize_files
    from tiergate.server.chat import CallContext, record_call

    bid = cur["id"]
    by_cid = {r["custom_id"]: r["line_no"] for r in await store.lines_needing_upstream_results(bid)}
    info = gw.infos[up["model"]]
    key = await _key(gw, cur.get("key_id"))
    for fid, ok in ((ub.get("output_file_id"), True), (ub.get("error_file_id"), False)):
        if not fid:
            continue
        for raw in (await client.content(fid)).splitlines():
            if not raw.strip():
                continue
            line = orjson.loads(raw)
            line_no = by_cid.get(line.get("custom_id"))
            if line_no is None:
                continue
            rid = line_request_id(bid, line_no)
            resp = line.get("response") or {}
            status = int(resp.get("status_code") or 0) or None
            body = resp.get("body") or {}
            usage = body.get("usage") if isinstance(body, dict) else None
            good = ok and status is not None and 200 <= status < 300
            result = {"id": f"batch_req_{rid.removeprefix('breq_')}", "custom_id": line["custom_id"],
                      "response": ({"status_code": status, "request_id": rid, "body": body} if resp else None),
                      "error": line.get("error")}
            await store.set_line_result(bid, line_no, ok=good, status_code=status, result=result,
                                        usage=usage_breakdown(usage) if usage else None)
            if usage:
                cost = cost_usd(usage, info, batch=True)
                ctx = CallContext(request_id=rid, key=key, kind="batch", batch_id=bid, batch_pricing=True)
                record_call(gw, ctx, up["model"], up["model"], up["deployment"], body.get("reasoning_effort"), usage,
                        cost, "ok" if good else "error", None, None, False, 1)
                await _charge(gw, key, cost)
    leftover = {"expired": "expired", "cancelled": "cancelled"}.get(ub.get("status"), "failed")
    await store.cancel_pending(bid, leftover)  # lines the upstream returned nothing for
    await finalize_files(store, bid, cur.get("key_id"))
    fresh = await store.get_batch(bid, owner_check=False) or {}
    final = {"completed": "completed", "expired": "expired", "cancelled": "cancelled", "failed": "failed"}[ub["status"]]
    fields: dict[str, Any] = {"output_file_id": fresh.get("output_file_id"), "error_file_id": fresh.get("error_file_id")}
    if final == "failed" and ub.get("errors"):
        fields["errors"] = orjson.dumps(ub["errors"]).decode()
    await store.set_status(bid, final, only_from=("in_progress", "finalizing", "cancelling"), **fields)
    log.info("batch %s: upstream batch %s %s", bid, up.get("batch_id"), final)


async def _key(gw: Gateway, key_id: str | None) -> Any:
    if key_id is None:
        return None
    from tiergate.accounting.keys import MASTER

    return MASTER if key_id == MASTER.id else await gw.accounting.keys.get(key_id)


async def _charge(gw: Gateway, key: Any, cost: float) -> None:
    """Add finished upstream work to the key's budget counter (it is spent already; never refused)."""
    if key is None or getattr(key, "is_master", False) or not getattr(key, "budget_usd", None):
        return
    try:
        res = await gw.accounting.budget.reserve(key, 0.0)
        if res is not None:
            await gw.accounting.budget.settle(res, cost)
    except GatewayError:  # over budget already: the ledger still holds the spend
        log.warning("batch: could not add %.6f USD to the budget counter of key %s", cost, getattr(key, "id", None))
