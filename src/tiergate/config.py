"""The gateway's configuration: a YAML file parsed into frozen dataclasses and validated at start-up.

Every error names the bad key by its path (`models[1].deployments[0].provider`) and says how to fix
it. Secrets are referenced (`api_key: env:NAME`) and resolved here; their values never appear in
errors, logs or reprs. The embedded default (no file) serves a few catalogue models from the `sim`
provider, or from OpenAI when OPENAI_API_KEY is set.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tiergate.providers.base import Deployment, Secret, Timeouts
from tiergate.providers.registry import known_providers

STRATEGIES = ("weighted_random", "least_inflight", "lowest_latency", "lowest_cost")


class ConfigError(ValueError):
    """A problem in the config file, phrased for the person who wrote it; `path` is the key's path
    (`models[0].retry.max_retries`) when the problem is one key's."""

    path: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2  # extra attempts after the first, across deployments
    backoff_base_s: float = 0.25
    backoff_max_s: float = 8.0
    max_retry_after_s: float = 30.0  # a Retry-After longer than this is not waited for on this deployment


@dataclass(frozen=True)
class CircuitPolicy:
    failures: int = 5  # open after this many failures ...
    window_s: float = 30.0  # ... within this window
    cooldown_s: float = 30.0  # stay open this long, then let one probe through (half-open)


@dataclass(frozen=True)
class ModelConfig:
    name: str  # the name clients send
    catalog: str  # the catalogue entry that prices and describes it (default: name)
    deployments: tuple[Deployment, ...]
    catalog_explicit: bool = False  # `catalog:` was written in the config (so it must exist)
    strategy: str = "weighted_random"
    fallbacks: tuple[str, ...] = ()  # other configured model names, in order
    context_window_fallback: str | None = None  # a larger-window configured model
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    circuit: CircuitPolicy = field(default_factory=CircuitPolicy)


@dataclass(frozen=True)
class RoutingConfig:
    candidates: tuple[str, ...] = ()  # "model" or "model@effort"
    default_policy: str = "balanced"
    router_dir: str | None = None  # trained router artefacts (default: the one in the package)
    policies: dict[str, float] = field(default_factory=dict)  # policy name -> quality target override
    escalate: bool = True
    profiles: str | None = None  # a YAML file of quality profiles overriding the packaged ones (routing-model.md)


@dataclass(frozen=True)
class GatewayConfig:
    models: tuple[ModelConfig, ...]
    storage: str = "sqlite:///./tiergate.db"
    redis: str | None = None
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    master_key: Secret | None = None
    source: str = "<embedded defaults>"
    extra: dict[str, Any] = field(default_factory=dict)  # top-level sections owned by other packages
    catalog_file: str | None = None  # a catalogue override file merged on the packaged one (docs/catalog.md)

    def load_catalog(self) -> Any:
        """The model catalogue this gateway prices and checks with: the packaged one, with `catalog_file`
        merged on top when set."""
        from tiergate.catalog.catalog import Catalog

        return Catalog.load(self.catalog_file)

    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None


# ---------------------------------------------------------------- parsing helpers


def _err(path: str, msg: str) -> ConfigError:
    e = ConfigError(f"{path}: {msg}")
    e.path = path
    return e


def _expect(value: Any, typ: type | tuple[type, ...], path: str, what: str) -> Any:
    if not isinstance(value, typ):
        raise _err(path, f"expected {what}, got {type(value).__name__} {value!r:.60}")
    return value


