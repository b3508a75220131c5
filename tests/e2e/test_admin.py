"""Admin API and CLI against a real gateway on a loopback port: keys are created (shown once),
listed, edited and revoked; /v1 enforces them (401/403/429 with OpenAI's shapes and headers); spend
reports read the ledger; the response cache marks hits; the CLI does the same over HTTP or the DB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.helpers import running_gateway

MASTER = "sk-admin-e2e-master-0123456789"


@pytest.fixture
def gateway(tmp_path):
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]},
                      {"name": "o3-mini", "deployments": [{"provider": "sim"}]}],
           "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
        root = base.removesuffix("/v1")
        admin = httpx.Client(base_url=root + "/admin", headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
        yield base, root, admin, tmp_path / "tg.db"
        admin.close()


def _client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=10)


MSG = [{"role": "user", "content": "Say hi"}]


def test_keys_lifecycle_and_enforcement(gateway):
    base, _, admin, _ = gateway
    r = admin.post("/keys", json={"name": "team-a", "models": ["gpt-4o-mini"], "metadata": {"team": "a"}})
    assert r.status_code == 200, r.text
    created = r.json()
    secret = created["key"]
    assert secret.startswith("tg-") and created["prefix"] == secret[:11] and created["models"] == ["gpt-4o-mini"]

    listed = admin.get("/keys").json()
    assert listed["object"] == "list" and [k["id"] for k in listed["data"]] == [created["id"]]
    assert secret not in json.dumps(listed) and "key" not in listed["data"][0]

    client = _client(base, secret)
    out = client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert out.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="o3-mini", messages=MSG)
    assert e.value.code == "model_not_allowed"
    with pytest.raises(openai.AuthenticationError):
        _client(base, "tg-not-a-real-key-aaaaaaaaaaaaaaaaaaaaaa").chat.completions.create(
            model="gpt-4o-mini", messages=MSG)
    with pytest.raises(openai.AuthenticationError):
        _client(base, "wrong").models.list()

    # rate limit: 1 request per minute, refused with OpenAI's headers
    assert admin.patch(f"/keys/{created['id']}", json={"rpm": 1}).json()["rpm"] == 1
    time.sleep(0.6)  # auth cache lifetime
    h = {"authorization": f"Bearer {secret}"}
    first = httpx.post(base + "/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG}, headers=h)
    second = httpx.post(base + "/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG}, headers=h)
    assert first.status_code == 200 and second.status_code == 429
    err = second.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    assert second.headers["x-ratelimit-limit-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-reset-requests"].endswith("s") and int(second.headers["retry-after"]) >= 1

    # revocation: refused within 1 s
    time.sleep(0.2)
    rejected_before = _rejected(admin, created["id"])
    revoked = admin.delete(f"/keys/{created['id']}").json()
    assert revoked["revoked_at"] is not None
    time.sleep(1.0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert "revoked" in str(e.value)
    assert admin.get("/keys", params={"include_revoked": "false"}).json()["data"] == []
    time.sleep(0.2)  # the refused call's `rejected` ledger row is tied to the revoked key's id
    assert _rejected(admin, created["id"]) == rejected_before + 1


def _rejected(admin, key_id: str) -> int:
    rows = admin.get("/spend", params={"group_by": "status", "key_id": key_id}).json()["data"]
    return sum(r["requests"] for r in rows if r["status"] == "rejected")


def test_budget_spend_and_cache(gateway):
    base, _, admin, _ = gateway
    tiny = admin.post("/keys", json={"name": "tiny", "budget_usd": 1e-7}).json()
    with pytest.raises(openai.RateLimitError) as e:
        _client(base, tiny["key"]).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert e.value.code == "insufficient_quota" and "budget" in e.value.message

    k = admin.post("/keys", json={"name": "cached", "budget_usd": 5, "budget_period": "monthly",
                                  "cache": True}).json()
    client = _client(base, k["key"])
    r1 = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, temperature=0)
    r2 = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, temperature=0)
    assert r1.headers["x-tiergate-cache"] == "miss" and r2.headers["x-tiergate-cache"] == "hit"
    assert r1.parse().choices[0].message.content == r2.parse().choices[0].message.content
    client.chat.completions.create(model="o3-mini", messages=MSG)  # not deterministic: no cache

    time.sleep(0.2)
    by_status = {r["status"]: r for r in admin.get("/spend", params={"group_by": "status",
                                                                     "key_id": k["id"]}).json()["data"]}
    assert by_status["cache_hit"]["cost_usd"] == 0 and by_status["cache_hit"]["requests"] == 1
    assert by_status["ok"]["requests"] == 2 and by_status["ok"]["cost_usd"] > 0
    by_model = admin.get("/spend", params={"group_by": "model"}).json()
    assert {r["model"] for r in by_model["data"]} == {"gpt-4o-mini", "o3-mini"}
    assert by_model["total_usd"] == pytest.approx(by_status["ok"]["cost_usd"])
    for x in (by_model["total_usd"], *(r["cost_usd"] for r in by_model["data"])):  # no float-sum noise
        assert x == round(x, 9)
    by_day = admin.get("/spend", params={"group_by": "day", "start": time.strftime("%Y-%m-%d", time.gmtime())}).json()
    assert by_day["data"][0]["day"] == time.strftime("%Y-%m-%d", time.gmtime())
    usage = admin.get(f"/keys/{k['id']}").json()["usage"]
    assert usage["spent_usd"] == pytest.approx(by_status["ok"]["cost_usd"]) and usage["reserved_usd"] == 0


def test_admin_auth_errors_and_schema(gateway):
    _, root, admin, _ = gateway
    r = httpx.get(root + "/admin/keys")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(root + "/admin/keys", headers={"authorization": "Bearer tg-nope"})
    assert r.status_code == 401
    r = admin.post("/keys", json={"name": "x", "budget_period": "weekly"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "budget_period"
    r = admin.post("/keys", json={"name": "x", "rpm": -1})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    # an infinite or astronomical budget was stored and then failed every request with a 500
    for raw_budget in (b"1e309", b"1e300"):
        r = admin.post("/keys", content=b'{"name": "x", "budget_usd": ' + raw_budget + b"}",
                       headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "budget_usd", r.text
    r = admin.post("/keys", json={"name": "x", "models": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "models" and "non-empty" in r.text
    r = admin.patch("/keys/key_missing", json={"rpm": 3})
    assert r.status_code == 404 and r.json()["error"]["code"] == "key_not_found"
    r = admin.get("/spend", params={"start": "last tuesday"})
    assert r.status_code == 400 and "YYYY-MM-DD" in r.json()["error"]["message"]
    r = admin.get("/spend", params={"start": "2026-03-01", "end": "2026-02-01"})  # was an empty report
    assert r.status_code == 400 and "not before end" in r.json()["error"]["message"]
    schema = httpx.get(root + "/admin/openapi.json").json()
    assert {"/keys", "/keys/{key_id}", "/spend"} <= set(schema["paths"])
    assert "post" in schema["paths"]["/keys"] and "delete" in schema["paths"]["/keys/{key_id}"]


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiergate.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, check=False)


def test_cli_over_http_and_direct(gateway):
    base, root, _, db = gateway
    env = {"TIERGATE_MASTER_KEY": MASTER}
    p = _cli("keys", "create", "cli-team", "--budget-usd", "2", "--rpm", "30", "--models", "gpt-4o-mini",
             "--url", root, env=env)
    assert p.returncode == 0, p.stderr
    secret = next(line.split()[-1] for line in p.stdout.splitlines() if line.strip().startswith("key:"))
    assert secret.startswith("tg-")
    _client(base, secret).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    p = _cli("keys", "list", "--url", root, "--json", env=env)
    keys = json.loads(p.stdout)["data"]
    assert [k["name"] for k in keys] == ["cli-team"] and secret not in p.stdout
    p = _cli("spend", "--group-by", "key", "--url", root, env=env)
    assert p.returncode == 0 and keys[0]["id"] in p.stdout and "total" in p.stdout
    p = _cli("keys", "list", "--url", root, env={"TIERGATE_MASTER_KEY": "wrong"})
    assert p.returncode != 0 and "master key" in p.stderr
    # direct to the database: same data, no gateway needed
    p = _cli("keys", "revoke", keys[0]["id"], "--storage", f"sqlite:///{db}")
    assert p.returncode == 0 and "revoked" in p.stdout, p.stderr
    p = _cli("spend", "--storage", f"sqlite:///{db}", "--json", "--group-by", "model")
    assert json.loads(p.stdout)["data"][0]["model"] == "gpt-4o-mini"
    assert "TIERGATE_MASTER_KEY" not in os.environ and "no master key" not in p.stderr  # a report, not a server
    time.sleep(1.0)
    with pytest.raises(openai.AuthenticationError):
        _client(base, secret).chat.completions.create(model="gpt-4o-mini", messages=MSG)


def test_key_model_allow_list_names_known_models(gateway):
    _, root, admin, db = gateway
    r = admin.post("/keys", json={"name": "typo", "models": ["gpt-4o-mini", "gpt4o-mini"]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "models[1]" and err["code"] == "model_not_found"
    assert "'gpt4o-mini'" in err["message"] and "Did you mean: gpt-4o-mini" in err["message"]
    assert "gpt-4o-mini, o3-mini" in err["message"]  # what this gateway serves
    r = admin.post("/keys", json={"name": "auto", "models": ["auto"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "models[0]"
    assert "after routing" in r.json()["error"]["message"]
    assert admin.get("/keys").json()["data"] == []  # nothing was created
    # configured and catalogue names are fine
    r = admin.post("/keys", json={"name": "ok", "models": ["o3-mini", "gpt-4.1-nano"]})
    assert r.status_code == 200, r.text
    kid = r.json()["id"]
    r = admin.patch(f"/keys/{kid}", json={"models": ["o3mini"]})
    assert r.status_code == 400 and "Did you mean: o3-mini" in r.json()["error"]["message"]
    assert admin.get(f"/keys/{kid}").json()["models"] == ["o3-mini", "gpt-4.1-nano"]
    assert admin.patch(f"/keys/{kid}", json={"models": None}).json()["models"] is None

    env = {"TIERGATE_MASTER_KEY": MASTER}
    p = _cli("keys", "create", "cli-typo", "--models", "gpt4o-mini", "--url", root, env=env)
    assert p.returncode != 0 and "Did you mean: gpt-4o-mini" in p.stderr
    # --storage: no gateway to ask, so names configured only in the YAML need --config
    storage = f"sqlite:///{db}"
    p = _cli("keys", "create", "local", "--models", "my-llama", "--storage", storage, env={"TIERGATE_CONFIG": ""})
    assert p.returncode != 0 and "'my-llama'" in p.stderr and "--config" in p.stderr
    cfg = db.parent / "gw.yaml"
    cfg.write_text("models:\n  - name: my-llama\n    deployments: [{provider: sim}]\n")
    p = _cli("keys", "create", "local", "--models", "my-llama,gpt-4o-mini", "--storage", storage, "--config", str(cfg),
             "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["models"] == ["my-llama", "gpt-4o-mini"]
    assert "no master key" not in p.stderr


def test_unknown_model_names_are_bounded_in_the_ledger_and_not_metrics_labels(gateway):
    """Requests without a key and with a huge made-up model name each added a /metrics series labelled with
    the whole name and stored it whole (20 such 1 MB requests grew /metrics to 380 MB)."""
    import sqlite3

    base, root, _, db = gateway
    name = "nope-" + "x" * 10_000
    for _ in range(3):
        r = httpx.post(base + "/chat/completions", json={"model": name, "messages": MSG}, timeout=10)
        assert r.status_code == 401
    metrics = httpx.get(root + "/metrics", timeout=10).text
    assert "xxxxxxxxxx" not in metrics and 'model="(unknown)"' in metrics
    time.sleep(0.5)
    con = sqlite3.connect(db)
    try:
        lengths = [n for (n,) in con.execute("SELECT length(requested_model) FROM ledger WHERE status = 'rejected'")]
    finally:
        con.close()
    assert lengths and max(lengths) <= 256


def test_the_admin_api_of_a_gateway_without_a_master_key_is_off(tmp_path):
    """It was open: anyone on the network could mint keys (and read spend), and those keys stayed valid
    after the operator set a master key."""
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
           "storage": f"sqlite:///{tmp_path / 'open.db'}"}
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": ""}) as base:
        root = base.removesuffix("/v1")
        for method, path in (("POST", "/admin/keys"), ("GET", "/admin/keys"), ("GET", "/admin/spend")):
            r = httpx.request(method, root + path, json={"name": "x"} if method == "POST" else None)
            assert r.status_code == 403, (path, r.text)
            err = r.json()["error"]
            assert err["code"] == "admin_api_disabled" and "TIERGATE_MASTER_KEY" in err["message"]
        assert httpx.post(base + "/chat/completions", json={  # /v1 stays open, as documented
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
