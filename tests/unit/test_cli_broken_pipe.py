"""`tiergate keys list | head`: output to a reader that went away ends quietly (exit 141, as a command
killed by SIGPIPE), not in a BrokenPipeError traceback."""

from __future__ import annotations

import os
import subprocess
import sys


def test_output_to_a_closed_pipe_exits_quietly(tmp_path):
    env = {**os.environ, "TIERGATE_JOURNAL_DIR": str(tmp_path / "journal")}
    (tmp_path / "tg.db").touch()  # keys list --storage reads an existing database, it creates none
    proc = subprocess.Popen([sys.executable, "-m", "tiergate.cli", "keys", "list", "--storage",
                             f"sqlite:///{tmp_path / 'tg.db'}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    proc.stdout.close()  # the reader is gone before anything is written (as `head` after its lines)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, err
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err


def test_a_reader_that_stays_gets_everything(tmp_path):
    env = {**os.environ, "TIERGATE_JOURNAL_DIR": str(tmp_path / "journal")}
    (tmp_path / "tg.db").touch()  # keys list --storage reads an existing database, it creates none
    out = subprocess.run([sys.executable, "-m", "tiergate.cli", "keys", "list", "--storage",
                          f"sqlite:///{tmp_path / 'tg.db'}"], check=False, capture_output=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith(b"id "), out.stderr
