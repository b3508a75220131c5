"""providers/http.py: the shared session factory, credential scrubbing, retry hints and header selection;
and the fake upstream's own control API (sync mode, per-N faults, path filters), which other suites use."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import orjson
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tiergate.providers.http import SharedSession, parse_duration, parse_retry_after, pick_headers, scrub


@pytest.mark.parametrize("raw,seconds", [("6m0s", 360.0), ("12ms", 0.012), ("1s", 1.0), ("1.5s", 1.5),
                                         ("1h2m3s", 3723.0), ("20", 20.0), ("soon", None), ("5x", None)])
def test_parse_duration(raw, seconds):
    assert parse_duration(raw) == (pytest.approx(seconds) if seconds is not None else None)


def test_parse_retry_after_precedence():
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "9"}) == 9.0
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < parse_retry_after({"retry-after": when}) <= 30
    assert parse_retry_after({"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "6m0s"}) == 2.0
    exhausted = {"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "6m0s",
                 "x-ratelimit-remaining-tokens": "0", "x-ratelimit-remaining-requests": "10"}
    assert parse_retry_after(exhausted) == 360.0
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "garbage"}) is None


def test_scrub_removes_credentials():
    key = "sk-proj-abcdefghijklmnopqrstuvwxyz012345"
    text = (f"bad key {key}; Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig; "
            f"https://alice:s3cret@host.example/v1?api-version=1&api-key=zzz123 and other-sk-live-ABCDEFGHIJKL")
    out = scrub(text, [key])
    for secret in (key, "eyJhbGciOiJIUzI1NiJ9", "s3cret", "alice:", "zzz123", "ABCDEFGHIJKL"):
        assert secret not in out
    assert "host.example" in out and "api-version=1" in out
    assert scrub("nothing to hide here", ["k"]) == "nothing to hide here"
    assert scrub("sk-ab", []) == "sk-ab"


def test_pick_headers_keeps_ids_and_rate_limits_only():
    got = pick_headers({"X-Request-Id": "req_1", "x-ratelimit-remaining-tokens": "10", "Set-Cookie": "a=b",
                        "Content-Type": "application/json", "openai-processing-ms": "12", "Retry-After": "3"})
    assert got == {"x-request-id": "req_1", "x-ratelimit-remaining-tokens": "10", "openai-processing-ms": "12",
                   "retry-after": "3"}


async def test_shared_session_is_shared_and_closed():
    sessions = SharedSession()
    s1 = sessions()
    assert sessions() is s1 and not s1.closed
    await sessions.close()
    assert s1.closed
    s2 = sessions()
    assert s2 is not s1
    await sessions.close()


def test_shared_session_needs_a_loop_and_follows_new_loops():
    sessions = SharedSession()
    with pytest.raises(RuntimeError):
        sessions()

    async def get():
        return sessions()

    a = asyncio.run(get())
    b = asyncio.run(get())
    assert a is not b  # a new loop gets a new session
    asyncio.run(sessions.close())


def _post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=orjson.dumps(body), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def test_fake_upstream_sync_mode_and_fault_control():
    body = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}
    with FakeOpenAI() as up:
        assert up.port > 0 and up.url.endswith("/v1")
        status, resp = _post(up.url + "/chat/completions", body)
        assert status == 200 and resp["choices"][0]["message"]["content"] == "echo: q"
        assert up.last.body["messages"][0]["role"] == "system" and up.last.path == "/v1/chat/completions"
        up.fail_every("503", 3, path="/chat/completions")
        statuses = [_post(up.url + "/chat/completions", body)[0] for _ in range(6)]
        assert statuses == [200, 200, 503, 200, 200, 503]
        up.fail_next("500", count=2, path="/responses")
        assert _post(up.url + "/responses", {"model": "m", "input": "x"})[0] == 500
        up.clear_faults()
        assert _post(up.url + "/responses", {"model": "m", "input": "x"})[0] == 200
        assert _post(up.base_url + "/openai/deployments/d/chat/completions", body)[0] == 404  # no api-version
        status, resp = _post(up.base_url + "/openai/deployments/d/chat/completions?api-version=2024-10-21", body)
        assert status == 200 and resp["model"] == "d"
        with urllib.request.urlopen(up.url + "/models", timeout=5) as r:
            assert "gpt-4o-mini" in [m["id"] for m in orjson.loads(r.read())["data"]]
        up.api_key = "k"
        assert _post(up.url + "/chat/completions", body)[0] == 401
        assert _post(up.url + "/chat/completions", body, {"Authorization": "Bearer k"})[0] == 200
        n = len(up.requests)
        up.clear()
        assert n > 10 and up.requests == []
    assert up._thread is None


def test_transport_failure_words_each_exception_plainly():
    import errno

    import aiohttp
    from aiohttp.client_reqrep import ConnectionKey

    from tiergate.providers.http import transport_failure

    key = ConnectionKey("10.1.2.3", 47199, False, True, None, None, None)
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"))
    cases = [
        (refused, False, "connect", "could not connect to deployment d/0 (the connection was refused)"),
        (aiohttp.ClientConnectorError(key, OSError(errno.EHOSTUNREACH, "no route")), False, "connect",
         "could not connect to deployment d/0 (the upstream is unreachable)"),
        (aiohttp.ClientPayloadError("Response payload is not completed: <TransferEncodingError: 400, message="
                                    "'Not enough data to satisfy transfer length header.'>"), True, "stream_cut",
         "deployment d/0: the upstream closed the connection before the answer was complete"),
        (aiohttp.ServerDisconnectedError(), True, "stream_cut",
         "deployment d/0: the upstream closed the connection before the answer was complete"),
        (aiohttp.ServerDisconnectedError(), False, "connect",
         "deployment d/0: the upstream closed the connection without answering"),
        (aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"), True, "stream_cut",
         "deployment d/0: the connection to the upstream was reset before the answer was complete"),
        (aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"), False, "connect",
         "deployment d/0: the connection to the upstream was reset before it answered"),
    ]
    for exc, after, kind, message in cases:
        k, code, msg, detail = transport_failure(exc, "d/0", after_headers=after, secrets=("sk-secret",))
        assert (k, msg) == (kind, message)
        assert code == ("upstream_stream_cut" if kind == "stream_cut" else "upstream_unreachable")
        for leak in ("10.1.2.3", "47199", "400", "Transfer", "Errno", "<"):
            assert leak not in msg
        assert type(exc).__name__ in detail  # the operator log keeps what the library said
