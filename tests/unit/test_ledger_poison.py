"""One bad ledger row must never jam the ledger: values are coerced to their columns' types when recorded,
a journal written before that is replayed (not a start-up crash), and a row the store still refuses is set
aside in a quarantine file while every other row is written. Real SQLite and PostgreSQL (`store_url`)."""

from __future__ import annotations

import logging

import orjson
import pytest

from tests.unit.test_store_fixtures import fx_pg_available, fx_store_url  # noqa: F401 (fixtures)
from tiergate.accounting.ledger import QUARANTINE, LedgerWriter, normalize_row
from tiergate.store import LEDGER_COLUMNS, open_store

KEY = "tg-" + "A1b2C3d4" + "x" * 35  # the shape of a virtual key (accounting/keys.py)


def _row(**kw):
    return dict(zip(LEDGER_COLUMNS, normalize_row(kw)))


def test_values_are_coerced_to_their_column_types():
    r = _row(request_id="r", reasoning_effort=[], requested_model={"a": 1}, input_tokens="many",
             output_tokens=2**40, attempt=1.0, latency_ms="x", ttft_ms=float("inf"), status=None, kind=None,
             ts=None, served_model="a\x00b", error=["boom", 1], batch_id=7)
    assert r["reasoning_effort"] == "[]" and r["requested_model"] == '{"a":1}'
    assert r["input_tokens"] == 0 and r["output_tokens"] == 2**31 - 1 and r["attempt"] == 1
    assert r["latency_ms"] is None and r["ttft_ms"] is None
    assert r["status"] == "ok" and r["kind"] == "chat" and isinstance(r["ts"], float)
    assert "\x00" not in r["served_model"] and r["error"] == '["boom",1]' and r["batch_id"] == "7"
    meta = orjson.loads(r["metadata"])
    assert {"input_tokens_invalid", "output_tokens_invalid", "latency_ms_invalid", "ttft_ms_invalid"} <= set(meta)
    assert _row(request_id="r", reasoning_effort={})["reasoning_effort"] == "{}"
    assert _row(request_id="r", metadata="not json", team="a")["metadata"] == '{"metadata":"not json","team":"a"}'


def test_secrets_in_client_text_are_scrubbed_as_in_the_logs():
    r = _row(request_id="r", requested_model=KEY, error=f"Incorrect API key provided: {KEY} / sk-abcdefghijklmnopqrst")
    assert KEY not in r["requested_model"] and r["requested_model"].startswith("tg-A1b2C3d4")
    assert KEY not in r["error"] and "sk-abcdefghijklmnopqrst" not in r["error"]


async def test_rows_with_odd_values_reach_the_store(store_url, tmp_path):
    store = await open_store(store_url)
    w = await LedgerWriter.start(store, tmp_path / "j", flush_interval_s=3600)
    try:
        for i, effort in enumerate(([], {}, [1], {"a": [None]}, "high", None, 10**30)):
            w.record({"request_id": f"r{i}", "reasoning_effort": effort, "status": "error",
                      "requested_model": "m\x00" if i == 0 else "m", "input_tokens": 10**12 if i == 1 else 5})
        await w.flush()  # raised ProgrammingError / DataError (list not supported) on every attempt
        got = await store.fetch("SELECT request_id, reasoning_effort FROM ledger ORDER BY request_id")
        assert [(g["request_id"], g["reasoning_effort"]) for g in got] == [
            ("r0", "[]"), ("r1", "{}"), ("r2", "[1]"), ("r3", '{"a":[null]}'), ("r4", "high"), ("r5", None),
            ("r6", str(10**30))]
        assert w.set_aside == 0 and not (tmp_path / "j" / QUARANTINE).exists()
    finally:
        await w.close(timeout_s=1)
        await store.close()


def _write_journal(jdir, wid: str, lines: list[list]) -> None:
    """A journal left by a stopped writer: `<wid>.lock` (not held) and one segment."""
    jdir.mkdir(parents=True, exist_ok=True)
    (jdir / f"{wid}.lock").write_bytes(b"")
    (jdir / f"{wid}.00000001.jsonl").write_bytes(b"".join(orjson.dumps(v) + b"\n" for v in lines))


def _legacy(rid: str, effort) -> list:
    """A row as the writer journaled it before values were coerced (the judge's jammed journal)."""
    return [rid, 1795386039.9, "master", "chat", "gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini/0", effort, 0, 0, 0, 0,
            0.0, 535.05, None, "error", "Model 'gpt-4o-mini' could not be served", None, False, 2, None,
            '{"cache_write_tokens":0}']


