"""A batch that expires or is cancelled still accounts for every input line (as OpenAI does): the lines
it never ran are in the error file with `batch_expired` / `batch_cancelled` and no response, and count
as failed, so completed + failed == total and every custom id is in exactly one of the two files."""

from __future__ import annotations

import json
import time

import openai

from tests.helpers import running_gateway, submit_batch, wait_batch

N = 20


def _gateway(tmp_path, **batches):
    cfg = {"models": [{"name": "slow", "catalog": "gpt-4o-mini", "deployments": [
        {"provider": "sim", "options": {"latency_ms": 150}}]}],
        "storage": f"sqlite:///{tmp_path / 'tg.db'}",
        "batches": {"concurrency": 1, "poll_s": 0.05, **batches}}
    return running_gateway(cfg)


def _submit(client: openai.OpenAI):
    return submit_batch(client, [{"custom_id": f"u{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": "slow", "messages": [{"role": "user", "content": f"q {i}"}],
                                           "max_tokens": 20}} for i in range(N)])


def _wait(client: openai.OpenAI, bid: str, status: str, timeout: float = 20.0):
    return wait_batch(client, bid, status, timeout)


def _files(client: openai.OpenAI, b) -> tuple[dict[str, dict], dict[str, dict]]:
    def read(fid):
        return {json.loads(x)["custom_id"]: json.loads(x)
                for x in (client.files.content(fid).text.splitlines() if fid else [])}

    return read(b.output_file_id), read(b.error_file_id)


def _check_every_line(client: openai.OpenAI, b, code: str, message: str) -> None:
    out, err = _files(client, b)
    rc = b.request_counts
    assert rc.total == N and rc.completed + rc.failed == N, rc
    assert 0 < rc.completed < N and len(out) == rc.completed and len(err) == rc.failed
    assert sorted(out.keys() | err.keys()) == sorted(f"u{i}" for i in range(N)) and not out.keys() & err.keys()
    for line in err.values():
        assert line["response"] is None and line["error"] == {"code": code, "message": message}
        assert line["id"].startswith("batch_req_")
    # the file is in input order, like the output file
    assert list(err) == sorted(err, key=lambda c: int(c[1:]))


def test_expired_batch_lists_the_lines_it_never_ran(tmp_path):
    with _gateway(tmp_path, window_s=0.8) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        b = _wait(client, _submit(client).id, "expired")
        _check_every_line(client, b, "batch_expired",
                          "This request could not be executed before the completion window expired.")
        assert client.batches.retrieve(b.id).request_counts == b.request_counts  # stable once ended


def test_cancelled_batch_lists_the_lines_it_never_ran(tmp_path):
    with _gateway(tmp_path) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        b = _submit(client)
        deadline = time.time() + 10
        while client.batches.retrieve(b.id).request_counts.completed < 2:
            assert time.time() < deadline
            time.sleep(0.05)
        client.batches.cancel(b.id)
        b = _wait(client, b.id, "cancelled")
        _check_every_line(client, b, "batch_cancelled",
                          "This request was not executed because the batch was cancelled.")