def close_names(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known names closest to a mistyped `name` (at most `n`, best first), for "did you mean"
    hints: `catalog:` entries at start-up, key model allow-lists in the admin API."""
    import difflib

    known = list(dict.fromkeys(known))
    by_lower = {k.lower(): k for k in known}
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[f] for f in found]


def _unknown_keys(d: dict, allowed: set[str], path: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise _err(
            f"{path}.{extra[0]}" if path else extra[0],
            f"unknown key. Allowed here: {', '.join(sorted(allowed))}",
        )


def resolve_secret(ref: Any, path: str, env: dict[str, str]) -> Secret:
    """`env:NAME` -> the value of $NAME. Literal keys are refused so they never sit in a file."""
    field = path.rsplit(".", 1)[-1]
    example = "master_key: env:TIERGATE_MASTER_KEY" if field == "master_key" else f"{field}: env:OPENAI_API_KEY"
    _expect(ref, str, path, f"a reference like env:{example.split('env:')[1]}")
    if not ref.startswith("env:") or len(ref) <= 4:
        raise _err(
            path,
            f"write secrets as a reference, e.g. `{example}`, and export that "
            "variable; literal keys are not accepted in the config file",
        )
    name = ref[4:]
    value = env.get(name)
    if not value:
        raise _err(path, f"environment variable {name} is not set (export {name}=... before starting)")
    return Secret(ref=ref, value=value)


def _number(d: dict, key: str, path: str, default: Any, *, lo: float, hi: float, lo_open: bool = False,
            integer: bool = False, unit: str = "", nullable: bool = False) -> Any:
    """`d[key]` checked against its allowed range (`lo` < or <= value <= `hi`), else `default`. Booleans,
    strings, NaN and infinities are refused; the error names the key path and the range."""
    if key not in d:
        return default
    v = d[key]
    if v is None and nullable:
        return None
    kind = "an integer" if integer else "a number"
    rng = f"{'>' if lo_open else '>='} {_num_text(lo)} and <= {_num_text(hi)}"
    what = f"{kind} {rng}{unit}" + (" (or null for no limit)" if nullable else "")
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or math.isnan(v) or (v <= lo if lo_open else v < lo) or v > hi:
        raise _err(f"{path}.{key}", f"expected {what}, got {v!r:.60}")
    return int(v) if integer else float(v)


def _num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


MAX_TIMEOUT_S = 86_400.0  # a day: longer is a unit mistake (milliseconds written as seconds)


def parse_timeouts(d: Any, path: str, base: Timeouts | None = None) -> Timeouts:
    """`connect` / `first_token` / `stream_idle` / `total`: seconds > 0 (at most a day), or null for no
    limit. 0 is refused: it would mean "time out at once" to some phases and "no limit" to others."""
    base = base or Timeouts()
    if d is None:
        return base
    _expect(d, dict, path, "a mapping of connect / first_token / stream_idle / total seconds")
    _unknown_keys(d, {"connect", "first_token", "stream_idle", "total"}, path)

    def t(key: str) -> float | None:
        return _number(d, key, path, getattr(base, key), lo=0, hi=MAX_TIMEOUT_S, lo_open=True,
                       unit=" seconds", nullable=True)

    return Timeouts(connect=t("connect"), first_token=t("first_token"), stream_idle=t("stream_idle"),
                    total=t("total"))


def _parse_retry(d: Any, path: str) -> RetryPolicy:
    _expect(d, dict, path, "a mapping")
    _unknown_keys(d, {"max_retries", "backoff_base_s", "backoff_max_s", "max_retry_after_s"}, path)
    r = RetryPolicy()
    base = _number(d, "backoff_base_s", path, r.backoff_base_s, lo=0, hi=60, unit=" seconds")
    policy = RetryPolicy(
        max_retries=_number(d, "max_retries", path, r.max_retries, lo=0, hi=10, integer=True),
        backoff_base_s=base,
        backoff_max_s=_number(d, "backoff_max_s", path, max(r.backoff_max_s, base), lo=0, hi=300, unit=" seconds"),
        max_retry_after_s=_number(d, "max_retry_after_s", path, r.max_retry_after_s, lo=0, hi=3600, unit=" seconds"),
    )
    if policy.backoff_max_s < policy.backoff_base_s:
        raise _err(f"{path}.backoff_max_s", f"expected a number >= backoff_base_s ({policy.backoff_base_s:g}), "
                   f"got {policy.backoff_max_s:g}")
    return policy


def _parse_circuit(d: Any, path: str) -> CircuitPolicy:
    _expect(d, dict, path, "a mapping")
    _unknown_keys(d, {"failures", "window_s", "cooldown_s"}, path)
    c = CircuitPolicy()
    return CircuitPolicy(
        failures=_number(d, "failures", path, c.failures, lo=1, hi=1_000_000, integer=True),
        window_s=_number(d, "window_s", path, c.window_s, lo=0, hi=MAX_TIMEOUT_S, lo_open=True, unit=" seconds"),
        cooldown_s=_number(d, "cooldown_s", path, c.cooldown_s, lo=0, hi=MAX_TIMEOUT_S, lo_open=True, unit=" seconds"),
    )


# Query parameters that carry credentials (API keys, SAS signatures, Azure Functions codes, tokens).
_CREDENTIAL_PARAMS = frozenset({
    "key", "api_key", "api-key", "apikey", "x-api-key", "token", "access_token", "auth", "sig", "signature",
    "code", "secret", "client_secret", "password",
})


_CREDENTIAL_WORDS = ("key", "token", "secret", "password", "signature", "auth")  # also inside names (x-goog-api-key)
_KEY_SHAPED = re.compile(r"^(sk|sk-ant|sk-proj|tg|AIza)[-_A-Za-z0-9]{16,}$")


def _credential_query_param(url: str) -> str | None:
    """Where `url` carries a credential: the name of a query parameter that does, `#fragment` (never sent,
    so anything there was pasted by mistake), or `path` for a key-shaped path segment; None when clean."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        low = name.strip().lower()
        if low in _CREDENTIAL_PARAMS or any(w in low for w in _CREDENTIAL_WORDS):
            return name
    if parts.fragment:
        return "#fragment"
    if any(_KEY_SHAPED.match(seg) for seg in parts.path.split("/")):
        return "path"
    return None


# ---------------------------------------------------------------- deployments[].options
# Every option a provider (src/tiergate/providers/*.py) or the dispatcher (dispatch/dispatcher.py) reads
# from `Deployment.options`, with its allowed values; docs/providers.md "Deployment options" is this table
# in words. An option not listed for the deployment's provider is an error, so a typo cannot pass
# silently; providers registered outside this package (tests, plugins) get the common options checked
# and the rest passed through.


@dataclass(frozen=True)
class _Option:
    kind: str  # number | integer | bool | choice | string | statuses | seed
    lo: float = 0.0
    hi: float = math.inf
    choices: tuple[str, ...] = ()  # for `choice`; empty = computed by `_option_choices`
    unit: str = ""


_COMMON_OPTIONS: dict[str, _Option] = {  # dispatch/dispatcher.py `_price` (strategy lowest_cost)
    "input_price": _Option("number", 0, 1e6, unit=" USD per 1M tokens"),
    "output_price": _Option("number", 0, 1e6, unit=" USD per 1M tokens"),
}

PROVIDER_OPTIONS: dict[str, dict[str, _Option]] = {
    "openai": {},
    "openai_compatible": {
        # server/responses.py `_native_ok`: a compatible host's own /responses endpoint (most have none)
        "responses_api": _Option("bool"),
    },
    "azure": {
        "auth": _Option("choice", choices=("api-key", "bearer")),
        "responses_api_version": _Option("string"),
    },
    "anthropic": {
        "max_output_tokens": _Option("integer", 1, 10_000_000, unit=" tokens"),
    },
    "sim": {
        "latency_ms": _Option("number", 0, MAX_TIMEOUT_S * 1000, unit=" milliseconds"),
        "tokens_per_s": _Option("number", 0, 1e9),
        "completion_tokens": _Option("integer", 1, 1_000_000),
        "reasoning_tokens": _Option("integer", 0, 1_000_000),
        "reasoning": _Option("bool"),
        "failure_rate": _Option("number", 0, 1),
        "fail_status": _Option("statuses", 400, 599),
        "retry_after_s": _Option("number", 0, 3600, unit=" seconds"),
        "seed": _Option("seed"),
        "tokenizer": _Option("choice"),
        "chunk_tokens": _Option("integer", 1, 100_000),
    },
}


def _option_choices(provider: str, name: str, opt: _Option) -> tuple[str, ...]:
    if opt.choices:
        return opt.choices
    if (provider, name) == ("sim", "tokenizer"):
        from tiergate.accounting.tokens import _ENCODINGS

        return tuple(_ENCODINGS)
    return ()


def _check_options(options: dict[Any, Any], provider: str, path: str) -> dict[str, Any]:
    """`deployments[].options` checked against the provider's table: unknown names, wrong types and values
    out of range stop the start-up with the option's path (they used to pass, then fail every request or
    the start-up with a traceback, or be ignored: `auth: bearr` sent api-key auth)."""
    known_table = PROVIDER_OPTIONS.get(provider)
    table = {**_COMMON_OPTIONS, **(known_table or {})}
    out: dict[str, Any] = {}
    for name, value in options.items():
        opath = f"{path}.{name}"
        opt = table.get(name) if isinstance(name, str) else None
        if opt is None:
            if known_table is None:  # a provider registered elsewhere reads its own options
                out[str(name)] = value
                continue
            close = close_names(str(name), table)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise _err(opath, f"unknown option for provider {provider}.{hint} Known options for {provider}: "
                       f"{', '.join(sorted(table))} (docs/providers.md)")
        out[name] = _check_option(value, opt, _option_choices(provider, name, opt), opath)
    return out


def _check_option(v: Any, opt: _Option, choices: tuple[str, ...], path: str) -> Any:
    if opt.kind in ("number", "integer"):
        ok_type = isinstance(v, int) if opt.kind == "integer" else isinstance(v, int | float)
        if isinstance(v, bool) or not ok_type or math.isnan(v) or not opt.lo <= v <= opt.hi:
            kind = "an integer" if opt.kind == "integer" else "a number"
            raise _err(path, f"expected {kind} >= {_num_text(opt.lo)} and <= {_num_text(opt.hi)}{opt.unit}, "
                       f"got {v!r:.60}")
        return v
    if opt.kind == "bool":
        if not isinstance(v, bool):
            raise _err(path, f"expected true or false, got {v!r:.60}")
        return v
    if opt.kind == "choice":
        if not isinstance(v, str) or v not in choices:
            raise _err(path, f"expected one of {', '.join(choices)}, got {v!r:.60}")
        return v
    if opt.kind == "string":
        import datetime

        if isinstance(v, datetime.date):  # YAML reads an unquoted 2025-04-01 as a date
            return v.isoformat()
        if not isinstance(v, str) or not v.strip():
            raise _err(path, f"expected a non-empty string, got {v!r:.60}")
        return v
    if opt.kind == "seed":
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise _err(path, f"expected a string or an integer, got {v!r:.60}")
        return v
    # statuses: one HTTP error status or a non-empty list of them
    items = list(v) if isinstance(v, list | tuple) else [v]
    lo, hi = int(opt.lo), int(opt.hi)
    if not items or any(isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi for x in items):
        raise _err(path, f"expected an HTTP status {lo}-{hi} or a non-empty list of them, got {v!r:.60}")
    return v


_DEPLOYMENT_KEYS = {
    "id", "provider", "api_base", "api_key", "model", "deployment", "api_version", "weight", "rpm",
    "tpm", "headers", "options",
}
_NEEDS_BASE = {"openai_compatible", "azure"}


def _parse_deployment(d: Any, path: str, model_name: str, index: int, env: dict[str, str]) -> Deployment:
    _expect(d, dict, path, "a mapping with at least `provider`")
    _unknown_keys(d, _DEPLOYMENT_KEYS, path)
    provider = d.get("provider")
    if provider is None:
        raise _err(f"{path}.provider", f"missing. Choose one of: {', '.join(known_providers())}")
    if provider not in known_providers():
        raise _err(f"{path}.provider", f"unknown provider {provider!r}. Choose one of: {', '.join(known_providers())}")
    api_base = d.get("api_base")
    if api_base is not None:
        _expect(api_base, str, f"{path}.api_base", "a URL such as https://api.openai.com/v1")
        if "@" in api_base.split("//", 1)[-1].split("/", 1)[0]:
            raise _err(f"{path}.api_base", "credentials in the URL are not allowed; use api_key: env:NAME")
        secret_param = _credential_query_param(api_base)
        if secret_param is not None:  # where only: the value is a secret
            where = secret_param if secret_param in ("#fragment", "path") else f"query parameter {secret_param!r}"
            raise _err(f"{path}.api_base", f"credentials in the URL are not allowed ({where}); use api_key: "
                       "env:NAME, or headers for a non-secret header")
    if provider in _NEEDS_BASE and not api_base:
        raise _err(f"{path}.api_base", f"required for provider {provider}")
    if provider == "azure" and not d.get("deployment") and not api_base.rstrip("/").endswith("/openai/v1"):
        raise _err(f"{path}.deployment", "required for provider azure (the Azure deployment name), "
                   "unless api_base ends with /openai/v1")
    api_key = None
    if d.get("api_key") is not None:
        api_key = resolve_secret(d["api_key"], f"{path}.api_key", env)
    elif provider in ("openai", "azure", "anthropic"):
        raise _err(f"{path}.api_key", f"required for provider {provider}, e.g. api_key: env:"
                   f"{ {'openai': 'OPENAI_API_KEY', 'azure': 'AZURE_OPENAI_API_KEY', 'anthropic': 'ANTHROPIC_API_KEY'}[provider] }")
    weight = _number(d, "weight", path, 1.0, lo=0, hi=1e6, lo_open=True)
    for k in ("rpm", "tpm"):
        _number(d, k, path, None, lo=1, hi=1e12, integer=True, nullable=True)
    headers = d.get("headers") or {}
    _expect(headers, dict, f"{path}.headers", "a mapping of header name to value")
    options = d.get("options") or {}
    _expect(options, dict, f"{path}.options", "a mapping of option name to value (docs/providers.md)")
    options = _check_options(options, provider, f"{path}.options")
    dep_id = d.get("id") or f"{model_name}/{index}"
    _expect(dep_id, str, f"{path}.id", "a string")
    return Deployment(
        id=dep_id,
        model=model_name,
        provider=provider,
        api_base=api_base.rstrip("/") if api_base else None,
        api_key=api_key,
        upstream_model=d.get("model"),
        deployment=d.get("deployment"),
        api_version=str(d["api_version"]) if d.get("api_version") is not None else None,
        weight=float(weight),
        rpm=d.get("rpm"),
        tpm=d.get("tpm"),
        headers=tuple((str(k), str(v)) for k, v in headers.items()),
        options=options,
    )


_MODEL_KEYS = {
    "name", "catalog", "deployments", "strategy", "fallbacks", "context_window_fallback", "timeouts",
    "retry", "circuit",
}


def _parse_model(d: Any, path: str, env: dict[str, str]) -> ModelConfig:
    _expect(d, dict, path, "a mapping with `name` and `deployments`")
    _unknown_keys(d, _MODEL_KEYS, path)
    name = d.get("name")
    if not name or not isinstance(name, str):
        raise _err(f"{path}.name", "missing: the model name clients send, e.g. `name: gpt-4o-mini`")
    if name == "auto" or name.startswith("auto:"):
        raise _err(f"{path}.name", "`auto` and `auto:*` are reserved for the router; pick another name")
    deps = d.get("deployments")
    if not deps:
        raise _err(f"{path}.deployments", "at least one deployment is needed, e.g. `- provider: sim`")
    _expect(deps, list, f"{path}.deployments", "a list")
    strategy = d.get("strategy", "weighted_random")
    if strategy not in STRATEGIES:
        raise _err(f"{path}.strategy", f"unknown strategy {strategy!r}. Choose one of: {', '.join(STRATEGIES)}")
    fallbacks = d.get("fallbacks") or []
    _expect(fallbacks, list, f"{path}.fallbacks", "a list of configured model names")
    retry = _parse_retry(d.get("retry") or {}, f"{path}.retry")
    circuit = _parse_circuit(d.get("circuit") or {}, f"{path}.circuit")
    return ModelConfig(
        name=name,
        catalog=str(d.get("catalog") or name),
        catalog_explicit=d.get("catalog") is not None,
        deployments=tuple(
            _parse_deployment(x, f"{path}.deployments[{i}]", name, i, env) for i, x in enumerate(deps)
        ),
        strategy=strategy,
        fallbacks=tuple(str(x) for x in fallbacks),
        context_window_fallback=d.get("context_window_fallback"),
        timeouts=parse_timeouts(d.get("timeouts"), f"{path}.timeouts"),
        retry=retry,
        circuit=circuit,
    )


_TOP_KEYS = {"models", "storage", "redis", "routing", "master_key", "cache", "batches", "responses",
             "catalog_file"}
_CACHE_KEYS = {"enabled": bool, "ttl_s": float, "max_entries": int, "max_bytes": int, "shared_across_keys": bool}


def _check_cache(d: Any) -> None:
    """`cache:` (accounting.md "Response cache"): known keys with values of the right type, checked at load
    (unknown keys were ignored and `enabled: maybe` counted as on)."""
    if d is None:
        return
    _expect(d, dict, "cache", "a mapping such as {enabled: true, ttl_s: 3600, max_entries: 10000, "
            "max_bytes: 67108864, shared_across_keys: false}")
    _unknown_keys(d, set(_CACHE_KEYS), "cache")
    for k, kind in _CACHE_KEYS.items():
        if k not in d:
            continue
        v = d[k]
        if kind is bool and not isinstance(v, bool):
            raise _err(f"cache.{k}", f"expected true or false, got {v!r}")
        if kind is not bool and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf
                                 or (kind is int and not isinstance(v, int))):
            raise _err(f"cache.{k}", f"expected a positive {'integer' if kind is int else 'number'}, got {v!r}")


