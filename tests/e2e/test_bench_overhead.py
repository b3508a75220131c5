"""bench/overhead.py still runs end to end: loopback upstream, a real `tiergate serve`, wrk load, CPU
read from /proc, a table with no errors. Short cells; skipped where wrk is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"),
]


def test_the_overhead_benchmark_runs_direct_and_tiergate_without_errors(tmp_path):
    out = tmp_path / "cells.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "overhead.py"), "--targets", "direct,tiergate", "--concurrency", "1,4",
         "--duration", "1", "--warmup", "0", "--probe", "0.3", "--json-out", str(out)],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    cells = json.loads(out.read_text())["cells"]
    assert {(c["target"], c["mode"], c["concurrency"]) for c in cells} == {
        (t, m, c) for t in ("direct", "tiergate") for m in ("json", "stream") for c in (1, 4)}
    for c in cells:
        assert c["errors"] == 0 and c["requests"] > 0, c
        if c["target"] == "tiergate":
            assert c["gw_cpu_ms_per_req"] is not None and c["gw_cpu_ms_per_req"] > 0
    assert "| tiergate | stream | 4 |" in run.stdout
