"""Timeouts for one upstream attempt with a single lazily re-armed timer.

`asyncio.timeout()` around every stream chunk costs ~3.5 µs (a timer handle created and cancelled per
chunk); a long stream would spend more on timers than the gateway's whole CPU budget. The watchdog
instead arms one timer per attempt and, when it fires early, re-arms it at the true due time: the
per-chunk cost is a clock read and three attribute writes.

Usage, around every await on the upstream::

    wd.wait()                       # about to wait for the upstream
    try:
        x = await upstream_call()
    except asyncio.CancelledError:
        if wd.expired():            # our timer fired: this is a timeout, not a cancellation
            raise wd.timeout_error(deployment_id) from None
        raise
    wd.idle()

The limit is `first_token` until the first chunk (`set_limit(stream_idle)` afterwards); the deadline is
the request's `total`. A consumer that is slow to ask for the next chunk is not counted as upstream
silence: only time spent inside `wait()`…`idle()` is.

For the body of a stream, where even `wait()` (a clock read and a task lookup, ~0.25 µs) adds up over
hundreds of chunks, `relay(task)` switches to a cheaper lazy mode: per chunk the caller only sets
`wd.waiting = True` before the await and `wd.waiting = False; wd.n += 1` after it; the timer samples
every `limit / 2` and fires when it has seen the same waiting state with no new chunk for a whole
`limit`. A stall is then reported between 1x and 1.5x `stream_idle` after it began, never earlier.
"""

from __future__ import annotations

import asyncio
import math

from tiergate.providers.base import UpstreamError


class Watchdog:
    __slots__ = (
        "_cancelling",
        "_expired",
        "_handle",
        "_loop",
        "_n_seen",
        "_seen_at",
        "_seen_waiting",
        "_task",
        "_wait_start",
        "_why",
        "deadline",
        "limit",
        "n",
        "phase",
        "waiting",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float, limit: float | None, phase: str) -> None:
        self._loop = loop
        self.deadline = deadline
        self.limit = math.inf if limit is None else limit
        self.phase = phase  # first_token | stream_idle
        self._handle: asyncio.TimerHandle | None = None
        self.waiting = False
        self._wait_start = 0.0
        self._task: asyncio.Task | None = None
        self._expired = False
        self._cancelling = 0
        self._why = ""
        self.n = 0  # chunks received (lazy mode)
        self._n_seen = -1
        self._seen_at = 0.0
        self._seen_waiting = False

    def wait(self) -> None:
        now = self._loop.time()
        self._wait_start = now
        self.waiting = True
        self._task = asyncio.current_task()
        if self._handle is None:
            due = min(now + self.limit, self.deadline)
            if due != math.inf:
                self._handle = self._loop.call_at(due, self._fire)

    def idle(self) -> None:
        self.waiting = False

    def set_limit(self, limit: float | None, phase: str) -> None:
        new = math.inf if limit is None else limit
        if new < self.limit and self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.limit = new
        self.phase = phase

    def _fire(self) -> None:
        self._handle = None
        if not self.waiting or self._task is None:
            return  # re-armed at the next wait()
        now = self._loop.time()
        due = min(self._wait_start + self.limit, self.deadline)
        if now < due:
            self._handle = self._loop.call_at(due, self._fire)
            return
        self._expire("total" if now >= self.deadline else self.phase)

    # ------------------------------------------------------------ lazy mode for stream bodies

    def relay(self, task: asyncio.Task | None) -> None:
        """Switch to lazy mode; `task` is the one that will consume the stream."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._task = task
        self.waiting = False
        self._n_seen = -1
        self._arm_lazy(self._loop.time(), self._loop.time())

    def _arm_lazy(self, now: float, at: float) -> None:
        if at == math.inf:
            if self.deadline == math.inf:
                return
            at = self.deadline if self.deadline > now else now + 1.0
        self._handle = self._loop.call_at(at, self._fire_lazy)

    def _fire_lazy(self) -> None:
        self._handle = None
        if self._task is None:
            return
        now = self._loop.time()
        if self.waiting and now >= self.deadline:
            return self._expire("total")
        if self.waiting and self._seen_waiting and self.n == self._n_seen:
            # waiting continuously since `_seen_at` with nothing received
            due = self._seen_at + self.limit
            if now >= due:
                return self._expire(self.phase)
            return self._arm_lazy(now, min(due, self.deadline))
        self._n_seen, self._seen_waiting, self._seen_at = self.n, self.waiting, now
        return self._arm_lazy(now, min(now + self.limit / 2, self.deadline if self.deadline > now else math.inf))

    def _expire(self, why: str) -> None:
        assert self._task is not None
        self._why = why
        self._expired = True
        self._cancelling = self._task.cancelling()
        self._task.cancel()

    def expired(self) -> bool:
        """After a CancelledError: True when it was this watchdog's doing (and swallows that cancel)."""
        if not self._expired:
            return False
        self._expired = False
        self.waiting = False
        return self._task is not None and self._task.uncancel() <= self._cancelling

    def stop(self) -> None:
        self.waiting = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def timeout_error(self, deployment_id: str, total_s: float | None, usage: dict | None = None) -> UpstreamError:
        if self._why == "total":
            msg = f"the request did not finish within its total timeout of {total_s}s (deployment {deployment_id})"
        elif self._why == "first_token":
            msg = f"upstream {deployment_id} sent no answer within {self.limit:g}s (first_token timeout)"
        else:
            msg = f"upstream {deployment_id} sent nothing for {self.limit:g}s mid-stream (stream_idle timeout)"
        return UpstreamError(504, msg, kind="timeout", type="timeout_error", code="upstream_timeout", usage=usage,
                             phase=self._why or self.phase)
