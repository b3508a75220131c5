"""Re-audit 7, end to end (a real gateway on loopback, fake upstreams, the official `openai` SDK with
max_retries=0):

- a 403 about the request's *content* (OpenRouter's moderation: "Your chosen model requires moderation and
  your input was flagged") is the client's answer: no failover (the flagged content is not sent to every
  other deployment and fallback), no circuit count (a client cannot open a deployment's circuit for
  everyone), and the client reads the upstream's words in a 403, never "check the deployment's api_key";
  a 403 that names the credentials (`invalid_api_key`) still fails over;
- an answer over the gateway's size limit is not resent (the upstream would generate and bill it again),
  not failed over, not counted against the circuit, reaches the client as a 502 that says how to ask for
  less, and is billed to the key's budget at the request's output limit.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.test_reliability_judge7 import MSGS, Fake, _circuit_state, _client, _model, _posts
from tests.helpers import running_gateway

MASTER = "sk-reaudit7-e2e-master-0123456789"
FLAGGED = {"error": {"message": "Your chosen model requires moderation and your input was flagged",
                     "code": 403, "metadata": {"reasons": ["harassment"], "flagged_input": "..."}}}


def test_a_moderation_403_ends_the_request_and_opens_no_circuit():
    with Fake() as a, Fake() as b, Fake() as fb:
        pair = _model("pair", [a.url, b.url], fallbacks=["fb"],
                      circuit={"failures": 2, "window_s": 60, "cooldown_s": 60})
        with running_gateway({"models": [pair, _model("fb", [fb.url])]}) as url:
            client = _client(url)
            for f in (a, b, fb):
                f.fail_every("x_status", 1, status=403, body=FLAGGED)
            for _ in range(6):
                with pytest.raises(openai.PermissionDeniedError) as ei:
                    client.chat.completions.create(model="pair", messages=MSGS)
                assert "your input was flagged" in ei.value.message
                assert "api_key" not in ei.value.message
            # one upstream call per request: the flagged content went nowhere else
            assert _posts(a) + _posts(b) + _posts(fb) == 6 and _posts(fb) == 0
            assert _circuit_state(url, "pair-d0") == "0" and _circuit_state(url, "pair-d1") == "0"
            # an innocent request is served by either deployment (no circuit was opened)
            for f in (a, b, fb):
                f.clear()
            for _ in range(6):
                assert client.chat.completions.create(model="pair", messages=MSGS).choices[0].message.content \
                    == "echo: hi"
            assert _posts(a) > 0 and _posts(b) > 0
            # a 403 that says the gateway's key is the problem still fails over to the other deployment
            a.clear()
            b.clear()
            a.fail_every("x_status", 1, status=403, body={"error": {
                "message": "Incorrect API key provided: sk-abc***xyz.", "type": "invalid_request_error",
                "param": None, "code": "invalid_api_key"}})
            for _ in range(4):
                assert client.chat.completions.create(model="pair", messages=MSGS).choices[0].message.content \
                    == "echo: hi"


def test_an_oversized_answer_is_not_resent_not_counted_and_is_billed(monkeypatch, tmp_path):
    from tiergate.providers import http

    monkeypatch.setattr(http, "MAX_ANSWER_BODY", 1 << 20, raising=False)  # 1 MiB (32 MiB by default)
    with Fake() as a, Fake() as b:
        pair = _model("pair", [a.url, b.url], circuit={"failures": 2, "window_s": 60, "cooldown_s": 60})
        cfg = {"models": [pair], "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
        with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as url:
            admin = httpx.Client(base_url=url.removesuffix("/v1") + "/admin",
                                 headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
            k = admin.post("/keys", json={"name": "budgeted", "budget_usd": 1.0}).json()
            client = openai.OpenAI(base_url=url, api_key=k["key"], max_retries=0, timeout=30)
            for f in (a, b):
                f.fail_every("huge", 1, mb=2)
            for _ in range(3):
                with pytest.raises(openai.APIStatusError) as ei:
                    client.chat.completions.create(model="pair", messages=MSGS, max_tokens=1000)
                assert (ei.value.status_code, ei.value.code) == (502, "upstream_answer_too_large")
                assert "larger than 1 MiB" in ei.value.message and "max_tokens" in ei.value.message
                assert ei.value.response.headers.get("x-should-retry") == "false"
            assert _posts(a) + _posts(b) == 3  # one upstream call per request: no retry, no failover
            assert _circuit_state(url, "pair-d0") == "0" and _circuit_state(url, "pair-d1") == "0"
            # billed at the output limit: 3 x 1000 completion tokens of gpt-4o-mini ($0.60 / 1M)
            spent = admin.get(f"/keys/{k['id']}").json()["usage"]["spent_usd"]
            assert spent >= 3 * 1000 * 0.60 / 1e6
            for f in (a, b):
                f.clear()
            assert client.chat.completions.create(model="pair", messages=MSGS).choices[0].message.content \
                == "echo: hi"
            admin.close()


def test_a_key_as_model_id_is_not_echoed_by_get_model():
    secret = "tg-" + "Q" * 40
    with running_gateway({"models": [{"name": "m", "catalog": "gpt-4o-mini",
                                      "deployments": [{"provider": "sim"}]}]}) as url:
        client = _client(url)
        for k in (secret, "sk-proj-" + "Z" * 40):
            with pytest.raises(openai.NotFoundError) as ei:
                client.models.retrieve(k)
            assert k not in ei.value.response.text and "looks like an API key" in ei.value.message
        with pytest.raises(openai.NotFoundError) as ei:
            client.models.retrieve("no-such-model")
        assert "no-such-model" in ei.value.message


class _HtmlForbidden(Fake):
    """403 as a proxy or firewall in front of the upstream writes it: an HTML page."""

    async def _early_fault(self, request, f, stream):
        from aiohttp import web

        if f.kind == "html_403":
            return web.Response(status=403, text="<html><body><h1>403 Forbidden</h1><hr>nginx</body></html>",
                                content_type="text/html")
        return await super()._early_fault(request, f, stream)


def test_a_proxys_html_403_and_a_numeric_code_reach_the_client_readable():
    """The client read the proxy's raw HTML in the message; OpenRouter's integer `code: 403` became the
    error code "403"."""
    with _HtmlForbidden() as a, Fake() as b, running_gateway(
            {"models": [_model("solo", [a.url]), _model("router", [b.url])]}) as url:
        client = _client(url)
        a.fail_every("html_403", 1)
        with pytest.raises(openai.PermissionDeniedError) as ei:
            client.chat.completions.create(model="solo", messages=MSGS)
        assert "<html" not in ei.value.message and "HTML page" in ei.value.message
        b.fail_every("x_status", 1, status=403, body=FLAGGED)
        with pytest.raises(openai.PermissionDeniedError) as ei:
            client.chat.completions.create(model="router", messages=MSGS)
        assert ei.value.code == "upstream_refused"
