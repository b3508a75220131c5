"""Store pages for `GET /v1/files` and `GET /v1/batches` on both dialects: (created_at, id) order in
either direction, an `after` cursor past objects created in the same instant neither repeats nor skips
one, `has_more` is exact, and a cursor the caller cannot see gives an empty page."""

from __future__ import annotations

import types

import pytest

import tiergate.batches.store as store_mod
from tests.unit.test_store_fixtures import fx_batch_store, fx_pg_available, fx_store_url  # noqa: F401 - fixtures


def _clock(monkeypatch, values):
    it = iter(values)
    monkeypatch.setattr(store_mod, "time", types.SimpleNamespace(time=lambda: next(it)))


async def _walk(page, limit, **kw):
    seen, after = [], None
    while True:
        rows, more = await page(after=after, limit=limit, **kw)
        seen += [r["id"] for r in rows]
        if not more:
            return seen
        assert rows, "has_more with an empty page"
        after = rows[-1]["id"]


async def test_file_pages_with_ties(bs, monkeypatch):
    # 3 files at t=10, then 6 files in one instant (t=20), then 2 at t=30; another key's file at t=20
    _clock(monkeypatch, [10.0, 10.5, 11.0] + [20.0] * 6 + [30.0, 31.0] + [20.0])
    ids = [(await bs.create_file("k1", f"f{i}", "batch", b"x", file_id=f"file-{i:02d}{'zyxwvutsrqpo'[i]}"))["id"]
           for i in range(11)]
    other = (await bs.create_file("k2", "o", "batch", b"x", file_id="file-other"))["id"]
    rows = [(await bs.get_file(i, None)) for i in ids]
    asc = [r["id"] for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]))]
    for limit in (1, 2, 4, 11, 50):
        assert await _walk(lambda **kw: bs.files_page("k1", **kw), limit, order="asc") == asc
        assert await _walk(lambda **kw: bs.files_page("k1", **kw), limit, order="desc") == asc[::-1]
    page, more = await bs.files_page("k1", limit=11)
    assert len(page) == 11 and not more
    page, more = await bs.files_page("k1", limit=10)
    assert len(page) == 10 and more
    # a cursor inside the tie: the rest of the tie, then the later files
    page, _ = await bs.files_page("k1", after=asc[4], limit=100, order="asc")
    assert [r["id"] for r in page] == asc[5:]
    assert await bs.files_page("k1", after=other, limit=5) == ([], False)  # not k1's
    assert await bs.files_page("k1", after="file-gone", limit=5) == ([], False)
    everyone = await _walk(lambda **kw: bs.files_page(None, **kw), 3, order="desc")
    assert len(everyone) == 12 and other in everyone
    assert await bs.files_page("k1", "fine-tune") == ([], False)
    with pytest.raises(ValueError):
        await bs.files_page("k1", order="sideways")


async def test_batch_pages_with_ties(bs, monkeypatch):
    _clock(monkeypatch, [5.0] + [50.0] * 8 + [60.0])  # the input file, then 8 batches in one instant, then one
    f = await bs.create_file("k1", "in", "batch", b"x")
    made = [await bs.create_batch(key_id="k1", endpoint="/v1/chat/completions", input_file_id=f["id"],
                                  window_s=60, metadata=None, lines=[("a", "{}")]) for _ in range(9)]
    desc = [made[-1]] + sorted(made[:-1], reverse=True)
    for limit in (1, 3, 8, 9, 100):
        assert await _walk(lambda after, limit: bs.list_batches("k1", after, limit), limit) == desc
    assert await bs.list_batches("k2", None, 10) == ([], False)
    assert await bs.list_batches("k2", made[0], 10) == ([], False)  # not k2's cursor
    assert await bs.list_batches("k1", "batch_nope", 10) == ([], False)
