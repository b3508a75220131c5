"""Every code a batch's input validation gives (`errors.data[].code`) is one docs/batches.md lists: a
real gateway on loopback validates a file with one fault per line, through the official openai SDK."""

from __future__ import annotations

import json
import re
import time

import openai

from tests.helpers import REPO, running_gateway


def _documented() -> set[str]:
    text = (REPO / "docs" / "batches.md").read_text()
    para = text[text.index("Validation happens at create time"):text.index("Output lines:")]
    return set(re.findall(r"`([a-z_]+)`", para))


def test_validation_codes_are_documented(tmp_path):
    ok = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
          "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}
    bad = [
        "{not json",
        json.dumps([1, 2]),  # not an object
        json.dumps({k: v for k, v in ok.items() if k != "body"} | {"custom_id": "no-body"}),
        json.dumps({**ok, "custom_id": "b", "body": "text"}),
        json.dumps(ok), json.dumps(ok),  # duplicate custom_id
        json.dumps({**ok, "custom_id": "c", "method": "GET"}),
        json.dumps({**ok, "custom_id": "d", "url": "/v1/embeddings"}),
        json.dumps({**ok, "custom_id": "e", "body": {"messages": []}}),
        json.dumps({**ok, "custom_id": ""}),
        json.dumps({k: v for k, v in ok.items() if k != "method"} | {"custom_id": "no-method"}),  # line 11
    ]
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
           "storage": f"sqlite:///{tmp_path / 'tg.db'}", "batches": {"poll_s": 0.05}}
    with running_gateway(cfg) as base:
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
        f = client.files.create(file=("bad.jsonl", "\n".join(bad).encode()), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.time() + 10
        while b.status not in ("failed", "completed"):
            assert time.time() < deadline
            time.sleep(0.05)
            b = client.batches.retrieve(b.id)
        assert b.status == "failed"
        codes = {e.code for e in b.errors.data}
        by_line = {e.line: (e.code, e.param) for e in b.errors.data}
        empty = client.files.create(file=("empty.jsonl", b"\n"), purpose="batch")
        e2 = client.batches.create(input_file_id=empty.id, endpoint="/v1/chat/completions", completion_window="24h")
        codes |= {e.code for e in e2.errors.data}
    assert by_line[3] == ("invalid_request", "body")  # a line with no body
    assert by_line[11] == ("missing_required_parameter", "method")  # was invalid_method "method must be POST."
    assert {"invalid_json_line", "invalid_request", "duplicate_custom_id", "invalid_method", "mismatched_endpoint",
            "missing_required_parameter", "empty_file"} <= codes
    assert codes <= _documented(), codes - _documented()
