"""`tiergate batch submit --wait | status | results | list | cancel` against a real gateway (sim models)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import running_gateway
from tiergate.cli import main


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    db = tmp_path_factory.mktemp("cli") / "tiergate.db"
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}], "storage": f"sqlite:///{db}",
           "batches": {"poll_s": 0.1}}
    with running_gateway(cfg) as url:
        yield url.removesuffix("/v1")


def test_submit_wait_status_results(base_url, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                                         "body": {"model": "gpt-4o-mini",
                                                  "messages": [{"role": "user", "content": f"hi {i}"}]}})
                             for i in range(4)))
    assert main(["batch", "submit", str(src), "--url", base_url, "--wait", "--metadata", "team=ml"]) == 0
    out, err = capsys.readouterr()
    bid = out.strip()
    assert bid.startswith("batch_") and "completed" in err and "4/4 done" in err and "req" in err  # progress bar
    assert main(["batch", "status", bid, "--url", base_url]) == 0
    assert "completed  4/4 done, 0 failed" in capsys.readouterr().out
    dest = tmp_path / "out.jsonl"
    errs = tmp_path / "err.jsonl"
    assert main(["batch", "results", bid, "--url", base_url, "-o", str(dest), "--errors", str(errs)]) == 0
    got = sorted(json.loads(x)["custom_id"] for x in dest.read_text().splitlines())
    assert got == ["q0", "q1", "q2", "q3"]
    assert not errs.exists() and f"has no error file (no failed lines); {errs} not written" in capsys.readouterr().err
    assert main(["batch", "list", "--url", base_url]) == 0
    assert bid in capsys.readouterr().out
    assert main(["batch", "cancel", bid, "--url", base_url]) == 2  # finished batches cannot be cancelled
    assert "Cannot cancel" in capsys.readouterr().err


def test_bad_input_reports_line_errors(base_url, tmp_path, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {"model": "m"}}\n')
    assert main(["batch", "submit", str(src), "--url", base_url]) == 1
    assert "line 1: invalid_method" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["0", "101", "-3"])
def test_list_limit_outside_the_api_range_is_an_error(base_url, capsys, limit):
    """It was clamped to 1-100 and listed a batch with exit status 0 (the API answers such a limit with a 400)."""
    assert main(["batch", "list", "--url", base_url, "--limit", limit]) == 2
    assert "--limit must be between 1 and 100" in capsys.readouterr().err


def test_bad_metadata_is_refused_before_anything_is_uploaded(base_url, tmp_path, capsys):
    import httpx

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"custom_id": "q", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}))
    before = len(httpx.get(base_url + "/v1/files").json()["data"])
    assert main(["batch", "submit", str(src), "--url", base_url, "--metadata", "team"]) == 2
    assert "use KEY=VALUE" in capsys.readouterr().err
    assert len(httpx.get(base_url + "/v1/files").json()["data"]) == before  # no orphan upload


def test_exit_statuses_and_the_sdk_base_url(base_url, capsys):
    """Every error exited 2 (keys/spend: 1 for not found / auth / unreachable); `--url …/v1` (the SDK's
    base_url form) requested /v1/v1/… and failed."""
    assert main(["batch", "status", "batch_nope", "--url", base_url]) == 1  # 404
    assert "HTTP 404" in capsys.readouterr().err
    assert main(["batch", "list", "--url", "http://127.0.0.1:9"]) == 1  # nothing listens there
    assert "cannot reach the gateway" in capsys.readouterr().err
    assert main(["batch", "list", "--url", base_url + "/v1"]) == 0
