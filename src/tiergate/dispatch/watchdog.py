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
        "_task",
        "_wait_start",
        "_waiting",
        "_why",
        "deadline",
        "limit",
        "phase",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float, limit: float | None, phase: str) -> None:
        self._loop = loop
        self.deadline = deadline
        self.limit = math.inf if limit is None else limit
        self.phase = phase  # first_token | stream_idle
        self._handle: asyncio.TimerHandle | None = None
        self._waiting = False
        self._wait_start = 0.0
        self._task: asyncio.Task | None = None
        self._expired = False
        self._cancelling = 0
        self._why = ""

    def wait(self) -> None:
        now = self._loop.time()
        self._wait_start = now
        self._waiting = True
        self._task = asyncio.current_task()
        if self._handle is None:
            due = min(now + self.limit, self.deadline)
            if due != math.inf:
                self._handle = self._loop.call_at(due, self._fire)

    def idle(self) -> None:
        self._waiting = False

    def set_limit(self, limit: float | None, phase: str) -> None:
        new = math.inf if limit is None else limit
        if new < self.limit and self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.limit = new
        self.phase = phase

    def _fire(self) -> None:
        self._handle = None
        if not self._waiting or self._task is None:
            return  # re-armed at the next wait()
        now = self._loop.time()
        due = min(self._wait_start + self.limit, self.deadline)
        if now < due:
            self._handle = self._loop.call_at(due, self._fire)
            return
        self._why = "total" if now >= self.deadline else self.phase
        self._expired = True
        self._cancelling = self._task.cancelling()
        self._task.cancel()

    def expired(self) -> bool:
        """After a CancelledError: True when it was this watchdog's doing (and swallows that cancel)."""
        if not self._expired:
            return False
        self._expired = False
        self._waiting = False
        return self._task is not None and self._task.uncancel() <= self._cancelling

    def stop(self) -> None:
        self._waiting = False
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
        return UpstreamError(504, msg, kind="timeout", type="timeout_error", code="upstream_timeout", usage=usage)
