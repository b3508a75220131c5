"""A replica whose TIERGATE_KEY_PEPPER differs from the one the database's keys were made with refuses to
start with one clear line (it used to start and answer every key with a silent 401 "Incorrect API key
provided"); the database holds only a fingerprint of the pepper; the built-in default pepper with a shared
PostgreSQL storage is warned about at start-up."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from tests.helpers import free_port
from tests.unit.test_store_fixtures import fx_pg_available, fx_pg_url, fx_store_url  # noqa: F401 (fixtures)
from tiergate.accounting.keys import pepper_fingerprint
from tiergate.config import parse_config
from tiergate.server.gateway import Gateway, StartupError

MASTER = "sk-pepper-master-0123456789"
MODELS = [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}]
MISMATCH = "key pepper error: this replica's TIERGATE_KEY_PEPPER differs from the one the database's API keys"


def _config(storage: str, master: str | None = MASTER):
    return parse_config({"models": MODELS, "storage": storage},
                        env={"TIERGATE_MASTER_KEY": master} if master else {})


async def _start(storage: str, pepper: str | None, monkeypatch, tmp_path, master: str | None = MASTER) -> Gateway:
    if pepper is None:
        monkeypatch.delenv("TIERGATE_KEY_PEPPER", raising=False)
    else:
        monkeypatch.setenv("TIERGATE_KEY_PEPPER", pepper)
    monkeypatch.setenv("TIERGATE_JOURNAL_DIR", str(tmp_path / "journal"))
    return await Gateway.start(_config(storage, master))


async def test_a_replica_with_another_pepper_refuses_to_start(store_url, monkeypatch, tmp_path):
    gw = await _start(store_url, "pepper-A-0123456789", monkeypatch, tmp_path)
    try:
        info, secret = await gw.accounting.keys.create("team")
        row = await gw.accounting.store.fetchone("SELECT value FROM gateway_settings WHERE name = ?",
                                                 "key_pepper_fingerprint")
        assert row["value"] == pepper_fingerprint(b"pepper-A-0123456789")
        assert "pepper-A" not in row["value"] and len(row["value"]) == 16
    finally:
        await gw.close()
    for other in ("pepper-B-0123456789", None):  # a different pepper, and none (the built-in default)
        with pytest.raises(StartupError) as ei:
            await _start(store_url, other, monkeypatch, tmp_path)
        assert str(ei.value).startswith(MISMATCH)
        assert "pepper-A" not in str(ei.value) and "\n" not in str(ei.value)
    gw = await _start(store_url, "pepper-A-0123456789", monkeypatch, tmp_path)  # the right one still starts
    try:
        assert (await gw.accounting.authenticate(f"Bearer {secret}")).id == info.id
    finally:
        await gw.close()


async def test_an_open_gateway_checks_no_pepper(store_url, monkeypatch, tmp_path):
    gw = await _start(store_url, "pepper-A-0123456789", monkeypatch, tmp_path)
    await gw.close()
    gw = await _start(store_url, "pepper-B-0123456789", monkeypatch, tmp_path, master=None)  # uses no keys
    await gw.close()


async def test_sqlite_single_process_default_pepper_keeps_working(tmp_path, monkeypatch, records):
    storage = f"sqlite:///{tmp_path / 'tg.db'}"
    for _ in range(2):
        gw = await _start(storage, None, monkeypatch, tmp_path)
        await gw.close()
    assert not [m for lvl, m in records if lvl >= logging.WARNING and "PEPPER" in m]


@pytest.mark.parametrize("pepper", [None, "pepper-A-0123456789"])
async def test_default_pepper_with_postgresql_is_warned(pg_url, monkeypatch, tmp_path, records, pepper):
    gw = await _start(pg_url, pepper, monkeypatch, tmp_path)
    await gw.close()
    warned = [m for lvl, m in records if lvl == logging.WARNING and "TIERGATE_KEY_PEPPER is not set" in m]
    assert len(warned) == (1 if pepper is None else 0)


def _cli(args: list[str], pepper: str, tmp_path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "TIERGATE_KEY_PEPPER": pepper, "TIERGATE_MASTER_KEY": MASTER,
           "TIERGATE_JOURNAL_DIR": str(tmp_path / "journal")}
    return subprocess.run([sys.executable, "-m", "tiergate.cli", *args], check=False, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_serve_and_keys_create_say_one_line(pg_url, tmp_path):
    made = _cli(["keys", "create", "team", "--storage", pg_url], "pepper-A-0123456789", tmp_path)
    assert made.returncode == 0, made.stderr
    refused = _cli(["keys", "create", "team2", "--storage", pg_url], "pepper-B-0123456789", tmp_path)
    assert refused.returncode == 1 and refused.stderr.strip().startswith(f"tiergate: {MISMATCH}")
    config = tmp_path / "gw.yaml"
    config.write_text(f'models:\n  - name: gpt-4o-mini\n    deployments: [{{provider: sim}}]\nstorage: "{pg_url}"\n')
    out = _cli(["serve", "--config", str(config), "--port", str(free_port())], "pepper-B-0123456789", tmp_path)
    assert out.returncode == 1
    errors = [ln for ln in out.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and errors[0].startswith(f"tiergate: {MISMATCH}"), out.stderr
    assert "Traceback" not in out.stderr and "listening on" not in out.stderr
