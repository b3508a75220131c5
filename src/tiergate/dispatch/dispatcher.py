"""The dispatcher: for one request, choose a deployment, call it through its provider, and retry,
fail over or fall back until an answer exists or nothing more can be tried within the timeouts.

Order of work for `dispatch(model, shape, ...)`:
1. models in order: the requested one, then its `fallbacks`; a `ContextWindowExceeded` from
   `shape(name)` (or an upstream 400 `context_length_exceeded`) inserts `context_window_fallback`
   next; the shaped body is then checked by every deployment's provider that can refuse a request
   outright (`Provider.check`, e.g. Anthropic with `n` > 1); any other `GatewayError` from `shape` or
   a check skips a fallback, and on the requested model ends the request at once, marked
   `before_upstream` (see `refused_before_upstream`): no attempt, no retry, no circuit count, so the
   server records the gateway's own refusal as `rejected`, not as an upstream failure; a fallback the
   caller may not use (`may_use`: the key's model allow-list) is skipped before it is shaped;
2. for each model up to `1 + retry.max_retries` attempts, each on an available deployment not yet tried
   (`balancer.choose` by the model's strategy); once all were tried, the same deployment again after
   the upstream's `Retry-After` (when at most `max_retry_after_s`) or an exponential backoff with jitter,
   unless no deployment will be available by then (its circuit was just opened): then it ends at once;
   a fault of the deployment's own (401/403: its upstream key; a 404 saying it lacks the model) fails
   over to the other deployments and fallback models and counts against its circuit, but that
   deployment is not tried again; other client errors (400/404/422) end the request at once;
3. a streaming attempt is read up to its first content or tool-call chunk before it is handed back, so
   a failure before the first token fails over invisibly; a failure after it ends the stream with
   `UpstreamError(kind="stream_cut")` and is never retried (the client would see two answers).

The happy path (one attempt that succeeds) awaits only the provider; circuit state is local (see
shared.py for the Redis mirror) and no task is created per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from tiergate.accounting.tokens import usage_reported
from tiergate.config import GatewayConfig, ModelConfig
from tiergate.dispatch.balancer import DeploymentState, choose
from tiergate.dispatch.circuit import CLOSED, TIMER_SLACK_S, CircuitBreaker
from tiergate.dispatch.errors import (
    ContextWindowExceeded,
    before_upstream,
    from_upstream,
    is_context_error,
    no_healthy_deployment,
    rate_limited,
)
from tiergate.dispatch.retry import (
    backoff,
    counts_against_circuit,
    deployment_fault,
    fails_over,
    hinted_wait,
    own_timeout,
    too_large,
)
from tiergate.dispatch.watchdog import Watchdog
from tiergate.providers.base import ChatResult, Deployment, Provider, RequestRefused, Timeouts, UpstreamError
from tiergate.providers.registry import provider_class
from tiergate.wire.errors import GatewayError, not_found

__all__ = ["Attempt", "ContextWindowExceeded", "Dispatched", "Dispatcher"]

log = logging.getLogger("tiergate.dispatch")
Shape = Callable[[str], tuple[dict, list[str]]]


@dataclass(slots=True)
class Attempt:
    """One failed upstream attempt (billed as `failed_attempt` with the usage the upstream reported)."""

    deployment_id: str
    model: str
    ok: bool
    error: UpstreamError | None
    latency_s: float
    ttft_s: float | None
    usage: dict | None


@dataclass(slots=True)
class Dispatched:
    model: str  # the configured model that answered (after any fallback)
    deployment: Deployment
    body: dict  # the body as sent upstream (shaped for that model)
    dropped_params: list[str]
    fallback_from: str | None  # the requested model when a fallback answered
    attempts: list[Attempt]  # the failed attempts before the one that answered
    result: ChatResult | None = None  # non-streaming answer
    stream: AsyncIterator[dict] | None = None  # streaming chunks (see module docstring)
    ttft_s: float | None = None


@dataclass(slots=True)
class _Run:
    """What one dispatch() learned while trying (for the final error)."""

    attempts: list[Attempt] = field(default_factory=list)
    last: UpstreamError | None = None
    last_model: str = ""
    last_dep: str = ""
    blocked_circuit: bool = False  # a deployment was skipped: circuit open after failures
    blocked_caps: bool = False  # skipped: at its rpm/tpm cap, or cooling down after an upstream 429
    recover_in: float = math.inf
    last_own: bool = False  # the last failure was a timeout of the request's own stricter limit (see _failed)


class _Model:
    __slots__ = ("chain", "checkers", "config", "deps", "name", "strategy")

    def __init__(self, config: ModelConfig, deps: list[DeploymentState]) -> None:
        self.config = config
        self.name = config.name
        self.deps = tuple(deps)
        self.strategy = config.strategy
        self.chain = (config.name, *config.fallbacks)
        # the providers that may refuse a request before sending it (empty for most models: no cost)
        self.checkers = tuple(st.provider for st in deps if type(st.provider).check is not Provider.check)


class Dispatcher:
    def __init__(self, config: GatewayConfig, session_factory: Any, *, shared_state: Any = None,
                 metrics: Any = None, catalog: Any = None, rng: random.Random | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self._rng = rng or random.Random()
        self._models: dict[str, _Model] = {}
        self.states: list[DeploymentState] = []
        for mc in config.models:
            deps = []
            for d in mc.deployments:
                on_change = None
                if metrics is not None:
                    on_change = _circuit_gauge(metrics, mc.name, d.id)
                    on_change(CLOSED)
                st = DeploymentState(d, provider_class(d.provider)(d, session_factory),
                                     CircuitBreaker(mc.circuit, on_change), _price(d, mc, catalog))
                deps.append(st)
                self.states.append(st)
            self._models[mc.name] = _Model(mc, deps)
        self._own_redis = None
        self.shared = None
        redis = shared_state
        # the `?prefix=` of the `redis:` URL applies to the circuit and rpm/tpm keys too (as to budgets,
        # rate limits and the cache), so fleets sharing one Redis under different prefixes stay apart
        redis_url, prefix = None, "tiergate:"
        if config.redis:
            from tiergate.accounting.service import split_redis_url

            redis_url, prefix = split_redis_url(config.redis)
        if redis is None and redis_url:
            import redis.asyncio as aioredis

            redis = self._own_redis = aioredis.from_url(redis_url, socket_timeout=1.0,
                                                        socket_connect_timeout=1.0)
        if redis is not None:
            from tiergate.dispatch.shared import SharedCircuits

            self.shared = SharedCircuits(redis, self.states, prefix=f"{prefix}cb:")
            try:  # built inside the server's loop (Gateway.start): refresh from now on, so that an idle
                # replica's first /metrics scrape and first request already see the shared state
                asyncio.get_running_loop()
            except RuntimeError:
                pass  # built outside a loop: started by the first request or scrape
            else:
                self.shared.start()
        if metrics is not None:
            metrics.add_collector(self._collect_circuits)

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.stop()
        if self._own_redis is not None:
            await self._own_redis.aclose()
            self._own_redis = None

    def _collect_circuits(self) -> None:
        """Set `tiergate_circuit_state` from every breaker as of now (called by `Metrics.render`): an open
        circuit whose cooldown has ended reads half-open although no request has moved it there yet. With
        Redis, the background refresh runs from the dispatcher's start in the server's loop (a dispatcher built
        outside a loop starts it at its first request or scrape), so a replica that has had no traffic yet
        still reports the state the other replicas share."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and self.shared is not None and not self.shared.started:
            self.shared.start()
        now = loop.time() if loop is not None else time.monotonic()
        metrics = self.metrics
        for m in self._models.values():
            for st in m.deps:
                metrics.circuit_state(m.name, st.id, st.circuit.state_at(now))

    def deployment_states(self, model: str) -> tuple[DeploymentState, ...]:
        m = self._models.get(model)
        return m.deps if m is not None else ()

    # ------------------------------------------------------------------ entry point

    def refusal(self, model: str, shaped: Callable[[], dict[str, Any]], *, stream: bool,
                operation: str = "chat") -> str | None:
        """Why `model`'s deployments would refuse the request (`shaped()` builds its body shaped for the
        model, called only if a provider of the model checks requests) before sending anything (e.g. n=2
        for an Anthropic model), or None: the router's eligibility asks this before choosing a model."""
        cur = self._models.get(model)
        if cur is None or not cur.checkers:
            return None
        try:
            body = shaped()
            for p in cur.checkers:
                p.check(body, stream=stream, operation=operation)
        except GatewayError as e:
            return e.message
        return None

    def chain(self, model: str) -> tuple[str, ...]:
        """Every configured model a request for `model` may be served by, requested model first: its
        `fallbacks`, and the `context_window_fallback` of any of those (and of that one, and so on), as
        `dispatch` may insert them. What a budget reservation prices (the dearest the key may use)."""
        m = self._models.get(model)
        if m is None:
            return (model,)
        out = [n for n in dict.fromkeys(m.chain) if n in self._models]
        i = 0
        while i < len(out):
            cw = self._models[out[i]].config.context_window_fallback
            if cw and cw in self._models and cw not in out:
                out.append(cw)
            i += 1
        return tuple(out)

    async def dispatch(self, model: str, shape: Shape, *, stream: bool, timeouts: Timeouts | None = None,
                       request_id: str, prompt_tokens: int = 0, operation: str = "chat",
                       may_use: Callable[[str], str | None] | None = None) -> Dispatched:
        """`operation` is "chat" (Chat Completions) or "responses" (a provider's native Responses API;
        a stream then yields its events), streaming or not: the same balancing, retries, circuits and
        fallbacks, and a stream fails over until its first answer-bearing chunk or event. `may_use(name)`
        says why the caller may not be served by fallback `name` (the key's model allow-list), or None:
        such a fallback (or context-window fallback) is skipped, never sent anything."""
        if operation not in ("chat", "responses"):
            raise ValueError(f"unsupported dispatch operation {operation!r}")
        run = _Run()
        try:
            return await self._dispatch(model, shape, stream, timeouts, request_id, prompt_tokens, operation, run,
                                        may_use)
        except GatewayError as e:
            e.attempts = run.attempts  # type: ignore[attr-defined]  # the failed attempts, for the ledger
            raise

    async def _dispatch(self, model: str, shape: Shape, stream: bool, timeouts: Timeouts | None, request_id: str,
                        prompt_tokens: int, operation: str, run: _Run,
                        may_use: Callable[[str], str | None] | None = None) -> Dispatched:
        m = self._models.get(model)
        if m is None:
            raise before_upstream(not_found(f"The model '{model}' is not configured on this gateway.",
                                            param="model", code="model_not_found"))
        shared = self.shared
        if shared is not None and not shared.started:
            shared.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        total = (timeouts or m.config.timeouts).total
        deadline = t0 + total if total else math.inf
        order: list[str] | tuple[str, ...] = m.chain
        i = 0
        seen: set[str] = set()
        shape_error: GatewayError | None = None
        context_err: UpstreamError | None = None  # an upstream context error its context_window_fallback follows
        tried_models: list[str] = []
        while i < len(order):
            name = order[i]
            i += 1
            if name in seen:
                continue
            seen.add(name)
            cur = self._models.get(name)
            if cur is None:
                continue
            if name != model and may_use is not None:
                why = may_use(name)
                if why:
                    log.info("fallback %s skipped for request %s: %s", name, request_id, why)
                    continue
            try:
                body, dropped = shape(name)
                for p in cur.checkers:  # a request no deployment of this model could send: refused here
                    p.check(body, stream=stream, operation=operation)
            except GatewayError as e:
                if is_context_error(e):
                    cw = cur.config.context_window_fallback
                    if cw and cw not in seen:
                        order = [*order[:i], cw, *order[i:]]
                    if shape_error is None:
                        shape_error = e
                    continue
                if name == model:
                    raise before_upstream(e) from None
                log.info("fallback %s skipped for request %s: %s", name, request_id, e.message)
                continue
            tried_models.append(name)
            t = timeouts if timeouts is not None else cur.config.timeouts
            out = await self._serve(cur, body, stream, t, deadline, run, request_id, prompt_tokens, loop, operation)
            if out is not None:
                out.dropped_params = sorted({*dropped, *out.dropped_params}) if out.dropped_params else dropped
                out.attempts = run.attempts
                if name != model:
                    out.fallback_from = model
                    if self.metrics is not None:
                        self.metrics.fallback(model, name)
                return out
            err = run.last
            if err is not None and not fails_over(err):
                if is_context_error(err):
                    cw = cur.config.context_window_fallback
                    if cw and cw not in seen:
                        order = [*order[:i], cw, *order[i:]]
                        context_err, run.last = err, None
                        continue
                raise _client_error(err, run.last_model, run.last_dep, len(run.attempts))
            if loop.time() >= deadline:
                break
        if run.last is None and context_err is not None:  # its context_window_fallback was skipped: say why
            run.last = context_err
        if run.last is not None:
            raise _client_error(run.last, run.last_model, run.last_dep, len(run.attempts))
        if shape_error is not None and not tried_models:
            raise before_upstream(shape_error)
        names = tried_models or [model]
        hint = run.recover_in if run.recover_in != math.inf else None
        if run.blocked_caps and not run.blocked_circuit:
            raise rate_limited(names, hint)
        raise no_healthy_deployment(names, hint)

    # ------------------------------------------------------------------ one model

    async def _serve(self, m: _Model, body: dict, stream: bool, t: Timeouts, deadline: float, run: _Run,
                     request_id: str, tokens: int, loop: asyncio.AbstractEventLoop,
                     operation: str = "chat") -> Dispatched | None:
        policy = m.config.retry
        tried: list[DeploymentState] = []
        barred: list[DeploymentState] = []  # failed by a fault of their own (key, model): never again here
        err: UpstreamError | None = None
        for n in range(1 + policy.max_retries):
            now = loop.time()
            st = self._pick(m, now, tried, tokens, run)
            if st is None:
                if err is None or run.last_own:  # the same strict limit would fail the same way again
                    return None
                hint = hinted_wait(err, policy)
                if hint == math.inf:
                    return None
                wait = hint if hint is not None else backoff(n - 1, policy, self._rng)
                if now + wait >= deadline:
                    return None
                # nothing to wait for when no deployment will be available by then (the failure that just
                # happened opened the last circuit, every deployment failed by a fault of its own, ...)
                if self._ready_in(m, now, tokens, barred) > wait + TIMER_SLACK_S:
                    return None
                await asyncio.sleep(wait)
                now = loop.time()
                st = self._pick(m, now, barred, tokens, run)
                if st is None:
                    return None
            if n and self.metrics is not None:
                self.metrics.retry(m.name, st.id)
            if (st.circuit.state != CLOSED and self.shared is not None
                    and not await self.shared.acquire_probe(st, min(t.total or 60.0, 60.0))):
                st.circuit.probe_elsewhere = True
                continue
            out = await self._attempt(m, st, body, stream, t, deadline, run, request_id, tokens, loop, operation)
            if out is not None:
                return out
            err = run.last
            tried.append(st)
            if err is not None and deployment_fault(err):
                barred.append(st)
            if err is None or not fails_over(err) or loop.time() >= deadline:
                return None
        return None

    @staticmethod
    def _ready_in(m: _Model, now: float, tokens: int, barred: list[DeploymentState]) -> float:
        """Seconds until some deployment of `m` not in `barred` may be sent the request (0 when one may now,
        or may at any moment: a half-open one whose probe is in flight); `inf` when none ever will."""
        best = math.inf
        for st in m.deps:
            if st in barred:
                continue
            ready = st.circuit.recovers_in(now)
            if st.capped:
                ready = max(ready, st.caps_free_in(now, tokens))
            best = min(best, ready)
        return best

    def _pick(self, m: _Model, now: float, tried, tokens: int, run: _Run) -> DeploymentState | None:
        deps = m.deps
        if len(deps) == 1:  # the common case, without allocations
            st = deps[0]
            if st in tried:
                return None
            return st if self._usable(st, now, tokens, run) else None
        cands = [st for st in deps if st not in tried and self._usable(st, now, tokens, run)]
        if not cands:
            return None
        return choose(m.strategy, cands, self._rng)

    @staticmethod
    def _usable(st: DeploymentState, now: float, tokens: int, run: _Run) -> bool:
        cb = st.circuit
        if not cb.available(now):
            # open, or half-open with its one probe in flight (then say "about a second" to retry after)
            if cb.rate_limited:  # the upstream's Retry-After opened it, not failures
                run.blocked_caps = True
            else:
                run.blocked_circuit = True
            run.recover_in = min(run.recover_in, cb.recovers_in(now) or 1.0)
            return False
        if st.capped and not st.under_caps(now, tokens):
            run.blocked_caps = True
            run.recover_in = min(run.recover_in, st.caps_free_in(now, tokens))
            return False
        return True

    # ------------------------------------------------------------------ one attempt

    async def _attempt(self, m: _Model, st: DeploymentState, body: dict, stream: bool, t: Timeouts,
                       deadline: float, run: _Run, request_id: str, tokens: int,
                       loop: asyncio.AbstractEventLoop, operation: str = "chat") -> Dispatched | None:
        cb = st.circuit
        cb.begin()
        st.inflight += 1
        start = loop.time()
        if st.capped:
            st.count_request(start, tokens)
        wd = Watchdog(loop, deadline, t.first_token, "first_token")
        it = None
        handed_over = False
        try:
            if not stream:
                wd.wait()
                try:
                    call = st.provider.chat if operation == "chat" else st.provider.responses
                    result = await call(body, t)
                except asyncio.CancelledError:
                    if wd.expired():
                        raise wd.timeout_error(st.id, t.total) from None
                    raise
                finally:
                    wd.stop()
                now = loop.time()
                latency = now - start
                st.observe_ttft(latency)
                if cb.state != CLOSED:
                    await self._closed(st)
                usage = result.body.get("usage")
                if st.tpm is not None and usage:
                    st.count_tokens(now, int(usage.get("completion_tokens") or usage.get("output_tokens") or 0))
                if self.metrics is not None:
                    self.metrics.upstream(m.name, st.id, "ok", latency, latency)
                return Dispatched(m.name, st.dep, body, st.provider.dropped_params(body), None, run.attempts, result=result, ttft_s=latency)
            responses = operation == "responses"
            opened = st.provider.responses_stream if responses else st.provider.chat_stream
            starts_answer = _starts_response if responses else _has_content
            it = opened(body, t).__aiter__()
            buffered: list[dict] = []
            exhausted = False
            while True:
                wd.wait()
                try:
                    chunk = await it.__anext__()
                except StopAsyncIteration:
                    exhausted = True
                    break
                except asyncio.CancelledError:
                    if wd.expired():
                        raise wd.timeout_error(st.id, t.total) from None
                    raise
                if not buffered:
                    wd.set_limit(t.stream_idle, "stream_idle")
                buffered.append(chunk)
                if starts_answer(chunk):
                    break
            wd.idle()
            ttft = loop.time() - start
            st.observe_ttft(ttft)
            if cb.state != CLOSED:
                await self._closed(st)
            handed_over = True
            relay = self._relay(m, st, None if exhausted else it, buffered, wd, t, start, ttft, _Lease(st), responses)
            return Dispatched(m.name, st.dep, body, st.provider.dropped_params(body), None, run.attempts, stream=relay, ttft_s=ttft)
        except UpstreamError as e:
            if too_large(e) and not usage_reported(e.usage):  # generated and billed upstream: bill it here too
                e.usage = _too_large_usage(body, tokens)
            await self._failed(m, st, e, loop.time() - start, request_id, run, t)
            return None
        except RequestRefused as e:  # the provider refused before sending: the gateway's 400, not a failure
            await self._abandon(st)
            raise before_upstream(e) from None
        except asyncio.CancelledError:
            cb.abandon()
            raise
        except Exception as e:  # a provider bug must not escape as a crash: treat it as a failed attempt
            log.exception("provider %s raised an unexpected error (request %s)", st.dep.provider, request_id)
            err = UpstreamError(502, f"upstream {st.id} failed: internal error in provider "
                                f"{st.dep.provider} ({type(e).__name__})", kind="protocol", type="api_error",
                                code="provider_error")
            await self._failed(m, st, err, loop.time() - start, request_id, run, t)
            return None
        finally:
            if not handed_over:
                st.inflight -= 1
                wd.stop()
                if it is not None:
                    await _aclose(it)

    async def _relay(self, m: _Model, st: DeploymentState, it, buffered: list[dict], wd: Watchdog,
                     t: Timeouts, start: float, ttft: float, lease: _Lease,
                     responses: bool = False) -> AsyncIterator[dict]:
        """The stream handed to the caller: the buffered chunks, then the rest under the watchdog.
        `lease` gives the in-flight slot back even if the caller drops the stream without starting it.
        Usage is a chunk's `usage`, or a Responses event's `response.usage`."""
        usage = None
        ok = False
        try:
            for c in buffered:
                u = c.get("usage") or (responses and (c.get("response") or {}).get("usage"))
                if u:
                    usage = u
                yield c
            if it is not None:
                wd.relay(asyncio.current_task())
                anext = it.__anext__
                while True:
                    wd.waiting = True  # lazy watchdog (watchdog.py): two attribute writes per chunk
                    try:
                        chunk = await anext()
                    except StopAsyncIteration:
                        break
                    except asyncio.CancelledError:
                        if wd.expired():
                            raise wd.timeout_error(st.id, t.total, usage) from None
                        raise
                    wd.waiting = False
                    wd.n += 1
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    elif responses and "response" in chunk:
                        usage = (chunk["response"] or {}).get("usage") or usage
                    yield chunk
            ok = True
        except UpstreamError as e:
            loop = asyncio.get_running_loop()
            own = own_timeout(e, t, m.config.timeouts)
            if own:
                _note_own(e, own, t, m.config.timeouts)
                st.circuit.abandon()
            else:
                await self._count_failure(st, e, loop.time())
            if self.metrics is not None:
                self.metrics.upstream(m.name, st.id, "stream_cut", loop.time() - start, ttft)
            log.warning("stream from %s cut after the first token: %s%s", st.id, e.message,
                        f" [{e.detail}]" if e.detail else "")
            raise UpstreamError(e.status if e.status >= 500 else 502, e.message, kind="stream_cut",
                                type=e.type or "api_error", code=e.code or "upstream_stream_cut",
                                usage=e.usage or usage) from None
        finally:
            wd.stop()
            lease.release()
            if ok:
                loop = asyncio.get_running_loop()
                now = loop.time()
                if st.tpm is not None and usage:
                    st.count_tokens(now, int(usage.get("completion_tokens") or usage.get("output_tokens") or 0))
                if self.metrics is not None:
                    self.metrics.upstream(m.name, st.id, "ok", now - start, ttft)
            elif it is not None:
                await _aclose(it)

    # ------------------------------------------------------------------ health bookkeeping

    async def _abandon(self, st: DeploymentState) -> None:
        """A request on `st` ended without a verdict on its health; if it was the half-open probe, the
        probe slot is freed here and, with Redis, the shared probe lock too (other replicas need not wait
        for it to expire)."""
        probing = st.circuit.probing
        st.circuit.abandon()
        if probing and self.shared is not None:
            await self.shared.release_probe(st)

    async def _closed(self, st: DeploymentState) -> None:
        if st.circuit.success() and self.shared is not None:
            await self.shared.success(st)
        log.info("circuit for %s closed after a successful probe", st.id)

    async def _count_failure(self, st: DeploymentState, e: UpstreamError, now: float) -> None:
        cb = st.circuit
        if not counts_against_circuit(e):
            await self._abandon(st)
            return
        if e.status == 429 and e.retry_after:
            cb.trip(now, min(e.retry_after, 3600.0))
            if self.shared is not None:
                await self.shared.trip(st, min(e.retry_after, 3600.0))
            return
        if (self.shared is None or not await self.shared.failure(st, now)) and cb.failure(now):
            log.warning("circuit for %s opened for %ss", st.id, cb.policy.cooldown_s)

    async def _failed(self, m: _Model, st: DeploymentState, e: UpstreamError, latency: float, request_id: str,
                      run: _Run, t: Timeouts | None = None) -> None:
        """Book a failed attempt. A timeout of the request's own limit where it is stricter than the model's
        configured one (`own_timeout`) is the request's doing, not the deployment's: it is not counted
        against the circuit (with Redis: not against any replica's), and the request does not wait to re-try
        a deployment it already timed out on; untried deployments and fallback models are still tried."""
        loop = asyncio.get_running_loop()
        own = own_timeout(e, t, m.config.timeouts) if t is not None else None
        run.last_own = own is not None
        if own:
            _note_own(e, own, t, m.config.timeouts)  # type: ignore[arg-type]
            await self._abandon(st)  # a half-open probe ends without a verdict
        else:
            await self._count_failure(st, e, loop.time())
        run.attempts.append(Attempt(st.id, m.name, False, e, latency, None, e.usage))
        run.last, run.last_model, run.last_dep = e, m.name, st.id
        if self.metrics is not None:
            self.metrics.upstream(m.name, st.id, _outcome(e), latency, None)
        log.warning("request %s: attempt on %s failed (%s %s): %s%s", request_id, st.id, e.status, e.kind, e.message,
                    f" [{e.detail}]" if e.detail else "")


