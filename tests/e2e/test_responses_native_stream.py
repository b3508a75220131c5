"""Native Responses-API streaming end to end: the official SDK's `responses.create(stream=True)` and
`responses.stream(...)` against a real gateway whose OpenAI deployments are the loopback fake
upstream streaming real Responses events. The events arrive as the upstream sent them, the ledger
row takes its usage from `response.completed`, a failure before the first answer-bearing event fails
over to the next deployment, and a cut after it ends the stream with `response.failed`."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import ledger_rows, running_gateway

EXPECTED_TYPES = ["response.created", "response.in_progress", "response.output_item.added",
                  "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                  "response.output_text.delta", "response.output_text.done", "response.content_part.done",
                  "response.output_item.done", "response.completed"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("native-stream") / "tiergate.db"
    with FakeOpenAI(api_key="sk-up") as up:
        dep = {"provider": "openai", "api_base": up.url, "api_key": "env:TG_NS_KEY"}
        cfg = {
            "models": [
                {"name": "gpt-4o-mini", "deployments": [dep]},
                # two deployments: a failed attempt moves to the other one
                {"name": "o3-mini", "deployments": [{**dep, "id": "first"}, {**dep, "id": "second"}]},
            ],
            "storage": f"sqlite:///{db}",
        }
        with running_gateway(cfg, env={"TG_NS_KEY": "sk-up"}) as url:
            yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=20), up, db


def _rows(db, request_id: str) -> list[dict]:
    """The request's ledger rows (its failed attempts `<id>:aN` included), once its final row is there."""
    return ledger_rows(db, "request_id LIKE ? ORDER BY request_id", request_id + "%",
                       columns="request_id, status, kind, stream, deployment, input_tokens, output_tokens, "
                               "cost_usd, error",
                       ready=lambda rows: any(r["status"] != "failed_attempt" for r in rows))


def test_native_stream_relays_upstream_events_and_bills_from_completed(env):
    client, up, db = env
    up.clear()
    with client.responses.with_streaming_response.create(model="gpt-4o-mini", input="one two", stream=True) as raw:
        assert raw.headers["x-tiergate-responses"] == "native"
        rid = raw.headers["x-request-id"]
        events = list(raw.parse())
    assert [e.type for e in events] == EXPECTED_TYPES
    assert [e.sequence_number for e in events] == list(range(len(events)))  # the upstream's own numbering
    final = events[-1].response
    assert final.id.startswith("resp_fake") and final.output_text == "echo: one two"
    sent = up.last
    assert sent.path.endswith("/responses") and sent.body["stream"] is True and sent.body["input"] == "one two"
    assert "tiergate" not in sent.body
    rows = _rows(db, rid)
    assert len(rows) == 1
    row = rows[0]
    assert (row["status"], row["kind"], row["stream"]) == ("ok", "responses", 1)
    assert row["input_tokens"] == final.usage.input_tokens and row["output_tokens"] == final.usage.output_tokens
    assert row["cost_usd"] > 0


def test_stream_helper_gets_the_final_response(env):
    client, up, _ = env
    up.clear()
    with client.responses.stream(model="gpt-4o-mini", input="stream helper") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        got = stream.get_final_response()
    assert "".join(deltas) == "echo: stream helper" == got.output_text
    assert up.last.path.endswith("/responses")


@pytest.mark.parametrize("fault", [{"kind": "500"}, {"kind": "error_event", "after": 2}, {"kind": "cut", "after": 3}])
def test_failure_before_the_first_answer_event_fails_over(env, fault):
    client, up, db = env
    up.clear()
    kind = fault.pop("kind")
    up.fail_next(kind, path="/responses", **fault)
    with client.responses.with_streaming_response.create(model="o3-mini", input="a b c", stream=True) as raw:
        rid = raw.headers["x-request-id"]
        served = raw.headers["x-tiergate-deployment"]
        events = list(raw.parse())
    assert [e.type for e in events] == EXPECTED_TYPES[:4] + ["response.output_text.delta"] * 4 + EXPECTED_TYPES[-4:]
    assert events[-1].response.output_text == "echo: a b c"
    assert len(up.requests) == 2
    rows = _rows(db, rid)
    failed = ({"first", "second"} - {served}).pop()
    assert [(r["status"], r["deployment"]) for r in rows] == [("ok", served), ("failed_attempt", failed)]


def test_cut_after_the_answer_started_ends_with_response_failed(env):
    client, up, db = env
    up.clear()
    up.fail_next("cut", path="/responses", after=6)  # created … two text deltas, then RST
    with client.responses.with_streaming_response.create(model="o3-mini", input="a b c d", stream=True) as raw:
        rid = raw.headers["x-request-id"]
        events = list(raw.parse())
    types = [e.type for e in events]
    assert types == EXPECTED_TYPES[:6] + ["response.failed"]
    assert events[-1].sequence_number == 6 and events[-1].response.status == "failed"
    assert "failed after it started" in events[-1].response.error.message
    assert len(up.requests) == 1  # no failover once the client has seen part of the answer
    rows = _rows(db, rid)
    assert [r["status"] for r in rows] == ["error"]
    assert rows[0]["output_tokens"] > 0 and rows[0]["cost_usd"] > 0  # estimated from what was relayed
    # the failed response carries the usage that is billed (the spec's Response.usage is an object, not null)
    usage = events[-1].response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (rows[0]["input_tokens"], rows[0]["output_tokens"])
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_client_going_away_is_billed_for_what_was_relayed(env):
    import httpx

    client, up, db = env
    up.clear()
    up.chunk_delay = 0.2
    try:
        with httpx.stream("POST", str(client.base_url).rstrip("/") + "/responses", timeout=10,
                          json={"model": "gpt-4o-mini", "input": "one two three four five six", "stream": True}) as r:
            rid = r.headers["x-request-id"]
            seen = b""
            for part in r.iter_bytes():
                seen += part
                if seen.count(b"response.output_text.delta") >= 2:
                    break  # hang up mid-answer
    finally:
        up.chunk_delay = 0.0
    rows = _rows(db, rid)
    assert [r["status"] for r in rows] == ["client_disconnected"]
    assert rows[0]["output_tokens"] > 0 and rows[0]["input_tokens"] > 0
