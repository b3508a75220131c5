"""Forwarding a batch to the provider's own batch API (config `batches.forward_upstream: true`).

A batch qualifies when every line names the same configured model (not `auto`) and that model's first
deployment speaks a protocol with a batch client here: `openai` (OpenAI Files + Batch API, this module)
or `anthropic` (Message Batches, `batches.upstream_anthropic`). `upstream_target` picks the protocol;
`work_upstream` drives either client through the interface in `batches.upstream_common`.

OpenAI: the input is rewritten with the upstream model name, uploaded (`POST /files`, purpose batch),
and a batch is created upstream with metadata `tiergate_batch_id`, so a replica that takes over after a
crash finds it instead of creating a second one. Anthropic has no metadata; see that module for how its
create call is made crash-safe. Either way the batch row keeps the upstream ids, one replica at a time
polls (batch-level lease), cancel is forwarded, and when the upstream batch ends every result is stored
under its line's custom_id and billed once at the batch price (catalogue `batch_factor`) with the line's
stable request id.

Admission: before anything is sent, every line is let in like a live call (`Accounting.admit`, as
`server.chat.run_chat` does): the key's model list (403 `model_not_allowed`), its RPM/TPM (a refused line
waits for its Retry-After while the completion window lasts; "Request too large" fails at once) and its
budget: each line reserves the most it can cost at the batch price (prompt + the output limit it is sent
with). A line refused there gets the live call's error line and is not forwarded; a reservation that
does not fit fails the line with `insufficient_quota` (the batch's own holds last until the upstream
answers, so waiting for them would not help). The holds are kept in the batch row (`up["holds"]`), renewed
while the upstream batch runs (a reservation lapses after `RESERVATION_TTL_S`) and settled with each
line's actual cost (batch price) when its result comes back, or with nothing when it never ran.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from tiergate.accounting.budget import BudgetRefused, Reservation
from tiergate.accounting.pricing import cost_usd, max_cost_usd, usage_breakdown
from tiergate.accounting.tokens import count_request
from tiergate.batches.store import line_request_id
from tiergate.batches.upstream_anthropic import AnthropicBatchClient
from tiergate.batches.upstream_common import (
    UPSTREAM_DONE,
    JsonHttp,
    LineResult,
    Polled,
    Settle,
    UpstreamBatchClient,
    UpstreamBatchError,
)
from tiergate.wire import responses as wr
from tiergate.wire.errors import GatewayError

if TYPE_CHECKING:
    from tiergate.batches.runner import BatchRunner
    from tiergate.providers.base import Deployment
    from tiergate.server.gateway import Gateway

__all__ = ["UpstreamBatchError", "upstream_target", "work_upstream"]

log = logging.getLogger("tiergate.batches")
DEFAULT_BASE = "https://api.openai.com/v1"
PROTOCOLS = ("openai", "anthropic")  # providers whose own batch API a batch can be forwarded to
RETRIED = (UpstreamBatchError, aiohttp.ClientError, TimeoutError, KeyError, ValueError, orjson.JSONDecodeError)


def upstream_target(gw: Gateway, lines: list[tuple[str, str]]) -> dict[str, Any] | None:
    """Where to forward this batch, or None to run it through the gateway line by line."""
    models = {orjson.loads(body).get("model") for _, body in lines}
    if len(models) != 1:
        return None
    model = models.pop()
    mc = gw.config.model(model) if isinstance(model, str) else None
    if mc is None or not mc.deployments or mc.deployments[0].provider not in PROTOCOLS:
        return None
    return {"protocol": mc.deployments[0].provider, "model": model, "deployment": mc.deployments[0].id,
            "state": "new"}


class OpenAIBatchClient:
    """The few Files/Batches calls we need, over the gateway's shared aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, gw: Gateway, dep: Deployment, model: str,
                 endpoint: str) -> None:
        headers = dict(dep.headers)
        if dep.api_key is not None:
            headers["Authorization"] = f"Bearer {dep.api_key.value}"
        self.http = JsonHttp(session, dep.api_base or DEFAULT_BASE, headers)
        self.upstream_model = dep.upstream_model or model
        self.info = gw.infos[model]
        self.endpoint = endpoint

    def reservation(self, body: dict[str, Any], capped: bool) -> tuple[int, int]:
        """(prompt tokens, output tokens) the line can use at most, as `run_chat` counts them."""
        from tiergate.server.chat import default_output_limit

        chat = wr.to_chat_request(body) if self.endpoint == "/v1/responses" else body
        limit = chat.get("max_completion_tokens") or chat.get("max_tokens")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            limit = default_output_limit(self.info)  # sent with the line when `capped` (see _input)
        n = chat.get("n") if isinstance(chat.get("n"), int) else 1
        return count_request(chat, self.info), limit * max(1, n)  # tools and a json_schema format too

    async def upload(self, content: bytes, filename: str) -> str:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=filename, content_type="application/jsonl")
        return (await self.http.json("POST", "/files", data=form))["id"]

    async def create(self, file_id: str, endpoint: str, tag: str) -> dict[str, Any]:
        body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h",
                "metadata": {"tiergate_batch_id": tag}}
        return await self.http.json("POST", "/batches", json_body=body)

    async def find(self, tag: str) -> dict[str, Any] | None:
        data = (await self.http.json("GET", "/batches?limit=100")).get("data") or []
        return next((b for b in data if (b.get("metadata") or {}).get("tiergate_batch_id") == tag), None)

    async def _input(self, store: Any, bid: str, endpoint: str, capped: bool) -> bytes:
        from tiergate.server.chat import default_output_limit

        out = []
        for r in await store.lines_needing_upstream_results(bid):
            body = orjson.loads(r["body"])
            body["model"] = self.upstream_model
            body.pop("tiergate", None)
            # a budgeted key's line goes with the output limit its reservation assumed (as a live call)
            limits = ("max_output_tokens",) if endpoint == "/v1/responses" else ("max_completion_tokens", "max_tokens")
            if capped and not any(body.get(k) for k in limits):
                body[limits[0]] = default_output_limit(self.info)
            out.append(orjson.dumps({"custom_id": r["custom_id"], "method": "POST", "url": endpoint, "body": body}))
        return b"\n".join(out) + b"\n"

    # ------------------------------------------------------------ the client interface

    async def submit(self, store: Any, batch: dict[str, Any], up: dict[str, Any], settle: Settle) -> None:
        bid = batch["id"]
        found = await self.find(bid) if up.get("file_id") else None
        if found is None:
            if not up.get("file_id") and not await store.lines_needing_upstream_results(bid):
                up["batch_id"] = None  # every line was answered here (refused at admission)
                return
            if not up.get("file_id"):
                content = await self._input(store, bid, batch["endpoint"], bool(up.get("capped")))
                up["file_id"] = await self.upload(content, f"{bid}.jsonl")
                await store.update_upstream(bid, up)
            found = await self.create(up["file_id"], batch["endpoint"], bid)
        up["batch_id"] = found["id"]

    async def poll(self, batch_id: str) -> Polled:
        ub = await self.http.json("GET", f"/batches/{batch_id}")
        return Polled(status=ub.get("status") or "in_progress", counts=ub.get("request_counts") or {},
                      errors=ub.get("errors"), raw=ub)

    async def cancel(self, batch_id: str) -> None:
        await self.http.request("POST", f"/batches/{batch_id}/cancel")

    async def results(self, polled: Polled, up: dict[str, Any], lines: list[dict[str, Any]]) -> list[LineResult]:
        by_cid = {r["custom_id"]: r["line_no"] for r in lines}
        out = []
        for fid, ok in ((polled.raw.get("output_file_id"), True), (polled.raw.get("error_file_id"), False)):
            if not fid:
                continue
            for raw in (await self.http.request("GET", f"/files/{fid}/content")).splitlines():
                if not raw.strip():
                    continue
                line = orjson.loads(raw)
                line_no = by_cid.get(line.get("custom_id"))
                if line_no is None:
                    continue
                resp = line.get("response") or {}
                status = int(resp.get("status_code") or 0) or None
                body = resp.get("body") if isinstance(resp.get("body"), dict) else {}
                good = ok and status is not None and 200 <= status < 300
                out.append(LineResult(line_no=line_no, ok=good, status_code=status, body=body if resp else None,
                                      error=line.get("error"), usage=body.get("usage")))
        return out


