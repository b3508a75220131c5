"""Forwarding a batch to Anthropic's Message Batches API (the `anthropic` provider's batch client).

Wire (docs.anthropic.com/en/api/creating-message-batches, .../retrieving-message-batches,
.../canceling-message-batches, .../retrieving-message-batch-results, .../listing-message-batches):
`POST /v1/messages/batches {"requests": [{"custom_id", "params"}]}` -> a MessageBatch (`id` msgbatch_...,
`processing_status` in_progress | canceling | ended, `request_counts` {processing, succeeded, errored,
canceled, expired}, `created_at`, `cancel_initiated_at`, `results_url`); `GET .../{id}`;
`POST .../{id}/cancel`; `GET .../{id}/results` -> JSONL `{custom_id, result: {type: succeeded, message}
| {type: errored, error: {type: error, error: {type, message}}} | {type: canceled} | {type: expired}}`,
not in request order. Headers as for /v1/messages (x-api-key, anthropic-version 2023-06-01).

Each line is shaped for the catalogue entry and translated to Messages params exactly as a live call
would be (`shape_request`, `wire.anthropic.to_messages_request`; `/v1/responses` lines go through
`wire.responses` first); a line that cannot be translated is answered at once with the gateway's own
400 ("this line cannot be sent to Anthropic: …", the same code and param as the live refusal) and is
not sent. Custom ids Anthropic refuses (over 64 characters, or outside
`[A-Za-z0-9_-]`) are sent as `tg-<line>` and mapped back (the map is kept in the batch row).
Results come back as OpenAI `chat.completion` (or `response`) bodies via `wire.anthropic.from_message`.

Crash safety: a MessageBatch has no metadata, so the batch cannot be found by a tag later. Before the
create call the row records `state: submitting`, the time and the request count; the upstream id is
stored as soon as the create call answers. A replica that finds `submitting` without an id lists the
key's batches and adopts the one created within `ADOPT_WINDOW_S` of that time with the same request
count that no other tiergate batch holds; with none it submits again, and with several (ambiguous) it
also submits again rather than risk answering from someone else's batch (docs/batches.md).
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from tiergate.accounting.tokens import count_request
from tiergate.batches.store import UNRUN
from tiergate.batches.upstream_common import JsonHttp, LineResult, Polled, Settle
from tiergate.catalog.shaping import check_capabilities, shape_request
from tiergate.providers.anthropic import translate_request
from tiergate.wire import anthropic as wa
from tiergate.wire import responses as wr
from tiergate.wire.errors import GatewayError
from tiergate.wire.ids import new_id

if TYPE_CHECKING:
    import aiohttp

    from tiergate.providers.base import Deployment
    from tiergate.server.gateway import Gateway

log = logging.getLogger("tiergate.batches")
DEFAULT_BASE = "https://api.anthropic.com"
CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what Anthropic accepts as a custom_id
ADOPT_WINDOW_S = 300.0  # an orphaned upstream batch is looked for this long either side of the create call
ADOPT_PAGES = 10  # pages of 100 batches listed at most when looking for it

LOST = {"canceled": UNRUN["cancelled"], "expired": UNRUN["expired"]}  # OpenAI's error lines for lines that never ran


def upstream_custom_ids(lines: list[dict[str, Any]]) -> dict[str, int]:
    """Upstream custom id -> line number, for the lines whose own custom id Anthropic would refuse."""
    taken = {r["custom_id"] for r in lines if CUSTOM_ID.fullmatch(r["custom_id"])}
    remap: dict[str, int] = {}
    for r in lines:
        if r["custom_id"] in taken:
            continue
        cid = f"tg-{r['line_no']}"
        while cid in taken:
            cid += "_"
        taken.add(cid)
        remap[cid] = r["line_no"]
    return remap


class AnthropicBatchClient:
    """The Message Batches calls, over the gateway's shared aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, gw: Gateway, dep: Deployment, model: str,
                 endpoint: str) -> None:
        base = (dep.api_base or DEFAULT_BASE).rstrip("/")
        headers = {"anthropic-version": wa.ANTHROPIC_VERSION, **dict(dep.headers)}
        if dep.api_key is not None:
            headers["x-api-key"] = dep.api_key.value
        self.http = JsonHttp(session, base if base.endswith("/v1") else f"{base}/v1", headers)
        self.gw, self.model, self.endpoint = gw, model, endpoint
        self.info = gw.infos[model]
        self.upstream_model = dep.upstream_model or self.info.name

    # ------------------------------------------------------------ requests

    def _chat_body(self, body: dict[str, Any]) -> dict[str, Any]:
        return wr.to_chat_request(body, thinking_blocks=True) if self.endpoint == "/v1/responses" else body

    def params(self, body: dict[str, Any]) -> dict[str, Any]:
        """Messages create params for one line body, as the live pipeline would send them (or GatewayError)."""
        chat = {k: v for k, v in self._chat_body(body).items() if k != "tiergate"}
        if chat.get("stream"):
            raise GatewayError(400, "stream is not supported in batch requests; remove it from the line body.",
                               param="stream", code="invalid_value")
        check_capabilities(chat, self.info, self.gw.infos, self.model)
        shaped, _dropped = shape_request(chat, self.info)
        try:
            # the limit the gateway admits for this model (its deployments' max output, the 128k beta included)
            params = translate_request(shaped, False, self.upstream_model, self.info.max_output_tokens)
        except GatewayError as e:  # the live path's RequestRefused, worded for a batch line
            raise GatewayError(400, f"this line cannot be sent to Anthropic: {e.message}", param=e.param,
                               code=e.code) from None
        params.pop("stream", None)
        return params

    def reservation(self, body: dict[str, Any], capped: bool) -> tuple[int, int]:
        """(prompt tokens, output tokens) the line can use at most: the `max_tokens` it is sent with
        (thinking budget included). Raises GatewayError for a line that cannot be sent (see `params`)."""
        params = self.params(body)
        return count_request(self._chat_body(body), self.info), int(params["max_tokens"])  # tools count too

    def _requests(self, lines: list[dict[str, Any]], remap: dict[str, int]
                  ) -> tuple[list[dict[str, Any]], list[LineResult]]:
        upstream_id = {no: cid for cid, no in remap.items()}
        requests, refused = [], []
        for r in lines:
            try:
                params = self.params(orjson.loads(r["body"]))
            except (GatewayError, TypeError, ValueError, AttributeError, KeyError) as e:
                if not isinstance(e, GatewayError):
                    e = GatewayError(400, f"this line cannot be sent to Anthropic ({type(e).__name__}: {e})",
                                     code="invalid_value")
                refused.append(LineResult(line_no=r["line_no"], ok=False, status_code=e.status, body=e.to_dict()))
                continue
            requests.append({"custom_id": upstream_id.get(r["line_no"], r["custom_id"]), "params": params})
        return requests, refused

    # ------------------------------------------------------------ the client interface

    async def submit(self, store: Any, batch: dict[str, Any], up: dict[str, Any], settle: Settle) -> None:
        bid = batch["id"]
        if up.get("state") == "submitting":  # a replica stopped after (maybe) sending the create call
            found = await self._adopt(store, bid, up)
            if found is not None:
                log.info("batch %s: adopted upstream batch %s created before a takeover", bid, found)
                up["batch_id"] = found
                return
        lines = await store.lines_needing_upstream_results(bid)
        remap = upstream_custom_ids(lines)
        requests, refused = self._requests(lines, remap)
        if refused:
            await settle(refused)
        up.update(custom_ids=remap, refused=len(refused), n_requests=len(requests))
        if not requests:
            up["batch_id"] = None
            return
        up.update(state="submitting", submitted_at=time.time())
        await store.update_upstream(bid, up)
        created = await self.http.json("POST", "/messages/batches", json_body={"requests": requests})
        up["batch_id"] = created["id"]

    async def _adopt(self, store: Any, bid: str, up: dict[str, Any]) -> str | None:
        """The upstream batch a crashed replica created for `bid`, if it can be told apart."""
        at, n = float(up.get("submitted_at") or 0), int(up.get("n_requests") or 0)
        taken = await store.upstream_batch_ids(except_batch=bid)
        found: list[str] = []
        path = "/messages/batches?limit=100"
        for _ in range(ADOPT_PAGES):
            page = await self.http.json("GET", path)
            oldest = at
            for mb in page.get("data") or []:
                created = _ts(mb.get("created_at"))
                oldest = min(oldest, created)
                if (abs(created - at) <= ADOPT_WINDOW_S and sum((mb.get("request_counts") or {}).values()) == n
                        and mb.get("id") not in taken):
                    found.append(mb["id"])
            if not page.get("has_more") or oldest < at - ADOPT_WINDOW_S or not page.get("last_id"):
                break
            path = f"/messages/batches?limit=100&after_id={page['last_id']}"
        if len(found) > 1:
            log.warning("batch %s: %d upstream batches could be the one created before a takeover (%s); "
                        "submitting again", bid, len(found), ", ".join(found))
        return found[0] if len(found) == 1 else None

    async def poll(self, batch_id: str) -> Polled:
        mb = await self.http.json("GET", f"/messages/batches/{batch_id}")
        rc = {k: int(v or 0) for k, v in (mb.get("request_counts") or {}).items()}
        counts = {"total": sum(rc.values()), "completed": rc.get("succeeded", 0),
                  "failed": rc.get("errored", 0) + rc.get("canceled", 0) + rc.get("expired", 0)}
        ps = mb.get("processing_status")
        if ps == "ended":
            status = "cancelled" if mb.get("cancel_initiated_at") else "expired" if rc.get("expired") else "completed"
        else:
            status = "cancelling" if ps == "canceling" else "in_progress"
        return Polled(status=status, counts=counts, raw=mb)

    async def cancel(self, batch_id: str) -> None:
        await self.http.request("POST", f"/messages/batches/{batch_id}/cancel")

    async def results(self, polled: Polled, up: dict[str, Any], lines: list[dict[str, Any]]) -> list[LineResult]:
        url = polled.raw.get("results_url")
        path = (url.removeprefix(self.http.base) if isinstance(url, str) and url.startswith(self.http.base + "/")
                else f"/messages/batches/{polled.raw['id']}/results")  # never send the key elsewhere
        remap = {k: int(v) for k, v in (up.get("custom_ids") or {}).items()}
        by_cid = {r["custom_id"]: r for r in lines}
        by_no = {r["line_no"]: r for r in lines}
        out = []
        for raw in (await self.http.request("GET", path)).splitlines():
            if not raw.strip():
                continue
            item = orjson.loads(raw)
            cid = item.get("custom_id")
            row = by_no.get(remap[cid]) if cid in remap else by_cid.get(cid)
            if row is not None:
                out.append(self._line_result(row, item.get("result") or {}))
        return out

    def _line_result(self, row: dict[str, Any], result: dict[str, Any]) -> LineResult:
        kind, no = result.get("type"), row["line_no"]
        if kind == "succeeded":
            body = orjson.loads(row["body"])
            chat = wa.from_message(result.get("message") or {}, structured=wa.structured_tool(self._chat_body(body)))
            out = (wr.to_response(chat, body, new_id("resp_"), int(time.time()))
                   if self.endpoint == "/v1/responses" else chat)
            return LineResult(line_no=no, ok=True, status_code=200, body=out, usage=chat.get("usage"))
        if kind == "errored":
            err = (result.get("error") or {}).get("error") or {}
            status, oa_type = wa.map_status(200, err.get("type"))
            body = {"error": {"message": f"anthropic: {err.get('message', 'the request failed')}", "type": oa_type,
                              "param": None, "code": err.get("type")}}
            return LineResult(line_no=no, ok=False, status_code=status, body=body)
        code, message = LOST.get(str(kind), ("line_failed", f"the upstream batch returned result type {kind!r}"))
        return LineResult(line_no=no, ok=False, status_code=None, error={"code": code, "message": message})


def _ts(value: Any) -> float:
    """An RFC 3339 time from the API (e.g. 2024-08-20T18:37:24.100435Z) as a Unix time; 0 when absent."""
    if not isinstance(value, str) or not value:
        return 0.0
    return datetime.fromisoformat(value).timestamp()  # 3.11 reads the Z suffix
