"""`GET /v1/files` paginates as OpenAI's (spec `listFiles`), driven by the official `openai` SDK against a
real gateway: `limit` (1-10,000, default 10,000), `order` (asc|desc by created_at, default desc), the
`after` cursor, `has_more`, `first_id` / `last_id`, so the SDK's auto-pagination yields every file exactly
once; out-of-range values are OpenAI-shaped 400s naming the parameter. Listings stay per key."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers import running_gateway

MASTER = "sk-list-pagination-master-0123456789"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    db = tmp_path_factory.mktemp("lp") / "tg.db"
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
           "storage": f"sqlite:///{db}", "batches": {"poll_s": 0.05}}
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
        with httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                          headers={"authorization": f"Bearer {MASTER}"}, timeout=10) as admin:
            a = admin.post("/keys", json={"name": "a"}).json()["key"]
            b = admin.post("/keys", json={"name": "b"}).json()["key"]
        clients = {name: openai.OpenAI(base_url=base, api_key=k, max_retries=0)
                   for name, k in (("a", a), ("b", b), ("master", MASTER))}
        a_files = [clients["a"].files.create(file=(f"a{i}.jsonl", b"{}\n"), purpose="batch").id for i in range(21)]
        b_files = [clients["b"].files.create(file=(f"b{i}.jsonl", b"{}\n"), purpose="batch").id for i in range(2)]
        yield clients, a_files, b_files


def test_files_limit_order_and_has_more(gw):
    clients, a_files, _ = gw
    ca = clients["a"]
    newest_first = a_files[::-1]
    page = ca.files.list(limit=1)
    assert [f.id for f in page.data] == newest_first[:1] and page.has_more is True
    raw = ca.files.with_raw_response.list(limit=3).http_response.json()
    assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (newest_first[0], newest_first[2], True)
    asc = ca.files.list(limit=2, order="asc")
    assert [f.id for f in asc.data] == a_files[:2] and asc.has_more is True
    everything = ca.files.list()  # default limit 10,000: one page
    assert [f.id for f in everything.data] == newest_first and everything.has_more is False
    exact = ca.files.list(limit=21)
    assert len(exact.data) == 21 and exact.has_more is False


def test_files_after_cursor_and_auto_pagination(gw):
    clients, a_files, _ = gw
    ca = clients["a"]
    newest_first = a_files[::-1]
    page = ca.files.list(after=newest_first[4], limit=3)
    assert [f.id for f in page.data] == newest_first[5:8] and page.has_more is True
    page = ca.files.list(after=a_files[4], limit=3, order="asc")
    assert [f.id for f in page.data] == a_files[5:8]
    last = ca.files.list(after=newest_first[-2])
    assert [f.id for f in last.data] == newest_first[-1:] and last.has_more is False
    assert ca.files.list(after=newest_first[-1]).data == []
    # The SDK follows has_more / last_id: every file exactly once, in order, both ways.
    assert [f.id for f in ca.files.list(limit=2)] == newest_first
    assert [f.id for f in ca.files.list(limit=2, order="asc")] == a_files
    assert [f.id for f in ca.files.list(limit=5, purpose="batch")] == newest_first
    assert list(ca.files.list(limit=2, purpose="fine-tune")) == []


def test_files_pagination_stays_per_key(gw):
    clients, a_files, b_files = gw
    assert [f.id for f in clients["b"].files.list(limit=1)] == b_files[::-1]
    # another key's file id (or an unknown one) as the cursor: nothing after it for this caller
    assert clients["a"].files.list(after=b_files[0]).data == []
    assert clients["a"].files.list(after="file-nope").data == []
    seen = [f.id for f in clients["master"].files.list(limit=4)]
    assert len(seen) == len(set(seen)) and set(seen) >= set(a_files + b_files)


@pytest.mark.parametrize(("params", "param", "code"), [
    ({"limit": 0}, "limit", "integer_below_min_value"),
    ({"limit": 10001}, "limit", "integer_above_max_value"),
    ({"extra_query": {"limit": "ten"}}, "limit", "invalid_type"),
    ({"order": "sideways"}, "order", "invalid_value"),
])
def test_files_bad_list_params_are_400(gw, params, param, code):
    with pytest.raises(openai.BadRequestError) as ei:
        gw[0]["a"].files.list(**params)
    assert (ei.value.status_code, ei.value.param, ei.value.code) == (400, param, code)
    assert ei.value.body["type"] == "invalid_request_error"

