"""Crash and resume: `tiergate serve` is killed with SIGKILL in the middle of a batch and started again
on the same database. The batch must finish with every line answered exactly once in the output
file and exactly one ledger row per line (a line re-run after the crash is not billed twice)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import free_port

N_LINES = 30


def _start(cfg: Path, port: int, log: Path, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiergate.cli", "serve", "--config", str(cfg), "--port", str(port)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tiergate serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"tiergate serve did not come up: {log.read_text()[-2000:]}")


@pytest.mark.slow
def test_kill_mid_batch_and_resume(tmp_path):
    db = tmp_path / "tiergate.db"
    log = tmp_path / "serve.log"
    env = {**os.environ, "TG_CRASH_UPSTREAM_KEY": "sk-crash-test", "TIERGATE_JOURNAL_DIR": str(tmp_path / "journal")}
    env.pop("TIERGATE_MASTER_KEY", None)
    with FakeOpenAI(api_key="sk-crash-test") as up:
        up.fail_every("slow", 1, path="/chat/completions", seconds=0.25)
        cfg = tmp_path / "tiergate.yaml"
        cfg.write_text(yaml.safe_dump({
            "models": [{"name": "gpt-4o-mini", "deployments": [
                {"provider": "openai", "api_base": up.url, "api_key": "env:TG_CRASH_UPSTREAM_KEY"}]}],
            "storage": f"sqlite:///{db}",
            "batches": {"concurrency": 4, "lease_s": 1.5, "poll_s": 0.1},
        }))
        port = free_port()
        proc = _start(cfg, port, log, env)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
            lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"item {i}"}]}}
                     for i in range(N_LINES)]
            f = client.files.create(file=("in.jsonl", "\n".join(json.dumps(x) for x in lines).encode()),
                                    purpose="batch")
            b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
            deadline = time.time() + 30
            while client.batches.retrieve(b.id).request_counts.completed < 6:
                assert time.time() < deadline
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)  # mid-batch: lines in flight, ledger rows in the journal
            proc.wait(timeout=10)
            with sqlite3.connect(db) as conn:
                done_before = conn.execute("SELECT COUNT(*) FROM batch_lines WHERE batch_id = ? AND state = 'done'",
                                           (b.id,)).fetchone()[0]
                running = conn.execute("SELECT COUNT(*) FROM batch_lines WHERE batch_id = ? AND state = 'running'",
                                       (b.id,)).fetchone()[0]
            assert 6 <= done_before < N_LINES and running > 0, (done_before, running)

            port = free_port()
            proc = _start(cfg, port, log, env)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
            deadline = time.time() + 60
            while (client_counts := client.batches.retrieve(b.id)).status != "completed":
                assert time.time() < deadline, client_counts
                time.sleep(0.1)
            b = client_counts
            assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (N_LINES, N_LINES, 0)
            out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
            ids = [o["custom_id"] for o in out]
            assert sorted(ids) == sorted(f"line-{i}" for i in range(N_LINES))  # none lost, none twice
            for o in out:
                assert o["response"]["body"]["choices"][0]["message"]["content"] == f"echo: item {o['custom_id'][5:]}"
            # the upstream saw some lines twice (in flight at the kill), the ledger bills each line once
            assert len([r for r in up.requests if r.path.endswith("/chat/completions")]) >= N_LINES
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT request_id, status, cost_usd FROM ledger WHERE batch_id = ? AND kind = 'batch' "
                                "AND status = 'ok'", (b.id,)).fetchall()
        assert len(rows) == N_LINES and len({r[0] for r in rows}) == N_LINES
        assert all(r[2] > 0 for r in rows)


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_one_of_two_replicas_postgres(tmp_path):
    """Two `tiergate serve` replicas on PostgreSQL; one is SIGKILLed mid-batch and never comes back: the
    other finishes the batch (the dead replica's lines return when their lease lapses)."""
    import asyncio
    import secrets

    from tests.unit.test_store_fixtures import PG_BASE, _pg_up, drop_schema

    if not _pg_up():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    schema = f"tg_b_{secrets.token_hex(5)}"
    env = {**os.environ, "TG_CRASH_UPSTREAM_KEY": "sk-crash-test"}
    env.pop("TIERGATE_MASTER_KEY", None)
    procs: list[subprocess.Popen] = []
    try:
        with FakeOpenAI(api_key="sk-crash-test") as up:
            up.fail_every("slow", 1, path="/chat/completions", seconds=0.25)
            cfg = tmp_path / "tiergate.yaml"
            cfg.write_text(yaml.safe_dump({
                "models": [{"name": "gpt-4o-mini", "deployments": [
                    {"provider": "openai", "api_base": up.url, "api_key": "env:TG_CRASH_UPSTREAM_KEY"}]}],
                "storage": f"{PG_BASE}?schema={schema}",
                "batches": {"concurrency": 3, "lease_s": 1.5, "poll_s": 0.1},
            }))
            ports = [free_port(), free_port()]
            for i, port in enumerate(ports):
                procs.append(_start(cfg, port, tmp_path / f"serve{i}.log",
                                    {**env, "TIERGATE_JOURNAL_DIR": str(tmp_path / f"journal{i}")}))
            victim, survivor = (openai.OpenAI(base_url=f"http://127.0.0.1:{p}/v1", api_key="u", max_retries=0)
                                for p in ports)
            lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"item {i}"}]}}
                     for i in range(N_LINES)]
            f = victim.files.create(file=("in.jsonl", "\n".join(json.dumps(x) for x in lines).encode()),
                                    purpose="batch")
            b = victim.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
            deadline = time.time() + 30
            while survivor.batches.retrieve(b.id).request_counts.completed < 6:
                assert time.time() < deadline
                time.sleep(0.05)
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(timeout=10)
            deadline = time.time() + 60
            while (b := survivor.batches.retrieve(b.id)).status != "completed":
                assert time.time() < deadline, b
                time.sleep(0.1)
            assert b.request_counts.completed == N_LINES
            out = [json.loads(x)["custom_id"] for x in survivor.files.content(b.output_file_id).text.splitlines()]
            assert sorted(out) == sorted(f"line-{i}" for i in range(N_LINES))
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
        asyncio.run(drop_schema(schema))
