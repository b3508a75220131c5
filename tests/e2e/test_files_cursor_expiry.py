"""Files, driven by the official `openai` SDK against a real gateway:

- deleting files while the SDK auto-paginates (`for f in client.files.list(limit=2): client.files.delete(f.id)`)
  deletes every one: a deleted file's id is still a cursor (before, the next page was empty and the walk
  stopped after the first page); a cursor the caller could not see still gives an empty page;
- `expires_after` on upload and a batch's `output_expires_after` (OpenAI's `{anchor: "created_at",
  seconds: 3600..2592000}`): validated with OpenAI-shaped 400s naming the parameter, reported as the file
  object's `expires_at`; once it passes the file is a 404 as an unknown file (retrieve, content, delete,
  batch input) and is left out of listings. A forwarded batch's output files (the gateway's copies of the
  upstream results) take `output_expires_after` as a local batch's do."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import openai
import pytest

from tests.e2e.test_batches_upstream import FakeOpenAIBatches
from tests.helpers import running_gateway, wait_batch

MASTER = "sk-cursor-expiry-master-0123456789"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    db = tmp_path_factory.mktemp("ce") / "tg.db"
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
           "storage": f"sqlite:///{db}", "batches": {"poll_s": 0.05}}
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
        with httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                          headers={"authorization": f"Bearer {MASTER}"}, timeout=10) as admin:
            keys = {n: admin.post("/keys", json={"name": n}).json()["key"] for n in ("a", "b")}
        clients = {n: openai.OpenAI(base_url=base, api_key=k, max_retries=0) for n, k in keys.items()}
        clients["master"] = openai.OpenAI(base_url=base, api_key=MASTER, max_retries=0)
        yield clients, db


def _upload(client, n: int, tag: str) -> list[str]:
    return [client.files.create(file=(f"{tag}{i}.jsonl", b"{}\n"), purpose="batch").id for i in range(n)]


def _expire(db, file_id: str) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("UPDATE files SET expires_at = ? WHERE id = ?", (time.time() - 1, file_id)).rowcount == 1


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_sdk_deletes_every_file_while_auto_paginating(gw, order):
    clients, _ = gw
    ca, cb = clients["a"], clients["b"]
    mine = _upload(ca, 7, f"del-{order}-")
    theirs = _upload(cb, 2, f"keep-{order}-")
    deleted = []
    for f in ca.files.list(limit=2, order=order):
        ca.files.delete(f.id)
        deleted.append(f.id)
    assert sorted(deleted) == sorted(mine)
    assert list(ca.files.list(limit=2)) == []
    # a deleted file of another key (or an unknown id) as the cursor: still nothing for this caller
    assert cb.files.list(after=mine[3]).data == []
    assert ca.files.list(after="file-never-was").data == []
    # ...while its owner and the master key are positioned by it
    assert [f.id for f in clients["master"].files.list(after=mine[0], order="asc")][:2] == theirs
    assert sorted(f.id for f in cb.files.list(limit=1)) == sorted(theirs)  # b's files untouched
    for fid in theirs:
        cb.files.delete(fid)


def test_upload_expires_after_then_gone(gw):
    clients, db = gw
    ca = clients["a"]
    f = ca.files.create(file=("exp.jsonl", b'{"x": 1}\n'), purpose="batch",
                        expires_after={"anchor": "created_at", "seconds": 7200})
    plain = ca.files.create(file=("plain.jsonl", b"{}\n"), purpose="batch")
    assert f.expires_at == f.created_at + 7200
    assert plain.expires_at == plain.created_at + 30 * 86400  # OpenAI's default for purpose=batch uploads
    assert ca.files.retrieve(f.id).expires_at == f.expires_at
    assert {x.id: x.expires_at for x in ca.files.list()}[f.id] == f.expires_at
    assert ca.files.content(f.id).content == b'{"x": 1}\n'
    _expire(db, f.id)
    for call in (ca.files.retrieve, ca.files.content, ca.files.delete):
        with pytest.raises(openai.NotFoundError) as ei:
            call(f.id)
        assert (ei.value.code, ei.value.param) == ("file_not_found", "file_id")
    with pytest.raises(openai.NotFoundError) as ei:
        ca.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert (ei.value.code, ei.value.param) == ("file_not_found", "input_file_id")
    assert f.id not in [x.id for x in ca.files.list()]
    assert [x.id for x in ca.files.list(after=f.id, order="asc", limit=1)] == [plain.id]  # still a cursor
    assert ca.files.retrieve(plain.id).id == plain.id


@pytest.mark.parametrize(("value", "param", "code"), [
    ({"anchor": "created_at", "seconds": 3599}, "expires_after.seconds", "integer_below_min_value"),
    ({"anchor": "created_at", "seconds": 2592001}, "expires_after.seconds", "integer_above_max_value"),
    ({"anchor": "created_at", "seconds": "soon"}, "expires_after.seconds", "invalid_type"),
    ({"anchor": "last_active_at", "seconds": 3600}, "expires_after.anchor", "invalid_value"),
    ({"anchor": "created_at"}, "expires_after.seconds", "missing_required_parameter"),
    ({"seconds": 3600}, "expires_after.anchor", "missing_required_parameter"),
])
def test_bad_expires_after_is_400(gw, value, param, code):
    clients, _ = gw
    for name in ("expires_after", "output_expires_after"):
        with pytest.raises(openai.BadRequestError) as ei:
            if name == "expires_after":
                clients["a"].files.create(file=("x.jsonl", b"{}\n"), purpose="batch", expires_after=value)
            else:
                clients["a"].batches.create(input_file_id="file-whatever", endpoint="/v1/chat/completions",
                                            completion_window="24h", output_expires_after=value)
        want = param.replace("expires_after", name, 1)
        assert (ei.value.status_code, ei.value.param, ei.value.code) == (400, want, code), ei.value.message
        assert ei.value.body["type"] == "invalid_request_error" and want in ei.value.message


def _batch(client, output_expires_after=None):
    lines = [{"custom_id": c, "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": m, "messages": [{"role": "user", "content": "hi"}]}}
             for c, m in (("ok", "gpt-4o-mini"), ("bad", "no-such-model"))]
    f = client.files.create(file=("in.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="batch")
    extra = {} if output_expires_after is None else {"output_expires_after": output_expires_after}
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              **extra)
    return wait_batch(client, b.id, "completed")


def test_batch_output_expires_after(gw):
    clients, db = gw
    ca = clients["a"]
    b = _batch(ca, {"anchor": "created_at", "seconds": 86400})
    assert b.output_file_id and b.error_file_id
    for fid in (b.output_file_id, b.error_file_id):
        f = ca.files.retrieve(fid)
        assert f.expires_at == f.created_at + 86400, f
    plain = _batch(ca)
    assert ca.files.retrieve(plain.output_file_id).expires_at is None
    assert ca.files.retrieve(plain.error_file_id).expires_at is None
    _expire(db, b.output_file_id)
    with pytest.raises(openai.NotFoundError):
        ca.files.content(b.output_file_id)
    assert ca.files.content(b.error_file_id).text  # the other one is still there


def test_forwarded_batch_output_expires_after(tmp_path):
    with FakeOpenAIBatches(key="sk-batch-up") as up:
        cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [
            {"provider": "openai", "api_base": up.url, "api_key": "env:TG_FWD_KEY",
             "model": "gpt-4o-mini-2024-07-18"}]}],
            "storage": f"sqlite:///{tmp_path / 'tg.db'}",
            "batches": {"forward_upstream": True, "upstream_poll_s": 0.1, "poll_s": 0.1}}
        with running_gateway(cfg, env={"TG_FWD_KEY": "sk-batch-up"}) as url:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
            lines = [{"custom_id": f"f{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": t}]}}
                     for i, t in enumerate(["alpha", "please fail"])]
            f = client.files.create(file=("in.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="batch")
            b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                      output_expires_after={"anchor": "created_at", "seconds": 3600})
            b = wait_batch(client, b.id, "completed")
            assert up.problems == [] and up.created == 1
            for fid in (b.output_file_id, b.error_file_id):
                got = client.files.retrieve(fid)
                assert got.expires_at == got.created_at + 3600, got


def test_an_upload_without_purpose_names_the_missing_field(gw):
    clients, _db = gw
    ca = clients["a"]
    with httpx.Client(timeout=10) as h:
        r = h.post(str(ca.base_url).rstrip("/") + "/files", headers={"authorization": f"Bearer {ca.api_key}"},
                   files={"file": ("x.jsonl", b"{}\n")})
        assert r.status_code == 400
        assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("missing_required_parameter", "purpose")
        r = h.post(str(ca.base_url).rstrip("/") + "/files", headers={"authorization": f"Bearer {ca.api_key}"},
                   files={"file": ("x.jsonl", b"{}\n")}, data={"purpose": "fine-tune"})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_value")
