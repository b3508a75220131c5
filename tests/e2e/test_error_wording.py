"""Client-facing wording of transport failures, end to end (official `openai` SDK, loopback fake upstream):
a refused connection, a reset before the answer and a connection cut mid-answer are told in plain words
that name the deployment id, never the upstream's host or port nor a library exception repr; the same
holds for the ledger's `error` column. The operator log keeps the exception detail."""

from __future__ import annotations

import logging
import sqlite3
import time

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import free_port, running_gateway

LEAKS = ("127.0.0.1", "ssl:default", "Connect call failed", "TransferEncodingError", "Response payload",
         "ClientPayloadError", "ClientOSError", "ServerDisconnected", "Errno", "<", "400")


def _config(up: FakeOpenAI, dead_port: int, db: str) -> dict:
    def model(name: str, base: str) -> dict:
        return {"name": name, "catalog": "gpt-4o-mini",
                "timeouts": {"connect": 1, "first_token": 2, "stream_idle": 2, "total": 5},
                "retry": {"max_retries": 0}, "circuit": {"failures": 50, "window_s": 30, "cooldown_s": 30},
                "deployments": [{"id": f"{name}/0", "provider": "openai_compatible", "api_base": base,
                                 "model": "gpt-4o-mini"}]}

    return {"models": [model("refused", f"http://127.0.0.1:{dead_port}/v1"), model("flaky", up.url)],
            "storage": f"sqlite:///{db}"}


def _clean(text: str, port: int) -> None:
    for leak in (*LEAKS, str(port)):
        assert leak not in text, f"{leak!r} leaked into {text!r}"


def _ledger_errors(db: str, n: int) -> list[str]:
    deadline = time.time() + 5
    while True:
        with sqlite3.connect(db) as con:
            try:
                rows = [r[0] for r in con.execute("SELECT error FROM ledger WHERE error IS NOT NULL")]
            except sqlite3.OperationalError:
                rows = []
        if len(rows) >= n or time.time() > deadline:
            return rows
        time.sleep(0.05)


def test_transport_failures_are_worded_for_clients_and_ledger(tmp_path, caplog):
    db = str(tmp_path / "t.db")
    dead = free_port()
    msgs = [{"role": "user", "content": "hello there"}]
    with FakeOpenAI() as up, running_gateway(_config(up, dead, db)) as url:
        up_port = int(up.url.rsplit(":", 1)[1].split("/")[0])
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=15)
        seen: list[str] = []
        with caplog.at_level(logging.WARNING, logger="tiergate.dispatch"):
            # refused connection
            with pytest.raises(openai.APIStatusError) as ei:
                client.chat.completions.create(model="refused", messages=msgs)
            assert ei.value.status_code == 502
            assert "could not connect to deployment refused/0 (the connection was refused)" in ei.value.message
            seen.append(ei.value.message)
            # reset before the upstream answered
            up.fail_next("reset")
            with pytest.raises(openai.APIStatusError) as ei:
                client.chat.completions.create(model="flaky", messages=msgs)
            assert ei.value.status_code == 502 and "deployment flaky/0: " in ei.value.message
            seen.append(ei.value.message)
            # body cut halfway (non-streaming), and a stream cut after the first token
            up.fail_next("cut")
            with pytest.raises(openai.APIStatusError) as ei:
                client.chat.completions.create(model="flaky", messages=msgs)
            assert ei.value.status_code == 502
            assert "deployment flaky/0: the upstream closed the connection before the answer was complete" in \
                ei.value.message or "deployment flaky/0: the connection to the upstream was reset" in ei.value.message
            seen.append(ei.value.message)
            up.fail_next("cut", after=2)
            got = []
            with pytest.raises(openai.APIError) as ei:
                for c in client.chat.completions.create(model="flaky", messages=msgs, stream=True):
                    got.extend(ch.delta.content or "" for ch in c.choices)
            assert "".join(got) == "echo:"
            assert "deployment flaky/0: " in ei.value.message and "before the answer was complete" in ei.value.message
            seen.append(ei.value.message)
        for m in seen:
            _clean(m, dead)
            _clean(m, up_port)
        errors = _ledger_errors(db, 4)
        assert len(errors) >= 4 and any("could not connect to deployment refused/0" in e for e in errors)
        for e in errors:
            _clean(e, dead)
            _clean(e, up_port)
    # the operator log keeps the library's detail (exception type) for diagnosis
    assert any("ClientConnectorError" in r.getMessage() for r in caplog.records)


async def test_anthropic_transport_failures_use_the_same_wording():
    from tiergate.providers.anthropic import AnthropicProvider
    from tiergate.providers.base import Deployment, Timeouts, UpstreamError
    from tiergate.providers.http import SharedSession

    port = free_port()
    dep = Deployment(id="claude/0", model="claude", provider="anthropic", api_base=f"http://127.0.0.1:{port}")
    t = Timeouts(connect=1, first_token=1, stream_idle=1, total=2)
    body = {"model": "claude-3-5-haiku", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    async with SharedSession() as sessions:
        p = AnthropicProvider(dep, sessions)
        for stream in (False, True):
            with pytest.raises(UpstreamError) as ei:
                if stream:
                    async for _ in p.chat_stream(body, t):
                        pass
                else:
                    await p.chat(body, t)
            assert ei.value.message == "could not connect to deployment claude/0 (the connection was refused)"
            assert ei.value.kind == "connect" and str(port) in (ei.value.detail or "")
