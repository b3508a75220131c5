"""How much time accounting adds to a request (the hot path), per backend.

1. `LedgerWriter.record()`: records N realistic ledger rows, timing each call (journal append +
   enqueue) while the background flusher writes batches to the store on the same event loop, as in
   the server. Reports per-call latency and the rate at which rows reach the store.
2. `authenticate + admit + settle` for a virtual key with a budget, RPM and TPM, sequentially (one
   request at a time), for each counter backend: in-process, PostgreSQL row locks, Redis Lua.

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


async def bench_admission(storage: str, redis: str | None, n: int, jdir: Path) -> dict:
    from tiergate.accounting.service import Accounting
    from tiergate.config import parse_config

    raw = {"models": [{"name": "m", "deployments": [{"provider": "sim"}]}], "storage": storage}
    if redis:
        raw["redis"] = redis
    acc = await Accounting.start(parse_config(raw, env={"TIERGATE_MASTER_KEY": "mk-bench"}), journal_dir=jdir)
    try:
        _, secret = await acc.keys.create("bench", budget_usd=1e6, rpm=10**9, tpm=10**12)
        header = f"Bearer {secret}"
        lat = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            key = await acc.authenticate(header)
            adm = await acc.admit(key, "m", 800, 0.01, 1800)
            await acc.settle(adm, 0.002, 1000)
            lat.append(time.perf_counter_ns() - t0)
        lat.sort()
        name = type(acc.budget).__name__.replace("Budget", "").replace("Store", "PostgreSQL")
        return {"counters": name.lower() or "?", "n": n, "p50_us": lat[n // 2] / 1000,
                "p99_us": lat[int(n * 0.99)] / 1000}
    finally:
        if acc.store.dialect == "postgresql":
            await acc.store.execute("DROP SCHEMA IF EXISTS " + storage.rsplit("schema=", 1)[1] + " CASCADE")
        if acc.redis is not None:
            keys = [k async for k in acc.redis.scan_iter(redis.rsplit("prefix=", 1)[1] + "*")]
            if keys:
                await acc.redis.delete(*keys)
        await acc.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test",
                    help="PostgreSQL URL ('' to skip)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL ('' to skip)")
    ap.add_argument("--admissions", type=int, default=2000)
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
    adm = []
    with tempfile.TemporaryDirectory() as tmp:
        adm.append(await bench_admission(f"sqlite:///{tmp}/a.db", None, a.admissions, Path(tmp) / "j1"))
        if a.pg:
            adm.append(await bench_admission(f"{a.pg}?schema=tg_bench_{secrets.token_hex(4)}", None, a.admissions,
                                             Path(tmp) / "j2"))
            if a.redis:
                adm.append(await bench_admission(f"{a.pg}?schema=tg_bench_{secrets.token_hex(4)}",
                                                 f"{a.redis}?prefix=tgbench{secrets.token_hex(4)}:", a.admissions,
                                                 Path(tmp) / "j3"))
    print()
    print(f"{'counters':<11} {'requests':>8} {'auth+admit+settle p50 µs':>25} {'p99 µs':>8}")
    for r in adm:
        print(f"{r['counters']:<11} {r['n']:>8} {r['p50_us']:>25.1f} {r['p99_us']:>8.1f}")


if __name__ == "__main__":
    asyncio.run(main())