class _Lease:
    """One in-flight slot on a deployment, released exactly once: by the stream's `finally`, or when the
    stream object is garbage-collected without ever being started (its arguments die with it)."""

    __slots__ = ("st",)

    def __init__(self, st: DeploymentState) -> None:
        self.st: DeploymentState | None = st

    def release(self) -> None:
        st = self.st
        if st is not None:
            self.st = None
            st.inflight -= 1

    __del__ = release


def _note_own(e: UpstreamError, phase: str, t: Timeouts, configured: Timeouts) -> None:
    """Say in the client-facing message that the request's own limit fired (and spared the deployment)."""
    theirs = getattr(configured, phase)
    e.message = (f"{e.message}; this request's {phase} limit ({getattr(t, phase):g}s) is stricter than the "
                 f"model's configured {'none' if theirs is None else f'{theirs:g}s'}, so the deployment was not "
                 "marked unhealthy")


#: Output tokens billed for an over-large answer to a request that set no output limit (the gateway's default
#: bound, `server.chat.DEFAULT_MAX_OUTPUT`; a budgeted key's request always carries its limit)
_DEFAULT_OUTPUT_BOUND = 4096


def _too_large_usage(body: dict, prompt_tokens: int) -> dict:
    """The usage billed for an answer the gateway refused as too large (`too_large`): the upstream generated
    it (and bills it) but its report was never read, so the request's prompt and its whole output limit
    (`max_completion_tokens` / `max_tokens` / `max_output_tokens`, times `n`) are taken, marked estimated."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        limit = _DEFAULT_OUTPUT_BOUND
    n = body.get("n")
    out = limit * (n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": out, "total_tokens": prompt_tokens + out,
            "estimated": True}


def _client_error(e: UpstreamError, model: str, deployment_id: str, n_attempts: int) -> GatewayError:
    """The client-facing error for the request's last upstream failure: `from_upstream`, except for
    - an answer too large to accept: a 502 `upstream_answer_too_large` that says the limit and how to ask for
      less (not worth resending: `x-should-retry: false`);
    - a 403 that is not the deployment's fault (`deployment_fault`: e.g. a host's moderation refusing the
      content): the upstream's 403 and its words, naming the deployment, never "check its api_key"."""
    if too_large(e):
        return GatewayError(
            502,
            f"Model '{model}' could not be served: {e.message}. The request was "
            "not resent (it would be answered as large again) and is billed at its output limit; ask for a "
            "smaller answer (lower max_tokens / max_completion_tokens, n or top_logprobs).",
            type="api_error", code=e.code, headers={"x-should-retry": "false"})
    if e.kind == "status" and e.status == 403 and not deployment_fault(e):
        words = e.message or ""
        if "<html" in words.lower() or "<!doctype" in words.lower():  # a proxy's or WAF's page, not an API error
            words = "an HTML page, not an API error (a proxy or firewall in front of the upstream refused it)"
        code = e.code if e.code and not e.code.isdigit() else "upstream_refused"  # OpenRouter sends code 403
        return GatewayError(
            403,
            f"Deployment '{deployment_id}' of model '{model}' refused this request (403): {words}",
            type=e.type or "permission_error", param=e.param, code=code,
            headers={"x-should-retry": "false"})
    return from_upstream(e, model, deployment_id, n_attempts)


