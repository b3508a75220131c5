"""The ledger writer: rows reach the store in batches, survive kill -9 through the journal, and a
replay never double-counts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.unit.test_store_fixtures import fx_pg_available, fx_store_url  # noqa: F401 (fixtures)
from tiergate.accounting.ledger import LedgerWriter, normalize_row
from tiergate.store import LEDGER_COLUMNS, open_store


def test_normalize_fills_defaults_and_keeps_unknown_keys():
    t = dict(zip(LEDGER_COLUMNS, normalize_row({"request_id": "r", "route": {"why": "x"}, "team": "a",
                                                  "latency_ms": 3})))
    assert t["status"] == "ok" and t["kind"] == "chat" and t["input_tokens"] == 0 and t["stream"] is False
    assert t["route"] == '{"why":"x"}' and t["metadata"] == '{"team":"a"}' and t["latency_ms"] == 3.0
    with pytest.raises(ValueError):
        normalize_row({"cost_usd": 1})


async def test_a_non_finite_cost_is_stored_as_zero_and_noted(tmp_path):
    """A NaN cost (a catalogue price of .nan, before prices were checked) is NULL to SQLite's NOT NULL column:
    the flush failed and every later row stayed in the journal, which then wedged the next start-up."""
    t = dict(zip(LEDGER_COLUMNS, normalize_row({"request_id": "r", "cost_usd": float("nan")})))
    assert t["cost_usd"] == 0.0 and "cost_not_finite" in t["metadata"]
    store = await open_store(f"sqlite:///{tmp_path / 'l.db'}")
    try:
        await store.insert_ledger([normalize_row({"request_id": f"r{i}", "cost_usd": c})
                                   for i, c in enumerate((float("nan"), float("inf"), 0.5))])
        rows = await store.fetch("SELECT request_id, cost_usd FROM ledger ORDER BY request_id")
        assert [(r["request_id"], r["cost_usd"]) for r in rows] == [("r0", 0.0), ("r1", 0.0), ("r2", 0.5)]
    finally:
        await store.close()


async def test_rows_flush_in_background(store_url, tmp_path):
    store = await open_store(store_url)
    w = await LedgerWriter.start(store, tmp_path / "j", flush_interval_s=0.01)
    try:
        for i in range(1200):
            w.record({"request_id": f"r{i}", "key_id": "k", "cost_usd": 0.001, "stream": i % 2 == 0})
        await w.flush()
        assert w.pending == 0
        got = await store.fetchone("SELECT COUNT(*) AS n, SUM(cost_usd) AS s FROM ledger WHERE key_id = ?", "k")
        assert got["n"] == 1200 and abs(got["s"] - 1.2) < 1e-9
        assert list((tmp_path / "j").glob("*.jsonl")) == [next((tmp_path / "j").glob("*.jsonl"))]  # live one
    finally:
        await w.close()
        await store.close()
    assert list((tmp_path / "j").iterdir()) == []  # a clean close leaves no journal


async def test_store_outage_keeps_rows_until_it_returns(tmp_path):
    store = await open_store(f"sqlite:///{tmp_path / 'tg.db'}")
    real = store.insert_ledger
    calls = {"n": 0}

    async def flaky(rows):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("store down")
        return await real(rows)

    store.insert_ledger = flaky
    w = await LedgerWriter.start(store, tmp_path / "j", flush_interval_s=0.01)
    for i in range(10):
        w.record({"request_id": f"r{i}"})
    with pytest.raises(ConnectionError):
        await w.flush()
    await w.close()  # retries until the store answers
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM ledger"))["n"] == 10
    await store.close()


_CHILD = textwrap.dedent("""
    import asyncio, os, signal, sys
    from tiergate.accounting.ledger import LedgerWriter
    from tiergate.store import open_store

    async def main():
        store = await open_store(sys.argv[1])
        w = await LedgerWriter.start(store, sys.argv[2], flush_interval_s=3600)
        await store.insert_ledger([])
        for i in range(int(sys.argv[3])):
            w.record({"request_id": f"kill-{i}", "key_id": "k", "cost_usd": 0.01})
            if i == 99:
                await w.flush()  # the first 100 are in the store AND (for a moment) in no journal
        for i in range(50):  # re-record 50 ids the store already has: must not double-count
            w.record({"request_id": f"kill-{i}", "key_id": "k", "cost_usd": 0.01})
        sys.stdout.write("recorded\\n"); sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
