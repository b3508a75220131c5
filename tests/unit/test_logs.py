"""JSON log lines: uvicorn's records come out in the gateway's format, without uvicorn's
`color_message` field (the message again, with ANSI colour codes, meant for its console formatter)."""

from __future__ import annotations

import io
import logging

import orjson

from tiergate.logs import JsonFormatter


def test_uvicorn_color_message_is_dropped():
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("uvicorn.error.test-json")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    # what uvicorn.server does at start-up
    logger.info("Uvicorn running on %s (Press CTRL+C to quit)", "http://127.0.0.1:4000",
                extra={"color_message": "Uvicorn running on \x1b[1m%s\x1b[0m (Press CTRL+C to quit)"})
    line = orjson.loads(buf.getvalue().strip())
    assert line["msg"] == "Uvicorn running on http://127.0.0.1:4000 (Press CTRL+C to quit)"
    assert "color_message" not in line and "\x1b" not in buf.getvalue()
    assert line["logger"] == "uvicorn.error.test-json" and line["level"] == "info"
