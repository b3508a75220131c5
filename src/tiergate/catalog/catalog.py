"""Load the model catalogue (models.yaml) into frozen `ModelInfo` records and look models up by name.

The catalogue is data: prices, limits, capabilities and parameter rules per model, each with its
source. `Catalog.load()` reads the packaged file, merges an optional user override file on top,
resolves `extends:`, validates everything with errors that name the bad key, and builds the lookup
tables once at start-up. The file format is described in docs/catalog.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

FAMILIES = ("openai", "anthropic", "openai_compatible")
TOKENIZERS = ("o200k_base", "cl100k_base")
OUTPUT_LIMIT_PARAMS = ("max_completion_tokens", "max_tokens", "either")
SYSTEM_ROLE_AS = ("system", "developer", "user-fold")
CAPABILITY_FLAGS = (
    "system_role", "developer_role", "tools", "parallel_tool_calls", "json_schema", "json_object",
    "streaming", "vision",
)
REQUIRED_SOURCES = ("prices", "limits", "capabilities", "params")
# every reasoning_effort value in the current SPEC enum (wire facts §1b); used for unknown models only
ALL_REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
UNKNOWN_CONTEXT_WINDOW = 10_000_000

_TOP_KEYS = {"version", "sources", "models"}
_MODEL_KEYS = {"family", "tokenizer", "aliases", "prices", "limits", "capabilities", "params", "sources",
               "notes", "extends"}
_PRICE_KEYS = {"input", "cached_input", "cache_write", "output", "batch_factor"}
_LIMIT_KEYS = {"context_window", "max_output_tokens"}
_PARAM_KEYS = {"output_limit", "system_role_as", "unsupported", "fixed"}
_NOT_INHERITED = ("aliases", "notes", "extends")
# a dated snapshot suffix: -2024-08-06, -20241022, -0125
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")


class CatalogError(ValueError):
    """The catalogue file is malformed; the message names the file and the key path."""


@dataclass(frozen=True)
class Capabilities:
    """What a model can do. `reasoning_efforts` is empty for models without effort levels."""

    system_role: bool
    developer_role: bool
    tools: bool
    parallel_tool_calls: bool
    json_schema: bool
    json_object: bool
    streaming: bool
    vision: bool
    reasoning_efforts: tuple[str, ...] = ()

    def has(self, capability: str) -> bool:
        """`capability` is a flag name above or "reasoning_effort"."""
        if capability == "reasoning_effort":
            return bool(self.reasoning_efforts)
        return bool(getattr(self, capability, False))


@dataclass(frozen=True)
class ModelInfo:
    """One catalogue entry. Prices are USD per 1M tokens; limits are tokens."""

    name: str
    family: str  # openai | anthropic | openai_compatible
    input_price: float
    cached_input_price: float  # equals input_price where no cached price is listed
    output_price: float
    cache_write_price: float | None  # Anthropic prompt-cache writes; None: billed as input
    context_window: int
    max_output_tokens: int
    capabilities: Capabilities
    output_limit_param: str  # max_completion_tokens | max_tokens | either (pass through as sent)
    system_role_as: str  # system | developer | user-fold
    unsupported_params: frozenset[str]
    fixed_params: dict[str, Any] = field(default_factory=dict, hash=False)  # allowed only at this value
    tokenizer: str = "o200k_base"
    batch_price_factor: float = 1.0
    aliases: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict, hash=False)
    notes: str = ""
    listed: bool = True  # False for `Catalog.unknown`'s stand-in: nothing about the model is known

    @property
    def reasoning(self) -> bool:
        return bool(self.capabilities.reasoning_efforts)


class Catalog:
    """All models by canonical name, with alias and dated-snapshot lookup. Immutable after load."""

    def __init__(self, models: Mapping[str, ModelInfo], source: str = "<catalog>") -> None:
        self._models: dict[str, ModelInfo] = dict(models)
        self.source = source
        self._index: dict[str, ModelInfo] = {}
        for info in self._models.values():
            for key in (info.name, *info.aliases):
                other = self._index.get(key.lower())
                if other is not None and other is not info:
                    raise CatalogError(f"{source}: name {key!r} is used by both {other.name!r} and {info.name!r}")
                self._index[key.lower()] = info

    # -------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: str | Path | None = None, *, base: str | Path | None = None) -> Catalog:
        """The packaged catalogue (or `base`), with the user override file `path` merged on top.

        Override entries are deep-merged into existing ones (a mapping merges key by key, anything
        else replaces); a new name adds a model; `name: null` removes one."""
        base_label = str(base) if base is not None else "tiergate/catalog/models.yaml"
        raw = _read_yaml(base, base_label)
        _check_top(raw, base_label)
        models: dict[str, Any] = dict(raw["models"])
        label = base_label
        if path is not None:
            over_label = str(path)
            over = _read_yaml(path, over_label)
            _check_top(over, over_label)
            _merge_override(models, over["models"], over_label)
            label = f"{base_label} + {over_label}"
        resolved = _resolve_extends(models, label)
        infos = {name: _build(name, entry, label) for name, entry in resolved.items()}
        return cls(infos, source=label)

    # -------------------------------------------------------------- lookups

    def get(self, name: str) -> ModelInfo | None:
        """Canonical name, alias, or a dated snapshot / provider-prefixed form of either."""
        key = name.lower()
        info = self._index.get(key)
        if info is not None:
            return info
        if "/" in key:  # openai/gpt-4o, azure/o3-mini
            info = self._index.get(key.rsplit("/", 1)[1])
            if info is not None:
                return info
            key = key.rsplit("/", 1)[1]
        stripped = _DATE_SUFFIX.sub("", key)
        if stripped != key:
            return self._index.get(stripped)
        return None

    def unknown(self, name: str) -> ModelInfo:
        """A permissive stand-in for a model the catalogue does not list: unpriced (cost 0), no
        context or output limit enforced, every capability assumed and no parameter dropped, so
        requests pass through unchanged. The gateway reports such models as unpriced."""
        return ModelInfo(
            name=name,
            family="openai_compatible",
            input_price=0.0,
            cached_input_price=0.0,
            output_price=0.0,
            cache_write_price=None,
            context_window=UNKNOWN_CONTEXT_WINDOW,
            max_output_tokens=UNKNOWN_CONTEXT_WINDOW,
            capabilities=Capabilities(*(True,) * len(CAPABILITY_FLAGS), reasoning_efforts=ALL_REASONING_EFFORTS),
            output_limit_param="either",
            system_role_as="system",
            unsupported_params=frozenset(),
            fixed_params={},
            tokenizer="o200k_base",
            batch_price_factor=1.0,
            sources={group: "not in the catalogue; add an entry (docs/catalog.md)" for group in REQUIRED_SOURCES},
            notes="Unknown model: unpriced, limits and capabilities not checked.",
            listed=False,
        )

    def __getitem__(self, name: str) -> ModelInfo:
        info = self.get(name)
        if info is None:
            raise KeyError(name)
        return info

    def names(self) -> list[str]:
        """Canonical model names in file order."""
        return list(self._models)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)


# ------------------------------------------------------------------ reading and merging


def _read_yaml(path: str | Path | None, label: str) -> Any:
    try:
        if path is None:
            text = resources.files("tiergate.catalog").joinpath("models.yaml").read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"catalogue file {label} not found") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # a safe loader (C-accelerated when available)
    except yaml.YAMLError as e:
        raise CatalogError(f"{label}: not valid YAML: {e}") from None


def _err(label: str, path: str, msg: str) -> CatalogError:
    return CatalogError(f"{label}: {path}: {msg}")


def _check_top(raw: Any, label: str) -> None:
    if not isinstance(raw, dict):
        raise CatalogError(f"{label}: expected a mapping with a `models:` section")
    extra = sorted(set(raw) - _TOP_KEYS)
    if extra:
        raise _err(label, extra[0], f"unknown top-level key; allowed: {', '.join(sorted(_TOP_KEYS))}")
    if raw.get("version", 1) != 1:
        raise _err(label, "version", f"unsupported catalogue version {raw.get('version')!r}; this tiergate reads 1")
    models = raw.get("models")
    if not isinstance(models, dict):
        raise _err(label, "models", "expected a mapping of model name -> entry")
    for name, entry in models.items():
        if not isinstance(name, str) or not name:
            raise _err(label, f"models.{name!r}", "model names must be non-empty strings")
        if entry is not None and not isinstance(entry, dict):
            raise _err(label, f"models.{name}", f"expected a mapping, got {type(entry).__name__}")


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _merge_override(models: dict[str, Any], over: dict[str, Any], label: str) -> None:
    for name, entry in over.items():
        if entry is None:
            models.pop(name, None)
            continue
        entry = dict(entry)
        # a changed group without its own source is attributed to the override file
        srcs = dict(entry.get("sources") or {})
        for group in ("prices", "limits", "capabilities", "params"):
            if group in entry and group not in srcs:
                srcs[group] = f"override file {label}"
        if srcs:
            entry["sources"] = srcs
        models[name] = _deep_merge(models[name], entry) if name in models else entry


def _resolve_extends(models: dict[str, Any], label: str) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> dict[str, Any]:
        if name in done:
            return done[name]
        entry = models[name]
        parent = entry.get("extends")
        if parent is None:
            done[name] = entry
            return entry
        if not isinstance(parent, str) or parent not in models or models[parent] is None:
            raise _err(label, f"models.{name}.extends", f"{parent!r} is not a model in the catalogue")
        if parent in chain:
            raise _err(label, f"models.{name}.extends", f"cycle: {' -> '.join((*chain, parent))}")
        inherited = {k: v for k, v in resolve(parent, (*chain, parent)).items() if k not in _NOT_INHERITED}
        merged = _deep_merge(inherited, entry)
        done[name] = merged
        return merged

    return {name: resolve(name, (name,)) for name, entry in models.items() if entry is not None}


# ------------------------------------------------------------------ validation


def _group(entry: dict[str, Any], key: str, allowed: set[str] | None, label: str, path: str) -> dict[str, Any]:
    g = entry.get(key)
    if not isinstance(g, dict):
        raise _err(label, f"{path}.{key}", "missing or not a mapping")
    if allowed is not None:
        extra = sorted(set(g) - allowed)
        if extra:
            raise _err(label, f"{path}.{key}.{extra[0]}", f"unknown key; allowed: {', '.join(sorted(allowed))}")
    return g


def _number(g: dict[str, Any], key: str, label: str, path: str, *, optional: bool = False) -> float | None:
    v = g.get(key)
    if v is None and optional:
        return None
    # finite too: `.inf` / `.nan` prices answered with cost "nan" and then wedged the ledger's writes
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
        raise _err(label, f"{path}.{key}", f"expected a finite number >= 0, got {v!r}")
    return float(v)


def _positive_int(g: dict[str, Any], key: str, label: str, path: str) -> int:
    v = g.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise _err(label, f"{path}.{key}", f"expected a whole number of tokens > 0, got {v!r}")
    return v


def _choice(v: Any, allowed: tuple[str, ...], label: str, path: str) -> str:
    if v not in allowed:
        raise _err(label, path, f"expected one of {', '.join(allowed)}, got {v!r}")
    return str(v)


def _str_list(v: Any, label: str, path: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise _err(label, path, f"expected a list of names, got {v!r}")
    return tuple(v)


def _build(name: str, entry: dict[str, Any], label: str) -> ModelInfo:
    path = f"models.{name}"
    extra = sorted(set(entry) - _MODEL_KEYS)
    if extra:
        raise _err(label, f"{path}.{extra[0]}", f"unknown key; allowed: {', '.join(sorted(_MODEL_KEYS))}")
    family = _choice(entry.get("family"), FAMILIES, label, f"{path}.family")
    tokenizer = _choice(entry.get("tokenizer"), TOKENIZERS, label, f"{path}.tokenizer")

    prices = _group(entry, "prices", _PRICE_KEYS, label, path)
    ppath = f"{path}.prices"
    input_price = _number(prices, "input", label, ppath)
    output_price = _number(prices, "output", label, ppath)
    cached = _number(prices, "cached_input", label, ppath, optional=True)
    cache_write = _number(prices, "cache_write", label, ppath, optional=True)
    batch = _number(prices, "batch_factor", label, ppath, optional=True)
    batch = 1.0 if batch is None else batch
    if not 0 < batch <= 1:
        raise _err(label, f"{ppath}.batch_factor", f"expected a factor in (0, 1], got {batch!r}")

    limits = _group(entry, "limits", _LIMIT_KEYS, label, path)
    context_window = _positive_int(limits, "context_window", label, f"{path}.limits")
    max_output = _positive_int(limits, "max_output_tokens", label, f"{path}.limits")

    caps = _group(entry, "capabilities", set(CAPABILITY_FLAGS) | {"reasoning_efforts"}, label, path)
    flags: dict[str, bool] = {}
    for flag in CAPABILITY_FLAGS:
        v = caps.get(flag)
        if not isinstance(v, bool):
            raise _err(label, f"{path}.capabilities.{flag}", f"expected true or false, got {v!r}")
        flags[flag] = v
    efforts = _str_list(caps.get("reasoning_efforts"), label, f"{path}.capabilities.reasoning_efforts")

    params = _group(entry, "params", _PARAM_KEYS, label, path)
    output_limit = _choice(params.get("output_limit"), OUTPUT_LIMIT_PARAMS, label, f"{path}.params.output_limit")
    role_as = _choice(params.get("system_role_as"), SYSTEM_ROLE_AS, label, f"{path}.params.system_role_as")
    unsupported = frozenset(_str_list(params.get("unsupported"), label, f"{path}.params.unsupported"))
    fixed = params.get("fixed") or {}
    if not isinstance(fixed, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str | int | float | bool)) for k, v in fixed.items()
    ):
        raise _err(label, f"{path}.params.fixed", "expected a mapping of parameter -> the only value allowed")
    both = sorted(unsupported & set(fixed))
    if both:
        raise _err(label, f"{path}.params.fixed.{both[0]}",
                   "a parameter is either unsupported (always dropped) or fixed (kept at its value), not both")
    if "reasoning_effort" in unsupported or "max_tokens" in unsupported or "max_completion_tokens" in unsupported:
        raise _err(label, f"{path}.params.unsupported",
                   "reasoning_effort and the output limit are governed by reasoning_efforts and output_limit")
    if role_as == "system" and not flags["system_role"]:
        raise _err(label, f"{path}.params.system_role_as", "`system` needs capabilities.system_role: true")
    if role_as == "developer" and not flags["developer_role"]:
        raise _err(label, f"{path}.params.system_role_as", "`developer` needs capabilities.developer_role: true")

    sources = entry.get("sources")
    if not isinstance(sources, dict) or not all(isinstance(v, str) and v for v in sources.values()):
        raise _err(label, f"{path}.sources", "expected a mapping of figure group -> where it comes from")
    missing = [k for k in REQUIRED_SOURCES if k not in sources]
    if missing:
        raise _err(label, f"{path}.sources.{missing[0]}", "say where these figures come from (source and date)")
    notes = entry.get("notes") or ""
    if not isinstance(notes, str):
        raise _err(label, f"{path}.notes", "expected text")

    return ModelInfo(
        name=name,
        family=family,
        input_price=input_price,  # type: ignore[arg-type]
        cached_input_price=input_price if cached is None else cached,  # type: ignore[arg-type]
        output_price=output_price,  # type: ignore[arg-type]
        cache_write_price=cache_write,
        context_window=context_window,
        max_output_tokens=max_output,
        capabilities=Capabilities(**flags, reasoning_efforts=efforts),
        output_limit_param=output_limit,
        system_role_as=role_as,
        unsupported_params=unsupported,
        fixed_params=dict(fixed),
        tokenizer=tokenizer,
        batch_price_factor=batch,
        aliases=_str_list(entry.get("aliases"), label, f"{path}.aliases"),
        sources={str(k): v for k, v in sources.items()},
        notes=notes.strip(),
    )