""")


async def test_kill9_loses_nothing_and_replay_is_idempotent(store_url, tmp_path):
    jdir = tmp_path / "j"
    argv = [sys.executable, "-c", _CHILD, store_url, str(jdir), "700"]
    # the child must finish (killed) before we look, so blocking here is the point
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)  # noqa: ASYNC221
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "recorded" in proc.stdout
    store = await open_store(store_url)
    try:
        assert (await store.fetchone("SELECT COUNT(*) AS n FROM ledger"))["n"] == 100
        w = await LedgerWriter.start(store, jdir)
        assert w.replayed == 600
        got = await store.fetchone("SELECT COUNT(*) AS n, COUNT(DISTINCT request_id) AS d FROM ledger")
        assert got["n"] == got["d"] == 700
        await w.close()
        w2 = await LedgerWriter.start(store, jdir)  # nothing left to replay
        assert w2.replayed == 0
        await w2.close()
    finally:
        await store.close()


async def test_live_writer_journal_is_not_stolen(tmp_path):
    store = await open_store(f"sqlite:///{tmp_path / 'tg.db'}")
    a = await LedgerWriter.start(store, tmp_path / "j", flush_interval_s=3600)
    a.record({"request_id": "live"})
    b = await LedgerWriter.start(store, tmp_path / "j")
    assert b.replayed == 0  # a's lock is held: its journal is not b's to replay
    await b.close()
    await a.close()
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM ledger"))["n"] == 1
    await store.close()
    assert os.listdir(tmp_path / "j") == []


async def _writer_with_store_down(tmp_path, rows: int = 5):
    """(store, its real insert_ledger, a writer holding `rows` rows) with the store refusing every insert."""
    store = await open_store(f"sqlite:///{tmp_path / 'tg.db'}")
    real = store.insert_ledger

    async def down(rows):
        raise ConnectionError("store down")

    store.insert_ledger = down
    w = await LedgerWriter.start(store, tmp_path / "j", flush_interval_s=3600)
    for i in range(rows):
        w.record({"request_id": f"r{i}"})
    return store, real, w


async def test_close_with_store_down_leaves_journal_for_next_start(tmp_path):
    store, real, w = await _writer_with_store_down(tmp_path)
    await w.close(timeout_s=0.2)
    store.insert_ledger = real
    w2 = await LedgerWriter.start(store, tmp_path / "j")
    assert w2.replayed == 5
    await w2.close()
    await store.close()


async def test_a_row_recorded_after_close_is_kept_for_the_next_start(store_url, tmp_path):
    """A stream cut by a forced shutdown (a second Ctrl-C) finishes its books after the writer closed: it
    raised 'ledger writer is closed' and the row was lost. It now goes to a journal the next start replays."""
    store = await open_store(store_url)
    try:
        w = await LedgerWriter.start(store, tmp_path / "j", flush_interval_s=0.01)
        w.record({"request_id": "before", "cost_usd": 0.001})
        await w.close()
        w.record({"request_id": "after-1", "cost_usd": 0.002, "status": "client_disconnected"})
        w.record({"request_id": "after-2", "cost_usd": 0.003, "status": "client_disconnected"})
        assert w.late == 2
        got = await store.fetchone("SELECT COUNT(*) AS n FROM ledger")
        assert got["n"] == 1
        w2 = await LedgerWriter.start(store, tmp_path / "j", flush_interval_s=0.01)  # the next start
        assert w2.replayed == 2
        await w2.close()
        got = await store.fetchone("SELECT COUNT(*) AS n, SUM(cost_usd) AS s FROM ledger")
        assert got["n"] == 3 and abs(got["s"] - 0.006) < 1e-12
        assert list((tmp_path / "j").iterdir()) == []
    finally:
        await store.close()


async def test_a_flush_after_a_failed_close_touches_no_descriptor_and_keeps_the_journal(tmp_path):
    """A close that gave up left its (closed) segment descriptors listed; a later flush (a budget seed of a
    request still in flight) closed those numbers again once the store answered, by then reused by the OS
    (a client's socket: a journal row was written into an HTTP connection), and unlinked the journal the
    next start-up needs. Now the journal stays and nothing is closed twice."""
    store, real, w = await _writer_with_store_down(tmp_path)
    with contextlib.suppress(ConnectionError):
        await w.flush()  # seals the segment: its descriptor is now in the sealed list
    await w.close(timeout_s=0.2)
    reused = [os.open(tmp_path / f"other{i}", os.O_CREAT | os.O_RDWR) for i in range(4)]  # take the freed numbers
    store.insert_ledger = real
    await w.flush()  # the store is back; the writer is closed
    for fd in reused:
        os.fstat(fd)  # still open: not closed by the flush
        os.close(fd)
    assert sorted(p.suffix for p in (tmp_path / "j").iterdir() if p.suffix == ".jsonl")  # journal kept
    w2 = await LedgerWriter.start(store, tmp_path / "j")
    assert w2.replayed == 5
    await w2.close()
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM ledger"))["n"] == 5
    await store.close()
