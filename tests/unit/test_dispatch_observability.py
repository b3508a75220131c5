"""Metrics exposition and structured logs: Prometheus text format, ledger rows -> counters, JSON log
lines with the request id and no secrets."""

from __future__ import annotations

import io
import logging
import re

import orjson

from tiergate.logs import configure_logging, log_request, scrub
from tiergate.metrics import Metrics

_LINE = re.compile(r'^[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? -?[0-9.e+-]+$|^# (HELP|TYPE) ')


def test_render_is_valid_exposition_text():
    m = Metrics()
    m.upstream("gpt-4o", "gpt-4o/0", "ok", 0.12, 0.05)
    m.upstream("gpt-4o", "gpt-4o/1", "http_503", 0.01, None)
    m.retry("gpt-4o", "gpt-4o/0")
    m.fallback("gpt-4o", "gpt-4o-mini")
    m.circuit_state("gpt-4o", "gpt-4o/1", 2)
    m.observe_request({"served_model": 'we"ird\nname', "deployment": "d/0", "status": "ok", "latency_ms": 250.0,
                       "ttft_ms": 40.0, "input_tokens": 10, "output_tokens": 5, "reasoning_tokens": 3,
                       "cached_tokens": 0, "cost_usd": 0.0012})
    text = m.render().decode()
    for line in text.strip().splitlines():
        assert _LINE.match(line), line
    assert 'tiergate_upstream_attempts_total{model="gpt-4o",deployment="gpt-4o/1",outcome="http_503"} 1' in text
    assert 'tiergate_errors_total{model="gpt-4o",deployment="gpt-4o/1",type="http_503"} 1' in text
    assert 'tiergate_circuit_state{model="gpt-4o",deployment="gpt-4o/1"} 2' in text
    assert 'tiergate_fallbacks_total{from_model="gpt-4o",to_model="gpt-4o-mini"} 1' in text
    assert 'name="we\\"ird\\nname"' not in text  # label is `model`
    assert 'model="we\\"ird\\nname"' in text
    assert 'tiergate_tokens_total{model="we\\"ird\\nname",deployment="d/0",kind="completion"} 5' in text
    assert 'kind="reasoning"} 3' in text and 'kind="cached"' not in text
    assert "tiergate_cost_usd_total" in text and "0.0012" in text


def test_histogram_buckets_are_cumulative():
    m = Metrics()
    for v in (0.004, 0.2, 0.2, 7.0, 1000.0):
        m.upstream("m", "d", "ok", v, v)
    text = m.render().decode()
    le = dict(re.findall(r'tiergate_upstream_latency_seconds_bucket\{model="m",deployment="d",le="([^"]+)"\} (\d+)',
                         text))
    assert le["0.005"] == "1" and le["0.25"] == "3" and le["10"] == "4" and le["300"] == "4" and le["+Inf"] == "5"
    assert 'tiergate_upstream_latency_seconds_count{model="m",deployment="d"} 5' in text


def test_failed_attempt_rows_count_but_do_not_bill_latency():
    m = Metrics()
    m.observe_request({"served_model": "m", "deployment": "d", "status": "failed_attempt", "latency_ms": 5})
    assert m.requests.get(("m", "d", "failed_attempt")) == 1
    assert m.request_duration.count(("m", "d")) == 0


def test_json_log_lines_have_request_id_and_no_secrets():
    logger = logging.getLogger("tiergate")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        _check_json_logs()
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def _check_json_logs():
    buf = io.StringIO()
    configure_logging("INFO", stream=buf)
    configure_logging("INFO", stream=buf)  # idempotent: still one line per record
    log_request("req_123", status=200, model="gpt-4o", latency_ms=12.5, prompt_tokens=10,
                api_key="sk-proj-abcdefghijklmnopqrstuvwxyz", headers={"Authorization": "Bearer abcdefghijklmnop"},
                error="upstream https://user:pw@host/v1?api_key=SECRET123 said sk-abcdefghijklmnopqrstu")
    logging.getLogger("tiergate.dispatch").warning("key was sk-live1234567890abcdef in the message")
    lines = buf.getvalue().strip().splitlines()
    assert len(lines) == 2
    rec = orjson.loads(lines[0])
    assert rec["request_id"] == "req_123" and rec["status"] == 200 and rec["event"] == "request"
    assert rec["prompt_tokens"] == 10 and rec["model"] == "gpt-4o"
    out = buf.getvalue()
    for secret in ("abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnop", "SECRET123", ":pw@", "1234567890abcdef",
                   "ghijklmnopqrstu"):
        assert secret not in out, secret
    assert orjson.loads(lines[1])["level"] == "warning"


def test_scrub_keeps_token_counts():
    assert scrub({"total_tokens": 5, "max_tokens": 9, "token": "abc", "password": "x"}) == {
        "total_tokens": 5, "max_tokens": 9, "token": "***", "password": "***"}