async def test_a_jammed_journal_is_replayed_at_start(store_url, tmp_path):
    """The journal replay of a row holding a raw list/object crashed the start-up (the gateway did not
    come up again); now each row is coerced on replay, and one that is not a row at all is set aside."""
    jdir = tmp_path / "j"
    _write_journal(jdir, "deadhost-1-aaaa", [_legacy("a1", {"a": 1}), _legacy("a2", []), ["short", "row"],
                                             _legacy("a3", "low")])
    store = await open_store(store_url)
    try:
        w = await LedgerWriter.start(store, jdir)
        assert w.replayed == 3 and w.set_aside == 1
        got = await store.fetch("SELECT request_id, reasoning_effort FROM ledger ORDER BY request_id")
        assert [(g["request_id"], g["reasoning_effort"]) for g in got] == [("a1", '{"a":1}'), ("a2", "[]"),
                                                                          ("a3", "low")]
        q = [orjson.loads(x) for x in (jdir / QUARANTINE).read_bytes().splitlines()]
        assert len(q) == 1 and q[0]["row"] == ["short", "row"] and "unreadable journal row" in q[0]["error"]
        await w.close()
        assert sorted(p.name for p in jdir.iterdir()) == [QUARANTINE]
    finally:
        await store.close()


async def _refuse_model(store, name: str) -> None:
    """Make the real database refuse rows whose requested_model is `name` (a stand-in for any value the
    store cannot take: the writer cannot tell the two apart, and must not need to)."""
    if store.dialect == "sqlite":
        await store.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON ledger WHEN NEW.requested_model = '{name}' "
                            "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    else:
        await store.execute(f"ALTER TABLE ledger ADD CONSTRAINT refuse CHECK (requested_model <> '{name}')")


async def test_a_row_the_store_refuses_is_set_aside_and_the_rest_written(store_url, tmp_path, records):
    store = await open_store(store_url)
    await _refuse_model(store, "poison")
    jdir = tmp_path / "j"
    w = await LedgerWriter.start(store, jdir, flush_interval_s=3600)
    try:
        for i in range(40):
            w.record({"request_id": f"r{i}", "requested_model": "poison" if i in (7, 31) else "ok",
                      "cost_usd": 0.001})
        await w.flush()  # the whole batch failed, and every retry with it
        assert w.pending == 0 and w.set_aside == 2
        got = await store.fetchone("SELECT COUNT(*) AS n FROM ledger")
        assert got["n"] == 38
        q = [orjson.loads(x) for x in (jdir / QUARANTINE).read_bytes().splitlines()]
        assert sorted(x["row"]["request_id"] for x in q) == ["r31", "r7"]
        lines = [m for lvl, m in records if "set aside" in m and lvl == logging.ERROR]
        assert len(lines) == 2 and all(QUARANTINE in m and "\n" not in m for m in lines)
        w.record({"request_id": "after", "requested_model": "ok"})
        await w.flush()  # the ledger goes on
        assert (await store.fetchone("SELECT COUNT(*) AS n FROM ledger"))["n"] == 39
    finally:
        await w.close(timeout_s=1)
        await store.close()


async def test_a_refused_row_in_a_stopped_writers_journal_does_not_stop_the_start(store_url, tmp_path):
    jdir = tmp_path / "j"
    bad = _legacy("b2", "low")
    bad[4] = "poison"
    _write_journal(jdir, "deadhost-2-bbbb", [_legacy("b1", "low"), bad, _legacy("b3", [])])
    store = await open_store(store_url)
    await _refuse_model(store, "poison")
    try:
        w = await LedgerWriter.start(store, jdir)  # raised: the gateway did not come up
        assert w.replayed == 2 and w.set_aside == 1
        await w.close()
    finally:
        await store.close()


async def test_a_store_outage_is_not_a_bad_row(tmp_path, records):
    """A store that is down keeps every row journaled (nothing set aside), and the shutdown line says why."""
    store = await open_store(f"sqlite:///{tmp_path / 'tg.db'}")

    async def down(rows):
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5999)")

    real, store.insert_ledger = store.insert_ledger, down
    w = await LedgerWriter.start(store, tmp_path / "j", flush_interval_s=3600)
    for i in range(3):
        w.record({"request_id": f"r{i}"})
    with pytest.raises(ConnectionRefusedError):
        await w.flush()
    await w.close(timeout_s=0.1)
    assert w.set_aside == 0 and not (tmp_path / "j" / QUARANTINE).exists()
    msg = next(m for _, m in records if "shutdown" in m)
    assert "Connect call failed" in msg and "3 rows" in msg
    store.insert_ledger = real
    w2 = await LedgerWriter.start(store, tmp_path / "j")
    assert w2.replayed == 3
    await w2.close()
    await store.close()
