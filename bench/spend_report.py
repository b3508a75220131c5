"""Spend reports at scale: load N ledger rows into PostgreSQL with COPY, then time the monthly spend
report for one key (the `ledger_key_ts` index on (key_id, ts) INCLUDE (cost_usd) serves it).

Keys follow a skewed mix: one "heavy" key sends 30% of all traffic, 199 others share the rest; rows
span 90 days. Reports go through the same `spend_report()` the admin API and CLI use.

    python bench/spend_report.py [--rows 1000000] [--pg postgresql://postgres@127.0.0.1:5432/test] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import time

from tiergate.accounting.ledger import spend_report
from tiergate.store import LEDGER_COLUMNS, open_store
from tiergate.store.postgres import PostgresStore

MODELS = [("gpt-4o-mini", "gpt-4o-mini/0"), ("o3-mini", "o3-mini/0"), ("gpt-4o", "gpt-4o/0"),
          ("o1", "o1/azure"), ("gpt-4.1-nano", "gpt-4.1-nano/0")]
DAY = 86400.0


def make_rows(n: int, end: float, seed: int = 1) -> list[tuple]:
    rnd = random.Random(seed)
    keys = [f"key_{i:04d}" for i in range(200)]
    rows = []
    span = 90 * DAY
    for i in range(n):
        key = "key_heavy" if rnd.random() < 0.3 else keys[rnd.randrange(200)]
        model, dep = MODELS[rnd.randrange(len(MODELS))]
        inp, out = rnd.randrange(50, 4000), rnd.randrange(10, 1500)
        rows.append((
            f"req_{i:08d}", end - rnd.random() * span, key, "chat", "auto", model, dep, "low", inp, 0, out, 0,
            (inp * 0.15 + out * 0.6) / 1e6, 300.0, 80.0, "ok", None, None, False, 1, None, None,
        ))
    return rows


async def timed(fn, repeat: int = 5) -> tuple[float, float, object]:
    t0 = time.perf_counter()
    result = await fn()
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        warm.append(time.perf_counter() - t0)
    return cold, statistics.median(warm), result


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    a = ap.parse_args()
    schema = f"tg_bench_spend_{secrets.token_hex(4)}"
    store = await open_store(f"{a.pg}?schema={schema}")
    assert isinstance(store, PostgresStore)
    try:
        end = time.time()
        t0 = time.perf_counter()
        rows = make_rows(a.rows, end)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        async with store.pool.acquire() as conn:
            await conn.copy_records_to_table("ledger", records=rows, columns=list(LEDGER_COLUMNS), schema_name=schema)
            await conn.execute("ANALYZE ledger")
        copy_s = time.perf_counter() - t0
        del rows
        month_start = end - 30 * DAY
        heavy_n = (await store.fetchone("SELECT COUNT(*) AS n FROM ledger WHERE key_id = ? AND ts >= ?",
                                        "key_heavy", month_start))["n"]
        light_n = (await store.fetchone("SELECT COUNT(*) AS n FROM ledger WHERE key_id = ? AND ts >= ?",
                                        "key_0007", month_start))["n"]
        cases = [
            ("one key, month, by model", "key_0007", light_n, lambda: spend_report(store, "model", month_start, end,
                                                                                 "key_0007")),
            ("heavy key (30%), month, by model", "key_heavy", heavy_n,
             lambda: spend_report(store, "model", month_start, end, "key_heavy")),
            ("heavy key (30%), month, by day", "key_heavy", heavy_n,
             lambda: spend_report(store, "day", month_start, end, "key_heavy")),
            ("heavy key (30%), month, total", "key_heavy", heavy_n,
             lambda: store.fetch("SELECT SUM(cost_usd) AS s FROM ledger WHERE key_id = ? AND ts >= ? AND ts < ?",
                                 "key_heavy", month_start, end)),
            ("all keys, month, by key", "-", None, lambda: spend_report(store, "key", month_start, end)),
        ]
        plan = await store.fetch("EXPLAIN SELECT SUM(cost_usd) FROM ledger WHERE key_id = ? AND ts >= ? AND ts < ?",
                                 "key_heavy", month_start, end)
        print(f"loaded {a.rows:,} ledger rows: generate {gen_s:.1f} s, COPY + ANALYZE {copy_s:.1f} s "
              f"({a.rows / copy_s:,.0f} rows/s)")
        print(f"{'report':<36} {'rows scanned':>12} {'cold ms':>9} {'warm ms':>9}")
        for name, _, n, fn in cases:
            cold, warm, _ = await timed(fn)
            print(f"{name:<36} {n if n is not None else '':>12} {cold * 1000:>9.1f} {warm * 1000:>9.1f}")
        print("plan (heavy key total):", " / ".join(r["QUERY PLAN"].strip() for r in plan[:3]))
    finally:
        if not a.keep:
            await store.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
