"""The Gateway: every stage of the request path, built once at start-up from the config and passed to
the handlers (no module-level singletons). Handlers hold no business logic of their own; they call
the objects held here."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tiergate.catalog.catalog import Catalog, ModelInfo
from tiergate.config import GatewayConfig

if TYPE_CHECKING:
    from tiergate.accounting.service import Accounting
    from tiergate.dispatch.dispatcher import Dispatcher
    from tiergate.routing.router import Router

log = logging.getLogger("tiergate")


def resolve_catalog(config: GatewayConfig, catalog: Catalog) -> tuple[dict[str, ModelInfo], list[str]]:
    """Each configured model's catalogue entry. An explicit `catalog:` that names no entry is a config
    error (a typo would otherwise serve the model unpriced); an implicit one falls back to a permissive,
    unpriced entry (a local model on an OpenAI-compatible host), listed in the second value."""
    from tiergate.config import ConfigError, close_names

    infos: dict[str, ModelInfo] = {}
    unpriced: list[str] = []
    for i, m in enumerate(config.models):
        info = catalog.get(m.catalog)
        if info is None:
            if m.catalog_explicit:
                close = close_names(m.catalog, catalog.names())
                hint = f" Did you mean: {', '.join(close)}?" if close else " See docs/catalog.md for the entries."
                raise ConfigError(f"models[{i}].catalog: {m.catalog!r} is not in the model catalogue.{hint}")
            info = catalog.unknown(m.catalog)
            unpriced.append(m.name)
        most = effective_max_output(info, m)
        infos[m.name] = info if most == info.max_output_tokens else replace(info, max_output_tokens=most)
    for i, cand in enumerate(config.routing.candidates):  # efforts checked against the catalogue entry
        model, _, effort = cand.partition("@")
        levels = tuple(infos[model].capabilities.reasoning_efforts or ()) if model in infos else ()
        if effort and model in infos and model not in unpriced and effort not in levels:
            why = (f"{model} takes no reasoning effort; write it without '@{effort}'" if not levels else
                   f"{model} has no reasoning effort {effort!r} (efforts: {', '.join(levels)})")
            raise ConfigError(f"routing.candidates[{i}]: {cand!r}: {why}.")
    return infos, unpriced


def deployment_max_output(info: ModelInfo, m: Any, d: Any) -> int:
    """The most output tokens deployment `d` of configured model `m` may be asked for: its
    `options.max_output_tokens` when set; else, for an Anthropic deployment whose headers carry the
    `output-128k-2025-02-19` beta and whose model Anthropic lets write 128,000 tokens with it (claude-3-7-sonnet,
    as `providers.anthropic.max_output_tokens` decides), at least 128,000; else the catalogue entry's."""
    set_by_operator = (d.options or {}).get("max_output_tokens")
    if isinstance(set_by_operator, int) and not isinstance(set_by_operator, bool) and set_by_operator > 0:
        return set_by_operator
    if d.provider == "anthropic" and any(k.lower() == "anthropic-beta" for k, _ in d.headers):
        from tiergate.providers.anthropic import max_output_tokens

        upstream = d.upstream_model or m.catalog
        with_beta = max_output_tokens(upstream, info.name, headers=d.headers)
        without = max_output_tokens(upstream, info.name)
        if with_beta is not None and without is not None and with_beta > without:  # the beta header raised it
            return max(info.max_output_tokens, with_beta)
    return info.max_output_tokens


def effective_max_output(info: ModelInfo, m: Any) -> int:
    """The configured model's maximum output tokens, which the gateway's output-limit check, its default
    output bound and the budget reservation use: the smallest over its deployments of
    `deployment_max_output` (so whichever deployment serves a request can serve what was admitted). The
    catalogue's figure unless a deployment says otherwise (`options.max_output_tokens`, the 128k beta)."""
    return min((deployment_max_output(info, m, d) for d in m.deployments), default=info.max_output_tokens)


class StartupError(RuntimeError):
    """A backend the gateway needs cannot be used. The message is one line for the operator (what, where,
    why, what to check; never a password): `tiergate serve` prints it as `tiergate: <message>` and exits
    non-zero, without a traceback."""


def _redis_reason(e: BaseException) -> str:
    import errno

    text = str(e)
    low = text.lower()
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    if "refused" in low or any(isinstance(x, OSError) and x.errno == errno.ECONNREFUSED for x in chain) or (
            "connect call failed" in low and "error 111" in low):
        return "connection refused"
    if "name or service not known" in low or "nodename nor servname" in low or "name resolution" in low:
        return "unknown host"
    if "timeout" in low or "timed out" in low:
        return "no answer in time"
    if "auth" in low or "password" in low or "noperm" in low:
        return "authentication failed"
    return text or type(e).__name__


def _redis_address(url: str) -> str:
    from urllib.parse import urlsplit

    from tiergate.accounting.service import split_redis_url

    parts = urlsplit(split_redis_url(url)[0])
    try:
        port = parts.port or 6379
    except ValueError:
        port = "?"
    db = parts.path.strip("/")
    return f"{parts.hostname or 'localhost'}:{port}" + (f" (db {db})" if db and db != "0" else "")


def startup_error(config: GatewayConfig, e: BaseException) -> StartupError | None:
    """The one-line StartupError for a failure of `Accounting.start` (storage or Redis), or None when it
    is something else (a bug: let its traceback show)."""
    from tiergate.store import StorageError

    if isinstance(e, StorageError):
        return StartupError(f"storage error: {e}: check storage: in the config")
    if config.redis and isinstance(e, (RuntimeError, ValueError)) and (
            str(e).startswith("redis:") or "Redis URL" in str(e)):
        # Accounting.start's `redis: cannot reach …` keeps the client's exception as its context
        cause = e.__context__ if e.__context__ is not None and str(e).startswith("redis:") else e
        return StartupError(f"redis error: cannot connect to Redis at {_redis_address(config.redis)} "
                            f"({_redis_reason(cause)}): check redis: in the config")
    return None


