"""Per-deployment live state and the load-balancing strategies that choose among deployments.

`DeploymentState` holds what the dispatcher learns about one deployment: requests in flight, an EWMA of
time to first token, its blended price, its circuit breaker and its rpm/tpm windows. `pick` chooses a
deployment for one attempt from those that are available (circuit allows it, under its caps, not
already tried by this request) using the model's strategy:

- `weighted_random`: proportional to `weight`;
- `least_inflight`: fewest requests in flight (ties: weighted random);
- `lowest_latency`: lowest TTFT EWMA; deployments never measured are tried first, those within 10% of
  the best are shared at random so one fast deployment is not stampeded;
- `lowest_cost`: lowest catalogue price (input + output per token); ties by weight.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from tiergate.dispatch.circuit import CircuitBreaker
from tiergate.providers.base import Deployment, Provider

EWMA_ALPHA = 0.3
_WINDOW = 60.0


class RateWindow:
    """Requests or tokens in the last minute, as a sliding window over two fixed one-minute buckets
    (the previous bucket counts in proportion to how much of it is still inside the window).

    With Redis, `remote` is what the other replicas used in the window at the last sync and `unsynced`
    what this replica added since (pushed by `SharedCircuits.refresh`), so a cap holds across replicas,
    give or take one refresh interval of traffic."""

    __slots__ = ("cur", "limit", "own", "prev", "remote", "start", "unsynced")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.start = 0.0
        self.cur = 0.0
        self.prev = 0.0
        self.remote = 0.0
        self.unsynced = 0.0
        self.own: dict[int, float] = {}  # wall-clock minute -> what this replica pushed (shared mode)

    def _roll(self, now: float) -> None:
        age = now - self.start
        if age >= _WINDOW:
            self.prev = self.cur if age < 2 * _WINDOW else 0.0
            self.cur = 0.0
            self.start = now - (age % _WINDOW) if age < 2 * _WINDOW else now

    def level(self, now: float) -> float:
        self._roll(now)
        return self.prev * (1.0 - (now - self.start) / _WINDOW) + self.cur + self.remote

    def fits(self, now: float, n: float) -> bool:
        lvl = self.level(now)
        return lvl + n <= self.limit or lvl == 0

    def add(self, now: float, n: float) -> None:
        self._roll(now)
        self.cur += n
        self.unsynced += n

    def free_in(self, now: float, n: float) -> float:
        """Rough seconds until `n` more fits (for a Retry-After hint)."""
        over = self.level(now) + n - self.limit
        if over <= 0:
            return 0.0
        return min(_WINDOW, max(1.0, over / max(self.limit, 1) * _WINDOW))


class DeploymentState:
    __slots__ = (
        "capped",
        "circuit",
        "dep",
        "ewma_ttft",
        "id",
        "inflight",
        "model",
        "price",
        "provider",
        "rpm",
        "tpm",
        "weight",
    )

    def __init__(self, dep: Deployment, provider: Provider, circuit: CircuitBreaker, price: float | None) -> None:
        self.dep = dep
        self.id = dep.id
        self.model = dep.model
        self.provider = provider
        self.weight = dep.weight
        self.inflight = 0
        self.ewma_ttft: float | None = None
        self.price = price  # USD per (input + output) token; None when unknown
        self.circuit = circuit
        self.rpm = RateWindow(dep.rpm) if dep.rpm else None
        self.tpm = RateWindow(dep.tpm) if dep.tpm else None
        self.capped = self.rpm is not None or self.tpm is not None

    def under_caps(self, now: float, tokens: int) -> bool:
        if self.rpm is not None and not self.rpm.fits(now, 1):
            return False
        return self.tpm is None or self.tpm.fits(now, tokens)

    def caps_free_in(self, now: float, tokens: int) -> float:
        w = 0.0
        if self.rpm is not None:
            w = max(w, self.rpm.free_in(now, 1))
        if self.tpm is not None:
            w = max(w, self.tpm.free_in(now, tokens))
        return w

    def count_request(self, now: float, tokens: int) -> None:
        if self.rpm is not None:
            self.rpm.add(now, 1)
        if self.tpm is not None and tokens:
            self.tpm.add(now, tokens)

    def count_tokens(self, now: float, tokens: int) -> None:
        if self.tpm is not None and tokens:
            self.tpm.add(now, tokens)

    def observe_ttft(self, seconds: float) -> None:
        e = self.ewma_ttft
        self.ewma_ttft = seconds if e is None else e + EWMA_ALPHA * (seconds - e)

    def snapshot(self) -> dict[str, Any]:
        return {"id": self.id, "inflight": self.inflight, "ewma_ttft_s": self.ewma_ttft, "price": self.price,
                "circuit": self.circuit.state}


def _weighted(cands: Sequence[DeploymentState], rnd: random.Random) -> DeploymentState:
    if len(cands) == 1:
        return cands[0]
    total = 0.0
    for c in cands:
        total += c.weight
    r = rnd.random() * total
    for c in cands:
        r -= c.weight
        if r < 0:
            return c
    return cands[-1]


def choose(strategy: str, cands: Sequence[DeploymentState], rnd: random.Random) -> DeploymentState:
    """Pick one of the (non-empty) available candidates by `strategy`."""
    if len(cands) == 1:
        return cands[0]
    if strategy == "least_inflight":
        low = min(c.inflight for c in cands)
        return _weighted([c for c in cands if c.inflight == low], rnd)
    if strategy == "lowest_latency":
        unmeasured = [c for c in cands if c.ewma_ttft is None]
        if unmeasured:
            return _weighted(unmeasured, rnd)
        best = min(c.ewma_ttft for c in cands)  # type: ignore[type-var]
        return _weighted([c for c in cands if c.ewma_ttft <= best * 1.1 + 1e-4], rnd)  # type: ignore[operator]
    if strategy == "lowest_cost":
        priced = [c for c in cands if c.price is not None]
        if priced:
            best = min(c.price for c in priced)  # type: ignore[type-var]
            return _weighted([c for c in priced if c.price <= best * (1 + 1e-9)], rnd)  # type: ignore[operator]
        return _weighted(cands, rnd)
    return _weighted(cands, rnd)
