"""Prometheus metrics for `GET /metrics`: a small in-process registry (counters, gauges, histograms
with label values as tuples) rendered in the text exposition format 0.0.4.

Why not `prometheus_client`: it is not installed by default, takes a lock per update and its label
lookup costs ~1 µs; this registry is a dict update per observation and has no import cost beyond the
standard library. One `Metrics` object is built at start-up and passed to the dispatcher and server.

What is recorded, and by whom:
- dispatcher: `tiergate_upstream_attempts_total{model,deployment,outcome}`, `tiergate_errors_total
  {model,deployment,type}`, `tiergate_retries_total`, `tiergate_fallbacks_total{from_model,to_model}`,
  `tiergate_circuit_state{model,deployment}` (0 closed, 1 half-open, 2 open; computed from the breakers
  when /metrics is rendered, through a collector the dispatcher registers, so it is never stale),
  `tiergate_upstream_latency_seconds` and `tiergate_upstream_ttft_seconds{model,deployment}`;
- server (`observe_request(row)` with each ledger row): `tiergate_requests_total{model,deployment,status}`,
  `tiergate_request_duration_seconds`, `tiergate_ttft_seconds{model,deployment}`,
  `tiergate_tokens_total{model,deployment,kind}` (billed tokens: `cache_hit` rows add none),
  `tiergate_cost_usd_total{model,deployment}`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


_INF = 'le="+Inf"'
# token kind -> ledger row fields (accounting.pricing.usage_breakdown names first, Chat Completions names second)
_TOKEN_FIELDS = (("prompt", ("input_tokens", "prompt_tokens")), ("completion", ("output_tokens", "completion_tokens")),
                 ("cached", ("cached_tokens", "")), ("reasoning", ("reasoning_tokens", "")))


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _labels(names: tuple[str, ...], values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_esc(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Counter:
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...]) -> None:
        self.name, self.help, self.labelnames = name, help, labels
        self.values: dict[tuple, float] = {}

    def inc(self, labels: tuple, amount: float = 1.0) -> None:
        v = self.values
        v[labels] = v.get(labels, 0.0) + amount

    def get(self, labels: tuple) -> float:
        return self.values.get(labels, 0.0)

    def lines(self) -> Iterable[str]:
        for k, v in self.values.items():
            yield f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}"


class Gauge(Counter):
    kind = "gauge"

    def set(self, labels: tuple, value: float) -> None:
        self.values[labels] = value


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: tuple[str, ...], buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.name, self.help, self.labelnames, self.buckets = name, help, labels, buckets
        self.values: dict[tuple, list[float]] = {}  # per-bucket counts (+Inf last), then sum

    def observe(self, labels: tuple, value: float) -> None:
        row = self.values.get(labels)
        if row is None:
            row = self.values[labels] = [0.0] * (len(self.buckets) + 2)
        row[bisect_left(self.buckets, value)] += 1
        row[-1] += value

    def count(self, labels: tuple) -> float:
        row = self.values.get(labels)
        return sum(row[:-1]) if row else 0.0

    def lines(self) -> Iterable[str]:
        for k, row in self.values.items():
            acc = 0.0
            for b, c in zip(self.buckets, row):
                acc += c
                le = 'le="' + _fmt(b) + '"'
                yield f"{self.name}_bucket{_labels(self.labelnames, k, le)} {_fmt(acc)}"
            acc += row[-2]
            yield f"{self.name}_bucket{_labels(self.labelnames, k, _INF)} {_fmt(acc)}"
            yield f"{self.name}_sum{_labels(self.labelnames, k)} {_fmt(row[-1])}"
            yield f"{self.name}_count{_labels(self.labelnames, k)} {_fmt(acc)}"


class Metrics:
    """The gateway's metrics. Methods take plain values; `render()` returns the exposition text."""

    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        md = ("model", "deployment")
        self.requests = Counter("tiergate_requests_total", "Requests answered, by served model, deployment and "
                                "ledger status (ok, error, failed_attempt, cache_hit, client_disconnected, escalated, "
                                "rejected; internal_error, storage_unavailable, redis_unavailable with model and "
                                "deployment \"-\" for answers made outside the request handlers).",
                                (*md, "status"))
        self.request_duration = Histogram("tiergate_request_duration_seconds",
                                          "End-to-end request latency seen by the gateway.", md)
        self.ttft = Histogram("tiergate_ttft_seconds", "Time to first token of answered requests.", md)
        self.tokens = Counter("tiergate_tokens_total", "Tokens billed, by kind (prompt, completion; cached and "
                              "reasoning are parts of prompt and completion). Response-cache hits are not "
                              "billed and not counted.",
                              (*md, "kind"))
        self.cost = Counter("tiergate_cost_usd_total", "Cost billed in USD.", md)
        self.attempts = Counter("tiergate_upstream_attempts_total", "Upstream attempts by outcome (ok, http_<status>, "
                                "timeout, connect, protocol, stream_cut).", (*md, "outcome"))
        self.errors = Counter("tiergate_errors_total", "Upstream errors by type.", (*md, "type"))
        self.retries = Counter("tiergate_retries_total", "Attempts that were retries of a failed attempt.", md)
        self.fallbacks = Counter("tiergate_fallbacks_total", "Requests answered by a fallback model.",
                                 ("from_model", "to_model"))
        self.circuit = Gauge("tiergate_circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", md)
        self.upstream_latency = Histogram("tiergate_upstream_latency_seconds",
                                          "Latency of each upstream attempt (whole stream for streams).", md)
        self.upstream_ttft = Histogram("tiergate_upstream_ttft_seconds",
                                       "Upstream time to first content chunk (to the answer when not streaming).", md)
        self._all = (self.requests, self.request_duration, self.ttft, self.tokens, self.cost, self.attempts,
                     self.errors, self.retries, self.fallbacks, self.circuit, self.upstream_latency,
                     self.upstream_ttft)
        self._collectors: list[Callable[[], None]] = []

    def add_collector(self, fn: Callable[[], None]) -> None:
        """`fn()` runs at the start of every `render()` to set gauges that must reflect the state at scrape
        time (e.g. circuit breakers whose cooldown ended while no request came)."""
        self._collectors.append(fn)

    # ------------------------------------------------------------ dispatcher

    def upstream(self, model: str, deployment: str, outcome: str, latency_s: float, ttft_s: float | None) -> None:
        k = (model, deployment)
        self.attempts.inc((model, deployment, outcome))
        self.upstream_latency.observe(k, latency_s)
        if outcome == "ok":
            if ttft_s is not None:
                self.upstream_ttft.observe(k, ttft_s)
        else:
            self.errors.inc((model, deployment, outcome))

    def retry(self, model: str, deployment: str) -> None:
        self.retries.inc((model, deployment))

    def fallback(self, from_model: str, to_model: str) -> None:
        self.fallbacks.inc((from_model, to_model))

    def circuit_state(self, model: str, deployment: str, state: int) -> None:
        self.circuit.set((model, deployment), float(state))

    # ------------------------------------------------------------ server

    def observe_request(self, row: Mapping[str, Any]) -> None:
        """One ledger row (see server/chat.py `_record`): status, served model, deployment, usage, cost."""
        model = row.get("served_model") or row.get("requested_model") or "-"
        dep = row.get("deployment") or "-"
        k = (model, dep)
        status = str(row.get("status") or "unknown")
        self.requests.inc((model, dep, status))
        if status == "failed_attempt":
            return
        lat = row.get("latency_ms")
        if lat is not None:
            self.request_duration.observe(k, lat / 1000.0)
        ttft = row.get("ttft_ms")
        if ttft and status == "ok":
            self.ttft.observe(k, ttft / 1000.0)
        if status != "cache_hit":  # a hit's row carries the cached answer's usage, but nothing was billed
            for kind, keys in _TOKEN_FIELDS:
                n = row.get(keys[0]) or row.get(keys[1])
                if n:
                    self.tokens.inc((model, dep, kind), float(n))
        cost = row.get("cost_usd")
        if cost:
            self.cost.inc(k, float(cost))

    def gateway_error(self, status: str) -> None:
        """An answer made outside the request handlers (an internal error: the 500; a database or Redis that
        is down: the 503), which writes no ledger row: counted under model and deployment `-`."""
        self.requests.inc(("-", "-", status))

    # ------------------------------------------------------------ exposition

    def render(self) -> bytes:
        for fn in self._collectors:
            fn()
        out: list[str] = []
        for m in self._all:
            out.append(f"# HELP {m.name} {m.help}")
            out.append(f"# TYPE {m.name} {m.kind}")
            out.extend(m.lines())
        return ("\n".join(out) + "\n").encode()
