"""Batch lines against a key's RPM/TPM limits (real gateway on loopback, official openai SDK, `sim`
upstream): a line refused for a rate limit waits (the refusal's Retry-After) and tries again for as long
as the batch's completion window lasts, instead of failing after a few back-offs; when the window ends
or the batch is cancelled meanwhile, the waiting lines are woken at once and end as `batch_expired` /
`batch_cancelled`; a line that can never fit the key's TPM fails at once with "Request too large"."""

from __future__ import annotations

import contextlib
import json
import time

import httpx
import openai

from tests.helpers import running_gateway, submit_batch, wait_batch

MASTER = "sk-batch-limits-master-0123456789"


@contextlib.contextmanager
def _gateway(tmp_path, **batches):
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
           "storage": f"sqlite:///{tmp_path / 'tg.db'}",
           "batches": {"concurrency": 8, "poll_s": 0.05, **batches}}
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
        admin = httpx.Client(base_url=base.removesuffix("/v1") + "/admin",
                             headers={"authorization": f"Bearer {MASTER}"}, timeout=10)

        def client(**key) -> openai.OpenAI:
            secret = admin.post("/keys", json={"name": "limited", **key}).json()["key"]
            return openai.OpenAI(base_url=base, api_key=secret, max_retries=0, timeout=20)

        try:
            yield client
        finally:
            admin.close()


def _submit(client: openai.OpenAI, n: int, max_tokens: int = 20):
    return submit_batch(client, [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": "gpt-4o-mini", "max_tokens": max_tokens,
                                           "messages": [{"role": "user", "content": f"q {i}"}]}} for i in range(n)])


def _wait(client: openai.OpenAI, bid: str, statuses: tuple[str, ...], timeout: float):
    return wait_batch(client, bid, statuses, timeout, poll_s=0.05)


def _errors(client: openai.OpenAI, b) -> dict[str, dict]:
    if not b.error_file_id:
        return {}
    return {json.loads(x)["custom_id"]: json.loads(x) for x in client.files.content(b.error_file_id).text.splitlines()}


def test_rate_limited_lines_wait_instead_of_failing(tmp_path):
    # rate_limit_retries 0: before, the first RPM refusal failed the line; it no longer bounds a rate-limit wait
    with _gateway(tmp_path, rate_limit_retries=0) as make_client:
        client = make_client(rpm=60)  # a burst of 60 requests, then one a second
        b = _wait(client, _submit(client, 63).id, ("completed",), timeout=30)
        assert (b.request_counts.completed, b.request_counts.failed) == (63, 0), _errors(client, b)


def test_a_line_that_can_never_fit_fails_at_once(tmp_path):
    with _gateway(tmp_path) as make_client:
        client = make_client(tpm=500)
        started = time.time()
        b = _wait(client, _submit(client, 1, max_tokens=1000).id, ("completed",), timeout=30)
        assert time.time() - started < 10  # not after ~61 s of back-offs
        err = _errors(client, b)["r0"]["response"]
        assert err["status_code"] == 429 and err["body"]["error"]["code"] == "rate_limit_exceeded"
        assert err["body"]["error"]["message"].startswith("Request too large")


def test_waiting_lines_expire_with_the_window(tmp_path):
    with _gateway(tmp_path, window_s=2.0) as make_client:
        client = make_client(rpm=2)  # two lines now, the next in 30 s: after the window
        started = time.time()
        b = _wait(client, _submit(client, 6).id, ("expired",), timeout=30)
        assert time.time() - started < 8  # woken at the window's end, not after their Retry-After
        assert (b.request_counts.completed, b.request_counts.failed, b.request_counts.total) == (2, 4, 6)
        err = _errors(client, b)
        assert len(err) == 4 and {e["error"]["code"] for e in err.values()} == {"batch_expired"}
        assert all(e["response"] is None for e in err.values())


def test_waiting_lines_end_when_the_batch_is_cancelled(tmp_path):
    with _gateway(tmp_path) as make_client:
        client = make_client(rpm=2)
        b = _submit(client, 6)
        deadline = time.time() + 10
        while client.batches.retrieve(b.id).request_counts.completed < 2:
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # the other lines are waiting for the RPM bucket now
        started = time.time()
        client.batches.cancel(b.id)
        b = _wait(client, b.id, ("cancelled",), timeout=30)
        assert time.time() - started < 5
        assert (b.request_counts.completed, b.request_counts.failed) == (2, 4)
        assert {e["error"]["code"] for e in _errors(client, b).values()} == {"batch_cancelled"}
