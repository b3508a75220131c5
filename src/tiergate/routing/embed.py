"""Static prompt embedding for the router: MiniLM distilled into a per-token table (model2vec-style).

The table (vocabulary x dims, int8 with one scale per token) and MiniLM's WordPiece `tokenizer.json`
ship in `routing/artifacts/`; `scripts/router_model_distill.py` builds them from the int8 ONNX
all-MiniLM-L6-v2. Embedding a prompt is one tokenizer call and one mean over table rows, so it costs
well under a millisecond for a 1,000-token prompt and needs neither torch nor an ONNX session.
"""

from __future__ import annotations

import hashlib
from collections import ChainMap
from collections.abc import Mapping
from pathlib import Path

import numpy as np

#: Prompts longer than this many WordPiece tokens are embedded from their head and tail only.
MAX_TOKENS = 2048
#: Words whose WordPiece split is remembered per tokenizer (bounds its memory: ~100 bytes a word).
WORD_CACHE_SIZE = 200_000


class WordPieceIds:
    """MiniLM WordPiece ids of texts, with the split of each whitespace-separated chunk remembered and the
    last text's ids kept: the router's embedders (the main table and the kNN head's, `routing.neighbours`)
    share one instance per tokenizer (`word_piece_ids`), so one decision tokenises its prompt once."""

    def __init__(self, tokenizer_path: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_path))
        self._tok.no_truncation()
        self._tok.no_padding()
        self.words: dict[str, bytes] = {}  # word -> its ids as int32 bytes
        self._last: tuple[str, np.ndarray] = ("", np.zeros(0, np.intp))

    def __call__(self, text: str) -> list[int]:
        """The ids of `text` (lower-cased, no special tokens), as a list; see `array`."""
        return self.array(text).tolist()

    def array(self, text: str) -> np.ndarray:
        """The ids of `text` (lower-cased, no special tokens) as an int array (not to be modified).

        Same ids as the tokenizer on the whole text (BERT splits on whitespace first, then on
        punctuation, then WordPiece), but each distinct whitespace-separated chunk is tokenised once
        and remembered (as int32 bytes, so that a prompt's ids are one `bytes.join`): a 1,000-token prompt
        costs a `str.split` and dictionary lookups instead of a full tokenizer call; the same text twice in
        a row (two embedders, one prompt) costs a comparison. Words are taken up to the one that takes the
        count past 4 x MAX_TOKENS."""
        last = self._last
        if last[0] is text or last[0] == text:
            return last[1]
        cap = 4 * MAX_TOKENS
        words = text.lower().split()
        parts: list[bytes] = []
        total = 0
        for start in range(0, len(words), cap):  # a chunk of `cap` words has more than `cap` ids only rarely
            chunk = words[start:start + cap]
            try:
                seqs = list(map(self.words.__getitem__, chunk))
            except KeyError:  # words not seen yet: each tokenised once
                seqs = list(map(self._with_new_words(chunk).__getitem__, chunk))
            n = sum(map(len, seqs)) // 4
            if total + n > cap:  # cut after the word that takes the count past the cap
                for i, b in enumerate(seqs):
                    total += len(b) // 4
                    if total > cap:
                        seqs = seqs[:i + 1]
                        break
                parts.append(b"".join(seqs))
                break
            parts.append(b"".join(seqs))
            total += n
        arr = np.frombuffer(b"".join(parts), dtype=np.int32).astype(np.intp)
        self._last = (text, arr)
        return arr

    def _with_new_words(self, chunk: list[str]) -> Mapping[str, bytes]:
        """Tokenise the words of `chunk` not seen yet and remember them (while the cache has room); a mapping
        that has every word of `chunk`."""
        extra: dict[str, bytes] = {}
        for word in set(chunk).difference(self.words):
            ids = np.array(self._tok.encode(word, add_special_tokens=False).ids, dtype=np.int32).tobytes()
            if len(self.words) < WORD_CACHE_SIZE:
                self.words[word] = ids
            else:
                extra[word] = ids
        return ChainMap(extra, self.words) if extra else self.words


_SHARED_IDS: dict[str, WordPieceIds] = {}


def word_piece_ids(tokenizer_path: Path) -> WordPieceIds:
    """The process's `WordPieceIds` for this tokenizer file's content (one per distinct tokenizer)."""
    raw = Path(tokenizer_path).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    found = _SHARED_IDS.get(digest)
    if found is None:
        found = _SHARED_IDS[digest] = WordPieceIds(Path(tokenizer_path))
    return found


class StaticEmbedder:
    """Maps texts to L2-normalised mean token vectors."""

    def __init__(self, table: np.ndarray, tokenizer_path: Path) -> None:
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.dims = int(self.table.shape[1])
        self.token_ids = word_piece_ids(tokenizer_path)

    @classmethod
    def load(cls, directory: str | Path) -> StaticEmbedder:
        """Load `static_embedding.npz` and `tokenizer.json` from an artefact directory."""
        directory = Path(directory)
        with np.load(directory / "static_embedding.npz") as z:
            if "q" in z:
                table = z["q"].astype(np.float32) * z["scale"].astype(np.float32)[:, None]
            else:
                table = z["table"].astype(np.float32)
        return cls(table, directory / "tokenizer.json")

    def vector(self, ids: list[int] | np.ndarray) -> np.ndarray:
        """The embedding of a token-id sequence."""
        ids = np.asarray(ids, dtype=np.intp)
        if not len(ids):
            return np.zeros(self.dims, dtype=np.float32)
        if len(ids) > MAX_TOKENS:
            half = MAX_TOKENS // 2
            ids = np.concatenate([ids[:half], ids[-half:]])
        v = self.table[ids].mean(axis=0)
        n = float(np.linalg.norm(v))
        return v / n if n > 0 else v

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dims) float32."""
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self.vector(self.token_ids.array(text))
        return out


def quantise_table(table: np.ndarray) -> dict[str, np.ndarray]:
    """int8 rows with one float16 scale per row (what the artefact stores)."""
    scale = np.abs(table).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.round(table / scale[:, None]).astype(np.int8)
    return {"q": q, "scale": scale.astype(np.float16)}