def _check_batches(d: Any) -> None:
    """`batches:` (batches.md "Settings"): known keys, each of its default's type and positive (counts may be
    0 where 0 means none), checked at load (a typo used to pass and then fail the start-up with a
    traceback)."""
    if d is None:
        return
    import dataclasses

    from tiergate.batches.runner import BatchSettings

    _expect(d, dict, "batches", "a mapping such as {concurrency: 4}")
    fields = {f.name: f.default for f in dataclasses.fields(BatchSettings)}
    _unknown_keys(d, set(fields), "batches")
    for k, v in d.items():
        default = fields[k]
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise _err(f"batches.{k}", f"expected true or false, got {v!r}")
        elif isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(default, int) and not isinstance(v, int)):
            raise _err(f"batches.{k}", f"expected {'an integer' if isinstance(default, int) else 'a number'}, got {v!r}")
        elif not v < math.inf:
            raise _err(f"batches.{k}", f"expected a finite number, got {v!r}")
        elif v < 0 or (v == 0 and k != "rate_limit_retries"):
            raise _err(f"batches.{k}", f"expected a value {'>= 0' if k == 'rate_limit_retries' else '> 0'}, got {v!r}")
RESPONSES_RETENTION_DAYS = 30.0  # stored /v1/responses objects, as OpenAI keeps them by default


