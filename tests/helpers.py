"""Test helpers: run a real tiergate server on a loopback port (uvicorn in a thread, with
its own event loop) so tests can drive it with the official `openai` SDK over real HTTP."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_gateway(raw_config: dict[str, Any], env: dict[str, str] | None = None,
                    loop: str = "asyncio") -> Iterator[str]:
    """Start the gateway for `raw_config` (a dict in the YAML shape) and yield its base URL (`…/v1`).
    `loop="uvloop"` runs it as `tiergate serve` does (uvloop rounds timers to whole milliseconds)."""
    import os

    import uvicorn

    from tiergate.config import parse_config
    from tiergate.server.app import build_app

    config = parse_config(raw_config, source="<test>", env={**os.environ, **(env or {})})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(config), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", loop=loop))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("the gateway did not start (see the log above)")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def ledger_rows(db: str | Path, where: str, *params: Any, columns: str = "*", timeout: float = 5.0,
                ready: Callable[[list[dict[str, Any]]], bool] = bool) -> list[dict[str, Any]]:
    """The gateway's SQLite ledger rows `SELECT columns FROM ledger WHERE where` as dicts, polled until
    `ready(rows)` (default: any row) or `timeout` seconds (rows are written just after the answer)."""
    deadline = time.time() + timeout
    while True:
        con = sqlite3.connect(db)
        con.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in con.execute(f"SELECT {columns} FROM ledger WHERE {where}", params)]
        except sqlite3.OperationalError:  # the table is created at the gateway's start
            rows = []
        finally:
            con.close()
        if ready(rows) or time.time() > deadline:
            return rows


def submit_batch(client: Any, lines: list[dict[str, Any]], endpoint: str = "/v1/chat/completions") -> Any:
    """Upload `lines` as a batch input file and create the batch with the official SDK `client`."""
    import json

    f = client.files.create(file=("in.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")


def wait_batch(client: Any, batch_id: str, statuses: str | tuple[str, ...], timeout: float = 20.0,
               poll_s: float = 0.1) -> Any:
    """Poll the batch until its status is one of `statuses`; fail the test after `timeout` seconds."""
    wanted = (statuses,) if isinstance(statuses, str) else statuses
    deadline = time.time() + timeout
    while (b := client.batches.retrieve(batch_id)).status not in wanted:
        assert time.time() < deadline, (b.status, b.request_counts)
        time.sleep(poll_s)
    return b