def _outcome(e: UpstreamError) -> str:
    if e.kind == "status":
        return f"http_{e.status}"
    return e.kind


# Responses stream events that come before any of the answer: a stream may still fail over after them
_RESPONSE_PREAMBLE = frozenset({"response.created", "response.in_progress", "response.queued",
                                "response.output_item.added", "response.content_part.added"})


def _starts_response(event: dict) -> bool:
    """A Responses event the client would see as the answer starting (text, a call, a refusal, a
    reasoning summary, a finished item or the final event)."""
    return event.get("type") not in _RESPONSE_PREAMBLE


def _has_content(chunk: dict) -> bool:
    """A chunk the client would see as the answer starting: text, a tool call, a refusal, a finish
    reason or the usage chunk (the role-only first delta does not count)."""
    if chunk.get("usage"):
        return True
    for c in chunk.get("choices") or ():
        if c.get("finish_reason"):
            return True
        d = c.get("delta")
        if d:
            for k, v in d.items():
                if v and k != "role":
                    return True
    return False


async def _aclose(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception as e:  # noqa: BLE001 - a broken upstream generator must not mask the real error
            log.debug("closing an upstream stream failed: %r", e)


def _circuit_gauge(metrics: Any, model: str, dep_id: str) -> Callable[[int], None]:
    def on_change(state: int) -> None:
        metrics.circuit_state(model, dep_id, state)

    return on_change


def _price(d: Deployment, mc: ModelConfig, catalog: Any) -> float | None:
    """Blended catalogue price (input + output, USD per 1M tokens) for `lowest_cost`; a deployment's
    `options: {input_price, output_price}` overrides it (same unit)."""
    o = d.options
    if "input_price" in o or "output_price" in o:
        return float(o.get("input_price", 0)) + float(o.get("output_price", 0))
    if catalog is None:
        return None
    info = None
    for name in (d.upstream_model, mc.catalog):
        if name:
            info = catalog.get(name)
            if info is not None:
                break
    if info is None:
        return None
    return float(info.input_price) + float(info.output_price)
