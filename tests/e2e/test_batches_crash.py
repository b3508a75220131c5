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
