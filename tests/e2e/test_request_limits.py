"""Requests the gateway refuses itself, before any upstream call, with OpenAI's error shape: an output
limit above the catalogue's maximum for the model (OpenAI's own `invalid_value` words, `param` = the
field the client sent), and a per-request `tiergate.timeouts` outside its range (`param` = the option's
path). Models the catalogue does not list are not checked. Driven with the official openai SDK against
a loopback fake upstream that records every call."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("limits") / "tiergate.db"
    with FakeOpenAI() as up:
        dep = {"provider": "openai_compatible", "api_base": up.url}
        cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [dep]},
                          {"name": "o3-mini", "deployments": [dep]},
                          {"name": "my-llama", "deployments": [{**dep, "model": "llama3.1:8b"}]}],
               "storage": f"sqlite:///{db}"}
        with running_gateway(cfg) as base:
            yield up, openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=20)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_output_limit_above_the_models_maximum_is_refused_like_openai(env, field):
    up, client = env
    up.clear()
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, **{field: 100000})
    e = ei.value
    assert e.status_code == 400 and e.code == "invalid_value" and e.param == field
    assert e.type == "invalid_request_error"
    assert e.body["message"] == (f"{field} is too large: 100000. This model supports at most 16384 completion "
                                 "tokens, whereas you provided 100000.")
    assert up.requests == []  # refused before any upstream call
    with pytest.raises(openai.BadRequestError) as ei:  # streaming too
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True, **{field: 16385})
    assert ei.value.param == field and "at most 16384" in ei.value.body["message"]
    assert up.requests == []


def test_output_limit_at_the_maximum_is_forwarded(env):
    up, client = env
    up.clear()
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=16384)
    assert up.last.body["max_tokens"] == 16384
    client.chat.completions.create(model="o3-mini", messages=MSG, max_tokens=100000)  # o3-mini: 100,000
    assert up.last.body["max_completion_tokens"] == 100000  # renamed for the model, not refused


def test_models_the_catalogue_does_not_list_pass_through(env):
    up, client = env
    up.clear()
    client.chat.completions.create(model="my-llama", messages=MSG, max_tokens=1_000_000)
    assert up.last.body["max_tokens"] == 1_000_000 and up.last.body["model"] == "llama3.1:8b"


@pytest.mark.parametrize("timeouts, param", [
    ({"first_token": 0}, "tiergate.timeouts.first_token"),
    ({"total": -1}, "tiergate.timeouts.total"),
    ({"connect": "5"}, "tiergate.timeouts.connect"),
    ({"stream_idle": 100000}, "tiergate.timeouts.stream_idle"),
])
def test_request_timeouts_out_of_range_are_a_400_naming_the_option(env, timeouts, param):
    up, client = env
    up.clear()
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, extra_body={"tiergate": {"timeouts": timeouts}})
    assert ei.value.param == param and ei.value.code == "invalid_value"
    assert ei.value.body["message"].startswith(f"{param}: expected a number > 0 and <= 86400 seconds (or null for no limit)")
    assert up.requests == []


def test_request_timeouts_in_range_and_null_are_accepted(env):
    up, client = env
    up.clear()
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                       extra_body={"tiergate": {"timeouts": {"first_token": 5, "total": None}}})
    assert r.choices[0].message.content == "echo: hi" and len(up.requests) == 1


def test_responses_output_limit_is_named_as_the_client_sent_it(env, tmp_path):
    """/v1/responses: the translated path (here `sim`) checks the converted request, and the error still
    names `max_output_tokens`, the field the client sent."""
    cfg = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
           "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
    with running_gateway(cfg) as base:
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=20)
        with pytest.raises(openai.BadRequestError) as ei:
            client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=100000)
    e = ei.value
    assert e.code == "invalid_value" and e.param == "max_output_tokens"
    assert e.body["message"].startswith("max_output_tokens is too large: 100000.")
    up, native = env  # the fake serves the native Responses API: refused before it too
    up.clear()
    with pytest.raises(openai.BadRequestError) as ei:
        native.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=100000)
    assert ei.value.param == "max_output_tokens" and up.requests == []
    assert native.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=16384).output_text
