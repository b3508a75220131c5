"""A storage or Redis URL the gateway cannot use ends start-up with one clear line (which backend, where,
why, what to check; never a password) and a non-zero exit, not a JSON-encoded traceback; `listening on`
is printed only once the backends are up."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.helpers import free_port
from tiergate.config import parse_config
from tiergate.server.gateway import Gateway, StartupError

MODELS = [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}]


def _config(tmp_path, **raw):
    return parse_config({"models": MODELS, **raw}, env={})


async def test_postgresql_refused_is_one_storage_line(tmp_path):
    port = free_port()  # nothing listens there
    cfg = _config(tmp_path, storage=f"postgresql://postgres:s3cret-pw@127.0.0.1:{port}/test")
    with pytest.raises(StartupError) as ei:
        await Gateway.start(cfg)
    msg = str(ei.value)
    assert msg == (f"storage error: cannot connect to PostgreSQL at 127.0.0.1:{port} (connection refused): "
                   "check storage: in the config")
    assert "s3cret-pw" not in msg


async def test_redis_refused_is_one_redis_line(tmp_path):
    port = free_port()
    cfg = _config(tmp_path, storage=f"sqlite:///{tmp_path / 'tg.db'}",
                  redis=f"redis://:pw-r3dis@127.0.0.1:{port}/7?prefix=judge:")
    with pytest.raises(StartupError) as ei:
        await Gateway.start(cfg)
    msg = str(ei.value)
    assert msg == (f"redis error: cannot connect to Redis at 127.0.0.1:{port} (db 7) (connection refused): "
                   "check redis: in the config")
    assert "pw-r3dis" not in msg


async def test_sqlite_that_cannot_be_opened_is_a_storage_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = _config(tmp_path, storage=f"sqlite:///{blocker / 'sub' / 'tg.db'}")  # a file where a folder must be
    with pytest.raises(StartupError) as ei:
        await Gateway.start(cfg)
    assert str(ei.value).startswith(f"storage error: cannot open the SQLite database {blocker / 'sub' / 'tg.db'} (")


def _serve(tmp_path, storage: str, redis: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    path = tmp_path / "gw.yaml"
    lines = ["models:", "  - name: gpt-4o-mini", "    deployments: [{provider: sim}]", f'storage: "{storage}"']
    if redis:
        lines.append(f'redis: "{redis}"')
    path.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "TIERGATE_JOURNAL_DIR": str(tmp_path / "journal")}
    return subprocess.run([sys.executable, "-m", "tiergate.cli", "serve", "--config", str(path), "--port",
                           str(free_port())], check=False, capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.mark.parametrize("backend", ["postgresql", "redis"])
def test_serve_says_one_line_and_exits_non_zero(tmp_path, backend):
    port = free_port()
    if backend == "postgresql":
        out = _serve(tmp_path, f"postgresql://postgres:s3cret-pw@127.0.0.1:{port}/test")
        want = f"tiergate: storage error: cannot connect to PostgreSQL at 127.0.0.1:{port} (connection refused)"
    else:
        out = _serve(tmp_path, f"sqlite:///{tmp_path / 'tg.db'}", f"redis://127.0.0.1:{port}/0?prefix=judge:")
        want = f"tiergate: redis error: cannot connect to Redis at 127.0.0.1:{port} (connection refused)"
    assert out.returncode == 1, out.stderr
    errors = [ln for ln in out.stderr.splitlines() if " error: " in ln]
    assert len(errors) == 1 and errors[0].startswith(want), out.stderr
    assert "Traceback" not in out.stderr and "listening on" not in out.stderr
    assert "s3cret-pw" not in out.stderr


def test_keys_with_a_bad_storage_is_one_line(tmp_path):
    port = free_port()
    out = subprocess.run([sys.executable, "-m", "tiergate.cli", "keys", "list", "--storage",
                          f"postgresql://postgres:s3cret-pw@127.0.0.1:{port}/test"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip() == (f"tiergate: storage error: cannot connect to PostgreSQL at 127.0.0.1:{port} "
                                  "(connection refused): check --storage")


def _serve_sim(tmp_path, port: int, **env_extra: str):
    """`tiergate serve` on the sim provider and a SQLite file in `tmp_path`, as a child process: (proc, log path)."""
    path = tmp_path / "gw.yaml"
    path.write_text(f'models:\n  - name: gpt-4o-mini\n    deployments: [{{provider: sim}}]\nstorage: "sqlite:///{tmp_path / "tg.db"}"\n')
    env = {k: v for k, v in os.environ.items() if k != "TIERGATE_MASTER_KEY"}
    env.update(env_extra)
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "tiergate.cli", "serve", "--config", str(path), "--port",
                                 str(port)], stdout=fh, stderr=subprocess.STDOUT, env=env)
    return proc, log


def test_listening_is_said_once_the_backends_are_up(tmp_path):
    import httpx

    port = free_port()
    proc, log = _serve_sim(tmp_path, port, TIERGATE_JOURNAL_DIR=str(tmp_path / "journal"))
    try:
        deadline = time.time() + 30
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        text = log.read_text()
        lines = text.splitlines()
        listening = [i for i, ln in enumerate(lines) if "listening on" in ln]
        opened = [i for i, ln in enumerate(lines) if "no master key" in ln]  # said by Gateway.start
        assert listening and opened and opened[0] < listening[0], text
        assert lines[listening[0]] == f"tiergate: storage sqlite:///{tmp_path / 'tg.db'}; listening on http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_ctrl_c_stops_the_server_quietly(tmp_path):
    """Since the server started its backends itself, Ctrl-C ended in a KeyboardInterrupt traceback and exit
    status 130 (uvicorn re-raises the SIGINT it handled; asyncio's handler then cancelled the shutdown)."""
    import signal

    import httpx

    port = free_port()
    proc, log = _serve_sim(tmp_path, port)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=2, json={
                        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 0 and "Traceback" not in text and "KeyboardInterrupt" not in text, text[-2000:]
    assert list((tmp_path).glob("tg.db-ledger-journal/*.jsonl")) == []  # the shutdown flushed the ledger


async def test_a_redis_password_given_as_a_query_parameter_is_not_printed(tmp_path):
    port = free_port()
    cfg = _config(tmp_path, storage=f"sqlite:///{tmp_path / 'tg.db'}",
                  redis=f"redis://127.0.0.1:{port}/7?password=pw-qu3ry&prefix=judge:")
    with pytest.raises(StartupError) as ei:
        await Gateway.start(cfg)
    assert "pw-qu3ry" not in str(ei.value) and "pw-qu3ry" not in repr(ei.value.__cause__ or "")
