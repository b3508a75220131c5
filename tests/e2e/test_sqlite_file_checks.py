"""The embedded SQLite database: a start-up that creates it says so (a removed file used to come back
silently empty, and every issued key was then refused with no hint why), and `GET /ready` reports a
database file removed or replaced under the running gateway (it kept writing to the unlinked file and said
"ready")."""

from __future__ import annotations

import os

import httpx

from tests.helpers import running_gateway

MODELS = [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}]


def test_creating_the_database_is_said_and_a_removed_file_is_not_ready(tmp_path, records):
    db = tmp_path / "tg.db"
    with running_gateway({"models": MODELS, "storage": f"sqlite:///{db}"}) as base:
        root = base.removesuffix("/v1")
        assert httpx.get(root + "/ready", timeout=10).status_code == 200
        created = [m for _lvl, m in records if "created a new, empty SQLite database" in m]
        assert created and str(db) in created[0]
        for p in (db, tmp_path / "tg.db-wal", tmp_path / "tg.db-shm"):
            if p.exists():
                os.unlink(p)
        r = httpx.get(root + "/ready", timeout=10)
        assert r.status_code == 503 and "was removed" in r.json()["checks"]["storage"]
        assert httpx.get(root + "/health", timeout=10).status_code == 200  # still alive: liveness


def test_an_existing_database_is_opened_quietly(tmp_path, records):
    db = tmp_path / "tg.db"
    with running_gateway({"models": MODELS, "storage": f"sqlite:///{db}"}):
        pass
    records.clear()
    with running_gateway({"models": MODELS, "storage": f"sqlite:///{db}"}) as base:
        assert httpx.get(base.removesuffix("/v1") + "/ready", timeout=10).status_code == 200
    assert not [m for _lvl, m in records if "created a new, empty SQLite database" in m]
