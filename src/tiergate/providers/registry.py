"""Provider registry: a provider module registers its class under its config name. Adding a provider
is one new module plus its name in `_BUILTIN`; nothing else changes."""

from __future__ import annotations

import importlib

from tiergate.providers.base import Provider

_REGISTRY: dict[str, type[Provider]] = {}

# config name -> module that registers it (imported on first use, so unused providers cost nothing)
_BUILTIN = {
    "openai": "tiergate.providers.openai",
    "openai_compatible": "tiergate.providers.openai",
    "azure": "tiergate.providers.azure",
    "anthropic": "tiergate.providers.anthropic",
    "sim": "tiergate.providers.sim",
}


def register(*names: str):
    def deco(cls: type[Provider]) -> type[Provider]:
        for n in names:
            _REGISTRY[n] = cls
        return cls

    return deco


def known_providers() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def provider_class(name: str) -> type[Provider]:
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown provider {name!r}; known: {', '.join(known_providers())}") from None
