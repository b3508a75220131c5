"""A circuit breaker per deployment: closed -> open after N failures within a window -> half-open
after the cooldown, where exactly one probe request may pass -> closed on its success, open again on
its failure. A 429 with a `Retry-After` opens it for that long (`trip`).

Times are the event loop's monotonic clock. An open breaker counts as over `TIMER_SLACK_S` (5 ms) before
its `open_until`: uvloop rounds timers to whole milliseconds and wakes up to ~1 ms early, so a request that
slept exactly the upstream's `Retry-After` (250.3 ms, or an HTTP date's fraction) used to find the
circuit tripped for that same time still open and lose its retry. Checking a closed breaker is one attribute read, so the
happy path costs nothing. `SharedCircuits` (dispatch/shared.py) mirrors the state into Redis so all
replicas see it; this class stays the local, authoritative-for-this-process cache.
"""

from __future__ import annotations

from collections import deque

from tiergate.config import CircuitPolicy

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
#: How early an open breaker's cooldown may be taken as over (timer rounding; see the module docstring).
TIMER_SLACK_S = 0.005
STATE_NAMES = {CLOSED: "closed", HALF_OPEN: "half_open", OPEN: "open"}


class CircuitBreaker:
    __slots__ = ("_failures", "on_change", "open_until", "policy", "probe_elsewhere", "probing", "rate_limited",
                 "state")

    def __init__(self, policy: CircuitPolicy, on_change=None) -> None:
        self.policy = policy
        self.state = CLOSED
        self.open_until = 0.0
        self.probing = False  # this process holds the half-open probe
        self.probe_elsewhere = False  # another replica holds it (shared mode)
        self.rate_limited = False  # opened by an upstream's Retry-After rather than by failures
        self._failures: deque[float] = deque()
        self.on_change = on_change  # callable(state) for the metrics gauge

    def _set(self, state: int) -> None:
        if state != self.state:
            self.state = state
            if self.on_change is not None:
                self.on_change(state)

    def available(self, now: float) -> bool:
        """May a request go to this deployment now? (Does not take the probe; see `begin`.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if now < self.open_until - TIMER_SLACK_S:
                return False
            self._set(HALF_OPEN)
            self.probing = False
            self.probe_elsewhere = False
        return not (self.probing or self.probe_elsewhere)

    def needs_probe(self) -> bool:
        return self.state != CLOSED

    def begin(self) -> None:
        """A request is about to be sent; in half-open it becomes the probe."""
        if self.state == HALF_OPEN:
            self.probing = True

    def abandon(self) -> None:
        """The probe ended without a verdict (cancelled, or a client error)."""
        self.probing = False

    def success(self) -> bool:
        """Returns True when this closed a half-open (or open) circuit."""
        if self.state == CLOSED:
            return False
        self._failures.clear()
        self.probing = self.probe_elsewhere = False
        self._set(CLOSED)
        return True

    def failure(self, now: float) -> bool:
        """Record one failure; returns True when this opened the circuit."""
        if self.state == HALF_OPEN:
            self.open(now + self.policy.cooldown_s)
            return True
        if self.state == OPEN:
            return False
        f = self._failures
        f.append(now)
        horizon = now - self.policy.window_s
        while f and f[0] < horizon:
            f.popleft()
        if len(f) >= self.policy.failures:
            self.open(now + self.policy.cooldown_s)
            return True
        return False

    def trip(self, now: float, seconds: float) -> None:
        """Open for `seconds` (an upstream asked us to back off), unless already open for longer."""
        until = now + seconds
        if self.state == OPEN and self.open_until >= until:
            return
        self.open(until)
        self.rate_limited = True

    def open(self, until: float) -> None:
        self.open_until = until
        self.rate_limited = False
        self.probing = self.probe_elsewhere = False
        self._failures.clear()
        self._set(OPEN)

    def close(self) -> None:
        self._failures.clear()
        self.probing = self.probe_elsewhere = False
        self._set(CLOSED)

    def state_at(self, now: float) -> int:
        """The state as of `now`, without changing anything: an open breaker whose cooldown has ended is
        half-open (the next request would be let through as the probe), even if no request has come to
        move it there yet. For the metrics gauge at scrape time."""
        if self.state == OPEN and now >= self.open_until - TIMER_SLACK_S:
            return HALF_OPEN
        return self.state

    def recovers_in(self, now: float) -> float:
        """Seconds until a request may be tried again (0 when available)."""
        if self.state == OPEN:
            left = self.open_until - now
            return left if left > TIMER_SLACK_S else 0.0
        return 0.0
