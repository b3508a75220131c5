"""The batch runner: works through batch lines in the background of every `tiergate serve` replica.

Each line is one Chat Completions (or Responses) request sent through the same pipeline as live
traffic (`server.chat.run_chat`: routing incl. `model: "auto"`, key budget, dispatch, ledger), with
the line's stable request id so a re-run after a crash cannot be billed twice. Live traffic keeps
priority: a batch runs at most `concurrency` lines at once and all batches together at most
`max_concurrency`; a rate-limited line waits (Retry-After) and tries again until the batch's window ends
or it is cancelled, instead of failing (one that can never fit the key's TPM fails at once). A line refused for its key's budget
only because of holds in flight (often the batch's own other lines) waits for them to settle and tries
again; it fails on budget only once the budget is really spent (`BudgetRefused.exhausted`).

Durability: lines are claimed from the store with a lease that a heartbeat renews; a replica that
dies leaves its lines to lapse and be claimed again (by a restart or another replica). Finishing a
batch (writing the output/error files) is guarded by a batch-level lease and is idempotent (the file
ids are derived from the batch id), so a crash while finalizing is repaired by the next replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from tiergate.accounting.budget import BudgetRefused
from tiergate.accounting.pricing import usage_breakdown
from tiergate.batches.store import UNRUN, BatchStore, Claimed, line_request_id, unrun_error
from tiergate.wire.errors import GatewayError
from tiergate.wire.ids import new_id

if TYPE_CHECKING:
    from tiergate.server.gateway import Gateway

log = logging.getLogger("tiergate.batches")


@dataclass(frozen=True)
class BatchSettings:
    concurrency: int = 4  # lines of one batch in flight at once
    max_concurrency: int = 8  # lines of all batches in flight at once, per replica
    max_batches: int = 4  # batches worked on at once, per replica
    lease_s: float = 30.0  # a claimed line returns to the pool this long after its replica stops heart-beating
    poll_s: float = 1.0  # how often idle replicas look for work
    max_attempts: int = 3  # claims of one line (crashes while running it) before it is failed
    rate_limit_retries: int = 6  # 503 from the gateway itself: back off and retry the line this often
    budget_wait_s: float = 660.0  # a line refused only for budget holds in flight waits this long for them
    window_s: float = 24 * 3600.0  # completion_window "24h"
    forward_upstream: bool = False  # send batches for one OpenAI or Anthropic model to its own batch API
    run_workers: bool = True  # False: this replica serves the API but runs no batch lines
    upstream_poll_s: float = 30.0  # how often a forwarded batch is polled upstream

    @classmethod
    def from_config(cls, raw: Any) -> BatchSettings:
        if not raw:
            return cls()
        if not isinstance(raw, dict):
            raise TypeError("batches: expected a mapping, e.g. {concurrency: 4}")
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"batches.{unknown[0]}: unknown key. Allowed here: {', '.join(sorted(allowed))}")
        return cls(**raw)


async def execute_line(gw: Gateway, endpoint: str, body: dict[str, Any], request_id: str, key: Any,
                       batch_id: str, attempt: int = 1) -> tuple[int, dict[str, Any]]:
    """Run one batch request through the live pipeline -> (status code, response body). `attempt`: which
    try of the line this is (its failure rows are tagged with it: `CallContext.error_tag`)."""
    from tiergate.server.chat import CallContext, run_chat
    from tiergate.wire import responses as wr

    if body.get("stream"):
        raise GatewayError(400, "stream is not supported in batch requests; remove it from the line body.",
                           param="stream", code="invalid_value")
    ctx = CallContext(request_id=request_id, key=key, kind="batch", batch_id=batch_id, error_tag=f":try{attempt}")
    if endpoint == "/v1/responses":
        chat_body = wr.to_chat_request(body, thinking_blocks=True)  # shaping drops them for non-Claude models
        out = await run_chat(gw, chat_body, ctx)
        return 200, wr.to_response(out.body or {}, body, new_id("resp_"), int(time.time()))
    out = await run_chat(gw, dict(body), ctx)
    return out.status, out.body or {}


class BatchRunner:
    def __init__(self, gw: Gateway, store: BatchStore, settings: BatchSettings) -> None:
        self.gw = gw
        self.store = store
        self.settings = settings
        self.owner = new_id("rep_", 6)
        self._global = asyncio.Semaphore(settings.max_concurrency)
        self._workers: dict[str, asyncio.Task] = {}
        self._inflight: dict[str, Claimed] = {}  # claim+line -> line
        self._wake = asyncio.Event()
        self._stopping = False
        self._winding_down: set[str] = set()  # batches cancelling or expiring: lines stop waiting on holds
        self._ending: dict[str, asyncio.Event] = {}  # set when the batch winds down: wakes lines that wait
        self._end_state: dict[str, str] = {}  # batch id -> "cancelled" | "expired" once it winds down
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._main(), name="tiergate-batch-runner"),
                       asyncio.create_task(self._heartbeat(), name="tiergate-batch-heartbeat")]

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        """Stop claiming, cancel lines in flight and hand them back to the pool at once."""
        self._stopping = True
        self._wake.set()
        claims = sorted({c.claim for c in self._inflight.values()})  # before cancelling: tasks forget theirs
        workers = list(self._workers.values())
        for t in [*self._tasks, *workers]:
            t.cancel()
        for t in [*self._tasks, *workers]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if claims:
            with contextlib.suppress(Exception):
                await self.store.release(claims)

    async def _heartbeat(self) -> None:
        while not self._stopping:
            await asyncio.sleep(max(0.2, self.settings.lease_s / 3))
            try:
                await self.store.heartbeat(self.owner, self.settings.lease_s)
            except Exception:
                log.exception("batch heartbeat failed")

    async def _main(self) -> None:
        while not self._stopping:
            try:
                await self._tick()
            except Exception:
                log.exception("batch runner tick failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_s)

    async def _tick(self) -> None:
        for b in await self.store.active_batches():
            bid = b["id"]
            if bid in self._workers or len(self._workers) >= self.settings.max_batches:
                continue
            if b["mode"] == "upstream":
                from tiergate.batches.upstream import work_upstream

                coro = work_upstream(self, b)
            else:
                coro = self._work(b)
            task = asyncio.create_task(self._logged(coro, bid), name=f"tiergate-batch-{bid}")
            self._workers[bid] = task
            task.add_done_callback(lambda _t, bid=bid: self._workers.pop(bid, None))

    @staticmethod
    async def _logged(coro: Any, bid: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch %s: worker failed; it is picked up again on the next poll", bid)

    # ------------------------------------------------------------ one batch

    async def _work(self, b: dict[str, Any]) -> None:
        bid = b["id"]
        key = await self._key(b.get("key_id"))
        running: set[asyncio.Task] = set()
        s = self.settings
        try:
            while not self._stopping:
                cur = await self.store.get_batch(bid, owner_check=False)
                if cur is None:
                    return
                status = cur["status"]
                if status == "in_progress" and cur["expires_at"] and time.time() > cur["expires_at"]:
                    await self.store.cancel_pending(bid, "expired")
                    status = "expiring"
                if status != "in_progress":
                    self._winding_down.add(bid)
                    self._end_state[bid] = "expired" if status == "expiring" else "cancelled"
                    self._ending.setdefault(bid, asyncio.Event()).set()
                if status in ("in_progress",):
                    free = s.concurrency - len(running)
                    claimed = await self.store.claim(bid, self.owner, free, s.lease_s, s.max_attempts)
                    for line in claimed:
                        running.add(asyncio.create_task(self._run_line(cur, key, line)))
                if running:
                    _done, running_set = await asyncio.wait(running, timeout=s.poll_s,
                                                           return_when=asyncio.FIRST_COMPLETED)
                    running = set(running_set)
                    continue
                if status == "cancelling":
                    await self.store.cancel_pending(bid)
                await self.store.give_up_stuck(bid, s.max_attempts)
                counts = await self.store.counts(bid)
                if counts.get("pending", 0) or counts.get("running", 0):
                    await asyncio.sleep(s.poll_s)  # other replicas hold lines of this batch
                    continue
                await self._finalize(cur, status)
                return
        finally:
            self._winding_down.discard(bid)
            self._ending.pop(bid, None)
            self._end_state.pop(bid, None)
            for t in running:
                t.cancel()

    async def _key(self, key_id: str | None) -> Any:
        if key_id is None:
            return None
        from tiergate.accounting.keys import MASTER

        if key_id == MASTER.id:
            return MASTER
        return await self.gw.accounting.keys.get(key_id)

    async def _run_line(self, batch: dict[str, Any], key: Any, line: Claimed) -> None:
        ident = f"{line.claim}:{line.line_no}"
        self._inflight[ident] = line
        rid = line_request_id(line.batch_id, line.line_no)
        try:
            status, body, err = await self._attempt_line(batch, key, line, rid)
            ok = err is None and status is not None and 200 <= status < 300
            out = {"id": f"batch_req_{rid.removeprefix('breq_')}", "custom_id": line.custom_id,
                   "response": None if err else {"status_code": status, "request_id": rid, "body": body},
                   "error": err}
            usage = usage_breakdown(body.get("usage")) if ok and isinstance(body, dict) else None
            await self.store.finish_line(line, ok=ok, status_code=status, result=out, usage=usage)
        finally:
            self._inflight.pop(ident, None)

    async def _attempt_line(self, batch: dict[str, Any], key: Any, line: Claimed, rid: str
                            ) -> tuple[int | None, dict[str, Any], dict[str, Any] | None]:
        try:
            body = orjson.loads(line.body)
        except orjson.JSONDecodeError:
            return 400, {}, {"code": "invalid_json", "message": "the line's body is not valid JSON"}
        if key is not None and getattr(key, "revoked_at", None) is not None:
            e = GatewayError(401, "The API key that created this batch has been revoked.", code="invalid_api_key")
            return e.status, e.to_dict(), None
        if batch.get("key_id") and key is None:
            e = GatewayError(401, "The API key that created this batch no longer exists.", code="invalid_api_key")
            return e.status, e.to_dict(), None
        delay, retries = 1.0, 0
        hold_delay, hold_deadline = 0.05, time.monotonic() + self.settings.budget_wait_s
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._global:  # held while the line runs, not while it waits to try again
                    status, resp = await execute_line(self.gw, batch["endpoint"], body, rid, key, batch["id"],
                                                      attempt)
                return status, resp, None
            except BudgetRefused as e:
                # Not spent, only held by requests in flight (this batch's other lines, live traffic):
                # those holds settle when the requests end, so wait (bounded: a crashed replica's holds
                # lapse after the reservation TTL, so the try after the deadline sees them gone) and try
                # again. A spent budget fails the line at once, as does a batch being cancelled.
                if (e.exhausted or self._stopping or batch["id"] in self._winding_down
                        or time.monotonic() > hold_deadline):
                    return e.status, e.to_dict(), None
                await asyncio.sleep(hold_delay)
                hold_delay = min(hold_delay * 2, 1.0)
            except GatewayError as e:
                if e.status == 429 and e.code != "insufficient_quota" and not self._stopping:
                    # A rate limit (the key's RPM/TPM, or the upstream's): the line has the batch's whole
                    # completion window, so it waits (the Retry-After when given) and tries again until
                    # the window ends or the batch is cancelled; then it is an unrun line. A request that
                    # can never fit the key's TPM fails at once.
                    if never_fits(e):
                        return e.status, e.to_dict(), None
                    wait = retry_after_s(e)
                    if wait is None:
                        wait, delay = delay, min(delay * 2, 30.0)
                    ended = await self._wait_in_window(batch, max(wait, 0.1))  # never a busy loop
                    if ended is not None:
                        return None, {}, unrun_error(ended)
                    continue
                if e.status == 503 and retries < self.settings.rate_limit_retries and not self._stopping:
                    retries += 1
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                return e.status, e.to_dict(), None
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.exception("batch %s line %s failed", batch["id"], line.line_no)
                return 500, {}, {"code": "internal_error", "message": f"the gateway failed on this line ({type(e).__name__})"}

    async def _wait_in_window(self, batch: dict[str, Any], wait_s: float) -> str | None:
        """Sleep `wait_s` (no longer than the batch's completion window lasts); None, or why the batch
        ended meanwhile ("expired" / "cancelled"): a cancel or expiry wakes the line at once."""
        bid = batch["id"]
        if bid in self._end_state:
            return self._end_state[bid]
        left = float(batch.get("expires_at") or float("inf")) - time.time()
        if left <= 0:
            return "expired"
        ending = self._ending.setdefault(bid, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ending.wait(), min(max(wait_s, 0.0), left))
        if bid in self._end_state:
            return self._end_state[bid]
        return "expired" if batch.get("expires_at") and time.time() >= float(batch["expires_at"]) else None

    # ------------------------------------------------------------ finishing

    async def _finalize(self, b: dict[str, Any], status: str) -> None:
        bid = b["id"]
        if not await self.store.take_batch_lease(bid, self.owner, 2 * self.settings.lease_s):
            return
        final = {"cancelling": "cancelled", "expiring": "expired"}.get(status, "completed")
        if status == "in_progress":
            await self.store.set_status(bid, "finalizing", only_from=("in_progress",))
        await finalize_files(self.store, bid, b.get("key_id"))
        fresh = await self.store.get_batch(bid, owner_check=False) or {}
        await self.store.set_status(bid, final, only_from=("in_progress", "finalizing", "cancelling"),
                                    output_file_id=fresh.get("output_file_id"),
                                    error_file_id=fresh.get("error_file_id"))
        log.info("batch %s %s", bid, final)


def never_fits(e: GatewayError) -> bool:
    """A 429 no wait helps: the key's TPM refusal of a request larger than the whole limit (`Request too
    large`, sent with `x-should-retry: false`)."""
    h = {k.lower(): str(v) for k, v in (e.headers or {}).items()}
    if h.get("x-should-retry", "").lower() == "false":
        return True
    return e.code == "rate_limit_exceeded" and "retry-after" not in h and e.message.startswith("Request too large")


def retry_after_s(e: GatewayError) -> float | None:
    """The refusal's Retry-After (`retry-after-ms` or `retry-after` seconds), None when it gives none."""
    h = {k.lower(): v for k, v in (e.headers or {}).items()}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.0, float(h[name]) * scale)
        except (KeyError, TypeError, ValueError):
            continue
    return None


async def finalize_files(store: BatchStore, batch_id: str, key_id: str | None) -> None:
    """Write the output file (successful lines) and the error file (failed lines) for a batch, in input
    order: every input line is in one of them. Lines the batch ended without running (expired, cancelled)
    become failed lines with OpenAI's `batch_expired` / `batch_cancelled` error (so `request_counts`
    has completed + failed == total). Idempotent: the file ids are derived from the batch id."""
    out_lines: list[bytes] = []
    err_lines: list[bytes] = []
    unrun: list[tuple] = []
    rid_base = batch_id.removeprefix("batch_")
    for r in await store.results(batch_id):
        if r["state"] == "done":
            out_lines.append(r["result"].encode())
        elif r["state"] == "failed":
            res = r["result"] or orjson.dumps({
                "id": f"batch_req_{rid_base}_{r['line_no']}", "custom_id": r["custom_id"], "response": None,
                "error": {"code": "line_failed", "message": "no result was produced for this line (the gateway "
                          "stopped while running it too many times, or the upstream batch returned none)"}}).decode()
            err_lines.append(res.encode())
        elif r["state"] in UNRUN:
            res = orjson.dumps({"id": f"batch_req_{rid_base}_{r['line_no']}", "custom_id": r["custom_id"],
                                "response": None, "error": unrun_error(r["state"])}).decode()
            err_lines.append(res.encode())
            unrun.append((res, time.time(), batch_id, r["line_no"], r["state"]))
    if unrun:  # counted as failed from now on (request_counts), with the error line as their result
        await store.db.executemany("UPDATE batch_lines SET state = 'failed', result = ?, updated_at = ? "
                                   "WHERE batch_id = ? AND line_no = ? AND state = ?", unrun)
    fields: dict[str, Any] = {}
    expires_s = await store.output_expiry_s(batch_id) if out_lines or err_lines else None
    if out_lines:
        f = await store.create_file(key_id, f"{batch_id}_output.jsonl", "batch_output",
                                    b"\n".join(out_lines) + b"\n", file_id=f"file-out-{rid_base}",
                                    expires_after_s=expires_s)
        fields["output_file_id"] = f["id"]
    if err_lines:
        f = await store.create_file(key_id, f"{batch_id}_error.jsonl", "batch_output",
                                    b"\n".join(err_lines) + b"\n", file_id=f"file-err-{rid_base}",
                                    expires_after_s=expires_s)
        fields["error_file_id"] = f["id"]
    if fields:
        sets = ", ".join(f"{k} = ?" for k in fields)
        await store.db.execute(f"UPDATE batches SET {sets} WHERE id = ?", *fields.values(), batch_id)
