"""Requests the gateway refuses on its own for an Anthropic model (e.g. `n=2`: Anthropic returns one
choice), end to end with the official SDK in front of the wire-checking fake Anthropic upstream: the
client gets the 400, nothing reaches the upstream, the ledger holds the one `rejected` row
docs/accounting.md defines (no `failed_attempt`, no `error`), and the dispatcher neither retries, fails
over, logs a failed attempt nor counts it against the deployment's circuit. The same for
`/v1/responses`, streaming, a batch line, and the other refusals raised while shaping a request.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time

import httpx
import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropicThread
from tests.helpers import running_gateway

CLAUDE = "claude-3-7-sonnet"
DEP = f"{CLAUDE}/0"




class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("refusals") / "tiergate.db"
    with FakeAnthropicThread("sk-ant-refusals") as fake:
        cfg = {
            "models": [
                # one failure would open the circuit, retries and a fallback are there to be (not) used
                {"name": CLAUDE, "fallbacks": ["gpt-4o-mini"],
                 "retry": {"max_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.02},
                 "circuit": {"failures": 1, "window_s": 60, "cooldown_s": 60},
                 "deployments": [{"provider": "anthropic", "api_base": fake.base_url, "api_key": "env:TG_REF_ANT",
                                  "model": "claude-3-7-sonnet-20250219"}]},
                {"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]},
            ],
            "storage": f"sqlite:///{db}",
        }
        with running_gateway(cfg, env={"TG_REF_ANT": "sk-ant-refusals"}) as url:
            yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0), fake, db, url


@pytest.fixture
def dispatch_log():
    h = _Warnings()
    lg = logging.getLogger("tiergate.dispatch")
    old = lg.level
    lg.addHandler(h)
    lg.setLevel(logging.INFO)
    try:
        yield h.lines
    finally:
        lg.removeHandler(h)
        lg.setLevel(old)


def _rows(db, rid: str) -> list[dict]:
    """Every ledger row of the request (its own and `<rid>:a<n>` attempts), once its own row is stored."""
    deadline = time.time() + 5
    while True:
        with sqlite3.connect(db) as con:
            con.row_factory = sqlite3.Row
            try:
                rows = [dict(r) for r in con.execute(
                    "SELECT request_id, kind, status, requested_model, served_model, deployment, cost_usd, error, "
                    "attempt FROM ledger WHERE request_id = ? OR request_id LIKE ? ORDER BY request_id",
                    (rid, rid + ":%"))]
            except sqlite3.OperationalError:
                rows = []
        if any(r["request_id"] == rid for r in rows) or time.time() > deadline:
            return rows
        time.sleep(0.05)


def _metrics(url: str) -> dict[str, float]:
    text = httpx.get(url.removesuffix("/v1") + "/metrics").text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _claude_series(m: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: v for k, v in m.items() if k.startswith(prefix) and f'deployment="{DEP}"' in k}


def _assert_one_rejected_row(db, rid: str, kind: str, error_start: str) -> None:
    rows = _rows(db, rid)
    assert [(r["status"], r["kind"], r["requested_model"], r["served_model"], r["deployment"]) for r in rows] == \
        [("rejected", kind, CLAUDE, None, None)], rows
    assert rows[0]["cost_usd"] == 0 and rows[0]["attempt"] == 0
    assert rows[0]["error"].startswith(error_start), rows[0]["error"]


def _assert_untouched(env, before_requests: int, before_metrics: dict[str, float], log: list[str]) -> None:
    _client, fake, _db, url = env
    assert len(fake.requests) == before_requests and fake.problems == []  # nothing reached Anthropic
    after = _metrics(url)
    assert _claude_series(after, "tiergate_circuit_state") == {
        f'tiergate_circuit_state{{model="{CLAUDE}",deployment="{DEP}"}}': 0.0}  # closed
    for prefix in ("tiergate_upstream_attempts_total", "tiergate_retries_total", "tiergate_errors_total",
                   "tiergate_fallbacks_total"):
        assert _claude_series(after, prefix) == _claude_series(before_metrics, prefix), prefix
    assert not any("attempt on" in line or "fallback" in line for line in log), log


def test_chat_n2_is_rejected_not_a_failed_attempt(env, dispatch_log):
    client, fake, db, url = env
    sent, before = len(fake.requests), _metrics(url)
    for _ in range(3):  # a counted failure would have opened the circuit (failures: 1) after the first
        with pytest.raises(openai.BadRequestError) as ei:
            client.chat.completions.create(model=CLAUDE, n=2, messages=[{"role": "user", "content": "hi"}])
        err = ei.value.response.json()["error"]
        assert (err["param"], err["code"]) == ("n", "unsupported_value")
        assert err["message"] == "Anthropic models return one choice; n must be 1"
        assert "x-tiergate-deployment" not in ei.value.response.headers
        assert "x-tiergate-fallback" not in ei.value.response.headers  # no failover to gpt-4o-mini
        _assert_one_rejected_row(db, ei.value.response.headers["x-request-id"], "chat",
                                 "400 unsupported_value: Anthropic models return one choice")
    _assert_untouched(env, sent, before, dispatch_log)
    ok = client.chat.completions.with_raw_response.create(model=CLAUDE, messages=[{"role": "user", "content": "hi"}])
    assert ok.headers["x-tiergate-deployment"] == DEP and ok.parse().choices[0].message.content == "echo: hi"


def test_streamed_chat_n2_is_rejected_too(env, dispatch_log):
    client, fake, db, url = env
    sent, before = len(fake.requests), _metrics(url)
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=CLAUDE, n=2, stream=True, messages=[{"role": "user", "content": "hi"}])
    _assert_one_rejected_row(db, ei.value.response.headers["x-request-id"], "chat", "400 unsupported_value:")
    _assert_untouched(env, sent, before, dispatch_log)


@pytest.mark.parametrize("stream", [False, True])
def test_responses_refusal_for_anthropic_is_rejected(env, dispatch_log, stream):
    client, fake, db, url = env
    sent, before = len(fake.requests), _metrics(url)
    image = [{"role": "user", "content": [{"type": "input_text", "text": "what is it?"},
                                          {"type": "input_image", "image_url": "ftp://example.com/a.png"}]}]
    with pytest.raises(openai.BadRequestError) as ei:
        client.responses.create(model=CLAUDE, input=image, stream=stream)
    err = ei.value.response.json()["error"]
    assert err["param"].endswith("image_url.url") and "http(s) URL" in err["message"]
    _assert_one_rejected_row(db, ei.value.response.headers["x-request-id"], "responses", "400 unsupported_value:")
    _assert_untouched(env, sent, before, dispatch_log)


def test_shaping_refusal_is_rejected(env, dispatch_log):
    """A reasoning effort the model does not offer is refused while shaping: also `rejected`, not `error`."""
    client, fake, db, url = env
    sent, before = len(fake.requests), _metrics(url)
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=CLAUDE, reasoning_effort="minimal",
                                       messages=[{"role": "user", "content": "hi"}])
    assert ei.value.response.json()["error"]["param"] == "reasoning_effort"
    _assert_one_rejected_row(db, ei.value.response.headers["x-request-id"], "chat", "400 unsupported_value:")
    _assert_untouched(env, sent, before, dispatch_log)


def test_upstream_400_is_still_a_failed_attempt(env, dispatch_log):
    """The contrast: a 400 Anthropic itself answers is an upstream call, recorded as before."""
    client, fake, db, _url = env
    fake.fail_next = [(400, "invalid_request_error")]
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "hi"}])
    rid = ei.value.response.headers["x-request-id"]
    assert [(r["request_id"], r["status"]) for r in _rows(db, rid)] == [(rid, "error"), (f"{rid}:a1", "failed_attempt")]
    assert any("attempt on " + DEP in line for line in dispatch_log)


def test_auto_does_not_route_to_a_model_that_would_refuse_the_request(tmp_path):
    """`model: auto` with n=2: the Anthropic candidate is ineligible (its provider would refuse), so the
    router picks a model that can answer instead of choosing one that ends in a 400."""
    db = tmp_path / "tiergate.db"
    with FakeAnthropicThread("sk-ant-refusals") as fake:
        cfg = {
            "models": [
                {"name": CLAUDE, "deployments": [{"provider": "anthropic", "api_base": fake.base_url,
                                                  "api_key": "env:TG_REF_ANT",
                                                  "model": "claude-3-7-sonnet-20250219"}]},
                {"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]},
            ],
            "routing": {"candidates": [CLAUDE, "gpt-4o-mini"]},
            "storage": f"sqlite:///{db}",
        }
        with running_gateway(cfg, env={"TG_REF_ANT": "sk-ant-refusals"}) as url:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
            msgs = [{"role": "user", "content": "Name two colours."}]
            raw = client.chat.completions.with_raw_response.create(model="auto", messages=msgs, n=2)
            assert "candidate=gpt-4o-mini" in raw.headers["x-tiergate-route"]
            assert len(raw.parse().choices) == 2
            time.sleep(0.3)
            con = sqlite3.connect(db)
            route = con.execute("SELECT route FROM ledger WHERE request_id = ?",
                                (raw.headers["x-request-id"],)).fetchone()[0]
            con.close()
            why = {c["candidate"]: c["why_not"] for c in json.loads(route)["candidates"]}
            assert "one choice" in (why[CLAUDE] or "") and why["gpt-4o-mini"] is None
            assert not fake.requests  # nothing was sent to Anthropic
