"""A gateway without a master key answers every /admin path with 403 `admin_api_disabled`, FastAPI's
schema pages (/admin/openapi.json, /admin/docs, /admin/redoc) included: they answered 200 and described
an API that refuses every call. With a master key they stay public (the schema holds no data)."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import running_gateway

MODELS = [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}]
PAGES = ("/admin/openapi.json", "/admin/docs", "/admin/docs/oauth2-redirect", "/admin/redoc")


def test_schema_pages_are_403_without_a_master_key(tmp_path):
    with running_gateway({"models": MODELS, "storage": f"sqlite:///{tmp_path / 'open.db'}"},
                         env={"TIERGATE_MASTER_KEY": ""}) as base:
        root = base.removesuffix("/v1")
        want = httpx.get(root + "/admin/keys").json()
        assert want["error"]["code"] == "admin_api_disabled"
        for path in PAGES:
            r = httpx.get(root + path)
            assert r.status_code == 403, (path, r.status_code, r.text[:200])
            assert r.json() == want, path
        assert httpx.head(root + "/admin/openapi.json").status_code == 403


@pytest.mark.parametrize("path", PAGES)
def test_schema_pages_stay_public_with_a_master_key(tmp_path, path):
    with running_gateway({"models": MODELS, "storage": f"sqlite:///{tmp_path / 'k.db'}"},
                         env={"TIERGATE_MASTER_KEY": "sk-schema-master-0123456789"}) as base:
        r = httpx.get(base.removesuffix("/v1") + path)
        assert r.status_code == 200, r.text[:200]
        if path.endswith(".json"):
            assert "/keys" in r.json()["paths"]