def _client(gw: Gateway, up: dict[str, Any], endpoint: str) -> UpstreamBatchClient:
    mc = gw.config.model(up["model"])
    dep = next(d for d in mc.deployments if d.id == up["deployment"])
    if up.get("protocol", "openai") == "anthropic":
        return AnthropicBatchClient(gw.session_factory(), gw, dep, up["model"], endpoint)
    return OpenAIBatchClient(gw.session_factory(), gw, dep, up["model"], endpoint)


async def work_upstream(runner: BatchRunner, b: dict[str, Any]) -> None:
    """Drive one forwarded batch until it ends (called by the runner; safe to resume after a crash)."""
    gw, store, s = runner.gw, runner.store, runner.settings
    bid = b["id"]
    up = orjson.loads(b["upstream"])
    client = _client(gw, up, b["endpoint"])
    lease = max(2 * s.upstream_poll_s, s.lease_s)
    while not runner._stopping:
        if not await store.take_batch_lease(bid, runner.owner, lease):
            return  # another replica drives it
        cur = await store.get_batch(bid, owner_check=False) or {}
        try:
            if up.get("state") == "new" and not up.get("file_id") and cur.get("status") == "cancelling":
                # cancelled before anything was sent upstream
                await _finish(store, cur, up, Polled(status="cancelled"), gw)
                return
            if up.get("state") != "submitted":
                async def settle(results: list[LineResult], cur: dict[str, Any] = cur) -> None:
                    await _store_results(gw, store, cur, up, results)

                if not up.get("admitted"):
                    ended = await _admit_lines(runner, client, cur, up, settle)
                    if ended is not None:  # cancelled, or the window ended, before anything was sent
                        await _finish(store, cur, up, Polled(status=ended), gw)
                        return
                await client.submit(store, cur, up, settle)
                up["state"] = "submitted"
                up["refused"] = (await store.counts(bid)).get("failed", 0)  # answered here, never sent
                await store.update_upstream(bid, up)
            if up.get("batch_id") is None:  # every line was answered without going upstream
                polled = Polled(status="completed")
            else:
                polled = await client.poll(up["batch_id"])
                refused = int(up.get("refused") or 0)
                up["request_counts"] = {"total": int(polled.counts.get("total", 0)) + refused,
                                        "completed": int(polled.counts.get("completed", 0)),
                                        "failed": int(polled.counts.get("failed", 0)) + refused}
                up["status"] = polled.status
                await store.update_upstream(bid, up)
                if cur.get("status") == "cancelling" and polled.status not in (*UPSTREAM_DONE, "cancelling"):
                    await client.cancel(up["batch_id"])
                if not polled.done:
                    await _renew_holds(gw, store, cur, up)
            if polled.done:
                if up.get("batch_id") is not None:
                    results = await client.results(polled, up, await store.lines_needing_upstream_results(bid))
                    await _store_results(gw, store, cur, up, results)
                await _finish(store, cur, up, polled, gw)
                return
        except UpstreamBatchError as e:
            if e.refused and up.get("state") != "submitted":
                await _refused(store, cur, up, e, gw)
                return
            log.warning("batch %s: upstream batch call failed (%s); retrying in %.0fs", bid, e, s.upstream_poll_s)
        except RETRIED as e:
            log.warning("batch %s: upstream batch call failed (%s); retrying in %.0fs", bid, e, s.upstream_poll_s)
        await asyncio.sleep(s.upstream_poll_s)


