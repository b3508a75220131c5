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


def test_the_invalid_api_key_error_code_keeps_its_message():
    """`invalid_api_key: Incorrect API key provided` was logged as `invalid_api_key: *** API key provided`
    (the code read as `api_key: <value>`); real `…api_key: value` forms are still masked."""
    from tiergate.logs import scrub_text

    msg = "401 invalid_api_key: Incorrect API key provided: tg-gue***3456"
    assert scrub_text(msg) == msg
    assert scrub_text("AZURE_OPENAI_API_KEY=abcd1234efgh") == "AZURE_OPENAI_API_KEY=***"
    assert scrub_text('x-api-key: "zzzz9999"') == 'x-api-key: "***"'
