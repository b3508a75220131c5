"""Admin API input checks against a real gateway: JSON types are taken as given (`rpm: true` made a
1-rpm key, `budget_usd: true` a $1 budget, `"rpm": "10"` and `cache: "yes"` were accepted), spend windows
must be finite times and a bad one names its parameter, unknown admin URLs and methods are coded like the
gateway's own, a JSON syntax error is not reported as `param: "0"`, metadata is bounded, and a revoked key
cannot be changed (the PATCH used to succeed silently)."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import running_gateway

MASTER = "sk-admin-inputs-master-0123456789"


@pytest.fixture(scope="module")
def admin(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("admin-inputs")
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
           "storage": f"sqlite:///{tmp / 'tg.db'}"}
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base, httpx.Client(
            base_url=base.removesuffix("/v1") + "/admin", headers={"authorization": f"Bearer {MASTER}"},
            timeout=10) as client:
        yield client


@pytest.mark.parametrize(("field", "value"), [("rpm", True), ("rpm", "10"), ("tpm", 10.5), ("budget_usd", True),
                                              ("budget_usd", "5"), ("cache", "yes"), ("cache", 1),
                                              ("models", "gpt-4o-mini")])
def test_fields_of_the_wrong_json_type_are_400s(admin, field, value):
    r = admin.post("/keys", json={"name": "typed", field: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field
    kid = admin.post("/keys", json={"name": "ok"}).json()["id"]
    p = admin.patch(f"/keys/{kid}", json={field: value})
    assert p.status_code == 400 and p.json()["error"]["param"] == field, p.text


def test_right_types_still_work(admin):
    r = admin.post("/keys", json={"name": "typed", "rpm": 10, "tpm": 1000, "budget_usd": 5, "cache": True})
    assert r.status_code == 200, r.text
    assert (r.json()["rpm"], r.json()["budget_usd"], r.json()["cache"]) == (10, 5.0, True)


@pytest.mark.parametrize(("query", "param"), [({"start": "nan"}, "start"), ({"start": "-inf", "end": "inf"}, "end"),
                                              ({"end": "yesterday"}, "end"), ({"start": "12/01/2026"}, "start")])
def test_spend_windows_must_be_finite_times_and_name_the_bad_one(admin, query, param):
    r = admin.get("/spend", params=query)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_unknown_urls_methods_and_bad_json_are_coded(admin):
    nf = admin.get("/nope")
    assert nf.status_code == 404 and nf.json()["error"]["code"] == "unknown_url"
    na = admin.put("/keys")
    assert na.status_code == 405 and na.json()["error"]["code"] == "method_not_allowed"
    bad = admin.post("/keys", content=b'{"name": "x",', headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] is None
    assert bad.json()["error"]["code"] == "invalid_json"


def test_metadata_is_bounded_and_a_revoked_key_cannot_be_changed(admin):
    big = admin.post("/keys", json={"name": "big", "metadata": {"blob": "x" * 20_000}})
    assert big.status_code == 400 and big.json()["error"]["param"] == "metadata"
    assert admin.post("/keys", json={"name": "small", "metadata": {"team": "a"}}).status_code == 200
    kid = admin.post("/keys", json={"name": "gone"}).json()["id"]
    assert admin.delete(f"/keys/{kid}").status_code == 200
    p = admin.patch(f"/keys/{kid}", json={"budget_usd": 100})
    assert p.status_code == 409 and p.json()["error"]["code"] == "key_revoked"
    assert admin.get(f"/keys/{kid}").json()["budget_usd"] is None


def test_a_json_body_sent_as_a_form_says_to_send_json(admin):
    """curl -d '{...}' without a Content-Type header sends a form: the 400 said only "Input should be a
    valid dictionary or object to extract fields from"."""
    r = admin.post("/keys", content=b'{"name": "r"}', headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "Content-Type: application/json" in r.json()["error"]["message"]