async def _store_results(gw: Gateway, store: Any, cur: dict[str, Any], up: dict[str, Any],
                         results: list[LineResult]) -> None:
    """Store each line's result in the OpenAI batch-output shape and bill what ran, at the batch price."""
    from tiergate.server.chat import CallContext, record_call

    bid = cur["id"]
    rows = {r["line_no"]: r for r in await store.lines_needing_upstream_results(bid)}
    info = gw.infos[up["model"]]
    key = await _key(gw, cur.get("key_id"))
    settled = False
    for res in results:
        row = rows.get(res.line_no)
        if row is None:
            continue
        rid = line_request_id(bid, res.line_no)
        record = {"id": f"batch_req_{rid.removeprefix('breq_')}", "custom_id": row["custom_id"],
                  "response": (None if res.status_code is None and res.body is None
                               else {"status_code": res.status_code, "request_id": rid, "body": res.body}),
                  "error": res.error}
        await store.set_line_result(bid, res.line_no, ok=res.ok, status_code=res.status_code, result=record,
                                    usage=usage_breakdown(res.usage) if res.usage else None)
        cost = cost_usd(res.usage, info, batch=True) if res.usage else 0.0
        if res.usage:
            effort = orjson.loads(row["body"]).get("reasoning_effort")
            ctx = CallContext(request_id=rid, key=key, kind="batch", batch_id=bid, batch_pricing=True)
            record_call(gw, ctx, up["model"], up["model"], up["deployment"], effort, res.usage, cost,
                        "ok" if res.ok else "error", None, None, False, 1)
        hold = (up.get("holds") or {}).pop(str(res.line_no), None)
        if hold is not None:  # admitted with a reservation: settle it with what the line cost
            settled = True
            await _settle_hold(gw, key, up["model"], hold, cost)
        elif res.usage:  # a batch forwarded before admission existed
            await _charge(gw, key, cost)
    if settled:
        await store.update_upstream(bid, up)


