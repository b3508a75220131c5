"""How much time `LedgerWriter.record()` adds to a request (the hot path), per storage backend.

Records N realistic ledger rows, timing each `record()` call (the journal append + enqueue), while the
background flusher writes batches to the store on the same event loop, as in the server. Prints a
table of per-call latency and the end-to-end rate at which rows reach the store.

    python bench/ledger_overhead.py [--rows 20000] [--pg postgresql://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from tiergate.accounting.ledger import LedgerWriter
from tiergate.store import open_store


def _row(i: int) -> dict:
    return {
        "request_id": f"chatcmpl-{secrets.token_hex(12)}", "key_id": "key_bench", "kind": "chat",
        "requested_model": "auto", "served_model": "o3-mini", "deployment": "o3-mini/0",
        "reasoning_effort": "low", "input_tokens": 812, "cached_tokens": 0, "output_tokens": 240,
        "reasoning_tokens": 128, "cost_usd": 0.0019, "latency_ms": 412.5, "ttft_ms": 90.1, "status": "ok",
        "route": {"policy": "balanced", "quality": 0.81, "beat": ["gpt-4o-mini", "o3-mini@medium"]},
        "stream": i % 2 == 0, "attempt": 1,
    }


async def bench(url: str, rows: int, jdir: Path) -> dict:
    store = await open_store(url)
    w = await LedgerWriter.start(store, jdir)
    prepared = [_row(i) for i in range(rows)]
    lat = []
    t_all = time.perf_counter()
    for i, r in enumerate(prepared):
        t0 = time.perf_counter_ns()
        w.record(r)
        lat.append(time.perf_counter_ns() - t0)
        if i % 64 == 63:
            await asyncio.sleep(0)  # let the flusher run, as a busy server would between requests
    await w.flush()
    total = time.perf_counter() - t_all
    await w.close()
    if store.dialect == "postgresql":
        await store.execute("DROP SCHEMA IF EXISTS " + url.rsplit("schema=", 1)[1] + " CASCADE")
    await store.close()
    lat.sort()
    return {
        "backend": store.dialect, "rows": rows,
        "p50_us": lat[len(lat) // 2] / 1000, "p99_us": lat[int(len(lat) * 0.99)] / 1000,
        "mean_us": statistics.fmean(lat) / 1000, "rows_per_s_to_store": rows / total,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test",
                    help="PostgreSQL URL ('' to skip)")
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(await bench(f"sqlite:///{tmp}/bench.db", a.rows, Path(tmp) / "j1"))
        if a.pg:
            schema = f"tg_bench_{secrets.token_hex(4)}"
            results.append(await bench(f"{a.pg}?schema={schema}", a.rows, Path(tmp) / "j2"))
    print(f"{'backend':<11} {'rows':>7} {'record p50 µs':>14} {'p99 µs':>8} {'mean µs':>8} {'rows/s to store':>16}")
    for r in results:
        print(f"{r['backend']:<11} {r['rows']:>7} {r['p50_us']:>14.1f} {r['p99_us']:>8.1f} {r['mean_us']:>8.1f}"
              f" {r['rows_per_s_to_store']:>16,.0f}")


if __name__ == "__main__":
    asyncio.run(main())
