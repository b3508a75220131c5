"""CPU the dispatcher adds on the happy path: `Dispatcher.dispatch()` around an instant in-process
provider versus calling that provider directly, non-streaming and streaming (`--chunks` chunks, fully
consumed), on one deployment and on three (weighted random / least in-flight / lowest latency).

    python bench/dispatch_overhead.py [--n 20000] [--chunks 200]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from tiergate.config import parse_config
from tiergate.dispatch.dispatcher import Dispatcher
from tiergate.providers.base import ChatResult, Provider
from tiergate.providers.registry import register

_BODY = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
CHUNKS: list[dict] = []


@register("instant")
class Instant(Provider):
    name = "instant"

    async def chat(self, body, timeouts):
        return ChatResult(body=_BODY)

    async def chat_stream(self, body, timeouts):
        for c in CHUNKS:
            yield c


def shape(name):
    return {"model": name, "messages": []}, []


async def bench(args) -> None:
    CHUNKS[:] = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    CHUNKS.extend({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
                  for _ in range(args.chunks))
    rows = []
    for label, strategy, ndeps in (("1 deployment", "weighted_random", 1), ("3, weighted_random", "weighted_random", 3),
                                   ("3, least_inflight", "least_inflight", 3),
                                   ("3, lowest_latency", "lowest_latency", 3)):
        cfg = parse_config({"models": [{"name": "m", "strategy": strategy,
                                        "deployments": [{"provider": "instant"}] * ndeps}]}, env={})
        from tiergate.metrics import Metrics

        d = Dispatcher(cfg, None, metrics=Metrics())
        p = d.deployment_states("m")[0].provider
        for stream in (False, True):
            async def direct(p=p, stream=stream):
                if stream:
                    async for _ in p.chat_stream({}, None):
                        pass
                else:
                    await p.chat({}, None)

            async def via(d=d, stream=stream):
                out = await d.dispatch("m", shape, stream=stream, request_id="r")
                if stream:
                    async for _ in out.stream:
                        pass

            res = []
            for fn in (direct, via):
                for _ in range(500):
                    await fn()
                t = time.process_time()
                for _ in range(args.n):
                    await fn()
                res.append((time.process_time() - t) / args.n * 1e6)
            rows.append((label, "stream" if stream else "plain", res[0], res[1], res[1] - res[0]))
    print(f"dispatcher overhead, CPU µs per request ({args.n} requests; streams of {args.chunks} chunks)")
    print("| deployments | mode | provider alone | through dispatch() | added |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--chunks", type=int, default=200)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(bench(args))
    except ImportError:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
