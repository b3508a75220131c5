"""A streamed `/v1/responses` answer whose client hangs up mid-answer, on both paths (translated: a
model with fallbacks on the fake OpenAI upstream's chat endpoint; native: the fake's Responses
endpoint). The call is billed for what was produced (ledger status `client_disconnected`) and the
response is stored as `cancelled` with the output streamed so far, so the id the client saw in
`response.created` can still be retrieved (and chained with `previous_response_id`) instead of a 404."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import ledger_rows, running_gateway


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("abandoned") / "tiergate.db"
    with FakeOpenAI(api_key="sk-up") as up:
        dep = {"provider": "openai", "api_base": up.url, "api_key": "env:TG_AB_KEY"}
        cfg = {"models": [
            {"name": "o3-mini", "deployments": [dep]},  # native Responses upstream
            {"name": "gpt-4o", "fallbacks": ["o3-mini"], "deployments": [dep]},  # translated (chat upstream)
        ], "storage": f"sqlite:///{db}"}
        with running_gateway(cfg, env={"TG_AB_KEY": "sk-up"}) as url:
            yield url, openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=20), up, db


def _hang_up_mid_answer(url: str, model: str) -> tuple[str, str]:
    """Stream a response, hang up after two text deltas; the request id and the response id seen."""
    seen = b""
    with httpx.stream("POST", url.rstrip("/") + "/responses", timeout=10,
                      json={"model": model, "input": "one two three four five six seven", "stream": True}) as r:
        rid = r.headers["x-request-id"]
        for part in r.iter_bytes():
            seen += part
            if seen.count(b"response.output_text.delta") >= 2:
                break
    created = next(json.loads(line[5:]) for line in seen.decode().splitlines()
                   if line.startswith("data:") and '"response.created"' in line)
    return rid, created["response"]["id"]


@pytest.mark.parametrize("model", ["gpt-4o", "o3-mini"])
def test_abandoned_stream_is_billed_and_stored_as_cancelled(env, model):
    url, client, up, db = env
    up.clear()
    up.chunk_delay = 0.2
    try:
        rid, resp_id = _hang_up_mid_answer(url, model)
    finally:
        up.chunk_delay = 0.0
    rows = ledger_rows(db, "request_id = ?", rid, columns="status, output_tokens, cost_usd")
    assert [r["status"] for r in rows] == ["client_disconnected"]
    assert rows[0]["output_tokens"] > 0 and rows[0]["cost_usd"] > 0
    deadline = time.time() + 5
    while True:  # stored when the gateway notices the hang-up, just after the client left
        try:
            got = client.responses.retrieve(resp_id)
            break
        except openai.NotFoundError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    assert got.status == "cancelled"
    assert got.output_text.startswith("echo")  # what was streamed before the hang-up
    # the next turn can build on it
    nxt = client.responses.create(model="gpt-4o", input="go on", previous_response_id=resp_id)
    assert nxt.status == "completed"