def responses_retention_s(d: Any) -> float | None:
    """`responses.retention_days` in seconds: default 30 days, `null` = keep until deleted; a ConfigError
    naming the key for anything but a positive number or null."""
    if d is None:
        return RESPONSES_RETENTION_DAYS * 86400
    _expect(d, dict, "responses", "a mapping such as {retention_days: 30}")
    _unknown_keys(d, {"retention_days"}, "responses")
    if "retention_days" not in d:
        return RESPONSES_RETENTION_DAYS * 86400
    v = d["retention_days"]
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 36500:
        raise _err("responses.retention_days", f"expected a number of days > 0 and <= 36500, or null to keep "
                   f"stored responses until deleted; got {v!r}")
    return float(v) * 86400


def parse_config(raw: Any, *, source: str = "<config>", env: dict[str, str] | None = None) -> GatewayConfig:
    env = dict(os.environ) if env is None else env
    if raw is None:
        raw = {}
    _expect(raw, dict, "(top level)", "a mapping with a `models:` list")
    _unknown_keys(raw, _TOP_KEYS, "")
    models_raw = raw.get("models")
    if not models_raw:
        raise _err("models", "at least one model is needed (see docs/configuration.md)")
    _expect(models_raw, list, "models", "a list")
    models = tuple(_parse_model(m, f"models[{i}]", env) for i, m in enumerate(models_raw))
    names = [m.name for m in models]
    for i, n in enumerate(names):
        if names.index(n) != i:
            raise _err(f"models[{i}].name", f"duplicate model name {n!r}")
    for i, m in enumerate(models):
        for j, fb in enumerate(m.fallbacks):
            if fb not in names:
                raise _err(f"models[{i}].fallbacks[{j}]", f"{fb!r} is not a configured model ({', '.join(names)})")
        if m.context_window_fallback and m.context_window_fallback not in names:
            raise _err(f"models[{i}].context_window_fallback", f"{m.context_window_fallback!r} is not a configured model")
    storage = raw.get("storage", "sqlite:///./tiergate.db")
    _expect(storage, str, "storage", "a URL: sqlite:///path.db or postgresql://user@host/db")
    if not storage.startswith(("sqlite://", "postgresql://", "postgres://")):
        raise _err("storage", f"unsupported URL {storage.split('://')[0]!r}; use sqlite:///./tiergate.db or postgresql://…")
    redis_url = raw.get("redis")
    if redis_url is not None:
        _expect(redis_url, str, "redis", "a URL such as redis://127.0.0.1:6379/0")
    routing = _parse_routing(raw.get("routing"), names)
    master = None
    if raw.get("master_key") is not None:
        master = resolve_secret(raw["master_key"], "master_key", env)
    elif env.get("TIERGATE_MASTER_KEY"):
        master = Secret(ref="env:TIERGATE_MASTER_KEY", value=env["TIERGATE_MASTER_KEY"])
    responses_retention_s(raw.get("responses"))  # validated now; read by server/responses.py
    _check_cache(raw.get("cache"))  # read by accounting/service.py
    _check_batches(raw.get("batches"))  # read by batches/runner.py
    extra = {k: raw[k] for k in ("cache", "batches", "responses") if k in raw}
    catalog_file = _catalog_file(raw.get("catalog_file"))
    return GatewayConfig(models=models, storage=storage, redis=redis_url, routing=routing,
                         master_key=master, source=source, extra=extra, catalog_file=catalog_file)


