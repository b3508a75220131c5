"""BatchStore, on SQLite and PostgreSQL: a deleted (or purged) file's id still positions a list page
through its tombstone, within the caller's visibility; tombstones are purged after `TOMBSTONE_KEEP_S`;
files with `expires_at` read as absent once it passes and are purged (the first purge of a process runs
even when the monotonic clock is near 0, as right after a boot); a batch's `output_expires_s` reaches its
output / error files."""

from __future__ import annotations

import pytest

import tiergate.batches.store as store_mod
from tests.unit.test_store_fixtures import fx_batch_store, fx_pg_available, fx_store_url  # noqa: F401 - fixtures


@pytest.fixture(name="clock")
def fx_clock(monkeypatch):
    """The store's expiry clock (`_now`), moved by the test: `clock["t"] += ...`."""
    import time

    state = {"t": time.time()}
    monkeypatch.setattr(store_mod, "_now", lambda: state["t"])
    return state


async def _ids(bs, key, **kw):
    rows, more = await bs.files_page(key, **kw)
    return [r["id"] for r in rows], more


async def test_deleting_while_walking_pages_reaches_every_file(bs):
    ids = [(await bs.create_file("k1", f"f{i}", "batch", b"x", file_id=f"file-w{i:02d}"))["id"] for i in range(7)]
    other = (await bs.create_file("k2", "o", "batch", b"x", file_id="file-k2"))["id"]
    for order in ("desc", "asc"):
        if order == "asc":
            ids = [(await bs.create_file("k1", f"g{i}", "batch", b"x", file_id=f"file-a{i:02d}"))["id"]
                   for i in range(5)]
        seen, after = [], None
        while True:  # the SDK's auto-pagination, deleting each file as it goes
            rows, more = await bs.files_page("k1", after=after, limit=2, order=order)
            for r in rows:
                seen.append(r["id"])
                assert await bs.delete_file(r["id"])
            if not more:
                break
            after = rows[-1]["id"]
        assert sorted(seen) == sorted(ids)
        assert await bs.files_page("k1") == ([], False)
    # a deleted file positions the page for its own key, the master (None) and nobody else
    # (ids now holds the asc round's files, all created after `other`)
    assert await _ids(bs, None, after=ids[0], order="desc") == ([other], False)
    assert await bs.files_page("k2", after=ids[0], order="desc") == ([], False)
    assert await bs.files_page("k1", after="file-never-existed") == ([], False)
    assert not await bs.delete_file(ids[0])  # deleting twice: nothing, tombstone unchanged


async def test_tombstones_are_purged_after_keep(bs, clock):
    a = (await bs.create_file("k1", "a", "batch", b"x"))["id"]
    b = (await bs.create_file("k1", "b", "batch", b"x"))["id"]
    await bs.delete_file(b)
    assert await _ids(bs, "k1", after=b) == ([a], False)
    clock["t"] += store_mod.TOMBSTONE_KEEP_S - 60
    await bs.purge_expired()
    assert await _ids(bs, "k1", after=b) == ([a], False)
    clock["t"] += 120
    await bs.purge_expired()
    assert await bs.files_page("k1", after=b) == ([], False)
    assert (await bs.db.fetchone("SELECT COUNT(*) AS n FROM list_tombstones"))["n"] == 0


async def test_expired_files_read_as_absent_then_are_purged(bs, clock):
    keep = await bs.create_file("k1", "keep", "batch", b"x")
    short = await bs.create_file("k1", "short", "batch", b"x", expires_after_s=3600)
    assert keep["expires_at"] is None and short["expires_at"] == pytest.approx(short["created_at"] + 3600)
    assert (await bs.get_file(short["id"], "k1"))["expires_at"] == short["expires_at"]
    assert await _ids(bs, "k1", order="asc") == ([keep["id"], short["id"]], False)
    clock["t"] = short["expires_at"] + 1
    assert await bs.get_file(short["id"], "k1") is None
    assert await bs.get_file(short["id"], None, owner_check=False) is None
    assert await _ids(bs, "k1") == ([keep["id"]], False)
    assert await _ids(bs, "k1", after=short["id"]) == ([keep["id"]], False)  # still a cursor (not purged yet)
    assert await bs.purge_expired() == 1
    assert await bs.db.fetchone("SELECT id FROM files WHERE id = ?", short["id"]) is None
    assert await _ids(bs, "k1", after=short["id"]) == ([keep["id"]], False)  # purged: its tombstone positions
    assert await bs.get_file(keep["id"], "k1") is not None


