"""Batch line claims on both dialects: concurrent claimers never share a line, a lapsed lease returns
the line, a stale claim cannot overwrite a result, and a graceful release does not count an attempt."""

from __future__ import annotations

import asyncio

from tests.unit.test_store_fixtures import fx_batch_store, fx_pg_available, fx_store_url  # noqa: F401 - fixtures
from tiergate.batches.store import BatchStore, line_request_id


async def _batch(bs: BatchStore, n: int) -> str:
    f = await bs.create_file("k1", "in.jsonl", "batch", b"x")
    return await bs.create_batch(key_id="k1", endpoint="/v1/chat/completions", input_file_id=f["id"], window_s=60,
                                 metadata={"a": "b"}, lines=[(f"c{i}", "{}") for i in range(n)])


async def test_concurrent_claims_are_disjoint(bs):
    bid = await _batch(bs, 60)
    assert len(await bs.claim(bid, "one", 1, 30, 3)) == 1
    got = await asyncio.gather(*(bs.claim(bid, f"rep{i % 3}", 7, 30, 3) for i in range(12)))
    assert all(len(batch) <= 7 for batch in got)
    lines = [c.line_no for batch in got for c in batch]
    assert len(lines) == len(set(lines)) == 59 and 0 not in lines
    assert await bs.claim(bid, "late", 5, 30, 3) == []
    assert (await bs.counts(bid)) == {"running": 60}


async def test_lease_lapse_fencing_and_release(bs):
    bid = await _batch(bs, 3)
    first = await bs.claim(bid, "dead", 3, 0.05, 3)
    assert len(first) == 3
    await asyncio.sleep(0.1)  # the dead replica stops heart-beating: its leases lapse
    second = await bs.claim(bid, "alive", 3, 30, 3)
    assert [c.line_no for c in second] == [0, 1, 2] and all(c.attempts == 2 for c in second)
    # the dead replica's late result is refused; the live claim's is stored once
    assert not await bs.finish_line(first[0], ok=True, status_code=200, result={"x": 1}, usage=None)
    assert await bs.finish_line(second[0], ok=True, status_code=200, result={"x": 2},
                                usage={"input_tokens": 5, "output_tokens": 7})
    assert not await bs.finish_line(second[0], ok=True, status_code=200, result={"x": 3}, usage=None)
    assert await bs.heartbeat("alive", 30) == 2
    await bs.release([second[1].claim])
    counts = await bs.counts(bid)
    assert counts == {"done": 1, "pending": 2}
    again = await bs.claim(bid, "next", 5, 30, 3)
    assert [c.attempts for c in again] == [2, 2]  # release gave the attempt back
    assert (await bs.usage(bid))["o"] == 7
    rows = await bs.results(bid)
    assert rows[0]["state"] == "done" and '"x":2' in rows[0]["result"]


async def test_attempt_limit_and_status_cas(bs):
    bid = await _batch(bs, 1)
    for _ in range(2):
        assert len(await bs.claim(bid, "crashy", 1, 0.01, 2)) == 1
        await asyncio.sleep(0.03)
    assert await bs.claim(bid, "x", 1, 30, 2) == []  # two lapsed attempts: not claimed again
    assert await bs.give_up_stuck(bid, 2) == 1
    assert (await bs.counts(bid)) == {"failed": 1}
    assert await bs.set_status(bid, "cancelling", only_from=("in_progress",))
    assert not await bs.set_status(bid, "cancelling", only_from=("in_progress",))
    b = await bs.get_batch(bid, "k1")
    assert b["status"] == "cancelling" and b["cancelling_at"] > 0
    assert await bs.get_batch(bid, "other-key") is None
    assert line_request_id(bid, 4).endswith("_4")


async def test_listing_is_scoped_and_paginated(bs):
    mine = [await _batch(bs, 1) for _ in range(5)]
    f = await bs.create_file("k2", "other.jsonl", "batch", b"y")
    other = await bs.create_batch(key_id="k2", endpoint="/v1/chat/completions", input_file_id=f["id"], window_s=60,
                                  metadata=None, lines=[("a", "{}")])
    page, more = await bs.list_batches("k1", None, 3)
    assert more and len(page) == 3 and other not in [r["id"] for r in page]
    rest, more = await bs.list_batches("k1", page[-1]["id"], 10)
    assert not more and {r["id"] for r in page + rest} == set(mine)
    everything, _ = await bs.list_batches(None, None, 100)
    assert other in [r["id"] for r in everything]
    assert [r["id"] for r in await bs.list_files("k2")] == [f["id"]]
    assert len(await bs.list_files(None, "batch")) == 6
