"""The gateway's own error answers (unhandled exception, unknown URL, wrong method) carry an
`x-request-id`; for a 500 it is the id logged with the traceback, which the message asks the client
to report."""

from __future__ import annotations

import logging

from starlette.requests import Request

from tiergate.server import app as app_module


def _request(path: str = "/v1/chat/completions", method: str = "POST") -> Request:
    return Request({"type": "http", "method": method, "path": path, "headers": [], "query_string": b""})


async def test_a_500_carries_the_id_logged_with_the_traceback(caplog):
    with caplog.at_level(logging.ERROR, logger="tiergate"):
        try:
            raise RuntimeError("boom")
        except RuntimeError as exc:
            r = await app_module._server_error(_request(), exc)
    rid = r.headers["x-request-id"]
    assert r.status_code == 500 and rid.startswith("req_")
    assert any(rid in rec.getMessage() for rec in caplog.records)


async def test_unknown_url_and_wrong_method_carry_an_id():
    for handler, status in ((app_module._not_found, 404), (app_module._method_not_allowed, 405)):
        r = await handler(_request("/v1/nope", "GET"), Exception())
        assert r.status_code == status and r.headers["x-request-id"].startswith("req_")