async def _finish(store: Any, cur: dict[str, Any], up: dict[str, Any], polled: Polled, gw: Gateway) -> None:
    from tiergate.batches.runner import finalize_files

    bid = cur["id"]
    if up.get("holds"):  # lines admitted that never ran (cancelled, expired, no result): release their holds
        key = await _key(gw, cur.get("key_id"))
        for hold in up["holds"].values():
            await _settle_hold(gw, key, up["model"], hold, 0.0)
        up["holds"] = {}
        await store.update_upstream(bid, up)
    leftover = {"expired": "expired", "cancelled": "cancelled"}.get(polled.status, "failed")
    await store.cancel_pending(bid, leftover)  # lines the upstream returned nothing for
    await finalize_files(store, bid, cur.get("key_id"))
    fresh = await store.get_batch(bid, owner_check=False) or {}
    fields: dict[str, Any] = {"output_file_id": fresh.get("output_file_id"), "error_file_id": fresh.get("error_file_id")}
    if polled.status == "failed" and polled.errors:
        fields["errors"] = orjson.dumps(polled.errors).decode()
    await store.set_status(bid, polled.status, only_from=("in_progress", "finalizing", "cancelling"), **fields)
    log.info("batch %s: upstream batch %s %s", bid, up.get("batch_id"), polled.status)


async def _refused(store: Any, cur: dict[str, Any], up: dict[str, Any], e: UpstreamBatchError, gw: Gateway) -> None:
    """The upstream refused to take the batch (a 400-class answer): it fails, with the upstream's words."""
    err = {"code": "upstream_refused", "message": f"The upstream batch API refused this batch: {e}",
           "param": None, "line": None}
    log.warning("batch %s: %s", cur["id"], err["message"])
    await _finish(store, cur, up, Polled(status="failed", errors={"object": "list", "data": [err]}), gw)


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


# ------------------------------------------------------------ admission (the live call's checks, per line)

async def _admit_lines(runner: BatchRunner, client: Any, cur: dict[str, Any], up: dict[str, Any],
                       settle: Settle) -> str | None:
    """Let every pending line in as a live call would be (model list, RPM/TPM, budget reservation at the
    batch price) before anything is sent; answer the refused ones through `settle` (they are not sent).
    Holds go to `up["holds"]` (line -> [period, reservation id, amount nUSD, est. tokens]). Returns
    "cancelled" / "expired" when the batch ended while lines waited for a rate limit, else None."""
    from tiergate.batches.runner import never_fits, retry_after_s

    gw, store, s = runner.gw, runner.store, runner.settings
    bid = cur["id"]
    key = await _key(gw, cur.get("key_id"))
    info = gw.infos[up["model"]]
    capped = getattr(key, "budget_usd", None) is not None and not getattr(key, "is_master", False)
    up["capped"] = capped  # a budgeted key's lines are sent with the output limit their reservation assumed
    holds: dict[str, list] = up.setdefault("holds", {})
    refused: list[LineResult] = []
    lease = max(2 * s.upstream_poll_s, s.lease_s)
    gone = None
    if cur.get("key_id") and (key is None or getattr(key, "revoked_at", None) is not None):
        gone = GatewayError(401, "The API key that created this batch " + (
            "no longer exists." if key is None else "has been revoked."), code="invalid_api_key")
    for i, r in enumerate(await store.lines_needing_upstream_results(bid)):
        if i % 200 == 199:  # a long admission (many lines, a remote budget) keeps the batch to this replica
            await store.take_batch_lease(bid, runner.owner, lease)
        if str(r["line_no"]) in holds:
            continue
        if gone is not None:
            refused.append(LineResult(line_no=r["line_no"], ok=False, status_code=gone.status, body=gone.to_dict()))
            continue
        try:
            prompt, out = client.reservation(orjson.loads(r["body"]), capped)
        except (GatewayError, TypeError, ValueError, AttributeError, KeyError):
            continue  # the client refuses the line itself when it submits (with the gateway's 400)
        delay = 1.0
        while True:
            try:
                adm = await gw.accounting.admit(key, up["model"], prompt, max_cost_usd(prompt, out, info, batch=True),
                                                prompt + out)
            except BudgetRefused as e:
                # the batch's own holds last until the upstream answers: waiting for them cannot help
                refused.append(LineResult(line_no=r["line_no"], ok=False, status_code=e.status, body=e.to_dict()))
                break
            except GatewayError as e:
                if e.status == 429 and e.code != "insufficient_quota" and not never_fits(e):
                    wait = retry_after_s(e)
                    if wait is None:
                        wait, delay = delay, min(delay * 2, 30.0)
                    ended = await _wait_admitting(runner, bid, cur, max(wait, 0.1), lease)
                    if ended is not None:
                        if refused:
                            await settle(refused)
                        return ended
                    continue
                refused.append(LineResult(line_no=r["line_no"], ok=False, status_code=e.status, body=e.to_dict()))
                break
            if adm.reservation is not None:
                res = adm.reservation
                holds[str(r["line_no"])] = [res.period, res.id, res.amount_nusd, adm.est_tokens]
            break
    if refused:
        await settle(refused)
    up["admitted"] = True
    up["held_at"] = time.time()
    await store.update_upstream(bid, up)
    return None