def _checked_file(value: Any, key: str, what: str, load: Any, errors: tuple[type[BaseException], ...]) -> str | None:
    """An optional path setting whose file is loaded now (`load(path)`), so that a missing or malformed file
    stops the start-up with an error naming `key` (the loader's own message names the file and entry)."""
    if value is None:
        return None
    _expect(value, str, key, f"the path of {what}")
    try:
        load(value)
    except OSError as e:
        raise _err(key, f"cannot read {value!r}: {e.strerror or e}") from None
    except errors as e:
        raise _err(key, str(e)) from None  # the loaders' messages name the file and the entry
    return value


def _catalog_file(value: Any) -> str | None:
    """`catalog_file`: a catalogue override file (prices of your contract, fine-tuned models)."""
    from tiergate.catalog.catalog import Catalog, CatalogError

    return _checked_file(value, "catalog_file", "a catalogue override YAML file (docs/catalog.md)", Catalog.load,
                         (CatalogError,))


def _parse_routing(d: Any, names: list[str]) -> RoutingConfig:
    if d is None:
        return RoutingConfig()
    _expect(d, dict, "routing", "a mapping with `candidates:`")
    _unknown_keys(d, {"candidates", "default_policy", "router_dir", "policies", "escalate", "profiles"}, "routing")
    cands = d.get("candidates") or []
    _expect(cands, list, "routing.candidates", "a list like [o3-mini@low, gpt-4o-mini]")
    for i, c in enumerate(cands):
        _expect(c, str, f"routing.candidates[{i}]", "`model` or `model@effort`")
        model, _, effort = c.partition("@")
        if model not in names:
            raise _err(f"routing.candidates[{i}]", f"{model!r} is not a configured model ({', '.join(names)})")
        if "@" in c and not effort:
            raise _err(f"routing.candidates[{i}]", f"empty effort after '@' in {c!r}; write {model!r} alone "
                       f"(its default effort) or {model}@low|medium|high")
        if effort and effort not in ("minimal", "low", "medium", "high"):
            raise _err(f"routing.candidates[{i}]", f"unknown effort {effort!r}; use minimal, low, medium or high")
    policies = d.get("policies") or {}
    _expect(policies, dict, "routing.policies", "a mapping of policy name to quality target in (0, 1]")
    for name, target in policies.items():
        if not isinstance(name, str) or not name or ":" in name:
            raise _err("routing.policies", f"policy name {name!r} must be a plain word such as `fast`")
        if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1:
            raise _err(f"routing.policies.{name}", f"quality target {target!r} must be a number in (0, 1]")
    default_policy = d.get("default_policy", "balanced")
    known = {"cost", "balanced", "quality", *policies}
    if default_policy not in known:
        raise _err("routing.default_policy", f"{default_policy!r} is not a policy; use one of "
                   f"{', '.join(sorted(map(str, known)))}")
    escalate = d.get("escalate", True)
    _expect(escalate, bool, "routing.escalate", "true or false")
    return RoutingConfig(
        candidates=tuple(cands),
        default_policy=str(default_policy),
        router_dir=_router_dir(d.get("router_dir")),
        policies={str(k): float(v) for k, v in policies.items()},
        escalate=escalate,
        profiles=_profiles_path(d.get("profiles")),
    )


