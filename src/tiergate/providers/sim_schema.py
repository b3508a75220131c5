"""Generate a JSON value valid for a JSON Schema, deterministically from a PRNG (used by the `sim` provider
for structured outputs and tool-call arguments).

Covers what Structured Outputs and pydantic schemas use: `type` (also as a list), `properties`/
`required`, `items`/`prefixItems`, `enum`, `const`, `anyOf`/`oneOf`/`allOf`, `$ref` into `$defs`/
`definitions`, string `format`s (date-time, date, time, email, uri, uuid), `minLength`/`maxLength`,
numeric `minimum`/`maximum`/`exclusive*`/`multipleOf`, `minItems`/`maxItems`. Recursive schemas stop
at a fixed depth by choosing the smallest valid value there (no optional properties, empty arrays,
the null branch of a union).
"""

from __future__ import annotations

import math
import random
from typing import Any

MAX_DEPTH = 6
_WORDS = ("alpha", "bravo", "delta", "echo", "lima", "sierra", "tango", "oscar", "kilo", "nova")


def generate(schema: dict[str, Any], rng: random.Random) -> Any:
    return _gen(schema, rng, schema, 0)


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def _gen(schema: Any, rng: random.Random, root: dict[str, Any], depth: int) -> Any:
    if not isinstance(schema, dict):
        return None if schema is False else "x"
    if "$ref" in schema:
        merged = {**_resolve(schema["$ref"], root), **{k: v for k, v in schema.items() if k != "$ref"}}
        return _gen(merged, rng, root, depth)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0] if depth > MAX_DEPTH else rng.choice(schema["enum"])
    if "allOf" in schema:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for sub in schema["allOf"]:
            sub = _resolve(sub["$ref"], root) if isinstance(sub, dict) and "$ref" in sub else sub
            if isinstance(sub, dict):
                props = {**merged.get("properties", {}), **sub.get("properties", {})}
                req = list(dict.fromkeys([*merged.get("required", []), *sub.get("required", [])]))
                merged = {**sub, **merged, "properties": props, "required": req}
        return _gen(merged, rng, root, depth)
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = schema[key]
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            pick = options[0] if depth > MAX_DEPTH or not non_null else non_null[0]
            if depth > MAX_DEPTH and len(non_null) < len(options):
                return None
            return _gen(pick, rng, root, depth)
    t = schema.get("type")
    if isinstance(t, list):
        if depth > MAX_DEPTH and "null" in t:
            return None
        t = next((x for x in t if x != "null"), "null")
    if t is None:
        t = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if t == "object":
        props = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        keys = [k for k in props if k in required] if depth > MAX_DEPTH else list(props)
        return {k: _gen(props[k], rng, root, depth + 1) for k in keys}
    if t == "array":
        prefix = schema.get("prefixItems") or []
        lo = int(schema.get("minItems", 0))
        hi = int(schema.get("maxItems", max(lo, 3)))
        count = lo if depth > MAX_DEPTH else rng.randint(max(lo, min(1, hi)), max(lo, min(hi, 3)))
        items = schema.get("items", {})
        out = [_gen(p, rng, root, depth + 1) for p in prefix[:count]]
        while len(out) < count:
            v = _gen(items, rng, root, depth + 1)
            if schema.get("uniqueItems") and v in out and isinstance(v, (str, int)):
                v = f"{v}-{len(out)}" if isinstance(v, str) else v + len(out)
            out.append(v)
        return out
    if t == "string":
        return _string(schema, rng)
    if t in ("integer", "number"):
        return _number(schema, rng, t == "integer")
    if t == "boolean":
        return rng.random() < 0.5
    return None


def _string(schema: dict[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "date-time":
        return f"2025-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T12:00:00Z"
    if fmt == "date":
        return f"2025-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
    if fmt == "time":
        return f"1{rng.randint(0, 9)}:30:00"
    if fmt == "email":
        return f"{rng.choice(_WORDS)}@example.com"
    if fmt in ("uri", "url", "iri"):
        return f"https://example.com/{rng.choice(_WORDS)}"
    if fmt == "uuid":
        h = rng.randbytes(16).hex()
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"
    text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
    lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
    while len(text) < lo:
        text += " " + rng.choice(_WORDS)
    if hi is not None:
        text = text[: int(hi)]
    return text


def _number(schema: dict[str, Any], rng: random.Random, integer: bool) -> int | float:
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    if isinstance(schema.get("exclusiveMinimum"), (int, float)):
        lo = schema["exclusiveMinimum"] + (1 if integer else 0.01)
    if isinstance(schema.get("exclusiveMaximum"), (int, float)):
        hi = schema["exclusiveMaximum"] - (1 if integer else 0.01)
    lo = 0 if lo is None else lo
    hi = lo + 100 if hi is None else hi
    hi = max(hi, lo)
    step = schema.get("multipleOf")
    if step:
        k_lo, k_hi = -(-lo // step), hi // step
        k = rng.randint(int(k_lo), int(max(k_lo, k_hi)))
        v = k * step
        return int(v) if integer else v
    if integer:
        return rng.randint(math.ceil(lo), max(math.ceil(lo), math.floor(hi)))
    return min(hi, max(lo, round(lo + (hi - lo) * rng.random(), 2)))