async def _wait_admitting(runner: BatchRunner, bid: str, cur: dict[str, Any], wait_s: float, lease: float
                          ) -> str | None:
    """Wait for a rate limit while admitting, in steps that keep the batch lease and notice a cancel;
    bounded by the completion window. Returns why the batch ended meanwhile, or None."""
    deadline = time.time() + wait_s
    while True:
        expires = float(cur.get("expires_at") or 0)
        if expires and time.time() >= expires:
            return "expired"
        fresh = await runner.store.get_batch(bid, owner_check=False) or {}
        if fresh.get("status") == "cancelling":
            return "cancelled"
        left = deadline - time.time()
        if left <= 0:
            return None
        step = min(left, max(0.1, runner.settings.poll_s), (expires - time.time()) if expires else left)
        await asyncio.sleep(max(step, 0.0))
        await runner.store.take_batch_lease(bid, runner.owner, lease)


def _hold_admission(key: Any, model: str, hold: list) -> Any:
    from tiergate.accounting.service import Admission

    period, res_id, amount, est = hold
    return Admission(key, model, reservation=Reservation(key.id, period, res_id, int(amount)), est_tokens=int(est))


async def _settle_hold(gw: Gateway, key: Any, model: str, hold: list, cost: float) -> None:
    """Settle one line's reservation with its actual cost (the TPM bucket is not corrected so long after)."""
    if key is None:
        return
    adm = _hold_admission(key, model, hold)
    await gw.accounting.settle(adm, cost, adm.est_tokens)


async def _renew_holds(gw: Gateway, store: Any, cur: dict[str, Any], up: dict[str, Any]) -> None:
    """A reservation lapses after the budget's reservation TTL (11 min) but an upstream batch may run for
    hours: every half TTL each hold is extended atomically (`Budget.renew`), so live traffic cannot spend
    what the batch's lines may still cost. A hold that lapsed anyway (the gateway was down for longer than
    the TTL) is taken again if the budget still has room; otherwise it is kept as it was and its line is
    still settled with its actual cost."""
    holds = up.get("holds") or {}
    ttl = float(getattr(gw.accounting.budget, "reservation_ttl_s", 660.0))
    if not holds or time.time() - float(up.get("held_at") or 0) < ttl / 2:
        return
    key = await _key(gw, cur.get("key_id"))
    if key is None or getattr(key, "budget_usd", None) is None:
        return
    budget = gw.accounting.budget
    lost = 0
    for no, (period, res_id, amount, est) in list(holds.items()):
        held = Reservation(key.id, period, res_id, int(amount))
        if await budget.renew(held):
            continue
        await budget.settle(held, 0.0)
        try:
            res = await budget.reserve(key, int(amount) / 1e9)
        except GatewayError:
            lost += 1
            continue
        if res is not None:
            holds[no] = [res.period, res.id, res.amount_nusd, est]
    if lost:
        log.warning("batch %s: %d budget holds could not be renewed (the budget was taken meanwhile)", cur["id"], lost)
    up["held_at"] = time.time()
    await store.update_upstream(cur["id"], up)