def _router_dir(value: Any) -> str | None:
    """`routing.router_dir`: a directory written by `tiergate router train` (checked now, as `profiles` is:
    a missing one used to start the gateway and refuse every `auto` request)."""
    if value is None:
        return None
    _expect(value, str, "routing.router_dir", "the path of a directory written by `tiergate router train --out DIR`")
    if not (Path(value) / "quality.json").is_file():
        raise _err("routing.router_dir", f"{value!r} is not a trained router directory (no quality.json in it): "
                   "train one with `tiergate router train --outcomes FILE... --out DIR`, or remove the key to use "
                   "the packaged router")
    return value


def _profiles_path(value: Any) -> str | None:
    """`routing.profiles`: a quality-profile YAML file overriding the packaged one (shape and sources checked)."""
    from tiergate.routing.profiles import ProfileError, Profiles

    return _checked_file(value, "routing.profiles", "a profiles YAML file (docs/routing-model.md)", Profiles.load,
                         (ProfileError, ValueError, yaml.YAMLError))


def load_config(path: str | Path | None, env: dict[str, str] | None = None) -> GatewayConfig:
    """Read a YAML file, or build the embedded defaults when `path` is None."""
    env = dict(os.environ) if env is None else env
    if path is None:
        return parse_config(default_config_dict(env), source="<embedded defaults>", env=env)
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} not found (pass --config FILE, or omit it for the embedded defaults)")
    if p.is_dir():
        raise ConfigError(f"config file {p} is a directory: pass the YAML config file itself")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not a UTF-8 text file (undecodable byte at offset {e.start}): "
                          "pass the YAML config file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error_text(str(p), e)) from None
    return parse_config(raw, source=str(p), env=env)