async def test_first_purge_runs_right_after_boot_then_every_purge_every_s(bs, clock, monkeypatch):
    mono = {"t": 5.0}  # a machine booted 5 s ago
    monkeypatch.setattr(store_mod, "monotonic", lambda: mono["t"])
    f = await bs.create_file("k1", "a", "batch", b"x", expires_after_s=3600)
    clock["t"] = f["expires_at"] + 1
    fresh = store_mod.BatchStore(bs.db)  # a process that just started
    await fresh.active_batches()  # the runner's poll
    assert await bs.db.fetchone("SELECT id FROM files WHERE id = ?", f["id"]) is None
    g = await fresh.create_file("k1", "b", "batch", b"x", expires_after_s=3600)
    clock["t"] = g["expires_at"] + 1
    mono["t"] += store_mod.PURGE_EVERY_S - 1
    await fresh.files_page("k1")
    assert await bs.db.fetchone("SELECT id FROM files WHERE id = ?", g["id"]) is not None  # not yet
    mono["t"] += 2
    await fresh.files_page("k1")
    assert await bs.db.fetchone("SELECT id FROM files WHERE id = ?", g["id"]) is None


async def test_batch_output_files_take_output_expires_after(bs):
    from tiergate.batches.runner import finalize_files

    f = await bs.create_file("k1", "in", "batch", b"x")
    with_exp = await bs.create_batch(key_id="k1", endpoint="/v1/chat/completions", input_file_id=f["id"],
                                     window_s=60, metadata=None, lines=[("a", "{}"), ("b", "{}")],
                                     output_expires_s=7200)
    without = await bs.create_batch(key_id="k1", endpoint="/v1/chat/completions", input_file_id=f["id"],
                                    window_s=60, metadata=None, lines=[("a", "{}"), ("b", "{}")])
    for bid, want in ((with_exp, 7200), (without, None)):
        assert await bs.output_expiry_s(bid) == want
        # one line answered, one failed: finalising writes an output and an error file
        await bs.db.execute("UPDATE batch_lines SET state = 'done', result = ? WHERE batch_id = ? AND line_no = 0",
                            '{"custom_id": "a"}', bid)
        await bs.db.execute("UPDATE batch_lines SET state = 'failed', result = ? WHERE batch_id = ? AND line_no = 1",
                            '{"custom_id": "b"}', bid)
        await finalize_files(bs, bid, "k1")
        batch = await bs.get_batch(bid, "k1")
        for col in ("output_file_id", "error_file_id"):
            out = await bs.get_file(batch[col], "k1")
            got = None if out["expires_at"] is None else round(out["expires_at"] - out["created_at"])
            assert got == want, (col, bid)
    # an upload's own setting is left alone, and an uploaded id never picks up a batch's
    up = await bs.create_file("k1", "u", "batch", b"x", file_id=f"file-out-{with_exp.removeprefix('batch_')}x")
    assert up["expires_at"] is None


async def test_a_failing_purge_never_fails_the_upload(bs, monkeypatch, records):
    async def broken() -> int:
        bs._purged_at = store_mod.monotonic()
        raise RuntimeError("database went away")

    monkeypatch.setattr(bs, "purge_expired", broken)
    f = await bs.create_file("k1", "a", "batch", b"x", expires_after_s=3600)
    assert (await bs.get_file(f["id"], "k1"))["id"] == f["id"]
    assert any("purging expired files failed" in msg for _level, msg in records)
