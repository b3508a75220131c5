"""kill -9 a replica under load, restart it: every response a client received (a 200, or a stream that
reached [DONE]) has exactly one ledger row — the journal replay recovers rows the store had not got."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time

import asyncpg
import httpx
import pytest

from tests.e2e.test_multi_replica import (
    MASTER,
    MESSAGES,
    MODEL,
    Replica,
    shared_state,  # noqa: F401 (fixture)
    start_replica,
    stop,
    write_config,
)

pytestmark = pytest.mark.slow


async def _load(replica: Replica, received: list[str], halt: asyncio.Event, concurrency: int = 32) -> int:
    """Send requests (every 3rd streamed) until `halt` is set; collect the request ids of answers that
    fully arrived. Returns how many requests failed (connection cut by the kill)."""
    failed = 0
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=10, limits=limits,
                                 headers={"authorization": f"Bearer {MASTER}"}) as client:
        async def worker(w: int) -> None:
            nonlocal failed
            i = 0
            while not halt.is_set():
                i += 1
                body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}
                try:
                    if (w + i) % 3 == 0:
                        async with client.stream("POST", f"{replica.url}/v1/chat/completions",
                                                 json={**body, "stream": True}) as r:
                            text = (await r.aread()).decode()
                            if r.status_code == 200 and "data: [DONE]" in text:
                                received.append(r.headers["x-request-id"])
                    else:
                        r = await client.post(f"{replica.url}/v1/chat/completions", json=body)
                        if r.status_code == 200:
                            received.append(r.headers["x-request-id"])
                except httpx.HTTPError:
                    failed += 1
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return failed


async def _rows(storage: str, ids: list[str]) -> dict[str, int]:
    """request_id -> number of ledger rows, for the given ids."""
    if storage.startswith("sqlite"):
        conn = sqlite3.connect(storage.split(":///", 1)[1])
        try:
            got = dict(conn.execute("SELECT request_id, COUNT(*) FROM ledger GROUP BY request_id").fetchall())
        finally:
            conn.close()
    else:
        base, schema = storage.split("?schema=")
        conn = await asyncpg.connect(base, server_settings={"search_path": schema})
        try:
            got = {r[0]: r[1] for r in await conn.fetch(
                "SELECT request_id, COUNT(*) FROM ledger WHERE request_id = ANY($1) GROUP BY request_id", ids)}
        finally:
            await conn.close()
    return {i: got.get(i, 0) for i in ids}


@pytest.fixture(params=["sqlite", "postgresql+redis"])
def storage(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tg.db'}", None
    else:
        yield request.getfixturevalue("shared_state")


async def test_kill9_under_load_loses_no_row(storage, tmp_path):
    store_url, redis = storage
    cfg = write_config(tmp_path / "tiergate.yaml", store_url, redis, latency_ms=20)
    journal = tmp_path / "journal"
    replica = start_replica(cfg, journal, tmp_path / "replica.log")
    received: list[str] = []
    try:
        halt = asyncio.Event()
        load = asyncio.create_task(_load(replica, received, halt))
        deadline = time.monotonic() + 30
        while len(received) < 150:  # let it get busy
            await asyncio.sleep(0.02)
            assert not load.done() and time.monotonic() < deadline, "load stopped before the kill"
        replica.proc.send_signal(signal.SIGKILL)
        await asyncio.sleep(0.3)  # clients see their connections cut
        halt.set()
        failed = await load
    finally:
        stop(replica)
    assert failed > 0  # the kill really cut requests in flight
    ids = list(received)
    assert len(ids) == len(set(ids)) and len(ids) >= 150
    before = await _rows(store_url, ids)
    pending = sum(1 for n in before.values() if n == 0)  # in the journal only, at the moment of the kill
    journal_files = sorted(p.name for p in journal.iterdir())
    assert any(n.endswith(".lock") for n in journal_files)  # the dead writer's journal is still there

    restarted = start_replica(cfg, journal, tmp_path / "replica2.log", port=replica.port)
    try:
        after = await _rows(store_url, ids)  # start-up replayed the dead writer's journal before serving
    finally:
        stop(restarted)
    wrong = {i: n for i, n in after.items() if n != 1}
    assert not wrong, f"{len(wrong)} received responses without exactly one ledger row: {list(wrong.items())[:5]}"
    print(f"\nkill -9: {len(ids)} answers received, {pending} of them only in the journal at the kill, "
          f"{failed} requests cut; after restart every one has exactly one ledger row")