async def check_key_pepper(accounting: Accounting) -> None:
    """A gateway with a master key (so with virtual keys) checks its `TIERGATE_KEY_PEPPER` against the
    fingerprint the database holds (recording it on first start): a replica with another pepper would
    refuse every key as incorrect, so it refuses to start instead (`StartupError`). An open gateway uses
    no keys and checks nothing."""
    from tiergate.accounting.keys import PepperMismatch

    if accounting.is_open:
        return
    try:
        recorded = await accounting.keys.check_pepper()
    except PepperMismatch as e:
        raise StartupError(f"key pepper error: {e}") from None
    if recorded:
        n = await accounting.store.fetchone("SELECT COUNT(*) AS n FROM api_keys")
        if n and n["n"]:
            log.warning("recorded this replica's API-key pepper fingerprint for the %d keys already in the database "
                        "(they cannot be checked against it); from now on a replica with another "
                        "TIERGATE_KEY_PEPPER refuses to start", n["n"])


def warn_serving_setup(accounting: Accounting) -> None:
    """Start-up warnings about how this gateway will serve (a new empty SQLite database; an open gateway; budgets shared through
    PostgreSQL without Redis). Said by the server, not by `Accounting.start`, so read-only users of the
    store (`tiergate spend --storage`) do not see them."""
    if getattr(accounting.store, "created", False):  # first start, or the file was removed: keys live there
        log.warning("created a new, empty SQLite database at %s (no keys, no spend yet); if this gateway had "
                    "keys before, its database file was moved or removed: check `storage:` in the config and "
                    "the working directory", getattr(accounting.store, "path", "?"))
    if accounting.is_open:
        log.warning("no master key (TIERGATE_MASTER_KEY): the gateway is open, /v1 needs no API key and "
                    "no budgets or rate limits apply; the /admin API (tiergate keys|spend --url) is off until a "
                    "master key is set (tiergate keys|spend --storage URL work on the database directly)")
    from tiergate.accounting.service import DEFAULT_PEPPER

    if not accounting.is_open and accounting.store.dialect == "postgresql" and accounting.keys.pepper == DEFAULT_PEPPER:
        log.warning("TIERGATE_KEY_PEPPER is not set: API keys are hashed with the built-in default pepper. With a "
                    "shared PostgreSQL storage set your own secret, the same on every replica (a replica with "
                    "another pepper refuses to start; see docs/accounting.md)")
    if accounting.redis is None and accounting.store.dialect == "postgresql":
        log.warning("storage is PostgreSQL but no `redis:` is configured: budgets are shared through "
                    "PostgreSQL, rate limits and the cache are per replica")


@dataclass
class Gateway:
    config: GatewayConfig
    catalog: Catalog
    infos: dict[str, ModelInfo]  # configured (client-facing) model name -> its catalogue entry
    accounting: Accounting
    dispatcher: Dispatcher
    session_factory: Any
    metrics: Any = None
    router: Router | None = None
    unpriced: list[str] = field(default_factory=list)  # configured models without a catalogue entry
    extras: dict[str, Any] = field(default_factory=dict)  # per-feature state (batch runner, …)

    @classmethod
    async def start(cls, config: GatewayConfig) -> Gateway:
        from tiergate.accounting.service import Accounting
        from tiergate.dispatch.dispatcher import Dispatcher
        from tiergate.metrics import Metrics
        from tiergate.providers.http import SharedSession

        catalog = config.load_catalog()
        infos, unpriced = resolve_catalog(config, catalog)
        if unpriced:
            log.warning("models not in the catalogue are served UNPRICED (cost 0, budgets do not decrease) with "
                        "permissive capabilities: %s. Add `catalog: <entry>` to price them (docs/catalog.md).",
                        ", ".join(unpriced))
        from tiergate.accounting.tokens import get_encoding

        for tokenizer in {i.tokenizer for i in infos.values()}:
            get_encoding(tokenizer)  # build vocabularies now, not on the first request (~0.2 s each)
        try:
            accounting = await Accounting.start(config)
        except Exception as e:
            err = startup_error(config, e)
            if err is None:
                raise
            raise err from e
        try:
            await check_key_pepper(accounting)
        except BaseException:
            await accounting.close()
            raise
        warn_serving_setup(accounting)
        session_factory = SharedSession()
        metrics = Metrics()
        dispatcher = Dispatcher(
            config,
            session_factory,
            shared_state=getattr(accounting, "redis", None),
            metrics=metrics,
            catalog=catalog,
        )
        router = None
        if config.routing.candidates:
            try:
                from tiergate.routing.router import Router

                router = Router.load(config.routing.router_dir, catalog=catalog, profiles=config.routing.profiles)
            except Exception as e:  # noqa: BLE001 - explicit models still serve; `auto` says why not
                log.error("the router could not be loaded (%s); requests for model 'auto' will be refused. "
                          "Train one with `tiergate router train --out DIR` and set routing.router_dir.", e)
        gw = cls(
            config=config,
            catalog=catalog,
            infos=infos,
            accounting=accounting,
            dispatcher=dispatcher,
            session_factory=session_factory,
            metrics=metrics,
            router=router,
            unpriced=unpriced,
        )
        return gw

    async def close(self) -> None:
        """Close every backend once (a second call does nothing)."""
        if self.extras.get("closed"):
            return
        self.extras["closed"] = True
        for closer in (self.dispatcher.close, self.accounting.close, self.session_factory.close):
            try:
                await closer()
            except Exception:  # shutdown must go on
                log.exception("error during shutdown")
