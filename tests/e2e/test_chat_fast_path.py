"""The chat shortcut in GatewayApp (POST /v1/chat/completions skips Starlette's router and middleware)
keeps the behaviour of the routed path: OpenAI-shaped 500 on a bug, 405 for other methods, and the
normal path as soon as a middleware is installed."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import running_gateway

CONFIG = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}]}
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture()
def config(tmp_path):
    return {**CONFIG, "storage": f"sqlite:///{tmp_path / 'ledger.db'}"}


def test_a_bug_in_the_handler_is_an_openai_shaped_500(config, monkeypatch):
    import tiergate.server.app as app_module

    async def broken(request):
        raise RuntimeError("handler bug")

    monkeypatch.setattr(app_module, "chat_completions", broken)
    with running_gateway(config) as base, httpx.Client(timeout=10) as h:
        r = h.post(base + "/chat/completions", json=BODY)
        assert r.status_code == 500
        err = r.json()["error"]
        assert err["type"] == "api_error" and err["code"] == "internal_error"
        assert "handler bug" not in r.text


def test_other_methods_and_paths_still_go_through_the_router(config):
    with running_gateway(config) as base, httpx.Client(timeout=10) as h:
        r = h.get(base + "/chat/completions")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        ok = h.post(base + "/chat/completions", json=BODY)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
        assert h.post(base.removesuffix("/v1") + "/chat/completions", json=BODY).status_code == 200


def test_an_installed_middleware_sees_chat_requests(config, monkeypatch):
    import tiergate.server.app as app_module

    seen: list[str] = []
    build = app_module.build_app

    class Tap:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http":
                seen.append(scope["path"])
            await self.app(scope, receive, send)

    def build_with_middleware(cfg):
        app = build(cfg)
        app.add_middleware(Tap)
        return app

    monkeypatch.setattr(app_module, "build_app", build_with_middleware)
    with running_gateway(config) as base, httpx.Client(timeout=10) as h:
        assert h.post(base + "/chat/completions", json=BODY).status_code == 200
    assert "/v1/chat/completions" in seen
