"""`GET /v1/batches` parameters as OpenAI's (spec `listBatches`), with the official `openai` SDK against a
real gateway: `limit` 1-100 (default 20); out of range or not an integer is a 400 with `param: limit`
(`limit=0` used to be clamped to 1 and answered); an unknown `after` cursor is an empty page."""

from __future__ import annotations

import openai
import pytest

from tests.helpers import running_gateway, submit_batch


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    db = tmp_path_factory.mktemp("blp") / "tg.db"
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
           "storage": f"sqlite:///{db}", "batches": {"poll_s": 0.05}}
    with running_gateway(cfg) as base:
        yield openai.OpenAI(base_url=base, api_key="unused", max_retries=0)


def test_batches_limit_range_and_unknown_cursor(client):
    cb = client
    line = {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}
    made = [submit_batch(cb, [line]).id for _ in range(3)]
    for limit, code in ((0, "integer_below_min_value"), (-5, "integer_below_min_value"),
                        (101, "integer_above_max_value")):
        with pytest.raises(openai.BadRequestError) as ei:
            cb.batches.list(limit=limit)
        assert (ei.value.param, ei.value.code) == ("limit", code)
    with pytest.raises(openai.BadRequestError) as ei:
        cb.batches.list(extra_query={"limit": "many"})
    assert ei.value.param == "limit"
    assert len(cb.batches.list(limit=100).data) == len(cb.batches.list().data) == 3
    page = cb.batches.list(limit=1)
    assert [b.id for b in page.data] == made[-1:] and page.has_more is True
    assert [b.id for b in cb.batches.list(limit=1)] == made[::-1]
    # an unknown cursor (or one this key cannot see) is an empty page, as documented in docs/batches.md
    empty = cb.batches.list(after="batch_nope")
    assert empty.data == [] and empty.has_more is False
