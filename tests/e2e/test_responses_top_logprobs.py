"""`top_logprobs` on `/v1/responses` answered through the chat pipeline: it was a 400 ("'top_logprobs' needs
'logprobs' set to true", a Chat Completions rule Responses does not have), and the answer's logprobs were
dropped (`output_text.logprobs` was always [])."""

from __future__ import annotations

import openai
import orjson

from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import running_gateway

LP = [{"token": "echo", "logprob": -0.1, "bytes": [101, 99, 104, 111],
       "top_logprobs": [{"token": "echo", "logprob": -0.1, "bytes": [101, 99, 104, 111]}]}]


class WithLogprobs(FakeOpenAI):
    def _completion(self, body, model):
        out = super()._completion(body, model)
        if body.get("logprobs"):
            for c in out["choices"]:
                c["logprobs"] = {"content": LP, "refusal": None}
        return out

    def _chunks(self, body, model):
        chunks = super()._chunks(body, model)
        if not body.get("logprobs"):
            return chunks
        lp = b'"logprobs":' + orjson.dumps({"content": LP, "refusal": None})
        return [c.replace(b'"logprobs":null', lp) if b'"content":"' in c else c for c in chunks]


def test_top_logprobs_on_a_translated_response(tmp_path):
    with WithLogprobs() as up:
        cfg = {"models": [{"name": "local", "deployments": [{"provider": "openai_compatible", "api_base": up.url}]},
                          {"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
               "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
        with running_gateway(cfg) as base:
            client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=20)
            r = client.responses.create(model="local", input="hi", top_logprobs=2)
            sent = up.last.body
            sim = client.responses.create(model="gpt-4o-mini", input="hi", top_logprobs=2)
            events = list(client.responses.create(model="local", input="hi", top_logprobs=2, stream=True))
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    part = r.output[0].content[0]
    assert part.logprobs[0].token == "echo" and part.logprobs[0].top_logprobs[0].logprob == -0.1
    assert sim.output_text
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and all(e.logprobs and e.logprobs[0].token == "echo" for e in deltas)
    done = next(e for e in events if e.type == "response.completed").response
    assert len(done.output[0].content[0].logprobs) == len(deltas)