def yaml_error_text(name: str, e: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: the file, line and column (1-based) and PyYAML's problem, not its
    multi-line dump quoting `<unicode string>`: `gw.yaml, line 4, column 1: not valid YAML: expected ',' or
    ']', but got '<scalar>' (while parsing a flow sequence started at line 3, column 18)`."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f"{name}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else name
    context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    extra = ""
    if context:
        extra = f" ({context}" + (f" started at line {cmark.line + 1}, column {cmark.column + 1}"
                                  if cmark is not None and (mark is None or cmark.line != mark.line
                                                            or cmark.column != mark.column) else "") + ")"
    return f"{where}: not valid YAML: {problem}{extra}"


DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "o3-mini", "o1", "o1-mini", "o4-mini", "gpt-4.1-nano")


def default_config_dict(env: dict[str, str]) -> dict[str, Any]:
    """Embedded defaults: the OpenAI API when OPENAI_API_KEY is set, else the labelled simulator."""
    if env.get("OPENAI_API_KEY"):
        dep = {"provider": "openai", "api_base": "https://api.openai.com/v1", "api_key": "env:OPENAI_API_KEY"}
    else:
        dep = {"provider": "sim"}
    return {
        "models": [{"name": m, "deployments": [dict(dep)]} for m in DEFAULT_MODELS],
        "storage": env.get("TIERGATE_STORAGE", "sqlite:///./tiergate.db"),
        "routing": {"candidates": ["gpt-4o-mini", "o3-mini@low", "o3-mini@medium", "o3-mini@high", "o1@high"]},
    }
