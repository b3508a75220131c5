"""`tiergate serve --port`: outside 0-65535 it is one line and exit 2 before anything starts (99999 was
announced as `listening on …:99999` while uvicorn bound another port; -1 failed after the banner);
`--port 0` takes a free port and the `listening on` line names the one it got. A port in use or a host
that cannot be bound is one line and exit 1 before the backends start (was uvicorn's JSON log line, exit 3)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest


def _env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TIERGATE_MASTER_KEY", "TIERGATE_CONFIG")}
    env["TIERGATE_STORAGE"] = f"sqlite:///{tmp_path / 'tg.db'}"
    env["TIERGATE_JOURNAL_DIR"] = str(tmp_path / "journal")
    return env


@pytest.mark.parametrize("port", ["99999", "65536", "-1"])
def test_a_port_out_of_range_is_one_line_and_exit_2(tmp_path, port):
    out = subprocess.run([sys.executable, "-m", "tiergate.cli", "serve", "--port", port], capture_output=True,
                         text=True, timeout=60, env=_env(tmp_path), check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == f"tiergate: --port must be 1-65535 (or 0 for a free port the banner names), got {port}"
    assert not (tmp_path / "tg.db").exists()


def test_port_0_serves_on_the_free_port_it_names(tmp_path):
    import httpx

    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "tiergate.cli", "serve", "--port", "0"], stdout=fh,
                                stderr=subprocess.STDOUT, env=_env(tmp_path))
    try:
        deadline = time.time() + 40
        while time.time() < deadline and proc.poll() is None and "listening on" not in log.read_text():
            time.sleep(0.1)
        text = log.read_text()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/v1$", text, re.MULTILINE)
        assert m, text
        port = int(m.group(1))
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _serve_fails(tmp_path, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "tiergate.cli", "serve", *args], capture_output=True, text=True,
                         timeout=60, env=_env(tmp_path), check=False)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "listening on" not in out.stderr and '"level"' not in out.stderr
    assert not (tmp_path / "tg.db").exists()  # said before the backends start
    return out


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _serve_fails(tmp_path, "--port", str(port))
    assert out.stderr.splitlines()[-1] == (f"tiergate: cannot listen on 127.0.0.1:{port}: the port is in use (another "
                                           "process listens on it): stop it or pass another --port")


def test_a_host_that_cannot_be_bound_is_one_line_and_exit_1(tmp_path):
    out = _serve_fails(tmp_path, "--port", "4000", "--host", "no-such-host.invalid")
    assert re.fullmatch(r"tiergate: cannot listen on no-such-host\.invalid:4000: unknown host 'no-such-host\.invalid' "
                        r"\(.+\): check --host", out.stderr.splitlines()[-1]), out.stderr
    out = _serve_fails(tmp_path, "--port", "4000", "--host", "192.0.2.77")  # TEST-NET-1: not this machine's
    assert out.stderr.splitlines()[-1] == ("tiergate: cannot listen on 192.0.2.77:4000: this machine has no such "
                                           "address: check --host (127.0.0.1, 0.0.0.0 or one of its own addresses)")


def test_the_listening_url_names_a_host():
    """`--host ""` (every address) printed `listening on http://:PORT/v1`."""
    from tiergate.cli import _host_text

    assert _host_text("") == "0.0.0.0" and _host_text("::1") == "[::1]" and _host_text("127.0.0.1") == "127.0.0.1"
